//! Dense matrix operator `A: [m, d]`.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use nalgebra::DMatrix;

use super::{check_in, check_out, LinearOperator};
use crate::{Error, Result};

/// `A x` with a dense matrix stored as a tensor (`x A^T` on a batch).
pub struct Dense {
    a: Tensor,
    at: Tensor,
    m: usize,
    d: usize,
    /// `A^T A = V diag(lambda) V^T`, computed on first use: `(V [d, d], lambda)`.
    eigen: std::sync::OnceLock<(Tensor, Vec<f64>)>,
}

impl Dense {
    /// From an nalgebra matrix `[m, d]` (must be finite).
    pub fn new(a: DMatrix<f64>) -> Result<Self> {
        Self::on_device(a, &Device::Cpu)
    }

    /// From an nalgebra matrix, tensors on `device`.
    pub fn on_device(a: DMatrix<f64>, device: &Device) -> Result<Self> {
        if a.iter().any(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: "operator matrix A".into(),
            });
        }
        let (m, d) = a.shape();
        let rows: Vec<f64> = a.transpose().iter().copied().collect(); // row-major
        let t = Tensor::from_vec(rows, (m, d), device)?;
        let at = t.t()?.contiguous()?;
        Ok(Self {
            a: t,
            at,
            m,
            d,
            eigen: std::sync::OnceLock::new(),
        })
    }

    /// Reads `A` from a 2-D `.npy` (`[m, d]`, f32 or f64).
    pub fn from_npy(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let t = crate::io::read_array(path, "operator matrix")?;
        if t.rank() != 2 {
            return Err(Error::File {
                path: path.to_path_buf(),
                reason: format!(
                    "operator matrix must be 2-D [m, d], got shape {:?}",
                    t.dims()
                ),
            });
        }
        let (m, d) = t.dims2()?;
        let v: Vec<f64> = t.flatten_all()?.to_vec1()?;
        Self::new(DMatrix::from_row_slice(m, d, &v)).map_err(|e| Error::File {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// `(V, lambda)` of `A^T A` (one symmetric eigen-decomposition, made once).
    fn eigen(&self) -> Result<&(Tensor, Vec<f64>)> {
        if let Some(e) = self.eigen.get() {
            return Ok(e);
        }
        crate::limits::check_alloc(
            "dense operator eigen-decomposition",
            crate::limits::product(&[4, self.d as u128, self.d as u128, 8]),
        )?;
        let v: Vec<f64> = self.a.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        let a = DMatrix::from_row_slice(self.m, self.d, &v);
        let g = a.transpose() * &a;
        let eig = nalgebra::SymmetricEigen::new((&g + g.transpose()) * 0.5);
        // V row-major [d, d]: V[i][j] = eigenvector j, component i.
        let vecs = eig.eigenvectors;
        let rows: Vec<f64> = (0..self.d)
            .flat_map(|i| (0..self.d).map(move |j| (i, j)))
            .map(|(i, j)| vecs[(i, j)])
            .collect();
        let vt = Tensor::from_vec(rows, (self.d, self.d), self.a.device())?;
        let lam: Vec<f64> = eig.eigenvalues.iter().map(|&l| l.max(0.0)).collect();
        Ok(self.eigen.get_or_init(|| (vt, lam)))
    }

    /// The matrix as a tensor `[m, d]`.
    pub fn matrix(&self) -> &Tensor {
        &self.a
    }
}

impl super::GramSpectrum for Dense {
    /// `V diag(f(lambda)) V^T x` (rows: `x V diag(f) V^T`).
    fn gram_fn(&self, x: &Tensor, f: &dyn Fn(f64) -> f64) -> Result<Tensor> {
        check_in(self, x)?;
        let (v, lam) = self.eigen()?;
        let fl: Vec<f64> = lam.iter().map(|&l| f(l)).collect();
        let fl = Tensor::from_vec(fl, (1, self.d), x.device())?;
        let x = x.to_dtype(DType::F64)?;
        let c = x.matmul(v)?.broadcast_mul(&fl)?;
        Ok(c.matmul(&v.t()?)?)
    }
    fn eigenvalues(&self) -> Result<Vec<f64>> {
        Ok(self.eigen()?.1.clone())
    }
}

impl LinearOperator for Dense {
    fn in_dim(&self) -> usize {
        self.d
    }
    fn out_dim(&self) -> usize {
        self.m
    }
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        check_in(self, x)?;
        Ok(x.to_dtype(DType::F64)?.matmul(&self.at)?)
    }
    fn adjoint(&self, y: &Tensor) -> Result<Tensor> {
        check_out(self, y)?;
        Ok(y.to_dtype(DType::F64)?.matmul(&self.a)?)
    }
    fn gram_spectrum(&self) -> Option<&dyn super::GramSpectrum> {
        Some(self)
    }
    fn name(&self) -> String {
        format!("matrix[{}x{}]", self.m, self.d)
    }
    fn to_dense(&self) -> Result<DMatrix<f64>> {
        let v: Vec<f64> = self.a.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?;
        Ok(DMatrix::from_row_slice(self.m, self.d, &v))
    }
}
