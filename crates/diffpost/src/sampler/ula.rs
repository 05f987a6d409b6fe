//! Unadjusted Langevin algorithm (ULA) on the posterior `p(x|y)` directly: the non-annealed control.
//!
//! `X <- X + h (s(X) + A^T (y - A X) / eta^2) + sqrt(2 h) xi` (Euler–Maruyama of the Langevin SDE;
//! docs/algorithms.md, "ULA"; step 3 of Algorithm 1 with the final `eta`).

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::method::{Kernel, Method};
use super::settings::{Init, ScoreLevel, Start, StartKind, Step};

use super::health::CHECK_EVERY;
use super::integrator::{Integrator, LikelihoodFlow};
use super::{prior_lipschitz_at, Counted, Info, Monitor, Output, Problem, StepRule};
use crate::prior::{Denoiser, ExactSample};
use crate::rng::SampleStreams;
use crate::{Error, Result};

/// Draws the initial points.
pub(crate) fn initialise(
    prior: &dyn Denoiser,
    exact: Option<&dyn ExactSample>,
    init: &Init,
    streams: &mut SampleStreams,
    mon: &dyn Monitor,
    name: &str,
) -> Result<Tensor> {
    match init {
        Init::Diffusion(cfg) => super::diffusion::run(prior, cfg, streams, mon, name),
        Init::Noise => streams.randn(&prior.sample_shape(), &prior.device()),
        Init::ExactPrior => match exact {
            Some(e) => e.sample_exact(streams),
            None => Err(Error::param(
                "sampler.init",
                "exact-prior needs an analytic prior (gmm)",
            )),
        },
    }
}

/// ULA settings (`kind = "ula"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UlaConfig {
    /// Number of Langevin steps (default 2000).
    pub steps: usize,
    /// `h_rel` (default 0.2) or `h`.
    #[serde(flatten)]
    pub step: Step,
    /// Default: the diffusion start.
    #[serde(flatten)]
    pub start: Start,
    #[serde(flatten)]
    pub score: ScoreLevel,
    /// Euler-Maruyama (default) or the exact-likelihood splitting (`h = h_rel / L_prior`).
    pub integrator: Integrator,
}

/// ULA's default `h_rel`.
pub const H_REL: f64 = 0.2;

impl Default for UlaConfig {
    fn default() -> Self {
        Self {
            steps: 2000,
            step: Step::default(),
            start: Start::default(),
            score: ScoreLevel::default(),
            integrator: Integrator::Euler,
        }
    }
}

impl UlaConfig {
    /// Range checks that need no problem.
    pub fn validate(&self) -> Result<()> {
        self.step.rule(H_REL)?;
        if self.steps == 0 {
            return Err(Error::param("sampler.steps", "must be >= 1"));
        }
        self.start.resolve(StartKind::Diffusion)?;
        Ok(())
    }
}

/// `steps` ULA steps targeting `p(x | y_target)` with noise `eta` (`y_target` `[1,m]` or `[B,m]`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn langevin(
    problem: &Problem,
    prior: &dyn Denoiser,
    mut x: Tensor,
    y_target: &Tensor,
    eta: f64,
    h: f64,
    steps: usize,
    score_sigma: f64,
    integrator: Integrator,
    streams: &mut SampleStreams,
    name: &str,
    stage: usize,
    mut on_step: impl FnMut(usize),
) -> Result<Tensor> {
    let shape = prior.sample_shape();
    let noise = (2.0 * h).sqrt();
    // Eq. 37: the likelihood's OU flow exactly, when asked and the operator has a spectrum.
    let flow = match (integrator, problem.op.gram_spectrum()) {
        (Integrator::ExactLikelihood, Some(spec)) => {
            Some(LikelihoodFlow::new(problem.op, spec, y_target, eta, h)?)
        }
        (Integrator::ExactLikelihoodStrang, Some(spec)) => Some(LikelihoodFlow::new(
            problem.op,
            spec,
            y_target,
            eta,
            h / 2.0,
        )?),
        _ => None,
    };
    let strang = integrator == Integrator::ExactLikelihoodStrang;
    for k in 0..steps {
        let z = streams.randn(&shape, x.device())?;
        x = match &flow {
            // Eq. 39: flow h/2, prior step h, flow h/2.
            Some(flow) if strang => {
                let x1 = flow.step(&x, &z)?;
                let x2 = (&x1 + (prior.score(&x1, score_sigma)? * h)?)?;
                let z2 = streams.randn(&shape, x.device())?;
                flow.step(&x2, &z2)?
            }
            Some(flow) => {
                let xp = (&x + (prior.score(&x, score_sigma)? * h)?)?;
                flow.step(&xp, &z)?
            }
            None => {
                let drift = (prior.score(&x, score_sigma)?
                    + problem.likelihood_grad(&x, y_target, eta)?)?;
                ((x + (drift * h)?)? + (z * noise)?)?
            }
        };
        if k % CHECK_EVERY == CHECK_EVERY - 1 || k + 1 == steps {
            problem.check(&x, score_sigma, name, stage, k + 1)?;
        }
        on_step(k);
    }
    Ok(x)
}

/// Runs ULA on `p(x | y)`.
pub fn sample(
    problem: &Problem,
    exact: Option<&dyn ExactSample>,
    cfg: &UlaConfig,
    streams: &mut SampleStreams,
    mon: &dyn Monitor,
) -> Result<Output> {
    let step = cfg.step.rule(H_REL)?;
    let init = cfg.start.resolve(StartKind::Diffusion)?;
    let counted = Counted::new(problem.prior);
    let s_sigma = super::score_level(problem.prior, cfg.score.score_sigma)?;
    let l = match step {
        StepRule::Fixed { .. } => 0.0,
        _ => prior_lipschitz_at(problem.prior, cfg.score.l_prior, s_sigma)?,
    };
    let (integrator, integrator_note) = problem.integrator(cfg.integrator);
    let a = if integrator.likelihood_in_step() {
        problem.a_norm()?
    } else {
        0.0
    };
    let h = step.step(l, a, problem.eta);
    let x = initialise(&counted, exact, &init, streams, &super::Silent, "ula init")?;
    let init_evals = counted.evals();
    let total = init_evals + cfg.steps as u64;
    let x = langevin(
        problem,
        &counted,
        x,
        &problem.y,
        problem.eta,
        h,
        cfg.steps,
        s_sigma,
        integrator,
        streams,
        "ula",
        1,
        |k| mon.on_step(init_evals + k as u64 + 1, total),
    )?;
    Ok(Output {
        weighted: None,
        samples: x,
        score_evals: counted.evals(),
        info: Info {
            steps: Some(vec![h]),
            integrator: Some(integrator_note),
            ..Default::default()
        },
        warm_start: None,
    })
}

impl Method for UlaConfig {
    fn validate(&self) -> Result<()> {
        UlaConfig::validate(self)
    }

    fn prepare(&self, problem: &Problem) -> Result<Box<dyn Kernel>> {
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

impl Kernel for UlaConfig {
    fn sample(
        &self,
        problem: &Problem,
        streams: &mut SampleStreams,
        mon: &dyn Monitor,
    ) -> Result<Output> {
        sample(problem, problem.prior.as_exact_sample(), self, streams, mon)
    }
}
