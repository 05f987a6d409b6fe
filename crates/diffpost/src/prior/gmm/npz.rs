//! The mixture's file formats: an `.npz` with `weights [K]`, `means [K, d]` and `covs [K, d, d]`;
//! or, for a mixture of probabilistic PCA (low-rank covariances, as fitted to images by
//! `diffpost fit-gmm`), `weights [K]`, `means [K, d]`, `eigvecs [K, r, d]` (row `j` of block `k`:
//! eigenvector `u_kj`), `eigvals [K, r]` and `floor [K]`, with
//! `S_k = sum_j eigvals_kj u_kj u_kj^T + floor_k (I - sum_j u_kj u_kj^T)`.

use std::path::Path;

use candle_core::{Device, Tensor};
use nalgebra::{DMatrix, DVector};

use super::GaussianMixture;
use crate::{Error, Result};

impl GaussianMixture {
    /// Reads an `.npz` with `weights [K]`, `means [K,d]`, `covs [K,d,d]` (stored or compressed;
    /// any dtype of [`crate::io`]'s policy, converted to f64).
    pub fn from_npz(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let ferr = |reason: String| Error::File {
            path: path.to_path_buf(),
            reason,
        };
        let mut npz = crate::io::NpzReader::open(path, "")?;
        let low_rank = npz.contains("eigvecs");
        let mut get = |name: &str| -> Result<Tensor> {
            let r = npz.read(name)?;
            if let Some(n) = r.conversion {
                crate::io::note_conversion(n);
            }
            Ok(r.tensor)
        };
        let w = get("weights")?;
        let m = get("means")?;
        let k = w.dims().first().copied().unwrap_or(0);
        if w.rank() != 1 {
            return Err(ferr(format!("`weights` must be [K], got {:?}", w.dims())));
        }
        if m.rank() != 2 || m.dims()[0] != k {
            return Err(ferr(format!(
                "`means` must be [K={k}, d], got {:?}",
                m.dims()
            )));
        }
        let d = m.dims()[1];
        let to64 = |t: &Tensor| -> Result<Vec<f64>> { Ok(t.flatten_all()?.to_vec1()?) };
        if low_rank {
            let u = get("eigvecs")?;
            let l = get("eigvals")?;
            let f = get("floor")?;
            let r = u.dims().get(1).copied().unwrap_or(0);
            if u.dims() != [k, r, d] || r == 0 || r > d {
                return Err(ferr(format!(
                    "`eigvecs` must be [K={k}, r, d={d}] with 1 <= r <= d, got {:?}",
                    u.dims()
                )));
            }
            if l.dims() != [k, r] {
                return Err(ferr(format!(
                    "`eigvals` must be [K={k}, r={r}], got {:?}",
                    l.dims()
                )));
            }
            if f.dims() != [k] {
                return Err(ferr(format!("`floor` must be [K={k}], got {:?}", f.dims())));
            }
            let (uv, lv, fv) = (to64(&u)?, to64(&l)?, to64(&f)?);
            let means = to64(&m)?.chunks(d).map(|r| r.to_vec()).collect();
            let eigvecs = uv
                .chunks(r * d)
                .map(|b| DMatrix::from_row_slice(r, d, b).transpose())
                .collect();
            let eigvals = lv.chunks(r).map(DVector::from_column_slice).collect();
            return Self::low_rank(to64(&w)?, means, eigvecs, eigvals, fv)
                .map_err(|e| ferr(e.to_string()));
        }
        let c = get("covs")?;
        if c.dims() != [k, d, d] {
            return Err(ferr(format!(
                "`covs` must be [K={k}, d={d}, d={d}], got {:?}",
                c.dims()
            )));
        }
        let wv = to64(&w)?;
        let mv = to64(&m)?;
        let cv = to64(&c)?;
        let means = mv.chunks(d).map(|r| r.to_vec()).collect();
        let covs = cv
            .chunks(d * d)
            .map(|b| DMatrix::from_row_slice(d, d, b))
            .collect();
        Self::new(wv, means, covs).map_err(|e| ferr(e.to_string()))
    }

    /// Writes the mixture as an `.npz` (`weights`, `means`, `covs`, all f64; a low-rank mixture
    /// in its compact form, `eigvecs`, `eigvals`, `floor`), atomically.
    pub fn write_npz(&self, path: impl AsRef<Path>) -> Result<()> {
        let k = self.k();
        let d = self.d;
        let w = Tensor::from_vec(self.weights.clone(), k, &Device::Cpu)?;
        let m = self.means_t.to_device(&Device::Cpu)?;
        if let super::Covs::LowRank { u, lambda, floor } = &self.covs {
            let r = lambda[0].len();
            let mut rows = Vec::with_capacity(k * r * d);
            for ui in u {
                for j in 0..r {
                    rows.extend(ui.column(j).iter().copied());
                }
            }
            let ut = Tensor::from_vec(rows, (k, r, d), &Device::Cpu)?;
            let lv: Vec<f64> = lambda.iter().flat_map(|l| l.iter().copied()).collect();
            let lt = Tensor::from_vec(lv, (k, r), &Device::Cpu)?;
            let ft = Tensor::from_vec(floor.clone(), k, &Device::Cpu)?;
            return crate::io::atomic_write(path.as_ref(), |tmp| {
                Ok(Tensor::write_npz(
                    &[
                        ("weights", &w),
                        ("means", &m),
                        ("eigvecs", &ut),
                        ("eigvals", &lt),
                        ("floor", &ft),
                    ],
                    tmp,
                )?)
            });
        }
        let mut cv = Vec::with_capacity(k * d * d);
        for i in 0..k {
            let c = self.cov(i);
            for r in 0..d {
                for s in 0..d {
                    cv.push(c[(r, s)]);
                }
            }
        }
        let c = Tensor::from_vec(cv, (k, d, d), &Device::Cpu)?;
        crate::io::atomic_write(path.as_ref(), |tmp| {
            Ok(Tensor::write_npz(
                &[("weights", &w), ("means", &m), ("covs", &c)],
                tmp,
            )?)
        })
    }
}
