//! Neural diffusion priors (candle): a small UNet ([`unet`]) with EDM preconditioning ([`edm`],
//! the [`crate::prior::Denoiser`] samplers use), and its training by denoising score matching
//! ([`train`]). Models are f32; samplers see f64 `D(x, sigma)` on flattened `[B, C*H*W]` batches.

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

pub use edm::{
    edm_coefficients, edm_loss_weight, precond_forward, EdmCoefficients, EdmDenoiser,
    DEFAULT_SIGMA_DATA, DEFAULT_SIGMA_MAX, DEFAULT_SIGMA_MIN,
};
pub use params::SeededParams;
pub use train::{held_out_loss_per_sigma, load_images_npy, TrainConfig, Trainer};
pub use unet::{init_unet, param_count, UNet, UNetConfig};
