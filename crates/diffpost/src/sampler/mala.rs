//! Metropolis-adjusted Langevin (MALA; Roberts & Tweedie 1996) on `p(x|y)` for priors with a
//! log-density: proposal `x' = x + h g(x) + sqrt(2h) z`, `g = grad log pi`,
//! `log pi(x) = log p(x) - |y - A x|^2 / (2 eta^2)`, accepted with probability
//! `min(1, pi(x') q(x|x') / (pi(x) q(x'|x)))`, `log q(a|b) = -|a - b - h g(b)|^2 / (4h)`.

use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};

use super::health::CHECK_EVERY;
use super::method::{missing, Kernel, Method};
use super::settings::{Start, StartKind, Step};
use super::ula::initialise;
use super::{prior_lipschitz, Counted, Info, Monitor, Output, Problem, StepRule};
use crate::prior::{ExactSample, LogDensity};
use crate::rng::SampleStreams;
use crate::Result;

/// MALA settings (`kind = "mala"`; no `score_sigma`: MALA needs the exact log-density).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MalaConfig {
    /// Number of MH steps (default 2000); one score evaluation each (plus one at the start).
    pub steps: usize,
    /// `h_rel` (default 0.5) or `h`.
    #[serde(flatten)]
    pub step: Step,
    /// Default: the diffusion start.
    #[serde(flatten)]
    pub start: Start,
    /// Overrides the prior's Lipschitz constant in the step rule.
    pub l_prior: Option<f64>,
}

/// MALA's default `h_rel`.
pub const H_REL: f64 = 0.5;

impl Default for MalaConfig {
    fn default() -> Self {
        Self {
            steps: 2000,
            step: Step::default(),
            start: Start::default(),
            l_prior: None,
        }
    }
}

impl MalaConfig {
    /// Range checks that need no problem.
    pub fn validate(&self) -> crate::Result<()> {
        self.step.rule(H_REL)?;
        if self.steps == 0 {
            return Err(crate::Error::param("sampler.steps", "must be >= 1"));
        }
        self.start.resolve(StartKind::Diffusion)?;
        Ok(())
    }
}

/// `(log pi(x) [B], grad log pi(x) [B, d])` for the posterior with noise `eta` (the tempered
/// targets of SMC use `eta / sqrt(lambda)`).
fn target_at(
    problem: &Problem,
    prior: &dyn LogDensity,
    x: &Tensor,
    eta: f64,
) -> Result<(Tensor, Tensor)> {
    let (lp, s) = prior.log_density_and_score(x)?;
    let r = problem.y.broadcast_sub(&problem.op.apply(x)?)?;
    let e2 = eta * eta;
    let ll = (r.sqr()?.sum(D::Minus1)? / (-2.0 * e2))?;
    let g = (s + (problem.op.adjoint(&r)? / e2)?)?;
    Ok(((lp + ll)?, g))
}

/// `steps` MALA steps from `x` targeting the posterior with noise `eta` (one evaluation for the
/// start, one per step, counted in `counted`); returns the chains and the acceptance rate.
/// `(name, stage)` label a divergence; `on_step(k)` after step `k`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn steps(
    problem: &Problem,
    prior: &dyn LogDensity,
    counted: &Counted,
    mut x: Tensor,
    eta: f64,
    h: f64,
    steps: usize,
    streams: &mut SampleStreams,
    (name, stage): (&str, usize),
    mut on_step: impl FnMut(usize),
) -> Result<(Tensor, f64)> {
    let (mut lp, mut g) = target_at(problem, prior, &x, eta)?;
    counted.add(1);
    let shape = problem.prior.sample_shape();
    let mut accepted = 0.0;
    let b = streams.len();
    for k in 0..steps {
        let z = streams.randn(&shape, x.device())?;
        let u = Tensor::from_vec(streams.uniform_vec(), b, x.device())?;
        let mean = (&x + (&g * h)?)?;
        let xp = (&mean + (z * (2.0 * h).sqrt())?)?;
        let (lpp, gp) = target_at(problem, prior, &xp, eta)?;
        counted.add(1);
        let fwd = (&xp - &mean)?.sqr()?.sum(D::Minus1)?; // |x' - x - h g(x)|^2
        let bwd = (&x - (&xp + (&gp * h)?)?)?.sqr()?.sum(D::Minus1)?;
        let log_alpha = ((&lpp - &lp)? + ((fwd - bwd)? / (4.0 * h))?)?;
        // Accept where log u < log alpha (NaN proposals are rejected).
        let acc = u.log()?.lt(&log_alpha)?; // [B] u8
        accepted += acc
            .to_dtype(candle_core::DType::F64)?
            .sum_all()?
            .to_scalar::<f64>()?;
        let acc2 = acc.unsqueeze(1)?.broadcast_as(x.dims())?;
        x = acc2.where_cond(&xp, &x)?;
        g = acc2.where_cond(&gp, &g)?;
        lp = acc.where_cond(&lpp, &lp)?;
        if k % CHECK_EVERY == CHECK_EVERY - 1 || k + 1 == steps {
            problem.check(&x, 0.0, name, stage, k + 1)?;
        }
        on_step(k);
    }
    Ok((x, accepted / (b as f64 * steps.max(1) as f64)))
}

/// Runs MALA. `prior` must be the same prior as `problem.prior`, seen through its log-density.
pub fn sample(
    problem: &Problem,
    prior: &dyn LogDensity,
    exact: Option<&dyn ExactSample>,
    cfg: &MalaConfig,
    streams: &mut SampleStreams,
    mon: &dyn Monitor,
) -> Result<Output> {
    let step = cfg.step.rule(H_REL)?;
    let init = cfg.start.resolve(StartKind::Diffusion)?;
    let counted = Counted::new(problem.prior);
    let l = match step {
        StepRule::Fixed { .. } => 0.0,
        _ => prior_lipschitz(problem.prior, cfg.l_prior)?,
    };
    let h = step.step(l, problem.a_norm()?, problem.eta);
    let x = initialise(&counted, exact, &init, streams, &super::Silent, "mala init")?;
    let init_evals = counted.evals();
    let total = init_evals + 1 + cfg.steps as u64;
    let (x, acceptance) = steps(
        problem,
        prior,
        &counted,
        x,
        problem.eta,
        h,
        cfg.steps,
        streams,
        ("mala", 1),
        |k| mon.on_step(init_evals + k as u64 + 2, total),
    )?;
    Ok(Output {
        weighted: None,
        samples: x,
        score_evals: counted.evals(),
        info: Info {
            acceptance: Some(acceptance),
            steps: Some(vec![h]),
            etas: None,
            integrator: None,
            smc: None,
        },
        warm_start: None,
    })
}

impl Method for MalaConfig {
    fn validate(&self) -> Result<()> {
        MalaConfig::validate(self)
    }

    /// Needs the prior's log-density (analytic priors; not a perturbed score).
    fn prepare(&self, problem: &Problem) -> Result<Box<dyn Kernel>> {
        if problem.prior.as_log_density().is_none() {
            return Err(if problem.prior.as_mixture().is_some() {
                missing(
                    "mala",
                    "the prior's log-density, which a perturbed score does not have",
                )
            } else {
                missing("mala", "an analytic (gmm/isotropic) prior")
            });
        }
        problem.a_norm()?;
        Ok(Box::new(self.clone()))
    }

    /// Every default written out (`summary.json` `params`).
    fn filled(&self) -> Self {
        Self {
            step: self.step.filled(H_REL),
            start: self.start.filled(StartKind::Diffusion),
            ..self.clone()
        }
    }
}

impl Kernel for MalaConfig {
    fn sample(
        &self,
        problem: &Problem,
        streams: &mut SampleStreams,
        mon: &dyn Monitor,
    ) -> Result<Output> {
        let prior = problem
            .prior
            .as_log_density()
            .ok_or_else(|| missing("mala", "an analytic (gmm/isotropic) prior"))?;
        sample(
            problem,
            prior,
            problem.prior.as_exact_sample(),
            self,
            streams,
            mon,
        )
    }
}
