//! Samplers, one file per method, each a short function in the paper's notation over a
//! [`Denoiser`] and a [`LinearOperator`]. Randomness comes only from the caller's
//! [`SampleStreams`](crate::rng::SampleStreams) (one stream per sample), so a sample never depends on its batch.
//!
//! Score evaluations are counted per sample: one forward pass of the score/denoiser for one sample
//! point is one evaluation, a backward pass through it one more; diffusion initialisation included.

pub mod ald;
pub mod annealed;
pub mod cs;
pub mod daps;
pub mod diffusion;
pub mod dps;
pub mod estimate;
pub mod exact;
pub mod health;
pub mod integrator;
pub mod local;
pub mod mala;
pub mod method;
pub mod settings;
pub mod smc;
pub mod smc_gibbs;
pub mod spec;
pub mod table;
pub mod ula;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::operator::LinearOperator;
use crate::prior::Denoiser;
use crate::{Error, Result};

/// A linear inverse problem `y = A x + eta xi`, `xi ~ N(0, I_m)`; `eta` in the units of `x`.
pub struct Problem<'a> {
    pub prior: &'a dyn Denoiser,
    pub op: &'a dyn LinearOperator,
    /// Measurement `[1, m]`.
    pub y: Tensor,
    /// Noise standard deviation per real measurement, in the units of `x`.
    pub eta: f64,
    /// `||A||`, computed once (power iteration) on first use and shared by every batch.
    a_norm: OnceLock<f64>,
    /// The problem's scale per coordinate ([`health`]), computed on first use.
    scale: OnceLock<f64>,
    /// Set by the caller to stop the run: [`Problem::check`] (every sampler loop, every few
    /// steps) then returns [`Error::Cancelled`].
    cancel: Option<Arc<AtomicBool>>,
}

impl<'a> Problem<'a> {
    /// Validates dimensions, finiteness and `eta > 0`. `y` may be `[m]` or `[1, m]`.
    pub fn new(
        prior: &'a dyn Denoiser,
        op: &'a dyn LinearOperator,
        y: &Tensor,
        eta: f64,
    ) -> Result<Self> {
        if !(eta > 0.0) || !eta.is_finite() {
            return Err(Error::param(
                "measurement.eta",
                format!("must be finite and > 0, got {eta}"),
            ));
        }
        if op.in_dim() != prior.dim() {
            return Err(Error::shape(
                format!("operator `{}` input", op.name()),
                format!("d = {} (the prior's dimension)", prior.dim()),
                &[op.in_dim()],
            ));
        }
        let y = y
            .to_dtype(candle_core::DType::F64)?
            .to_device(&prior.device())?;
        let y = match y.rank() {
            1 => y.unsqueeze(0)?,
            _ => y,
        };
        if y.dims() != [1, op.out_dim()] {
            return Err(Error::shape(
                "measurement y",
                format!("[{}] (operator m)", op.out_dim()),
                y.dims(),
            ));
        }
        let v: Vec<f64> = y.flatten_all()?.to_vec1()?;
        if v.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: "measurement y".into(),
            });
        }
        Ok(Self {
            prior,
            op,
            y,
            eta,
            a_norm: OnceLock::new(),
            scale: OnceLock::new(),
            cancel: None,
        })
    }

    /// Stops the samplers at their next [`Problem::check`] once `flag` is set (Ctrl-C in an
    /// interactive front end).
    pub fn with_cancel(mut self, flag: Arc<AtomicBool>) -> Self {
        self.cancel = Some(flag);
        self
    }

    /// `Err(Error::Cancelled)` once the caller's cancel flag is set.
    pub fn check_cancel(&self) -> Result<()> {
        match &self.cancel {
            Some(f) if f.load(Ordering::Relaxed) => {
                Err(Error::Cancelled("stopped by the caller".into()))
            }
            _ => Ok(()),
        }
    }

    /// Sets `||A||` when the caller already knows it (a run context computes it once).
    pub fn with_a_norm(self, a_norm: f64) -> Self {
        let _ = self.a_norm.set(a_norm);
        self
    }

    /// The same measurement seen through another prior (Algorithm 2's tilted prior); shares `||A||`.
    pub fn with_prior<'b>(&'b self, prior: &'b dyn Denoiser) -> Problem<'b> {
        let a_norm = OnceLock::new();
        if let Some(a) = self.a_norm.get() {
            let _ = a_norm.set(*a);
        }
        Problem {
            prior,
            op: self.op,
            y: self.y.clone(),
            eta: self.eta,
            a_norm,
            scale: OnceLock::new(),
            cancel: self.cancel.clone(),
        }
    }

    /// The integrator a Langevin sampler can use here: `want`, or Euler when it asks for the
    /// exact likelihood and the operator has no spectrum; with the note for `summary.json`.
    pub fn integrator(&self, want: integrator::Integrator) -> (integrator::Integrator, String) {
        use integrator::Integrator::*;
        match want {
            Euler => (Euler, "euler".into()),
            ExactLikelihood if self.op.gram_spectrum().is_some() => {
                (ExactLikelihood, "exact-likelihood".into())
            }
            ExactLikelihoodStrang if self.op.gram_spectrum().is_some() => {
                (ExactLikelihoodStrang, "exact-likelihood-strang".into())
            }
            ExactLikelihood | ExactLikelihoodStrang => (
                Euler,
                format!(
                    "euler (exact-likelihood asked, but operator `{}` has no fast A^T A spectrum)",
                    self.op.name()
                ),
            ),
        }
    }

    /// The scale the problem sets per coordinate (docs/algorithms.md, "Divergence and health"):
    /// `sqrt(s_prior^2 + (|y| / (||A|| sqrt d))^2)`.
    pub fn scale(&self) -> Result<f64> {
        if let Some(s) = self.scale.get() {
            return Ok(*s);
        }
        let a = self.a_norm()?;
        let y_norm = self.y.sqr()?.sum_all()?.to_scalar::<f64>()?.sqrt();
        let d = self.prior.dim().max(1) as f64;
        let data = if a > 0.0 {
            y_norm / (a * d.sqrt())
        } else {
            0.0
        };
        let p = self.prior.scale();
        let s = (p * p + data * data).sqrt();
        Ok(*self.scale.get_or_init(|| s))
    }

    /// The divergence check ([`health::check_scale`]) against this problem's scale, for chains at
    /// diffusion level `sigma` (0 for posterior chains).
    pub(crate) fn check(
        &self,
        x: &Tensor,
        sigma: f64,
        sampler: &str,
        stage: usize,
        step: usize,
    ) -> Result<()> {
        self.check_cancel()?;
        health::check_scale(x, self.scale()?, sigma, sampler, stage, step)
    }

    /// `||A||` (spectral norm, [`operator_norm`]), computed on first use.
    pub fn a_norm(&self) -> Result<f64> {
        if let Some(a) = self.a_norm.get() {
            return Ok(*a);
        }
        let a = operator_norm(self.op)?;
        Ok(*self.a_norm.get_or_init(|| a))
    }

    pub fn device(&self) -> Device {
        self.y.device().clone()
    }

    /// `(sigma_max, sigma_min)` of a posterior sampler's diffusion levels, clamped to the prior's
    /// range (as EDM does): defaults are the prior's `sigma_max_hint` and `1e-3 eta`.
    pub fn sigma_levels(&self, sigma_max: Option<f64>, sigma_min: Option<f64>) -> (f64, f64) {
        let (pmin, pmax) = self.prior.sigma_range();
        let smax = sigma_max
            .unwrap_or_else(|| self.prior.sigma_max_hint())
            .min(pmax);
        let smin = sigma_min.unwrap_or(1e-3 * self.eta).max(pmin);
        (smax, smin)
    }

    /// Data residual `|y - A x| / (eta sqrt(m))` of every row of `x: [B, d]`: about 1 for a sample
    /// consistent with the noise, the scale against which a run's health is judged.
    pub fn normalized_residuals(&self, x: &Tensor) -> Result<Vec<f64>> {
        let x = x
            .to_dtype(candle_core::DType::F64)?
            .to_device(&self.y.device().clone())?;
        let scale = self.eta * (self.op.out_dim() as f64).sqrt();
        Ok(self
            .residuals_sq(&x)?
            .iter()
            .map(|r2| r2.sqrt() / scale)
            .collect())
    }

    /// `|y - A x|^2` of every row of `x: [B, d]`.
    pub fn residuals_sq(&self, x: &Tensor) -> Result<Vec<f64>> {
        let r = self.y.broadcast_sub(&self.op.apply(x)?)?;
        Ok(r.sqr()?
            .sum(candle_core::D::Minus1)?
            .to_dtype(candle_core::DType::F64)?
            .to_vec1()?)
    }

    /// Likelihood gradient `A^T (y - A x) / eta^2` (y `[1, m]` or `[B, m]`).
    pub fn likelihood_grad(&self, x: &Tensor, y: &Tensor, eta: f64) -> Result<Tensor> {
        let r = y.broadcast_sub(&self.op.apply(x)?)?;
        Ok((self.op.adjoint(&r)? / (eta * eta))?)
    }
}

/// What a sampler returns.
#[derive(Debug, Clone)]
pub struct Output {
    /// `[B, d]` samples.
    pub samples: Tensor,
    /// Score evaluations per sample.
    pub score_evals: u64,
    /// Per-run diagnostics (never fed back into the sampler).
    pub info: Info,
    /// Weighted samplers (SMC): the particles before the final resampling and their weights.
    pub weighted: Option<Weighted>,
    /// Algorithm 2: the warm start each sample started from, as it ran.
    pub warm_start: Option<WarmStartRun>,
}

/// Algorithm 2's warm start as it ran for a batch: `x0` (`[1, d]` shared or `[B, d]`, after
/// `clip`), the estimate before `clip` when one is set (a DPS sample as DPS made it), the
/// evaluations per sample it cost (a DPS run) and its wall-clock time.
#[derive(Debug, Clone)]
pub struct WarmStartRun {
    pub x0: Tensor,
    pub unclipped: Option<Tensor>,
    pub score_evals: u64,
    pub wall_s: f64,
}

/// Weighted particles: `particles [B, d]`, `weights [B]` normalised within each population (SMC
/// with Gibbs moves: `[B p, d]` and `[B p]`, the `p` pooled populations of each pool, normalised
/// within the pool).
#[derive(Debug, Clone)]
pub struct Weighted {
    pub particles: Tensor,
    pub weights: Tensor,
}

/// Diagnostics of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, serde::Deserialize)]
pub struct Info {
    /// MALA: mean acceptance rate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acceptance: Option<f64>,
    /// Annealed samplers: the eta schedule used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etas: Option<Vec<f64>>,
    /// Step sizes used per stage (or the single step).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<f64>>,
    /// Langevin samplers: the integrator used ("euler", "exact-likelihood", or the Euler
    /// fallback for an operator without a spectrum).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrator: Option<String>,
    /// SMC: one trace per population (tempering levels, ESS, resampling, evidence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smc: Option<Vec<smc::SmcTrace>>,
}

/// Progress reporting (e.g. a progress bar). `done` of `total` steps of the current batch.
pub trait Monitor: Sync {
    fn on_step(&self, _done: u64, _total: u64) {}
}

/// A monitor that ignores everything.
pub struct Silent;
impl Monitor for Silent {}

/// Counts evaluations of a denoiser (each call on a batch is one evaluation per sample).
pub(crate) struct Counted<'a> {
    inner: &'a dyn Denoiser,
    calls: AtomicU64,
}

impl<'a> Counted<'a> {
    pub fn new(inner: &'a dyn Denoiser) -> Self {
        Self {
            inner,
            calls: AtomicU64::new(0),
        }
    }
    pub fn evals(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
    /// Adds backward passes (DPS).
    pub fn add(&self, n: u64) {
        self.calls.fetch_add(n, Ordering::Relaxed);
    }
}

impl Denoiser for Counted<'_> {
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn sample_shape(&self) -> Vec<usize> {
        self.inner.sample_shape()
    }
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.denoise(x, sigma)
    }
    fn score(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.inner.score(x, sigma)
    }
    fn sigma_range(&self) -> (f64, f64) {
        self.inner.sigma_range()
    }
    fn device(&self) -> candle_core::Device {
        self.inner.device()
    }
    fn sigma_max_hint(&self) -> f64 {
        self.inner.sigma_max_hint()
    }
    fn scale(&self) -> f64 {
        self.inner.scale()
    }
    fn lipschitz(&self) -> Option<f64> {
        self.inner.lipschitz()
    }
    fn diffusion_start(&self, z: &Tensor, sigma_max: f64) -> Result<Tensor> {
        self.inner.diffusion_start(z, sigma_max)
    }
}

/// Lipschitz constant of the prior score used in step rules: the prior's own when known,
/// else `1 / sigma_min^2` (a network's smallest level).
pub fn prior_lipschitz(prior: &dyn Denoiser, override_: Option<f64>) -> Result<f64> {
    prior_lipschitz_at(prior, override_, prior.sigma_range().0)
}

/// The noise level at which Langevin samplers evaluate the prior score: `score_sigma` when set
/// (at least the prior's `sigma_min`), else `sigma_min` (0 for analytic priors, exact). Networks'
/// smallest trained level is very stiff; a slightly larger level makes usable step sizes, at the
/// price of targeting the posterior under the prior smoothed at that level.
pub fn score_level(prior: &dyn Denoiser, score_sigma: Option<f64>) -> Result<f64> {
    let smin = prior.sigma_range().0;
    match score_sigma {
        None => Ok(smin),
        Some(s) if s >= smin && s.is_finite() => Ok(s),
        Some(s) => Err(Error::param(
            "sampler.score_sigma",
            format!("must be finite and >= the prior's sigma_min = {smin}, got {s}"),
        )),
    }
}

/// [`prior_lipschitz`] for the score evaluated at `score_sigma`: without a known constant,
/// `1 / score_sigma^2` (the smoothed score's Lipschitz bound scale); a known `L` of the unsmoothed
/// score becomes `1 / (1/L + score_sigma^2)`.
pub fn prior_lipschitz_at(
    prior: &dyn Denoiser,
    override_: Option<f64>,
    score_sigma: f64,
) -> Result<f64> {
    if let Some(l) = override_ {
        if !(l >= 0.0) || !l.is_finite() {
            return Err(Error::param(
                "sampler.l_prior",
                format!("must be >= 0, got {l}"),
            ));
        }
        return Ok(l);
    }
    if let Some(l) = prior.lipschitz() {
        return Ok(if score_sigma > 0.0 {
            1.0 / (1.0 / l + score_sigma * score_sigma)
        } else {
            l
        });
    }
    if score_sigma > 0.0 {
        Ok(1.0 / (score_sigma * score_sigma))
    } else {
        Err(Error::param(
            "sampler.l_prior",
            "the prior has no known Lipschitz constant: set l_prior or a fixed step h",
        ))
    }
}

/// How Langevin step sizes are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepRule {
    /// `h = h_rel / (L_prior + ||A||^2 / eta^2)` (docs/algorithms.md, "Step rule").
    Relative { h_rel: f64 },
    /// A fixed step `h` (units of x^2).
    Fixed { h: f64 },
}

impl StepRule {
    pub fn validate(&self) -> Result<()> {
        let (name, v) = match self {
            StepRule::Relative { h_rel } => ("h_rel", *h_rel),
            StepRule::Fixed { h } => ("h", *h),
        };
        if !(v > 0.0) || !v.is_finite() {
            return Err(Error::param(
                format!("sampler.{name}"),
                format!("must be > 0, got {v}"),
            ));
        }
        Ok(())
    }
    /// Step for a Langevin run that targets the posterior with noise `eta_next`.
    pub fn step(&self, l_prior: f64, a_norm: f64, eta_next: f64) -> f64 {
        match self {
            StepRule::Relative { h_rel } => {
                crate::schedule::step_size(*h_rel, l_prior, a_norm, eta_next)
            }
            StepRule::Fixed { h } => *h,
        }
    }
}

/// Spectral norm of the problem's operator (power iteration, fixed seed).
pub fn operator_norm(op: &dyn LinearOperator) -> Result<f64> {
    crate::operator::op_norm(op, 300, 0x6e6f726d)
}
