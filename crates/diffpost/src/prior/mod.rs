//! Priors: one denoiser/score interface at a noise level `sigma` (variance exploding).
//!
//! Convention (docs/algorithms.md): `p_sigma = p * N(0, sigma^2 I)`, `D(x, sigma) = E[x0 | x0 + sigma z = x]`,
//! and Tweedie's formula `grad log p_sigma(x) = (D(x, sigma) - x) / sigma^2`. Analytic priors allow
//! `sigma = 0` (the unsmoothed score); networks are valid only on their trained range.

pub mod fit;
pub mod gmm;
pub mod network;
pub mod perturb;
pub mod tilted;

use candle_core::Tensor;

use crate::{Error, Result};

pub use gmm::GaussianMixture;
pub use perturb::{Perturbation, Perturbed};
pub use tilted::GaussianTilted;

/// A diffusion prior seen through its denoiser `D(x, sigma)` and smoothed score.
///
/// `x` is batch-first `[B, ...]` (f64 for analytic priors). Implementations must be
/// row-independent: row `b` of the output depends only on row `b` of the input.
pub trait Denoiser: Send + Sync {
    /// Per-sample dimension `d` (number of entries of one `x`).
    fn dim(&self) -> usize;

    /// Per-sample shape (`[d]` for vectors, `[C, H, W]` for images).
    fn sample_shape(&self) -> Vec<usize> {
        vec![self.dim()]
    }

    /// Device the prior's tensors live on (samplers draw their noise there).
    fn device(&self) -> candle_core::Device {
        candle_core::Device::Cpu
    }

    /// Tweedie denoiser `D(x, sigma)`. Differentiable through candle autograd when `x` is tracked.
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor>;

    /// Smoothed score `grad log p_sigma(x)`; default: Tweedie `(D(x, sigma) - x) / sigma^2` (sigma > 0).
    fn score(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        if sigma <= 0.0 {
            return Err(Error::Unsupported(
                "this prior has no score at sigma = 0; use its sigma_min".into(),
            ));
        }
        Ok(((self.denoise(x, sigma)? - x)? / (sigma * sigma))?)
    }

    /// `[sigma_min, sigma_max]` where the denoiser is valid. `sigma_min = 0` means exact
    /// unsmoothed scores exist (analytic priors); networks report their smallest trained level.
    fn sigma_range(&self) -> (f64, f64);

    /// A `sigma_max` large enough that `p_sigma_max` is close to `N(start, sigma_max^2 I)`,
    /// used to start diffusion sampling.
    fn sigma_max_hint(&self) -> f64;

    /// Lipschitz constant of the unsmoothed score, when known (sets Langevin step sizes).
    fn lipschitz(&self) -> Option<f64> {
        None
    }

    /// The prior's scale per coordinate, `sqrt(E|x|^2 / d)`, used by the divergence check
    /// (`sampler::health`). Default `sigma_max_hint / 50`; mixtures give it exactly, image
    /// networks 1 (data in `[-1, 1]`).
    fn scale(&self) -> f64 {
        self.sigma_max_hint() / 50.0
    }

    /// Start of reverse diffusion at level `sigma_max` given standard normal `z`: `sigma_max z` for a
    /// prior centred near 0 (the VE convention). Tilted priors override this (docs/algorithms.md, "Algorithm 2 (local)").
    fn diffusion_start(&self, z: &Tensor, sigma_max: f64) -> Result<Tensor> {
        Ok((z * sigma_max)?)
    }

    // Capabilities: what a method may ask of a prior (`sampler::method`), answered by the prior
    // itself rather than by a list of kinds.

    /// The prior's log-density, when it has one (MALA, SMC's MALA moves). A perturbed score has
    /// none.
    fn as_log_density(&self) -> Option<&dyn LogDensity> {
        None
    }

    /// Exact prior draws, when they exist (`init = "exact-prior"`, SMC's start).
    fn as_exact_sample(&self) -> Option<&dyn ExactSample> {
        None
    }

    /// The Gaussian mixture behind this prior, whose posterior under a linear Gaussian
    /// likelihood is known in closed form (`exact`, the reference of every distance). A
    /// perturbed mixture answers with the unperturbed one: the reference its errors are
    /// measured against.
    fn as_mixture(&self) -> Option<&GaussianMixture> {
        None
    }

    /// Whether gradients flow through `D(x, sigma)` (DPS differentiates through the denoiser).
    fn differentiable(&self) -> bool {
        true
    }
}

/// Priors with a tractable log-density (analytic priors; needed by MALA).
pub trait LogDensity: Denoiser {
    /// `log p(x)` per row, shape `[B]`, and the unsmoothed score `grad log p(x)`.
    fn log_density_and_score(&self, x: &Tensor) -> Result<(Tensor, Tensor)>;
}

/// Priors that can be sampled exactly.
pub trait ExactSample {
    /// One exact prior sample per stream, `[B, d]`.
    fn sample_exact(&self, streams: &mut crate::rng::SampleStreams) -> Result<Tensor>;
}

/// Unsmoothed score `s(x)` as samplers use it: `sigma = sigma_min` of the prior.
pub fn unsmoothed_score(prior: &dyn Denoiser, x: &Tensor) -> Result<Tensor> {
    prior.score(x, prior.sigma_range().0)
}
