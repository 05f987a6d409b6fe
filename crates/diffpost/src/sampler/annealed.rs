//! Algorithm 1 of Xun, Gupta & Price (NeurIPS 2025), PosteriorSampler: annealed Langevin from a
//! diffusion start.
//!
//! 1. Auxiliary measurements, backwards: `y_N = y`, `y_i = y_{i+1} + sqrt(eta_i^2 - eta_{i+1}^2) xi_i`,
//!    so `y_i ~ A x + N(0, eta_i^2 I)`; each sample draws its own chain `y_1..y_{N-1}`.
//! 2. `X_1 ~ p(x)` by unconditional diffusion (eta_1 is large, so `p(x|y_1) ≈ p(x)`).
//! 3. For `i = 1..N-1`: ULA targeting `p(x | y_{i+1})` started at `X_i`, `M_i` steps of size
//!    `h_i = h_rel / (L_prior + ||A||^2 / eta_{i+1}^2)`; its end is `X_{i+1}`.
//! 4. Output `X_N`.

use candle_core::Tensor;
use serde::Serialize;

use super::diffusion::DiffusionConfig;
use super::integrator::Integrator;
use super::ula::{initialise, langevin, Init};
use super::{Counted, Info, Monitor, Output, Problem, StepRule};
use crate::prior::{Denoiser, ExactSample};
use crate::rng::SampleStreams;
use crate::schedule::{eta_admissible, eta_geometric, AdmissibleParams};
use crate::{Error, Result};

/// The eta annealing schedule.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum EtaSchedule {
    /// `stages` geometric levels from `eta_max` to `eta` (`eta_i <= sqrt(2) eta_{i+1}` enforced).
    Geometric,
    /// The paper's Definition D.1 construction (its number of stages replaces `stages`).
    Admissible(AdmissibleParams),
}

/// Algorithm 1 settings. Defaults (justified in docs/algorithms.md): 20 stages, geometric from
/// `eta_max = eta * min(100, 2^((stages-1)/2))`, 400 steps per stage, `h_rel = 0.2`, diffusion start
/// of 500 reverse-SDE steps: 8,100 score evaluations per sample.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AnnealedConfig {
    /// `N`, the number of eta levels (N - 1 Langevin runs).
    pub stages: usize,
    /// `eta_1`; default `eta * min(100, 2^((stages - 1)/2))`.
    pub eta_max: Option<f64>,
    pub schedule: EtaSchedule,
    /// `M_i` (the same for every stage); stage time `T_i = M_i h_i`.
    pub steps_per_stage: usize,
    pub step: StepRule,
    pub init: Init,
    /// Overrides the prior's Lipschitz constant in the step rule.
    pub l_prior: Option<f64>,
    /// Noise level of the prior score (default: the prior's sigma_min; see [`super::score_level`]).
    pub score_sigma: Option<f64>,
    /// After the last stage, replace each sample by the prior's Tweedie denoiser
    /// `D(x, score_sigma)` (one more evaluation). With a smoothed score (`score_sigma > 0`, as
    /// networks need) the chains sample the posterior of the *smoothed* prior `p_{score_sigma}`,
    /// whose samples carry about `score_sigma` of extra noise per pixel; this removes it, as the
    /// final denoising step of ALD and EDM does. Off by default (and a no-op at `score_sigma = 0`).
    pub final_denoise: bool,
    /// Euler-Maruyama (default) or the exact-likelihood splitting (`h = h_rel / L_prior`).
    pub integrator: Integrator,
}

impl Default for AnnealedConfig {
    fn default() -> Self {
        Self {
            stages: 20,
            eta_max: None,
            schedule: EtaSchedule::Geometric,
            steps_per_stage: 400,
            step: StepRule::Relative { h_rel: 0.2 },
            init: Init::Diffusion(DiffusionConfig::default()),
            l_prior: None,
            score_sigma: None,
            final_denoise: false,
            integrator: Integrator::Euler,
        }
    }
}

impl AnnealedConfig {
    /// Range checks that need no problem (run before anything heavy is loaded).
    pub fn validate(&self) -> Result<()> {
        self.step.validate()?;
        if self.steps_per_stage == 0 {
            return Err(Error::param("sampler.steps_per_stage", "must be >= 1"));
        }
        if matches!(self.schedule, EtaSchedule::Geometric) && self.stages < 2 {
            return Err(Error::param(
                "sampler.stages",
                format!("need at least 2, got {}", self.stages),
            ));
        }
        if let Some(e) = self.eta_max {
            if !(e > 0.0) || !e.is_finite() {
                return Err(Error::param(
                    "sampler.eta_max",
                    format!("must be > 0, got {e}"),
                ));
            }
        }
        if let Init::Diffusion(c) = &self.init {
            c.validate("init_steps")?;
        }
        Ok(())
    }

    /// The eta levels `eta_1 > ... > eta_N = eta`.
    pub fn etas(&self, eta: f64, a_norm: f64, d: usize, m: usize) -> Result<Vec<f64>> {
        match &self.schedule {
            EtaSchedule::Geometric => {
                if self.stages < 2 {
                    return Err(Error::param(
                        "sampler.stages",
                        format!("need at least 2, got {}", self.stages),
                    ));
                }
                let eta_max = self
                    .eta_max
                    .unwrap_or(eta * 100f64.min(2f64.powf((self.stages - 1) as f64 / 2.0)));
                eta_geometric(eta_max, eta, self.stages)
            }
            EtaSchedule::Admissible(p) => eta_admissible(eta, a_norm, d, m, p),
        }
    }
}

/// Runs Algorithm 1 on `problem`.
pub fn sample(
    problem: &Problem,
    exact: Option<&dyn ExactSample>,
    cfg: &AnnealedConfig,
    streams: &mut SampleStreams,
    mon: &dyn Monitor,
) -> Result<Output> {
    let a = problem.a_norm()?;
    let l = match cfg.step {
        StepRule::Fixed { .. } => 0.0,
        _ => super::prior_lipschitz_at(
            problem.prior,
            cfg.l_prior,
            super::score_level(problem.prior, cfg.score_sigma)?,
        )?,
    };
    sample_with(problem, exact, cfg, a, l, None, streams, mon, "annealed")
}

/// Algorithm 1 with `||A||` and `L_prior` given (Algorithms 2 and 3 call this on a tilted prior).
#[allow(clippy::too_many_arguments)]
pub(crate) fn sample_with(
    problem: &Problem,
    exact: Option<&dyn ExactSample>,
    cfg: &AnnealedConfig,
    a_norm: f64,
    l_prior: f64,
    x_init: Option<&Tensor>,
    streams: &mut SampleStreams,
    mon: &dyn Monitor,
    name: &str,
) -> Result<Output> {
    cfg.step.validate()?;
    if cfg.steps_per_stage == 0 {
        return Err(Error::param("sampler.steps_per_stage", "must be >= 1"));
    }
    let m = problem.op.out_dim();
    let etas = cfg.etas(problem.eta, a_norm, problem.prior.dim(), m)?;
    let n = etas.len();
    let device = problem.device();
    // Step 1: the auxiliary chain y_N = y, y_i = y_{i+1} + sqrt(eta_i^2 - eta_{i+1}^2) xi_i.
    let mut y_aux: Vec<Tensor> = vec![problem.y.clone(); n];
    y_aux[n - 1] = problem.y.broadcast_as((streams.len(), m))?.contiguous()?;
    for i in (0..n - 1).rev() {
        let xi = streams.randn(&[m], &device)?;
        let s = (etas[i] * etas[i] - etas[i + 1] * etas[i + 1]).sqrt();
        y_aux[i] = (&y_aux[i + 1] + (xi * s)?)?;
    }
    // Step 2: X_1 from the initialiser.
    let counted = Counted::new(problem.prior);
    let mut x = match x_init {
        Some(x) => x
            .broadcast_as((streams.len(), problem.prior.dim()))?
            .contiguous()?,
        None => initialise(&counted, exact, &cfg.init, streams, &super::Silent, name)?,
    };
    let init_evals = counted.evals();
    let total = init_evals + ((n - 1) * cfg.steps_per_stage) as u64;
    let s_sigma = super::score_level(problem.prior, cfg.score_sigma)?;
    let (integrator, integrator_note) = problem.integrator(cfg.integrator);
    let a_step = if integrator.likelihood_in_step() {
        a_norm
    } else {
        0.0
    };
    // Step 3: Langevin toward p(x | y_{i+1}) for i = 1..N-1.
    let mut hs = Vec::with_capacity(n - 1);
    for i in 0..n - 1 {
        let h = cfg.step.step(l_prior, a_step, etas[i + 1]);
        hs.push(h);
        let base = init_evals + (i * cfg.steps_per_stage) as u64;
        x = langevin(
            problem,
            &counted,
            x,
            &y_aux[i + 1],
            etas[i + 1],
            h,
            cfg.steps_per_stage,
            s_sigma,
            integrator,
            streams,
            name,
            i + 1,
            |k| mon.on_step(base + k as u64 + 1, total),
        )?;
    }
    if cfg.final_denoise && s_sigma > 0.0 {
        x = counted.denoise(&x, s_sigma)?;
        problem.check(&x, 0.0, name, n, 0)?;
    }
    Ok(Output {
        weighted: None,
        samples: x,
        score_evals: counted.evals(),
        info: Info {
            etas: Some(etas),
            steps: Some(hs),
            acceptance: None,
            integrator: Some(integrator_note),
            smc: None,
        },
        warm_start: None,
    })
}
