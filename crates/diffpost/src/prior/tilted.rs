//! The local prior of Algorithm 2 (the paper's GaussianSampler): a coarse estimate `x0` is treated
//! as a Gaussian measurement `x0 = x + N(0, sigma^2 I)`, so the prior becomes
//! `p_x0(x) ∝ p(x) N(x0; x, sigma^2 I)`.
//!
//! Smoothed at level `t` (docs/algorithms.md, "Algorithm 2 (local)"; derivation: `p_x0,t(z) = ∫ p(x) N(x0; x, σ²)
//! N(z; x, t²) dx`, complete the square in `x`):
//! `grad log p_x0,t(z) = (x0 - z)/(sigma^2 + t^2) + sigma^2/(sigma^2 + t^2) s_tau(m)`,
//! `tau^2 = sigma^2 t^2/(sigma^2 + t^2)`, `m = (t^2 x0 + sigma^2 z)/(sigma^2 + t^2)`.

use candle_core::Tensor;

use super::Denoiser;
use crate::{Error, Result};

/// `p_x0` built on any prior. `x0` is `[B, d]` (one warm start per sample) or `[1, d]` (shared).
pub struct GaussianTilted<'a> {
    inner: &'a dyn Denoiser,
    x0: Tensor,
    sigma: f64,
}

impl<'a> GaussianTilted<'a> {
    pub fn new(inner: &'a dyn Denoiser, x0: Tensor, sigma: f64) -> Result<Self> {
        if !(sigma > 0.0) || !sigma.is_finite() {
            return Err(Error::param(
                "sigma",
                format!("warm-start noise must be > 0, got {sigma}"),
            ));
        }
        let dims = x0.dims();
        if dims.len() != 2 || dims[1] != inner.dim() {
            return Err(Error::shape(
                "warm start x0",
                format!("[B, {}]", inner.dim()),
                dims,
            ));
        }
        Ok(Self { inner, x0, sigma })
    }

    pub fn x0(&self) -> &Tensor {
        &self.x0
    }
    pub fn sigma(&self) -> f64 {
        self.sigma
    }
}

impl Denoiser for GaussianTilted<'_> {
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn sample_shape(&self) -> Vec<usize> {
        self.inner.sample_shape()
    }
    fn denoise(&self, z: &Tensor, t: f64) -> Result<Tensor> {
        if t == 0.0 {
            return Ok(z.clone());
        }
        Ok((z + (self.score(z, t)? * (t * t))?)?)
    }
    fn score(&self, z: &Tensor, t: f64) -> Result<Tensor> {
        let s2 = self.sigma * self.sigma;
        let t2 = t * t;
        let den = s2 + t2;
        // tau is clamped to the inner prior's trained range (exact for analytic priors).
        let tau = (s2 * t2 / den).sqrt().max(self.inner.sigma_range().0);
        let m = (self
            .x0
            .broadcast_mul(&Tensor::new(t2 / den, z.device())?)?
            .broadcast_add(&(z * (s2 / den))?))?;
        let pull = (self.x0.broadcast_sub(z)? / den)?;
        Ok((pull + (self.inner.score(&m, tau)? * (s2 / den))?)?)
    }
    fn sigma_range(&self) -> (f64, f64) {
        self.inner.sigma_range()
    }
    fn device(&self) -> candle_core::Device {
        self.inner.device()
    }
    /// `p_x0` is no wider than `N(x0, sigma^2 I)`.
    /// `p_x0` lies between the prior and `x0`: `sqrt(s_prior^2 + max_b |x0_b|^2 / d)`.
    fn scale(&self) -> f64 {
        let x0_ms = self
            .x0
            .sqr()
            .and_then(|t| t.mean(1))
            .and_then(|t| t.max(0))
            .and_then(|t| t.to_dtype(candle_core::DType::F64))
            .and_then(|t| t.to_scalar::<f64>())
            .unwrap_or(0.0);
        let s = self.inner.scale();
        (s * s + x0_ms).sqrt()
    }
    fn sigma_max_hint(&self) -> f64 {
        self.inner.sigma_max_hint().min(50.0 * self.sigma)
    }
    fn lipschitz(&self) -> Option<f64> {
        self.inner
            .lipschitz()
            .map(|l| l + 1.0 / (self.sigma * self.sigma))
    }
    /// At large `t`, `p_x0,t ≈ N(x0, (sigma^2 + t^2) I)`: start at `x0 + sqrt(sigma^2 + t^2) z`.
    fn diffusion_start(&self, z: &Tensor, t_max: f64) -> Result<Tensor> {
        let s = (self.sigma * self.sigma + t_max * t_max).sqrt();
        Ok((z * s)?.broadcast_add(&self.x0)?)
    }
}
