//! EDM preconditioning (Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based
//! Generative Models", Table 1) around a [`UNet`], exposed as a denoiser [`EdmDenoiser`] (the
//! library `diffpost` makes it a `prior::Denoiser`).
//!
//! `D(x, sigma) = c_skip x + c_out F(c_in x, c_noise)` with `c_skip = sd^2/(sigma^2 + sd^2)`,
//! `c_out = sigma sd / sqrt(sigma^2 + sd^2)`, `c_in = 1/sqrt(sigma^2 + sd^2)`,
//! `c_noise = ln(sigma)/4` and `sd = sigma_data` (0.5 for data in [-1, 1]). Samplers see only
//! `D` on flattened `[B, d]` batches; the image shape lives here.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use diffpost_core::{Error, Result};

use super::adapter::denoise_chunked;
use super::unet::{UNet, UNetConfig};

/// Smallest and largest noise level of EDM's training and sampling (`sigma_min`, `sigma_max`).
pub const DEFAULT_SIGMA_MIN: f64 = 0.002;
pub const DEFAULT_SIGMA_MAX: f64 = 80.0;
/// EDM's `sigma_data` for data in [-1, 1].
pub const DEFAULT_SIGMA_DATA: f64 = 0.5;

/// The preconditioning coefficients of EDM Table 1 at one noise level.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EdmCoefficients {
    pub c_skip: f64,
    pub c_out: f64,
    pub c_in: f64,
    pub c_noise: f64,
}

/// EDM Table 1 coefficients at `sigma > 0` for `sigma_data`.
pub fn edm_coefficients(sigma: f64, sigma_data: f64) -> EdmCoefficients {
    let s2 = sigma * sigma + sigma_data * sigma_data;
    EdmCoefficients {
        c_skip: sigma_data * sigma_data / s2,
        c_out: sigma * sigma_data / s2.sqrt(),
        c_in: 1.0 / s2.sqrt(),
        c_noise: sigma.ln() / 4.0,
    }
}

/// EDM loss weight `lambda(sigma) = (sigma^2 + sd^2) / (sigma sd)^2` (= `1/c_out^2`).
pub fn edm_loss_weight(sigma: f64, sigma_data: f64) -> f64 {
    (sigma * sigma + sigma_data * sigma_data) / (sigma * sigma_data).powi(2)
}

/// Preconditioned network on images with one noise level per sample: `x: [B, C, H, W]`,
/// `sigmas.len() == B`; computed in `x`'s dtype around the f32 network (training uses f32).
pub fn precond_forward(
    unet: &UNet,
    x: &Tensor,
    sigmas: &[f64],
    sigma_data: f64,
) -> candle_core::Result<Tensor> {
    let (b, _, _, _) = x.dims4()?;
    if sigmas.len() != b {
        candle_core::bail!("{} sigmas for a batch of {b}", sigmas.len())
    }
    let dev = x.device();
    let co: Vec<EdmCoefficients> = sigmas
        .iter()
        .map(|&s| edm_coefficients(s, sigma_data))
        .collect();
    let col = |f: fn(&EdmCoefficients) -> f64| -> candle_core::Result<Tensor> {
        Tensor::from_vec(co.iter().map(f).collect::<Vec<f64>>(), (b, 1, 1, 1), dev)?
            .to_dtype(x.dtype())
    };
    let (c_skip, c_out, c_in) = (col(|c| c.c_skip)?, col(|c| c.c_out)?, col(|c| c.c_in)?);
    let c_noise = Tensor::from_vec(
        co.iter().map(|c| c.c_noise as f32).collect::<Vec<f32>>(),
        b,
        dev,
    )?;
    let f = unet.forward(&x.broadcast_mul(&c_in)?.to_dtype(DType::F32)?, &c_noise)?;
    x.broadcast_mul(&c_skip)? + f.to_dtype(x.dtype())?.broadcast_mul(&c_out)?
}

/// A trained EDM model as a diffusion prior: `D(x, sigma)` on flattened `[B, C*H*W]` batches.
#[derive(Debug, Clone)]
pub struct EdmDenoiser {
    unet: UNet,
    cfg: UNetConfig,
    shape: [usize; 3],
    sigma_min: f64,
    sigma_max: f64,
    /// Where the network runs; sampler state stays on the CPU (f64) and is moved per call.
    device: Device,
    chunk: usize,
}

impl EdmDenoiser {
    /// Wraps a network whose weights live on `device` (CPU or CUDA; samplers still see CPU
    /// tensors); trained range `[DEFAULT_SIGMA_MIN, DEFAULT_SIGMA_MAX]`, image shape from
    /// the config.
    pub fn new(unet: UNet, device: Device) -> Result<Self> {
        let cfg = unet.config().clone();
        cfg.validate()?;
        Ok(Self {
            shape: cfg.image_shape(),
            unet,
            cfg,
            sigma_min: DEFAULT_SIGMA_MIN,
            sigma_max: DEFAULT_SIGMA_MAX,
            device,
            chunk: 64,
        })
    }

    /// Sets the trained noise range (`0 < sigma_min < sigma_max`, finite).
    pub fn with_sigma_range(mut self, sigma_min: f64, sigma_max: f64) -> Result<Self> {
        if !(sigma_min.is_finite() && sigma_min > 0.0) {
            return Err(Error::param("sigma_min", "must be finite and positive"));
        }
        if !(sigma_max.is_finite() && sigma_max > sigma_min) {
            return Err(Error::param(
                "sigma_max",
                "must be finite and above sigma_min",
            ));
        }
        self.sigma_min = sigma_min;
        self.sigma_max = sigma_max;
        Ok(self)
    }

    /// Rows per network call inside [`Self::denoise`] (bounds memory; results do not depend
    /// on it beyond float rounding).
    pub fn with_chunk_size(mut self, chunk: usize) -> Self {
        self.chunk = chunk.max(1);
        self
    }

    /// Builds the network from `weights` (name -> tensor, as written by the trainer's `export`).
    pub fn from_tensors(
        cfg: &UNetConfig,
        weights: std::collections::HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Self> {
        let vb = VarBuilder::from_tensors(weights, DType::F32, device);
        let unet = UNet::new(cfg, vb)?;
        Self::new(unet, device.clone())
    }

    /// Loads weights from a safetensors file for architecture `cfg`.
    pub fn from_safetensors(
        cfg: UNetConfig,
        path: &Path,
        device: &Device,
        sigma_min: f64,
        sigma_max: f64,
    ) -> Result<Self> {
        let ferr = |reason: String| Error::File {
            path: path.to_path_buf(),
            reason,
        };
        cfg.validate()?;
        diffpost_core::io::file_len(path).map_err(|r| ferr(format!("model weights: {r}")))?;
        let weights = candle_core::safetensors::load(path, device)
            .map_err(|e| ferr(format!("cannot read safetensors: {e}")))?;
        let vb = VarBuilder::from_tensors(weights, DType::F32, device);
        let unet = UNet::new(&cfg, vb).map_err(|e| {
            ferr(format!(
                "weights do not match the configured architecture: {e}"
            ))
        })?;
        Self::new(unet, device.clone())?.with_sigma_range(sigma_min, sigma_max)
    }

    /// Loads `dir/weights.safetensors` with the default trained range.
    pub fn load(dir: &Path, cfg: UNetConfig, device: &Device) -> Result<Self> {
        Self::from_safetensors(
            cfg,
            &dir.join("weights.safetensors"),
            device,
            DEFAULT_SIGMA_MIN,
            DEFAULT_SIGMA_MAX,
        )
    }

    pub fn config(&self) -> &UNetConfig {
        &self.cfg
    }

    /// Per-sample image shape `[C, H, W]` (`denoise` works on the flattened `[B, C*H*W]`).
    pub fn image_shape(&self) -> [usize; 3] {
        self.shape
    }

    /// Where the network runs (see [`Self::new`]).
    pub fn network_device(&self) -> &Device {
        &self.device
    }

    pub fn unet(&self) -> &UNet {
        &self.unet
    }

    pub fn sigma_data(&self) -> f64 {
        self.cfg.sigma_data
    }

    /// Entries per sample, `C*H*W` (the flattened image).
    pub fn dim(&self) -> usize {
        self.shape.iter().product()
    }

    /// The trained noise range `[sigma_min, sigma_max]` ([`Self::with_sigma_range`]);
    /// [`Self::denoise`] refuses a sigma outside it.
    pub fn sigma_range(&self) -> (f64, f64) {
        (self.sigma_min, self.sigma_max)
    }

    /// `D(x, sigma)` on `x: [B, C*H*W]` (f64 or f32; the result has `x`'s dtype), moved to the
    /// network's device chunk by chunk. Differentiable in `x`.
    pub fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        if !(sigma >= self.sigma_min && sigma <= self.sigma_max) {
            return Err(Error::SigmaOutOfRange {
                sigma,
                min: self.sigma_min,
                max: self.sigma_max,
            });
        }
        let d = self.dim();
        let dims = x.dims();
        if dims.len() != 2 || dims[1] != d {
            return Err(Error::shape("x", format!("[B, {d}]"), dims));
        }
        let sigmas = vec![sigma; self.chunk.min(dims[0])];
        denoise_chunked(
            x,
            self.shape,
            self.chunk,
            &self.device,
            || "the EDM UNet".into(),
            |xc| {
                let n = xc.dim(0)?;
                Ok(precond_forward(
                    &self.unet,
                    xc,
                    &sigmas[..n],
                    self.cfg.sigma_data,
                )?)
            },
        )
    }
}
