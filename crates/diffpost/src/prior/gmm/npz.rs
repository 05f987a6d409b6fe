//! The mixture's file format: an `.npz` with `weights [K]`, `means [K, d]` and `covs [K, d, d]`.

use std::path::Path;

use candle_core::{Device, Tensor};
use nalgebra::DMatrix;

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
        let mut get = |name: &str| -> Result<Tensor> {
            let r = npz.read(name)?;
            if let Some(n) = r.conversion {
                crate::io::note_conversion(n);
            }
            Ok(r.tensor)
        };
        let w = get("weights")?;
        let m = get("means")?;
        let c = get("covs")?;
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
        if c.dims() != [k, d, d] {
            return Err(ferr(format!(
                "`covs` must be [K={k}, d={d}, d={d}], got {:?}",
                c.dims()
            )));
        }
        let to64 = |t: &Tensor| -> Result<Vec<f64>> { Ok(t.flatten_all()?.to_vec1()?) };
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

    /// Writes the mixture as an `.npz` (`weights`, `means`, `covs`, all f64), atomically.
    pub fn write_npz(&self, path: impl AsRef<Path>) -> Result<()> {
        let k = self.k();
        let d = self.d;
        let w = Tensor::from_vec(self.weights.clone(), k, &Device::Cpu)?;
        let m = self.means_t.to_device(&Device::Cpu)?;
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
