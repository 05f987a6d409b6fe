//! The typed `problem.toml` config: parsed with unknown keys rejected, paths resolved against the
//! config file's folder, then turned into library objects (prior, operator, measurement, sampler).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Tensor;
use diffpost::operator::image::ImageOperatorSpec;
use diffpost::operator::{Dense, Identity, LinearOperator, Mask};
use diffpost::prior::{Denoiser, GaussianMixture, Perturbation, Perturbed};
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub prior: PriorSection,
    pub operator: toml::Table,
    pub measurement: MeasurementSection,
    #[serde(default)]
    pub sampler: toml::Table,
    #[serde(default)]
    pub run: RunSection,
}

#[derive(Debug, Deserialize, Serialize, Clone)]
#[serde(deny_unknown_fields)]
pub struct PriorSection {
    /// "gmm" (an .npz file), "isotropic" (`N(mean 1, var I_d)`, no file), "unet" (a model folder
    /// from `diffpost train`), "guided-diffusion" (a .pt/.safetensors state dict) or
    /// "diffusers-unet" (a diffusers model folder or weights file).
    pub kind: String,
    pub path: Option<PathBuf>,
    /// Pretrained checkpoints: a known architecture (guided-diffusion: "dps-ffhq256",
    /// "adm-imagenet256-uncond"; diffusers: "ddpm-cifar10-32", "ddpm-celebahq-256").
    pub preset: Option<String>,
    /// Pretrained checkpoints: the architecture as JSON (guided-diffusion's `create_model`
    /// arguments; a diffusers UNet `config.json`), instead of a preset.
    pub config: Option<PathBuf>,
    /// `.pt` files: the key of a nested state dict (`checkpoint[key]`).
    pub key: Option<String>,
    /// guided-diffusion: "linear" (default) or "cosine" betas.
    pub noise_schedule: Option<String>,
    /// guided-diffusion: training timesteps (default 1000).
    pub diffusion_steps: Option<usize>,
    /// Pretrained checkpoints: sigma -> timestep, "interpolate" (default) or "nearest".
    pub timestep: Option<String>,
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
    /// Path to `y.npy` (`[m]`); or give `truth` to simulate `y = A x_true + eta xi`.
    pub y: Option<PathBuf>,
    /// Ground truth to simulate from: images `.npy` `[N,H,W]`/`[N,C,H,W]` (u8 0..255, [0,1] or
    /// [-1,1]; mapped to [-1,1]) for image priors, `[d]` or `[N,d]` in x units otherwise.
    pub truth: Option<PathBuf>,
    /// Which row of `truth` (default 0).
    pub index: Option<usize>,
    /// Seed of the simulated measurement noise (default 0).
    pub noise_seed: Option<u64>,
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
    /// The analytic prior (exact posteriors, MALA, exact-prior init); `None` for networks.
    pub gmm: Option<GaussianMixture>,
    /// `[C, H, W]` for image priors.
    pub image_shape: Option<[usize; 3]>,
    /// The ground truth, when the measurement was simulated from it.
    pub truth: Option<Vec<f64>>,
    pub d: usize,
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

/// One ground-truth row: images (`.npy`, or one `.png` at the model's size) are mapped to
/// [-1, 1] (as training does); vectors are read as is.
pub fn read_truth(
    path: &Path,
    image_shape: Option<[usize; 3]>,
    d: usize,
    index: usize,
) -> Result<Vec<f64>> {
    let is_png = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    let t = match image_shape {
        Some([c, h, w]) if is_png => {
            if index != 0 {
                bail!("{}: a PNG holds one image: index must be 0", path.display());
            }
            let v = diffpost::imaging::load_png(path, c, h, w)?;
            Tensor::from_vec(v, (1, c * h * w), &candle_core::Device::Cpu)?
        }
        Some([c, h, w]) => {
            let t = diffpost::nn::load_images_npy(path)?;
            if t.dims()[1..] != [c, h, w] {
                bail!(
                    "{}: images are {:?} (C, H, W), the model expects [{c}, {h}, {w}]",
                    path.display(),
                    &t.dims()[1..]
                );
            }
            t.flatten_from(1)?.to_dtype(candle_core::DType::F64)?
        }
        None => {
            let t = diffpost::io::read_array(path, "ground truth")?;
            match t.dims() {
                [n] if *n == d => t.unsqueeze(0)?,
                [_, n] if *n == d => t,
                other => bail!(
                    "{}: ground truth must be [d] or [N, d] with d = {d}, got {other:?}",
                    path.display()
                ),
            }
        }
    };
    let n = t.dims()[0];
    if index >= n {
        bail!(
            "{}: index {index} is out of range ({n} rows)",
            path.display()
        );
    }
    Ok(t.get(index)?.to_vec1()?)
}

/// `y = A x + eta xi`, `xi` from its own seeded stream.
pub fn simulate(op: &dyn LinearOperator, x: &[f64], eta: f64, seed: u64) -> Result<Vec<f64>> {
    let xt = Tensor::from_vec(x.to_vec(), (1, x.len()), &candle_core::Device::Cpu)?;
    let ax: Vec<f64> = op.apply(&xt)?.flatten_all()?.to_vec1()?;
    let mut s = diffpost::rng::SampleStreams::new(seed, [u64::MAX - 1]);
    Ok(ax
        .iter()
        .zip(s.normal_vec(ax.len()))
        .map(|(a, z)| a + eta * z)
        .collect())
}

pub fn resolve(dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}

/// Reads and validates `path` (networks on the CPU).
pub fn load(path: &Path) -> Result<Loaded> {
    load_on(path, &candle_core::Device::Cpu)
}

/// A network prior and the image shape `[C, H, W]` it works on.
type NetPrior = (Box<dyn Denoiser>, [usize; 3]);

/// Reads and validates `path`; network priors run on `device`.
pub fn load_on(path: &Path, device: &candle_core::Device) -> Result<Loaded> {
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
                "{}: unknown prior kind `{other}` (expected \"gmm\", \"isotropic\", \"unet\", \"guided-diffusion\" or \"diffusers-unet\")",
                ctx("prior.kind")
            ),
        }
    };
    let pretrained = matches!(pr.kind.as_str(), "guided-diffusion" | "diffusers-unet");
    let has_pretrained_keys = pr.preset.is_some()
        || pr.config.is_some()
        || pr.key.is_some()
        || pr.noise_schedule.is_some()
        || pr.diffusion_steps.is_some()
        || pr.timestep.is_some();
    if !pretrained && has_pretrained_keys {
        bail!(
            "{}: `preset`, `config`, `key`, `noise_schedule`, `diffusion_steps` and `timestep` \
             apply to kind = \"guided-diffusion\" | \"diffusers-unet\"",
            ctx("prior")
        );
    }
    let (gmm, net): (Option<GaussianMixture>, Option<NetPrior>) = if pr.kind == "unet" {
        if pr.d.is_some() || pr.var.is_some() || pr.mean.is_some() || pr.perturb.is_some() {
            bail!(
                "{}: kind = \"unet\" takes only `path` (a model folder from `diffpost train`)",
                ctx("prior")
            );
        }
        let p = pr.path.as_ref().ok_or_else(|| {
            anyhow!(
                "{}: `path` (a model folder) is required for kind = \"unet\"",
                ctx("prior")
            )
        })?;
        let m = crate::train_cmd::load_model(&resolve(&dir, p), device)
            .with_context(|| ctx("prior.path"))?;
        let shape = m.image_shape();
        (None, Some((Box::new(m), shape)))
    } else if pretrained {
        if pr.d.is_some() || pr.var.is_some() || pr.mean.is_some() || pr.perturb.is_some() {
            bail!(
                "{}: `d`, `var`, `mean` and `perturb` do not apply to kind = \"{}\"",
                ctx("prior"),
                pr.kind
            );
        }
        let m = crate::pretrained::load_prior(pr, &dir, device).with_context(|| ctx("prior"))?;
        let shape = m.image_shape();
        (None, Some((Box::new(m), shape)))
    } else {
        (Some(load_gmm()?), None)
    };
    let image_shape = net.as_ref().map(|(_, s)| *s);
    let d = match (&gmm, &net) {
        (Some(g), _) => g.dim(),
        (_, Some((u, _))) => u.dim(),
        _ => unreachable!(),
    };
    let mut error_norms = None;
    let mut perturbation = None;
    let (prior, perturbed): (Box<dyn Denoiser>, bool) = match (&cfg.prior.perturb, net) {
        (_, Some((u, _))) => (u, false),
        (None, None) => (Box::new(gmm.clone().expect("analytic prior")), false),
        (Some(p), None) => {
            let gmm = gmm.as_ref().expect("analytic prior");
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
            let inner = Box::new(gmm.clone());
            perturbation = Some(kind.clone());
            let p = Perturbed::new(inner, gmm, kind).with_context(|| ctx("prior.perturb"))?;
            error_norms = Some(p.error_norms(gmm, 20_000)?);
            (Box::new(p), true)
        }
    };
    let op_kind = cfg
        .operator
        .get("kind")
        .and_then(|v| v.as_str())
        .unwrap_or("")
        .to_string();
    let op: Box<dyn LinearOperator> = match op_kind.as_str() {
        "identity" | "matrix" | "mask" => {
            let sec: OperatorSection = toml::Value::Table(cfg.operator.clone()).try_into().map_err(|e| anyhow!("{}: {e}", ctx("operator")))?;
            match op_kind.as_str() {
                "identity" => Box::new(Identity::new(d)),
                kind => {
                    let p = sec.path.as_ref().ok_or_else(|| anyhow!("{}: `path` is required for kind = \"{kind}\"", ctx("operator")))?;
                    let p = resolve(&dir, p);
                    if kind == "matrix" {
                        Box::new(Dense::from_npy(&p).with_context(|| ctx("operator.path"))?)
                    } else {
                        Box::new(Mask::from_npy(&p).with_context(|| ctx("operator.path"))?)
                    }
                }
            }
        }
        "inpaint" | "box" | "superres" | "blur" | "mri" => {
            let shape = image_shape.ok_or_else(|| anyhow!("{}: image operator `{op_kind}` needs an image prior (kind = \"unet\" | \"guided-diffusion\" | \"diffusers-unet\")", ctx("operator")))?;
            let spec: ImageOperatorSpec = toml::Value::Table(cfg.operator.clone()).try_into().map_err(|e| anyhow!("{}: {e}", ctx("operator")))?;
            spec.build(shape).with_context(|| ctx("operator"))?
        }
        other => bail!(
            "{}: unknown operator kind `{other}` (expected matrix | mask | identity | inpaint | box | superres | blur | mri)",
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
    let ms = &cfg.measurement;
    let (y, truth) = match (&ms.y, &ms.truth) {
        (Some(_), Some(_)) => bail!(
            "{}: give either `y` or `truth` (to simulate y), not both",
            ctx("measurement")
        ),
        (None, None) => bail!(
            "{}: `y` (a [m] .npy) or `truth` (to simulate y) is required",
            ctx("measurement")
        ),
        (Some(yp), None) => {
            if ms.index.is_some() || ms.noise_seed.is_some() {
                bail!(
                    "{}: `index` and `noise_seed` apply only with `truth`",
                    ctx("measurement")
                );
            }
            let y_path = resolve(&dir, yp);
            let y = diffpost::io::read_array(&y_path, "measurement y")
                .with_context(|| ctx("measurement.y"))?;
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
            (y, None)
        }
        (None, Some(tp)) => {
            let tp = resolve(&dir, tp);
            let x = read_truth(&tp, image_shape, d, ms.index.unwrap_or(0))
                .with_context(|| ctx("measurement.truth"))?;
            let y = simulate(op.as_ref(), &x, eta, ms.noise_seed.unwrap_or(0))?;
            (
                Tensor::from_vec(y, op.out_dim(), &candle_core::Device::Cpu)?,
                Some(x),
            )
        }
    };
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
        image_shape,
        truth,
        d,
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
