//! `diffpost train`: denoising score matching of the UNet prior, with checkpoints and resume.
//!
//! A model folder holds `config.json` (`{"model": UNetConfig, "train": TrainConfig, "sigma_min",
//! "sigma_max", "step"}`), `weights.safetensors` (EMA weights), `loss.txt` and
//! `checkpoint.safetensors` (weights, EMA, Adam moments, step: everything a resume needs), all
//! committed together at every checkpoint ([`diffpost::nn::model_folder`]).
//!
//! What happens to `--out`:
//! - empty or new: a run from step 0;
//! - a checkpoint: resumed (same architecture, seed and batch size, else an error naming the
//!   differing fields);
//! - a model without a checkpoint (e.g. a shipped one): refused unless `--resume-from-model`
//!   (continue from its weights with a fresh optimizer state; same architecture) or `--force`;
//! - `--force`: a run from step 0 that replaces the folder's model, checkpoint and loss log;
//!   `--fresh` (ignore the checkpoint) also starts over and so needs `--force` when the folder
//!   holds a model.
//!
//! A folder holding anything else than these files is refused either way (it is replaced as a
//! whole at every checkpoint).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Device;
use diffpost::nn::model_folder::{self, LossLog, ModelFile};
use diffpost::nn::{self, TrainConfig, Trainer, UNetConfig};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

/// `unet.toml`: `[model]` (architecture) and `[train]` (optimisation), both optional.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainFile {
    #[serde(default)]
    pub model: Option<toml::Table>,
    #[serde(default)]
    pub train: Option<toml::Table>,
}

fn strict<T: serde::de::DeserializeOwned + Serialize + Default>(
    t: Option<&toml::Table>,
    section: &str,
    file: &Path,
) -> Result<T> {
    let Some(t) = t else { return Ok(T::default()) };
    // Unknown keys are errors: compare against the fields the default serialises to.
    let known = toml::Table::try_from(T::default()).map_err(|e| anyhow!("{e}"))?;
    for k in t.keys() {
        if !known.contains_key(k) {
            bail!(
                "{}: [{section}] unknown field `{k}` (known: {})",
                file.display(),
                known.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
    }
    toml::Value::Table(t.clone())
        .try_into()
        .map_err(|e| anyhow!("{}: [{section}] {e}", file.display()))
}

/// `diffpost train`'s options.
pub struct Opts<'a> {
    pub data: &'a Path,
    pub config: Option<&'a Path>,
    pub out: &'a Path,
    pub fresh: bool,
    pub force: bool,
    pub resume_from_model: bool,
    pub quiet: bool,
}

/// How a run starts, decided from `--out` and the flags.
enum Start {
    Fresh,
    Checkpoint,
    Model { step: u64 },
}

fn mismatch_error(out: &Path, what: &str, fields: &[String]) -> anyhow::Error {
    anyhow!(
        "{}: the {what} in this folder does not match the requested model:\n  {}\n\
         change the config to match, pass --force to start over (replacing the folder), or \
         choose another --out",
        out.display(),
        fields.join("\n  ")
    )
}

/// Decides how the run starts; called under the folder's lock.
fn start(o: &Opts, mf: &ModelFile) -> Result<Start> {
    let out = o.out;
    let has_ckpt = out.join(nn::train::CHECKPOINT_FILE).is_file();
    let has_model = ModelFile::exists(out);
    if o.force {
        return Ok(Start::Fresh);
    }
    if has_ckpt && !o.fresh {
        let prev = ModelFile::read(out).with_context(|| {
            format!(
                "{}: has a checkpoint but no readable config.json; pass --force to start over",
                out.display()
            )
        })?;
        let diff = prev.mismatch(mf, true);
        if !diff.is_empty() {
            return Err(mismatch_error(out, "checkpoint", &diff));
        }
        return Ok(Start::Checkpoint);
    }
    if has_ckpt || has_model {
        if o.fresh {
            bail!(
                "{}: holds a trained model; --fresh starts over and would replace it: add --force \
                 to do so (--force alone does the same), or choose another --out",
                out.display()
            );
        }
        if !o.resume_from_model {
            let step = model_folder::trained_step(out)
                .ok()
                .flatten()
                .map(|s| format!(" at step {s}"))
                .unwrap_or_default();
            bail!(
                "{}: holds a trained model{step} (config.json + weights.safetensors) but no \
                 checkpoint to resume from. Pass --resume-from-model to continue training from its \
                 weights (fresh optimizer state, same architecture; the step count continues), or \
                 --force to start over from step 0 and replace it; or choose another --out",
                out.display()
            );
        }
        let prev = ModelFile::read(out)?;
        let diff = prev.mismatch(mf, false);
        if !diff.is_empty() {
            return Err(mismatch_error(out, "model", &diff));
        }
        let step = model_folder::trained_step(out)?.unwrap_or(0);
        return Ok(Start::Model { step });
    }
    if o.resume_from_model {
        bail!(
            "{}: --resume-from-model needs a model there (config.json + weights.safetensors); \
             there is none",
            out.display()
        );
    }
    Ok(Start::Fresh)
}

pub fn train(o: &Opts) -> Result<()> {
    let (data, config, out, quiet) = (o.data, o.config, o.out, o.quiet);
    let device = Device::Cpu;
    let images = nn::load_images_npy(data).with_context(|| format!("--data {}", data.display()))?;
    let dims = images.dims().to_vec();
    let (tf, cfg_path): (TrainFile, PathBuf) = match config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("{}: cannot read", p.display()))?;
            (
                toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", p.display()))?,
                p.to_path_buf(),
            )
        }
        None => (TrainFile::default(), PathBuf::from("(defaults)")),
    };
    let mut model: UNetConfig = strict(tf.model.as_ref(), "model", &cfg_path)?;
    let train: TrainConfig = strict(tf.train.as_ref(), "train", &cfg_path)?;
    // The image shape comes from the data unless the config sets it; they must agree.
    let set_size = tf
        .model
        .as_ref()
        .is_some_and(|t| t.contains_key("image_size"));
    let set_ch = tf
        .model
        .as_ref()
        .is_some_and(|t| t.contains_key("in_channels"));
    if !set_size {
        model.image_size = [dims[2], dims[3]];
    }
    if !set_ch {
        model.in_channels = dims[1];
    }
    if [model.in_channels, model.image_size[0], model.image_size[1]] != dims[1..] {
        bail!(
            "{}: images are [{}, {}, {}] (C, H, W) but [model] says in_channels = {}, image_size = {:?}",
            data.display(),
            dims[1],
            dims[2],
            dims[3],
            model.in_channels,
            model.image_size
        );
    }
    let mf = ModelFile {
        model: model.clone(),
        train: train.clone(),
        sigma_min: nn::DEFAULT_SIGMA_MIN,
        sigma_max: nn::DEFAULT_SIGMA_MAX,
        step: None,
    };
    // The lock is held until the end; every checkpoint commits the folder as one.
    let mut staging = crate::commands::stage(out, model_folder::MODEL_OUTPUTS)?;
    let how = start(o, &mf)?;
    let mut trainer = Trainer::new(model.clone(), train.clone(), &images, &device)?;
    let log = match how {
        Start::Fresh => {
            if !quiet && (o.force || o.fresh) && ModelFile::exists(out) {
                eprintln!(
                    "starting over: the model in {} will be replaced",
                    out.display()
                );
            }
            LossLog::new()
        }
        Start::Checkpoint => {
            trainer.resume(out)?;
            if !quiet {
                eprintln!(
                    "resuming from step {} ({})",
                    trainer.step_count(),
                    out.join(nn::train::CHECKPOINT_FILE).display()
                );
            }
            LossLog::read(out, trainer.step_count())
        }
        Start::Model { step } => {
            trainer.start_from_weights(&out.join(nn::train::WEIGHTS_FILE), step)?;
            if !quiet {
                eprintln!(
                    "resuming from the model's weights at step {step} (fresh optimizer state)"
                );
            }
            LossLog::read(out, step)
        }
    };
    if trainer.step_count() >= train.steps {
        eprintln!(
            "nothing to train: {} is at step {} and [train] steps = {}; raise steps to continue",
            out.display(),
            trainer.step_count(),
            train.steps
        );
        return Ok(());
    }
    if !quiet {
        eprintln!(
            "training a {}-parameter UNet on {} images {:?} for {} steps (batch {})",
            trainer.num_params(),
            dims[0],
            &dims[1..],
            train.steps,
            train.batch_size
        );
    }
    let bar = (!quiet).then(|| {
        let b = ProgressBar::new(train.steps);
        b.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} loss {msg} eta {eta}")
                .unwrap()
                .progress_chars("=> "),
        );
        b.set_position(trainer.step_count());
        b
    });
    model_folder::train_into(
        &mut trainer,
        &mut staging,
        &mf,
        log,
        train.steps,
        train.checkpoint_every,
        |step, avg| {
            if let Some(b) = &bar {
                b.set_position(step);
                b.set_message(format!("{avg:.4}"));
            }
        },
    )?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if !quiet {
        eprintln!(
            "done: {} steps; EMA weights in {}",
            trainer.step_count(),
            out.join(nn::train::WEIGHTS_FILE).display()
        );
    }
    Ok(())
}
