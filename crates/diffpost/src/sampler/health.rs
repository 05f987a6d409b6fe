//! Run health (docs/algorithms.md, "Divergence and health"): a chain that leaves the scale the
//! problem sets fails the run with the stage and step; milder signs become warnings.
//!
//! The problem's scale is per coordinate (RMS of `x`):
//! `s = sqrt(s_prior^2 + (|y| / (||A|| sqrt d))^2)`, the prior's own spread
//! (`Denoiser::scale`) and the least norm any `x` with `A x ≈ y` has. A chain at diffusion level
//! `sigma` may add `sigma`. A sample whose RMS exceeds `SCALE_FACTOR sqrt(s^2 + sigma^2)`, or that is
//! not finite, has diverged: an unstable step grows geometrically, so it passes this bound within
//! a few steps of losing stability, while no sample of the posterior (or of a diffused prior) comes
//! near it.

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// How far (a factor on the problem's scale) a sample may go before the run is failed.
pub const SCALE_FACTOR: f64 = 100.0;

/// How often (in steps) Langevin and diffusion loops check the chains, besides their last step.
pub const CHECK_EVERY: usize = 10;

/// Fails with [`Error::Diverged`] when a row of `x: [B, d]` is not finite or its RMS exceeds
/// `SCALE_FACTOR sqrt(scale^2 + sigma^2)`.
pub(crate) fn check_scale(
    x: &Tensor,
    scale: f64,
    sigma: f64,
    sampler: &str,
    stage: usize,
    step: usize,
) -> Result<()> {
    let ms: Vec<f64> = x
        .flatten_from(1)?
        .to_dtype(DType::F64)?
        .sqr()?
        .mean(1)?
        .to_vec1()?;
    let bound = SCALE_FACTOR * (scale * scale + sigma * sigma).sqrt();
    for (i, m) in ms.iter().enumerate() {
        let rms = m.sqrt();
        if !rms.is_finite() {
            return Err(Error::Diverged {
                sampler: sampler.into(),
                stage,
                step,
                reason: format!("sample {i} has NaN or infinite values"),
            });
        }
        if rms > bound {
            return Err(Error::Diverged {
                sampler: sampler.into(),
                stage,
                step,
                reason: format!(
                    "sample {i} left the problem's scale: RMS {rms:.3e} > {SCALE_FACTOR} x {:.3} \
                     (prior and data scale{}); the step is too large for this problem \
                     (lower h_rel, h or zeta)",
                    (scale * scale + sigma * sigma).sqrt(),
                    if sigma > 0.0 {
                        format!(" at noise level {sigma:.3e}")
                    } else {
                        String::new()
                    }
                ),
            });
        }
    }
    Ok(())
}

/// Milder signs, as warnings for `summary.json`: the final data residual `|y - A x|/(eta sqrt m)`
/// (about 1 for posterior samples) far from 1, and MALA acceptance near 0 or 1.
pub fn warnings(mean_residual: Option<f64>, acceptance: Option<f64>) -> Vec<String> {
    let mut w = Vec::new();
    if let Some(r) = mean_residual {
        if r > 3.0 {
            w.push(format!(
                "mean data residual |y - A x|/(eta sqrt m) = {r:.3} at the end (about 1 expected): \
                 the samples do not fit the measurement; more steps or stages may be needed"
            ));
        } else if r < 0.3 {
            w.push(format!(
                "mean data residual |y - A x|/(eta sqrt m) = {r:.3} at the end (about 1 expected): \
                 the samples fit the measurement better than its noise allows (overfitting, or eta \
                 larger than the real noise)"
            ));
        }
    }
    if let Some(a) = acceptance {
        if a < 0.05 {
            w.push(format!(
                "MALA acceptance {a:.3}: chains barely move; lower h_rel"
            ));
        } else if a > 0.995 {
            w.push(format!(
                "MALA acceptance {a:.4}: steps are much smaller than needed; raise h_rel"
            ));
        }
    }
    w
}
