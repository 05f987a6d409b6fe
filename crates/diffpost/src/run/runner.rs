//! The runner: a run as independent populations of samples, in parallel batches of whole
//! populations, optionally one shard of them; the diagnostics aggregated over all of them.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{Diagnostics, RunContext, SampleMean, Shard};
use crate::rng::SampleStreams;
use crate::sampler::spec::SamplerSpec;
use crate::sampler::{smc, Info, Monitor, Output, Weighted};
use crate::{Error, Result};

impl RunContext<'_> {
    /// Runs `plan`: its shard of the populations, in parallel batches of whole populations.
    pub fn run(&self, plan: &RunPlan, progress: &dyn Progress) -> Result<RunOutput> {
        let problem = self.problem();
        let layout = plan.layout(self.spec())?;
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
                SampleStreams::BYTES_PER_STREAM as u128 + 4 * 8 * problem.prior.dim() as u128,
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
                problem.check_cancel()?;
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
        if self.spec().method().conditional() {
            let r = problem.normalized_residuals(&samples)?;
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
