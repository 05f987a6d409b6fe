//! `[prior]`: analytic priors (Gaussian mixtures), trained model folders and pretrained
//! checkpoints (guided-diffusion, diffusers), with an optional score perturbation.

use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::io::resolve;
use crate::nn::diffusers_unet::UNet2DConfig;
use crate::nn::guided::GuidedUNetConfig;
use crate::nn::pretrained::{diffusers_scheduler, load_diffusers, load_guided, read_json};
use crate::nn::vp::{BetaSchedule, Prediction, TimestepMode, VpDenoiser, VpSchedule};
use crate::prior::perturb::ErrorNorms;
use crate::prior::{Denoiser, GaussianMixture, Perturbation, Perturbed};
use crate::{Error, Result};

/// `[prior.perturb]`: an error field added to the score at every sigma (robustness studies).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PerturbSpec {
    /// `e(x) = -kappa b(r) (r - r0)(x - c)`; `r0 = (r_lo + r_hi)/2`, `w = 0.02` by default.
    ShellTrap {
        kappa: f64,
        r_lo: f64,
        r_hi: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        r0: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        w: Option<f64>,
    },
    /// A smooth bounded field of relative RMS size `rel`.
    Smooth {
        rel: f64,
        #[serde(default = "one")]
        freq: f64,
        #[serde(default)]
        seed: u64,
    },
}

fn one() -> f64 {
    1.0
}

impl PerturbSpec {
    fn build(&self) -> Result<Perturbation> {
        Ok(match *self {
            PerturbSpec::ShellTrap {
                kappa,
                r_lo,
                r_hi,
                r0,
                w,
            } => Perturbation::shell_trap(kappa, r_lo, r_hi, r0, w)?,
            PerturbSpec::Smooth { rel, freq, seed } => Perturbation::Smooth { rel, freq, seed },
        })
    }
}

/// `kind = "gmm"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GmmPrior {
    /// `.npz` with `weights [K]`, `means [K, d]`, `covs [K, d, d]`.
    pub path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perturb: Option<PerturbSpec>,
}

/// `kind = "isotropic"`: `N(mean 1, var I_d)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IsotropicPrior {
    pub d: usize,
    #[serde(default = "one")]
    pub var: f64,
    #[serde(default)]
    pub mean: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perturb: Option<PerturbSpec>,
}

/// `kind = "unet"`: a model folder written by `diffpost train`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnetPrior {
    pub path: PathBuf,
}

/// `kind = "guided-diffusion"`: a guided-diffusion / DPS state dict (`.pt` or `.safetensors`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuidedPrior {
    pub path: PathBuf,
    /// "dps-ffhq256" | "adm-imagenet256-uncond".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// A JSON file of `create_model`'s arguments, instead of a preset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<PathBuf>,
    /// `.pt` files: the key of a nested state dict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// "linear" (default) or "cosine" betas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_schedule: Option<String>,
    /// Training timesteps (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diffusion_steps: Option<usize>,
    /// sigma -> timestep: "interpolate" (default) or "nearest".
    #[serde(default = "interpolate")]
    pub timestep: String,
    /// RMS per coordinate of the data the network models (default 1: images in `[-1, 1]`),
    /// the scale of the divergence check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_scale: Option<f64>,
}

/// `kind = "diffusers-unet"`: a diffusers `UNet2DModel` folder or weights file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiffusersPrior {
    pub path: PathBuf,
    /// "ddpm-cifar10-32" | "ddpm-celebahq-256".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// A diffusers UNet `config.json`, instead of a preset or the folder's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default = "interpolate")]
    pub timestep: String,
    /// As for guided-diffusion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_scale: Option<f64>,
}

fn interpolate() -> String {
    "interpolate".into()
}

/// `[prior]`, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PriorSpec {
    Gmm(GmmPrior),
    Isotropic(IsotropicPrior),
    Unet(UnetPrior),
    GuidedDiffusion(GuidedPrior),
    DiffusersUnet(DiffusersPrior),
}

/// A loaded prior.
pub struct LoadedPrior {
    /// What the samplers see (the GMM, the GMM with a perturbed score, or a network).
    pub denoiser: Box<dyn Denoiser>,
    /// The analytic prior (exact posteriors, MALA, exact-prior init); `None` for networks.
    pub analytic: Option<GaussianMixture>,
    pub perturbed: bool,
    /// L2/L4 sizes of the score error under the prior (perturbed priors only).
    pub error_norms: Option<ErrorNorms>,
    /// The perturbation with its defaults resolved.
    pub perturbation: Option<Perturbation>,
    /// `[C, H, W]` for image priors.
    pub image_shape: Option<[usize; 3]>,
}

fn check_data_scale(s: Option<f64>) -> Result<()> {
    match s {
        Some(v) if !(v > 0.0) || !v.is_finite() => Err(Error::param(
            "prior.data_scale",
            format!("must be finite and > 0, got {v}"),
        )),
        _ => Ok(()),
    }
}

fn timestep_mode(s: &str) -> Result<TimestepMode> {
    match s {
        "interpolate" => Ok(TimestepMode::Interpolate),
        "nearest" => Ok(TimestepMode::Nearest),
        other => Err(Error::param(
            "prior.timestep",
            format!("expected \"interpolate\" or \"nearest\", got \"{other}\""),
        )),
    }
}

impl PriorSpec {
    /// Checks that need no file.
    pub fn validate(&self) -> Result<()> {
        match self {
            PriorSpec::Isotropic(p) => {
                if p.d == 0 {
                    return Err(Error::param("prior.d", "d must be >= 1"));
                }
                crate::limits::check_alloc("prior.d", (p.d as u128).saturating_mul(8 * 8))?;
                if !(p.var > 0.0) || !p.var.is_finite() {
                    return Err(Error::param(
                        "prior.var",
                        format!("must be > 0, got {}", p.var),
                    ));
                }
                if !p.mean.is_finite() {
                    return Err(Error::param(
                        "prior.mean",
                        format!("must be finite, got {}", p.mean),
                    ));
                }
            }
            PriorSpec::GuidedDiffusion(g) => {
                timestep_mode(&g.timestep)?;
                check_data_scale(g.data_scale)?;
                if g.preset.is_some() && g.config.is_some() {
                    return Err(Error::param(
                        "prior.preset",
                        "give `preset` or `config`, not both",
                    ));
                }
                if g.preset.is_none() && g.config.is_none() {
                    return Err(Error::param(
                        "prior.preset",
                        "kind = \"guided-diffusion\" needs `preset` (\"dps-ffhq256\", \
                         \"adm-imagenet256-uncond\") or `config` (a JSON file of create_model's arguments)",
                    ));
                }
                if let Some(p) = &g.preset {
                    GuidedUNetConfig::preset(p)?;
                }
                match g.noise_schedule.as_deref() {
                    None | Some("linear") | Some("cosine") => {}
                    Some(other) => {
                        return Err(Error::param(
                            "prior.noise_schedule",
                            format!("expected \"linear\" or \"cosine\", got \"{other}\""),
                        ))
                    }
                }
                if g.diffusion_steps == Some(0) {
                    return Err(Error::param("prior.diffusion_steps", "must be >= 1"));
                }
            }
            PriorSpec::DiffusersUnet(g) => {
                timestep_mode(&g.timestep)?;
                check_data_scale(g.data_scale)?;
                if g.preset.is_some() && g.config.is_some() {
                    return Err(Error::param(
                        "prior.preset",
                        "give `preset` or `config`, not both",
                    ));
                }
                if let Some(p) = &g.preset {
                    UNet2DConfig::preset(p)?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The config field to blame for a load error.
    pub(crate) fn error_field(&self, e: &Error) -> &'static str {
        match (self, e) {
            (PriorSpec::Gmm(_) | PriorSpec::Unet(_), Error::File { .. }) => "prior.path",
            (PriorSpec::Gmm(_) | PriorSpec::Isotropic(_), Error::InvalidParam { .. }) => {
                "prior.perturb"
            }
            _ => "prior",
        }
    }

    /// Loads the prior; files relative to `dir`, networks on `device`.
    pub fn load(&self, dir: &Path, device: &Device) -> Result<LoadedPrior> {
        let analytic = |g: GaussianMixture, perturb: &Option<PerturbSpec>| -> Result<LoadedPrior> {
            match perturb {
                None => Ok(LoadedPrior {
                    denoiser: Box::new(g.clone()),
                    analytic: Some(g),
                    perturbed: false,
                    error_norms: None,
                    perturbation: None,
                    image_shape: None,
                }),
                Some(p) => {
                    let kind = p.build()?;
                    let pert = Perturbed::new(Box::new(g.clone()), &g, kind.clone())?;
                    let norms = pert.error_norms(&g, 20_000)?;
                    Ok(LoadedPrior {
                        denoiser: Box::new(pert),
                        analytic: Some(g),
                        perturbed: true,
                        error_norms: Some(norms),
                        perturbation: Some(kind),
                        image_shape: None,
                    })
                }
            }
        };
        let network = |den: Box<dyn Denoiser>, shape: [usize; 3]| LoadedPrior {
            denoiser: den,
            analytic: None,
            perturbed: false,
            error_norms: None,
            perturbation: None,
            image_shape: Some(shape),
        };
        match self {
            PriorSpec::Gmm(p) => analytic(
                GaussianMixture::from_npz(resolve(dir, &p.path))?,
                &p.perturb,
            ),
            PriorSpec::Isotropic(p) => analytic(
                GaussianMixture::isotropic(vec![p.mean; p.d], p.var)?,
                &p.perturb,
            ),
            PriorSpec::Unet(p) => {
                let m = crate::nn::model_folder::load(&resolve(dir, &p.path), device)?;
                let shape = m.image_shape();
                Ok(network(Box::new(m), shape))
            }
            PriorSpec::GuidedDiffusion(g) => {
                let cfg = match (&g.preset, &g.config) {
                    (Some(p), _) => GuidedUNetConfig::preset(p)?,
                    (None, Some(c)) => read_json(&resolve(dir, c), "guided-diffusion config")?,
                    (None, None) => unreachable!("validated"),
                };
                let steps = g.diffusion_steps.unwrap_or(1000);
                let betas = match g.noise_schedule.as_deref() {
                    Some("cosine") => BetaSchedule::Cosine { s: 0.008 },
                    _ => BetaSchedule::guided_linear(steps),
                };
                let schedule = VpSchedule::new(&betas, steps)?;
                let net = load_guided(&resolve(dir, &g.path), &cfg, g.key.as_deref(), device)?;
                let den =
                    VpDenoiser::new(Box::new(net), schedule, Prediction::Epsilon, device.clone())
                        .with_timestep_mode(timestep_mode(&g.timestep)?)
                        .with_data_scale(g.data_scale.unwrap_or(1.0));
                let shape = den.image_shape();
                Ok(network(Box::new(den), shape))
            }
            PriorSpec::DiffusersUnet(g) => {
                let cfg: Option<UNet2DConfig> = match (&g.preset, &g.config) {
                    (Some(p), _) => Some(UNet2DConfig::preset(p)?),
                    (None, Some(c)) => Some(read_json(&resolve(dir, c), "diffusers UNet config")?),
                    (None, None) => None,
                };
                let (net, files) =
                    load_diffusers(&resolve(dir, &g.path), cfg, g.key.as_deref(), device)?;
                let sched = diffusers_scheduler(&files)?;
                let (schedule, prediction) = sched.to_vp().map_err(|e| Error::File {
                    path: files
                        .scheduler
                        .clone()
                        .unwrap_or_else(|| PathBuf::from("scheduler")),
                    reason: e.to_string(),
                })?;
                let den = VpDenoiser::new(Box::new(net), schedule, prediction, device.clone())
                    .with_timestep_mode(timestep_mode(&g.timestep)?)
                    .with_data_scale(g.data_scale.unwrap_or(1.0));
                let shape = den.image_shape();
                Ok(network(Box::new(den), shape))
            }
        }
    }
}
