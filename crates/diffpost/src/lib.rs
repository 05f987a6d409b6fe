//! diffpost: posterior sampling for linear inverse problems `y = A x + eta * xi` with diffusion priors.
//!
//! Layout: [`prior`] (denoisers/scores, analytic and neural), [`operator`] (linear forward models),
//! [`schedule`] (sigma and eta schedules), [`sampler`] (one file per method), [`metrics`]
//! (distances to exact posteriors), [`rng`] (per-sample random streams), [`io`] (npy/npz), [`limits`] (memory checks).
// `!(x > 0.0)` is deliberate throughout: it also rejects NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod bench;
pub mod bench_integrator;
pub mod commit;
pub mod config;
pub mod error;
pub mod metrics;
pub mod schedule;

pub use error::{Error, Result};
pub mod image_metrics;
pub mod imaging;
pub mod io;
pub mod limits;
pub mod nn;
pub mod operator;
pub mod prior;
pub mod problem;
pub mod rng;
pub mod run;
pub mod sampler;
pub mod sysalloc;
