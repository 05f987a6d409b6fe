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
//! - [`bench_posterior`]: `diffpost bench posterior`, the exact-posterior suite;
//!   [`bench_images`] its 28x28 problems (`--suite images`).
//! - [`bench_integrator`]: `diffpost bench integrator`, Euler against the exact-likelihood
//!   integrator.
//! - [`bench_score`]: `diffpost bench score`, one exact mixture score evaluation.
//!
//! Every sampler is built from its `[sampler]` table ([`spec`]), the file format's stable names.

pub mod bench_images;
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

use crate::operator::image::ImageOperatorSpec;
use crate::rng::SampleStreams;
use crate::run::{ProblemParts, RunContext};
use crate::sampler::annealed::AnnealedConfig;
use crate::sampler::local::{LocalConfig, WarmStart};
use crate::sampler::settings::{ScoreLevel, Step};
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
    let spec = SamplerSpec::Local(LocalConfig {
        sigma: Some(0.1),
        start_at_x0: true,
        warm_start: WarmStart::Dps,
        warm_steps: Some(dps_steps),
        clip: Some(IMAGE_RANGE),
        annealed: AnnealedConfig {
            stages: 5,
            steps_per_stage,
            step: Step::relative(h_rel),
            score: ScoreLevel {
                score_sigma: Some(0.05),
                l_prior: None,
            },
            final_denoise,
            ..Default::default()
        },
        ..Default::default()
    });
    spec.validate()?;
    Ok(spec)
}

/// The DPS sampler of a `local` spec's DPS warm start (`warm_steps`, `zeta`).
pub fn warm_dps_spec(local: &SamplerSpec) -> Result<SamplerSpec> {
    match local {
        SamplerSpec::Local(l) if l.warm_start == WarmStart::Dps => {
            Ok(SamplerSpec::Dps(l.warm_dps()?.expect("warm_start = dps")))
        }
        _ => Err(Error::param(
            "sampler.warm_start",
            "needs a `local` sampler with warm_start = \"dps\"",
        )),
    }
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
/// of streams: the library's one DPS-then-Algorithm-2 warm start, in one call. The DPS samples
/// as DPS made them (before `clip`) come from `Output::warm_start`, for the studies that report
/// DPS itself.
pub fn dps_then_local(
    parts: ProblemParts,
    spec: &SamplerSpec,
    streams: &mut SampleStreams,
) -> Result<DpsThenLocal> {
    warm_dps_spec(spec)?;
    let t = Instant::now();
    let local = RunContext::new(parts, spec)?.sample_batch(streams, &Silent)?;
    let wall_s = t.elapsed().as_secs_f64();
    let w = local
        .warm_start
        .as_ref()
        .ok_or_else(|| Error::Numerical("a local run without its warm start".into()))?;
    Ok(DpsThenLocal {
        dps: w.unclipped.clone().unwrap_or_else(|| w.x0.clone()),
        dps_evals: w.score_evals,
        dps_wall_s: w.wall_s,
        wall_s,
        local,
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
    use serde_json::json;

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
        let bits = |t: &Tensor| -> Vec<u64> {
            t.flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        };
        let s = spec(serde_json::Value::Object(table)).unwrap();
        // The old two-step code: DPS, then Algorithm 2 from its clipped samples.
        let mut streams = SampleStreams::new(3, 0..5);
        let d = RunContext::new(parts, &warm_dps_spec(&s).unwrap())
            .unwrap()
            .sample_batch(&mut streams, &Silent)
            .unwrap();
        let old = RunContext::new(parts, &s)
            .unwrap()
            .with_warm_start(d.samples.clamp(-0.3, 0.4).unwrap())
            .unwrap()
            .sample_batch(&mut streams, &Silent)
            .unwrap();
        let two = dps_then_local(parts, &s, &mut SampleStreams::new(3, 0..5)).unwrap();
        let one = RunContext::new(parts, &s)
            .unwrap()
            .sample_batch(&mut SampleStreams::new(3, 0..5), &Silent)
            .unwrap();
        assert_eq!(bits(&old.samples), bits(&one.samples));
        assert_eq!(bits(&d.samples), bits(&two.dps));
        assert_eq!(old.score_evals + d.score_evals, one.score_evals);
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
