//! `summary.json` ([`RunSummary`]) and [`merge`]: checks that a set of shard outputs is exactly one
//! run (same config fingerprint and seed, every shard once) and puts it back together in
//! population order; [`merge_parts`] also joins the weighted particles of SMC shards
//! ([`ShardParts::read`] reads a shard's folder, [`write_run`] writes a run's).

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use sha2::{Digest, Sha256};

use super::shard::Shard;
use super::{Diagnostics, Layout, RunOutput};
use crate::commit::{Replace, Staging};
use crate::sampler::spec::SamplerSpec;
use crate::sampler::{Info, Weighted};
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

/// What a run folder may hold: `samples.npy`, `summary.json`, for weighted samplers (SMC)
/// `particles.npy` and `weights.npy`, for image runs `metrics.json` and PNG grids. A previous
/// run's outputs are replaced as a whole; anything else in the folder makes a run refuse it.
pub const RUN_OUTPUTS: Replace<'static> = Replace::Outputs {
    names: &[
        "samples.npy",
        "particles.npy",
        "weights.npy",
        "summary.json",
        "metrics.json",
    ],
    suffixes: &[".png"],
};

/// Writes a run's `samples.npy`, `summary.json` and, for weighted samplers (SMC),
/// `particles.npy` and `weights.npy` into the staging folder of its run folder.
pub fn write_run(
    dir: &Staging,
    samples: &Tensor,
    weighted: Option<&Weighted>,
    summary: &RunSummary,
) -> Result<()> {
    dir.write_npy("samples.npy", samples)?;
    if let Some(w) = weighted {
        dir.write_npy("particles.npy", &w.particles)?;
        dir.write_npy("weights.npy", &w.weights)?;
    }
    let text =
        serde_json::to_string_pretty(summary).map_err(|e| Error::Numerical(e.to_string()))?;
    dir.write_bytes("summary.json", text.as_bytes())
}

/// One shard of a run as `diffpost sample --shard K/N` writes it into a folder: `summary.json`,
/// `samples.npy` and, for weighted samplers (SMC), `particles.npy` and `weights.npy`.
pub struct ShardParts {
    pub summary: RunSummary,
    pub samples: Tensor,
    pub weighted: Option<Weighted>,
    /// Names the shard in errors (its folder).
    pub name: String,
}

/// Refuses an output folder that is one of the shard folders being merged (the merge would
/// replace a shard it reads). Paths are compared as the file system resolves them.
pub fn check_merge_target(dirs: &[PathBuf], out: &Path) -> Result<()> {
    let Ok(out_c) = std::fs::canonicalize(out) else {
        return Ok(()); // a new folder is none of the inputs
    };
    for d in dirs {
        if std::fs::canonicalize(d).is_ok_and(|c| c == out_c) {
            return Err(Error::param(
                "merge --out",
                format!(
                    "{} is one of the shards being merged: write the merged run to another folder",
                    out.display()
                ),
            ));
        }
    }
    Ok(())
}

impl ShardParts {
    /// Reads the shard written into `dir`.
    pub fn read(dir: &Path) -> Result<Self> {
        let sp = dir.join("summary.json");
        let ferr = |reason: String| Error::File {
            path: sp.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&sp)
            .map_err(|e| ferr(format!("cannot read shard summary: {e}")))?;
        let summary: RunSummary = serde_json::from_str(&text)
            .map_err(|e| ferr(format!("not a diffpost summary: {e}")))?;
        let samples = crate::io::read_array(&dir.join("samples.npy"), "shard samples")?;
        let weighted = if dir.join("weights.npy").exists() {
            Some(Weighted {
                particles: crate::io::read_array(&dir.join("particles.npy"), "shard particles")?,
                weights: crate::io::read_array(&dir.join("weights.npy"), "shard weights")?,
            })
        } else {
            None
        };
        Ok(Self {
            summary,
            samples,
            weighted,
            name: dir.display().to_string(),
        })
    }
}

/// A run put back together from its shards.
pub struct Merged {
    pub summary: RunSummary,
    pub samples: Tensor,
    /// The weighted particles of every shard, in shard order (weighted samplers).
    pub weighted: Option<Weighted>,
}

/// [`merge`] with the weighted particles: every shard has them (joined in shard order, each
/// population's weights as they are: they are normalised within their population) or none has.
pub fn merge_parts(parts: Vec<ShardParts>) -> Result<Merged> {
    let mut weighted = Vec::with_capacity(parts.len());
    let mut plain = Vec::with_capacity(parts.len());
    for p in parts {
        if let Some(w) = &p.weighted {
            if w.particles.dims().first() != w.weights.dims().first() || w.weights.rank() != 1 {
                return Err(Error::shape(
                    format!("{}: weights of the particles", p.name),
                    format!("[{}]", w.particles.dims().first().copied().unwrap_or(0)),
                    w.weights.dims(),
                ));
            }
        }
        weighted.push((p.summary.run.shard.index, p.weighted));
        plain.push((p.summary, p.samples, p.name));
    }
    let (summary, samples) = merge(plain)?;
    let weighted = match weighted.iter().filter(|w| w.1.is_some()).count() {
        0 => None,
        k if k == weighted.len() => {
            weighted.sort_by_key(|w| w.0);
            let (p, w): (Vec<Tensor>, Vec<Tensor>) = weighted
                .into_iter()
                .filter_map(|(_, w)| w.map(|w| (w.particles, w.weights)))
                .unzip();
            Some(Weighted {
                particles: Tensor::cat(&p, 0)?,
                weights: Tensor::cat(&w, 0)?,
            })
        }
        _ => {
            return Err(Error::param(
                "merge",
                "some shards have weights.npy and others not: not shards of one run",
            ))
        }
    };
    Ok(Merged {
        summary,
        samples,
        weighted,
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn merge_refuses_to_write_into_one_of_its_shards() {
        let dir =
            std::env::temp_dir().join(format!("diffpost-merge-target-{}", std::process::id()));
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let dirs = vec![a.clone(), b.clone()];
        assert!(check_merge_target(&dirs, &b).is_err());
        assert!(check_merge_target(&dirs, &dir.join("b/../b")).is_err());
        assert!(check_merge_target(&dirs, &dir.join("merged")).is_ok());
        assert!(check_merge_target(&dirs, &dir).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    use candle_core::Device;

    use super::*;
    use crate::run::RunPlan;

    /// Shard `k` of 3 of a run of 3 populations of 2 particles (d = 2): samples `10 k + i`,
    /// with weighted particles `-(10 k + i)` and weights `w` when `weighted`.
    fn shard(k: usize, weighted: bool) -> ShardParts {
        let spec = SamplerSpec::from_map(
            serde_json::json!({"kind": "smc", "particles": 2})
                .as_object()
                .unwrap()
                .clone(),
        )
        .unwrap();
        let plan = RunPlan {
            shard: Shard::new(k, 3).unwrap(),
            ..RunPlan::new(6, 1)
        };
        let layout = plan.layout(&spec).unwrap();
        let v: Vec<f64> = (0..4).map(|i| (10 * k + i) as f64).collect();
        let samples = Tensor::from_vec(v.clone(), (2, 2), &Device::Cpu).unwrap();
        let summary = RunSummary {
            sampler: "smc".into(),
            params: spec.to_table(),
            info: Info::default(),
            prior: serde_json::Value::Null,
            operator: "dense".into(),
            eta: 0.1,
            n: 6,
            d: 2,
            seed: 1,
            score_evals_per_sample: 0,
            diagnostics: Diagnostics::default(),
            log_evidence: None,
            run: layout,
            fingerprint: "f".into(),
            wall_s: 1.0,
            warnings: vec![],
            health_warnings: vec![],
            extra: Default::default(),
        };
        let weighted = weighted.then(|| Weighted {
            particles: (samples.clone() * -1.0).unwrap(),
            weights: Tensor::new(&[0.25 + k as f64, 0.75], &Device::Cpu).unwrap(),
        });
        ShardParts {
            summary,
            samples,
            weighted,
            name: format!("shard{k}"),
        }
    }

    fn values(t: &Tensor) -> Vec<f64> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn weighted_shards_merge_in_shard_order() {
        let m = merge_parts(vec![shard(2, true), shard(0, true), shard(1, true)]).unwrap();
        let rows = |f: fn(f64) -> f64| -> Vec<f64> {
            [0, 1, 2]
                .iter()
                .flat_map(|k| (0..4).map(move |i| f((10 * k + i) as f64)))
                .collect()
        };
        assert_eq!(values(&m.samples), rows(|v| v));
        let w = m.weighted.expect("weighted");
        assert_eq!(values(&w.particles), rows(|v| -v));
        assert_eq!(values(&w.weights), [0.25, 0.75, 1.25, 0.75, 2.25, 0.75]);
        assert_eq!(m.summary.run.shard, Shard::WHOLE);
        assert_eq!(m.summary.run.sample_range, [0, 6]);
    }

    #[test]
    fn unweighted_shards_merge_without_weights() {
        let m = merge_parts(vec![shard(1, false), shard(0, false), shard(2, false)]).unwrap();
        assert!(m.weighted.is_none());
        assert_eq!(m.samples.dims(), [6, 2]);
    }

    #[test]
    fn weights_are_all_or_none_and_the_shards_checked_first() {
        let err = |p: Vec<ShardParts>| merge_parts(p).err().expect("refused").to_string();
        let e = err(vec![shard(0, true), shard(1, false), shard(2, true)]);
        assert!(
            e.contains("some shards have weights.npy and others not"),
            "{e}"
        );
        // A missing shard is named before the weights are looked at.
        let e = err(vec![shard(0, true), shard(2, false)]);
        assert!(e.contains("missing shard(s) 1/3"), "{e}");
        // Weights that do not match their particles.
        let mut bad = shard(1, true);
        if let Some(w) = bad.weighted.as_mut() {
            w.weights = w.weights.narrow(0, 0, 1).unwrap();
        }
        let e = err(vec![shard(0, true), bad, shard(2, true)]);
        assert!(e.contains("shard1: weights of the particles"), "{e}");
        assert!(err(vec![]).contains("no shards given"));
    }
}
