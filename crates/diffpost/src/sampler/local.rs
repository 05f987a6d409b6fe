//! Algorithm 2 of Xun, Gupta & Price (2025), the local (warm-started) sampler: a coarse estimate
//! `x0` is treated as a Gaussian measurement `x0 = x + N(0, sigma^2 I)` and Algorithm 1 runs on
//! the prior `p_x0(x) ∝ p(x) N(x0; x, sigma^2 I)` (see [`crate::prior::GaussianTilted`]), so it
//! samples `p(x | x0, y)`. The diffusion start is drawn from `p_x0` itself (it begins at
//! `x0 + sqrt(sigma^2 + t_max^2) z`); `start_at_x0` starts the chains at `x0` instead.

use candle_core::Tensor;
use serde::Serialize;

use super::annealed::{sample_with, AnnealedConfig};
use super::{Monitor, Output, Problem, StepRule};
use crate::prior::{Denoiser, GaussianTilted};
use crate::rng::SampleStreams;
use crate::{Error, Result};

/// Algorithm 2 settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocalConfig {
    /// Noise level `sigma` of the warm start, in the units of x.
    pub sigma: f64,
    /// Start the Langevin chains at `x0` rather than from diffusion on `p_x0`.
    pub start_at_x0: bool,
    /// The annealing (Algorithm 1) settings.
    pub annealed: AnnealedConfig,
}

/// Samples `p(x | x0, y)`; `x0` is `[1, d]` (shared) or `[B, d]` (one per sample, e.g. DPS outputs).
pub fn sample(
    problem: &Problem,
    x0: &Tensor,
    cfg: &LocalConfig,
    streams: &mut SampleStreams,
    mon: &dyn Monitor,
) -> Result<Output> {
    let tilted = GaussianTilted::new(problem.prior, x0.clone(), cfg.sigma)?;
    let rows = x0.dims()[0];
    if rows != 1 && rows != streams.len() {
        return Err(Error::shape(
            "warm start x0",
            format!("[1, d] or [{}, d]", streams.len()),
            x0.dims(),
        ));
    }
    let a = problem.a_norm()?;
    let l = match cfg.annealed.step {
        StepRule::Fixed { .. } => 0.0,
        _ => {
            let s_sigma = super::score_level(problem.prior, cfg.annealed.score_sigma)?;
            super::prior_lipschitz_at(problem.prior, cfg.annealed.l_prior, s_sigma)?
                + 1.0 / (cfg.sigma * cfg.sigma)
        }
    };
    let local = problem.with_prior(&tilted as &dyn Denoiser);
    let start = if cfg.start_at_x0 { Some(x0) } else { None };
    sample_with(
        &local,
        None,
        &cfg.annealed,
        a,
        l,
        start,
        streams,
        mon,
        "local",
    )
}
