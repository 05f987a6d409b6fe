//! The typed `problem.toml` config: parsed with unknown keys rejected, paths resolved against the
//! config file's folder, then turned into library objects (prior, operator, measurement, sampler).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Tensor;
use diffpost::operator::{Dense, Identity, LinearOperator, Mask};
use diffpost::prior::{Denoiser, GaussianMixture, Perturbation, Perturbed};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub prior: PriorSection,
    pub operator: OperatorSection,
    pub measurement: MeasurementSection,
    #[serde(default)]
    pub sampler: toml::Table,
    #[serde(default)]
    pub run: RunSection,
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct PriorSection {
    /// "gmm" (an .npz file) or "isotropic" (`N(mean 1, var I_d)`, no file).
    pub kind: String,
    pub path: Option<PathBuf>,
    /// isotropic: dimension, variance (default 1) and the common mean of every coordinate (default 0).
    pub d: Option<usize>,
    pub var: Option<f64>,
    pub mean: Option<f64>,
    pub perturb: Option<PerturbSection>,
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct PerturbSection {
    /// "shell-trap" | "smooth".
    pub kind: String,
    pub kappa: Option<f64>,
    pub r_lo: Option<f64>,
    pub r_hi: Option<f64>,
    pub r0: Option<f64>,
    pub w: Option<f64>,
    pub rel: Option<f64>,
    pub freq: Option<f64>,
    pub seed: Option<u64>,
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct OperatorSection {
    /// "matrix" | "identity" | "mask".
    pub kind: String,
    pub path: Option<PathBuf>,
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct MeasurementSection {
    /// Path to `y.npy` (`[m]`).
    pub y: PathBuf,
    /// Noise standard deviation per measurement, in the units of x.
    pub eta: f64,
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    #[serde(default = "default_n")]
    pub n: usize,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_out")]
    pub out: PathBuf,
    /// Samples per batch (results do not depend on it).
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

/// A loaded problem: everything the samplers need.
pub struct Loaded {
    pub cfg: Config,
    pub dir: PathBuf,
    pub gmm: GaussianMixture,
    /// The prior samplers see (the GMM, or the GMM with a perturbed score).
    pub prior: Box<dyn Denoiser>,
    pub perturbed: bool,
    /// L2/L4 sizes of the score error under the prior (perturbed priors only).
    pub error_norms: Option<diffpost::prior::perturb::ErrorNorms>,
    /// The perturbation with its defaults resolved.
    pub perturbation: Option<Perturbation>,
    pub op: Box<dyn LinearOperator>,
    pub y: Tensor,
    pub y_vec: Vec<f64>,
    pub eta: f64,
}

impl Loaded {
    pub fn resolve(&self, p: &Path) -> PathBuf {
        resolve(&self.dir, p)
    }
}

pub fn resolve(dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// Reads and validates `path`.
pub fn load(path: &Path) -> Result<Loaded> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read config", path.display()))?;
    let cfg: Config = toml::from_str(&text).map_err(|e| anyhow!("{}: {}", path.display(), e))?;
    let dir = path.parent().map(|p| p.to_path_buf()).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    let ctx = |field: &str| format!("{}: [{}]", path.display(), field);

    let pr = &cfg.prior;
    let load_gmm = || -> Result<GaussianMixture> {
        match pr.kind.as_str() {
            "gmm" => {
                if pr.d.is_some() || pr.var.is_some() || pr.mean.is_some() {
                    bail!(
                        "{}: `d`, `var` and `mean` belong to kind = \"isotropic\"",
                        ctx("prior")
                    );
                }
                let p = pr.path.as_ref().ok_or_else(|| anyhow!("{}: `path` (an .npz with weights, means, covs) is required for kind = \"gmm\"", ctx("prior")))?;
                GaussianMixture::from_npz(resolve(&dir, p)).with_context(|| ctx("prior.path"))
            }
            "isotropic" => {
                if pr.path.is_some() {
                    bail!(
                        "{}: `path` does not apply to kind = \"isotropic\"",
                        ctx("prior")
                    );
                }
                let d = pr.d.ok_or_else(|| {
                    anyhow!("{}: `d` is required for kind = \"isotropic\"", ctx("prior"))
                })?;
                if d == 0 {
                    bail!("{}: d must be >= 1", ctx("prior.d"));
                }
                GaussianMixture::isotropic(vec![pr.mean.unwrap_or(0.0); d], pr.var.unwrap_or(1.0))
                    .with_context(|| ctx("prior.var"))
            }
            other => bail!(
                "{}: unknown prior kind `{other}` (expected \"gmm\" or \"isotropic\")",
                ctx("prior.kind")
            ),
        }
    };
    let gmm = load_gmm()?;
    let d = gmm.dim();
    let mut error_norms = None;
    let mut perturbation = None;
    let (prior, perturbed): (Box<dyn Denoiser>, bool) = match &cfg.prior.perturb {
        None => (Box::new(load_gmm()?), false),
        Some(p) => {
            let kind = match p.kind.as_str() {
                "shell-trap" => {
                    let need = |v: Option<f64>, f: &str| {
                        v.ok_or_else(|| {
                            anyhow!("{}: `{f}` is required for shell-trap", ctx("prior.perturb"))
                        })
                    };
                    Perturbation::shell_trap(
                        need(p.kappa, "kappa")?,
                        need(p.r_lo, "r_lo")?,
                        need(p.r_hi, "r_hi")?,
                        p.r0,
                        p.w,
                    )
                    .with_context(|| ctx("prior.perturb"))?
                }
                "smooth" => Perturbation::Smooth {
                    rel: p.rel.ok_or_else(|| {
                        anyhow!("{}: `rel` is required for smooth", ctx("prior.perturb"))
                    })?,
                    freq: p.freq.unwrap_or(1.0),
                    seed: p.seed.unwrap_or(0),
                },
                other => bail!(
                    "{}: unknown perturbation `{other}` (expected \"shell-trap\" or \"smooth\")",
                    ctx("prior.perturb.kind")
                ),
            };
            let inner = Box::new(load_gmm()?);
            perturbation = Some(kind.clone());
            let p = Perturbed::new(inner, &gmm, kind).with_context(|| ctx("prior.perturb"))?;
            error_norms = Some(p.error_norms(&gmm, 20_000)?);
            (Box::new(p), true)
        }
    };
    let op: Box<dyn LinearOperator> = match cfg.operator.kind.as_str() {
        "identity" => Box::new(Identity::new(d)),
        "matrix" | "mask" => {
            let p = cfg.operator.path.as_ref().ok_or_else(|| {
                anyhow!(
                    "{}: `path` is required for kind = \"{}\"",
                    ctx("operator"),
                    cfg.operator.kind
                )
            })?;
            let p = resolve(&dir, p);
            if cfg.operator.kind == "matrix" {
                Box::new(Dense::from_npy(&p).with_context(|| ctx("operator.path"))?)
            } else {
                Box::new(Mask::from_npy(&p).with_context(|| ctx("operator.path"))?)
            }
        }
        other => bail!(
            "{}: unknown operator kind `{other}` (expected \"matrix\", \"mask\" or \"identity\")",
            ctx("operator.kind")
        ),
    };
    if op.in_dim() != d {
        bail!(
            "{}: operator `{}` takes vectors of length {} but the prior has d = {d}",
            ctx("operator"),
            op.name(),
            op.in_dim()
        );
    }
    let eta = cfg.measurement.eta;
    if !(eta > 0.0) || !eta.is_finite() {
        bail!(
            "{}: eta must be finite and > 0 (in the units of x), got {eta}",
            ctx("measurement.eta")
        );
    }
    let y_path = resolve(&dir, &cfg.measurement.y);
    let y =
        diffpost::io::read_array(&y_path, "measurement y").with_context(|| ctx("measurement.y"))?;
    if y.dims() != [op.out_dim()] {
        bail!(
            "{}: {} has shape {:?}, expected [{}] (m of operator `{}`)",
            ctx("measurement.y"),
            y_path.display(),
            y.dims(),
            op.out_dim(),
            op.name()
        );
    }
    let y_vec: Vec<f64> = y.to_vec1()?;
    if cfg.run.n == 0 {
        bail!("{}: n must be >= 1", ctx("run.n"));
    }
    if cfg.run.batch == Some(0) {
        bail!("{}: batch must be >= 1", ctx("run.batch"));
    }
    Ok(Loaded {
        cfg,
        dir,
        gmm,
        prior,
        perturbed,
        error_norms,
        perturbation,
        op,
        y,
        y_vec,
        eta,
    })
}
