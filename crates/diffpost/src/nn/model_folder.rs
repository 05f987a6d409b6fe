//! The model-folder format of `diffpost train`: `config.json` (`{"model": UNetConfig, "train":
//! TrainConfig, "sigma_min", "sigma_max"}`), `weights.safetensors` (EMA weights) and, while
//! training, `checkpoint.safetensors` (everything a resume needs). Written and read here only.

use std::path::Path;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::{EdmDenoiser, TrainConfig, UNetConfig};
use crate::{Error, Result};

/// The model config file's name in a model folder.
pub const CONFIG_FILE: &str = "config.json";

/// `config.json` of a model folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFile {
    pub model: UNetConfig,
    pub train: TrainConfig,
    pub sigma_min: f64,
    pub sigma_max: f64,
}

impl ModelFile {
    /// Reads `dir/config.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        let p = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&p).map_err(|e| Error::File {
            path: p.clone(),
            reason: format!("cannot read model config: {e}"),
        })?;
        serde_json::from_str(&text).map_err(|e| Error::File {
            path: p,
            reason: e.to_string(),
        })
    }

    /// Writes `dir/config.json` (atomically).
    pub fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::Numerical(e.to_string()))?;
        crate::io::write_bytes(&dir.join(CONFIG_FILE), text.as_bytes())
    }

    /// True when `dir` holds a model (config and weights).
    pub fn exists(dir: &Path) -> bool {
        dir.join(CONFIG_FILE).is_file() && dir.join(super::train::WEIGHTS_FILE).is_file()
    }
}

/// Loads a trained model folder as a denoiser (network on `device`).
pub fn load(dir: &Path, device: &Device) -> Result<EdmDenoiser> {
    let mf = ModelFile::read(dir)?;
    EdmDenoiser::from_safetensors(
        mf.model,
        &dir.join(super::train::WEIGHTS_FILE),
        device,
        mf.sigma_min,
        mf.sigma_max,
    )
}
