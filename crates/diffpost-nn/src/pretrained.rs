//! Pretrained checkpoints users bring, as denoisers (`diffpost::prior::Denoiser`): guided-diffusion
//! / ADM (DPS's FFHQ model) and diffusers `UNet2DModel` repositories, read from `.pt` (PyTorch zip,
//! no code executed) or `.safetensors` ([`super::checkpoint`]) and wrapped by the VP adapter
//! ([`super::vp`]).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use diffpost_core::{Error, Result};
use serde::Deserialize;

use super::checkpoint::{build_checked, load_state_dict};
use super::diffusers_unet::{UNet2DConfig, UNet2DModel};
use super::guided::{GuidedUNet, GuidedUNetConfig};
use super::vp::{BetaSchedule, Prediction, TimestepNetwork, VpSchedule};

impl TimestepNetwork for GuidedUNet {
    fn forward(&self, x: &Tensor, timesteps: &Tensor) -> candle_core::Result<Tensor> {
        GuidedUNet::forward(self, x, timesteps)
    }
    fn image_shape(&self) -> [usize; 3] {
        let c = self.config();
        [c.in_channels, c.image_size, c.image_size]
    }
    fn name(&self) -> String {
        "guided-diffusion UNet".into()
    }
}

impl TimestepNetwork for UNet2DModel {
    fn forward(&self, x: &Tensor, timesteps: &Tensor) -> candle_core::Result<Tensor> {
        UNet2DModel::forward(self, x, timesteps)
    }
    fn image_shape(&self) -> [usize; 3] {
        let c = self.config();
        // `load_diffusers` refuses configs without `sample_size`.
        let [h, w] = c.sample_size.unwrap_or([0, 0]);
        [c.in_channels, h, w]
    }
    fn name(&self) -> String {
        "diffusers UNet2DModel".into()
    }
}

/// Reads a JSON file into `T`; errors name the file and what it was expected to hold.
pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path, what: &str) -> Result<T> {
    let ferr = |reason: String| Error::File {
        path: path.to_path_buf(),
        reason,
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| ferr(format!("cannot read {what}: {e}")))?;
    serde_json::from_str(&text).map_err(|e| ferr(format!("bad {what}: {e}")))
}

/// Loads a guided-diffusion UNet from a `.pt` or `.safetensors` state dict (`key`: a nested
/// state dict of a `.pt`), checking every tensor name and shape against `cfg`.
pub fn load_guided(
    path: &Path,
    cfg: &GuidedUNetConfig,
    key: Option<&str>,
    device: &Device,
) -> Result<GuidedUNet> {
    cfg.validate()?;
    let tensors = load_state_dict(path, key)?;
    build_checked(tensors, device, path, |vb| GuidedUNet::new(cfg, vb))
}

/// The files of a diffusers model: the UNet's `config.json` and weights, and the scheduler's
/// config when there is one.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffusersFiles {
    pub config: PathBuf,
    pub weights: PathBuf,
    pub scheduler: Option<PathBuf>,
}

/// Finds the files of a diffusers model given a repository folder (with `unet/` and
/// `scheduler/` subfolders, or the UNet files at its top), a UNet folder, or a weights file
/// (then `config.json` is looked for beside it). Weights: `diffusion_pytorch_model.safetensors`,
/// else `diffusion_pytorch_model.bin` (a PyTorch zip).
pub fn diffusers_files(path: &Path) -> Result<DiffusersFiles> {
    let ferr = |reason: String| Error::File {
        path: path.to_path_buf(),
        reason,
    };
    if let Err(e) = std::fs::metadata(path) {
        return Err(ferr(diffpost_core::io::describe_io_error(&e)));
    }
    let (unet_dir, weights) = if path.is_file() {
        (
            path.parent().unwrap_or(Path::new(".")).to_path_buf(),
            Some(path.to_path_buf()),
        )
    } else if path.join("unet").join("config.json").exists() {
        (path.join("unet"), None)
    } else {
        (path.to_path_buf(), None)
    };
    let config = unet_dir.join("config.json");
    if !config.exists() {
        return Err(ferr(format!(
            "no config.json for the UNet (looked in {})",
            unet_dir.display()
        )));
    }
    let weights = match weights {
        Some(w) => w,
        None => [
            "diffusion_pytorch_model.safetensors",
            "diffusion_pytorch_model.bin",
        ]
        .iter()
        .map(|f| unet_dir.join(f))
        .find(|p| p.exists())
        .ok_or_else(|| {
            ferr(format!(
                "no diffusion_pytorch_model.safetensors or .bin in {}",
                unet_dir.display()
            ))
        })?,
    };
    let repo = if unet_dir.file_name().is_some_and(|n| n == "unet") {
        unet_dir.parent().map(Path::to_path_buf)
    } else {
        Some(unet_dir.clone())
    };
    let scheduler = repo.and_then(|r| {
        [
            r.join("scheduler").join("scheduler_config.json"),
            r.join("scheduler_config.json"),
        ]
        .into_iter()
        .find(|p| p.exists())
    });
    Ok(DiffusersFiles {
        config,
        weights,
        scheduler,
    })
}

/// The fields of a diffusers DDPM/DDIM `scheduler_config.json` that define the training noise.
#[derive(Debug, Clone, Deserialize)]
pub struct DiffusersScheduler {
    #[serde(default = "default_t")]
    pub num_train_timesteps: usize,
    #[serde(default = "default_beta_start")]
    pub beta_start: f64,
    #[serde(default = "default_beta_end")]
    pub beta_end: f64,
    #[serde(default = "default_beta_schedule")]
    pub beta_schedule: String,
    #[serde(default = "default_prediction")]
    pub prediction_type: String,
    /// Explicit betas (rare); not supported.
    #[serde(default)]
    pub trained_betas: Option<Vec<f64>>,
}

fn default_t() -> usize {
    1000
}
fn default_beta_start() -> f64 {
    1e-4
}
fn default_beta_end() -> f64 {
    0.02
}
fn default_beta_schedule() -> String {
    "linear".into()
}
fn default_prediction() -> String {
    "epsilon".into()
}

impl Default for DiffusersScheduler {
    fn default() -> Self {
        Self {
            num_train_timesteps: default_t(),
            beta_start: default_beta_start(),
            beta_end: default_beta_end(),
            beta_schedule: default_beta_schedule(),
            prediction_type: default_prediction(),
            trained_betas: None,
        }
    }
}

impl DiffusersScheduler {
    /// The VP schedule and prediction type this scheduler config describes.
    pub fn to_vp(&self) -> Result<(VpSchedule, Prediction)> {
        if self.trained_betas.is_some() {
            return Err(Error::Unsupported(
                "scheduler with explicit `trained_betas`".into(),
            ));
        }
        let betas = match self.beta_schedule.as_str() {
            "linear" => BetaSchedule::Linear {
                beta_start: self.beta_start,
                beta_end: self.beta_end,
            },
            "scaled_linear" => BetaSchedule::ScaledLinear {
                beta_start: self.beta_start,
                beta_end: self.beta_end,
            },
            "squaredcos_cap_v2" => BetaSchedule::Cosine { s: 0.008 },
            other => {
                return Err(Error::param(
                    "beta_schedule",
                    format!("`{other}` (supported: linear, scaled_linear, squaredcos_cap_v2)"),
                ))
            }
        };
        let pred = match self.prediction_type.as_str() {
            "epsilon" => Prediction::Epsilon,
            "v_prediction" => Prediction::VPrediction,
            "sample" => Prediction::Sample,
            other => {
                return Err(Error::param(
                    "prediction_type",
                    format!("`{other}` (supported: epsilon, v_prediction, sample)"),
                ))
            }
        };
        Ok((VpSchedule::new(&betas, self.num_train_timesteps)?, pred))
    }
}

/// Reads a diffusers UNet2DModel (`config.json` + weights) from `path` (see [`diffusers_files`]);
/// `config` overrides the architecture (e.g. a preset).
pub fn load_diffusers(
    path: &Path,
    config: Option<UNet2DConfig>,
    key: Option<&str>,
    device: &Device,
) -> Result<(UNet2DModel, DiffusersFiles)> {
    let files = diffusers_files(path)?;
    let cfg = match config {
        Some(c) => c,
        None => read_json::<UNet2DConfig>(&files.config, "UNet config")?,
    };
    cfg.validate()?;
    if cfg.sample_size.is_none() {
        return Err(Error::File {
            path: files.config.clone(),
            reason: "no `sample_size`: diffpost needs the image size the model was trained at \
                     (add \"sample_size\": [H, W] or give a preset)"
                .into(),
        });
    }
    let tensors =
        super::diffusers_unet::rename_deprecated_attention(load_state_dict(&files.weights, key)?);
    let net = build_checked(tensors, device, &files.weights, |vb| {
        UNet2DModel::new(&cfg, vb)
    })?;
    Ok((net, files))
}

/// The scheduler of a diffusers model folder (DDPM defaults when it has none).
pub fn diffusers_scheduler(files: &DiffusersFiles) -> Result<DiffusersScheduler> {
    match &files.scheduler {
        Some(p) => read_json(p, "scheduler config"),
        None => Ok(DiffusersScheduler::default()),
    }
}
