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
        let text =
            serde_json::to_string_pretty(self).map_err(|e| Error::Numerical(e.to_string()))?;
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

impl ModelFile {
    /// Whether a checkpoint written under `self` can be resumed under `other`: the same
    /// architecture, seed and batch size (the data stream depends on the last two).
    pub fn resumable_as(&self, other: &ModelFile) -> bool {
        self.model == other.model
            && self.train.seed == other.train.seed
            && self.train.batch_size == other.train.batch_size
    }
}

/// Trains until `steps`, writing into `dir` at every multiple of `every` steps (and at the end):
/// the full checkpoint, the EMA weights, and a line `step avg_loss` appended to `loss.txt`
/// (`avg_loss`: exponential moving average of the loss, weight 0.02). `on_step(step, avg_loss)`
/// is called after every step (progress display).
pub fn train_into(
    trainer: &mut super::Trainer,
    dir: &Path,
    steps: u64,
    every: u64,
    mut on_step: impl FnMut(u64, f64),
) -> Result<()> {
    let every = every.max(1);
    let mut avg = f64::NAN;
    while trainer.step_count() < steps {
        // Train up to the next checkpoint boundary, then checkpoint and refresh the EMA export.
        let target = ((trainer.step_count() / every) + 1) * every;
        while trainer.step_count() < target.min(steps) {
            let loss = trainer.step()?;
            avg = if avg.is_nan() {
                loss
            } else {
                0.98 * avg + 0.02 * loss
            };
            on_step(trainer.step_count(), avg);
        }
        trainer.save_checkpoint(dir)?;
        trainer.export(dir)?;
        let logp = dir.join("loss.txt");
        let prev = std::fs::read_to_string(&logp).unwrap_or_default();
        crate::io::write_bytes(
            &logp,
            format!("{prev}{} {avg}\n", trainer.step_count()).as_bytes(),
        )?;
    }
    Ok(())
}
