//! The typed problem config (`problem.toml`): `[prior]`, `[operator]`, `[measurement]`,
//! `[sampler]`, `[run]`. [`ProblemConfig::read`] parses and validates the whole file (unknown keys,
//! kinds and out-of-range values are errors naming the file and field) before anything heavy is
//! loaded; [`ProblemConfig::load`] then reads the arrays and networks into a [`LoadedProblem`],
//! whose [`LoadedProblem::parts`] is what a [`crate::run::RunContext`] runs on.
//!
//! Relative paths resolve against the config file's folder.

mod prior;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

pub use prior::{LoadedPrior, PerturbSpec, PriorSpec};

use crate::operator::image::ImageOperatorSpec;
use crate::operator::{Dense, Identity, LinearOperator, Mask};
use crate::run::summary::{RunInputs, RunSummary};
use crate::run::{ProblemParts, RunOutput};
use crate::sampler::local::WarmStart;
use crate::sampler::spec::SamplerSpec;
use crate::sampler::table::deprecated_keys;
use crate::{Error, Result};

/// `[operator]` for vectors: a dense matrix, a 0/1 mask, the identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum VectorOperatorSpec {
    /// `[m, d]` `.npy`.
    Matrix {
        path: PathBuf,
    },
    /// 0/1 `[d]` `.npy`; `y` holds the observed coordinates only.
    Mask {
        path: PathBuf,
    },
    Identity {},
}

/// `[operator]`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum OperatorSpec {
    Vector(VectorOperatorSpec),
    /// Image operators (need an image prior).
    Image(ImageOperatorSpec),
}

const OPERATOR_KINDS: &str = "matrix | mask | identity | inpaint | box | superres | blur | mri";

impl OperatorSpec {
    fn from_value(v: toml::Value) -> std::result::Result<Self, String> {
        let kind = v
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("")
            .to_string();
        match kind.as_str() {
            "matrix" | "mask" | "identity" => v
                .try_into()
                .map(OperatorSpec::Vector)
                .map_err(|e| e.to_string()),
            "inpaint" | "box" | "superres" | "blur" | "mri" => v
                .try_into()
                .map(OperatorSpec::Image)
                .map_err(|e| e.to_string()),
            other => Err(format!(
                "unknown operator kind `{other}` (expected {OPERATOR_KINDS})"
            )),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            OperatorSpec::Vector(VectorOperatorSpec::Matrix { .. }) => "matrix",
            OperatorSpec::Vector(VectorOperatorSpec::Mask { .. }) => "mask",
            OperatorSpec::Vector(VectorOperatorSpec::Identity {}) => "identity",
            OperatorSpec::Image(_) => "image",
        }
    }
}

/// `[measurement]`: `y` from a file, or simulated from a ground truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasurementSpec {
    /// `[m]` `.npy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub y: Option<PathBuf>,
    /// Ground truth to simulate `y = A x_true + eta xi` from: images `.npy` `[N,H,W]`/`[N,C,H,W]`
    /// (or one PNG) for image priors, `[d]`/`[N,d]` in x units otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truth: Option<PathBuf>,
    /// Row of `truth` (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// Seed of the simulated noise (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_seed: Option<u64>,
    /// Noise standard deviation per measurement, in the units of x.
    pub eta: f64,
}

/// `[run]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    #[serde(default = "default_n")]
    pub n: usize,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_out")]
    pub out: PathBuf,
    /// Samples per batch (results do not depend on it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<usize>,
}

fn default_n() -> usize {
    2000
}
fn default_out() -> PathBuf {
    PathBuf::from("out")
}

impl Default for RunSection {
    fn default() -> Self {
        Self {
            n: default_n(),
            seed: 0,
            out: default_out(),
            batch: None,
        }
    }
}

/// A parsed and validated `problem.toml` (nothing loaded yet).
#[derive(Debug, Clone)]
pub struct ProblemConfig {
    /// The file it came from.
    pub file: PathBuf,
    /// Its folder (relative paths resolve here).
    pub dir: PathBuf,
    pub prior: PriorSpec,
    pub operator: OperatorSpec,
    pub measurement: MeasurementSpec,
    pub sampler: SamplerSpec,
    pub run: RunSection,
    /// Deprecated key names used, as messages.
    pub warnings: Vec<String>,
}

pub use crate::io::resolve;

impl ProblemConfig {
    /// Reads and validates `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::File {
            path: path.to_path_buf(),
            reason: format!("cannot read config: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        Self::parse_with(text, path, true)
    }

    /// Reads and validates `path` as a *model*: `[prior]`, `[operator]`, `[measurement] eta` and
    /// `[sampler]`, for tools that simulate their own measurements (`diffpost calibrate`).
    /// `[measurement]` may then hold `eta` alone; a `y` or `truth` it names is not read (see
    /// [`Self::load_model`]).
    pub fn read_model(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::File {
            path: path.to_path_buf(),
            reason: format!("cannot read config: {e}"),
        })?;
        Self::parse_model(&text, path)
    }

    /// [`Self::read_model`] from text.
    pub fn parse_model(text: &str, path: &Path) -> Result<Self> {
        Self::parse_with(text, path, false)
    }

    fn parse_with(text: &str, path: &Path, need_measurement: bool) -> Result<Self> {
        let err = |field: &str, reason: String| Error::Config {
            file: path.to_path_buf(),
            field: field.into(),
            reason,
        };
        let mut table: toml::Table = toml::from_str(text).map_err(|e| Error::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        for k in table.keys() {
            if !["prior", "operator", "measurement", "sampler", "run"].contains(&k.as_str()) {
                return Err(err(
                    k,
                    "unknown section (expected [prior], [operator], [measurement], [sampler], [run])"
                        .into(),
                ));
            }
        }
        let mut take = |name: &str| table.remove(name);
        let prior_v = take("prior").ok_or_else(|| err("prior", "missing section".into()))?;
        let op_v = take("operator").ok_or_else(|| err("operator", "missing section".into()))?;
        let meas_v =
            take("measurement").ok_or_else(|| err("measurement", "missing section".into()))?;
        let sampler_v = take("sampler").unwrap_or(toml::Value::Table(Default::default()));
        let run_v = take("run");

        let prior: PriorSpec = prior_v
            .try_into()
            .map_err(|e: toml::de::Error| err("prior", e.message().to_string()))?;
        prior.validate().map_err(|e| err("prior", e.to_string()))?;
        let operator = OperatorSpec::from_value(op_v).map_err(|e| err("operator", e))?;
        let measurement: MeasurementSpec = meas_v
            .try_into()
            .map_err(|e: toml::de::Error| err("measurement", e.message().to_string()))?;
        let eta = measurement.eta;
        if !(eta > 0.0) || !eta.is_finite() {
            return Err(err(
                "measurement.eta",
                format!("eta must be finite and > 0 (in the units of x), got {eta}"),
            ));
        }
        match (&measurement.y, &measurement.truth) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "measurement",
                    "give either `y` or `truth` (to simulate y), not both".into(),
                ))
            }
            (None, None) if need_measurement => {
                return Err(err(
                    "measurement",
                    "`y` (a [m] .npy) or `truth` (to simulate y) is required".into(),
                ))
            }
            (Some(_), None) if measurement.index.is_some() || measurement.noise_seed.is_some() => {
                return Err(err(
                    "measurement",
                    "`index` and `noise_seed` apply only with `truth`".into(),
                ))
            }
            _ => {}
        }
        let sampler_table = match sampler_v {
            toml::Value::Table(t) => t,
            _ => return Err(err("sampler", "must be a table".into())),
        };
        let kind = sampler_table
            .get("kind")
            .and_then(|v| v.as_str())
            .unwrap_or("annealed")
            .to_string();
        let warnings: Vec<String> =
            deprecated_keys(&kind, sampler_table.keys().map(|k| k.as_str()))
                .into_iter()
                .map(|(old, new)| {
                    format!("[sampler] `{old}` is deprecated: use `{new}` (same meaning)")
                })
                .collect();
        let mut sampler = SamplerSpec::from_table(&sampler_table).map_err(|e| match e {
            Error::InvalidParam { field, reason } => err(&field, reason),
            other => err("sampler", other.to_string()),
        })?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(|p| p.to_path_buf())
            .unwrap_or_else(|| PathBuf::from("."));
        if let SamplerSpec::Local(l) = &mut sampler {
            if let WarmStart::File(p) = &mut l.warm_start {
                *p = resolve(&dir, p);
            }
        }
        let run: RunSection = match run_v {
            None => RunSection::default(),
            Some(v) => v
                .try_into()
                .map_err(|e: toml::de::Error| err("run", e.message().to_string()))?,
        };
        if run.n == 0 {
            return Err(err("run.n", "n must be >= 1".into()));
        }
        if run.batch == Some(0) {
            return Err(err("run.batch", "batch must be >= 1".into()));
        }
        let p = sampler.population_size(run.n);
        if !run.n.is_multiple_of(p) {
            return Err(err(
                "run.n",
                format!("n must be a multiple of the population size {p}"),
            ));
        }
        Ok(Self {
            file: path.to_path_buf(),
            dir,
            prior,
            operator,
            measurement,
            sampler,
            run,
            warnings,
        })
    }

    /// The prior and operator as configured (`{"prior": ..., "operator": ...}`), for records and
    /// fingerprints (paths as written, relative to the config).
    pub fn model_description(&self) -> serde_json::Value {
        serde_json::json!({
            "prior": serde_json::to_value(&self.prior).unwrap_or_default(),
            "operator": serde_json::to_value(&self.operator).unwrap_or_default(),
        })
    }

    pub fn resolve(&self, p: &Path) -> PathBuf {
        resolve(&self.dir, p)
    }

    fn err(&self, field: &str, e: impl std::fmt::Display) -> Error {
        Error::Config {
            file: self.file.clone(),
            field: field.into(),
            reason: e.to_string(),
        }
    }

    /// Loads the prior (networks on `device`), the operator and the measurement.
    pub fn load(&self, device: &Device) -> Result<LoadedProblem> {
        let LoadedModel {
            d,
            prior,
            op,
            eta,
            mut conversions,
        } = self.load_model(device)?;
        let ms = &self.measurement;
        let (y, truth) = match (&ms.y, &ms.truth) {
            (Some(yp), _) => {
                let y_path = self.resolve(yp);
                let y = crate::io::read_array(&y_path, "measurement y")
                    .map_err(|e| self.err("measurement.y", e))?;
                if y.dims() != [op.out_dim()] {
                    return Err(self.err(
                        "measurement.y",
                        format!(
                            "{} has shape {:?}, expected [{}] (m of operator `{}`)",
                            y_path.display(),
                            y.dims(),
                            op.out_dim(),
                            op.name()
                        ),
                    ));
                }
                (y, None)
            }
            (None, Some(tp)) => {
                let tp = self.resolve(tp);
                let x = read_truth(&tp, prior.image_shape, d, ms.index.unwrap_or(0))
                    .map_err(|e| self.err("measurement.truth", e))?;
                let y = simulate(op.as_ref(), &x, eta, ms.noise_seed.unwrap_or(0))?;
                (Tensor::from_vec(y, op.out_dim(), &Device::Cpu)?, Some(x))
            }
            (None, None) => {
                return Err(self.err(
                    "measurement",
                    "`y` (a [m] .npy) or `truth` (to simulate y) is required",
                ))
            }
        };
        let y = y.to_dtype(candle_core::DType::F64)?;
        let y_vec: Vec<f64> = y.to_vec1()?;
        if y_vec.iter().any(|v| !v.is_finite()) {
            return Err(self.err(
                "measurement.y",
                "non-finite values in measurement y".to_string(),
            ));
        }
        Ok(LoadedProblem {
            config: self.clone(),
            d,
            prior,
            op,
            y,
            y_vec,
            truth,
            eta,
            conversions: {
                conversions.extend(crate::io::take_conversion_notes());
                conversions
            },
        })
    }

    /// Loads the prior (networks on `device`) and the operator, not the measurement: what a
    /// tool that simulates its own measurements needs (`diffpost calibrate`).
    pub fn load_model(&self, device: &Device) -> Result<LoadedModel> {
        let _ = crate::io::take_conversion_notes();
        let prior = self
            .prior
            .load(&self.dir, device)
            .map_err(|e| self.err(self.prior.error_field(&e), e))?;
        let d = prior.denoiser.dim();
        let op: Box<dyn LinearOperator> = match &self.operator {
            OperatorSpec::Vector(VectorOperatorSpec::Identity {}) => Box::new(Identity::new(d)),
            OperatorSpec::Vector(VectorOperatorSpec::Matrix { path }) => Box::new(
                Dense::from_npy(self.resolve(path)).map_err(|e| self.err("operator.path", e))?,
            ),
            OperatorSpec::Vector(VectorOperatorSpec::Mask { path }) => Box::new(
                Mask::from_npy(self.resolve(path)).map_err(|e| self.err("operator.path", e))?,
            ),
            OperatorSpec::Image(spec) => {
                let shape = prior.image_shape.ok_or_else(|| {
                    let kind = serde_json::to_value(spec)
                        .ok()
                        .and_then(|v| v.get("kind").and_then(|k| k.as_str().map(String::from)))
                        .unwrap_or_default();
                    self.err(
                        "operator",
                        format!("image operator `{kind}` needs an image prior (kind = \"unet\" | \"guided-diffusion\" | \"diffusers-unet\")"),
                    )
                })?;
                spec.build(shape).map_err(|e| self.err("operator", e))?
            }
        };
        if op.in_dim() != d {
            return Err(self.err(
                "operator",
                format!(
                    "operator `{}` takes vectors of length {} but the prior has d = {d}",
                    op.name(),
                    op.in_dim()
                ),
            ));
        }
        Ok(LoadedModel {
            d,
            prior,
            op,
            eta: self.measurement.eta,
            conversions: crate::io::take_conversion_notes(),
        })
    }
}

/// A loaded model: prior and operator (and eta), no measurement.
pub struct LoadedModel {
    pub d: usize,
    pub prior: LoadedPrior,
    pub op: Box<dyn LinearOperator>,
    /// `[measurement] eta`: noise standard deviation per measurement, in the units of x.
    pub eta: f64,
    /// Conversions made while reading the inputs (dtypes, image channels).
    pub conversions: Vec<String>,
}

/// A loaded problem: everything a run needs.
pub struct LoadedProblem {
    pub config: ProblemConfig,
    pub d: usize,
    pub prior: LoadedPrior,
    pub op: Box<dyn LinearOperator>,
    /// `[m]`, f64.
    pub y: Tensor,
    pub y_vec: Vec<f64>,
    /// The ground truth, when `y` was simulated from it.
    pub truth: Option<Vec<f64>>,
    pub eta: f64,
    /// Conversions made while reading the inputs (dtypes, image channels), for `summary.json`.
    pub conversions: Vec<String>,
}

impl LoadedProblem {
    /// What a [`crate::run::RunContext`] runs on.
    pub fn parts(&self) -> ProblemParts<'_> {
        ProblemParts {
            prior: self.prior.denoiser.as_ref(),
            op: self.op.as_ref(),
            y: &self.y,
            eta: self.eta,
        }
    }

    pub fn image_shape(&self) -> Option<[usize; 3]> {
        self.prior.image_shape
    }

    /// Hash of everything that determines the samples: prior, operator and sampler settings, the
    /// measurement's values, eta, n and seed (not the output folder or batch size).
    pub fn fingerprint(&self) -> String {
        let c = &self.config;
        crate::run::summary::fingerprint(
            &serde_json::to_value(&c.prior).unwrap_or_default(),
            &serde_json::to_value(&c.operator).unwrap_or_default(),
            c.measurement.eta,
            &c.sampler,
            c.run.n,
            c.run.seed,
            &self.y_vec,
        )
    }

    /// The run's `summary.json` (the writer may add fields to `extra`).
    pub fn summary(&self, out: &RunOutput, wall_s: f64, device: &Device) -> RunSummary {
        let c = &self.config;
        let mut prior = serde_json::to_value(&c.prior).unwrap_or_default();
        if let Some(o) = prior.as_object_mut() {
            o.insert(
                "sigma_range".into(),
                serde_json::json!(self.prior.denoiser.sigma_range()),
            );
            o.insert(
                "image_shape".into(),
                serde_json::json!(self.prior.image_shape),
            );
            o.insert("device".into(), serde_json::json!(format!("{device:?}")));
            if let Some(p) = &self.prior.perturbation {
                o.insert("perturbation".into(), serde_json::json!(p));
            }
            if let Some(n) = &self.prior.error_norms {
                o.insert("score_error_norms".into(), serde_json::json!(n));
            }
        }
        let inputs = RunInputs {
            spec: &c.sampler,
            prior,
            operator: self.op.name(),
            eta: self.eta,
            n: c.run.n,
            d: self.d,
            seed: c.run.seed,
            fingerprint: self.fingerprint(),
            warnings: c.warnings.clone(),
        };
        let mut s = RunSummary::new(inputs, out, wall_s);
        if !self.conversions.is_empty() {
            s.extra
                .insert("conversions".into(), serde_json::json!(self.conversions));
        }
        s
    }
}

/// One ground-truth row: images (`.npy`, or one `.png` at the model's size) are mapped to
/// [-1, 1] (as training does); vectors are read as is.
pub fn read_truth(
    path: &Path,
    image_shape: Option<[usize; 3]>,
    d: usize,
    index: usize,
) -> Result<Vec<f64>> {
    let ferr = |reason: String| Error::File {
        path: path.to_path_buf(),
        reason,
    };
    let is_png = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    let t = match image_shape {
        Some([c, h, w]) if is_png => {
            if index != 0 {
                return Err(ferr("a PNG holds one image: index must be 0".into()));
            }
            let v = crate::imaging::load_png(path, c, h, w)?;
            Tensor::from_vec(v, (1, c * h * w), &Device::Cpu)?
        }
        Some([c, h, w]) => {
            let t = crate::nn::load_images_npy(path)?;
            if t.dims()[1..] != [c, h, w] {
                return Err(ferr(format!(
                    "images are {:?} (C, H, W), the model expects [{c}, {h}, {w}]",
                    &t.dims()[1..]
                )));
            }
            t.flatten_from(1)?.to_dtype(candle_core::DType::F64)?
        }
        None => {
            let t = crate::io::read_array(path, "ground truth")?;
            match t.dims() {
                [n] if *n == d => t.unsqueeze(0)?,
                [_, n] if *n == d => t,
                other => {
                    return Err(ferr(format!(
                        "ground truth must be [d] or [N, d] with d = {d}, got {other:?}"
                    )))
                }
            }
        }
    };
    let n = t.dims()[0];
    if index >= n {
        return Err(ferr(format!("index {index} is out of range ({n} rows)")));
    }
    Ok(t.get(index)?.to_vec1()?)
}

/// A simulated measurement `y = A x + eta xi`, `xi` from its own seeded stream (sample index
/// `u64::MAX - 1` of `seed`, never a sampler's).
pub fn simulate(op: &dyn LinearOperator, x: &[f64], eta: f64, seed: u64) -> Result<Vec<f64>> {
    let xt = Tensor::from_vec(x.to_vec(), (1, x.len()), &Device::Cpu)?;
    let ax: Vec<f64> = op.apply(&xt)?.flatten_all()?.to_vec1()?;
    let mut s = crate::rng::SampleStreams::new(seed, [u64::MAX - 1]);
    Ok(ax
        .iter()
        .zip(s.normal_vec(ax.len()))
        .map(|(a, z)| a + eta * z)
        .collect())
}
