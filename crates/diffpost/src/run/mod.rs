//! The run pipeline: a [`RunContext`] built once per run (the problem, `||A||`, the exact posterior
//! where one is needed, the resolved warm start), one entry ([`RunContext::sample_batch`]) that
//! executes any [`SamplerSpec`] on a batch of sample streams, and a runner ([`RunContext::run`])
//! that executes a run as independent *populations* of samples, in parallel batches, optionally
//! one shard of them, and aggregates the diagnostics over all populations.
//!
//! Populations: a population is the unit of samples that must run together (today 1 sample, an
//! independent chain; an SMC sampler's particle system later). Population `j` holds samples
//! `j P .. (j + 1) P`; sample `i` draws only from its own stream `(seed, i)`, so the result of a
//! population depends neither on the batch it ran in, the thread count nor the shard.
//!
//! What `diffpost sample` does, from Rust:
//!
//! ```no_run
//! use diffpost::config::ProblemConfig;
//! use diffpost::run::{NoProgress, RunContext, RunPlan};
//!
//! # fn main() -> diffpost::Result<()> {
//! let cfg = ProblemConfig::read("my/problem.toml".as_ref())?; // parse + validate all sections
//! let problem = cfg.load(&candle_core::Device::Cpu)?; // prior, operator, y
//! let ctx = RunContext::new(problem.parts(), &cfg.sampler)?; // ||A||, posterior, warm start
//! let out = ctx.run(&RunPlan::new(cfg.run.n, cfg.run.seed), &NoProgress)?;
//! println!("{:?} {:?}", out.samples.dims(), out.diagnostics);
//! # Ok(())
//! # }
//! ```

pub mod shard;
pub mod summary;

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

pub use shard::Shard;

use crate::operator::LinearOperator;
use crate::prior::{Denoiser, ExactSample, GaussianMixture};
use crate::rng::SampleStreams;
use crate::sampler::settings::WarmStart;
use crate::sampler::spec::SamplerSpec;
use crate::sampler::{
    ald, annealed, cs, daps, diffusion, dps, exact, health, local, mala, smc, ula, Info, Monitor,
    Output, Problem, Silent, WarmStartRun, Weighted,
};
use crate::{Error, Result};

/// The parts of an inverse problem a run needs, borrowed from their owner (a loaded config, a
/// test, the demo).
#[derive(Clone, Copy)]
pub struct ProblemParts<'a> {
    /// The prior the samplers see (possibly a perturbed score).
    pub prior: &'a dyn Denoiser,
    /// The analytic prior behind it, when there is one (exact posterior, MALA's log-density,
    /// exact prior draws).
    pub analytic: Option<&'a GaussianMixture>,
    /// True when `prior` is `analytic` with an error added to its score (no log-density then).
    pub perturbed: bool,
    pub op: &'a dyn LinearOperator,
    /// `[m]` or `[1, m]`.
    pub y: &'a Tensor,
    pub eta: f64,
}

impl<'a> ProblemParts<'a> {
    /// A Gaussian-mixture prior, seen as it is (exact posterior, log-density, exact draws).
    pub fn mixture(
        prior: &'a GaussianMixture,
        op: &'a dyn LinearOperator,
        y: &'a Tensor,
        eta: f64,
    ) -> Self {
        Self {
            prior,
            analytic: Some(prior),
            perturbed: false,
            op,
            y,
            eta,
        }
    }

    /// A prior known only through its denoiser (a network, a callable).
    pub fn denoiser(
        prior: &'a dyn Denoiser,
        op: &'a dyn LinearOperator,
        y: &'a Tensor,
        eta: f64,
    ) -> Self {
        Self {
            prior,
            analytic: None,
            perturbed: false,
            op,
            y,
            eta,
        }
    }
}

/// Algorithm 2's warm start, resolved once per run.
enum Warm {
    /// One `x0` for every sample, `[1, d]` (LASSO, least squares, a `[d]` file).
    Shared(Tensor),
    /// Row `i` for sample `i`, `[n, d]` (a file).
    Rows(Tensor),
    /// A DPS run per sample.
    Dps(dps::DpsConfig),
}

impl Warm {
    /// `x0` as `[d]`/`[1, d]` (shared) or `[n, d]` (one row per sample); any other shape is the
    /// error `bad(dims)`.
    fn from_tensor(x0: Tensor, d: usize, bad: impl FnOnce(&[usize]) -> Error) -> Result<Warm> {
        Ok(match x0.dims() {
            [dd] if *dd == d => Warm::Shared(x0.unsqueeze(0)?),
            [1, dd] if *dd == d => Warm::Shared(x0),
            [_, dd] if *dd == d => Warm::Rows(x0),
            other => return Err(bad(other)),
        })
    }
}

/// Everything a run shares read-only between its batches; built once.
pub struct RunContext<'a> {
    spec: SamplerSpec,
    problem: Problem<'a>,
    analytic: Option<&'a GaussianMixture>,
    perturbed: bool,
    posterior: Option<GaussianMixture>,
    warm: Option<Warm>,
}

impl<'a> RunContext<'a> {
    /// Validates the problem and the spec against it and does the per-run work once: `||A||`
    /// (samplers with a step rule), the exact posterior (`exact`), the warm start (`local`), the
    /// estimate of Algorithm 3's step 1 (`cs`).
    pub fn new(parts: ProblemParts<'a>, spec: &SamplerSpec) -> Result<Self> {
        let problem = Problem::new(parts.prior, parts.op, parts.y, parts.eta)?;
        let need_analytic = |what: &str| {
            parts.analytic.ok_or_else(|| {
                Error::param(
                    "sampler.kind",
                    format!("{what} needs an analytic (gmm/isotropic) prior"),
                )
            })
        };
        let mut posterior = None;
        let mut warm = None;
        match spec {
            SamplerSpec::Exact(_) => {
                let g = need_analytic("exact")?;
                let y: Vec<f64> = problem
                    .y
                    .flatten_all()?
                    .to_dtype(candle_core::DType::F64)?
                    .to_vec1()?;
                posterior = Some(g.posterior(parts.op, &y, parts.eta)?);
            }
            SamplerSpec::Mala(_) => {
                need_analytic("mala")?;
                if parts.perturbed {
                    return Err(Error::param(
                        "sampler.kind",
                        "mala needs the prior's log-density, which a perturbed score does not have",
                    ));
                }
            }
            SamplerSpec::Local(l) => {
                warm = Some(match &l.warm_start {
                    WarmStart::Dps(c) => Warm::Dps(c.clone()),
                    WarmStart::Lasso => Warm::Shared(cs::estimate(
                        &problem,
                        &cs::Estimator::Lasso {
                            lambda: None,
                            iters: 500,
                        },
                    )?),
                    WarmStart::LeastSquares => Warm::Shared(cs::estimate(
                        &problem,
                        &cs::Estimator::LeastSquares { iters: 500 },
                    )?),
                    WarmStart::File(p) => {
                        let d = parts.prior.dim();
                        let t = crate::io::read_array(p, "warm start x0")?;
                        Warm::from_tensor(t, d, |other| Error::File {
                            path: p.clone(),
                            reason: format!(
                                "warm start must be [d] or [n, d] with d = {d}, got {other:?}"
                            ),
                        })?
                    }
                });
            }
            SamplerSpec::Cs(c) => {
                // Step 1 of Algorithm 3 is deterministic: once per run, not per batch.
                warm = Some(Warm::Shared(cs::estimate(&problem, &c.estimator)?));
            }
            _ => {}
        }
        if !matches!(
            spec,
            SamplerSpec::Exact(_) | SamplerSpec::Prior(_) | SamplerSpec::Dps(_)
        ) {
            // Once per run, shared by every batch (was once per batch and sampler call).
            problem.a_norm()?;
        }
        Ok(Self {
            spec: spec.clone(),
            problem,
            analytic: parts.analytic,
            perturbed: parts.perturbed,
            posterior,
            warm,
        })
    }

    /// Algorithm 2 with a warm start computed by the caller: `x0` is `[d]`/`[1, d]` (shared) or
    /// `[n, d]` (row `i` for sample `i`); replaces the spec's own warm start.
    pub fn with_warm_start(mut self, x0: Tensor) -> Result<Self> {
        if !matches!(self.spec, SamplerSpec::Local(_)) {
            return Err(Error::param(
                "sampler.kind",
                "a warm start applies to `local` only",
            ));
        }
        let d = self.problem.prior.dim();
        let x0 = x0.to_dtype(candle_core::DType::F64)?;
        self.warm = Some(Warm::from_tensor(x0, d, |other| {
            Error::shape(
                "warm start x0",
                format!("[d], [1, d] or [n, d] with d = {d}"),
                other,
            )
        })?);
        Ok(self)
    }

    /// Stops the run once `flag` is set: batches not yet started do not start, running ones
    /// stop at their sampler's next check (every few steps); the run returns
    /// [`Error::Cancelled`].
    pub fn with_cancel(mut self, flag: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.problem = self.problem.with_cancel(flag);
        self
    }

    pub fn spec(&self) -> &SamplerSpec {
        &self.spec
    }

    pub fn problem(&self) -> &Problem<'a> {
        &self.problem
    }

    /// Executes the spec on one batch of streams (whole populations).
    pub fn sample_batch(&self, streams: &mut SampleStreams, mon: &dyn Monitor) -> Result<Output> {
        let problem = &self.problem;
        let exact_prior = self.analytic.map(|g| g as &dyn ExactSample);
        Ok(match &self.spec {
            SamplerSpec::Annealed(c) => annealed::sample(problem, exact_prior, c, streams, mon)?,
            SamplerSpec::Ula(c) => ula::sample(problem, exact_prior, c, streams, mon)?,
            SamplerSpec::Mala(c) => {
                let g = self.analytic.expect("checked in RunContext::new");
                mala::sample(problem, g, exact_prior, c, streams, mon)?
            }
            SamplerSpec::Dps(c) => dps::sample(problem, c, streams, mon)?,
            SamplerSpec::Daps(c) => daps::sample(problem, c, streams, mon)?,
            SamplerSpec::Ald(c) => ald::sample(problem, c, streams, mon)?,
            SamplerSpec::Exact(_) => exact::sample(
                self.posterior.as_ref().expect("built in RunContext::new"),
                streams,
            )?,
            SamplerSpec::Prior(c) => diffusion::sample(problem.prior, c, streams, mon)?,
            SamplerSpec::Smc(c) => {
                let log_density = match (self.analytic, self.perturbed) {
                    (Some(g), false) => Some(g as &dyn crate::prior::LogDensity),
                    _ => None,
                };
                smc::sample(problem, exact_prior, log_density, c, streams, mon)?
            }
            SamplerSpec::Cs(c) => match self.warm.as_ref() {
                Some(Warm::Shared(x0)) => cs::sample_from(problem, x0, c, streams, mon)?,
                _ => unreachable!("built in RunContext::new"),
            },
            SamplerSpec::Local(l) => {
                let t = std::time::Instant::now();
                let (x0, warm_evals) = match self.warm.as_ref().expect("built in RunContext::new") {
                    Warm::Dps(dc) => {
                        let o = dps::sample(problem, dc, streams, &Silent)?;
                        (o.samples, o.score_evals)
                    }
                    Warm::Shared(x0) => (x0.clone(), 0),
                    Warm::Rows(t) => {
                        let n = t.dims()[0];
                        if let Some(bad) = streams.indices().iter().find(|&&i| i as usize >= n) {
                            return Err(Error::shape(
                                format!("warm start rows (sample {bad} needs row {bad})"),
                                format!("at least {} rows", bad + 1),
                                t.dims(),
                            ));
                        }
                        let idx: Vec<u32> = streams.indices().iter().map(|&i| i as u32).collect();
                        let idx = Tensor::new(idx, &Device::Cpu)?;
                        (t.index_select(&idx, 0)?, 0)
                    }
                };
                let x0 = match l.clip {
                    Some([lo, hi]) => x0.clamp(lo, hi)?,
                    None => x0,
                };
                let wall_s = t.elapsed().as_secs_f64();
                let mut o = local::sample(problem, &x0, &l.local, streams, mon)?;
                o.score_evals += warm_evals;
                o.warm_start = Some(WarmStartRun {
                    x0,
                    score_evals: warm_evals,
                    wall_s,
                });
                o
            }
        })
    }

    /// Runs `plan`: its shard of the populations, in parallel batches of whole populations.
    pub fn run(&self, plan: &RunPlan, progress: &dyn Progress) -> Result<RunOutput> {
        let layout = plan.layout(&self.spec)?;
        let p = layout.population_size;
        let threads = rayon::current_num_threads().max(1);
        let shard_n = (layout.sample_range[1] - layout.sample_range[0]) as usize;
        // Default batch: about two batches per thread, 16..=1000 samples; whole populations.
        let batch = plan
            .batch
            .unwrap_or_else(|| shard_n.div_ceil(2 * threads).clamp(16, 1000));
        // Whole populations per batch; populations of many particles (SMC) one per batch.
        let batch = if p > 1 { p } else { batch };
        // Per-sample random streams, the samples and their copies (batches, concatenation).
        crate::limits::check_alloc(
            "run.n",
            (shard_n as u128).saturating_mul(
                SampleStreams::BYTES_PER_STREAM as u128 + 4 * 8 * self.problem.prior.dim() as u128,
            ),
        )?;
        let started = Once::new();
        let streams = SampleStreams::new(plan.seed, layout.sample_range[0]..layout.sample_range[1]);
        let outs: Vec<Result<(usize, Output)>> = streams
            .into_chunks(batch)
            .into_par_iter()
            .map(|mut s| {
                let mon = BatchMonitor {
                    progress,
                    started: &started,
                    samples: shard_n as u64,
                    batch: s.len() as u64,
                    last: AtomicU64::new(0),
                };
                let len = s.len();
                self.problem.check_cancel()?;
                self.sample_batch(&mut s, &mon).map(|o| (len, o))
            })
            .collect();
        let outs: Vec<(usize, Output)> = outs.into_iter().collect::<Result<_>>()?;
        let mut diagnostics = Diagnostics::default();
        for (len, o) in &outs {
            diagnostics.add(o, *len as u64);
        }
        let cat = |f: &dyn Fn(&Output) -> Option<Tensor>| -> Result<Option<Tensor>> {
            let parts: Option<Vec<Tensor>> = outs.iter().map(|(_, o)| f(o)).collect();
            Ok(match parts {
                Some(p) if !p.is_empty() => Some(Tensor::cat(&p, 0)?.to_device(&Device::Cpu)?),
                _ => None,
            })
        };
        let samples = cat(&|o| Some(o.samples.clone()))?.expect("at least one batch");
        if !matches!(self.spec, SamplerSpec::Prior(_)) {
            let r = self.problem.normalized_residuals(&samples)?;
            diagnostics.residual = Some(SampleMean {
                mean: r.iter().sum::<f64>() / r.len().max(1) as f64,
                samples: r.len() as u64,
                sum: r.iter().sum(),
            });
        }
        let weighted = match (
            cat(&|o| o.weighted.as_ref().map(|w| w.particles.clone()))?,
            cat(&|o| o.weighted.as_ref().map(|w| w.weights.clone()))?,
        ) {
            (Some(particles), Some(weights)) => Some(Weighted { particles, weights }),
            _ => None,
        };
        // The schedule is the same for every population; SMC traces are one per population.
        let traces: Vec<smc::SmcTrace> = outs
            .iter()
            .flat_map(|(_, o)| o.info.smc.iter().flatten().cloned())
            .collect();
        let mut info = outs
            .into_iter()
            .next()
            .map(|(_, o)| o.info)
            .unwrap_or_default();
        info.acceptance = diagnostics.acceptance.map(|a| a.mean);
        if !traces.is_empty() {
            info.smc = Some(traces);
        }
        Ok(RunOutput {
            samples,
            info,
            diagnostics,
            layout,
            weighted,
        })
    }
}

/// What to run: `n` samples with `seed`, in batches of about `batch` samples, shard `shard`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunPlan {
    pub n: usize,
    pub seed: u64,
    /// Samples per batch (rounded up to whole populations); results do not depend on it.
    pub batch: Option<usize>,
    pub shard: Shard,
}

impl RunPlan {
    /// The whole run (one shard).
    pub fn new(n: usize, seed: u64) -> Self {
        Self {
            n,
            seed,
            batch: None,
            shard: Shard::WHOLE,
        }
    }

    /// Populations and the shard's sample range.
    pub fn layout(&self, spec: &SamplerSpec) -> Result<Layout> {
        if self.n == 0 {
            return Err(Error::param("run.n", "must be >= 1"));
        }
        if self.batch == Some(0) {
            return Err(Error::param("run.batch", "must be >= 1"));
        }
        let p = spec.population_size(self.n);
        if p == 0 || !self.n.is_multiple_of(p) {
            return Err(Error::param(
                "run.n",
                format!(
                    "must be a multiple of the population size {p}, got {}",
                    self.n
                ),
            ));
        }
        let populations = self.n / p;
        let r = self.shard.range(populations)?;
        Ok(Layout {
            n: self.n,
            seed: self.seed,
            population_size: p,
            populations,
            shard: self.shard,
            population_range: [r.start, r.end],
            sample_range: [(r.start * p) as u64, (r.end * p) as u64],
        })
    }
}

/// How a run's samples are laid out in populations, and which of them this shard holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    pub n: usize,
    pub seed: u64,
    pub population_size: usize,
    pub populations: usize,
    pub shard: Shard,
    /// Populations `[start, end)` of this shard.
    pub population_range: [usize; 2],
    /// Samples `[start, end)` of this shard (rows of its `samples.npy`).
    pub sample_range: [u64; 2],
}

impl Layout {
    pub fn samples(&self) -> Range<u64> {
        self.sample_range[0]..self.sample_range[1]
    }
}

/// A run's result.
pub struct RunOutput {
    /// `[n_shard, d]` samples, rows in sample order, on the CPU.
    pub samples: Tensor,
    /// The schedule and step sizes (the same for every population).
    pub info: Info,
    /// Aggregated over all populations.
    pub diagnostics: Diagnostics,
    pub layout: Layout,
    /// Weighted samplers (SMC): the particles at `lambda = 1` and their weights (normalised in
    /// each population), before the final resampling.
    pub weighted: Option<Weighted>,
}

/// A mean over samples, kept as a sum so shards and batches combine exactly.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct SampleMean {
    /// Sample-weighted mean.
    pub mean: f64,
    /// Samples it is over.
    pub samples: u64,
    /// `mean * samples` (what merging adds).
    pub sum: f64,
}

impl SampleMean {
    fn merge(&mut self, o: &SampleMean) {
        self.sum += o.sum;
        self.samples += o.samples;
        self.mean = if self.samples > 0 {
            self.sum / self.samples as f64
        } else {
            0.0
        };
    }
}

/// Score evaluations per sample over a run.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct EvalStats {
    pub mean: f64,
    pub max: u64,
    pub min: u64,
    /// Evaluations summed over samples.
    pub total: u64,
    pub samples: u64,
}

/// Diagnostics aggregated over all populations (and, by [`Diagnostics::merge`], over shards).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Diagnostics {
    pub samples: u64,
    pub score_evals_per_sample: EvalStats,
    /// MALA: acceptance rate, a mean weighted by the number of samples of each batch.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub acceptance: Option<SampleMean>,
    /// SMC: the `log p(y)` estimate of every population, in population order (nats).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub log_evidence_populations: Vec<f64>,
    /// Posterior samplers: the data residual `|y - A x| / (eta sqrt m)` of the output samples
    /// (about 1 for posterior samples), a mean over samples.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub residual: Option<SampleMean>,
}

impl Diagnostics {
    /// SMC's evidence estimate of the run: the log of the mean of the populations' (unbiased)
    /// estimates of `p(y)`.
    pub fn log_evidence(&self) -> Option<f64> {
        let v = &self.log_evidence_populations;
        if v.is_empty() {
            return None;
        }
        let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        Some(m + (v.iter().map(|l| (l - m).exp()).sum::<f64>() / v.len() as f64).ln())
    }

    /// Adds a batch's output over `count` samples.
    pub fn add(&mut self, o: &Output, count: u64) {
        let batch = Diagnostics {
            samples: count,
            score_evals_per_sample: EvalStats {
                mean: o.score_evals as f64,
                max: o.score_evals,
                min: o.score_evals,
                total: o.score_evals * count,
                samples: count,
            },
            acceptance: o.info.acceptance.map(|a| SampleMean {
                mean: a,
                samples: count,
                sum: a * count as f64,
            }),
            log_evidence_populations: o
                .info
                .smc
                .iter()
                .flatten()
                .map(|t| t.log_evidence)
                .collect(),
            residual: None,
        };
        self.merge(&batch);
    }

    /// Combines two sets of diagnostics (batches of a run, shards of a run).
    pub fn merge(&mut self, o: &Diagnostics) {
        let e = &mut self.score_evals_per_sample;
        let f = &o.score_evals_per_sample;
        if f.samples > 0 {
            e.min = if e.samples == 0 {
                f.min
            } else {
                e.min.min(f.min)
            };
            e.max = e.max.max(f.max);
            e.total += f.total;
            e.samples += f.samples;
            e.mean = e.total as f64 / e.samples as f64;
        }
        if let Some(a) = &o.acceptance {
            self.acceptance
                .get_or_insert_with(Default::default)
                .merge(a);
        }
        self.log_evidence_populations
            .extend_from_slice(&o.log_evidence_populations);
        if let Some(r) = &o.residual {
            self.residual.get_or_insert_with(Default::default).merge(r);
        }
        self.samples += o.samples;
    }

    /// Milder signs of trouble for `summary.json` (docs/algorithms.md, "Divergence and
    /// health"): the final data residual far from 1, MALA acceptance near 0 or 1, and an SMC
    /// population whose ESS fell below a tenth of its `particles` at some stage.
    pub fn warnings(&self, info: &Info, particles: usize) -> Vec<String> {
        let mut w = health::warnings(
            self.residual.map(|r| r.mean),
            self.acceptance.map(|a| a.mean),
        );
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
        if let Some((stage, e)) = collapsed.first() {
            w.push(format!(
                "SMC: the effective sample size fell to {e:.1} of {particles} particles at stage \
                 {stage} ({} of {} populations): the weights rest on few particles; use the \
                 adaptive schedule, more particles or a larger ess_target",
                collapsed.len(),
                info.smc.as_ref().map_or(0, |t| t.len())
            ));
        }
        w
    }
}

/// Progress of a run in sample-steps (a progress bar implements it; the default does nothing).
pub trait Progress: Sync {
    /// Called once, with the run's total of sample-steps.
    fn start(&self, _total: u64) {}
    /// `delta` more sample-steps are done.
    fn advance(&self, _delta: u64) {}
}

/// No progress reporting.
pub struct NoProgress;
impl Progress for NoProgress {}

struct BatchMonitor<'p> {
    progress: &'p dyn Progress,
    started: &'p Once,
    samples: u64,
    batch: u64,
    last: AtomicU64,
}

impl Monitor for BatchMonitor<'_> {
    fn on_step(&self, done: u64, total: u64) {
        self.started
            .call_once(|| self.progress.start(total.saturating_mul(self.samples)));
        let prev = self.last.swap(done, Ordering::Relaxed);
        if done > prev {
            self.progress.advance((done - prev) * self.batch);
        }
    }
}
