//! The mixture as a prior: its exact denoiser and score at every `sigma` ([`Denoiser`]), its
//! log-density ([`LogDensity`]) and exact draws ([`ExactSample`]).

use candle_core::{Device, Tensor, D};
use rand::Rng;

use super::{CovKind, Covs, GaussianMixture};
use crate::prior::{Denoiser, ExactSample, LogDensity};
use crate::rng::SampleStreams;
use crate::Result;

impl GaussianMixture {
    /// Draws `[B, d]` exact samples of this mixture using the rows' own streams
    /// (per sample: one uniform for the component, then d normals).
    fn sample_rows(&self, streams: &mut SampleStreams) -> Result<Tensor> {
        let b = streams.len();
        let d = self.d;
        let mut comp = vec![0usize; b];
        for (i, c) in comp.iter_mut().enumerate() {
            let u: f64 = streams.stream(i).random();
            let mut acc = 0.0;
            *c = self.k() - 1;
            for (j, w) in self.weights.iter().enumerate() {
                acc += w;
                if u < acc {
                    *c = j;
                    break;
                }
            }
        }
        let z = streams.normal_vec(d);
        let mut out = vec![0.0; b * d];
        for (i, &c) in comp.iter().enumerate() {
            let zi = &z[i * d..(i + 1) * d];
            let row = &mut out[i * d..(i + 1) * d];
            match &self.covs {
                Covs::Diag(v) => {
                    for j in 0..d {
                        row[j] = self.means[c][j] + v[c][j].sqrt() * zi[j];
                    }
                }
                Covs::LowRank { u, lambda, floor } => {
                    // x = mu + sqrt(f) z + U diag(sqrt(lambda) - sqrt(f)) U^T z: covariance
                    // U diag(lambda) U^T + f (I - U U^T).
                    let zv = nalgebra::DVectorView::from_slice(zi, d);
                    let sf = floor[c].sqrt();
                    let p = u[c].tr_mul(&zv);
                    let p = p.zip_map(&lambda[c], |pj, l| pj * (l.sqrt() - sf));
                    let x = &self.means[c] + zv * sf + &u[c] * p;
                    row.copy_from_slice(x.as_slice());
                }
                Covs::Full {
                    eigvals, eigvecs, ..
                } => {
                    // x = mu + U diag(sqrt(lambda)) z (valid for singular S).
                    let sz: Vec<f64> = (0..d).map(|j| eigvals[c][j].sqrt() * zi[j]).collect();
                    let u = &eigvecs[c];
                    for r in 0..d {
                        let mut acc = self.means[c][r];
                        for j in 0..d {
                            acc += u[(r, j)] * sz[j];
                        }
                        row[r] = acc;
                    }
                }
            }
        }
        Ok(Tensor::from_vec(out, (b, d), &self.device)?)
    }
}

impl Denoiser for GaussianMixture {
    fn dim(&self) -> usize {
        self.d
    }

    /// `D(x, sigma) = x + sigma^2 grad log p_sigma(x)` (Tweedie), exact.
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        if sigma == 0.0 {
            return Ok(x.clone());
        }
        let s = self.score(x, sigma)?;
        Ok((x + (s * (sigma * sigma))?)?)
    }

    /// `grad log p_sigma(x) = -sum_k r_k(x) (S_k + sigma^2 I)^-1 (x - mu_k)`, `r_k` the
    /// responsibilities under the smoothed components.
    fn score(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        if let Some((logits, proj, sm)) = self.low_rank_parts(x, sigma)? {
            return Ok(self
                .score_low_rank(x, &logits, &proj, &sm)?
                .to_dtype(x.dtype())?);
        }
        if self.kind == CovKind::Full && x.dims().len() == 2 && x.dims()[1] == self.d {
            let sm = self.smoothed(sigma)?;
            if let Some(s) = self.score_full_cpu(x, &sm)? {
                return Ok(s);
            }
        }
        let (logits, g) = self.components(x, sigma)?;
        self.score_from(&logits, &g)
    }

    fn device(&self) -> Device {
        self.device.clone()
    }

    fn sigma_range(&self) -> (f64, f64) {
        let singular = (0..self.k()).any(|i| self.eigvals(i).min() <= 0.0);
        let min = if singular {
            1e-6 * self.max_eigenvalue().sqrt().max(1e-12)
        } else {
            0.0
        };
        (min, f64::INFINITY)
    }

    /// `sqrt(sum_k w_k (|mu_k|^2 + tr S_k) / d)`.
    fn scale(&self) -> f64 {
        let wsum: f64 = self.weights.iter().sum();
        let ms: f64 = (0..self.k())
            .map(|i| self.weights[i] * (self.means[i].norm_squared() + self.eigvals(i).sum()))
            .sum::<f64>()
            / wsum.max(f64::MIN_POSITIVE);
        (ms / self.d.max(1) as f64).sqrt()
    }

    fn sigma_max_hint(&self) -> f64 {
        let spread = self.max_eigenvalue().sqrt();
        let offset = self.means.iter().map(|m| m.norm()).fold(0.0, f64::max);
        (50.0 * spread).max(20.0 * offset).max(1e-3)
    }

    /// `max_k 1 / lambda_min(S_k)`: exact for a Gaussian, the components' worst curvature otherwise.
    fn lipschitz(&self) -> Option<f64> {
        let lmin = (0..self.k())
            .map(|i| self.eigvals(i).min())
            .fold(f64::INFINITY, f64::min);
        (lmin > 0.0).then(|| 1.0 / lmin)
    }

    fn as_log_density(&self) -> Option<&dyn LogDensity> {
        Some(self)
    }

    fn as_exact_sample(&self) -> Option<&dyn ExactSample> {
        Some(self)
    }

    fn as_mixture(&self) -> Option<&GaussianMixture> {
        Some(self)
    }
}

impl LogDensity for GaussianMixture {
    fn log_density_and_score(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        if let Some((logits, proj, sm)) = self.low_rank_parts(x, 0.0)? {
            let lse = logits.log_sum_exp(D::Minus1)?;
            return Ok((lse, self.score_low_rank(x, &logits, &proj, &sm)?));
        }
        let (logits, g) = self.components(x, 0.0)?;
        let lse = logits.log_sum_exp(D::Minus1)?;
        let s = self.score_from(&logits, &g)?;
        Ok((lse, s))
    }
}

impl ExactSample for GaussianMixture {
    fn sample_exact(&self, streams: &mut SampleStreams) -> Result<Tensor> {
        self.sample_rows(streams)
    }
}
