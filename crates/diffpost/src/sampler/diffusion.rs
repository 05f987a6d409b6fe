//! Unconditional diffusion sampling of the prior (variance exploding).
//!
//! - Reverse VE SDE, Euler–Maruyama (Song et al. 2021, eq. 6):
//!   `x_{i+1} = x_i + (sigma_i^2 - sigma_{i+1}^2) s_{sigma_i}(x_i) + sqrt(sigma_i^2 - sigma_{i+1}^2) z`,
//!   ending with the denoiser at the last level, `x = D(x, sigma_min)`.
//! - Probability-flow ODE with Heun's method (Karras et al. 2022, EDM, Algorithm 1), with
//!   `dx/dsigma = (x - D(x, sigma)) / sigma`.
//!
//! Both use the EDM sigma schedule (rho = 7) from `sigma_max` to `sigma_min`.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::method::{Kernel, Method};
use super::{health, Counted, Info, Monitor, Output};
use crate::prior::Denoiser;
use crate::rng::SampleStreams;
use crate::schedule::sigma_karras;
use crate::{Error, Result};

/// Reverse SDE or probability-flow ODE (`init_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Solver {
    /// Reverse VE SDE, Euler–Maruyama: `steps` score evaluations.
    Sde,
    /// Probability-flow ODE, Heun: `2 steps - 1` evaluations.
    Heun,
}

/// Settings of unconditional diffusion sampling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DiffusionConfig {
    pub init_method: Solver,
    /// Number of sigma levels (default 500).
    pub steps: usize,
    /// Largest level; default: the prior's `sigma_max_hint`.
    pub sigma_max: Option<f64>,
    /// Smallest level; default: `max(prior sigma_min, 1e-4 sigma_max)`.
    pub sigma_min: Option<f64>,
    /// EDM schedule exponent (default 7).
    pub rho: f64,
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        Self {
            init_method: Solver::Sde,
            steps: 500,
            sigma_max: None,
            sigma_min: None,
            rho: 7.0,
        }
    }
}

impl DiffusionConfig {
    /// Range checks that need no prior; `steps_key` names the steps field in errors.
    pub fn validate(&self, steps_key: &str) -> Result<()> {
        if self.steps < 2 {
            return Err(Error::param(
                format!("sampler.{steps_key}"),
                format!("diffusion needs at least 2 steps, got {}", self.steps),
            ));
        }
        for (k, v) in [("sigma_max", self.sigma_max), ("sigma_min", self.sigma_min)] {
            if let Some(v) = v {
                if !(v > 0.0) || !v.is_finite() {
                    return Err(Error::param(
                        format!("sampler.{k}"),
                        format!("must be > 0, got {v}"),
                    ));
                }
            }
        }
        if !(self.rho > 0.0) || !self.rho.is_finite() {
            return Err(Error::param(
                "sampler.rho",
                format!("must be > 0, got {}", self.rho),
            ));
        }
        Ok(())
    }

    /// Resolves the sigma range against a prior (clamped to the prior's trained range, as EDM does).
    pub fn sigmas(&self, prior: &dyn Denoiser) -> Result<Vec<f64>> {
        if self.steps < 2 {
            return Err(Error::param(
                "init_steps",
                format!("diffusion needs at least 2 steps, got {}", self.steps),
            ));
        }
        let (pmin, pmax) = prior.sigma_range();
        let smax = self
            .sigma_max
            .unwrap_or_else(|| prior.sigma_max_hint())
            .min(pmax);
        let smin = self.sigma_min.unwrap_or((1e-4 * smax).max(pmin)).max(pmin);
        if !(smin > 0.0 && smin < smax) {
            return Err(Error::param(
                "sigma_min/sigma_max",
                format!("need 0 < sigma_min < sigma_max, got {smin}, {smax}"),
            ));
        }
        sigma_karras(smax, smin, self.steps, self.rho)
    }

    /// Score evaluations per sample.
    pub fn evals(&self) -> u64 {
        match self.init_method {
            Solver::Sde => self.steps as u64,
            Solver::Heun => 2 * self.steps as u64 - 1,
        }
    }
}

/// Draws `[B, d]` prior samples by reverse diffusion.
pub fn sample(
    prior: &dyn Denoiser,
    cfg: &DiffusionConfig,
    streams: &mut SampleStreams,
    mon: &dyn Monitor,
) -> Result<Output> {
    let counted = Counted::new(prior);
    let x = run(&counted, cfg, streams, mon, "prior diffusion")?;
    Ok(Output {
        weighted: None,
        samples: x,
        score_evals: counted.evals(),
        info: Info::default(),
        warm_start: None,
    })
}

/// The diffusion loop (used as the initialiser of the annealed samplers too).
pub(crate) fn run(
    prior: &dyn Denoiser,
    cfg: &DiffusionConfig,
    streams: &mut SampleStreams,
    mon: &dyn Monitor,
    name: &str,
) -> Result<Tensor> {
    let sig = cfg.sigmas(prior)?;
    let device = prior.device();
    let shape = prior.sample_shape();
    let z = streams.randn(&shape, &device)?;
    let mut x = prior.diffusion_start(&z, sig[0])?;
    let n = sig.len();
    let total = cfg.evals();
    let scale = prior.scale();
    let check = |x: &Tensor, sigma: f64, i: usize| health::check_scale(x, scale, sigma, name, 0, i);
    match cfg.init_method {
        Solver::Sde => {
            for i in 0..n - 1 {
                let dv = sig[i] * sig[i] - sig[i + 1] * sig[i + 1];
                let s = prior.score(&x, sig[i])?;
                let z = streams.randn(&shape, x.device())?;
                x = ((x + (s * dv)?)? + (z * dv.sqrt())?)?;
                if i % health::CHECK_EVERY == health::CHECK_EVERY - 1 {
                    check(&x, sig[i + 1], i + 1)?;
                }
                mon.on_step(i as u64 + 1, total);
            }
            x = prior.denoise(&x, sig[n - 1])?;
        }
        Solver::Heun => {
            for i in 0..n {
                let s_cur = sig[i];
                let s_next = if i + 1 < n { sig[i + 1] } else { 0.0 };
                let d_cur = ((&x - prior.denoise(&x, s_cur)?)? / s_cur)?;
                let x_euler = (&x + (&d_cur * (s_next - s_cur))?)?;
                if s_next > 0.0 {
                    let d_next = ((&x_euler - prior.denoise(&x_euler, s_next)?)? / s_next)?;
                    x = (&x + ((d_cur + d_next)? * (0.5 * (s_next - s_cur)))?)?;
                } else {
                    x = x_euler;
                }
                if i % health::CHECK_EVERY == health::CHECK_EVERY - 1 {
                    check(&x, s_next, i + 1)?;
                }
                mon.on_step((2 * i + 1) as u64, total);
            }
        }
    }
    check(&x, 0.0, n)?;
    Ok(x)
}

impl Method for DiffusionConfig {
    fn validate(&self) -> Result<()> {
        DiffusionConfig::validate(self, "steps")
    }

    fn prepare(&self, _problem: &super::Problem) -> Result<Box<dyn Kernel>> {
        Ok(Box::new(self.clone()))
    }

    /// Unconditional samples: no data residual.
    fn conditional(&self) -> bool {
        false
    }
}

impl Kernel for DiffusionConfig {
    fn sample(
        &self,
        problem: &super::Problem,
        streams: &mut SampleStreams,
        mon: &dyn Monitor,
    ) -> Result<Output> {
        sample(problem.prior, self, streams, mon)
    }
}
