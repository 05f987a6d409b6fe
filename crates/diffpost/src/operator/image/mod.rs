//! Image operators on flattened batches.
//!
//! Conventions shared by every operator here:
//! - an image batch is `x: [B, C*H*W]` (f64, row-major `C, H, W`), and `image_shape()` is
//!   `Some([C, H, W])`; measurements are flat `y: [B, m]` (f64), m counting real entries;
//! - operators are row-independent (each sample is mapped on its own) and `Send + Sync`;
//! - `apply` is differentiable through candle autograd (DPS needs it): [`Inpaint`] and
//!   [`SuperRes`] are candle ops (any device); [`Blur`] and [`Mri`] run on the CPU (rayon over
//!   the batch) as a custom op whose backward pass is the adjoint (and vice versa), moving data
//!   to and from the caller's device;
//! - every operator but multi-coil [`Mri`] implements [`super::GramSpectrum`] (`f(A^T A) x` in
//!   the eigenbasis of the normal operator: pixels, blocks, 2-D or 1-D Fourier modes).
//!
//! Operators: [`Inpaint`] (random pixels or a box missing), [`SuperRes`] (k x k average
//! pooling), [`Blur`] (circular convolution, direct or FFT), [`Mri`] (Cartesian-undersampled
//! centred orthonormal 2-D FFT, single- and multi-coil). [`ImageOperatorSpec`] picks one from a
//! config table.

pub mod blur;
mod fft2;
pub mod inpaint;
pub mod mri;
pub mod superres;

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::LinearOperator;
use crate::{Error, Result};

pub use blur::{Blur, BlurPath};
pub use inpaint::Inpaint;
pub use mri::Mri;
pub use superres::SuperRes;

/// An image operator chosen in a config file, e.g. the TOML table
/// `[operator] kind = "superres" factor = 2`. Built for an image shape with [`Self::build`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ImageOperatorSpec {
    /// Pixels missing at random: `rate` is the missing fraction in [0, 1) (exactly
    /// `round(rate H W)` pixels, the same for all channels), drawn from `seed`.
    Inpaint {
        rate: f64,
        #[serde(default)]
        seed: u64,
    },
    /// A missing box of `height x width` pixels at (`top`, `left`), all channels.
    Box {
        top: usize,
        left: usize,
        height: usize,
        width: usize,
    },
    /// `factor x factor` average pooling (H and W divisible by `factor`).
    Superres { factor: usize },
    /// Gaussian blur, odd `kernel_size`, standard deviation `std` in pixels, circular boundary.
    Blur { kernel_size: usize, std: f64 },
    /// Single-coil Cartesian MRI (shape `[1, H, W]`): about `H / acceleration` phase-encode rows
    /// kept, the `center_lines` central ones always, the others drawn from `seed`.
    Mri {
        acceleration: f64,
        center_lines: usize,
        #[serde(default)]
        seed: u64,
    },
}

impl ImageOperatorSpec {
    /// Builds the operator for images of shape `[C, H, W]`.
    pub fn build(&self, shape: [usize; 3]) -> Result<Box<dyn LinearOperator>> {
        Ok(match *self {
            Self::Inpaint { rate, seed } => Box::new(Inpaint::random(shape, rate, seed)?),
            Self::Box {
                top,
                left,
                height,
                width,
            } => Box::new(Inpaint::boxed(shape, top, left, height, width)?),
            Self::Superres { factor } => Box::new(SuperRes::new(shape, factor)?),
            Self::Blur { kernel_size, std } => Box::new(Blur::gaussian(shape, kernel_size, std)?),
            Self::Mri {
                acceleration,
                center_lines,
                seed,
            } => Box::new(Mri::cartesian(shape, acceleration, center_lines, seed)?),
        })
    }
}

/// Checks an image shape has no zero extent; returns `d = C H W`.
pub(crate) fn check_image_shape(shape: [usize; 3]) -> Result<usize> {
    if shape.contains(&0) {
        return Err(Error::param(
            "shape",
            format!("image shape [C, H, W] must have positive extents, got {shape:?}"),
        ));
    }
    Ok(shape[0] * shape[1] * shape[2])
}

/// A linear map on one flattened sample, run on the CPU (blur, MRI), with its
/// transpose. `x.len() == in_len()`, `y.len() == out_len()`; `y`/`x` are fully overwritten.
pub(crate) trait RowMap: Send + Sync {
    fn in_len(&self) -> usize;
    fn out_len(&self) -> usize;
    fn forward(&self, x: &[f64], y: &mut [f64]);
    fn transpose(&self, y: &[f64], x: &mut [f64]);
}

/// Custom candle op applying a [`RowMap`] (or its transpose) to every row of a `[B, n]` tensor.
/// The backward pass is the other direction, so autograd sees the exact adjoint.
struct RowOp {
    map: Arc<dyn RowMap>,
    transpose: bool,
}

impl CustomOp1 for RowOp {
    fn name(&self) -> &'static str {
        "image-row-map"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n_in, n_out) = if self.transpose {
            (self.map.out_len(), self.map.in_len())
        } else {
            (self.map.in_len(), self.map.out_len())
        };
        let (b, n) = layout.shape().dims2()?;
        if n != n_in {
            candle_core::bail!("image-row-map: expected rows of length {n_in}, got {n}");
        }
        let data = match storage {
            CpuStorage::F64(v) => v.as_slice(),
            _ => candle_core::bail!("image-row-map: expected f64 storage"),
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("image-row-map: expected a contiguous input");
        };
        let src = &data[start..end];
        let mut out = vec![0.0f64; b * n_out];
        if n_out > 0 && n_in > 0 {
            out.par_chunks_mut(n_out)
                .zip(src.par_chunks(n_in))
                .for_each(|(y, x)| {
                    if self.transpose {
                        self.map.transpose(x, y)
                    } else {
                        self.map.forward(x, y)
                    }
                });
        }
        Ok((CpuStorage::F64(out), Shape::from((b, n_out))))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(run_rows(&self.map, grad_res, !self.transpose)?))
    }
}

fn run_rows(map: &Arc<dyn RowMap>, x: &Tensor, transpose: bool) -> candle_core::Result<Tensor> {
    let device = x.device().clone();
    let xc = x
        .to_dtype(DType::F64)?
        .to_device(&Device::Cpu)?
        .contiguous()?;
    let op = RowOp {
        map: map.clone(),
        transpose,
    };
    xc.apply_op1_arc(Arc::new(Box::new(op)))?.to_device(&device)
}

/// `[B, in_len] -> [B, out_len]` through `map` (differentiable; on the CPU, result on `x`'s device).
pub(crate) fn map_forward(map: &Arc<dyn RowMap>, x: &Tensor) -> Result<Tensor> {
    Ok(run_rows(map, x, false)?)
}

/// `[B, out_len] -> [B, in_len]` through the transpose of `map`.
pub(crate) fn map_transpose(map: &Arc<dyn RowMap>, y: &Tensor) -> Result<Tensor> {
    Ok(run_rows(map, y, true)?)
}

/// Applies a plain per-row function (no autograd; e.g. closed-form pseudo-inverses) on the CPU,
/// rows in parallel, result on `x`'s device.
pub(crate) fn map_rows_plain<F>(x: &Tensor, n_out: usize, f: F) -> Result<Tensor>
where
    F: Fn(&[f64], &mut [f64]) + Send + Sync,
{
    let (b, n_in) = x.dims2()?;
    let v: Vec<f64> = x
        .to_dtype(DType::F64)?
        .to_device(&Device::Cpu)?
        .flatten_all()?
        .to_vec1()?;
    let mut out = vec![0.0f64; b * n_out];
    if n_out > 0 && n_in > 0 {
        out.par_chunks_mut(n_out)
            .zip(v.par_chunks(n_in))
            .for_each(|(y, x)| f(x, y));
    }
    Ok(Tensor::from_vec(out, (b, n_out), &Device::Cpu)?.to_device(x.device())?)
}
