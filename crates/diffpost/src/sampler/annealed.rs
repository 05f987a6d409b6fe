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
use serde::{Deserialize, Serialize};

use super::integrator::Integrator;
use super::method::{Kernel, Method};
use super::settings::{AdmissibleKeys, EtaScheduleKind, ScoreLevel, Start, StartKind, Step};
use super::ula::{initialise, langevin};
use super::{Counted, Info, Monitor, Output, Problem, StepRule};
use crate::prior::{Denoiser, ExactSample};
use crate::rng::SampleStreams;
use crate::schedule::{eta_admissible, eta_geometric};
use crate::{Error, Result};

/// Algorithm 1 settings (`kind = "annealed"`; Algorithms 2 and 3 embed them). Defaults
/// (justified in docs/algorithms.md): 20 stages, geometric from
/// `eta_max = eta * min(100, 2^((stages-1)/2))`, 400 steps per stage, `h_rel = 0.2`, diffusion start
/// of 500 reverse-SDE steps: 8,100 score evaluations per sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AnnealedConfig {
    /// `N`, the number of eta levels (N - 1 Langevin runs); the admissible schedule builds its
    /// own (recorded in `summary.json` `params`).
    pub stages: usize,
    /// `eta_1`; default `eta * min(100, 2^((stages - 1)/2))`.
    pub eta_max: Option<f64>,
    /// Geometric levels, or the paper's admissible construction (Definition D.1).
    pub schedule: EtaScheduleKind,
    /// Definition D.1's constants (`schedule = "admissible"` only).
    #[serde(flatten)]
    pub admissible: AdmissibleKeys,
    /// `M_i` (the same for every stage); stage time `T_i = M_i h_i`.
    pub steps_per_stage: usize,
    /// `h_rel` (default 0.2) or `h`.
    #[serde(flatten)]
    pub step: Step,
    /// Default: the diffusion start.
    #[serde(flatten)]
    pub start: Start,
    #[serde(flatten)]
    pub score: ScoreLevel,
    /// After the last stage, replace each sample by the prior's Tweedie denoiser
    /// `D(x, score_sigma)` (one more evaluation). With a smoothed score (`score_sigma > 0`, as
    /// networks need) the chains sample the posterior of the *smoothed* prior `p_{score_sigma}`,
    /// whose samples carry about `score_sigma` of extra noise per pixel; this removes it, as the
    /// final denoising step of ALD and EDM does. Off by default (and a no-op at `score_sigma = 0`).
    pub final_denoise: bool,
    /// Euler-Maruyama (default) or the exact-likelihood splitting (`h = h_rel / L_prior`).
    pub integrator: Integrator,
}

/// Algorithm 1's default `h_rel`.
pub const H_REL: f64 = 0.2;

impl Default for AnnealedConfig {
    fn default() -> Self {
        Self {
            stages: 20,
            eta_max: None,
            schedule: EtaScheduleKind::Geometric,
            admissible: AdmissibleKeys::default(),
            steps_per_stage: 400,
            step: Step::default(),
            start: Start::default(),
            score: ScoreLevel::default(),
            final_denoise: false,
            integrator: Integrator::Euler,
        }
    }
}

impl AnnealedConfig {
    /// Range checks that need no problem (run before anything heavy is loaded).
    pub fn validate(&self) -> Result<()> {
        self.step.rule(H_REL)?;
        self.admissible.check(self.schedule)?;
        if self.steps_per_stage == 0 {
            return Err(Error::param("sampler.steps_per_stage", "must be >= 1"));
        }
        if self.schedule == EtaScheduleKind::Geometric && self.stages < 2 {
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
        self.start.resolve(StartKind::Diffusion)?;
        Ok(())
    }

    /// The eta levels `eta_1 > ... > eta_N = eta`.
    pub fn etas(&self, eta: f64, a_norm: f64, d: usize, m: usize) -> Result<Vec<f64>> {
        match self.schedule {
            EtaScheduleKind::Geometric => {
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
            EtaScheduleKind::Admissible => {
                eta_admissible(eta, a_norm, d, m, &self.admissible.params())
            }
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
    let l = match cfg.step.rule(H_REL)? {
        StepRule::Fixed { .. } => 0.0,
        _ => super::prior_lipschitz_at(
            problem.prior,
            cfg.score.l_prior,
            super::score_level(problem.prior, cfg.score.score_sigma)?,
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
    let step = cfg.step.rule(H_REL)?;
    let init = cfg.start.resolve(StartKind::Diffusion)?;
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
        None => initialise(&counted, exact, &init, streams, &super::Silent, name)?,
    };
    let init_evals = counted.evals();
    let total = init_evals + ((n - 1) * cfg.steps_per_stage) as u64;
    let s_sigma = super::score_level(problem.prior, cfg.score.score_sigma)?;
    let (integrator, integrator_note) = problem.integrator(cfg.integrator);
    let a_step = if integrator.likelihood_in_step() {
        a_norm
    } else {
        0.0
    };
    // Step 3: Langevin toward p(x | y_{i+1}) for i = 1..N-1.
    let mut hs = Vec::with_capacity(n - 1);
    for i in 0..n - 1 {
        let h = step.step(l_prior, a_step, etas[i + 1]);
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

impl Method for AnnealedConfig {
    fn validate(&self) -> Result<()> {
        AnnealedConfig::validate(self)
    }

    fn prepare(&self, problem: &Problem) -> Result<Box<dyn Kernel>> {
        problem.a_norm()?;
        Ok(Box::new(self.clone()))
    }

    fn record_resolved(
        &self,
        info: &Info,
        params: &mut serde_json::Map<String, serde_json::Value>,
    ) {
        record_schedule(info, params);
    }

    /// Every default written out (`summary.json` `params`).
    fn filled(&self) -> Self {
        Self {
            admissible: self.admissible.filled(self.schedule),
            step: self.step.filled(H_REL),
            start: self.start.filled(StartKind::Diffusion),
            ..self.clone()
        }
    }
}

/// The schedule as it ran: `eta_max` when the config left it to its default, and for the
/// admissible schedule (which chooses its own number of levels) `stages`, the levels it built.
pub(crate) fn record_schedule(
    info: &Info,
    params: &mut serde_json::Map<String, serde_json::Value>,
) {
    if let Some(etas) = &info.etas {
        if !params.contains_key("eta_max") {
            params.insert("eta_max".into(), serde_json::json!(etas[0]));
        }
        if params.get("schedule").and_then(|v| v.as_str()) == Some("admissible") {
            params.insert("stages".into(), serde_json::json!(etas.len()));
        }
    }
}

impl Kernel for AnnealedConfig {
    fn sample(
        &self,
        problem: &Problem,
        streams: &mut SampleStreams,
        mon: &dyn Monitor,
    ) -> Result<Output> {
        sample(problem, problem.prior.as_exact_sample(), self, streams, mon)
    }
}
