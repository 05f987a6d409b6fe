//! diffpost: posterior sampling for linear inverse problems `y = A x + eta * xi` with diffusion priors.
//!
//! Layout: [`prior`] (denoisers/scores, analytic and neural), [`operator`] (linear forward models),
//! [`schedule`] (sigma and eta schedules), [`sampler`] (one file per method), [`metrics`]
//! (distances to exact posteriors), [`nn`] (neural networks and their training: the crate
//! `diffpost-nn`), and, from the base crate `diffpost-core`, [`rng`] (per-sample random streams),
//! [`io`] (npy/npz), [`limits`] (memory checks), [`commit`] (outputs that commit as one);
//! [`studies`] (the experiments behind `diffpost demo`, `modes`, `tradeoff`, `report` and `bench`),
//! [`training`] (how `diffpost train` treats an existing model folder).
// `!(x > 0.0)` is deliberate throughout: it also rejects NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod config;
pub mod metrics;
pub mod schedule;

pub mod image_metrics;
pub mod imaging;
pub mod operator;
pub mod prior;
pub mod problem;
pub mod run;
pub mod sampler;
pub mod studies;
pub mod training;

// The base crate, at the paths the library always had (`diffpost::io`, `diffpost::Error`, ...).
pub use diffpost_core::error::{self, Error, Result};
pub use diffpost_core::{commit, io, limits, rng, sysalloc};
// The neural networks (`diffpost::nn`); their `Denoiser` impls are in `prior::network`.
pub use diffpost_nn as nn;
