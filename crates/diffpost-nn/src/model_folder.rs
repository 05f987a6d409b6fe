//! The model-folder format of `diffpost train`: `config.json` (`{"model": UNetConfig, "train":
//! TrainConfig, "sigma_min", "sigma_max", "step"}`), `weights.safetensors` (EMA weights),
//! `loss.txt` (a line `step avg_loss` per checkpoint) and, while training,
//! `checkpoint.safetensors` (everything a resume needs). Written and read here only.
//!
//! # Checkpoints commit as one
//!
//! A training run holds the folder's lock (`.<name>.lock` beside it, [`diffpost_core::commit`]) from
//! start to end, so a second `train` into the same folder fails at start. At every checkpoint
//! it writes the whole folder (config with the step, EMA weights, checkpoint, loss log up to
//! that step) into its staging folder `.<name>.tmp-<pid>` beside it, flushes it to disk and
//! swaps it with the model folder in one `renameat2(RENAME_EXCHANGE)`
//! ([`Staging::commit_and_continue`]). After a kill at any moment the model folder is therefore
//! exactly as of one completed checkpoint (or as before the run): config, weights, optimizer
//! state, step and loss log always belong together. The next run removes the dead run's lock
//! and staging folder. This was chosen over `checkpoint-<step>` subfolders behind a pointer
//! file because readers keep plain files at fixed names, and it costs no more: the weights and
//! checkpoint are rewritten at every checkpoint anyway, the config and loss log are small.
//!
//! The loss log is carried in memory from the start of the run (the previous log cut at the
//! step the run resumes from), so it never holds lines of a discarded run or a step twice.

use std::path::Path;

use candle_core::Device;
use diffpost_core::commit::{Replace, Staging};
use diffpost_core::{Error, Result};
use serde::{Deserialize, Serialize};

use super::train::{CHECKPOINT_FILE, WEIGHTS_FILE};
use super::{EdmDenoiser, TrainConfig, UNetConfig};

/// The model config file's name in a model folder.
pub const CONFIG_FILE: &str = "config.json";
/// The loss log's name in a model folder.
pub const LOSS_FILE: &str = "loss.txt";

/// What a model folder may hold for a training run to replace it (with or without `--force`):
/// its four files and temporary files of their atomic writes by earlier versions. Anything
/// else (a user's file) makes `train` refuse the folder.
pub const MODEL_OUTPUTS: Replace<'static> = Replace::Outputs {
    names: &[
        CONFIG_FILE,
        WEIGHTS_FILE,
        CHECKPOINT_FILE,
        LOSS_FILE,
        ".config.json.*",
        ".weights.safetensors.*",
        ".checkpoint.safetensors.*",
        ".loss.txt.*",
    ],
    suffixes: &[],
};

/// `config.json` of a model folder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelFile {
    pub model: UNetConfig,
    pub train: TrainConfig,
    pub sigma_min: f64,
    pub sigma_max: f64,
    /// The training step the folder's weights are from (absent in folders written before it
    /// was recorded: then the last step of `loss.txt` stands for it, see [`trained_step`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u64>,
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

    /// The JSON text of `config.json`.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::Numerical(e.to_string()))
    }

    /// Writes `dir/config.json` (atomically).
    pub fn write(&self, dir: &Path) -> Result<()> {
        diffpost_core::io::write_bytes(&dir.join(CONFIG_FILE), self.to_json()?.as_bytes())
    }

    /// True when `dir` holds a model (config and weights).
    pub fn exists(dir: &Path) -> bool {
        dir.join(CONFIG_FILE).is_file() && dir.join(WEIGHTS_FILE).is_file()
    }

    /// What keeps a model stored under `self` from being trained on under `requested`: one entry
    /// `field: X in the folder, Y requested` per differing architecture field (and trained
    /// sigma range); with `data_stream`, also the seed and batch size (a checkpoint's batch
    /// stream depends on them). Empty when training may continue.
    pub fn mismatch(&self, requested: &ModelFile, data_stream: bool) -> Vec<String> {
        let mut out = Vec::new();
        let (a, b) = (
            serde_json::to_value(&self.model).unwrap_or_default(),
            serde_json::to_value(&requested.model).unwrap_or_default(),
        );
        if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
            for (k, va) in a {
                let vb = b.get(k).cloned().unwrap_or_default();
                if *va != vb {
                    out.push(format!("model.{k}: {va} in the folder, {vb} requested"));
                }
            }
        }
        let mut num = |name: &str, x: String, y: String| {
            if x != y {
                out.push(format!("{name}: {x} in the folder, {y} requested"));
            }
        };
        num(
            "sigma_min",
            self.sigma_min.to_string(),
            requested.sigma_min.to_string(),
        );
        num(
            "sigma_max",
            self.sigma_max.to_string(),
            requested.sigma_max.to_string(),
        );
        if data_stream {
            num(
                "train.seed",
                self.train.seed.to_string(),
                requested.train.seed.to_string(),
            );
            num(
                "train.batch_size",
                self.train.batch_size.to_string(),
                requested.train.batch_size.to_string(),
            );
        }
        out
    }
}

/// Loads a trained model folder as a denoiser (network on `device`).
pub fn load(dir: &Path, device: &Device) -> Result<EdmDenoiser> {
    let mf = ModelFile::read(dir)?;
    EdmDenoiser::from_safetensors(
        mf.model,
        &dir.join(WEIGHTS_FILE),
        device,
        mf.sigma_min,
        mf.sigma_max,
    )
}

/// The `(step, avg_loss)` lines of `dir/loss.txt` (none when absent; unreadable lines skipped).
fn loss_lines(dir: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(dir.join(LOSS_FILE))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let step = it.next()?.parse::<u64>().ok()?;
            Some((step, it.next()?.to_string()))
        })
        .collect()
}

/// The training step a model folder's weights are from: `step` of its config, else (folders
/// written before it was recorded, like the shipped ones) the last step of its `loss.txt`.
pub fn trained_step(dir: &Path) -> Result<Option<u64>> {
    Ok(ModelFile::read(dir)?
        .step
        .or_else(|| loss_lines(dir).last().map(|l| l.0)))
}

/// The loss log of a run: its text so far and the smoothed loss at its last line.
#[derive(Debug, Clone, Default)]
pub struct LossLog {
    text: String,
    avg: Option<f64>,
}

impl LossLog {
    /// An empty log (a run from step 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// The log of `dir` cut at step `upto` (the step a run resumes from): later lines, from a
    /// run whose later state was discarded, are dropped. The smoothed loss continues from the
    /// line of step `upto` when there is one (printed exactly, so a resumed run logs the same
    /// values as an uninterrupted one).
    pub fn read(dir: &Path, upto: u64) -> Self {
        let mut log = Self::new();
        for (step, avg) in loss_lines(dir) {
            if step <= upto {
                log.text.push_str(&format!("{step} {avg}\n"));
                log.avg = (step == upto).then(|| avg.parse().ok()).flatten();
            }
        }
        log
    }

    /// The log's text.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// Trains until `steps`, committing the model folder `staging.out()` as one at every multiple
/// of `every` steps and at the end (`every = 0`: only at the end): `config.json` (`mf` with
/// the step), `weights.safetensors` (EMA), `checkpoint.safetensors`, and `loss.txt` (`log`
/// plus a line `step avg_loss` per checkpoint; `avg_loss`: exponential moving average of the
/// loss, weight 0.02). `on_step(step, avg_loss)` is called after every step (progress display).
pub fn train_into(
    trainer: &mut super::Trainer,
    staging: &mut Staging,
    mf: &ModelFile,
    mut log: LossLog,
    steps: u64,
    every: u64,
    mut on_step: impl FnMut(u64, f64),
) -> Result<()> {
    let mut avg = log.avg.unwrap_or(f64::NAN);
    while trainer.step_count() < steps {
        // Train up to the next checkpoint boundary, then commit the folder.
        let target = trainer
            .step_count()
            .checked_div(every)
            .map_or(steps, |k| (k + 1) * every);
        while trainer.step_count() < target.min(steps) {
            let loss = trainer.step()?;
            avg = if avg.is_nan() {
                loss
            } else {
                0.98 * avg + 0.02 * loss
            };
            on_step(trainer.step_count(), avg);
        }
        let step = trainer.step_count();
        log.text.push_str(&format!("{step} {avg}\n"));
        log.avg = Some(avg);
        let dir = staging.path().to_path_buf();
        let mf = ModelFile {
            step: Some(step),
            ..mf.clone()
        };
        staging.write_bytes(CONFIG_FILE, mf.to_json()?.as_bytes())?;
        trainer.save_checkpoint(&dir)?;
        trainer.export(&dir)?;
        staging.write_bytes(LOSS_FILE, log.text.as_bytes())?;
        staging.commit_and_continue()?;
    }
    Ok(())
}
