//! SMC with Gibbs moves over the split coupling (docs/algorithms.md, "SMC with Gibbs moves"):
//! multimodal posteriors at image scale, where likelihood tempering's Langevin moves cannot turn
//! one completion of a hidden half into another.
//!
//! The augmented target `pi_rho(x, z) ∝ p(x) N(z; x, rho^2 I) N(y; A z, eta^2 I)` has the
//! x-marginal `pi_rho(x) ∝ p(x) N(y; A x, Sigma_rho)`, `Sigma_rho = eta^2 I + rho^2 A A^T`: about
//! the prior for large `rho`, the posterior at `rho = 0`. `P` particles walk
//! `rho_0 = rho_max > rho_1 > ... > rho_T = 0`:
//! - start: prior draws, log-weights `log N(y; A x, Sigma_rho_max)`;
//! - stage: `rho'` by bisection in `log rho^2` so that the ESS after the incremental weights
//!   `log N(y; A x, Sigma_rho') - log N(y; A x, Sigma_rho)` is `ess_target` times the ESS before
//!   (straight to `rho' = 0` when that keeps it); resample below `resample_threshold * P`;
//! - moves: `sweeps` data-augmentation Gibbs sweeps leaving `pi_rho'` invariant:
//!   `z | x ~ N(C (x / rho^2 + A^T y / eta^2), C)`, `C = (I / rho^2 + A^T A / eta^2)^-1`
//!   (through the spectrum of `A^T A`, [`GramSpectrum`]), then `x | z ~ p(x | x + rho e = z)`:
//!   exact for a Gaussian mixture, else the reverse SDE (ancestral steps through the denoiser)
//!   from `sigma = rho` down to `sigma_min`;
//! - end: the populations of a pool are pooled by their evidence, resampled once, and
//!   `final_moves` Langevin moves (MALA where the prior has a log-density) make duplicated
//!   particles distinct.
//!
//! `log N(y; A x, Sigma_rho)` needs no `m x m` matrix: with `r = y - A x`, `g = A^T r`,
//! `r^T Sigma_rho^-1 r = (|r|^2 - rho^2 g^T (eta^2 I + rho^2 A^T A)^-1 g) / eta^2` (Woodbury) and
//! `log det Sigma_rho = m log eta^2 + sum_j log(1 + rho^2 lambda_j / eta^2)` over the eigenvalues
//! `lambda_j` of `A^T A`. The product of the stages' mean incremental weights and the start's mean
//! weight estimates the evidence `p(y)`.
//!
//! Randomness: particle `j` of a pool uses stream `j` (every Gibbs draw, every Langevin step);
//! resampling uses the population's first stream; so a pool's result does not depend on the batch,
//! the thread count or the shard it ran in.

use candle_core::{DType, Tensor, D};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::method::{missing, Kernel, Method};
use super::settings::{Init, ScoreLevel, Start, StartKind, Step};
use super::smc::{ess, log_sum_exp, resample_n, MoveKernel, Resampling, SmcTrace};
use super::ula::initialise;
use super::{prior_lipschitz_at, score_level, Counted, Info, Monitor, Output, Problem, Weighted};
use crate::operator::GramSpectrum;
use crate::prior::Denoiser;
use crate::rng::SampleStreams;
use crate::{Error, Result};

/// How `x | z` is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum XzMove {
    /// The mixture's closed form (Gaussian-mixture priors).
    Exact,
    /// Ancestral steps of the reverse SDE through the denoiser, from `sigma = rho` down a
    /// geometric grid (ratio at most `sde_ratio`) to `sigma_min`, then `D(x, sigma_min)`.
    Sde,
}

/// The order of the particles when they are resampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResampleOrder {
    /// Sorted along the weighted particles' first principal component: systematic and residual
    /// resampling then keep the count of any run of particles adjacent in that order within one
    /// of its expectation, so modes that differ along it keep their weights through each
    /// resampling (unbiased in any order; the order only lowers the variance).
    Pc1,
    /// As they come.
    None,
}

/// SMC with Gibbs moves (`kind = "smc-gibbs"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SmcGibbsConfig {
    /// Samples per pool `P` (default: all `n` in one pool); each population has `P` particles.
    pub particles: Option<usize>,
    /// Populations of `P` particles run independently and pooled by their evidence
    /// (log-mean-exp weights) into one weighted sample of `populations * P` particles, from which
    /// the pool's `P` samples are drawn: more particles per sample (a smaller mode-weight error)
    /// and samples that are not copies of one lineage.
    pub populations: usize,
    /// The ESS after reweighting is `ess_target` times the ESS before.
    pub ess_target: f64,
    pub resampling: Resampling,
    /// "pc1" (default) or "none".
    pub resample_order: ResampleOrder,
    /// Resample when `ESS < resample_threshold * P`.
    pub resample_threshold: f64,
    /// Gibbs sweeps (`z | x`, `x | z`) per stage.
    pub sweeps: usize,
    /// The first coupling `rho_0` (default: the prior's largest diffusion level, as the
    /// diffusion start).
    pub rho_max: Option<f64>,
    /// The run fails if `rho = 0` is not reached within this many stages.
    pub max_stages: usize,
    /// `x | z`: "exact" (Gaussian mixtures; their default) or "sde" (any denoiser).
    pub xz: Option<XzMove>,
    /// The `sde` move's largest ratio `sigma / sigma'` per ancestral step (its step count is
    /// `ceil(log(rho / sigma_min) / log(sde_ratio))`).
    pub sde_ratio: f64,
    /// The `sde` move's last level (default as the posterior samplers: `1e-3 eta`, clamped to
    /// the prior's range).
    pub sigma_min: Option<f64>,
    /// Langevin moves at the posterior after the final resampling.
    pub final_moves: usize,
    /// The final moves' kernel (default: MALA where the prior has a log-density, ULA otherwise).
    pub kernel: Option<MoveKernel>,
    /// The final moves' step relative to the posterior's stiffness (default `h_rel` 0.5 for MALA,
    /// 0.2 for ULA), or `h`.
    #[serde(flatten)]
    pub step: Step,
    /// Start: exact prior draws where the prior has them, the diffusion start otherwise.
    #[serde(flatten)]
    pub start: Start,
    /// The prior score in the final ULA moves (networks: `score_sigma`).
    #[serde(flatten)]
    pub score: ScoreLevel,
}

impl Default for SmcGibbsConfig {
    fn default() -> Self {
        Self {
            particles: None,
            populations: 4,
            ess_target: 0.8,
            resampling: Resampling::Systematic,
            resample_order: ResampleOrder::Pc1,
            resample_threshold: 0.5,
            sweeps: 20,
            rho_max: None,
            max_stages: 1000,
            xz: None,
            sde_ratio: 1.15,
            sigma_min: None,
            final_moves: 50,
            kernel: None,
            step: Step::default(),
            start: Start::default(),
            score: ScoreLevel::default(),
        }
    }
}

impl SmcGibbsConfig {
    /// Range checks that need no problem.
    pub fn validate(&self) -> Result<()> {
        let open_unit = |name: &str, v: f64, closed: bool| {
            if v > 0.0 && (v < 1.0 || (closed && v == 1.0)) {
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
        open_unit("ess_target", self.ess_target, false)?;
        open_unit("resample_threshold", self.resample_threshold, true)?;
        for (name, v) in [
            ("particles", self.particles.unwrap_or(1)),
            ("populations", self.populations),
            ("max_stages", self.max_stages),
        ] {
            if v == 0 {
                return Err(Error::param(format!("sampler.{name}"), "must be >= 1"));
            }
        }
        if !(self.sde_ratio > 1.0) {
            return Err(Error::param(
                "sampler.sde_ratio",
                format!("must be > 1, got {}", self.sde_ratio),
            ));
        }
        for (name, v) in [("rho_max", self.rho_max), ("sigma_min", self.sigma_min)] {
            if let Some(v) = v {
                if !(v > 0.0) {
                    return Err(Error::param(
                        format!("sampler.{name}"),
                        format!("must be > 0, got {v}"),
                    ));
                }
            }
        }
        self.step.rule(0.2)?;
        self.start.resolve(StartKind::ExactPrior)?;
        Ok(())
    }

    /// Samples per pool for a run of `n` samples: `particles`, or all `n`.
    pub fn pool_size(&self, n: usize) -> usize {
        self.particles.unwrap_or(n)
    }
}

/// `log N(y; A x, Sigma_rho)` of every particle, for any `rho`, from the residuals of one `x`.
struct Likelihood<'a> {
    spec: &'a dyn GramSpectrum,
    eta2: f64,
    m: f64,
    /// `|y - A x_j|^2`.
    r2: Vec<f64>,
    /// `A^T (y - A x_j)`, `[P, d]`.
    g: Tensor,
    /// The eigenvalues of `A^T A` (with multiplicity) that are not zero.
    lambdas: Vec<f64>,
}

impl<'a> Likelihood<'a> {
    fn new(
        problem: &Problem,
        spec: &'a dyn GramSpectrum,
        lambdas: &[f64],
        x: &Tensor,
    ) -> Result<Self> {
        let r = problem.y.broadcast_sub(&problem.op.apply(x)?)?;
        let r2 = r
            .sqr()?
            .sum(D::Minus1)?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?;
        if r2.iter().any(|v| !v.is_finite()) {
            return Err(Error::Numerical("non-finite data residual".into()));
        }
        Ok(Self {
            spec,
            eta2: problem.eta * problem.eta,
            m: problem.op.out_dim() as f64,
            r2,
            g: problem.op.adjoint(&r)?.to_dtype(DType::F64)?,
            lambdas: lambdas.to_vec(),
        })
    }

    /// `log N(y; A x_j, Sigma_rho)` per particle, normalising constant included.
    fn log_lik(&self, rho: f64) -> Result<Vec<f64>> {
        let (e2, r2) = (self.eta2, rho * rho);
        let logdet = self.m * e2.ln()
            + self
                .lambdas
                .iter()
                .map(|l| (r2 * l / e2).ln_1p())
                .sum::<f64>();
        let c = -0.5 * (logdet + self.m * (2.0 * std::f64::consts::PI).ln());
        let corr: Vec<f64> = if rho > 0.0 {
            let h = self.spec.gram_fn(&self.g, &|l| 1.0 / (e2 + r2 * l))?;
            (&self.g * h.to_dtype(DType::F64)?)?
                .sum(D::Minus1)?
                .to_vec1::<f64>()?
        } else {
            vec![0.0; self.r2.len()]
        };
        Ok(self
            .r2
            .iter()
            .zip(&corr)
            .map(|(r, q)| c - 0.5 * (r - r2 * q) / e2)
            .collect())
    }
}

fn normalised(a: &[f64]) -> (Vec<f64>, f64) {
    let z = log_sum_exp(a);
    (a.iter().map(|v| v - z).collect(), z)
}

/// ESS (normalised) of `log_w + inc`.
fn ess_with(log_w: &[f64], inc: &[f64]) -> f64 {
    let a: Vec<f64> = log_w.iter().zip(inc).map(|(l, i)| l + i).collect();
    ess(&normalised(&a).0)
}

/// The next coupling `rho' < rho` (0 when that keeps the ESS at `target` times its value) and
/// the increments `log N(y; A x, Sigma_rho') - log N(y; A x, Sigma_rho)` at it. Bisection in
/// `log rho^2`, 50 halvings over 40 e-folds below `rho^2`.
fn next_rho(lik: &Likelihood, log_w: &[f64], rho: f64, target: f64) -> Result<(f64, Vec<f64>)> {
    let now = lik.log_lik(rho)?;
    let inc_at = |r: f64| -> Result<Vec<f64>> {
        Ok(lik
            .log_lik(r)?
            .iter()
            .zip(&now)
            .map(|(a, b)| a - b)
            .collect())
    };
    let goal = target * ess(log_w);
    let at_zero = inc_at(0.0)?;
    if ess_with(log_w, &at_zero) >= goal {
        return Ok((0.0, at_zero));
    }
    let t_hi = 2.0 * rho.ln();
    let (mut lo, mut hi) = (t_hi - 40.0, t_hi);
    // `hi` keeps the ESS (no step), `lo` loses it; bisect.
    let mut best: Option<(f64, Vec<f64>)> = None;
    for _ in 0..50 {
        let mid = 0.5 * (lo + hi);
        let inc = inc_at((0.5 * mid).exp())?;
        if ess_with(log_w, &inc) >= goal {
            hi = mid;
            best = Some(((0.5 * mid).exp(), inc));
        } else {
            lo = mid;
        }
    }
    match best {
        Some(b) => Ok(b),
        // Even the smallest step loses the target: take it (progress is guaranteed).
        None => {
            let r = (0.5 * lo).exp();
            Ok((r, inc_at(r)?))
        }
    }
}

/// The weighted particles' first principal component scores `x_j . v` (power iteration on the
/// weighted covariance, 30 iterations from a fixed start: deterministic).
fn pc1_scores(x: &Tensor, w: &[f64]) -> Result<Vec<f64>> {
    let (p, d) = x.dims2()?;
    let x = x.to_dtype(DType::F64)?;
    let wt = Tensor::from_vec(w.to_vec(), (p, 1), x.device())?;
    let mean = x.broadcast_mul(&wt)?.sum_keepdim(0)?;
    let xc = x.broadcast_sub(&mean)?;
    let mut v = Tensor::from_vec(
        (0..d)
            .map(|j| 1.0 + 0.5 * ((j as f64) * 0.7).sin())
            .collect(),
        (d, 1),
        x.device(),
    )?;
    for _ in 0..30 {
        let u = xc.matmul(&v)?.broadcast_mul(&wt)?; // [P,1]
        let nv = xc.t()?.matmul(&u)?; // [d,1]
        let norm = nv.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
        if !(norm > 0.0) || !norm.is_finite() {
            break;
        }
        v = (nv / norm)?;
    }
    Ok(xc.matmul(&v)?.flatten_all()?.to_vec1()?)
}

/// Ancestors for normalised weights `w`, the particles taken in `order` (see [`ResampleOrder`]).
fn resample_ordered(
    kind: Resampling,
    order: ResampleOrder,
    x: &Tensor,
    w: &[f64],
    count: usize,
    rng: &mut rand_chacha::ChaCha8Rng,
) -> Result<Vec<u32>> {
    let perm: Vec<usize> = match order {
        ResampleOrder::None => (0..w.len()).collect(),
        ResampleOrder::Pc1 => {
            let key = pc1_scores(x, w)?;
            let mut perm: Vec<usize> = (0..w.len()).collect();
            perm.sort_by(|a, b| key[*a].total_cmp(&key[*b]).then(a.cmp(b)));
            perm
        }
    };
    let ws: Vec<f64> = perm.iter().map(|&i| w[i]).collect();
    let idx = resample_n(kind, &ws, count, rng);
    Ok(idx.into_iter().map(|i| perm[i] as u32).collect())
}

/// A pool's result: `(samples, pooled particles, their weights, traces, MALA acceptance)`.
type PoolOut = (Tensor, Tensor, Tensor, Vec<SmcTrace>, Option<f64>);

/// The prepared method: what every batch shares.
struct Prepared {
    cfg: SmcGibbsConfig,
    xz: XzMove,
    kernel: MoveKernel,
    rho_max: f64,
    sigma_min: f64,
    /// Nonzero eigenvalues of `A^T A`.
    lambdas: Vec<f64>,
    init: Init,
    /// Broken variants for the tests' companions.
    fault: Fault,
}

/// Deliberate faults, for the tests' broken companions only.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    /// The incremental weights are never applied.
    NoWeights,
    /// `x | z` is drawn at `1.5 rho`.
    WrongRho,
}

impl Prepared {
    fn new(cfg: &SmcGibbsConfig, problem: &Problem, fault: Fault) -> Result<Self> {
        let spec = problem.op.gram_spectrum().ok_or_else(|| {
            Error::param(
                "sampler.kind",
                format!(
                    "smc-gibbs needs the eigen-decomposition of A^T A, which operator `{}` does \
                     not have (masks, boxes, super-resolution, blur, dense and single-coil MRI \
                     have it)",
                    problem.op.name()
                ),
            )
        })?;
        let lambdas: Vec<f64> = spec
            .eigenvalues()?
            .into_iter()
            .filter(|l| *l > 0.0)
            .collect();
        let xz = match (cfg.xz, problem.prior.as_mixture().is_some()) {
            (Some(XzMove::Exact), false) => {
                return Err(missing(
                    "smc-gibbs with xz = \"exact\"",
                    "a Gaussian-mixture prior (use xz = \"sde\")",
                ))
            }
            (Some(x), _) => x,
            (None, true) => XzMove::Exact,
            (None, false) => XzMove::Sde,
        };
        let has_ld = problem.prior.as_log_density().is_some();
        let kernel = cfg.kernel.unwrap_or(if has_ld {
            MoveKernel::Mala
        } else {
            MoveKernel::Ula
        });
        if kernel == MoveKernel::Mala && !has_ld {
            return Err(missing(
                "smc-gibbs with kernel = \"mala\"",
                "the prior's log-density (use kernel = \"ula\")",
            ));
        }
        let (rho_max, sigma_min) = problem.sigma_levels(cfg.rho_max, cfg.sigma_min);
        if !(rho_max > sigma_min) {
            return Err(Error::param(
                "sampler.rho_max",
                format!("must exceed sigma_min = {sigma_min:.3e}, got {rho_max:.3e}"),
            ));
        }
        let auto = if problem.prior.as_exact_sample().is_some() {
            StartKind::ExactPrior
        } else {
            StartKind::Diffusion
        };
        Ok(Self {
            cfg: cfg.clone(),
            xz,
            kernel,
            rho_max,
            sigma_min,
            lambdas,
            init: cfg.start.resolve(auto)?,
            fault,
        })
    }

    /// `z | x ~ N(C (x / rho^2 + A^T y / eta^2), C)`, `C = (I / rho^2 + A^T A / eta^2)^-1`.
    fn draw_z(
        &self,
        problem: &Problem,
        spec: &dyn GramSpectrum,
        aty: &Tensor,
        x: &Tensor,
        rho: f64,
        streams: &mut SampleStreams,
    ) -> Result<Tensor> {
        let (r2, e2) = (rho * rho, problem.eta * problem.eta);
        let c = move |l: f64| r2 * e2 / (e2 + r2 * l);
        let rhs = ((x / r2)?.broadcast_add(&(aty / e2)?))?;
        let mean = spec.gram_fn(&rhs, &c)?;
        let xi = streams.randn(&problem.prior.sample_shape(), x.device())?;
        let noise = spec.gram_fn(&xi, &|l| c(l).sqrt())?;
        Ok((mean + noise)?.to_dtype(x.dtype())?)
    }

    /// `x | z ~ p(x | x + rho e = z)`.
    fn draw_x(
        &self,
        problem: &Problem,
        prior: &Counted,
        z: &Tensor,
        rho: f64,
        streams: &mut SampleStreams,
    ) -> Result<Tensor> {
        let rho = if self.fault == Fault::WrongRho {
            1.5 * rho
        } else {
            rho
        };
        match self.xz {
            XzMove::Exact => {
                // One evaluation: the smoothed components at `rho`, as one denoiser call.
                prior.add(1);
                let gmm = problem.prior.as_mixture().expect("checked in prepare");
                gmm.sample_denoising_posterior(z, rho, streams)
            }
            XzMove::Sde => {
                // Ancestral steps x' = D + (s'^2/s^2)(x - D) + s' sqrt(1 - s'^2/s^2) xi.
                let n = ((rho / self.sigma_min).ln() / self.cfg.sde_ratio.ln())
                    .ceil()
                    .max(1.0) as usize;
                let shape = prior.sample_shape();
                let mut x = z.clone();
                let mut s = rho;
                for i in 1..=n {
                    let sn = rho * (self.sigma_min / rho).powf(i as f64 / n as f64);
                    let d = prior.denoise(&x, s)?;
                    let q = (sn / s).powi(2);
                    let xi = streams.randn(&shape, x.device())?;
                    x = ((&d + ((&x - &d)? * q)?)? + (xi * (sn * (1.0 - q).sqrt()))?)?;
                    s = sn;
                }
                prior.denoise(&x, s)
            }
        }
    }

    /// One population to `rho = 0`: its particles, normalised log-weights at `rho = 0` and trace.
    fn population(
        &self,
        problem: &Problem,
        counted: &Counted,
        streams: &mut SampleStreams,
        mon: &dyn Monitor,
    ) -> Result<(Tensor, Vec<f64>, SmcTrace)> {
        let spec = problem.op.gram_spectrum().expect("checked in prepare");
        let p = streams.len();
        let cfg = &self.cfg;
        let aty = problem.op.adjoint(&problem.y)?.to_dtype(DType::F64)?;
        let mut x = initialise(
            counted,
            problem.prior.as_exact_sample(),
            &self.init,
            streams,
            &super::Silent,
            "smc-gibbs init",
        )?;
        let mut trace = SmcTrace::default();
        let fail = |stage: usize, reason: String| Error::Diverged {
            sampler: "smc-gibbs".into(),
            stage,
            step: 0,
            reason,
        };
        // Start: weights N(y; A x, Sigma_rho_max); the mean weight estimates p_rho_max(y).
        let mut rho = self.rho_max;
        let lik = Likelihood::new(problem, spec, &self.lambdas, &x)
            .map_err(|e| fail(0, e.to_string()))?;
        let l0 = lik.log_lik(rho)?;
        let (mut log_w, lz0) = normalised(&l0);
        trace.log_evidence = lz0 - (p as f64).ln();
        if self.fault == Fault::NoWeights {
            log_w = vec![-(p as f64).ln(); p];
        }
        let mut stage = 0;
        loop {
            stage += 1;
            if stage > cfg.max_stages {
                return Err(fail(
                    stage,
                    format!(
                        "rho = {rho:.3e} after max_stages = {} stages (raise max_stages or lower ess_target)",
                        cfg.max_stages
                    ),
                ));
            }
            let lik = Likelihood::new(problem, spec, &self.lambdas, &x)
                .map_err(|e| fail(stage, e.to_string()))?;
            let (next, inc) = next_rho(&lik, &log_w, rho, cfg.ess_target)?;
            let a: Vec<f64> = log_w.iter().zip(&inc).map(|(l, i)| l + i).collect();
            let (a_norm, lz) = normalised(&a);
            trace.log_evidence += lz;
            if self.fault != Fault::NoWeights {
                log_w = a_norm;
            }
            let e_before = ess(&log_w);
            trace.rhos.push(next);
            trace.ess_before.push(e_before);
            if next == 0.0 {
                trace.ess_after.push(e_before);
                trace.resampled.push(false);
                break;
            }
            let resampled = e_before < cfg.resample_threshold * p as f64;
            if resampled {
                let w: Vec<f64> = log_w.iter().map(|l| l.exp()).collect();
                let idx = resample_ordered(
                    cfg.resampling,
                    cfg.resample_order,
                    &x,
                    &w,
                    p,
                    streams.stream(0),
                )?;
                x = x.index_select(&Tensor::new(idx, x.device())?, 0)?;
                log_w = vec![-(p as f64).ln(); p];
            }
            trace.ess_after.push(ess(&log_w));
            trace.resampled.push(resampled);
            for sweep in 0..cfg.sweeps {
                let z = self.draw_z(problem, spec, &aty, &x, next, streams)?;
                x = self.draw_x(problem, counted, &z, next, streams)?;
                problem.check(&x, 0.0, "smc-gibbs", stage, sweep + 1)?;
            }
            rho = next;
            let done = counted.evals();
            mon.on_step(done, done.max(1));
        }
        Ok((x, log_w, trace))
    }

    fn pool(
        &self,
        problem: &Problem,
        streams: &mut SampleStreams,
        mon: &dyn Monitor,
    ) -> Result<PoolOut> {
        let n = streams.len();
        let g = self.cfg.populations;
        let counted = Counted::new(problem.prior);
        // Population 0 runs on the samples' own streams; population `c >= 1` on child streams,
        // particle `j`'s seeded by a draw from sample `j`'s stream (so a pool is reproducible
        // whatever the batch).
        let seeds: Vec<Vec<u64>> = (0..n)
            .map(|j| (1..g).map(|_| streams.stream(j).random::<u64>()).collect())
            .collect();
        let mut xs = Vec::with_capacity(g);
        let mut pooled_logw = Vec::with_capacity(n * g);
        let mut traces = Vec::with_capacity(g);
        for c in 0..g {
            let (x, lw, t) = if c == 0 {
                self.population(problem, &counted, streams, mon)?
            } else {
                let mut child = SampleStreams::join(
                    seeds
                        .iter()
                        .map(|s| SampleStreams::new(s[c - 1], [c as u64]))
                        .collect(),
                );
                self.population(problem, &counted, &mut child, mon)?
            };
            pooled_logw.extend(lw.iter().map(|l| l + t.log_evidence));
            xs.push(x);
            traces.push(t);
        }
        let x = Tensor::cat(&xs, 0)?;
        let (log_w, _) = normalised(&pooled_logw);
        let w: Vec<f64> = log_w.iter().map(|l| l.exp()).collect();
        let weights = Tensor::from_vec(w.clone(), n * g, &problem.device())?;
        let idx = resample_ordered(
            self.cfg.resampling,
            self.cfg.resample_order,
            &x,
            &w,
            n,
            streams.stream(0),
        )?;
        let mut out = x.index_select(&Tensor::new(idx, x.device())?, 0)?;
        // Final Langevin moves at the posterior.
        let stage = traces.iter().map(|t| t.rhos.len()).max().unwrap_or(0) + 1;
        let mut acceptance = None;
        if self.cfg.final_moves > 0 {
            let h_rel = if self.kernel == MoveKernel::Mala {
                0.5
            } else {
                0.2
            };
            let rule = self.cfg.step.rule(h_rel)?;
            let s_sigma = score_level(problem.prior, self.cfg.score.score_sigma)?;
            let (l_prior, a_norm) = match rule {
                super::StepRule::Fixed { .. } => (0.0, 0.0),
                _ => (
                    prior_lipschitz_at(problem.prior, self.cfg.score.l_prior, s_sigma)?,
                    problem.a_norm()?,
                ),
            };
            let h = rule.step(l_prior, a_norm, problem.eta);
            out = match self.kernel {
                MoveKernel::Mala => {
                    let ld = problem.prior.as_log_density().expect("checked in prepare");
                    let (x, a) = super::mala::steps(
                        problem,
                        ld,
                        &counted,
                        out,
                        problem.eta,
                        h,
                        self.cfg.final_moves,
                        streams,
                        ("smc-gibbs final moves", stage),
                        |_| {},
                    )?;
                    acceptance = Some(a);
                    x
                }
                MoveKernel::Ula => super::ula::langevin(
                    problem,
                    &counted,
                    out,
                    &problem.y,
                    problem.eta,
                    h,
                    self.cfg.final_moves,
                    s_sigma,
                    super::integrator::Integrator::Euler,
                    streams,
                    "smc-gibbs final moves",
                    stage,
                    |_| {},
                )?,
            };
            for t in traces.iter_mut() {
                t.steps.push(h);
            }
        }
        let evals = counted.evals();
        for t in traces.iter_mut() {
            t.score_evals = evals;
        }
        Ok((out, x, weights, traces, acceptance))
    }
}

impl Method for SmcGibbsConfig {
    fn validate(&self) -> Result<()> {
        SmcGibbsConfig::validate(self)
    }

    fn prepare(&self, problem: &Problem) -> Result<Box<dyn Kernel>> {
        Ok(Box::new(Prepared::new(self, problem, Fault::None)?))
    }

    fn population_size(&self, n: usize) -> usize {
        self.pool_size(n)
    }

    /// A population whose ESS fell below a tenth of its particles at some stage.
    fn warnings(&self, info: &Info, pool: usize) -> Vec<String> {
        let p = pool.max(1) as f64;
        let collapsed = info
            .smc
            .iter()
            .flatten()
            .filter(|t| t.ess_before.iter().any(|e| *e < 0.1 * p))
            .count();
        if collapsed == 0 {
            return Vec::new();
        }
        vec![format!(
            "smc-gibbs: the effective sample size fell below a tenth of the {p} particles in \
             {collapsed} populations: raise ess_target, sweeps or particles"
        )]
    }
}

impl Kernel for Prepared {
    fn sample(
        &self,
        problem: &Problem,
        streams: &mut SampleStreams,
        mon: &dyn Monitor,
    ) -> Result<Output> {
        let b = streams.len();
        let pool = self.cfg.pool_size(b);
        if pool == 0 || !b.is_multiple_of(pool) {
            return Err(Error::param(
                "sampler.particles",
                format!("a batch of {b} samples is not a whole number of pools of {pool}"),
            ));
        }
        let all = std::mem::replace(streams, SampleStreams::new(0, []));
        let mut pools = all.into_chunks(pool);
        let (mut samples, mut particles, mut weights, mut traces, mut accs) =
            (vec![], vec![], vec![], vec![], vec![]);
        let mut evals = 0;
        for s in pools.iter_mut() {
            let (out, x, w, t, a) = self.pool(problem, s, mon)?;
            evals = evals.max(t.first().map_or(0, |t| t.score_evals));
            samples.push(out);
            particles.push(x);
            weights.push(w);
            traces.extend(t);
            accs.extend(a);
        }
        *streams = SampleStreams::join(pools);
        Ok(Output {
            samples: Tensor::cat(&samples, 0)?,
            score_evals: evals,
            info: Info {
                acceptance: (!accs.is_empty())
                    .then(|| accs.iter().sum::<f64>() / accs.len() as f64),
                integrator: Some(format!(
                    "gibbs moves (x | z {}), {} final moves",
                    match self.xz {
                        XzMove::Exact => "exact",
                        XzMove::Sde => "by the reverse SDE",
                    },
                    match self.kernel {
                        MoveKernel::Mala => "mala",
                        MoveKernel::Ula => "ula",
                    }
                )),
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
}

/// Runs SMC with Gibbs moves with a deliberate fault (the tests' broken companions).
#[doc(hidden)]
pub fn sample_with_fault(
    problem: &Problem,
    cfg: &SmcGibbsConfig,
    fault: Fault,
    streams: &mut SampleStreams,
) -> Result<Output> {
    Prepared::new(cfg, problem, fault)?.sample(problem, streams, &super::Silent)
}
