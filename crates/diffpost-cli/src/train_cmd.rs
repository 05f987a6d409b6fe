//! `diffpost train`: denoising score matching of the UNet prior, with checkpoints and resume.
//!
//! A model folder holds `config.json` (`{"model": UNetConfig, "train": TrainConfig, "sigma_min",
//! "sigma_max"}`), `weights.safetensors` (EMA weights, refreshed at every checkpoint) and
//! `checkpoint.safetensors` (weights, EMA, Adam moments, step: everything a resume needs).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Device;
use diffpost::nn::model_folder::ModelFile;
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

pub fn train(
    data: &Path,
    config: Option<&Path>,
    out: &Path,
    fresh: bool,
    quiet: bool,
) -> Result<()> {
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
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create", out.display()))?;
    let mf = ModelFile {
        model: model.clone(),
        train: train.clone(),
        sigma_min: nn::DEFAULT_SIGMA_MIN,
        sigma_max: nn::DEFAULT_SIGMA_MAX,
    };
    let ckpt = out.join(nn::train::CHECKPOINT_FILE);
    let mut trainer = Trainer::new(model.clone(), train.clone(), &images, &device)?;
    if ckpt.exists() && !fresh {
        if !ModelFile::read(out)?.resumable_as(&mf) {
            bail!(
                "{}: a checkpoint of a different model or seed/batch size exists; use --fresh to start over or another --out",
                out.display()
            );
        }
        trainer.resume(out)?;
        if !quiet {
            eprintln!(
                "resuming from step {} ({})",
                trainer.step_count(),
                ckpt.display()
            );
        }
    }
    mf.write(out)?;
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
    diffpost::nn::model_folder::train_into(
        &mut trainer,
        out,
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
