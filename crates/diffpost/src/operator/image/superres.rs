//! Super-resolution: `k x k` average pooling.
//!
//! `(A x)[c, i, j] = (1/k^2) sum_{a, b < k} x[c, k i + a, k j + b]` for `x: [C, H, W]` with H
//! and W divisible by k; `y` is the low-resolution image `[C, H/k, W/k]` flattened row-major,
//! so `m = d / k^2`. The adjoint is nearest-neighbour upsampling divided by `k^2`, so
//! `A A^T = I / k^2`: `||A|| = 1/k`, and the pseudo-inverse `A^+ = A^T (A A^T)^-1 = k^2 A^T` is
//! plain nearest-neighbour upsampling. Built from candle ops (any device, differentiable).

use candle_core::{DType, Tensor};

use super::check_image_shape;
use crate::operator::{check_in, check_out, LinearOperator};
use crate::{Error, Result};

/// `k x k` average pooling on `[C, H, W]` images.
pub struct SuperRes {
    shape: [usize; 3],
    k: usize,
}

impl SuperRes {
    /// Pooling by `factor` (at least 1) on `shape = [C, H, W]`; H and W must be divisible by it.
    pub fn new(shape: [usize; 3], factor: usize) -> Result<Self> {
        check_image_shape(shape)?;
        if factor == 0 {
            return Err(Error::param("factor", "must be at least 1"));
        }
        if !shape[1].is_multiple_of(factor) || !shape[2].is_multiple_of(factor) {
            return Err(Error::param(
                "factor",
                format!(
                    "image height {} and width {} must be divisible by the factor {factor}",
                    shape[1], shape[2]
                ),
            ));
        }
        Ok(Self { shape, k: factor })
    }

    /// The pooling factor k.
    pub fn factor(&self) -> usize {
        self.k
    }

    /// Shape of the measured low-resolution image, `[C, H/k, W/k]`.
    pub fn output_shape(&self) -> [usize; 3] {
        [
            self.shape[0],
            self.shape[1] / self.k,
            self.shape[2] / self.k,
        ]
    }
}

impl LinearOperator for SuperRes {
    fn in_dim(&self) -> usize {
        self.shape.iter().product()
    }
    fn out_dim(&self) -> usize {
        self.output_shape().iter().product()
    }
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        check_in(self, x)?;
        let b = x.dims()[0];
        let [c, h, w] = self.output_shape();
        let k = self.k;
        let pooled = x
            .to_dtype(DType::F64)?
            .reshape((b, c, h, k, w, k))?
            .sum(5)?
            .sum(3)?
            .reshape((b, c * h * w))?;
        Ok((pooled / (k * k) as f64)?)
    }
    fn adjoint(&self, y: &Tensor) -> Result<Tensor> {
        check_out(self, y)?;
        let b = y.dims()[0];
        let [c, h, w] = self.output_shape();
        let k = self.k;
        let up = y
            .to_dtype(DType::F64)?
            .reshape((b, c, h, 1, w, 1))?
            .broadcast_as((b, c, h, k, w, k))?
            .contiguous()?
            .reshape((b, self.in_dim()))?;
        Ok((up / (k * k) as f64)?)
    }
    fn name(&self) -> String {
        format!("superres[x{}]", self.k)
    }
    /// Nearest-neighbour upsampling `k^2 A^T` (exact: `A A^T = I / k^2`).
    fn pseudo_inverse(&self, y: &Tensor) -> Result<Tensor> {
        Ok((self.adjoint(y)? * (self.k * self.k) as f64)?)
    }
    fn image_shape(&self) -> Option<[usize; 3]> {
        Some(self.shape)
    }
}
