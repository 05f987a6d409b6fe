//! Diagnostics aggregated over a run's batches and shards: evaluations per sample, MALA's
//! acceptance, SMC's evidence, the data residual, and the health warnings drawn from them.

use serde::{Deserialize, Serialize};

use crate::sampler::spec::SamplerSpec;
use crate::sampler::{health, Info, Output};

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
    /// health"): the final data residual far from 1, MALA acceptance near 0 or 1, and the
    /// method's own ([`crate::sampler::method::Method::warnings`]: an SMC population whose ESS
    /// fell below a tenth of its `particles` at some stage).
    pub fn warnings(
        &self,
        spec: Option<&SamplerSpec>,
        info: &Info,
        particles: usize,
    ) -> Vec<String> {
        let mut w = health::warnings(
            self.residual.map(|r| r.mean),
            self.acceptance.map(|a| a.mean),
        );
        if let Some(spec) = spec {
            w.extend(spec.method().warnings(info, particles));
        }
        w
    }
}
