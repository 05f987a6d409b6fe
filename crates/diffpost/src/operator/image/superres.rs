//! Super-resolution: `k x k` average pooling.
//!
//! `(A x)[c, i, j] = (1/k^2) sum_{a, b < k} x[c, k i + a, k j + b]` for `x: [C, H, W]` with H
//! and W divisible by k; `y` is the low-resolution image `[C, H/k, W/k]` flattened row-major,
//! so `m = d / k^2`. The adjoint is nearest-neighbour upsampling divided by `k^2`, so
//! `A A^T = I / k^2`: `||A|| = 1/k`, and the pseudo-inverse `A^+ = A^T (A A^T)^-1 = k^2 A^T` is
//! plain nearest-neighbour upsampling. Built from candle ops (any device, differentiable).
//!
//! Normal operator: `A^T A = P / k^2` with `P` the projector onto images constant on every
//! `k x k` block (per channel): `P x` replaces each block by its mean. Its eigenvalues are
//! `1/k^2` (multiplicity `d / k^2`, the block-constant images) and 0 (the rest; none for
//! `k = 1`), so `f(A^T A) x = f(1/k^2) P x + f(0) (x - P x)` ([`GramSpectrum`]).

use candle_core::{DType, Tensor};

use super::check_image_shape;
use crate::operator::{check_in, check_out, GramSpectrum, LinearOperator};
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

impl GramSpectrum for SuperRes {
    /// `f(1/k^2) P x + f(0) (x - P x)`, computed as `f(0) x + (f(1/k^2) - f(0)) P x` with
    /// `P x` the block means broadcast back (just `f(1) x` for `k = 1`, where `A = I`).
    fn gram_fn(&self, x: &Tensor, f: &dyn Fn(f64) -> f64) -> Result<Tensor> {
        check_in(self, x)?;
        let x = x.to_dtype(DType::F64)?;
        let k = self.k;
        if k == 1 {
            return Ok((x * f(1.0))?);
        }
        let k2 = (k * k) as f64;
        let (f0, fa) = (f(0.0), f(1.0 / k2));
        let b = x.dims()[0];
        let [c, h, w] = self.output_shape();
        let x6 = x.reshape((b, c, h, k, w, k))?;
        // (f(a) - f(0)) times the block means, on the low-resolution grid.
        let means = x6
            .sum_keepdim(5)?
            .sum_keepdim(3)?
            .affine((fa - f0) / k2, 0.0)?;
        Ok(x6
            .affine(f0, 0.0)?
            .broadcast_add(&means)?
            .reshape((b, self.in_dim()))?)
    }
    /// With repetition: `1/k^2` `d / k^2` times, then 0 `d - d / k^2` times.
    fn eigenvalues(&self) -> Result<Vec<f64>> {
        let d = self.in_dim();
        let m = self.out_dim();
        let k2 = (self.k * self.k) as f64;
        let mut v = vec![1.0 / k2; m];
        v.resize(d, 0.0);
        Ok(v)
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
    fn gram_spectrum(&self) -> Option<&dyn GramSpectrum> {
        Some(self)
    }
}
