//! Decoupled annealed posterior sampling (DAPS; Zhang et al., CVPR 2025, Algorithm 1). Per
//! annealing level `sigma_i`: `x0_hat` from a few probability-flow ODE (Euler) steps from `x_t` down
//! to `sigma_min`; Langevin on `x0` targeting `N(x0; x0_hat, r_i^2 I) p(y | x0)` with `r_i = sigma_i`;
//! then re-noise `x_{t} = x0 + sigma_{i+1} z`. The output is the last `x0`.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::health::CHECK_EVERY;
use super::method::{Kernel, Method};
use super::{Counted, Info, Monitor, Output, Problem};
use crate::prior::Denoiser;
use crate::rng::SampleStreams;
use crate::schedule::{append_zero, sigma_karras};
use crate::{Error, Result};

/// DAPS settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DapsConfig {
    /// Annealing levels (default 100).
    #[serde(alias = "annealing_steps")]
    pub stages: usize,
    /// Euler steps of the ODE solve per level (default 5; one evaluation each).
    pub ode_steps: usize,
    /// Langevin steps on `x0` per level (default 50; no score evaluations).
    #[serde(alias = "langevin_steps")]
    pub steps_per_stage: usize,
    /// Langevin step `h = h_rel / (1/r^2 + ||A||^2/eta^2)` (default 0.2).
    #[serde(alias = "lr_rel")]
    pub h_rel: f64,
    pub sigma_max: Option<f64>,
    /// Default `max(prior sigma_min, 1e-3 eta)`.
    pub sigma_min: Option<f64>,
    pub rho: f64,
}

impl Default for DapsConfig {
    fn default() -> Self {
        Self {
            stages: 100,
            ode_steps: 5,
            steps_per_stage: 50,
            h_rel: 0.2,
            sigma_max: None,
            sigma_min: None,
            rho: 7.0,
        }
    }
}

fn ode_x0(
    prior: &dyn Denoiser,
    x: &Tensor,
    sigma: f64,
    smin: f64,
    steps: usize,
    rho: f64,
) -> Result<Tensor> {
    if steps <= 1 || sigma <= smin {
        return prior.denoise(x, sigma);
    }
    let sig = append_zero(sigma_karras(sigma, smin, steps, rho)?);
    let mut x = x.clone();
    for j in 0..steps {
        let d = ((&x - prior.denoise(&x, sig[j])?)? / sig[j])?;
        x = (&x + (d * (sig[j + 1] - sig[j]))?)?;
    }
    Ok(x)
}

impl DapsConfig {
    /// Range checks that need no problem.
    pub fn validate(&self) -> Result<()> {
        if self.stages < 2
            || self.ode_steps < 1
            || self.steps_per_stage < 1
            || !(self.h_rel > 0.0)
            || !self.h_rel.is_finite()
        {
            return Err(Error::param(
                "sampler",
                "DAPS needs stages >= 2, steps_per_stage >= 1, ode_steps >= 1, h_rel > 0",
            ));
        }
        if !(self.rho > 0.0) {
            return Err(Error::param("sampler.rho", "must be > 0"));
        }
        Ok(())
    }
}

/// Runs DAPS.
pub fn sample(
    problem: &Problem,
    cfg: &DapsConfig,
    streams: &mut SampleStreams,
    mon: &dyn Monitor,
) -> Result<Output> {
    cfg.validate()?;
    let prior = Counted::new(problem.prior);
    let (smax, smin) = problem.sigma_levels(cfg.sigma_max, cfg.sigma_min);
    let sig = sigma_karras(smax, smin, cfg.stages, cfg.rho)?;
    let a = problem.a_norm()?;
    let e2 = problem.eta * problem.eta;
    let shape = problem.prior.sample_shape();
    let z = streams.randn(&shape, &problem.device())?;
    let mut x = problem.prior.diffusion_start(&z, sig[0])?;
    let mut x0 = x.clone();
    let total = (cfg.stages * cfg.ode_steps) as u64;
    for (i, &s) in sig.iter().enumerate() {
        let x0_hat = ode_x0(&prior, &x, s, smin, cfg.ode_steps, cfg.rho)?;
        let r2 = s * s;
        let h = cfg.h_rel / (1.0 / r2 + a * a / e2);
        x0 = x0_hat.clone();
        for k in 0..cfg.steps_per_stage {
            let g = (((&x0_hat - &x0)? / r2)?
                + problem.likelihood_grad(&x0, &problem.y, problem.eta)?)?;
            let z = streams.randn(&shape, x.device())?;
            x0 = ((&x0 + (g * h)?)? + (z * (2.0 * h).sqrt())?)?;
            if k % CHECK_EVERY == CHECK_EVERY - 1 || k + 1 == cfg.steps_per_stage {
                problem.check(&x0, s, "daps", i + 1, k + 1)?;
            }
        }
        if i + 1 < sig.len() {
            let z = streams.randn(&shape, x.device())?;
            x = (&x0 + (z * sig[i + 1])?)?;
        }
        mon.on_step(((i + 1) * cfg.ode_steps) as u64, total);
    }
    Ok(Output {
        weighted: None,
        samples: x0,
        score_evals: prior.evals(),
        info: Info::default(),
        warm_start: None,
    })
}

impl Method for DapsConfig {
    fn validate(&self) -> Result<()> {
        DapsConfig::validate(self)
    }

    fn prepare(&self, problem: &Problem) -> Result<Box<dyn Kernel>> {
        problem.a_norm()?;
        Ok(Box::new(self.clone()))
    }
}

impl Kernel for DapsConfig {
    fn sample(
        &self,
        problem: &Problem,
        streams: &mut SampleStreams,
        mon: &dyn Monitor,
    ) -> Result<Output> {
        sample(problem, self, streams, mon)
    }
}
