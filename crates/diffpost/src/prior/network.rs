//! The neural networks of [`crate::nn`] as priors: [`EdmDenoiser`] (a trained EDM model) and
//! [`VpDenoiser`] (a pretrained VP/DDPM network) are [`Denoiser`]s through the methods the
//! networks define themselves (`dim`, `denoise`, the trained sigma range).
//!
//! Device convention ([`crate::nn::sampler_device`]): the network runs on its own device (CPU or
//! CUDA); sampler state stays on the CPU in f64, so both report the CPU as their device.

use candle_core::{Device, Tensor};

use super::Denoiser;
use crate::nn::edm::EdmDenoiser;
use crate::nn::sampler_device;
use crate::nn::vp::VpDenoiser;
use crate::Result;

impl Denoiser for EdmDenoiser {
    fn dim(&self) -> usize {
        EdmDenoiser::dim(self)
    }

    /// The CPU (sampler state in f64), whatever device the network runs on.
    fn device(&self) -> Device {
        sampler_device()
    }

    /// `x: [B, C*H*W]` (f64 or f32; the result has `x`'s dtype), moved to the network's device
    /// chunk by chunk. Differentiable in `x`.
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        EdmDenoiser::denoise(self, x, sigma)
    }

    fn sigma_range(&self) -> (f64, f64) {
        EdmDenoiser::sigma_range(self)
    }

    /// Images in `[-1, 1]`.
    fn scale(&self) -> f64 {
        1.0
    }

    fn sigma_max_hint(&self) -> f64 {
        EdmDenoiser::sigma_range(self).1
    }

    fn lipschitz(&self) -> Option<f64> {
        None
    }
}

impl Denoiser for VpDenoiser {
    fn dim(&self) -> usize {
        VpDenoiser::dim(self)
    }

    /// The CPU (sampler state in f64), whatever device the network runs on.
    fn device(&self) -> Device {
        sampler_device()
    }

    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        VpDenoiser::denoise(self, x, sigma)
    }

    fn sigma_range(&self) -> (f64, f64) {
        self.schedule().sigma_range()
    }

    /// Images in `[-1, 1]` unless set ([`VpDenoiser::with_data_scale`]).
    fn scale(&self) -> f64 {
        self.data_scale()
    }

    fn sigma_max_hint(&self) -> f64 {
        self.schedule().sigma_range().1
    }
}
