//! diffpost-core: what every diffpost crate shares. [`error`] (one error type), [`io`] (npy/npz
//! reading, atomic writes), [`commit`] (outputs that commit as one), [`limits`] (memory checks),
//! [`rng`] (per-sample random streams) and [`sysalloc`] (process-wide allocator settings).
//!
//! The library `diffpost` re-exports these modules at the same paths (`diffpost::io`, ...).
// `!(x > 0.0)` is deliberate throughout: it also rejects NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod commit;
pub mod error;
pub mod io;
pub mod limits;
pub mod rng;
pub mod sysalloc;

pub use error::{Error, Result};
