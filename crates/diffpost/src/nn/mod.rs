//! Neural diffusion priors (candle): a small UNet with EDM preconditioning, and its training.
//! Work in progress.
