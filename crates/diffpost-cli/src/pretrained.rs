//! `[prior] kind = "guided-diffusion" | "diffusers-unet"`: pretrained checkpoints as priors.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::Device;
use diffpost::nn::diffusers_unet::UNet2DConfig;
use diffpost::nn::guided::GuidedUNetConfig;
use diffpost::nn::pretrained::{diffusers_scheduler, load_diffusers, load_guided, read_json};
use diffpost::nn::vp::{BetaSchedule, Prediction, TimestepMode, VpDenoiser, VpSchedule};

use crate::config::{resolve, PriorSection};

fn timestep_mode(pr: &PriorSection) -> Result<TimestepMode> {
    Ok(match pr.timestep.as_deref() {
        None | Some("interpolate") => TimestepMode::Interpolate,
        Some("nearest") => TimestepMode::Nearest,
        Some(other) => bail!("`timestep` = \"{other}\": expected \"interpolate\" or \"nearest\""),
    })
}

/// Builds the VP denoiser described by `[prior]` (paths relative to `dir`), network on `device`.
pub fn load_prior(pr: &PriorSection, dir: &Path, device: &Device) -> Result<VpDenoiser> {
    let path = resolve(
        dir,
        pr.path.as_ref().ok_or_else(|| {
            anyhow!(
                "`path` (the checkpoint) is required for kind = \"{}\"",
                pr.kind
            )
        })?,
    );
    let mode = timestep_mode(pr)?;
    let den = match pr.kind.as_str() {
        "guided-diffusion" => {
            let cfg = match (&pr.preset, &pr.config) {
                (Some(_), Some(_)) => bail!("give `preset` or `config`, not both"),
                (Some(p), None) => GuidedUNetConfig::preset(p).context("`preset`")?,
                (None, Some(c)) => read_json(&resolve(dir, c), "guided-diffusion config")?,
                (None, None) => bail!(
                    "kind = \"guided-diffusion\" needs `preset` (\"dps-ffhq256\", \
                     \"adm-imagenet256-uncond\") or `config` (a JSON file of create_model's arguments)"
                ),
            };
            let steps = pr.diffusion_steps.unwrap_or(1000);
            let betas = match pr.noise_schedule.as_deref() {
                None | Some("linear") => BetaSchedule::guided_linear(steps),
                Some("cosine") => BetaSchedule::Cosine { s: 0.008 },
                Some(other) => {
                    bail!("`noise_schedule` = \"{other}\": expected \"linear\" or \"cosine\"")
                }
            };
            let schedule = VpSchedule::new(&betas, steps).context("`noise_schedule`")?;
            let net = load_guided(&path, &cfg, pr.key.as_deref(), device)?;
            VpDenoiser::new(Box::new(net), schedule, Prediction::Epsilon, device.clone())
        }
        "diffusers-unet" => {
            if pr.noise_schedule.is_some() || pr.diffusion_steps.is_some() {
                bail!(
                    "`noise_schedule`/`diffusion_steps` do not apply to diffusers models: their \
                     scheduler/scheduler_config.json is read (DDPM defaults without one)"
                );
            }
            let cfg: Option<UNet2DConfig> = match (&pr.preset, &pr.config) {
                (Some(_), Some(_)) => bail!("give `preset` or `config`, not both"),
                (Some(p), None) => Some(UNet2DConfig::preset(p).context("`preset`")?),
                (None, Some(c)) => Some(read_json(&resolve(dir, c), "diffusers UNet config")?),
                (None, None) => None,
            };
            let (net, files) = load_diffusers(&path, cfg, pr.key.as_deref(), device)?;
            let sched = diffusers_scheduler(&files)?;
            let (schedule, prediction) = sched.to_vp().with_context(|| {
                files
                    .scheduler
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "scheduler".into())
            })?;
            VpDenoiser::new(Box::new(net), schedule, prediction, device.clone())
        }
        other => bail!("not a pretrained kind: {other}"),
    };
    Ok(den.with_timestep_mode(mode))
}

/// `cpu` or `cuda[:N]` (the latter needs a build with `--features cuda`).
pub fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal: usize = s
                .strip_prefix("cuda:")
                .map(|n| n.parse())
                .transpose()
                .map_err(|_| anyhow!("--device {s}: expected cuda or cuda:N"))?
                .unwrap_or(0);
            Device::new_cuda(ordinal).map_err(|e| {
                anyhow!(
                    "--device {s}: {e} (CUDA needs a build with `--features cuda` and an NVIDIA GPU)"
                )
            })
        }
        other => bail!("--device {other}: expected cpu, cuda or cuda:N"),
    }
}
