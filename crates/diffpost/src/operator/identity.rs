//! Identity operator (denoising): `y = x + eta xi`.

use candle_core::Tensor;

use super::{check_in, check_out, LinearOperator};
use crate::Result;

/// `A = I_d`.
pub struct Identity {
    d: usize,
    sel: Vec<usize>,
}

impl Identity {
    pub fn new(d: usize) -> Self {
        Self {
            d,
            sel: (0..d).collect(),
        }
    }
}

impl super::GramSpectrum for Identity {
    /// `A^T A = I`: `f(1) x`.
    fn gram_fn(&self, x: &Tensor, f: &dyn Fn(f64) -> f64) -> Result<Tensor> {
        check_in(self, x)?;
        Ok((x * f(1.0))?)
    }
    fn eigenvalues(&self) -> Result<Vec<f64>> {
        Ok(vec![1.0; self.d])
    }
}

impl LinearOperator for Identity {
    fn in_dim(&self) -> usize {
        self.d
    }
    fn out_dim(&self) -> usize {
        self.d
    }
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        check_in(self, x)?;
        Ok(x.clone())
    }
    fn adjoint(&self, y: &Tensor) -> Result<Tensor> {
        check_out(self, y)?;
        Ok(y.clone())
    }
    fn normal(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
    fn gram_spectrum(&self) -> Option<&dyn super::GramSpectrum> {
        Some(self)
    }
    fn name(&self) -> String {
        format!("identity[{}]", self.d)
    }
    fn selection(&self) -> Option<&[usize]> {
        Some(&self.sel)
    }
}
