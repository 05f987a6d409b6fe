//! Simulation-based calibration (Talts, Betancourt, Simpson, Vehtari & Gelman 2018) of any
//! sampler on any prior that can be sampled: `diffpost calibrate`.
//!
//! For replicates `r = 0..R`:
//! 1. `x*_r` from the prior: exact draws where the prior has them (`as_exact_sample`, Gaussian
//!    mixtures), otherwise the model's own reverse-diffusion sampler
//!    ([`CalibrateOptions::prior_draws`], the `prior` sampler kind);
//! 2. `y_r = A x*_r + eta xi_r`;
//! 3. `L` posterior samples of `p(x | y_r)` with the sampler under test (a [`RunContext`] built
//!    for `y_r`, run like any run);
//! 4. for each statistic `f` ([`stats`]), the rank of `f(x*_r)` among the `f` of the `L` samples,
//!    ties broken at random.
//!
//! For a sampler that is exact for the prior (and the eta) it is given, every rank is uniform on
//! `0..=L`. [`summarize`] reports per statistic the rank histogram, the ECDF difference with a
//! simultaneous 95% band ([`band`], Säilynoja, Bürkner & Vehtari 2022) and whether it leaves it,
//! the coverage of central 50% and 90% intervals and the contraction (posterior sd / prior sd):
//! a sampler that returns the prior is calibrated too, and only its contraction of 1 tells.
//!
//! Randomness: replicate `r` draws everything from its own seed `s_r` = the first word of the
//! ChaCha8 stream `(seed, r)`: the truth from stream `(s_r, 2^64 - 3)`, the noise from
//! `(s_r, 2^64 - 4)`, the tie-breaking from `(s_r, 2^64 - 5)`, and posterior sample `i` from
//! `(s_r, i)` as in any run. A replicate's result therefore depends on neither the shard split,
//! the batch size nor the thread count. Replicates run in parallel.
//!
//! Shards: [`CalibrateOptions::shard`] `K/N` runs the `K`-th contiguous block of replicates;
//! [`merge`] checks that a set of results are parts of one calibration (same fingerprint, each
//! replicate exactly once, none missing) and recomputes the summary over all replicates.

pub mod band;
mod plot;
pub mod stats;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::commit::{Replace, Staging};
use crate::operator::LinearOperator;
use crate::prior::Denoiser;
use crate::rng::SampleStreams;
use crate::run::{NoProgress, ProblemParts, Progress, RunContext, RunPlan, Shard};
use crate::sampler::diffusion::DiffusionConfig;
use crate::sampler::local::WarmStart;
use crate::sampler::spec::SamplerSpec;
use crate::sampler::Silent;
use crate::{Error, Result};

pub use band::Band;
pub use stats::{Statistic, StatisticsOptions};

/// Stream of a replicate's seed that draws its ground truth `x*`.
pub const TRUTH_STREAM: u64 = u64::MAX - 2;
/// Stream of a replicate's seed that draws its measurement noise `xi`.
pub const NOISE_STREAM: u64 = u64::MAX - 3;
/// Stream of a replicate's seed that breaks ties between `f(x*)` and the samples' `f`.
pub const TIE_STREAM: u64 = u64::MAX - 4;

/// The files a calibration folder holds.
pub const OUTPUTS: Replace<'static> = Replace::Outputs {
    names: &["calibration.json", "calibration.png"],
    suffixes: &[],
};

/// What to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CalibrateOptions {
    /// `R`: simulated problems (at least 1; 100-1000 for a useful test).
    pub replicates: usize,
    /// `L`: posterior samples per replicate (at least 1); ranks are on `0..=L`.
    pub samples: usize,
    /// Replicate `r` draws only from seeds derived from `(seed, r)`.
    pub seed: u64,
    pub statistics: StatisticsOptions,
    /// Diagnostic knob: the sampler under test is given `eta * sampler_eta_scale` while the data
    /// are simulated with `eta`. 1 (the default) tests the sampler; any other value makes even an
    /// exact sampler wrong (over-dispersed above 1, over-confident below), which is how the
    /// test's power is measured.
    pub sampler_eta_scale: f64,
    /// The sampler of `x*` for priors without exact draws (networks): reverse diffusion, the
    /// `prior` sampler kind's settings (default: 500 steps of the reverse SDE). Then the
    /// calibration is relative to this sampler's distribution, which is what the model defines.
    pub prior_draws: DiffusionConfig,
    /// Rank-histogram bins (default: about `R / 10` within `2..=20`, at most `L + 1`, a divisor of
    /// `L + 1` where one is near).
    pub bins: Option<usize>,
    /// Uniform rank samples simulated to find the band's adjusted levels (default 5000: the
    /// family-wise level is a quantile at `0.05 / statistics`, about 0.004).
    pub band_draws: usize,
    /// Posterior samples per batch within a replicate (results do not depend on it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
    /// Run only this shard of the replicates (`None`: all).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
}

impl Default for CalibrateOptions {
    fn default() -> Self {
        Self {
            replicates: 100,
            samples: 31,
            seed: 0,
            statistics: StatisticsOptions::default(),
            sampler_eta_scale: 1.0,
            prior_draws: DiffusionConfig::default(),
            bins: None,
            band_draws: 5000,
            batch: None,
            shard: None,
        }
    }
}

impl CalibrateOptions {
    /// Range checks (no model needed).
    pub fn validate(&self) -> Result<()> {
        if self.replicates == 0 {
            return Err(Error::param(
                "replicates",
                "must be >= 1 (100-1000 for a useful test)",
            ));
        }
        if self.samples == 0 {
            return Err(Error::param(
                "samples",
                "must be >= 1 (posterior samples per replicate)",
            ));
        }
        let max = crate::sampler::spec::MAX_COUNT;
        for (k, v) in [("replicates", self.replicates), ("samples", self.samples)] {
            if v as u64 > max {
                return Err(Error::param(
                    k,
                    format!("{v} is more than the limit of {max}"),
                ));
            }
        }
        if !(self.sampler_eta_scale > 0.0) || !self.sampler_eta_scale.is_finite() {
            return Err(Error::param(
                "sampler_eta_scale",
                format!("must be finite and > 0, got {}", self.sampler_eta_scale),
            ));
        }
        if self.bins == Some(0) {
            return Err(Error::param("bins", "must be >= 1"));
        }
        if self.band_draws < 100 {
            return Err(Error::param(
                "band_draws",
                format!("must be >= 100, got {}", self.band_draws),
            ));
        }
        if self.batch == Some(0) {
            return Err(Error::param("batch", "must be >= 1"));
        }
        self.prior_draws.validate("prior_draws.steps")?;
        if let Some(s) = self.shard {
            Shard::new(s.index, s.count)?;
            if s.count > self.replicates {
                return Err(Error::param(
                    "shard",
                    format!(
                        "{} shards for {} replicates: every shard needs at least one",
                        s.count, self.replicates
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The replicates this shard runs.
    pub fn replicate_range(&self) -> Result<std::ops::Range<usize>> {
        self.shard.unwrap_or(Shard::WHOLE).range(self.replicates)
    }
}

/// The model a calibration simulates from and the sampler sees: prior, operator and noise.
#[derive(Clone)]
pub struct Model<'a> {
    pub prior: &'a dyn Denoiser,
    pub op: &'a dyn LinearOperator,
    /// Noise standard deviation per measurement of the simulated data, units of `x`.
    pub eta: f64,
    /// What the prior and operator are (a config's `[prior]` and `[operator]` tables, a Python
    /// object's description): recorded, and part of the fingerprint that merging checks.
    pub description: serde_json::Value,
    /// Set by the caller to stop (Ctrl-C): replicates not started do not start, running ones stop
    /// at their sampler's next check; the call returns [`Error::Cancelled`].
    pub cancel: Option<Arc<AtomicBool>>,
}

/// One replicate's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replicate {
    /// `r`, in `0..R`.
    pub index: usize,
    /// The rank of `f(x*)` among the `L` samples' `f` (in `0..=L`), per statistic.
    pub ranks: Vec<u32>,
    /// `f(x*)` per statistic.
    pub truth: Vec<f64>,
    /// Mean and standard deviation (divisor `L - 1`) of the samples' `f`, per statistic.
    pub posterior_mean: Vec<f64>,
    pub posterior_sd: Vec<f64>,
    /// Score evaluations per sample (the largest over the replicate's samples).
    pub score_evals_per_sample: u64,
    /// Mean data residual `|y - A x| / (eta sqrt m)` of the samples (about 1 when they fit the
    /// noise), with the sampler's eta; absent for unconditional samplers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub residual: Option<f64>,
    pub wall_s: f64,
}

/// Coverage of a central interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    /// Nominal level (0.5, 0.9).
    pub level: f64,
    /// The interval runs from the `a`-th to the `(L + 1 - a)`-th smallest of the `L` samples'
    /// values (`a = round((L + 1)(1 - level) / 2)`; `a = 0`: unbounded below/above).
    pub a: usize,
    /// Its coverage for a calibrated sampler: `(L + 1 - 2a) / (L + 1)` (about `level`, exactly
    /// what uniform ranks give).
    pub expected: f64,
    /// Fraction of replicates with `f(x*)` inside.
    pub observed: f64,
    /// Binomial standard deviation of `observed` around `expected`: `sqrt(e (1 - e) / R)`.
    pub sd: f64,
}

/// One statistic's calibration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatisticSummary {
    pub name: String,
    pub statistic: Statistic,
    /// Replicates per rank bin ([`CalibrationSummary::bins`]).
    pub histogram: Vec<u64>,
    /// `F(t) - z` at the band's thresholds (`F(t)`: fraction of ranks below `t`).
    pub ecdf_diff: Vec<f64>,
    /// Whether the ECDF difference leaves the simultaneous band anywhere.
    pub leaves_band: bool,
    /// The fractional ranks `z` where it is outside.
    pub outside_at: Vec<f64>,
    /// The smallest pointwise two-sided binomial tail probability of the ECDF (the band is left
    /// when it is below the band's `adjusted_level`): how far inside or outside.
    pub min_pointwise_p: f64,
    pub coverage: Vec<Coverage>,
    /// Standard deviation of `f(x*)` over the replicates (the prior's spread of `f`).
    pub prior_sd: f64,
    /// `sqrt(mean_r posterior_sd_r^2)`.
    pub posterior_sd: f64,
    /// `posterior_sd / prior_sd`: 1 for a sampler that returns the prior, small when the data
    /// pin `f`. Not given for the misfit (it depends on `y_r`, so its spread over replicates is
    /// not a prior spread).
    pub contraction: Option<f64>,
}

/// A rank-histogram bin: ranks `lo..hi` (`hi` excluded), `expected` replicates in it for uniform
/// ranks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bin {
    pub lo: u32,
    pub hi: u32,
    pub expected: f64,
}

/// The calibration over the replicates a result holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationSummary {
    pub replicates: usize,
    /// The verdict over all statistics at 95%: no statistic's ECDF leaves the band of the
    /// family-wise level (`band.family_adjusted_level`, Bonferroni over the statistics), so an
    /// exact sampler fails with probability at most 5%. (Each statistic's own 95% band,
    /// `leaves_band`, is left by an exact sampler 5% of the time, so with 14 statistics some
    /// statistic leaves its own band about half of the time.)
    pub passed: bool,
    /// Statistics whose ECDF leaves the family-wise band.
    pub failed: Vec<String>,
    pub bins: Vec<Bin>,
    pub band: Band,
    pub statistics: Vec<StatisticSummary>,
}

/// `calibration.json`: a calibration, or one shard of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationResult {
    pub sampler: String,
    /// The sampler's `[sampler]` table with every default filled in.
    pub params: serde_json::Value,
    /// The model's description ([`Model::description`]).
    pub model: serde_json::Value,
    /// Noise of the simulated data; the sampler was given `eta * options.sampler_eta_scale`.
    pub eta: f64,
    pub d: usize,
    pub m: usize,
    /// How `x*` was drawn: `"exact"` or `"diffusion"` (the model's own sampler).
    pub truth_sampler: String,
    pub options: CalibrateOptions,
    /// Names of the statistics, in the order of every per-statistic list.
    pub statistics: Vec<String>,
    /// Hash of everything that determines the replicates (model, eta, sampler, options but the
    /// shard, batch and bins); parts of one calibration carry the same.
    pub fingerprint: String,
    /// The replicates, in index order.
    pub replicates: Vec<Replicate>,
    pub summary: CalibrationSummary,
    /// Sampling time (summed over the parts after a merge).
    pub wall_s: f64,
    /// Signs of trouble: replicates whose samples' data residual is far from 1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_warnings: Vec<String>,
    /// How many parts a merged result came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merged_from: Option<usize>,
}

impl CalibrationResult {
    /// The result as the command line prints it: one line per statistic (band, coverage,
    /// contraction) and the verdict.
    pub fn report(&self) -> String {
        let s = &self.summary;
        let mut out = format!(
            "{:<12} {:>6} {:>12} {:>16} {:>16} {:>11}\n",
            "statistic", "band", "min p", "cover 50%", "cover 90%", "contraction"
        );
        let cov = |c: &Coverage| format!("{:.3} ({:.3})", c.observed, c.expected);
        for st in &s.statistics {
            let band = if s.failed.contains(&st.name) {
                "OUT"
            } else if st.leaves_band {
                "out95"
            } else {
                "in"
            };
            out += &format!(
                "{:<12} {:>6} {:>12.2e} {:>16} {:>16} {:>11}\n",
                st.name,
                band,
                st.min_pointwise_p,
                cov(&st.coverage[0]),
                cov(&st.coverage[1]),
                st.contraction
                    .map(|c| format!("{c:.3}"))
                    .unwrap_or_else(|| "-".into())
            );
        }
        out += &format!(
            "verdict: {} (family-wise 95% over {} statistics: a statistic fails when its min p < \
             {:.2e}; its own 95% band: {:.2e}). Coverage: observed (exact for uniform ranks).",
            if s.passed {
                "calibrated: every statistic inside the band".to_string()
            } else {
                format!("NOT calibrated: {} outside the band", s.failed.join(", "))
            },
            s.statistics.len(),
            s.band.family_adjusted_level,
            s.band.adjusted_level,
        );
        out
    }
}

/// Replicate `r`'s seed: the first word of the ChaCha8 stream `(seed, r)`.
pub fn replicate_seed(seed: u64, r: usize) -> u64 {
    let mut g = ChaCha8Rng::seed_from_u64(seed);
    g.set_stream(r as u64);
    g.next_u64()
}

/// Refuses samplers whose settings cannot apply to simulated data (a warm start read from a
/// file belongs to one measurement); runs the spec's own checks.
pub fn check_sampler(spec: &SamplerSpec) -> Result<()> {
    spec.validate()?;
    if let SamplerSpec::Local(l) = spec {
        if let WarmStart::File(p) = &l.warm_start {
            return Err(Error::param(
                "sampler.warm_start",
                format!(
                    "a warm start from a file ({}) belongs to one measurement; calibration \
                     simulates a new one per replicate: use \"dps\", \"lasso\" or \"least-squares\"",
                    p.display()
                ),
            ));
        }
    }
    Ok(())
}

/// The fingerprint of a calibration: model, eta, sampler and the options that determine the
/// replicates.
fn fingerprint(model: &Model, spec: &SamplerSpec, opts: &CalibrateOptions) -> String {
    let canon = serde_json::json!({
        "model": model.description,
        "eta": model.eta,
        "sampler": spec.to_table(),
        "replicates": opts.replicates,
        "samples": opts.samples,
        "seed": opts.seed,
        "statistics": opts.statistics,
        "sampler_eta_scale": opts.sampler_eta_scale,
        "prior_draws": opts.prior_draws,
    });
    let mut h = Sha256::new();
    h.update(canon.to_string().as_bytes());
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs the calibration (the replicates of `opts.shard`), in parallel over replicates;
/// `progress` counts replicates.
pub fn calibrate(
    model: &Model,
    spec: &SamplerSpec,
    opts: &CalibrateOptions,
    progress: &dyn Progress,
) -> Result<CalibrationResult> {
    opts.validate()?;
    check_sampler(spec)?;
    let (prior, op) = (model.prior, model.op);
    if !(model.eta > 0.0) || !model.eta.is_finite() {
        return Err(Error::param(
            "measurement.eta",
            format!("must be finite and > 0, got {}", model.eta),
        ));
    }
    if op.in_dim() != prior.dim() {
        return Err(Error::shape(
            format!("operator `{}` input", op.name()),
            format!("d = {} (the prior's dimension)", prior.dim()),
            &[op.in_dim()],
        ));
    }
    // The layout of one replicate's run (population sizes: SMC's n must be a multiple).
    RunPlan::new(opts.samples, 0)
        .layout(spec)
        .map_err(|e| match e {
            Error::InvalidParam { reason, .. } => Error::param("samples", reason),
            e => e,
        })?;
    let stats = stats::Statistics::new(&opts.statistics, op, opts.seed)?;
    let range = opts.replicate_range()?;
    let truth_sampler = if prior.as_exact_sample().is_some() {
        "exact"
    } else {
        "diffusion"
    };
    progress.start(range.len() as u64);
    let t0 = Instant::now();
    let reps: Vec<Result<Replicate>> = range
        .clone()
        .into_par_iter()
        .map(|r| {
            if let Some(c) = &model.cancel {
                if c.load(Ordering::Relaxed) {
                    return Err(Error::Cancelled("stopped by the caller".into()));
                }
            }
            let rep = replicate(model, spec, opts, &stats, r);
            progress.advance(1);
            // Failures of the sampler on one replicate's data name the replicate.
            rep.map_err(|e| match e {
                Error::Diverged {
                    sampler,
                    stage,
                    step,
                    reason,
                } => Error::Diverged {
                    sampler: format!("{sampler} (calibration replicate {r})"),
                    stage,
                    step,
                    reason,
                },
                Error::Numerical(m) => Error::Numerical(format!("replicate {r}: {m}")),
                e => e,
            })
        })
        .collect();
    let replicates: Vec<Replicate> = reps.into_iter().collect::<Result<_>>()?;
    let wall_s = t0.elapsed().as_secs_f64();
    let summary = summarize(&replicates, opts, &stats.list)?;
    let mut result = CalibrationResult {
        sampler: spec.name().into(),
        params: spec.to_table(),
        model: model.description.clone(),
        eta: model.eta,
        d: prior.dim(),
        m: op.out_dim(),
        truth_sampler: truth_sampler.into(),
        options: opts.clone(),
        statistics: stats.names(),
        fingerprint: fingerprint(model, spec, opts),
        replicates,
        summary,
        wall_s,
        health_warnings: Vec::new(),
        merged_from: None,
    };
    result.health_warnings = health_warnings(&result);
    Ok(result)
}

/// One replicate: truth, data, samples, ranks.
fn replicate(
    model: &Model,
    spec: &SamplerSpec,
    opts: &CalibrateOptions,
    stats: &stats::Statistics,
    r: usize,
) -> Result<Replicate> {
    let t = Instant::now();
    let (prior, op) = (model.prior, model.op);
    let d = prior.dim();
    let seed = replicate_seed(opts.seed, r);
    // x*: exact where the prior has it, else its own diffusion sampler.
    let mut ts = SampleStreams::new(seed, [TRUTH_STREAM]);
    let x_star = match prior.as_exact_sample() {
        Some(e) => e.sample_exact(&mut ts)?,
        None => {
            crate::sampler::diffusion::sample(prior, &opts.prior_draws, &mut ts, &Silent)?.samples
        }
    };
    let x_star = x_star
        .to_dtype(candle_core::DType::F64)?
        .to_device(&Device::Cpu)?
        .reshape((1, d))?;
    let ax: Vec<f64> = op
        .apply(&x_star.to_device(&prior.device())?)?
        .to_device(&Device::Cpu)?
        .to_dtype(candle_core::DType::F64)?
        .flatten_all()?
        .to_vec1()?;
    let xi = SampleStreams::new(seed, [NOISE_STREAM]).normal_vec(ax.len());
    let y: Vec<f64> = ax.iter().zip(&xi).map(|(a, z)| a + model.eta * z).collect();
    let y_t = Tensor::from_vec(y, ax.len(), &Device::Cpu)?;
    let parts = ProblemParts {
        prior,
        op,
        y: &y_t,
        eta: model.eta * opts.sampler_eta_scale,
    };
    let mut ctx = RunContext::new(parts, spec)?;
    if let Some(c) = &model.cancel {
        ctx = ctx.with_cancel(c.clone());
    }
    let plan = RunPlan {
        batch: opts.batch,
        ..RunPlan::new(opts.samples, seed)
    };
    let out = ctx.run(&plan, &NoProgress)?;
    let samples = out.samples.to_dtype(candle_core::DType::F64)?;
    let dev = ctx.problem().device();
    let misfit_s = ctx.problem().residuals_sq(&samples.to_device(&dev)?)?;
    let misfit_t = ctx.problem().residuals_sq(&x_star.to_device(&dev)?)?;
    let xs: Vec<Vec<f64>> = samples.to_device(&Device::Cpu)?.to_vec2()?;
    let xt: Vec<Vec<f64>> = x_star.to_vec2()?;
    let fs = stats.eval(&xs, &misfit_s);
    let ft = stats.eval(&xt, &misfit_t);
    let mut ties = SampleStreams::new(seed, [TIE_STREAM]);
    let l = opts.samples;
    let (mut ranks, mut truth, mut mean, mut sd) = (vec![], vec![], vec![], vec![]);
    for (k, (vals, tv)) in fs.iter().zip(&ft).enumerate() {
        let f_star = tv[0];
        if !f_star.is_finite() || vals.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: format!("statistic {} of replicate {r}", stats.list[k].0),
            });
        }
        let below = vals.iter().filter(|&&v| v < f_star).count();
        let equal = vals.iter().filter(|&&v| v == f_star).count();
        // Ties at random, from the replicate's own stream (one draw per statistic always).
        let u = ties.stream(0).random_range(0..=equal as u32);
        ranks.push(below as u32 + u);
        truth.push(f_star);
        let m = vals.iter().sum::<f64>() / l as f64;
        let v = vals.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (l.max(2) - 1) as f64;
        mean.push(m);
        sd.push(v.sqrt());
    }
    Ok(Replicate {
        index: r,
        ranks,
        truth,
        posterior_mean: mean,
        posterior_sd: sd,
        score_evals_per_sample: out.diagnostics.score_evals_per_sample.max,
        residual: out.diagnostics.residual.map(|m| m.mean),
        wall_s: t.elapsed().as_secs_f64(),
    })
}

/// The default number of histogram bins: about `R / 10` within `2..=20`, preferably a divisor
/// of `L + 1` (bins of equal width) when one lies within a factor 2 below that.
fn default_bins(replicates: usize, samples: usize) -> usize {
    let target = (replicates / 10).clamp(2, 20).min(samples + 1);
    (target.div_ceil(2).max(1)..=target)
        .rev()
        .find(|b| (samples + 1).is_multiple_of(*b))
        .unwrap_or(target)
}

/// The summary over `replicates` (any subset of a calibration's).
pub fn summarize(
    replicates: &[Replicate],
    opts: &CalibrateOptions,
    statistics: &[(String, Statistic)],
) -> Result<CalibrationSummary> {
    let n = replicates.len();
    if n == 0 {
        return Err(Error::param("replicates", "no replicate to summarize"));
    }
    let l = opts.samples;
    let band = band::band(n, l, 0.95, statistics.len(), opts.band_draws)?;
    let nb = opts.bins.unwrap_or_else(|| default_bins(n, l)).min(l + 1);
    let bins: Vec<Bin> = (0..nb)
        .map(|b| {
            let lo = (b * (l + 1) / nb) as u32;
            let hi = ((b + 1) * (l + 1) / nb) as u32;
            Bin {
                lo,
                hi,
                expected: n as f64 * (hi - lo) as f64 / (l + 1) as f64,
            }
        })
        .collect();
    let mut out = Vec::with_capacity(statistics.len());
    for (k, (name, statistic)) in statistics.iter().enumerate() {
        let ranks: Vec<u32> = replicates.iter().map(|r| r.ranks[k]).collect();
        let histogram = bins
            .iter()
            .map(|b| ranks.iter().filter(|&&x| x >= b.lo && x < b.hi).count() as u64)
            .collect();
        let check = band::check(&ranks, l, &band)?;
        let coverage = [0.5, 0.9]
            .iter()
            .map(|&level| {
                let a = (((l + 1) as f64) * (1.0 - level) / 2.0).round() as usize;
                let a = a.min(l / 2);
                let expected = (l + 1 - 2 * a) as f64 / (l + 1) as f64;
                let inside = ranks
                    .iter()
                    .filter(|&&x| (x as usize) >= a && (x as usize) <= l - a)
                    .count();
                Coverage {
                    level,
                    a,
                    expected,
                    observed: inside as f64 / n as f64,
                    sd: (expected * (1.0 - expected) / n as f64).sqrt(),
                }
            })
            .collect();
        let truth: Vec<f64> = replicates.iter().map(|r| r.truth[k]).collect();
        let tm = truth.iter().sum::<f64>() / n as f64;
        let prior_sd = if n > 1 {
            (truth.iter().map(|v| (v - tm) * (v - tm)).sum::<f64>() / (n - 1) as f64).sqrt()
        } else {
            0.0
        };
        let posterior_sd = (replicates
            .iter()
            .map(|r| r.posterior_sd[k] * r.posterior_sd[k])
            .sum::<f64>()
            / n as f64)
            .sqrt();
        let statistic = statistic.clone();
        let contraction =
            (statistic != Statistic::Misfit && prior_sd > 0.0).then(|| posterior_sd / prior_sd);
        out.push(StatisticSummary {
            name: name.clone(),
            statistic,
            histogram,
            ecdf_diff: check.diff,
            leaves_band: !check.outside_at.is_empty(),
            outside_at: check.outside_at,
            min_pointwise_p: check.min_p,
            coverage,
            prior_sd,
            posterior_sd,
            contraction,
        });
    }
    let failed: Vec<String> = out
        .iter()
        .filter(|s| s.min_pointwise_p < band.family_adjusted_level)
        .map(|s| s.name.clone())
        .collect();
    Ok(CalibrationSummary {
        replicates: n,
        passed: failed.is_empty(),
        failed,
        bins,
        band,
        statistics: out,
    })
}

/// Replicates whose samples do not fit the data (mean residual outside [0.3, 3], as runs warn).
fn health_warnings(res: &CalibrationResult) -> Vec<String> {
    let bad: Vec<String> = res
        .replicates
        .iter()
        .filter_map(|r| {
            r.residual
                .filter(|v| !(0.3..=3.0).contains(v))
                .map(|v| format!("{} ({v:.3})", r.index))
        })
        .collect();
    if bad.is_empty() {
        return vec![];
    }
    let shown: Vec<&str> = bad.iter().take(10).map(|s| s.as_str()).collect();
    vec![format!(
        "{} of {} replicates have a mean data residual |y - A x|/(eta sqrt m) outside [0.3, 3] \
         (about 1 expected; eta as the sampler was given it): {}{}",
        bad.len(),
        res.replicates.len(),
        shown.join(", "),
        if bad.len() > 10 { ", ..." } else { "" }
    )]
}

/// Puts the parts of one calibration back together: `(result, name)` pairs, `name` used in
/// errors (a folder). Refuses parts of different calibrations (fingerprint, sampler, replicates,
/// samples, seed, statistics), a replicate given twice and missing replicates; the summary is
/// computed again over all replicates.
pub fn merge(parts: Vec<(CalibrationResult, String)>) -> Result<CalibrationResult> {
    let Some((first, first_name)) = parts.first() else {
        return Err(Error::param("merge", "no calibration results given"));
    };
    for (p, name) in &parts {
        let same = |what: &str, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(Error::param(
                    "merge",
                    format!(
                        "{name} is not a part of the same calibration as {first_name}: its \
                         {what} differs"
                    ),
                ))
            }
        };
        same("sampler", p.sampler == first.sampler)?;
        same(
            "replicates (R)",
            p.options.replicates == first.options.replicates,
        )?;
        same("samples (L)", p.options.samples == first.options.samples)?;
        same("seed", p.options.seed == first.options.seed)?;
        same(
            "sampler_eta_scale",
            p.options.sampler_eta_scale == first.options.sampler_eta_scale,
        )?;
        same("statistics", p.statistics == first.statistics)?;
        same(
            "fingerprint (model, eta or sampler settings)",
            p.fingerprint == first.fingerprint,
        )?;
        for r in &p.replicates {
            if r.index >= p.options.replicates
                || r.ranks.len() != p.statistics.len()
                || r.truth.len() != p.statistics.len()
                || r.posterior_sd.len() != p.statistics.len()
                || r.ranks.iter().any(|&x| x as usize > p.options.samples)
            {
                return Err(Error::param(
                    "merge",
                    format!(
                        "{name}: replicate {} is malformed (index out of range, or ranks that \
                         do not match its statistics and samples)",
                        r.index
                    ),
                ));
            }
        }
    }
    let total = first.options.replicates;
    let mut owner: Vec<Option<&str>> = vec![None; total];
    for (p, name) in &parts {
        for r in &p.replicates {
            if let Some(prev) = owner[r.index] {
                return Err(Error::param(
                    "merge",
                    format!("replicate {} is given twice ({prev} and {name})", r.index),
                ));
            }
            owner[r.index] = Some(name);
        }
    }
    let missing: Vec<usize> = (0..total).filter(|&i| owner[i].is_none()).collect();
    if !missing.is_empty() {
        return Err(Error::param(
            "merge",
            format!(
                "missing {} of {total} replicates: {}",
                missing.len(),
                ranges(&missing)
            ),
        ));
    }
    let mut merged = first.clone();
    let mut reps: Vec<Replicate> = parts
        .iter()
        .flat_map(|(p, _)| p.replicates.iter().cloned())
        .collect();
    reps.sort_by_key(|r| r.index);
    merged.options.shard = None;
    merged.wall_s = parts.iter().map(|(p, _)| p.wall_s).sum();
    let statistics = statistic_list(first)?;
    merged.summary = summarize(&reps, &merged.options, &statistics)?;
    merged.replicates = reps;
    merged.merged_from = Some(parts.len());
    merged.health_warnings = health_warnings(&merged);
    Ok(merged)
}

/// The statistics of a result, by name, from its summary.
fn statistic_list(res: &CalibrationResult) -> Result<Vec<(String, Statistic)>> {
    if res.summary.statistics.len() != res.statistics.len() {
        return Err(Error::param(
            "merge",
            "a result whose summary does not list its statistics",
        ));
    }
    Ok(res
        .summary
        .statistics
        .iter()
        .map(|s| (s.name.clone(), s.statistic.clone()))
        .collect())
}

/// `0-9, 20, 30-31` from sorted indices.
fn ranges(v: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}-{}", v[i], v[j])
        });
        i = j + 1;
    }
    out.join(", ")
}

/// Writes `calibration.json` and `calibration.png` into a staging folder.
pub fn write(dir: &Staging, res: &CalibrationResult) -> Result<()> {
    let text = serde_json::to_string_pretty(res).map_err(|e| Error::Numerical(e.to_string()))?;
    dir.write_bytes("calibration.json", text.as_bytes())?;
    plot::plot(&dir.path().join("calibration.png"), res)
}

/// Draws `calibration.png` (rank histograms and ECDF differences with the band) at `path`.
pub fn write_plot(path: &Path, res: &CalibrationResult) -> Result<()> {
    plot::plot(path, res)
}

/// Reads `calibration.json` from a folder (or the file itself).
pub fn read(path: &Path) -> Result<CalibrationResult> {
    let file = if path.is_dir() {
        path.join("calibration.json")
    } else {
        path.to_path_buf()
    };
    let ferr = |reason: String| Error::File {
        path: file.clone(),
        reason,
    };
    let text = std::fs::read_to_string(&file)
        .map_err(|e| ferr(format!("cannot read calibration result: {e}")))?;
    serde_json::from_str(&text).map_err(|e| ferr(format!("not a diffpost calibration: {e}")))
}

/// Refuses an output folder that is one of the parts being merged.
pub fn check_merge_target(dirs: &[std::path::PathBuf], out: &Path) -> Result<()> {
    crate::run::summary::check_merge_target(dirs, out)
}
