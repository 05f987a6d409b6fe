//! Random problem instances with a known exact posterior (for `diffpost problem gmm`, tests, demo).

use nalgebra::{DMatrix, DVector};
use rand::Rng;

use crate::prior::{ExactSample, GaussianMixture};
use crate::rng::SampleStreams;
use crate::{Error, Result};

/// A compressed-sensing instance `y = A x_true + eta xi` with a Gaussian-mixture prior.
pub struct Instance {
    pub prior: GaussianMixture,
    /// `[m, d]`, entries `N(0, 1/m)`.
    pub a: DMatrix<f64>,
    pub x_true: DVector<f64>,
    pub y: DVector<f64>,
    pub eta: f64,
}

/// A random instance: `K` overlapping components with means `N(0, 0.5^2 I)` (K > 1) or 0 (K = 1),
/// covariances `Q diag(lambda) Q^T` with random rotations `Q` and `lambda` log-uniform in
/// [0.25, 1]; `A` Gaussian with entries `N(0, 1/m)`; `x_true` drawn from the prior.
pub fn random_gmm_instance(d: usize, m: usize, k: usize, eta: f64, seed: u64) -> Result<Instance> {
    if d == 0 || m == 0 || k == 0 {
        return Err(Error::param("d/m/k", "must be positive"));
    }
    if !(eta > 0.0) {
        return Err(Error::param("eta", "must be > 0"));
    }
    let mut s = SampleStreams::new(seed, [0]);
    let mut weights = Vec::with_capacity(k);
    let mut means = Vec::with_capacity(k);
    let mut covs = Vec::with_capacity(k);
    for _ in 0..k {
        weights.push(0.5 + s.stream(0).random::<f64>());
        let mean: Vec<f64> = if k == 1 {
            vec![0.0; d]
        } else {
            s.normal_vec(d).iter().map(|v| 0.5 * v).collect()
        };
        means.push(mean);
        let g = DMatrix::from_row_slice(d, d, &s.normal_vec(d * d));
        let q = g.qr().q();
        let lam: Vec<f64> = (0..d)
            .map(|_| 0.25f64 * 4f64.powf(s.stream(0).random::<f64>()))
            .collect();
        let c = &q * DMatrix::from_diagonal(&DVector::from_vec(lam)) * q.transpose();
        covs.push((&c + c.transpose()) * 0.5);
    }
    let prior = GaussianMixture::new(weights, means, covs)?;
    let a = DMatrix::from_row_slice(m, d, &s.normal_vec(m * d)) / (m as f64).sqrt();
    let mut xs = SampleStreams::new(seed ^ 0x7472_7565, [0]);
    let x: Vec<f64> = prior.sample_exact(&mut xs)?.flatten_all()?.to_vec1()?;
    let x_true = DVector::from_vec(x);
    let noise = DVector::from_vec(xs.normal_vec(m));
    let y = &a * &x_true + noise * eta;
    Ok(Instance {
        prior,
        a,
        x_true,
        y,
        eta,
    })
}

/// A denoising instance: `x_true ~ N(0, I_d)`, `y = x_true + eta xi`, both from stream 0 of `seed`.
pub fn denoise_instance(d: usize, eta: f64, seed: u64) -> Result<(Vec<f64>, Vec<f64>)> {
    if d == 0 || !(eta > 0.0) || !eta.is_finite() {
        return Err(Error::param("d/eta", "need d >= 1 and eta > 0"));
    }
    let mut s = SampleStreams::new(seed, [0]);
    let x = s.normal_vec(d);
    let y: Vec<f64> = x
        .iter()
        .zip(s.normal_vec(d))
        .map(|(x, z)| x + eta * z)
        .collect();
    Ok((x, y))
}
