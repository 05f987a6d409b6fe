//! Diffusion posterior sampling (DPS; Chung et al., ICLR 2023, Algorithm 1) in the official code's
//! convention: DDPM ancestral steps in the variance-preserving variable `x_vp` (linear betas
//! 1e-4..0.02 over 1000 steps), then `x_vp <- x_vp - zeta grad_{x_vp} ||y - A D(x_t)||` with the
//! norm (not squared) taken per sample, never over the batch. Any prior is used through the VP/VE
//! conversion `x_ve = x_vp / sqrt(abar_t)`, `sigma_t = sqrt((1 - abar_t)/abar_t)`; the gradient goes
//! through the denoiser by candle autograd. Each step costs one forward and one backward pass
//! (2 score evaluations).

use candle_core::{Var, D};
use serde::{Deserialize, Serialize};

use super::health::CHECK_EVERY;
use super::method::{missing, Kernel, Method};
use super::{Counted, Info, Monitor, Output, Problem};
use crate::prior::Denoiser;
use crate::rng::SampleStreams;
use crate::{Error, Result};

/// DPS settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DpsConfig {
    /// Number of reverse steps (default 1000; fewer respace the 1000 training steps evenly).
    pub steps: usize,
    /// Guidance scale `zeta` on the (unsquared) residual norm (default 1.0).
    pub zeta: f64,
    /// Linear beta schedule endpoints and length (defaults 1e-4, 0.02, 1000).
    pub beta_start: f64,
    pub beta_end: f64,
    pub train_steps: usize,
}

impl Default for DpsConfig {
    fn default() -> Self {
        Self {
            steps: 1000,
            zeta: 1.0,
            beta_start: 1e-4,
            beta_end: 0.02,
            train_steps: 1000,
        }
    }
}

impl DpsConfig {
    /// Range checks that need no problem.
    pub fn validate(&self) -> Result<()> {
        if self.steps < 1 || self.steps > self.train_steps {
            return Err(Error::param(
                "sampler.steps",
                format!(
                    "need 1 <= steps <= {}, got {}",
                    self.train_steps, self.steps
                ),
            ));
        }
        if !(self.zeta >= 0.0) || !self.zeta.is_finite() {
            return Err(Error::param(
                "sampler.zeta",
                format!("must be >= 0, got {}", self.zeta),
            ));
        }
        if !(self.beta_start > 0.0 && self.beta_start <= self.beta_end && self.beta_end < 1.0) {
            return Err(Error::param(
                "sampler.beta_start",
                "need 0 < beta_start <= beta_end < 1",
            ));
        }
        Ok(())
    }
}

/// `abar_t` of the linear beta schedule, `t = 0..T-1`.
pub fn alphas_cumprod(beta_start: f64, beta_end: f64, t: usize) -> Vec<f64> {
    let mut acc = 1.0;
    (0..t)
        .map(|i| {
            let beta = if t > 1 {
                beta_start + (beta_end - beta_start) * i as f64 / (t - 1) as f64
            } else {
                beta_start
            };
            acc *= 1.0 - beta;
            acc
        })
        .collect()
}

/// Runs DPS.
pub fn sample(
    problem: &Problem,
    cfg: &DpsConfig,
    streams: &mut SampleStreams,
    mon: &dyn Monitor,
) -> Result<Output> {
    if cfg.steps < 1 || cfg.steps > cfg.train_steps {
        return Err(Error::param(
            "sampler.steps",
            format!("need 1 <= steps <= {}, got {}", cfg.train_steps, cfg.steps),
        ));
    }
    if !(cfg.zeta >= 0.0) {
        return Err(Error::param("sampler.zeta", "must be >= 0"));
    }
    let prior = Counted::new(problem.prior);
    let abar = alphas_cumprod(cfg.beta_start, cfg.beta_end, cfg.train_steps);
    // Evenly respaced timesteps, descending: t_0 = T-1 > ... > t_{n-1} = 0.
    let n = cfg.steps;
    let ts: Vec<usize> = (0..n)
        .map(|i| {
            if n == 1 {
                0
            } else {
                ((cfg.train_steps - 1) as f64 * (1.0 - i as f64 / (n - 1) as f64)).round() as usize
            }
        })
        .collect();
    let (smin, smax) = problem.prior.sigma_range();
    // Clamp the schedule to the model's trained range (as EDM does): timesteps whose sigma_t
    // exceeds sigma_max are skipped; x_T ~ N(0, I) is then a start at the first kept level (for
    // sigma_max = 80, abar = 1.6e-4, so the VP marginal is N(0, I) to that accuracy).
    let sig_of = |t: usize| ((1.0 - abar[t]) / abar[t]).sqrt();
    let ts: Vec<usize> = ts.into_iter().filter(|&t| sig_of(t) <= smax).collect();
    if ts.is_empty() {
        return Err(Error::SigmaOutOfRange {
            sigma: sig_of(0),
            min: smin,
            max: smax,
        });
    }
    let n = ts.len();
    let shape = problem.prior.sample_shape();
    let mut x = streams.randn(&shape, &problem.device())?; // x_T ~ N(0, I) in VP
    for (i, &t) in ts.iter().enumerate() {
        let ab = abar[t];
        let ab_prev = if i + 1 < n { abar[ts[i + 1]] } else { 1.0 };
        let alpha = ab / ab_prev;
        let beta = 1.0 - alpha;
        let sigma = ((1.0 - ab) / ab).sqrt();
        if sigma < smin * (1.0 - 1e-9) || sigma > smax {
            return Err(Error::SigmaOutOfRange {
                sigma,
                min: smin,
                max: smax,
            });
        }
        // x0_hat = D(x_vp / sqrt(abar), sigma_t), with the gradient of the residual norm.
        let xv = Var::from_tensor(&x)?;
        let x0 = prior.denoise(&(xv.as_tensor() / ab.sqrt())?, sigma)?;
        let r = problem.y.broadcast_sub(&problem.op.apply(&x0)?)?;
        let norms = (r.sqr()?.sum(D::Minus1)? + 1e-300)?.sqrt()?;
        let grads = norms.sum_all()?.backward()?;
        prior.add(1);
        let g = grads
            .get(xv.as_tensor())
            .ok_or_else(|| Error::Unsupported("the prior's denoiser is not differentiable".into()))?
            .clone();
        let x0 = x0.detach();
        // DDPM posterior q(x_{t-1} | x_t, x0): mean c1 x0 + c2 x_t, variance beta (1 - abar_prev)/(1 - abar).
        let c1 = ab_prev.sqrt() * beta / (1.0 - ab);
        let c2 = alpha.sqrt() * (1.0 - ab_prev) / (1.0 - ab);
        let mut xn = ((x0 * c1)? + (&x * c2)?)?;
        if i + 1 < n {
            let var = beta * (1.0 - ab_prev) / (1.0 - ab);
            let z = streams.randn(&shape, x.device())?;
            xn = (xn + (z * var.sqrt())?)?;
        }
        x = (xn - (g * cfg.zeta)?)?;
        // x is the VP state sqrt(abar) (x0 + sigma z): within sqrt(scale^2 + 1).
        if i % CHECK_EVERY == CHECK_EVERY - 1 || i + 1 == n {
            problem.check(&x, 1.0, "dps", 1, i + 1)?;
        }
        mon.on_step(2 * (i as u64 + 1), 2 * n as u64);
    }
    Ok(Output {
        weighted: None,
        samples: x,
        score_evals: prior.evals(),
        info: Info::default(),
        warm_start: None,
    })
}

impl Method for DpsConfig {
    fn validate(&self) -> Result<()> {
        DpsConfig::validate(self)
    }

    /// Differentiates through the denoiser: the prior must be differentiable.
    fn prepare(&self, problem: &Problem) -> Result<Box<dyn Kernel>> {
        if !problem.prior.differentiable() {
            return Err(missing(
                "dps",
                "gradients through the denoiser (a differentiable prior; a callable denoiser needs its vjp)",
            ));
        }
        Ok(Box::new(self.clone()))
    }
}

impl Kernel for DpsConfig {
    fn sample(
        &self,
        problem: &Problem,
        streams: &mut SampleStreams,
        mon: &dyn Monitor,
    ) -> Result<Output> {
        sample(problem, self, streams, mon)
    }
}
