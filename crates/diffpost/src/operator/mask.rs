//! Coordinate mask: `y` holds the observed coordinates only (m = number of ones).

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::{check_in, check_out, LinearOperator};
use crate::{Error, Result};

/// Selects the coordinates where a 0/1 indicator of length d is 1.
pub struct Mask {
    d: usize,
    sel: Vec<usize>,
    idx: Tensor,
}

impl Mask {
    /// From a 0/1 indicator vector of length d.
    pub fn from_indicator(ind: &[f64]) -> Result<Self> {
        let mut sel = Vec::new();
        for (i, &v) in ind.iter().enumerate() {
            if v == 1.0 {
                sel.push(i);
            } else if v != 0.0 {
                return Err(Error::param(
                    "mask",
                    format!("entries must be 0 or 1, found {v} at index {i}"),
                ));
            }
        }
        if sel.is_empty() {
            return Err(Error::param("mask", "no observed coordinate (all zeros)"));
        }
        let idx = Tensor::from_vec(
            sel.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            sel.len(),
            &Device::Cpu,
        )?;
        Ok(Self {
            d: ind.len(),
            sel,
            idx,
        })
    }

    /// Reads the indicator from a 1-D `.npy` of length d.
    pub fn from_npy(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let t = crate::io::read_array(path, "mask")?;
        if t.rank() != 1 {
            return Err(Error::File {
                path: path.to_path_buf(),
                reason: format!(
                    "mask must be a 1-D 0/1 vector of length d, got shape {:?}",
                    t.dims()
                ),
            });
        }
        let v: Vec<f64> = t.to_vec1()?;
        Self::from_indicator(&v).map_err(|e| Error::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }
}

impl super::GramSpectrum for Mask {
    /// `A^T A = diag(indicator)`.
    fn gram_fn(&self, x: &Tensor, f: &dyn Fn(f64) -> f64) -> Result<Tensor> {
        check_in(self, x)?;
        let mut w = vec![0.0; self.d];
        for &i in &self.sel {
            w[i] = 1.0;
        }
        super::diagonal_gram_fn(x, &w, f)
    }
    fn eigenvalues(&self) -> Result<Vec<f64>> {
        let mut w = vec![0.0; self.d];
        for &i in &self.sel {
            w[i] = 1.0;
        }
        Ok(w)
    }
}

impl LinearOperator for Mask {
    fn in_dim(&self) -> usize {
        self.d
    }
    fn out_dim(&self) -> usize {
        self.sel.len()
    }
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        check_in(self, x)?;
        Ok(x.index_select(&self.idx.to_device(x.device())?, 1)?)
    }
    fn adjoint(&self, y: &Tensor) -> Result<Tensor> {
        check_out(self, y)?;
        let b = y.dims()[0];
        let z = Tensor::zeros((b, self.d), DType::F64, y.device())?;
        Ok(z.index_add(
            &self.idx.to_device(y.device())?,
            &y.to_dtype(DType::F64)?,
            1,
        )?)
    }
    fn name(&self) -> String {
        format!("mask[{} of {}]", self.sel.len(), self.d)
    }
    fn selection(&self) -> Option<&[usize]> {
        Some(&self.sel)
    }
    fn gram_spectrum(&self) -> Option<&dyn super::GramSpectrum> {
        Some(self)
    }
}
