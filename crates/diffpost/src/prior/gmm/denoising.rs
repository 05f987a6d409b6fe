//! Exact draws of the mixture's denoising posterior `p(x | x + rho e = z)`, `e ~ N(0, I)`: the
//! `x | z` half of the data-augmentation Gibbs pair of SMC with Gibbs moves
//! (docs/algorithms.md, "SMC with Gibbs moves"). It is again a mixture, with
//! - weights `∝ w_k N(z; mu_k, S_k + rho^2 I)` (the smoothed components' responsibilities),
//! - means `mu_k + S_k (S_k + rho^2 I)^-1 (z - mu_k) = z - rho^2 P_k (z - mu_k)`,
//!   `P_k = (S_k + rho^2 I)^-1` (so `G_k = P_k (z - mu_k)` of the score serves again),
//! - covariances `S_k - S_k (S_k + rho^2 I)^-1 S_k = rho^2 S_k (S_k + rho^2 I)^-1`, eigenvalues
//!   `rho^2 lambda / (lambda + rho^2)` on the eigenvectors of `S_k`.

use candle_core::{DType, Tensor};
use nalgebra::DVectorView;
use rand::Rng;

use super::{Covs, GaussianMixture, Smoothed};
use crate::rng::SampleStreams;
use crate::{Error, Result};

/// `sqrt(rho^2 l / (l + rho^2))`: the denoising posterior's standard deviation along an
/// eigenvector of variance `l`.
fn post_sd(l: f64, r2: f64) -> f64 {
    (r2 * l / (l + r2)).max(0.0).sqrt()
}

/// One component per row, drawn from the row's stream with probabilities `softmax(logits)`.
fn pick_components(logits: &[f64], k: usize, streams: &mut SampleStreams) -> Vec<usize> {
    let b = logits.len() / k;
    (0..b)
        .map(|i| {
            let l = &logits[i * k..(i + 1) * k];
            let mx = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = l.iter().map(|v| (v - mx).exp()).collect();
            let total: f64 = e.iter().sum();
            let u: f64 = streams.stream(i).random::<f64>() * total;
            let mut acc = 0.0;
            for (j, ej) in e.iter().enumerate() {
                acc += ej;
                if u < acc {
                    return j;
                }
            }
            k - 1
        })
        .collect()
}

impl GaussianMixture {
    /// Draws `x ~ p(x | x + rho e = z)` for every row of `z: [B, d]`, each row from its own
    /// stream (one uniform for the component, then `d` normals). `rho = 0` returns `z`.
    pub fn sample_denoising_posterior(
        &self,
        z: &Tensor,
        rho: f64,
        streams: &mut SampleStreams,
    ) -> Result<Tensor> {
        if !(rho >= 0.0) || !rho.is_finite() {
            return Err(Error::param(
                "rho",
                format!("must be finite and >= 0, got {rho}"),
            ));
        }
        let dims = z.dims();
        if dims.len() != 2 || dims[1] != self.d || dims[0] != streams.len() {
            return Err(Error::shape(
                "z",
                format!("[B = {} (streams), {}]", streams.len(), self.d),
                dims,
            ));
        }
        if rho == 0.0 {
            return Ok(z.clone());
        }
        let (b, d, k) = (dims[0], self.d, self.k());
        let r2 = rho * rho;
        if let Some((logits, proj, sm)) = self.low_rank_parts(z, rho)? {
            return self.sample_low_rank(z, rho, &logits, &proj, &sm, streams);
        }
        let (logits, g) = self.components(z, rho)?;
        let logits: Vec<f64> = logits.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        let g: Vec<f64> = g.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        let zh: Vec<f64> = z.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        let comp = pick_components(&logits, k, streams);
        let xi = streams.normal_vec(d);
        let mut out = vec![0.0; b * d];
        for (i, &c) in comp.iter().enumerate() {
            let xr = &xi[i * d..(i + 1) * d];
            let gr = &g[(i * k + c) * d..(i * k + c + 1) * d];
            let zr = &zh[i * d..(i + 1) * d];
            let row = &mut out[i * d..(i + 1) * d];
            for j in 0..d {
                row[j] = zr[j] - r2 * gr[j];
            }
            match &self.covs {
                Covs::Diag(v) => {
                    for j in 0..d {
                        row[j] += post_sd(v[c][j], r2) * xr[j];
                    }
                }
                Covs::Full {
                    eigvals, eigvecs, ..
                } => {
                    let s = eigvals[c].map(|l| post_sd(l, r2));
                    let n = &eigvecs[c] * DVectorView::from_slice(xr, d).component_mul(&s);
                    for j in 0..d {
                        row[j] += n[j];
                    }
                }
                Covs::LowRank { u, lambda, floor } => {
                    let sf = post_sd(floor[c], r2);
                    let xv = DVectorView::from_slice(xr, d);
                    let p = u[c].tr_mul(&xv);
                    let p = p.zip_map(&lambda[c], |pj, l| pj * (post_sd(l, r2) - sf));
                    let n = xv * sf + &u[c] * p;
                    for j in 0..d {
                        row[j] += n[j];
                    }
                }
            }
        }
        Ok(Tensor::from_vec(out, (b, d), z.device())?.to_dtype(z.dtype())?)
    }

    /// The low-rank path: the component's mean `z - rho^2 (c0 (z - mu) + U (coef * proj))` and
    /// noise in `O(r d)` per row from the parts of the smoothed components.
    fn sample_low_rank(
        &self,
        z: &Tensor,
        rho: f64,
        logits: &Tensor,
        proj: &Tensor,
        sm: &Smoothed,
        streams: &mut SampleStreams,
    ) -> Result<Tensor> {
        let Covs::LowRank { u, lambda, floor } = &self.covs else {
            unreachable!("low-rank parts of a low-rank mixture")
        };
        let lr = sm.low_rank.as_ref().expect("low-rank smoothed");
        let (b, k, r) = proj.dims3()?;
        let d = self.d;
        let r2 = rho * rho;
        let logits: Vec<f64> = logits.flatten_all()?.to_vec1()?;
        let proj: Vec<f64> = proj.flatten_all()?.to_vec1()?;
        let coef: Vec<f64> = lr.coef.flatten_all()?.to_vec1()?;
        let c0: Vec<f64> = lr.c0.to_vec1()?;
        let zh: Vec<f64> = z.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
        let comp = pick_components(&logits, k, streams);
        let xi = streams.normal_vec(d);
        let mut out = vec![0.0; b * d];
        for (i, &c) in comp.iter().enumerate() {
            let zr = DVectorView::from_slice(&zh[i * d..(i + 1) * d], d);
            let xv = DVectorView::from_slice(&xi[i * d..(i + 1) * d], d);
            let pr = &proj[(i * k + c) * r..(i * k + c + 1) * r];
            // In the basis of U_c: the mean's correction and the noise's extra scale.
            let sf = post_sd(floor[c], r2);
            let px = u[c].tr_mul(&xv);
            let coefs = nalgebra::DVector::from_fn(r, |j, _| {
                -r2 * coef[c * r + j] * pr[j] + (post_sd(lambda[c][j], r2) - sf) * px[j]
            });
            let x = zr - (zr - &self.means[c]) * (r2 * c0[c]) + xv * sf + &u[c] * coefs;
            out[i * d..(i + 1) * d].copy_from_slice(x.as_slice());
        }
        Ok(Tensor::from_vec(out, (b, d), z.device())?.to_dtype(z.dtype())?)
    }
}
