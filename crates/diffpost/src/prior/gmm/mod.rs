//! Gaussian-mixture prior `p(x) = sum_k w_k N(mu_k, S_k)` with full, diagonal, isotropic or
//! low-rank-plus-floor (probabilistic PCA) covariances (a Gaussian is K = 1). Everything is closed form (docs/algorithms.md, "Exact references"):
//! the smoothed prior is `sum_k w_k N(mu_k, S_k + sigma^2 I)`, so the smoothed score, the Tweedie
//! denoiser and the log-density are exact at every `sigma >= 0` (at `sigma = 0` the `S_k` must be
//! positive definite), and the posterior under a linear Gaussian measurement is again a mixture.
//!
//! The type, its validation and the mixture's moments are here; `npz` holds the file format
//! (`from_npz`, `write_npz`), `components` the smoothed components at one `sigma` and the generic
//! score, `fused` the fused CPU score kernel, `posterior` the closed forms under a linear Gaussian
//! measurement (posterior and evidence), `denoiser` the prior traits (`Denoiser`, `LogDensity`,
//! `ExactSample`), `denoising` exact draws of `p(x | x + rho e = z)` (SMC with Gibbs moves).

use std::sync::{Arc, Mutex};

use candle_core::{Device, Tensor};
use nalgebra::{DMatrix, DVector};

use crate::{Error, Result};

mod components;
mod denoiser;
mod denoising;
mod fused;
mod npz;
mod posterior;

/// How the component covariances are stored (detected from the matrices).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CovKind {
    /// Every `S_k = v_k I`.
    Isotropic,
    /// Every `S_k` diagonal.
    Diagonal,
    /// General symmetric positive semi-definite `S_k`.
    Full,
    /// `S_k = U_k diag(lambda_k) U_k^T + floor_k (I - U_k U_k^T)`: `r` eigenpairs and an
    /// isotropic floor (a mixture of probabilistic PCA, as fitted to images; every operation
    /// costs `O(K r d)` per row instead of `O(K d^2)`).
    LowRank,
}

#[derive(Debug, Clone)]
enum Covs {
    /// Diagonals of the `S_k` (isotropic or diagonal).
    Diag(Vec<DVector<f64>>),
    /// Full matrices with their eigendecompositions `S_k = U diag(lambda) U^T` (lambda clamped >= 0).
    Full {
        covs: Vec<DMatrix<f64>>,
        eigvals: Vec<DVector<f64>>,
        eigvecs: Vec<DMatrix<f64>>,
    },
    /// `S_k = U_k diag(lambda_k) U_k^T + floor_k (I - U_k U_k^T)`, `U_k: [d, r]` orthonormal
    /// columns (the same `r` for every component), `lambda_k: [r]`, `floor_k > 0`.
    LowRank {
        u: Vec<DMatrix<f64>>,
        lambda: Vec<DVector<f64>>,
        floor: Vec<f64>,
    },
}

/// Precomputed tensors of the smoothed prior at one `sigma`.
struct Smoothed {
    /// Low-rank covariances only (then `prec` is unused).
    low_rank: Option<LowRankSmoothed>,
    /// Full: `[d, K d]` concatenated precisions `P_k = (S_k + sigma^2 I)^-1`; diag: `[K, d]` diagonals.
    prec: Tensor,
    /// Full only: `[K, d]` rows `P_k mu_k`.
    prec_mu: Option<Tensor>,
    /// `[K]`: `log w_k - 0.5 log det(S_k + sigma^2 I) - d/2 log(2 pi)`.
    log_const: Tensor,
    /// Full covariances: row-major host copies for the fused CPU kernel
    /// (`[d, K d]` precisions, `[K, d]` `P_k mu_k`, `[K]` constants).
    host: Option<(Vec<f64>, Vec<f64>, Vec<f64>)>,
}

/// The smoothed low-rank components: `P_k = c0_k I + U_k diag(coef_k) U_k^T` with
/// `c0_k = 1 / (floor_k + sigma^2)`, `coef_kj = 1 / (lambda_kj + sigma^2) - c0_k`.
struct LowRankSmoothed {
    /// `[d, K r]`: the `U_k` side by side.
    ucat: Tensor,
    /// `[K, r, d]`: the `U_k^T`.
    ut: Tensor,
    /// `[K, r]`: `U_k^T mu_k`.
    utmu: Tensor,
    /// `[K, r]`.
    coef: Tensor,
    /// `[K]`.
    c0: Tensor,
}

/// Gaussian-mixture prior. See the module docs.
pub struct GaussianMixture {
    d: usize,
    weights: Vec<f64>,
    means: Vec<DVector<f64>>,
    covs: Covs,
    kind: CovKind,
    device: Device,
    means_t: Tensor,
    cache: Mutex<Vec<(u64, Arc<Smoothed>)>>,
}

/// Cheap: tensors share storage; the per-sigma cache starts empty.
impl Clone for GaussianMixture {
    fn clone(&self) -> Self {
        Self {
            d: self.d,
            weights: self.weights.clone(),
            means: self.means.clone(),
            covs: self.covs.clone(),
            kind: self.kind,
            device: self.device.clone(),
            means_t: self.means_t.clone(),
            cache: Mutex::new(Vec::new()),
        }
    }
}

impl std::fmt::Debug for GaussianMixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GaussianMixture(K={}, d={}, {:?})",
            self.k(),
            self.d,
            self.kind
        )
    }
}

impl GaussianMixture {
    /// Builds a mixture from weights `[K]`, means `K x [d]` and covariances `K x [d, d]`,
    /// validating shapes, finiteness, symmetry and positive semi-definiteness. Weights are
    /// normalised to sum to one. Diagonal/isotropic structure is detected (exact zeros off the
    /// diagonal) and stored compactly, so d = 1000 stays cheap.
    pub fn new(weights: Vec<f64>, means: Vec<Vec<f64>>, covs: Vec<DMatrix<f64>>) -> Result<Self> {
        let k = weights.len();
        if k == 0 {
            return Err(Error::param("weights", "at least one component is needed"));
        }
        if means.len() != k || covs.len() != k {
            return Err(Error::shape(
                "means/covs",
                format!("K = {k} components (from weights)"),
                &[means.len(), covs.len()],
            ));
        }
        let d = means[0].len();
        if d == 0 {
            return Err(Error::param("means", "dimension d must be positive"));
        }
        let (weights, mv) = Self::check_weights_means(weights, &means, d)?;
        let mut diagonal = true;
        let mut isotropic = true;
        for (i, c) in covs.iter().enumerate() {
            if c.nrows() != d || c.ncols() != d {
                return Err(Error::shape(
                    format!("covs[{i}]"),
                    format!("[{d}, {d}]"),
                    &[c.nrows(), c.ncols()],
                ));
            }
            if c.iter().any(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    what: format!("covs[{i}]"),
                });
            }
            let scale = c.diagonal().amax().max(1e-300);
            for r in 0..d {
                if c[(r, r)] < 0.0 {
                    return Err(Error::param(
                        format!("covs[{i}]"),
                        format!("negative variance {} at ({r},{r})", c[(r, r)]),
                    ));
                }
                for s in 0..r {
                    if (c[(r, s)] - c[(s, r)]).abs() > 1e-8 * scale {
                        return Err(Error::param(
                            format!("covs[{i}]"),
                            format!("not symmetric at ({r},{s})"),
                        ));
                    }
                    if c[(r, s)] != 0.0 || c[(s, r)] != 0.0 {
                        diagonal = false;
                    }
                }
                if c[(r, r)] != c[(0, 0)] {
                    isotropic = false;
                }
            }
        }
        let (covs_s, kind) = if diagonal {
            let kind = if isotropic {
                CovKind::Isotropic
            } else {
                CovKind::Diagonal
            };
            (
                Covs::Diag(covs.iter().map(|c| c.diagonal()).collect()),
                kind,
            )
        } else {
            let mut eigvals = Vec::with_capacity(k);
            let mut eigvecs = Vec::with_capacity(k);
            for (i, c) in covs.iter().enumerate() {
                let sym = (c + c.transpose()) * 0.5;
                let e = nalgebra::SymmetricEigen::new(sym.clone());
                let lmax = e.eigenvalues.amax().max(1e-300);
                if e.eigenvalues.min() < -1e-8 * lmax {
                    return Err(Error::param(
                        format!("covs[{i}]"),
                        format!(
                            "not positive semi-definite (smallest eigenvalue {:.3e})",
                            e.eigenvalues.min()
                        ),
                    ));
                }
                eigvals.push(e.eigenvalues.map(|v| v.max(0.0)));
                eigvecs.push(e.eigenvectors);
            }
            (
                Covs::Full {
                    covs: covs
                        .into_iter()
                        .map(|c| (&c + c.transpose()) * 0.5)
                        .collect(),
                    eigvals,
                    eigvecs,
                },
                CovKind::Full,
            )
        };
        Self::assemble(d, weights, mv, covs_s, kind, Device::Cpu)
    }

    /// Builds a mixture of probabilistic PCA: `S_k = U_k diag(lambda_k) U_k^T + floor_k (I -
    /// U_k U_k^T)` from `eigvecs[k]: [d, r]` (columns: eigenvectors; the same `r` for every
    /// component, `r <= d`), `eigvals[k]: [r]` (`>= 0`) and `floors[k] > 0`. The columns must be
    /// orthonormal to within `1e-3` (f32 files); they are re-orthonormalised (QR) so that the
    /// covariance is exactly symmetric positive definite in f64.
    pub fn low_rank(
        weights: Vec<f64>,
        means: Vec<Vec<f64>>,
        eigvecs: Vec<DMatrix<f64>>,
        eigvals: Vec<DVector<f64>>,
        floors: Vec<f64>,
    ) -> Result<Self> {
        let k = weights.len();
        if k == 0 {
            return Err(Error::param("weights", "at least one component is needed"));
        }
        if means.len() != k || eigvecs.len() != k || eigvals.len() != k || floors.len() != k {
            return Err(Error::shape(
                "means/eigvecs/eigvals/floor",
                format!("K = {k} components (from weights)"),
                &[means.len(), eigvecs.len(), eigvals.len(), floors.len()],
            ));
        }
        let d = means[0].len();
        if d == 0 {
            return Err(Error::param("means", "dimension d must be positive"));
        }
        let r = eigvecs[0].ncols();
        let (weights, mv) = Self::check_weights_means(weights, &means, d)?;
        let mut us = Vec::with_capacity(k);
        for i in 0..k {
            let (u, l, f) = (&eigvecs[i], &eigvals[i], floors[i]);
            if u.nrows() != d || u.ncols() != r || r > d {
                return Err(Error::shape(
                    format!("eigvecs[{i}]"),
                    format!("[d = {d}, r = {r}] with r <= d"),
                    &[u.nrows(), u.ncols()],
                ));
            }
            if l.len() != r {
                return Err(Error::shape(
                    format!("eigvals[{i}]"),
                    format!("[r = {r}]"),
                    &[l.len()],
                ));
            }
            if u.iter().chain(l.iter()).any(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    what: format!("eigvecs/eigvals[{i}]"),
                });
            }
            if !(f > 0.0) || !f.is_finite() {
                return Err(Error::param(
                    format!("floor[{i}]"),
                    format!("must be finite and > 0, got {f}"),
                ));
            }
            if let Some(j) = l.iter().position(|&v| v < 0.0) {
                return Err(Error::param(
                    format!("eigvals[{i}]"),
                    format!("negative variance {} at {j}", l[j]),
                ));
            }
            let gram = u.transpose() * u;
            let off = (gram - DMatrix::<f64>::identity(r, r)).amax();
            if off > 1e-3 {
                return Err(Error::param(
                    format!("eigvecs[{i}]"),
                    format!("columns are not orthonormal (|U^T U - I|_max = {off:.2e})"),
                ));
            }
            let q = u.clone().qr().q();
            // QR may flip a column's sign; the covariance does not depend on signs.
            us.push(q);
        }
        Self::assemble(
            d,
            weights,
            mv,
            Covs::LowRank {
                u: us,
                lambda: eigvals,
                floor: floors,
            },
            CovKind::LowRank,
            Device::Cpu,
        )
    }

    /// Normalised weights and checked means (shared by the constructors).
    fn check_weights_means(
        weights: Vec<f64>,
        means: &[Vec<f64>],
        d: usize,
    ) -> Result<(Vec<f64>, Vec<DVector<f64>>)> {
        if weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
            return Err(Error::param("weights", "weights must be finite and >= 0"));
        }
        let total: f64 = weights.iter().sum();
        if total <= 0.0 {
            return Err(Error::param("weights", "weights must not all be zero"));
        }
        let weights: Vec<f64> = weights.iter().map(|w| w / total).collect();
        let mut mv = Vec::with_capacity(means.len());
        for (i, m) in means.iter().enumerate() {
            if m.len() != d {
                return Err(Error::shape(
                    format!("means[{i}]"),
                    format!("[{d}]"),
                    &[m.len()],
                ));
            }
            if m.iter().any(|v| !v.is_finite()) {
                return Err(Error::NonFinite {
                    what: format!("means[{i}]"),
                });
            }
            mv.push(DVector::from_column_slice(m));
        }
        Ok((weights, mv))
    }

    /// Isotropic Gaussian `N(mean, var I)` (K = 1).
    pub fn isotropic(mean: Vec<f64>, var: f64) -> Result<Self> {
        let d = mean.len();
        if !(var > 0.0) || !var.is_finite() {
            return Err(Error::param("var", "must be positive and finite"));
        }
        Self::new(vec![1.0], vec![mean], vec![DMatrix::identity(d, d) * var])
    }

    fn assemble(
        d: usize,
        weights: Vec<f64>,
        means: Vec<DVector<f64>>,
        covs: Covs,
        kind: CovKind,
        device: Device,
    ) -> Result<Self> {
        let k = weights.len();
        let flat: Vec<f64> = means.iter().flat_map(|m| m.iter().copied()).collect();
        let means_t = Tensor::from_vec(flat, (k, d), &device)?;
        Ok(Self {
            d,
            weights,
            means,
            covs,
            kind,
            device,
            means_t,
            cache: Mutex::new(Vec::new()),
        })
    }

    /// Moves the precomputed tensors to `device` (CUDA with the `cuda` feature).
    pub fn to_device(self, device: &Device) -> Result<Self> {
        Self::assemble(
            self.d,
            self.weights,
            self.means,
            self.covs,
            self.kind,
            device.clone(),
        )
    }

    /// Number of components K.
    pub fn k(&self) -> usize {
        self.weights.len()
    }
    /// Mixture weights (normalised).
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }
    /// Component means.
    pub fn means(&self) -> &[DVector<f64>] {
        &self.means
    }
    /// Detected covariance structure.
    pub fn cov_kind(&self) -> CovKind {
        self.kind
    }
    /// Covariance of component `i` as a dense matrix.
    pub fn cov(&self, i: usize) -> DMatrix<f64> {
        match &self.covs {
            Covs::Diag(v) => DMatrix::from_diagonal(&v[i]),
            Covs::Full { covs, .. } => covs[i].clone(),
            Covs::LowRank { u, lambda, floor } => {
                let shifted = lambda[i].map(|l| l - floor[i]);
                let mut c = &u[i] * DMatrix::from_diagonal(&shifted) * u[i].transpose();
                for j in 0..self.d {
                    c[(j, j)] += floor[i];
                }
                c
            }
        }
    }
    /// Eigenvalues of `S_i` (unsorted, with multiplicity: `d` values).
    fn eigvals(&self, i: usize) -> DVector<f64> {
        match &self.covs {
            Covs::Diag(v) => v[i].clone(),
            Covs::Full { eigvals, .. } => eigvals[i].clone(),
            Covs::LowRank { lambda, floor, .. } => {
                let r = lambda[i].len();
                DVector::from_fn(self.d, |j, _| if j < r { lambda[i][j] } else { floor[i] })
            }
        }
    }

    /// Mean of the whole mixture `sum_k w_k mu_k`.
    pub fn mean(&self) -> DVector<f64> {
        let mut c = DVector::zeros(self.d);
        for (w, m) in self.weights.iter().zip(&self.means) {
            c += m * *w;
        }
        c
    }

    /// Covariance of the whole mixture `sum_k w_k (S_k + mu_k mu_k^T) - c c^T`.
    pub fn covariance(&self) -> DMatrix<f64> {
        let c = self.mean();
        let mut out = DMatrix::zeros(self.d, self.d);
        for i in 0..self.k() {
            let dm = &self.means[i] - &c;
            out += (self.cov(i) + &dm * dm.transpose()) * self.weights[i];
        }
        out
    }

    /// Trace of the mixture covariance (cheap: no d x d matrix).
    pub fn covariance_trace(&self) -> f64 {
        let c = self.mean();
        (0..self.k())
            .map(|i| {
                self.weights[i] * (self.eigvals(i).sum() + (&self.means[i] - &c).norm_squared())
            })
            .sum()
    }

    /// Diagonal of the mixture covariance.
    pub fn covariance_diagonal(&self) -> DVector<f64> {
        let c = self.mean();
        let mut out = DVector::zeros(self.d);
        for i in 0..self.k() {
            let dm = &self.means[i] - &c;
            let diag = match &self.covs {
                Covs::Diag(v) => v[i].clone(),
                Covs::Full { covs, .. } => covs[i].diagonal(),
                Covs::LowRank { u, lambda, floor } => DVector::from_fn(self.d, |j, _| {
                    floor[i]
                        + (0..lambda[i].len())
                            .map(|c| (lambda[i][c] - floor[i]) * u[i][(j, c)].powi(2))
                            .sum::<f64>()
                }),
            };
            out += (diag + dm.component_mul(&dm)) * self.weights[i];
        }
        out
    }

    /// The mixture's components as dense `(weight, mean, cov)`.
    pub fn components_dense(&self) -> Vec<(f64, DVector<f64>, DMatrix<f64>)> {
        (0..self.k())
            .map(|i| (self.weights[i], self.means[i].clone(), self.cov(i)))
            .collect()
    }

    /// Largest eigenvalue over the component covariances.
    pub fn max_eigenvalue(&self) -> f64 {
        (0..self.k())
            .map(|i| self.eigvals(i).max())
            .fold(0.0, f64::max)
    }
}
