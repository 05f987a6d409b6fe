//! Neural diffusion priors (candle): a small UNet ([`unet`]) with EDM preconditioning ([`edm`]),
//! its training by denoising score matching ([`train`]), and pretrained networks users bring
//! ([`pretrained`], the VP adapter [`vp`]). Models are f32; samplers see f64 `D(x, sigma)` on
//! flattened `[B, C*H*W]` batches: the library `diffpost` makes [`EdmDenoiser`] and
//! [`vp::VpDenoiser`] its `prior::Denoiser` (`diffpost::prior::network`) and re-exports this
//! crate as `diffpost::nn`.
// `!(x > 0.0)` is deliberate throughout: it also rejects NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

mod adapter;
pub mod checkpoint;
pub mod diffusers_config;
pub mod diffusers_unet;
pub mod edm;
pub mod guided;
pub mod guided_config;
pub mod kernels;
pub(crate) mod layers;
pub mod model_folder;
pub mod params;
pub mod pretrained;
pub mod torch_zip;
pub mod train;
pub mod unet;
pub mod vp;

pub use adapter::sampler_device;
pub use edm::{
    edm_coefficients, edm_loss_weight, precond_forward, EdmCoefficients, EdmDenoiser,
    DEFAULT_SIGMA_DATA, DEFAULT_SIGMA_MAX, DEFAULT_SIGMA_MIN,
};
pub use params::SeededParams;
pub use train::{held_out_loss_per_sigma, load_images_npy, TrainConfig, Trainer};
pub use unet::{init_unet, param_count, UNet, UNetConfig};
