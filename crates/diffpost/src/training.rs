//! `diffpost train`'s policy: the `unet.toml` it reads and what it does with the model folder it
//! trains into.
//!
//! A model folder holds `config.json` (`{"model": UNetConfig, "train": TrainConfig, "sigma_min",
//! "sigma_max", "step"}`), `weights.safetensors` (EMA weights), `loss.txt` and
//! `checkpoint.safetensors` (weights, EMA, Adam moments, step: everything a resume needs), all
//! committed together at every checkpoint ([`crate::nn::model_folder`]).
//!
//! What happens to the folder ([`start`]):
//! - empty or new: a run from step 0;
//! - a checkpoint: resumed (same architecture, seed and batch size, else an error naming the
//!   differing fields);
//! - a model without a checkpoint (e.g. a shipped one): refused unless `resume_from_model`
//!   (continue from its weights with a fresh optimizer state; same architecture) or `force`;
//! - `force`: a run from step 0 that replaces the folder's model, checkpoint and loss log;
//!   `fresh` (ignore the checkpoint) also starts over and so needs `force` when the folder
//!   holds a model.
//!
//! A folder holding anything else than these files is refused either way (it is replaced as a
//! whole at every checkpoint: [`crate::nn::model_folder::MODEL_OUTPUTS`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::nn::model_folder::{self, LossLog, ModelFile};
use crate::nn::train::{CHECKPOINT_FILE, WEIGHTS_FILE};
use crate::nn::{TrainConfig, Trainer, UNetConfig};
use crate::{Error, Result};

/// `unet.toml`: `[model]` (architecture) and `[train]` (optimisation), both optional.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainFile {
    #[serde(default)]
    pub model: Option<toml::Table>,
    #[serde(default)]
    pub train: Option<toml::Table>,
}

impl TrainFile {
    /// Reads `path` (`None`: every default); also returns the name errors give the file.
    pub fn read(path: Option<&Path>) -> Result<(TrainFile, PathBuf)> {
        let Some(p) = path else {
            return Ok((TrainFile::default(), PathBuf::from("(defaults)")));
        };
        let ferr = |reason: String| Error::File {
            path: p.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(p).map_err(|e| ferr(format!("cannot read: {e}")))?;
        let tf = toml::from_str(&text).map_err(|e| ferr(e.to_string()))?;
        Ok((tf, p.to_path_buf()))
    }

    /// The model file a run trains under: `[model]` and `[train]` over their defaults (unknown
    /// keys are errors), the image shape from the data `dims` (`[N, C, H, W]`) unless `[model]`
    /// sets it, in which case they must agree. `file` and `data` name the files in errors.
    pub fn model_file(&self, file: &Path, data: &Path, dims: &[usize]) -> Result<ModelFile> {
        let mut model: UNetConfig = strict(self.model.as_ref(), "model", file)?;
        let train: TrainConfig = strict(self.train.as_ref(), "train", file)?;
        let sets = |k: &str| self.model.as_ref().is_some_and(|t| t.contains_key(k));
        if dims.len() != 4 {
            return Err(Error::shape("training images", "[N, C, H, W]", dims));
        }
        if !sets("image_size") {
            model.image_size = [dims[2], dims[3]];
        }
        if !sets("in_channels") {
            model.in_channels = dims[1];
        }
        if [model.in_channels, model.image_size[0], model.image_size[1]] != dims[1..] {
            return Err(Error::File {
                path: data.to_path_buf(),
                reason: format!(
                    "images are [{}, {}, {}] (C, H, W) but [model] says in_channels = {}, image_size = {:?}",
                    dims[1], dims[2], dims[3], model.in_channels, model.image_size
                ),
            });
        }
        Ok(ModelFile {
            model,
            train,
            sigma_min: crate::nn::DEFAULT_SIGMA_MIN,
            sigma_max: crate::nn::DEFAULT_SIGMA_MAX,
            step: None,
        })
    }
}

/// A `[section]` of `file` as `T` over `T::default()`; a key `T` does not have is an error
/// listing the known ones.
pub fn strict<T: serde::de::DeserializeOwned + Serialize + Default>(
    t: Option<&toml::Table>,
    section: &str,
    file: &Path,
) -> Result<T> {
    let Some(t) = t else { return Ok(T::default()) };
    let err = |reason: String| Error::Config {
        file: file.to_path_buf(),
        field: section.into(),
        reason,
    };
    // Unknown keys are errors: compare against the fields the default serialises to.
    let known = toml::Table::try_from(T::default()).map_err(|e| err(e.to_string()))?;
    for k in t.keys() {
        if !known.contains_key(k) {
            return Err(err(format!(
                "unknown field `{k}` (known: {})",
                known.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    toml::Value::Table(t.clone())
        .try_into()
        .map_err(|e: toml::de::Error| err(e.to_string()))
}

/// `diffpost train`'s flags on the folder.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flags {
    /// Ignore the folder's checkpoint and start over.
    pub fresh: bool,
    /// Start over from step 0, replacing the folder's model, checkpoint and loss log.
    pub force: bool,
    /// The folder holds a model but no checkpoint: continue from its weights.
    pub resume_from_model: bool,
}

/// How a run starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// From step 0; `replaces_model`: the folder's model goes (`force`).
    Fresh { replaces_model: bool },
    /// From the folder's checkpoint.
    Checkpoint,
    /// From the folder's model weights at `step`, with a fresh optimizer state.
    Model { step: u64 },
}

fn mismatch_error(out: &Path, what: &str, fields: &[String]) -> Error {
    Error::File {
        path: out.to_path_buf(),
        reason: format!(
            "the {what} in this folder does not match the requested model:\n  {}\n\
             change the config to match, pass --force to start over (replacing the folder), or \
             choose another --out",
            fields.join("\n  ")
        ),
    }
}

/// Decides how a run into `out` under `mf` starts, or refuses it (see the module doc); call it
/// under the folder's lock.
pub fn start(out: &Path, flags: Flags, mf: &ModelFile) -> Result<Start> {
    let has_ckpt = out.join(CHECKPOINT_FILE).is_file();
    let has_model = ModelFile::exists(out);
    let refuse = |reason: String| Error::File {
        path: out.to_path_buf(),
        reason,
    };
    if flags.force {
        return Ok(Start::Fresh {
            replaces_model: has_model,
        });
    }
    if has_ckpt && !flags.fresh {
        let prev = ModelFile::read(out).map_err(|e| {
            refuse(format!(
                "has a checkpoint but no readable config.json; pass --force to start over: {e}"
            ))
        })?;
        let diff = prev.mismatch(mf, true);
        if !diff.is_empty() {
            return Err(mismatch_error(out, "checkpoint", &diff));
        }
        return Ok(Start::Checkpoint);
    }
    if has_ckpt || has_model {
        if flags.fresh {
            return Err(refuse(
                "holds a trained model; --fresh starts over and would replace it: add --force \
                 to do so (--force alone does the same), or choose another --out"
                    .into(),
            ));
        }
        if !flags.resume_from_model {
            let step = model_folder::trained_step(out)
                .ok()
                .flatten()
                .map(|s| format!(" at step {s}"))
                .unwrap_or_default();
            return Err(refuse(format!(
                "holds a trained model{step} (config.json + weights.safetensors) but no \
                 checkpoint to resume from. Pass --resume-from-model to continue training from its \
                 weights (fresh optimizer state, same architecture; the step count continues), or \
                 --force to start over from step 0 and replace it; or choose another --out"
            )));
        }
        let prev = ModelFile::read(out)?;
        let diff = prev.mismatch(mf, false);
        if !diff.is_empty() {
            return Err(mismatch_error(out, "model", &diff));
        }
        let step = model_folder::trained_step(out)?.unwrap_or(0);
        return Ok(Start::Model { step });
    }
    if flags.resume_from_model {
        return Err(refuse(
            "--resume-from-model needs a model there (config.json + weights.safetensors); \
             there is none"
                .into(),
        ));
    }
    Ok(Start::Fresh {
        replaces_model: false,
    })
}

/// Puts `trainer` (fresh) where `start` says the run begins, reading `out`; returns the loss log
/// the run continues. `log` gets a line saying where the run starts (none for a plain fresh one).
pub fn begin(
    trainer: &mut Trainer,
    out: &Path,
    start: Start,
    log: &mut dyn FnMut(&str),
) -> Result<LossLog> {
    Ok(match start {
        Start::Fresh { replaces_model } => {
            if replaces_model {
                log(&format!(
                    "starting over: the model in {} will be replaced",
                    out.display()
                ));
            }
            LossLog::new()
        }
        Start::Checkpoint => {
            trainer.resume(out)?;
            log(&format!(
                "resuming from step {} ({})",
                trainer.step_count(),
                out.join(CHECKPOINT_FILE).display()
            ));
            LossLog::read(out, trainer.step_count())
        }
        Start::Model { step } => {
            trainer.start_from_weights(&out.join(WEIGHTS_FILE), step)?;
            log(&format!(
                "resuming from the model's weights at step {step} (fresh optimizer state)"
            ));
            LossLog::read(out, step)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("diffpost-training-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn requested() -> ModelFile {
        let tf = TrainFile::default();
        tf.model_file(Path::new("unet.toml"), Path::new("d.npy"), &[4, 1, 8, 8])
            .unwrap()
    }

    /// A model folder: `config.json` of `mf` (at `step`), weights, optionally a checkpoint.
    fn write_model(dir: &Path, mf: &ModelFile, step: Option<u64>, ckpt: bool) {
        ModelFile { step, ..mf.clone() }.write(dir).unwrap();
        std::fs::write(dir.join(WEIGHTS_FILE), b"w").unwrap();
        if ckpt {
            std::fs::write(dir.join(CHECKPOINT_FILE), b"c").unwrap();
        }
    }

    fn flags(fresh: bool, force: bool, resume_from_model: bool) -> Flags {
        Flags {
            fresh,
            force,
            resume_from_model,
        }
    }

    fn err(r: Result<Start>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn an_empty_folder_starts_fresh_and_has_no_model_to_resume() {
        let dir = folder("empty");
        let mf = requested();
        assert_eq!(
            start(&dir, Flags::default(), &mf).unwrap(),
            Start::Fresh {
                replaces_model: false
            }
        );
        assert_eq!(
            start(&dir, flags(true, false, false), &mf).unwrap(),
            Start::Fresh {
                replaces_model: false
            }
        );
        let e = err(start(&dir, flags(false, false, true), &mf));
        assert!(e.contains("--resume-from-model needs a model there"), "{e}");
    }

    #[test]
    fn a_model_without_checkpoint_is_refused_unless_asked_for() {
        let dir = folder("model");
        let mf = requested();
        write_model(&dir, &mf, Some(7), false);
        let e = err(start(&dir, Flags::default(), &mf));
        assert!(e.contains("holds a trained model at step 7"), "{e}");
        assert!(
            e.contains("--resume-from-model") && e.contains("--force"),
            "{e}"
        );
        let e = err(start(&dir, flags(true, false, false), &mf));
        assert!(
            e.contains("--fresh starts over and would replace it"),
            "{e}"
        );
        assert_eq!(
            start(&dir, flags(false, false, true), &mf).unwrap(),
            Start::Model { step: 7 }
        );
        assert_eq!(
            start(&dir, flags(true, true, false), &mf).unwrap(),
            Start::Fresh {
                replaces_model: true
            }
        );
        // Another architecture: refused, naming the field.
        let mut other = mf.clone();
        other.model.base_channels += 8;
        let e = err(start(&dir, flags(false, false, true), &other));
        assert!(e.contains("the model in this folder does not match"), "{e}");
        assert!(e.contains("model.base_channels"), "{e}");
    }

    #[test]
    fn a_checkpoint_resumes_only_the_same_run() {
        let dir = folder("ckpt");
        let mf = requested();
        write_model(&dir, &mf, Some(4), true);
        assert_eq!(
            start(&dir, Flags::default(), &mf).unwrap(),
            Start::Checkpoint
        );
        // The seed and batch size fix the checkpoint's data stream.
        let mut other = mf.clone();
        other.train.seed += 1;
        let e = err(start(&dir, Flags::default(), &other));
        assert!(
            e.contains("the checkpoint in this folder does not match"),
            "{e}"
        );
        assert!(e.contains("train.seed"), "{e}");
        // --fresh would drop the model: needs --force.
        let e = err(start(&dir, flags(true, false, false), &mf));
        assert!(e.contains("add --force"), "{e}");
        assert_eq!(
            start(&dir, flags(false, true, false), &other).unwrap(),
            Start::Fresh {
                replaces_model: true
            }
        );
        // A checkpoint without a readable config.json.
        std::fs::write(dir.join(model_folder::CONFIG_FILE), "{").unwrap();
        let e = err(start(&dir, Flags::default(), &mf));
        assert!(
            e.contains("has a checkpoint but no readable config.json"),
            "{e}"
        );
    }

    #[test]
    fn the_config_is_strict_and_the_image_shape_comes_from_the_data() {
        let f = Path::new("unet.toml");
        let tf: TrainFile = toml::from_str("[model]\nbase_channels = 8\n").unwrap();
        let mf = tf
            .model_file(f, Path::new("d.npy"), &[3, 3, 16, 12])
            .unwrap();
        assert_eq!((mf.model.in_channels, mf.model.image_size), (3, [16, 12]));
        assert_eq!(mf.model.base_channels, 8);
        let tf: TrainFile = toml::from_str("[model]\nbase_chanels = 8\n").unwrap();
        let e = tf
            .model_file(f, Path::new("d.npy"), &[3, 3, 16, 12])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unet.toml: [model] unknown field `base_chanels`"),
            "{e}"
        );
        let tf: TrainFile = toml::from_str("[model]\nimage_size = [8, 8]\n").unwrap();
        let e = tf
            .model_file(f, Path::new("d.npy"), &[3, 1, 16, 12])
            .unwrap_err()
            .to_string();
        assert!(e.contains("d.npy: images are [1, 16, 12] (C, H, W)"), "{e}");
    }
}
