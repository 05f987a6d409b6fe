//! diffpost: posterior sampling for linear inverse problems `y = A x + eta * xi` with diffusion priors.
//!
//! Layout (docs/architecture.md has the picture):
//! - [`config`]: `problem.toml` typed and validated, then loaded;
//! - [`run`]: a run context (the method prepared once per run), the runner (populations,
//!   parallel batches, shards), diagnostics, `summary.json` and merging shards;
//! - [`sampler`]: one file per method, each a [`sampler::method::Method`] registered by one line
//!   in [`sampler::spec`]; the one `[sampler]` parser ([`sampler::table`]) and the shared key
//!   groups ([`sampler::settings`]);
//! - [`prior`] (denoisers/scores with capability queries, analytic and neural), [`operator`]
//!   (linear forward models with adjoints), [`schedule`] (sigma and eta schedules), [`metrics`]
//!   and [`image_metrics`] (distances to exact posteriors; PSNR/SSIM), [`imaging`] (grids),
//!   [`problem`] (random instances);
//! - [`calibrate`]: simulation-based calibration of any sampler on any prior that can be
//!   sampled (`diffpost calibrate`: rank statistics, ECDF band, coverage, contraction; shards);
//! - [`studies`] (the experiments behind `diffpost demo`, `modes`, `tradeoff`, `report` and
//!   `bench`), [`training`] (how `diffpost train` treats an existing model folder);
//! - re-exported: [`nn`] (networks and their training: the crate `diffpost-nn`), and from the base
//!   crate `diffpost-core` [`rng`] (per-sample random streams), [`io`] (npy/npz), [`limits`]
//!   (memory checks), [`commit`] (outputs that commit as one), [`Error`].
// `!(x > 0.0)` is deliberate throughout: it also rejects NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod calibrate;
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
