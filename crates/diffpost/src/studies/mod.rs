//! Studies: the experiments behind the subcommands that are more than one run. Each takes a typed
//! options struct, writes its files, returns a typed result and passes the lines the binary
//! prints, as they come, to a `log` callback (printing is the caller's).
//!
//! - [`demo`]: `diffpost demo`, every sampler against the exact posterior of a small
//!   compressed-sensing problem.
//! - [`demo_images`]: `diffpost demo --images`, four image tasks with DPS and Algorithm 2
//!   warm-started from DPS.
//! - [`modes`]: `diffpost modes`, the posterior's modes on the MNIST prior (SMC, Algorithm 2, DPS).
//! - [`tradeoff`]: `diffpost tradeoff`, Algorithm 2's annealing time against fidelity and realism.
//! - [`report`]: `diffpost report`, a trained prior on its own (samples, held-out loss).
//! - [`bench_posterior`]: `diffpost bench posterior`, the exact-posterior suite.
//! - [`bench_integrator`]: `diffpost bench integrator`, Euler against the exact-likelihood
//!   integrator.
//! - [`bench_score`]: `diffpost bench score`, one exact mixture score evaluation.
//!
//! Every sampler is built from its `[sampler]` table ([`spec`]), the file format's stable names.

pub mod bench_integrator;
pub mod bench_posterior;
pub mod bench_score;
pub mod demo;
pub mod demo_images;
pub mod modes;
pub mod report;
pub mod tradeoff;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Tensor;
use serde_json::json;

use crate::operator::image::ImageOperatorSpec;
use crate::rng::SampleStreams;
use crate::run::{ProblemParts, RunContext};
use crate::sampler::spec::SamplerSpec;
use crate::sampler::{Output, Silent};
use crate::{Error, Result};

/// A sampler from its `[sampler]` table as a JSON object (`{"kind": "local", "sigma": 0.1, ...}`),
/// with the names of the config reference.
pub fn spec(table: serde_json::Value) -> Result<SamplerSpec> {
    match table {
        serde_json::Value::Object(m) => SamplerSpec::from_map(m),
        _ => Err(Error::param("sampler", "must be a table")),
    }
}

/// An image operator from its `[operator]` table in TOML.
pub fn image_operator(toml_text: &str) -> Result<ImageOperatorSpec> {
    toml::from_str(toml_text).map_err(|e| Error::param("operator", e.to_string()))
}

/// Finds a shipped file (model, data): as given, else relative to the repository this crate was
/// built from.
pub fn shipped(p: &Path) -> PathBuf {
    if p.exists() || p.is_absolute() {
        return p.to_path_buf();
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(p);
    if repo.exists() {
        repo
    } else {
        p.to_path_buf()
    }
}

/// The data range of the image priors: pixels in [-1, 1].
pub const IMAGE_RANGE: [f64; 2] = [-1.0, 1.0];

/// Algorithm 2 as the image studies run it (`demo --images`, `modes`, `tradeoff`): the warm start
/// `x0` is each sample's own DPS output (`dps_steps` steps) clipped to [`IMAGE_RANGE`], taken as
/// a measurement with `sigma = 0.1`; chains start at `x0`; 5 stages of `steps_per_stage` steps of
/// size `h_rel` relative to each stage's stiffness; the prior score at 0.05 (the network's usable
/// level); `final_denoise`: `D(x, 0.05)` after the last stage.
pub fn image_local_spec(
    dps_steps: usize,
    steps_per_stage: usize,
    h_rel: f64,
    final_denoise: bool,
) -> Result<SamplerSpec> {
    spec(json!({
        "kind": "local",
        "sigma": 0.1,
        "start_at_x0": true,
        "warm_start": "dps",
        "warm_steps": dps_steps,
        "clip": IMAGE_RANGE,
        "stages": 5,
        "steps_per_stage": steps_per_stage,
        "h_rel": h_rel,
        "score_sigma": 0.05,
        "final_denoise": final_denoise,
    }))
}

/// The DPS sampler of a `local` spec's DPS warm start (`warm_steps`, `zeta`).
pub fn warm_dps_spec(local: &SamplerSpec) -> Result<SamplerSpec> {
    let t = local.to_table();
    if t["kind"] != "local" || t["warm_start"] != "dps" {
        return Err(Error::param(
            "sampler.warm_start",
            "needs a `local` sampler with warm_start = \"dps\"",
        ));
    }
    let mut dps = json!({ "kind": "dps" });
    for (from, to) in [("warm_steps", "steps"), ("zeta", "zeta")] {
        if let Some(v) = t.get(from).filter(|v| !v.is_null()) {
            dps[to] = v.clone();
        }
    }
    spec(dps)
}

/// A batch of Algorithm 2 warm-started from DPS, with the DPS samples as DPS made them.
pub struct DpsThenLocal {
    /// The DPS samples `[B, d]` before the spec's `clip` (DPS's own result).
    pub dps: Tensor,
    /// DPS's evaluations per sample and wall time.
    pub dps_evals: u64,
    pub dps_wall_s: f64,
    /// Algorithm 2's output (its `score_evals` include DPS's; `warm_start.x0` is the clipped
    /// DPS samples it started from).
    pub local: Output,
    /// Wall time of both.
    pub wall_s: f64,
}

/// Runs `spec` (a `local` sampler with `warm_start = "dps"`, see [`image_local_spec`]) on one batch
/// of streams and keeps the unclipped DPS samples for the studies that report DPS itself.
///
/// Each sample's DPS run and then its Algorithm 2 chain draw from the sample's own stream, in
/// that order, exactly as `sample_batch` of the spec does in one call (the library test
/// `dps_then_local_is_the_one_call_warm_start` checks that the samples are bit-identical). It
/// takes two calls, DPS and then Algorithm 2 from DPS's output with the spec's `clip`, because
/// the one call reports its warm start after `clip` (`Output::warm_start.x0`) while the studies
/// report the DPS samples before it.
pub fn dps_then_local(
    parts: ProblemParts,
    spec: &SamplerSpec,
    streams: &mut SampleStreams,
) -> Result<DpsThenLocal> {
    let t = Instant::now();
    let d = RunContext::new(parts, &warm_dps_spec(spec)?)?.sample_batch(streams, &Silent)?;
    let dps_wall_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut local = RunContext::new(parts, spec)?
        .with_warm_start(d.samples.clone())?
        .sample_batch(streams, &Silent)?;
    // As the one call reports them: Algorithm 2's evaluations include its warm start's.
    local.score_evals += d.score_evals;
    if let Some(w) = local.warm_start.as_mut() {
        w.score_evals = d.score_evals;
        w.wall_s += dps_wall_s;
    }
    Ok(DpsThenLocal {
        dps: d.samples,
        dps_evals: d.score_evals,
        dps_wall_s,
        local,
        wall_s: t.elapsed().as_secs_f64() + dps_wall_s,
    })
}

/// Rows of a `[n, d]` tensor as f64.
pub(crate) fn rows(t: &Tensor) -> Result<Vec<Vec<f64>>> {
    Ok(t.to_dtype(candle_core::DType::F64)?.to_vec2()?)
}

/// The mean of rows.
pub(crate) fn mean_rows(x: &[Vec<f64>]) -> Vec<f64> {
    let d = x[0].len();
    (0..d)
        .map(|j| x.iter().map(|r| r[j]).sum::<f64>() / x.len() as f64)
        .collect()
}

/// Writes `text` to `dir/name` (creating `dir`).
pub(crate) fn write_text(dir: &Path, name: &str, text: &str) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    crate::io::write_bytes(&dir.join(name), text.as_bytes())
}

/// Writes `value` as pretty JSON to `dir/name` (creating `dir`).
pub(crate) fn write_json(dir: &Path, name: &str, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Numerical(e.to_string()))?;
    write_text(dir, name, &text)
}

/// Passes `text` to `log` as one line (without its final newline).
pub(crate) fn log_text(log: &mut dyn FnMut(&str), text: &str) {
    log(text.strip_suffix('\n').unwrap_or(text));
}

/// Registers DejaVu Sans as the plots' "sans-serif" where the system has it; false without one
/// (plots are then drawn without labels).
pub(crate) fn register_font() -> bool {
    let font = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
    ]
    .iter()
    .find_map(|p| std::fs::read(p).ok());
    match font {
        Some(bytes) => plotters::style::register_font(
            "sans-serif",
            plotters::style::FontStyle::Normal,
            Box::leak(bytes.into_boxed_slice()),
        )
        .is_ok(),
        None => false,
    }
}

/// A plot's drawing error as the library's error, naming the file.
pub(crate) fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::File {
        path: path.to_path_buf(),
        reason: format!("plot: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::Dense;
    use crate::problem::random_gmm_instance;

    /// The studies' two calls (DPS, then Algorithm 2 from its output) give the samples of the one
    /// call of the spec with its DPS warm start, bit for bit, and its clipped warm start.
    #[test]
    fn dps_then_local_is_the_one_call_warm_start() {
        let inst = random_gmm_instance(6, 3, 2, 0.1, 5).unwrap();
        let op = Dense::new(inst.a.clone()).unwrap();
        let y = Tensor::from_vec(inst.y.as_slice().to_vec(), 3, &candle_core::Device::Cpu).unwrap();
        let parts = ProblemParts::mixture(&inst.prior, &op, &y, inst.eta);
        // A tight clip so that it cuts DPS samples.
        let mut table = image_local_spec(7, 3, 0.2, true).unwrap().to_table();
        table["clip"] = json!([-0.3, 0.4]);
        table["score_sigma"] = serde_json::Value::Null;
        let table = table
            .as_object()
            .unwrap()
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let s = spec(serde_json::Value::Object(table)).unwrap();
        let two = dps_then_local(parts, &s, &mut SampleStreams::new(3, 0..5)).unwrap();
        let one = RunContext::new(parts, &s)
            .unwrap()
            .sample_batch(&mut SampleStreams::new(3, 0..5), &Silent)
            .unwrap();
        let bits = |t: &Tensor| -> Vec<u64> {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        assert_eq!(bits(&two.local.samples), bits(&one.samples));
        assert_eq!(two.local.score_evals, one.score_evals);
        let warm = one.warm_start.as_ref().unwrap();
        assert_eq!(bits(&two.dps.clamp(-0.3, 0.4).unwrap()), bits(&warm.x0));
        assert_eq!(two.dps_evals, warm.score_evals);
        let outside = two
            .dps
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
            .iter()
            .filter(|v| !(-0.3..=0.4).contains(*v))
            .count();
        assert!(outside > 0, "the clip cuts some DPS values");
    }

    #[test]
    fn warm_dps_spec_takes_the_warm_start_settings() {
        let s = image_local_spec(12, 3, 0.2, false).unwrap();
        let d = warm_dps_spec(&s).unwrap().to_table();
        assert_eq!(d["kind"], "dps");
        assert_eq!(d["steps"], 12);
        assert_eq!(d["zeta"], 1.0);
        assert!(warm_dps_spec(&spec(json!({"kind": "dps"})).unwrap()).is_err());
    }
}
