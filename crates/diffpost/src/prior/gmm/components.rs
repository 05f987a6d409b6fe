//! The smoothed components `N(mu_k, S_k + sigma^2 I)` at one `sigma`: their precomputed tensors
//! (cached per sigma), the per-row logits and `G_k = P_k (x - mu_k)`, and the generic (candle-op)
//! score built from them (the reference of the fused CPU kernel, `fused`).

use std::sync::Arc;

use candle_core::{DType, Device, Tensor, D};
use nalgebra::DMatrix;

use super::{Covs, GaussianMixture, LowRankSmoothed, Smoothed};
use crate::{Error, Result};

impl GaussianMixture {
    pub(super) fn smoothed(&self, sigma: f64) -> Result<Arc<Smoothed>> {
        let key = sigma.to_bits();
        {
            let cache = self.cache.lock().expect("cache poisoned");
            if let Some((_, s)) = cache.iter().find(|(k, _)| *k == key) {
                return Ok(s.clone());
            }
        }
        let s = Arc::new(self.build_smoothed(sigma)?);
        let mut cache = self.cache.lock().expect("cache poisoned");
        if cache.len() >= 4 {
            cache.remove(0);
        }
        cache.push((key, s.clone()));
        Ok(s)
    }

    fn build_smoothed(&self, sigma: f64) -> Result<Smoothed> {
        if !(sigma >= 0.0) || !sigma.is_finite() {
            return Err(Error::param(
                "sigma",
                format!("must be finite and >= 0, got {sigma}"),
            ));
        }
        let d = self.d;
        let k = self.k();
        let s2 = sigma * sigma;
        let ln2pi = (2.0 * std::f64::consts::PI).ln();
        let mut log_const = Vec::with_capacity(k);
        for i in 0..k {
            let ev = self.eigvals(i);
            let mut logdet = 0.0;
            for &l in ev.iter() {
                let v = l + s2;
                if v <= 0.0 {
                    return Err(Error::Numerical(format!(
                        "component {i} has a singular covariance: its density (and score) at sigma = {sigma} does not exist; use sigma > 0"
                    )));
                }
                logdet += v.ln();
            }
            log_const.push(self.weights[i].ln() - 0.5 * logdet - 0.5 * d as f64 * ln2pi);
        }
        let log_const = Tensor::from_vec(log_const, k, &self.device)?;
        match &self.covs {
            Covs::Diag(v) => {
                let p: Vec<f64> = v
                    .iter()
                    .flat_map(|c| c.iter().map(|l| 1.0 / (l + s2)))
                    .collect();
                Ok(Smoothed {
                    low_rank: None,
                    prec: Tensor::from_vec(p, (k, d), &self.device)?,
                    prec_mu: None,
                    log_const,
                    host: None,
                })
            }
            Covs::LowRank { u, lambda, floor } => {
                let r = lambda[0].len();
                let mut ucat = vec![0.0; d * k * r];
                let mut ut = Vec::with_capacity(k * r * d);
                let mut utmu = Vec::with_capacity(k * r);
                let mut coef = Vec::with_capacity(k * r);
                let mut c0 = Vec::with_capacity(k);
                for i in 0..k {
                    let c = 1.0 / (floor[i] + s2);
                    c0.push(c);
                    for j in 0..r {
                        coef.push(1.0 / (lambda[i][j] + s2) - c);
                        let col = u[i].column(j);
                        utmu.push(col.dot(&self.means[i]));
                        for (row, v) in col.iter().enumerate() {
                            ucat[row * k * r + i * r + j] = *v;
                        }
                        ut.extend(col.iter().copied());
                    }
                }
                let dev = &self.device;
                Ok(Smoothed {
                    low_rank: Some(LowRankSmoothed {
                        ucat: Tensor::from_vec(ucat, (d, k * r), dev)?,
                        ut: Tensor::from_vec(ut, (k, r, d), dev)?,
                        utmu: Tensor::from_vec(utmu, (k, r), dev)?,
                        coef: Tensor::from_vec(coef, (k, r), dev)?,
                        c0: Tensor::from_vec(c0, k, dev)?,
                    }),
                    prec: Tensor::zeros(1, DType::F64, dev)?,
                    prec_mu: None,
                    log_const,
                    host: None,
                })
            }
            Covs::Full {
                eigvals, eigvecs, ..
            } => {
                // Pcat[:, i*d..(i+1)*d] = P_i (symmetric), row-major [d, K d].
                let mut pcat = vec![0.0; d * k * d];
                let mut pmu = Vec::with_capacity(k * d);
                for i in 0..k {
                    let u = &eigvecs[i];
                    let inv = eigvals[i].map(|l| 1.0 / (l + s2));
                    let ud = u * DMatrix::from_diagonal(&inv);
                    let p = ud * u.transpose();
                    for r in 0..d {
                        for c in 0..d {
                            pcat[r * k * d + i * d + c] = p[(r, c)];
                        }
                    }
                    pmu.extend((&p * &self.means[i]).iter().copied());
                }
                let lc: Vec<f64> = log_const.to_device(&Device::Cpu)?.to_vec1()?;
                Ok(Smoothed {
                    low_rank: None,
                    prec: Tensor::from_vec(pcat.clone(), (d, k * d), &self.device)?,
                    prec_mu: Some(Tensor::from_vec(pmu.clone(), (k, d), &self.device)?),
                    log_const,
                    host: Some((pcat, pmu, lc)),
                })
            }
        }
    }

    /// Returns `(logits [B,K], G [B,K,d])` with `G_k = P_k (x - mu_k)` and
    /// `logits_k = log w_k + log N(x; mu_k, S_k + sigma^2 I)`.
    pub(super) fn components(&self, x: &Tensor, sigma: f64) -> Result<(Tensor, Tensor)> {
        let dims = x.dims();
        if dims.len() != 2 || dims[1] != self.d {
            return Err(Error::shape("x", format!("[B, {}]", self.d), dims));
        }
        let b = dims[0];
        let k = self.k();
        let sm = self.smoothed(sigma)?;
        let x = x.to_dtype(DType::F64)?;
        let delta = x.unsqueeze(1)?.broadcast_sub(&self.means_t.unsqueeze(0)?)?; // [B,K,d]
        if let Some(lr) = &sm.low_rank {
            // G_k = c0_k (x - mu_k) + U_k (coef_k * U_k^T (x - mu_k)).
            let r = lr.coef.dims()[1];
            let proj = x
                .matmul(&lr.ucat)?
                .reshape((b, k, r))?
                .broadcast_sub(&lr.utmu.unsqueeze(0)?)?; // [B,K,r]
            let scaled = proj.broadcast_mul(&lr.coef.unsqueeze(0)?)?;
            let back = scaled
                .transpose(0, 1)?
                .contiguous()?
                .matmul(&lr.ut)?
                .transpose(0, 1)?; // [B,K,d]
            let g = (delta.broadcast_mul(&lr.c0.reshape((1, k, 1))?)? + back)?;
            let q = (&delta * &g)?.sum(D::Minus1)?;
            let logits = sm.log_const.unsqueeze(0)?.broadcast_sub(&(q * 0.5)?)?;
            return Ok((logits, g));
        }
        let g = match &sm.prec_mu {
            None => delta.broadcast_mul(&sm.prec.unsqueeze(0)?)?,
            Some(pmu) => x
                .matmul(&sm.prec)?
                .reshape((b, k, self.d))?
                .broadcast_sub(&pmu.unsqueeze(0)?)?,
        };
        let q = (&delta * &g)?.sum(D::Minus1)?; // [B,K]
        let logits = sm.log_const.unsqueeze(0)?.broadcast_sub(&(q * 0.5)?)?;
        Ok((logits, g))
    }

    /// Responsibilities-weighted score from `(logits, G)`: `-sum_k r_k G_k`.
    pub(super) fn score_from(&self, logits: &Tensor, g: &Tensor) -> Result<Tensor> {
        if self.k() == 1 {
            return Ok(g.squeeze(1)?.neg()?);
        }
        let lse = logits.log_sum_exp(D::Minus1)?.unsqueeze(1)?;
        let r = logits.broadcast_sub(&lse)?.exp()?; // [B,K]
        Ok(r.unsqueeze(2)?.broadcast_mul(g)?.sum(1)?.neg()?)
    }

    /// Low-rank covariances: `(logits [B, K], proj [B, K, r], smoothed)` with
    /// `proj_k = U_k^T (x - mu_k)` and `logits_k = log w_k + log N(x; mu_k, S_k + sigma^2 I)`,
    /// from `|x - mu_k|^2 = |x|^2 - 2 x.mu_k + |mu_k|^2` and the `r` projections: two
    /// `[B, d] x [d, K r]`-sized products and no `[B, K, d]` tensor.
    pub(super) fn low_rank_parts(
        &self,
        x: &Tensor,
        sigma: f64,
    ) -> Result<Option<(Tensor, Tensor, Arc<Smoothed>)>> {
        let sm = self.smoothed(sigma)?;
        let Some(lr) = &sm.low_rank else {
            return Ok(None);
        };
        let dims = x.dims();
        if dims.len() != 2 || dims[1] != self.d {
            return Err(Error::shape("x", format!("[B, {}]", self.d), dims));
        }
        let (b, k) = (dims[0], self.k());
        let r = lr.coef.dims()[1];
        let x = x.to_dtype(DType::F64)?;
        let proj = x
            .matmul(&lr.ucat)?
            .reshape((b, k, r))?
            .broadcast_sub(&lr.utmu.unsqueeze(0)?)?;
        let xm = x.matmul(&self.means_t.t()?)?; // [B,K]
        let x2 = x.sqr()?.sum_keepdim(1)?; // [B,1]
        let mu2 = self.means_t.sqr()?.sum(1)?.unsqueeze(0)?; // [1,K]
        let delta2 = x2.broadcast_sub(&(xm * 2.0)?)?.broadcast_add(&mu2)?;
        let q = (delta2.broadcast_mul(&lr.c0.unsqueeze(0)?)?
            + proj
                .sqr()?
                .broadcast_mul(&lr.coef.unsqueeze(0)?)?
                .sum(D::Minus1)?)?;
        let logits = sm.log_const.unsqueeze(0)?.broadcast_sub(&(q * 0.5)?)?;
        Ok(Some((logits, proj, sm.clone())))
    }

    /// Low-rank covariances: `-sum_k r_k P_k (x - mu_k)` from [`Self::low_rank_parts`]:
    /// `-(sum_k r_k c0_k) x + sum_k r_k c0_k mu_k - sum_k U_k (r_k coef_k * proj_k)`.
    pub(super) fn score_low_rank(
        &self,
        x: &Tensor,
        logits: &Tensor,
        proj: &Tensor,
        sm: &Smoothed,
    ) -> Result<Tensor> {
        let lr = sm.low_rank.as_ref().expect("low-rank smoothed");
        let (b, k, r) = proj.dims3()?;
        let lse = logits.log_sum_exp(D::Minus1)?.unsqueeze(1)?;
        let resp = logits.broadcast_sub(&lse)?.exp()?; // [B,K]
        let rc0 = resp.broadcast_mul(&lr.c0.unsqueeze(0)?)?; // [B,K]
        let x = x.to_dtype(DType::F64)?;
        let a = rc0.sum_keepdim(1)?; // [B,1]
        let part1 = (rc0.matmul(&self.means_t)? - x.broadcast_mul(&a)?)?;
        let w = proj
            .broadcast_mul(&lr.coef.unsqueeze(0)?)?
            .broadcast_mul(&resp.unsqueeze(2)?)?
            .reshape((b, k * r))?;
        Ok((part1 - w.matmul(&lr.ucat.t()?)?)?)
    }

    /// The generic (candle-op) score path: the reference for the fused CPU kernel, and the path
    /// used for autograd and non-CPU devices.
    pub fn score_generic(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        let (logits, g) = self.components(x, sigma)?;
        self.score_from(&logits, &g)
    }

    /// The most responsible component of every row of `x: [B, d]` (the argmax of
    /// `log w_k + log N(x; mu_k, S_k)`).
    pub fn assign(&self, x: &Tensor) -> Result<Vec<usize>> {
        let (logits, _) = self.components(x, 0.0)?;
        let l: Vec<Vec<f64>> = logits.to_dtype(DType::F64)?.to_vec2()?;
        Ok(l.iter()
            .map(|row| {
                row.iter()
                    .enumerate()
                    .fold((0, f64::NEG_INFINITY), |best, (k, &v)| {
                        if v > best.1 {
                            (k, v)
                        } else {
                            best
                        }
                    })
                    .0
            })
            .collect())
    }
}
