//! `summary.json` ([`RunSummary`]) and [`merge`]: checks that a set of shard outputs is exactly one
//! run (same config fingerprint and seed, every shard once) and puts it back together in
//! population order.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use sha2::{Digest, Sha256};

use super::shard::Shard;
use super::{Diagnostics, Layout, RunOutput};
use crate::sampler::spec::SamplerSpec;
use crate::sampler::Info;
use crate::{Error, Result};

/// `summary.json`: what a run (or one shard of it) did, with what, and its diagnostics.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    pub sampler: String,
    /// Every `[sampler]` setting used, defaults filled in (a valid `[sampler]` table).
    pub params: serde_json::Value,
    /// The schedule and step sizes.
    pub info: Info,
    /// The prior as configured (kind, path, ...).
    pub prior: serde_json::Value,
    pub operator: String,
    pub eta: f64,
    /// Samples of the whole run (a shard holds `run.sample_range` of them).
    pub n: usize,
    pub d: usize,
    pub seed: u64,
    /// Score evaluations per sample (the largest over populations; mean in `diagnostics`).
    pub score_evals_per_sample: u64,
    pub diagnostics: Diagnostics,
    /// SMC: the estimate of `log p(y)` (nats, all normalising constants included): the log of the
    /// mean over populations of their estimates of `p(y)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_evidence: Option<f64>,
    /// Populations and shard.
    pub run: Layout,
    /// Hash of everything that determines the samples (config, measurement values, n, seed);
    /// shards of one run carry the same.
    pub fingerprint: String,
    /// Wall time of the sampling (summed over shards after a merge).
    pub wall_s: f64,
    /// Non-fatal notes (deprecated key names, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Milder signs of trouble in the run (docs/algorithms.md, "Divergence and health"): data
    /// residual far from 1, MALA acceptance near 0 or 1, SMC ESS collapse. A divergence is an
    /// error, never a warning.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_warnings: Vec<String>,
    /// Anything else the writer adds (image metrics, score-error norms, ...).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// What a run ran on, as [`RunSummary::new`] records it (a loaded config, a Python call).
pub struct RunInputs<'a> {
    pub spec: &'a SamplerSpec,
    /// The prior as configured (`kind`, ...), a JSON object.
    pub prior: serde_json::Value,
    /// The operator's name ([`crate::operator::LinearOperator::name`]).
    pub operator: String,
    pub eta: f64,
    pub n: usize,
    pub d: usize,
    pub seed: u64,
    pub fingerprint: String,
    /// Config notes (deprecated keys, ...).
    pub warnings: Vec<String>,
}

impl RunSummary {
    /// The summary of run `out` (`wall_s` its sampling time); the writer may add fields to
    /// `extra`.
    pub fn new(inputs: RunInputs<'_>, out: &RunOutput, wall_s: f64) -> Self {
        let spec = inputs.spec;
        let mut params = spec.to_table();
        // Defaults resolved at run time (eta_1 of the schedule), so `params` lists every value used.
        if let Some(o) = params.as_object_mut() {
            spec.method().record_resolved(&out.info, o);
        }
        RunSummary {
            sampler: spec.name().into(),
            params,
            info: out.info.clone(),
            prior: inputs.prior,
            operator: inputs.operator,
            eta: inputs.eta,
            n: inputs.n,
            d: inputs.d,
            seed: inputs.seed,
            score_evals_per_sample: out.diagnostics.score_evals_per_sample.max,
            diagnostics: out.diagnostics.clone(),
            log_evidence: out.diagnostics.log_evidence(),
            run: out.layout,
            fingerprint: inputs.fingerprint,
            wall_s,
            warnings: inputs.warnings,
            health_warnings: out.diagnostics.warnings(
                Some(spec),
                &out.info,
                out.layout.population_size,
            ),
            extra: Default::default(),
        }
    }
}

/// Hash of everything that determines a run's samples: the prior's and operator's descriptions,
/// eta, every sampler setting, n, seed and the measurement's values (not the output folder or
/// the batch size).
pub fn fingerprint(
    prior: &serde_json::Value,
    operator: &serde_json::Value,
    eta: f64,
    spec: &SamplerSpec,
    n: usize,
    seed: u64,
    y: &[f64],
) -> String {
    let canon = serde_json::json!({
        "prior": prior,
        "operator": operator,
        "eta": eta,
        "sampler": spec.to_table(),
        "n": n,
        "seed": seed,
    });
    let mut h = Sha256::new();
    h.update(canon.to_string().as_bytes());
    for v in y {
        h.update(v.to_le_bytes());
    }
    h.finalize()
        .iter()
        .take(16)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Puts shard outputs back together. Each part is `(summary, samples, name)`, `name` used in
/// errors (a folder). Refuses parts of different runs (fingerprint, seed, n, sampler, shard
/// count), a missing or repeated shard, and samples whose rows do not match their shard.
pub fn merge(parts: Vec<(RunSummary, Tensor, String)>) -> Result<(RunSummary, Tensor)> {
    let Some((first, _, first_name)) = parts.first() else {
        return Err(Error::param("merge", "no shards given"));
    };
    let count = first.run.shard.count;
    for (s, x, name) in &parts {
        let same = |what: &str, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(Error::param(
                    "merge",
                    format!(
                        "{name} is not a shard of the same run as {first_name}: its {what} differs"
                    ),
                ))
            }
        };
        same("seed", s.seed == first.seed)?;
        same("config fingerprint", s.fingerprint == first.fingerprint)?;
        same("sampler", s.sampler == first.sampler)?;
        same("n", s.n == first.n)?;
        same("shard count", s.run.shard.count == count)?;
        same(
            "population size",
            s.run.population_size == first.run.population_size,
        )?;
        let rows = (s.run.sample_range[1] - s.run.sample_range[0]) as usize;
        let expect = s.run.shard.range(s.run.populations)?;
        if x.dims() != [rows, s.d] || [expect.start, expect.end] != s.run.population_range {
            return Err(Error::shape(
                format!("{name}: samples of shard {}/{count}", s.run.shard.index),
                format!("[{rows}, {}]", s.d),
                x.dims(),
            ));
        }
    }
    let mut seen = vec![None::<&str>; count];
    for (s, _, name) in &parts {
        let k = s.run.shard.index;
        if let Some(prev) = seen[k] {
            return Err(Error::param(
                "merge",
                format!("shard {k}/{count} is given twice ({prev} and {name})"),
            ));
        }
        seen[k] = Some(name);
    }
    let missing: Vec<String> = seen
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_none())
        .map(|(k, _)| format!("{k}/{count}"))
        .collect();
    if !missing.is_empty() {
        return Err(Error::param(
            "merge",
            format!("missing shard(s) {}", missing.join(", ")),
        ));
    }
    let mut parts = parts;
    parts.sort_by_key(|(s, _, _)| s.run.shard.index);
    let mut merged = parts[0].0.clone();
    let mut diagnostics = Diagnostics::default();
    let mut wall = 0.0;
    let mut traces = Vec::new();
    for (s, _, _) in &parts {
        diagnostics.merge(&s.diagnostics);
        wall += s.wall_s;
        traces.extend(s.info.smc.iter().flatten().cloned());
    }
    if !traces.is_empty() {
        merged.info.smc = Some(traces);
    }
    merged.info.acceptance = diagnostics.acceptance.map(|a| a.mean);
    merged.score_evals_per_sample = diagnostics.score_evals_per_sample.max;
    merged.log_evidence = diagnostics.log_evidence();
    // The method's own warnings need the method: the shards' `params` name it in full.
    let spec = merged.params.as_object().and_then(|m| {
        let mut m = m.clone();
        m.insert("kind".into(), serde_json::json!(merged.sampler));
        SamplerSpec::from_map(m).ok()
    });
    merged.health_warnings =
        diagnostics.warnings(spec.as_ref(), &merged.info, merged.run.population_size);
    merged.diagnostics = diagnostics;
    merged.wall_s = wall;
    merged.run.shard = Shard::WHOLE;
    merged.run.population_range = [0, merged.run.populations];
    merged.run.sample_range = [0, merged.n as u64];
    merged
        .extra
        .insert("merged_from".into(), serde_json::json!(parts.len()));
    let x = Tensor::cat(
        &parts.iter().map(|(_, x, _)| x.clone()).collect::<Vec<_>>(),
        0,
    )?;
    Ok((merged, x))
}
