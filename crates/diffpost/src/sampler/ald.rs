//! Annealed Langevin dynamics (ALD; Jalal et al., NeurIPS 2021): Langevin over decreasing diffusion
//! levels `sigma_1 > ... > sigma_L`, with the smoothed score and the likelihood widened by the level,
//! `x <- x + a_i (s_{sigma_i}(x) + A^T (y - A x)/(eta^2 + sigma_i^2)) + sqrt(2 a_i) z`.
//! Step: `a_i = h_rel / (L_i + ||A||^2/(eta^2 + sigma_i^2))`, `L_i = 1/(1/L_prior + sigma_i^2)`, a
//! stable form of the paper's `eps sigma_i^2 / sigma_L^2` rule (the drift's Lipschitz constant at
//! level i).

use serde::{Deserialize, Serialize};

use super::health::CHECK_EVERY;
use super::method::{Kernel, Method};
use super::{prior_lipschitz, Counted, Info, Monitor, Output, Problem};
use crate::prior::Denoiser;
use crate::rng::SampleStreams;
use crate::schedule::sigma_geometric;
use crate::{Error, Result};

/// ALD settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AldConfig {
    /// Number of noise levels (default 50).
    #[serde(alias = "levels")]
    pub stages: usize,
    /// Langevin steps per level (default 40).
    #[serde(alias = "steps_per_level")]
    pub steps_per_stage: usize,
    pub h_rel: f64,
    pub sigma_max: Option<f64>,
    /// Default `max(prior sigma_min, 1e-3 eta)`.
    pub sigma_min: Option<f64>,
    pub l_prior: Option<f64>,
}

impl Default for AldConfig {
    fn default() -> Self {
        Self {
            stages: 50,
            steps_per_stage: 40,
            h_rel: 0.2,
            sigma_max: None,
            sigma_min: None,
            l_prior: None,
        }
    }
}

impl AldConfig {
    /// Range checks that need no problem.
    pub fn validate(&self) -> Result<()> {
        if self.stages < 2
            || self.steps_per_stage < 1
            || !(self.h_rel > 0.0)
            || !self.h_rel.is_finite()
        {
            return Err(Error::param(
                "sampler",
                "ALD needs stages >= 2, steps_per_stage >= 1, h_rel > 0",
            ));
        }
        Ok(())
    }
}

/// Runs ALD.
pub fn sample(
    problem: &Problem,
    cfg: &AldConfig,
    streams: &mut SampleStreams,
    mon: &dyn Monitor,
) -> Result<Output> {
    if cfg.stages < 2 || cfg.steps_per_stage < 1 || !(cfg.h_rel > 0.0) {
        return Err(Error::param(
            "sampler",
            "ALD needs stages >= 2, steps_per_stage >= 1, h_rel > 0",
        ));
    }
    let prior = Counted::new(problem.prior);
    let (smax, smin) = problem.sigma_levels(cfg.sigma_max, cfg.sigma_min);
    let sig = sigma_geometric(smax, smin, cfg.stages)?;
    let l = prior_lipschitz(problem.prior, cfg.l_prior)?;
    let a = problem.a_norm()?;
    let shape = problem.prior.sample_shape();
    let z = streams.randn(&shape, &problem.device())?;
    let mut x = problem.prior.diffusion_start(&z, sig[0])?;
    let total = (cfg.stages * cfg.steps_per_stage) as u64;
    let mut hs = Vec::with_capacity(sig.len());
    for (i, &s) in sig.iter().enumerate() {
        let ew = problem.eta * problem.eta + s * s;
        let li = if l > 0.0 {
            1.0 / (1.0 / l + s * s)
        } else {
            0.0
        };
        let h = cfg.h_rel / (li + a * a / ew);
        hs.push(h);
        for k in 0..cfg.steps_per_stage {
            let drift =
                (prior.score(&x, s)? + problem.likelihood_grad(&x, &problem.y, ew.sqrt())?)?;
            let z = streams.randn(&shape, x.device())?;
            x = ((&x + (drift * h)?)? + (z * (2.0 * h).sqrt())?)?;
            if k % CHECK_EVERY == CHECK_EVERY - 1 || k + 1 == cfg.steps_per_stage {
                problem.check(&x, s, "ald", i + 1, k + 1)?;
            }
            mon.on_step((i * cfg.steps_per_stage + k + 1) as u64, total);
        }
    }
    Ok(Output {
        weighted: None,
        samples: x,
        score_evals: prior.evals(),
        info: Info {
            steps: Some(hs),
            ..Default::default()
        },
        warm_start: None,
    })
}

impl Method for AldConfig {
    fn validate(&self) -> Result<()> {
        AldConfig::validate(self)
    }

    fn prepare(&self, problem: &Problem) -> Result<Box<dyn Kernel>> {
        problem.a_norm()?;
        Ok(Box::new(self.clone()))
    }
}

impl Kernel for AldConfig {
    fn sample(
        &self,
        problem: &Problem,
        streams: &mut SampleStreams,
        mon: &dyn Monitor,
    ) -> Result<Output> {
        sample(problem, self, streams, mon)
    }
}
