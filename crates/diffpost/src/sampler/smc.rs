//! Sequential Monte Carlo over tempered posteriors (docs/algorithms.md, "SMC"):
//!
//! `pi_lambda(x) ∝ p(x) L(x)^lambda = p(x) N(y; A x, (eta^2 / lambda) I)`, `lambda: 0 -> 1`,
//! with `L(x) = N(y; A x, eta^2 I)`. The prior cancels in the ratio of two tempered targets, so the
//! incremental weights need only the likelihood, `w_j = L(x_j)^(lambda' - lambda)`: particles
//! drawn from the prior (in its own mode proportions) are reweighted to the posterior's mode
//! proportions, which no local move can do.
//!
//! Per stage: choose `lambda'` (adaptively, by bisection, so that the ESS of the reweighted
//! particles is `ess_target` times the current ESS; or the fixed geometric schedule of
//! Algorithm 1's eta levels, `lambda_i = (eta / eta_i)^2`); reweight (Eq. SMC-1); resample when
//! `ESS < resample_threshold P`; then `moves_per_stage` Langevin moves (ULA, or MALA where the
//! prior has a log-density) targeting `pi_lambda'`, step by Algorithm 1's rule at the effective
//! noise `eta / sqrt(lambda')`. At `lambda = 1` the weighted particles are resampled to
//! unweighted samples. The product of the mean incremental weights estimates the evidence
//! `p(y) = ∫ p(x) L(x) dx` (all normalising constants included).
//!
//! A population of `P` particles draws its own randomness from its particles' streams (particle
//! `j` from stream `j`, resampling from the population's first stream), so a population's result
//! does not depend on the batch, the thread count or the shard it ran in.

use super::integrator::Integrator;
use candle_core::Tensor;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::method::{Kernel, Method};
use super::settings::{Init, ScoreLevel, Start, StartKind, Step};
use super::ula::initialise;
use super::{prior_lipschitz_at, score_level, Counted, Info, Monitor, Output, Problem, Weighted};
use crate::prior::{Denoiser, ExactSample, LogDensity};
use crate::rng::SampleStreams;
use crate::schedule::eta_geometric;
use crate::{Error, Result};

/// How the tempering levels are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tempering {
    /// Next `lambda` by bisection on the ESS of the incremental weights.
    #[default]
    Adaptive,
    /// `lambda_i = (eta / eta_i)^2` on Algorithm 1's geometric eta levels (`stages`, `eta_max`).
    Geometric,
}

/// Resampling scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resampling {
    /// One uniform, `P` evenly spaced points (lowest variance of the three).
    #[default]
    Systematic,
    /// `P` independent draws from the weights.
    Multinomial,
    /// `floor(P W_j)` copies of each particle, the rest multinomial on the residual weights.
    Residual,
}

/// The Langevin move that rejuvenates the particles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MoveKernel {
    Ula,
    /// Metropolis-adjusted (needs the prior's log-density: analytic priors).
    Mala,
}

/// SMC settings (`kind = "smc"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SmcConfig {
    /// Particles per population `P` (default: all `n` samples in one population).
    pub particles: Option<usize>,
    /// How the tempering levels are chosen (was `schedule`, which names the eta levels of the
    /// annealed samplers).
    pub tempering: Tempering,
    /// Adaptive tempering: the ESS after reweighting is `ess_target` times the ESS before.
    pub ess_target: f64,
    /// Geometric tempering: the number of eta levels (as Algorithm 1).
    pub stages: usize,
    /// Geometric tempering: `eta_1` (default as Algorithm 1).
    pub eta_max: Option<f64>,
    /// Adaptive tempering: the run fails if `lambda = 1` is not reached within this many stages.
    pub max_stages: usize,
    pub resampling: Resampling,
    /// Resample when `ESS < resample_threshold * P`.
    pub resample_threshold: f64,
    pub moves_per_stage: usize,
    /// Moves at `lambda = 1` after the last stage's (the output decorrelates from the last
    /// resampling).
    pub final_moves: usize,
    /// Default: MALA where the prior has a log-density, ULA otherwise.
    pub kernel: Option<MoveKernel>,
    /// Step relative to the stage's stiffness (default `h_rel` 0.5 for MALA, 0.2 for ULA), or `h`.
    #[serde(flatten)]
    pub step: Step,
    /// Start: exact prior draws where the prior has them, the diffusion start (as Algorithm 1)
    /// otherwise.
    #[serde(flatten)]
    pub start: Start,
    /// The prior score in the moves (networks: `score_sigma`), as Algorithm 1.
    #[serde(flatten)]
    pub score: ScoreLevel,
    /// Tweedie denoiser `D(x, score_sigma)` on the output, as Algorithm 1.
    pub final_denoise: bool,
    /// ULA moves: "euler" (default) or "exact-likelihood" (then ULA is the default kernel).
    pub integrator: Integrator,
}

impl Default for SmcConfig {
    fn default() -> Self {
        Self {
            particles: None,
            tempering: Tempering::Adaptive,
            ess_target: 0.5,
            stages: 20,
            eta_max: None,
            max_stages: 1000,
            resampling: Resampling::Systematic,
            resample_threshold: 0.5,
            moves_per_stage: 100,
            final_moves: 400,
            kernel: None,
            step: Step::default(),
            start: Start::default(),
            score: ScoreLevel::default(),
            final_denoise: false,
            integrator: Integrator::Euler,
        }
    }
}

impl SmcConfig {
    /// Range checks that need no problem.
    pub fn validate(&self) -> Result<()> {
        let unit = |name: &str, v: f64, closed: bool| {
            let ok = v > 0.0 && if closed { v <= 1.0 } else { v < 1.0 };
            if ok {
                Ok(())
            } else {
                Err(Error::param(
                    format!("sampler.{name}"),
                    format!(
                        "must be in (0, 1{}, got {v}",
                        if closed { "]" } else { ")" }
                    ),
                ))
            }
        };
        unit("ess_target", self.ess_target, false)?;
        unit("resample_threshold", self.resample_threshold, true)?;
        if self.particles == Some(0) {
            return Err(Error::param("sampler.particles", "must be >= 1"));
        }
        if self.moves_per_stage == 0 {
            return Err(Error::param("sampler.moves_per_stage", "must be >= 1"));
        }
        if self.max_stages == 0 {
            return Err(Error::param("sampler.max_stages", "must be >= 1"));
        }
        if self.tempering == Tempering::Geometric && self.stages < 2 {
            return Err(Error::param("sampler.stages", "need at least 2"));
        }
        if self.tempering == Tempering::Adaptive && self.eta_max.is_some() {
            return Err(Error::param(
                "sampler.eta_max",
                "applies only to tempering = \"geometric\"",
            ));
        }
        if let Some(e) = self.eta_max {
            if !(e > 0.0) {
                return Err(Error::param(
                    "sampler.eta_max",
                    format!("must be > 0, got {e}"),
                ));
            }
        }
        self.step.rule(0.2)?;
        self.start.resolve(StartKind::ExactPrior)?;
        Ok(())
    }

    /// Particles per population for a run of `n` samples.
    pub fn population_size(&self, n: usize) -> usize {
        self.particles.unwrap_or(n)
    }
}

/// What one population did, stage by stage.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SmcTrace {
    /// `lambda_1 < ... < lambda_S = 1` (`lambda_0 = 0`; likelihood tempering).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lambdas: Vec<f64>,
    /// `rho_1 > ... > rho_S = 0` (SMC with Gibbs moves; `rho_0 = rho_max`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rhos: Vec<f64>,
    /// ESS after reweighting, before resampling.
    pub ess_before: Vec<f64>,
    /// ESS after resampling (`P` where it resampled).
    pub ess_after: Vec<f64>,
    pub resampled: Vec<bool>,
    /// Langevin step per stage.
    pub steps: Vec<f64>,
    /// MALA acceptance per stage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acceptance: Vec<f64>,
    /// `log p(y)` estimate of this population (nats).
    pub log_evidence: f64,
    /// Score evaluations per particle.
    pub score_evals: u64,
}

pub(super) fn log_sum_exp(a: &[f64]) -> f64 {
    let m = a.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    if !m.is_finite() {
        return m;
    }
    m + a.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

/// ESS `1 / sum W_j^2` of normalised log weights.
pub fn ess(log_w: &[f64]) -> f64 {
    (-log_sum_exp(&log_w.iter().map(|l| 2.0 * l).collect::<Vec<_>>())).exp()
}

/// Log weights after tempering by `delta`: `log W_j - delta r_j / (2 eta^2)`, unnormalised.
fn tempered(log_w: &[f64], r2: &[f64], delta: f64, eta: f64) -> Vec<f64> {
    let c = delta / (2.0 * eta * eta);
    log_w.iter().zip(r2).map(|(l, r)| l - c * r).collect()
}

/// ESS of the reweighted particles (normalised) for an increment `delta`.
fn ess_after(log_w: &[f64], r2: &[f64], delta: f64, eta: f64) -> f64 {
    let a = tempered(log_w, r2, delta, eta);
    let z = log_sum_exp(&a);
    ess(&a.iter().map(|v| v - z).collect::<Vec<_>>())
}

/// The next increment `delta` in `(0, 1 - lambda]` with ESS after reweighting equal to
/// `target * ESS(now)` (the whole rest when that stays above the target): bisection, 60 halvings.
pub fn next_delta(log_w: &[f64], r2: &[f64], lambda: f64, eta: f64, target: f64) -> f64 {
    let rest = 1.0 - lambda;
    let goal = target * ess(log_w);
    if ess_after(log_w, r2, rest, eta) >= goal {
        return rest;
    }
    let (mut lo, mut hi) = (0.0, rest);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if ess_after(log_w, r2, mid, eta) >= goal {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    // `lo` keeps the ESS at or above the goal; never a zero step.
    if lo > 0.0 {
        lo
    } else {
        hi
    }
}

/// Ancestor indices `[P]` for normalised weights `w` (sum 1), from `rng`.
pub fn resample(kind: Resampling, w: &[f64], rng: &mut impl Rng) -> Vec<usize> {
    resample_n(kind, w, w.len(), rng)
}

/// `p` ancestor indices for normalised weights `w` (sum 1; `p` may differ from `w.len()`, as when
/// pooled populations give a pool its samples), from `rng`.
pub fn resample_n(kind: Resampling, w: &[f64], p: usize, rng: &mut impl Rng) -> Vec<usize> {
    let mut out = Vec::with_capacity(p);
    // Inverse CDF at sorted points `u` (ascending).
    let pick_sorted = |u: &[f64], w: &[f64], out: &mut Vec<usize>| {
        let mut c = 0.0;
        let mut j = 0;
        for &ui in u {
            while j + 1 < w.len() && c + w[j] <= ui {
                c += w[j];
                j += 1;
            }
            out.push(j);
        }
    };
    match kind {
        Resampling::Systematic => {
            let u0: f64 = rng.random::<f64>();
            let u: Vec<f64> = (0..p).map(|i| (i as f64 + u0) / p as f64).collect();
            pick_sorted(&u, w, &mut out);
        }
        Resampling::Multinomial => {
            let mut u: Vec<f64> = (0..p).map(|_| rng.random::<f64>()).collect();
            u.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
            pick_sorted(&u, w, &mut out);
        }
        Resampling::Residual => {
            let mut rest = Vec::with_capacity(p);
            for (j, &wj) in w.iter().enumerate() {
                let c = (p as f64 * wj).floor() as usize;
                out.extend(std::iter::repeat_n(j, c));
                rest.push(p as f64 * wj - c as f64);
            }
            let k = p - out.len().min(p);
            let total: f64 = rest.iter().sum();
            if k > 0 && total > 0.0 {
                let rw: Vec<f64> = rest.iter().map(|r| r / total).collect();
                let mut u: Vec<f64> = (0..k).map(|_| rng.random::<f64>()).collect();
                u.sort_by(|a, b| a.partial_cmp(b).expect("finite"));
                pick_sorted(&u, &rw, &mut out);
            }
            out.truncate(p);
        }
    }
    out
}

/// Runs SMC on every population of `streams` (consecutive blocks of `P` streams).
pub fn sample(
    problem: &Problem,
    exact: Option<&dyn ExactSample>,
    log_density: Option<&dyn LogDensity>,
    cfg: &SmcConfig,
    streams: &mut SampleStreams,
    mon: &dyn Monitor,
) -> Result<Output> {
    sample_impl(problem, exact, log_density, cfg, streams, mon, true)
}

/// A deliberately broken SMC for the tests' companions: the same tempering, resampling and moves,
/// but the incremental weights are never applied (particles keep the prior's mode weights).
#[doc(hidden)]
pub fn sample_without_reweighting(
    problem: &Problem,
    exact: Option<&dyn ExactSample>,
    log_density: Option<&dyn LogDensity>,
    cfg: &SmcConfig,
    streams: &mut SampleStreams,
    mon: &dyn Monitor,
) -> Result<Output> {
    sample_impl(problem, exact, log_density, cfg, streams, mon, false)
}

fn sample_impl(
    problem: &Problem,
    exact: Option<&dyn ExactSample>,
    log_density: Option<&dyn LogDensity>,
    cfg: &SmcConfig,
    streams: &mut SampleStreams,
    mon: &dyn Monitor,
    apply_weights: bool,
) -> Result<Output> {
    cfg.validate()?;
    let b = streams.len();
    let p = cfg.particles.unwrap_or(b);
    if p == 0 || !b.is_multiple_of(p) {
        return Err(Error::param(
            "sampler.particles",
            format!("a batch of {b} samples is not a whole number of populations of {p}"),
        ));
    }
    let all = std::mem::replace(streams, SampleStreams::new(0, []));
    let mut pops = all.into_chunks(p);
    let mut samples = Vec::with_capacity(pops.len());
    let mut particles = Vec::with_capacity(pops.len());
    let mut weights = Vec::with_capacity(pops.len());
    let mut traces = Vec::with_capacity(pops.len());
    let mut evals = 0;
    for s in pops.iter_mut() {
        let (x, w, out, trace) =
            population(problem, exact, log_density, cfg, s, mon, apply_weights)?;
        evals = evals.max(trace.score_evals);
        samples.push(out);
        particles.push(x);
        weights.push(w);
        traces.push(trace);
    }
    *streams = SampleStreams::join(pops);
    let accs: Vec<f64> = traces
        .iter()
        .flat_map(|t| t.acceptance.iter().copied())
        .collect();
    Ok(Output {
        samples: Tensor::cat(&samples, 0)?,
        score_evals: evals,
        info: Info {
            acceptance: (!accs.is_empty()).then(|| accs.iter().sum::<f64>() / accs.len() as f64),
            integrator: Some(match move_kernel(cfg, log_density.is_some())? {
                MoveKernel::Mala => "mala moves".into(),
                MoveKernel::Ula => problem.integrator(cfg.integrator).1,
            }),
            smc: Some(traces),
            ..Default::default()
        },
        weighted: Some(Weighted {
            particles: Tensor::cat(&particles, 0)?,
            weights: Tensor::cat(&weights, 0)?,
        }),
        warm_start: None,
    })
}

/// The move kernel: `kernel` if set, else MALA where the prior has a log-density and the
/// integrator is Euler, ULA otherwise. The exact-likelihood integrators apply to ULA moves only.
fn move_kernel(cfg: &SmcConfig, has_log_density: bool) -> Result<MoveKernel> {
    let exact_lik = cfg.integrator.needs_spectrum();
    if exact_lik && cfg.kernel == Some(MoveKernel::Mala) {
        return Err(Error::param(
            "sampler.integrator",
            "exact-likelihood applies to ULA moves (kernel = \"ula\")",
        ));
    }
    Ok(cfg.kernel.unwrap_or(if has_log_density && !exact_lik {
        MoveKernel::Mala
    } else {
        MoveKernel::Ula
    }))
}

/// One population: `(particles reweighted to lambda = 1, their weights, output, trace)`.
fn population(
    problem: &Problem,
    exact: Option<&dyn ExactSample>,
    log_density: Option<&dyn LogDensity>,
    cfg: &SmcConfig,
    streams: &mut SampleStreams,
    mon: &dyn Monitor,
    apply_weights: bool,
) -> Result<(Tensor, Tensor, Tensor, SmcTrace)> {
    let p = streams.len();
    let eta = problem.eta;
    let m = problem.op.out_dim() as f64;
    let device = problem.device();
    let kernel = move_kernel(cfg, log_density.is_some())?;
    let log_density = match (kernel, log_density) {
        (MoveKernel::Mala, None) => {
            return Err(Error::param(
                "sampler.kernel",
                "mala needs the prior's log-density (an unperturbed analytic prior): use kernel = \"ula\"",
            ))
        }
        (MoveKernel::Mala, Some(l)) => Some(l),
        (MoveKernel::Ula, _) => None,
    };
    let step = cfg
        .step
        .rule(if kernel == MoveKernel::Mala { 0.5 } else { 0.2 })?;
    let s_sigma = score_level(problem.prior, cfg.score.score_sigma)?;
    if kernel == MoveKernel::Mala && s_sigma > 0.0 {
        return Err(Error::param(
            "sampler.score_sigma",
            "mala moves use the exact log-density (score_sigma = 0)",
        ));
    }
    let l_prior = match step {
        super::StepRule::Fixed { .. } => 0.0,
        _ => prior_lipschitz_at(problem.prior, cfg.score.l_prior, s_sigma)?,
    };
    let (integrator, _) = problem.integrator(cfg.integrator);
    let a_norm = if integrator.likelihood_in_step() {
        problem.a_norm()?
    } else {
        0.0
    };
    let auto = if exact.is_some() {
        StartKind::ExactPrior
    } else {
        StartKind::Diffusion
    };
    let init: Init = cfg.start.resolve(auto)?;
    let geometric: Option<Vec<f64>> = match cfg.tempering {
        Tempering::Adaptive => None,
        Tempering::Geometric => {
            let eta_max = cfg
                .eta_max
                .unwrap_or(eta * 100f64.min(2f64.powf((cfg.stages - 1) as f64 / 2.0)));
            Some(
                eta_geometric(eta_max, eta, cfg.stages)?
                    .iter()
                    .map(|e| (eta / e).powi(2))
                    .collect(),
            )
        }
    };
    let counted = Counted::new(problem.prior);
    // lambda_0 = 0: the particles are prior draws, all weights equal.
    let mut x = initialise(&counted, exact, &init, streams, &super::Silent, "smc init")?;
    let init_evals = counted.evals();
    let mut log_w = vec![-(p as f64).ln(); p];
    let mut lambda = 0.0f64;
    let mut trace = SmcTrace::default();
    let shape = problem.prior.sample_shape();
    let est_stages = geometric.as_ref().map_or(20, |g| g.len()) as u64;
    let total = init_evals + est_stages * cfg.moves_per_stage as u64;
    let mut stage = 0usize;
    let mut weighted: Option<(Tensor, Tensor)> = None;
    while lambda < 1.0 {
        stage += 1;
        if stage > cfg.max_stages {
            return Err(Error::Diverged {
                sampler: "smc".into(),
                stage,
                step: 0,
                reason: format!(
                    "lambda = {lambda:.3e} after max_stages = {} stages (raise max_stages or lower ess_target)",
                    cfg.max_stages
                ),
            });
        }
        let r2 = problem.residuals_sq(&x)?;
        if r2.iter().any(|v| !v.is_finite()) {
            return Err(Error::Diverged {
                sampler: "smc".into(),
                stage,
                step: 0,
                reason: "non-finite data residual".into(),
            });
        }
        let next = match &geometric {
            None => (lambda + next_delta(&log_w, &r2, lambda, eta, cfg.ess_target)).min(1.0),
            Some(g) => g.get(stage - 1).copied().unwrap_or(1.0).max(lambda),
        };
        let delta = next - lambda;
        // Reweight: W_j <- W_j L(x_j)^delta; the mean increment estimates Z_next / Z_now.
        let a = tempered(&log_w, &r2, delta, eta);
        let lz = log_sum_exp(&a);
        trace.log_evidence += lz - 0.5 * delta * m * (2.0 * std::f64::consts::PI * eta * eta).ln();
        if apply_weights {
            log_w = a.iter().map(|v| v - lz).collect();
        }
        let e_before = ess(&log_w);
        let last = next >= 1.0;
        if last {
            // The weighted sample of the posterior itself (weights.npy, particles.npy).
            weighted = Some((
                x.clone(),
                Tensor::from_vec(
                    log_w.iter().map(|l| l.exp()).collect::<Vec<_>>(),
                    p,
                    &device,
                )?,
            ));
        }
        // At lambda = 1 always: the moves then start from an unweighted sample.
        let resampled = last || e_before < cfg.resample_threshold * p as f64;
        if resampled {
            let w: Vec<f64> = log_w.iter().map(|l| l.exp()).collect();
            let idx = resample(cfg.resampling, &w, streams.stream(0));
            let idx: Vec<u32> = idx.into_iter().map(|i| i as u32).collect();
            x = x.index_select(&Tensor::new(idx, x.device())?, 0)?;
            log_w = vec![-(p as f64).ln(); p];
        }
        // Move: Langevin targeting pi_next, at the effective noise eta / sqrt(lambda).
        let eta_eff = eta / next.sqrt();
        let h = step.step(l_prior, a_norm, eta_eff);
        let moves = cfg.moves_per_stage + if last { cfg.final_moves } else { 0 };
        let (xn, acc) = match log_density {
            None => (
                super::ula::langevin(
                    problem,
                    &counted,
                    x,
                    &problem.y,
                    eta_eff,
                    h,
                    moves,
                    s_sigma,
                    integrator,
                    streams,
                    "smc",
                    stage,
                    |_| {},
                )?,
                None,
            ),
            Some(ld) => {
                let (x, a) = super::mala::steps(
                    problem,
                    ld,
                    &counted,
                    x,
                    eta_eff,
                    h,
                    moves,
                    streams,
                    ("smc", stage),
                    |_| {},
                )?;
                problem.check(&x, s_sigma, "smc", stage, moves)?;
                (x, Some(a))
            }
        };
        x = xn;
        trace.lambdas.push(next);
        trace.ess_before.push(e_before);
        trace.ess_after.push(ess(&log_w));
        trace.resampled.push(resampled);
        trace.steps.push(h);
        if let Some(a) = acc {
            trace.acceptance.push(a);
        }
        lambda = next;
        let done = counted.evals();
        mon.on_step(done.min(total.max(done)), total.max(done));
    }
    // The last stage resampled before its moves: the particles are an unweighted sample.
    let (particles, weights) = weighted.expect("the last stage reaches lambda = 1");
    let out = x;
    let out = if cfg.final_denoise && s_sigma > 0.0 {
        let o = counted.denoise(&out, s_sigma)?;
        problem.check(&o, 0.0, "smc", stage, 0)?;
        o
    } else {
        out
    };
    trace.score_evals = counted.evals();
    let _ = shape;
    Ok((particles, weights, out, trace))
}

impl Method for SmcConfig {
    fn validate(&self) -> Result<()> {
        SmcConfig::validate(self)
    }

    fn prepare(&self, problem: &Problem) -> Result<Box<dyn Kernel>> {
        problem.a_norm()?;
        Ok(Box::new(self.clone()))
    }

    fn population_size(&self, n: usize) -> usize {
        SmcConfig::population_size(self, n)
    }

    /// A population whose ESS fell below a tenth of its `particles` at some stage.
    fn warnings(&self, info: &Info, particles: usize) -> Vec<String> {
        let p = particles.max(1) as f64;
        let collapsed = info
            .smc
            .iter()
            .flatten()
            .filter_map(|t| {
                t.ess_before
                    .iter()
                    .enumerate()
                    .find(|(_, e)| **e < 0.1 * p)
                    .map(|(s, e)| (s + 1, *e))
            })
            .collect::<Vec<_>>();
        match collapsed.first() {
            Some((stage, e)) => vec![format!(
                "SMC: the effective sample size fell to {e:.1} of {particles} particles at stage \
                 {stage} ({} of {} populations): the weights rest on few particles; use the \
                 adaptive schedule, more particles or a larger ess_target",
                collapsed.len(),
                info.smc.as_ref().map_or(0, |t| t.len())
            )],
            None => Vec::new(),
        }
    }
}

impl Kernel for SmcConfig {
    fn sample(
        &self,
        problem: &Problem,
        streams: &mut SampleStreams,
        mon: &dyn Monitor,
    ) -> Result<Output> {
        sample(
            problem,
            problem.prior.as_exact_sample(),
            problem.prior.as_log_density(),
            self,
            streams,
            mon,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn resampling_keeps_expected_counts() {
        let w = [0.05, 0.45, 0.0, 0.3, 0.2];
        let p = w.len();
        for kind in [
            Resampling::Systematic,
            Resampling::Multinomial,
            Resampling::Residual,
        ] {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
            let reps = 20_000;
            let mut counts = [0.0; 5];
            for _ in 0..reps {
                let idx = resample(kind, &w, &mut rng);
                assert_eq!(idx.len(), p);
                for i in idx {
                    counts[i] += 1.0;
                }
            }
            for j in 0..p {
                let mean = counts[j] / reps as f64;
                // Unbiased: E[count_j] = P W_j; Monte-Carlo sd < 1.2/sqrt(reps).
                assert!(
                    (mean - p as f64 * w[j]).abs() < 0.03,
                    "{kind:?} {j}: {mean}"
                );
            }
            assert_eq!(counts[2], 0.0, "{kind:?} picked a zero-weight particle");
        }
        // Systematic and residual keep floor(P W_j) copies at least.
        for kind in [Resampling::Systematic, Resampling::Residual] {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
            for _ in 0..200 {
                let idx = resample(kind, &w, &mut rng);
                for (j, wj) in w.iter().enumerate() {
                    let c = idx.iter().filter(|&&i| i == j).count() as f64;
                    assert!(c >= (p as f64 * wj).floor() - 1e-9, "{kind:?}");
                }
            }
        }
    }

    #[test]
    fn bisection_hits_the_ess_target() {
        let p = 200;
        let log_w = vec![-(p as f64).ln(); p];
        let r2: Vec<f64> = (0..p)
            .map(|i| (i as f64 * 0.37).sin().powi(2) * 50.0)
            .collect();
        let eta = 0.1;
        let d = next_delta(&log_w, &r2, 0.0, eta, 0.5);
        assert!(d > 0.0 && d < 1.0);
        let e = ess_after(&log_w, &r2, d, eta);
        assert!((e / p as f64 - 0.5).abs() < 1e-6, "{e}");
        // Nothing left to temper when the whole rest keeps the ESS.
        assert_eq!(next_delta(&log_w, &vec![1.0; p], 0.3, eta, 0.5), 0.7);
    }
}
