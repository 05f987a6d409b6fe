//! Fitting a Gaussian mixture with low-rank-plus-floor covariances to data by EM: a mixture of
//! probabilistic PCA (M. E. Tipping and C. M. Bishop, "Mixtures of probabilistic principal
//! component analyzers", Neural Computation 11(2), 1999; the one-component solution is their
//! "Probabilistic principal component analysis", JRSS B 61(3), 1999, Eq. 7-8).
//!
//! Component `k` has weight `w_k`, mean `mu_k` and covariance
//!
//! ```text
//! S_k = sum_{j<r} lambda_kj u_kj u_kj^T + floor_k (I - sum_{j<r} u_kj u_kj^T)
//! ```
//!
//! with orthonormal `u_kj` and `lambda_kj >= floor_k > 0`. EM for this model is closed form:
//!
//! - **E-step**: with `p = U^T (x - mu)` (only the r projections are needed),
//!   `-2 log N(x; mu, S) = d log 2 pi + sum_j log lambda_j + (d - r) log floor +
//!   sum_j p_j^2 / lambda_j + (|x - mu|^2 - |p|^2) / floor`, and responsibilities by
//!   log-sum-exp.
//! - **M-step**: `w_k = N_k / N`, `mu_k` the responsibility-weighted mean, `C_k` the weighted
//!   sample covariance (one matrix product of the centred data scaled by `sqrt(responsibility)`);
//!   its top-r eigenpairs give `u` and `lambda`, and `floor` is the mean of the other `d - r`
//!   eigenvalues: the maximiser of the expected complete-data log-likelihood over this family
//!   (Tipping & Bishop, JRSS B, Eq. 7-8). Then a ridge: the covariance used is the fit to
//!   `C_k + ridge I` (every eigenvalue plus `ridge`), with `floor_k >= floor_min`.
//!
//! With `ridge = 0` and `floor_min` inactive this is exact EM, so the log-likelihood never
//! decreases (Dempster, Laird and Rubin 1977). The ridge keeps floors away from 0 where pixels
//! never vary (image borders), which would otherwise make the prior arbitrarily stiff; with it
//! the M-step is no longer the exact maximiser, and the log-likelihood may dip slightly near
//! convergence (MNIST with ridge 1e-2: -0.017 nats at one of 20 iterations).
//!
//! Initialisation: seeded k-means++ (Arthur and Vassilvitskii 2007) and [`KMEANS_ITERS`] Lloyd
//! iterations, then one M-step on the hard assignments. Everything is deterministic for a given
//! seed: work is split over components (in parallel), every sum runs in a fixed order, so the
//! result does not depend on the number of threads.
//!
//! [`FittedMixture::write_npz`] writes `weights [K] f64`, `means [K,d] f32`, `eigvecs [K,r,d]
//! f32` (row `j` of block `k` is `u_kj`), `eigvals [K,r] f32` (descending, each `>= floor`) and
//! `floor [K] f64`.

use std::path::Path;

use candle_core::{Device, Tensor};
use nalgebra::{DMatrix, DVector};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::{Error, Result};

/// Lloyd iterations after k-means++ seeding (fewer when the assignments stop changing).
pub const KMEANS_ITERS: usize = 10;

/// Columns per block of the covariance product and of the E-step's projections (bounds memory).
const CHUNK: usize = 4096;

/// A component whose total responsibility falls below this keeps its previous mean and
/// covariance (its weight still follows `N_k / N`).
const MIN_MASS: f64 = 1e-8;

/// Settings of [`fit_ppca_mixture`].
#[derive(Debug, Clone, PartialEq)]
pub struct FitOptions {
    /// Number of mixture components `K`.
    pub components: usize,
    /// Eigenpairs kept per component `r` (`1 <= r < d`).
    pub rank: usize,
    /// EM iterations (0: the k-means initialisation alone).
    pub iters: usize,
    /// Added to every eigenvalue of each weighted covariance (`>= 0`).
    pub ridge: f64,
    /// Smallest floor (`> 0`).
    pub floor_min: f64,
    /// Seed of k-means++.
    pub seed: u64,
    /// Use only the first `max_images` rows of the data (`None`: all).
    pub max_images: Option<usize>,
    /// Stop early once an iteration improves the mean log-likelihood by less than
    /// `tol * max(|log-lik|, 1)` (0: run all `iters`).
    pub tol: f64,
}

impl Default for FitOptions {
    fn default() -> Self {
        Self {
            components: 10,
            rank: 32,
            iters: 20,
            ridge: 1e-3,
            floor_min: 1e-4,
            seed: 0,
            max_images: None,
            tol: 0.0,
        }
    }
}

impl FitOptions {
    /// Checks the settings on their own (the data's size is checked by [`fit_ppca_mixture`]).
    pub fn validate(&self) -> Result<()> {
        if self.components == 0 {
            return Err(Error::param("components", "must be at least 1"));
        }
        if self.rank == 0 {
            return Err(Error::param("rank", "must be at least 1"));
        }
        if !(self.ridge >= 0.0) || !self.ridge.is_finite() {
            return Err(Error::param(
                "ridge",
                format!("must be finite and >= 0, got {}", self.ridge),
            ));
        }
        if !(self.floor_min > 0.0) || !self.floor_min.is_finite() {
            return Err(Error::param(
                "floor_min",
                format!("must be finite and > 0, got {}", self.floor_min),
            ));
        }
        if let Some(m) = self.max_images {
            if m < self.components {
                return Err(Error::param(
                    "max_images",
                    format!(
                        "{m} images cannot fit {} components; use at least as many images",
                        self.components
                    ),
                ));
            }
        }
        if !(self.tol >= 0.0) || !self.tol.is_finite() {
            return Err(Error::param(
                "tol",
                format!("must be finite and >= 0, got {}", self.tol),
            ));
        }
        Ok(())
    }

    /// Checks the settings against `n` rows of dimension `d` (after [`FitOptions::validate`]).
    pub fn validate_for(&self, n: usize, d: usize) -> Result<()> {
        self.validate()?;
        if self.rank >= d {
            return Err(Error::param(
                "rank",
                format!(
                    "must be below the dimension d = {d} (the floor is the mean of the d - rank \
                     remaining eigenvalues), got {}",
                    self.rank
                ),
            ));
        }
        if n < self.components {
            return Err(Error::param(
                "components",
                format!(
                    "{} components need at least as many images, got {n}",
                    self.components
                ),
            ));
        }
        Ok(())
    }
}

/// A fitted mixture of probabilistic PCA (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct FittedMixture {
    /// Dimension `d`.
    pub d: usize,
    /// Number of rows the fit used.
    pub images: usize,
    /// `w_k`, summing to one.
    pub weights: Vec<f64>,
    /// `mu_k`, `K x [d]`.
    pub means: Vec<Vec<f64>>,
    /// `u_kj`, `K x r x [d]`: orthonormal for each `k`, in the order of `eigvals`.
    pub eigvecs: Vec<Vec<Vec<f64>>>,
    /// `lambda_kj`, `K x [r]`, descending, each `>= floors[k]`.
    pub eigvals: Vec<Vec<f64>>,
    /// `floor_k`, `[K]`.
    pub floors: Vec<f64>,
    /// Mean log-likelihood (nats per row) of the initialisation (entry 0) and after each EM
    /// iteration; the last entry is that of the returned parameters.
    pub log_lik_per_iter: Vec<f64>,
}

/// One component in the form the E- and M-steps use.
#[derive(Debug, Clone)]
struct Comp {
    mean: DVector<f64>,
    /// `[d, r]`, eigenvectors as columns.
    u: DMatrix<f64>,
    lambda: Vec<f64>,
    floor: f64,
}

impl Comp {
    /// `log N(x_n; mu, S)` for every column `x_n` of `x` (`[d, n]`), in the low-rank form.
    fn log_density(&self, x: &DMatrix<f64>) -> Vec<f64> {
        let (d, n) = x.shape();
        let r = self.lambda.len();
        let logdet: f64 =
            self.lambda.iter().map(|l| l.ln()).sum::<f64>() + (d - r) as f64 * self.floor.ln();
        let c = -0.5 * (d as f64 * (2.0 * std::f64::consts::PI).ln() + logdet);
        let ut = self.u.transpose();
        let um = &ut * &self.mean;
        let mean = self.mean.as_slice();
        let mut out = Vec::with_capacity(n);
        let mut start = 0;
        while start < n {
            let m = CHUNK.min(n - start);
            let xc = x.columns(start, m);
            let mut p = DMatrix::<f64>::zeros(r, m);
            p.gemm(1.0, &ut, &xc, 0.0);
            for i in 0..m {
                let col = xc.column(i);
                let diff2: f64 = col.iter().zip(mean).map(|(a, b)| (a - b) * (a - b)).sum();
                let (mut proj2, mut quad) = (0.0, 0.0);
                for j in 0..r {
                    let pj = p[(j, i)] - um[j];
                    proj2 += pj * pj;
                    quad += pj * pj / self.lambda[j];
                }
                quad += (diff2 - proj2).max(0.0) / self.floor;
                out.push(c - 0.5 * quad);
            }
            start += m;
        }
        out
    }
}

/// The weights in log form (`-inf` for a weight of exactly 0).
fn log_weights(w: &[f64]) -> Vec<f64> {
    w.iter().map(|w| w.ln()).collect()
}

/// E-step: the mean log-likelihood and the responsibilities `[K][n]`.
fn e_step(x: &DMatrix<f64>, comps: &[Comp], weights: &[f64]) -> (f64, Vec<Vec<f64>>) {
    let n = x.ncols();
    let lw = log_weights(weights);
    let mut lp: Vec<Vec<f64>> = comps.par_iter().map(|c| c.log_density(x)).collect();
    for (l, w) in lp.iter_mut().zip(&lw) {
        for v in l.iter_mut() {
            *v += w;
        }
    }
    let mut total = 0.0;
    for i in 0..n {
        let m = lp.iter().map(|l| l[i]).fold(f64::NEG_INFINITY, f64::max);
        let s: f64 = lp.iter().map(|l| (l[i] - m).exp()).sum();
        total += m + s.ln();
        for l in lp.iter_mut() {
            l[i] = (l[i] - m).exp() / s;
        }
    }
    (total / n as f64, lp)
}

/// What the EM computes; the broken variants exist only so that the tests can show that their
/// checks detect a wrong EM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
enum Variant {
    /// The EM of the module docs.
    Em,
    /// Broken: the covariances stay those of the k-means initialisation.
    FrozenCovariance,
    /// Broken: every responsibility is `1/K`.
    UniformResponsibilities,
}

/// Eigenpairs of the symmetric `m`, `None` unless every value is finite. nalgebra's
/// `SymmetricEigen` can return NaN for some matrices (nalgebra issue 379); a second try on
/// `m + s I` (`s` the mean diagonal, subtracted afterwards: same eigenvectors) avoids it.
fn symmetric_eigen(m: &DMatrix<f64>) -> Option<(DVector<f64>, DMatrix<f64>)> {
    let n = m.nrows();
    let finite = |e: &nalgebra::SymmetricEigen<f64, nalgebra::Dyn>| {
        e.eigenvalues
            .iter()
            .chain(e.eigenvectors.iter())
            .all(|v| v.is_finite())
    };
    let max_iter = 30 * n.max(10);
    if let Some(e) = nalgebra::SymmetricEigen::try_new(m.clone(), f64::EPSILON, max_iter) {
        if finite(&e) {
            return Some((e.eigenvalues, e.eigenvectors));
        }
    }
    let s = m.trace() / n as f64;
    let shifted = m + DMatrix::identity(n, n) * s;
    let e = nalgebra::SymmetricEigen::try_new(shifted, f64::EPSILON, max_iter)?;
    finite(&e).then(|| (e.eigenvalues.add_scalar(-s), e.eigenvectors))
}

/// The top-r eigenpairs and floor of the fit to `cov + ridge I` (`cov` symmetric positive
/// semi-definite `[d, d]`). Coordinates with zero variance (image borders) are exact
/// eigenvectors of eigenvalue 0; the decomposition runs on the others only (exact, faster, and
/// clear of nalgebra's trouble with zero rows).
fn ppca_from_cov(cov: &DMatrix<f64>, opts: &FitOptions, what: usize) -> Result<Comp> {
    let d = cov.nrows();
    let r = opts.rank;
    let active: Vec<usize> = (0..d).filter(|&i| cov[(i, i)] > 0.0).collect();
    let a = active.len();
    let sub = DMatrix::from_fn(a, a, |i, j| cov[(active[i], active[j])]);
    let (vals, vecs) = if a > 0 {
        symmetric_eigen(&sub).ok_or_else(|| {
            Error::Numerical(format!(
                "the eigendecomposition of component {what}'s covariance failed"
            ))
        })?
    } else {
        (DVector::zeros(0), DMatrix::zeros(0, 0))
    };
    // Candidates 0..a: the active block's eigenpairs; a..d: the unit vectors of the others.
    let value = |c: usize| if c < a { vals[c].max(0.0) } else { 0.0 };
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&x, &y| value(y).total_cmp(&value(x)).then(x.cmp(&y)));
    let inactive: Vec<usize> = (0..d).filter(|&i| cov[(i, i)] <= 0.0).collect();
    let rest = order[r..].iter().map(|&c| value(c)).sum::<f64>() / (d - r) as f64;
    let floor = (rest + opts.ridge).max(opts.floor_min);
    let lambda: Vec<f64> = order[..r]
        .iter()
        .map(|&c| (value(c) + opts.ridge).max(floor))
        .collect();
    let mut u = DMatrix::zeros(d, r);
    for (j, &c) in order[..r].iter().enumerate() {
        if c < a {
            for (i, &row) in active.iter().enumerate() {
                u[(row, j)] = vecs[(i, c)];
            }
        } else {
            u[(inactive[c - a], j)] = 1.0;
        }
    }
    Ok(Comp {
        mean: DVector::zeros(d),
        u,
        lambda,
        floor,
    })
}

/// M-step for one component: `(N_k, component)`. `prev` is kept when `N_k` is negligible (and
/// gives the covariance of [`Variant::FrozenCovariance`]).
fn m_step_one(
    x: &DMatrix<f64>,
    resp: &[f64],
    prev: Option<&Comp>,
    opts: &FitOptions,
    variant: Variant,
    k: usize,
) -> Result<(f64, Comp)> {
    let (d, n) = x.shape();
    let nk: f64 = resp.iter().sum();
    if !(nk >= MIN_MASS) {
        return match prev {
            Some(p) => Ok((nk, p.clone())),
            None => Err(Error::Numerical(format!(
                "component {k} has no data after k-means; the data may hold fewer than {} \
                 distinct images: use fewer components",
                opts.components
            ))),
        };
    }
    let mut mean = vec![0.0; d];
    for (i, &r) in resp.iter().enumerate() {
        if r > 0.0 {
            for (m, v) in mean.iter_mut().zip(x.column(i).iter()) {
                *m += r * v;
            }
        }
    }
    for m in mean.iter_mut() {
        *m /= nk;
    }
    let mean = DVector::from_vec(mean);
    if variant == Variant::FrozenCovariance {
        if let Some(p) = prev {
            let mut c = p.clone();
            c.mean = mean;
            return Ok((nk, c));
        }
    }
    // C = Y Y^T / N_k with Y's columns sqrt(r_n) (x_n - mu), in blocks of CHUNK columns (the
    // rows with r_n = 0 contribute nothing and are skipped).
    let rows: Vec<usize> = (0..n).filter(|&i| resp[i] > 0.0).collect();
    let mut cov = DMatrix::<f64>::zeros(d, d);
    for block in rows.chunks(CHUNK) {
        let mut y = DMatrix::<f64>::zeros(d, block.len());
        for (c, &i) in block.iter().enumerate() {
            let s = resp[i].sqrt();
            for (dst, (v, m)) in y
                .column_mut(c)
                .iter_mut()
                .zip(x.column(i).iter().zip(mean.iter()))
            {
                *dst = s * (v - m);
            }
        }
        let yt = y.transpose();
        cov.gemm(1.0, &y, &yt, 1.0);
    }
    let cov = (&cov + cov.transpose()) * (0.5 / nk);
    let mut comp = ppca_from_cov(&cov, opts, k)?;
    comp.mean = mean;
    Ok((nk, comp))
}

/// M-step: weights and components.
fn m_step(
    x: &DMatrix<f64>,
    resp: &[Vec<f64>],
    prev: Option<&[Comp]>,
    opts: &FitOptions,
    variant: Variant,
) -> Result<(Vec<f64>, Vec<Comp>)> {
    let n = x.ncols() as f64;
    let out: Vec<(f64, Comp)> = (0..resp.len())
        .into_par_iter()
        .map(|k| m_step_one(x, &resp[k], prev.map(|p| &p[k]), opts, variant, k))
        .collect::<Result<_>>()?;
    let weights = out.iter().map(|(nk, _)| nk / n).collect();
    Ok((weights, out.into_iter().map(|(_, c)| c).collect()))
}

fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum()
}

/// Index of the nearest center (the first on ties) for every column.
fn assign(x: &DMatrix<f64>, centers: &[Vec<f64>]) -> Vec<usize> {
    let d = x.nrows();
    x.as_slice()
        .par_chunks(d)
        .map(|col| {
            let mut best = (f64::INFINITY, 0);
            for (k, c) in centers.iter().enumerate() {
                let dist = sq_dist(col, c);
                if dist < best.0 {
                    best = (dist, k);
                }
            }
            best.1
        })
        .collect()
}

/// Seeded k-means++ then up to [`KMEANS_ITERS`] Lloyd iterations: the assignment of each column.
fn kmeans(x: &DMatrix<f64>, k: usize, seed: u64) -> Result<Vec<usize>> {
    let (d, n) = x.shape();
    let col = |i: usize| &x.as_slice()[i * d..(i + 1) * d];
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut centers = vec![col(rng.random_range(0..n)).to_vec()];
    let mut d2: Vec<f64> = (0..n).map(|i| sq_dist(col(i), &centers[0])).collect();
    while centers.len() < k {
        let total: f64 = d2.iter().sum();
        if !(total > 0.0) {
            return Err(Error::param(
                "components",
                format!(
                    "the data has only {} distinct images, fewer than the {k} components",
                    centers.len()
                ),
            ));
        }
        let target = rng.random::<f64>() * total;
        let mut acc = 0.0;
        let mut pick = None;
        for (i, &v) in d2.iter().enumerate() {
            if v > 0.0 {
                pick = Some(i);
                acc += v;
                if acc > target {
                    break;
                }
            }
        }
        let c = col(pick.expect("total > 0")).to_vec();
        for (i, v) in d2.iter_mut().enumerate() {
            *v = v.min(sq_dist(col(i), &c));
        }
        centers.push(c);
    }
    let mut labels = assign(x, &centers);
    for _ in 0..KMEANS_ITERS {
        let mut sums = vec![vec![0.0; d]; k];
        let mut counts = vec![0usize; k];
        for (i, &l) in labels.iter().enumerate() {
            counts[l] += 1;
            for (s, v) in sums[l].iter_mut().zip(col(i)) {
                *s += v;
            }
        }
        for ((c, s), &m) in centers.iter_mut().zip(sums).zip(&counts) {
            // An empty cluster keeps its center.
            if m > 0 {
                *c = s.into_iter().map(|v| v / m as f64).collect();
            }
        }
        let next = assign(x, &centers);
        let done = next == labels;
        labels = next;
        if done {
            break;
        }
    }
    Ok(labels)
}

/// Checks `data` (`[n, d]` row-major) and returns it as `[d, n]` columns.
fn data_matrix(data: &[f64], d: usize, max_images: Option<usize>) -> Result<DMatrix<f64>> {
    if d == 0 {
        return Err(Error::param("d", "the dimension must be positive"));
    }
    if data.is_empty() || !data.len().is_multiple_of(d) {
        return Err(Error::shape(
            "data",
            format!("[N, d = {d}] with N >= 1 (a length that is a positive multiple of {d})"),
            &[data.len()],
        ));
    }
    let n = (data.len() / d).min(max_images.unwrap_or(usize::MAX));
    let data = &data[..n * d];
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            what: format!("data (row {}, column {})", i / d, i % d),
        });
    }
    crate::limits::check_alloc("fit data as float64", (n * d) as u128 * 8)?;
    Ok(DMatrix::from_column_slice(d, n, data))
}

/// Fits a mixture of probabilistic PCA to the rows of `data` (`[N, d]` row-major) by EM (module
/// docs); `N` is cut to `opts.max_images` (the first rows).
pub fn fit_ppca_mixture(data: &[f64], d: usize, opts: &FitOptions) -> Result<FittedMixture> {
    fit_ppca_mixture_with(data, d, opts, &mut |_, _| {})
}

/// [`fit_ppca_mixture`], calling `on_iter(t, log_lik)` with the mean log-likelihood (nats per
/// row) of the initialisation (`t = 0`) and after each EM iteration `t`.
pub fn fit_ppca_mixture_with(
    data: &[f64],
    d: usize,
    opts: &FitOptions,
    on_iter: &mut dyn FnMut(usize, f64),
) -> Result<FittedMixture> {
    fit_variant(data, d, opts, Variant::Em, on_iter)
}

fn fit_variant(
    data: &[f64],
    d: usize,
    opts: &FitOptions,
    variant: Variant,
    on_iter: &mut dyn FnMut(usize, f64),
) -> Result<FittedMixture> {
    opts.validate()?;
    let x = data_matrix(data, d, opts.max_images)?;
    let n = x.ncols();
    opts.validate_for(n, d)?;
    let k = opts.components;
    crate::limits::check_alloc(
        "fit working memory (covariances, responsibilities)",
        (2 * rayon::current_num_threads() * d * d + 2 * k * n) as u128 * 8,
    )?;
    let labels = kmeans(&x, k, opts.seed)?;
    let hard: Vec<Vec<f64>> = (0..k)
        .map(|c| labels.iter().map(|&l| f64::from(l == c)).collect())
        .collect();
    let (mut weights, mut comps) = m_step(&x, &hard, None, opts, Variant::Em)?;
    let mut lls = Vec::with_capacity(opts.iters + 1);
    for t in 0..=opts.iters {
        let (ll, mut resp) = e_step(&x, &comps, &weights);
        if !ll.is_finite() {
            return Err(Error::Numerical(format!(
                "the mean log-likelihood is {ll} at iteration {t}; raise floor_min or ridge"
            )));
        }
        on_iter(t, ll);
        lls.push(ll);
        let converged =
            opts.tol > 0.0 && t > 0 && (ll - lls[t - 1]).abs() <= opts.tol * ll.abs().max(1.0);
        if t == opts.iters || converged {
            break;
        }
        if variant == Variant::UniformResponsibilities {
            for r in resp.iter_mut().flatten() {
                *r = 1.0 / k as f64;
            }
        }
        (weights, comps) = m_step(&x, &resp, Some(&comps), opts, variant)?;
    }
    Ok(FittedMixture {
        d,
        images: n,
        weights,
        means: comps.iter().map(|c| c.mean.as_slice().to_vec()).collect(),
        eigvecs: comps
            .iter()
            .map(|c| {
                c.u.column_iter()
                    .map(|u| u.iter().copied().collect())
                    .collect()
            })
            .collect(),
        eigvals: comps.iter().map(|c| c.lambda.clone()).collect(),
        floors: comps.iter().map(|c| c.floor).collect(),
        log_lik_per_iter: lls,
    })
}

/// The smallest f32 that is `>= v` (for `v > 0`): f32 eigenvalues written next to an f64 floor
/// stay `>= floor`.
fn f32_at_least(v: f64) -> f32 {
    let f = v as f32;
    if (f as f64) < v {
        f32::from_bits(f.to_bits() + 1)
    } else {
        f
    }
}

impl FittedMixture {
    /// Number of components `K`.
    pub fn k(&self) -> usize {
        self.weights.len()
    }

    /// Eigenpairs per component `r`.
    pub fn rank(&self) -> usize {
        self.eigvals.first().map_or(0, |v| v.len())
    }

    fn comps(&self) -> Vec<Comp> {
        (0..self.k())
            .map(|k| Comp {
                mean: DVector::from_column_slice(&self.means[k]),
                u: DMatrix::from_fn(self.d, self.rank(), |i, j| self.eigvecs[k][j][i]),
                lambda: self.eigvals[k].clone(),
                floor: self.floors[k],
            })
            .collect()
    }

    /// The full covariance `S_k` (`[d, d]`; for small `d`).
    pub fn covariance(&self, k: usize) -> DMatrix<f64> {
        let d = self.d;
        let mut s = DMatrix::identity(d, d) * self.floors[k];
        for (u, l) in self.eigvecs[k].iter().zip(&self.eigvals[k]) {
            let u = DVector::from_column_slice(u);
            s += &u * u.transpose() * (l - self.floors[k]);
        }
        s
    }

    /// Mean log-likelihood, in nats per row, of the rows of `data` (`[N, d]` row-major), e.g.
    /// held-out images.
    pub fn mean_log_likelihood(&self, data: &[f64], d: usize) -> Result<f64> {
        if d != self.d {
            return Err(Error::shape(
                "data",
                format!("rows of the mixture's dimension d = {}", self.d),
                &[data.len() / d.max(1), d],
            ));
        }
        let x = data_matrix(data, d, None)?;
        Ok(e_step(&x, &self.comps(), &self.weights).0)
    }

    /// Writes `weights [K] f64`, `means [K,d] f32`, `eigvecs [K,r,d] f32`, `eigvals [K,r] f32`
    /// (rounded up, so each stays `>= floor`) and `floor [K] f64` as an `.npz`, atomically.
    pub fn write_npz(&self, path: impl AsRef<Path>) -> Result<()> {
        let (k, r, d) = (self.k(), self.rank(), self.d);
        let cpu = &Device::Cpu;
        let w = Tensor::from_vec(self.weights.clone(), k, cpu)?;
        let m: Vec<f32> = self.means.iter().flatten().map(|&v| v as f32).collect();
        let m = Tensor::from_vec(m, (k, d), cpu)?;
        let u: Vec<f32> = self
            .eigvecs
            .iter()
            .flatten()
            .flatten()
            .map(|&v| v as f32)
            .collect();
        let u = Tensor::from_vec(u, (k, r, d), cpu)?;
        let l: Vec<f32> = self
            .eigvals
            .iter()
            .flatten()
            .map(|&v| f32_at_least(v))
            .collect();
        let l = Tensor::from_vec(l, (k, r), cpu)?;
        let f = Tensor::from_vec(self.floors.clone(), k, cpu)?;
        crate::io::atomic_write(path.as_ref(), |tmp| {
            Ok(Tensor::write_npz(
                &[
                    ("weights", &w),
                    ("means", &m),
                    ("eigvecs", &u),
                    ("eigvals", &l),
                    ("floor", &f),
                ],
                tmp,
            )?)
        })
    }
}

/// Rows read by [`read_images`].
#[derive(Debug, Clone)]
pub struct Images {
    /// `[n, d]` row-major.
    pub data: Vec<f64>,
    pub n: usize,
    pub d: usize,
    /// The file's shape and dtype, and how the values were scaled.
    pub description: String,
}

/// Reads images or vectors from a `.npy` `[N, ...]` (everything after the first axis is one row
/// of `d` values), keeping the first `max_images` rows: uint8 is scaled to `[-1, 1]` as
/// `x / 127.5 - 1`, floats are taken as they are, other dtypes are refused.
pub fn read_images(path: &Path, max_images: Option<usize>) -> Result<Images> {
    use crate::io::npy::Kind;
    let ferr = |reason: String| Error::File {
        path: path.to_path_buf(),
        reason,
    };
    let len = crate::io::file_len(path).map_err(ferr)?;
    let f = std::fs::File::open(path).map_err(|e| ferr(crate::io::describe_io_error(&e)))?;
    let arr = crate::io::npy::read_npy(&mut std::io::BufReader::new(f), len).map_err(ferr)?;
    let (shape, dt) = (arr.header.shape.clone(), arr.header.dtype);
    if shape.len() < 2 || shape.contains(&0) {
        return Err(ferr(format!(
            "expected images [N, H, W] or rows [N, d] with no empty axis, got shape {shape:?}"
        )));
    }
    let d: usize = shape[1..].iter().product();
    let n = shape[0].min(max_images.unwrap_or(usize::MAX));
    let mut data = arr.data;
    data.truncate(n * d);
    let scaling = match (dt.kind, dt.size) {
        (Kind::Uint, 1) => {
            for v in data.iter_mut() {
                *v = *v / 127.5 - 1.0;
            }
            "scaled to [-1, 1] as x / 127.5 - 1"
        }
        (Kind::Float, _) => {
            if let Some(i) = data.iter().position(|v| !v.is_finite()) {
                return Err(ferr(format!(
                    "non-finite value in row {}, column {}",
                    i / d,
                    i % d
                )));
            }
            "taken as they are"
        }
        _ => {
            return Err(ferr(format!(
                "dtype {} is neither uint8 images (scaled to [-1, 1]) nor floats",
                dt.name()
            )))
        }
    };
    Ok(Images {
        data,
        n,
        d,
        description: format!(
            "{shape:?} {}, first {n} rows, d = {d}, {scaling}",
            dt.name()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_distr::StandardNormal;

    /// A component of a known mixture: `S = sum_j lambda_j u_j u_j^T + floor (I - U U^T)`.
    struct Truth {
        w: f64,
        mean: Vec<f64>,
        u: Vec<Vec<f64>>,
        lambda: Vec<f64>,
        floor: f64,
    }

    fn unit(d: usize, i: usize) -> Vec<f64> {
        let mut v = vec![0.0; d];
        v[i] = 1.0;
        v
    }

    fn cov_of(t: &Truth) -> DMatrix<f64> {
        let d = t.mean.len();
        let mut s = DMatrix::identity(d, d) * t.floor;
        for (u, l) in t.u.iter().zip(&t.lambda) {
            let u = DVector::from_column_slice(u);
            s += &u * u.transpose() * (l - t.floor);
        }
        s
    }

    /// `n` rows `[n, d]` drawn from the mixture (seeded).
    fn draw(truth: &[Truth], n: usize, seed: u64) -> Vec<f64> {
        let d = truth[0].mean.len();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = Vec::with_capacity(n * d);
        for _ in 0..n {
            let mut u: f64 = rng.random();
            let t = truth
                .iter()
                .find(|t| {
                    u -= t.w;
                    u < 0.0
                })
                .unwrap_or(&truth[truth.len() - 1]);
            let mut x = t.mean.clone();
            for (v, l) in t.u.iter().zip(&t.lambda) {
                let z: f64 = rng.sample(StandardNormal);
                let a = (l - t.floor).sqrt() * z;
                for (xi, vi) in x.iter_mut().zip(v) {
                    *xi += a * vi;
                }
            }
            for xi in x.iter_mut() {
                let z: f64 = rng.sample(StandardNormal);
                *xi += t.floor.sqrt() * z;
            }
            out.extend(x);
        }
        out
    }

    const D: usize = 20;
    const N: usize = 20_000;

    /// Three components in d = 20, rank 2: 0 and 1 overlap (their means differ by 3 standard
    /// deviations along their shared top direction e0, and by about 2 floor standard deviations
    /// along e3), so k-means' hard clusters are truncated and only the soft E-step recovers them;
    /// 2 is well apart.
    fn truth() -> Vec<Truth> {
        let mut m1 = unit(D, 0).iter().map(|v| 6.0 * v).collect::<Vec<_>>();
        m1[3] = 0.8;
        let mut m2 = vec![0.0; D];
        m2[5] = 3.0;
        m2[6] = -3.0;
        let s = std::f64::consts::FRAC_1_SQRT_2;
        let mut u78 = vec![0.0; D];
        u78[7] = s;
        u78[8] = s;
        vec![
            Truth {
                w: 0.45,
                mean: vec![0.0; D],
                u: vec![unit(D, 0), unit(D, 1)],
                lambda: vec![4.0, 1.5],
                floor: 0.1,
            },
            Truth {
                w: 0.35,
                mean: m1,
                u: vec![unit(D, 0), unit(D, 2)],
                lambda: vec![4.0, 1.0],
                floor: 0.15,
            },
            Truth {
                w: 0.2,
                mean: m2,
                u: vec![u78, unit(D, 9)],
                lambda: vec![3.0, 0.8],
                floor: 0.05,
            },
        ]
    }

    fn opts() -> FitOptions {
        FitOptions {
            components: 3,
            rank: 2,
            iters: 200,
            ridge: 0.0,
            floor_min: 1e-9,
            seed: 7,
            max_images: None,
            tol: 1e-12,
        }
    }

    /// The fitted component matched to each true one (the permutation with the smallest total
    /// squared distance between means).
    fn matching(fit: &FittedMixture, truth: &[Truth]) -> Vec<usize> {
        let perms = [
            [0, 1, 2],
            [0, 2, 1],
            [1, 0, 2],
            [1, 2, 0],
            [2, 0, 1],
            [2, 1, 0],
        ];
        let cost = |p: &[usize; 3]| -> f64 {
            (0..3)
                .map(|k| sq_dist(&fit.means[p[k]], &truth[k].mean))
                .sum()
        };
        perms
            .iter()
            .min_by(|a, b| cost(a).total_cmp(&cost(b)))
            .unwrap()
            .to_vec()
    }

    /// Sampling standard errors with N_k = w_k N labelled rows, times 1.5 for the information
    /// the unknown labels cost where components overlap; a check fails beyond 5 of them.
    /// weights: sqrt(w (1 - w) / N); means: N_k (m - mu)^T S^-1 (m - mu) ~ chi^2_d (bound
    /// d + 5 sqrt(2 d), times 1.5^2); top eigenvalues: lambda sqrt(2 / N_k); floor (the mean of
    /// d - r sample eigenvalues): floor sqrt(2 / ((d - r) N_k)). Returns the violations.
    fn recovery_errors(fit: &FittedMixture, truth: &[Truth]) -> Vec<String> {
        const Z: f64 = 5.0;
        const INFL: f64 = 1.5;
        let n = N as f64;
        let m = matching(fit, truth);
        let mut bad = vec![];
        for (k, t) in truth.iter().enumerate() {
            let j = m[k];
            let nk = t.w * n;
            let se_w = (t.w * (1.0 - t.w) / n).sqrt();
            let zw = (fit.weights[j] - t.w).abs() / se_w;
            if zw > Z * INFL {
                bad.push(format!(
                    "component {k}: weight {} vs {} ({zw:.1} se)",
                    fit.weights[j], t.w
                ));
            }
            let diff =
                DVector::from_iterator(D, fit.means[j].iter().zip(&t.mean).map(|(a, b)| a - b));
            let s = cov_of(t).cholesky().unwrap();
            let maha = nk * diff.dot(&s.solve(&diff));
            let bound = (D as f64 + Z * (2.0 * D as f64).sqrt()) * INFL * INFL;
            if maha > bound {
                bad.push(format!(
                    "component {k}: mean off by Mahalanobis^2 * N_k = {maha:.1} > {bound:.1}"
                ));
            }
            for (jj, l) in t.lambda.iter().enumerate() {
                let z = (fit.eigvals[j][jj] - l).abs() / (l * (2.0 / nk).sqrt());
                if z > Z * INFL {
                    bad.push(format!(
                        "component {k}: eigenvalue {jj} {} vs {l} ({z:.1} se)",
                        fit.eigvals[j][jj]
                    ));
                }
            }
            let se_f = t.floor * (2.0 / ((D - t.lambda.len()) as f64 * nk)).sqrt();
            let zf = (fit.floors[j] - t.floor).abs() / se_f;
            if zf > Z * INFL {
                bad.push(format!(
                    "component {k}: floor {} vs {} ({zf:.1} se)",
                    fit.floors[j], t.floor
                ));
            }
        }
        bad
    }

    fn fit_of(variant: Variant) -> FittedMixture {
        let data = draw(&truth(), N, 11);
        fit_variant(&data, D, &opts(), variant, &mut |_, _| {}).unwrap()
    }

    #[test]
    fn em_recovers_a_known_mixture_and_broken_variants_do_not() {
        let fit = fit_of(Variant::Em);
        let bad = recovery_errors(&fit, &truth());
        assert!(bad.is_empty(), "EM: {bad:#?}");
        // The same checks catch an M-step that keeps k-means' covariances...
        let frozen = fit_of(Variant::FrozenCovariance);
        let bad = recovery_errors(&frozen, &truth());
        assert!(!bad.is_empty(), "frozen covariances passed the checks");
        // ...and responsibilities that ignore the data.
        let uniform = fit_of(Variant::UniformResponsibilities);
        let bad = recovery_errors(&uniform, &truth());
        assert!(
            !bad.is_empty(),
            "uniform responsibilities passed the checks"
        );
    }

    /// Fails at the first iteration that lowers the mean log-likelihood by more than 1e-9
    /// relative (EM's monotonicity, up to rounding).
    fn first_decrease(ll: &[f64]) -> Option<usize> {
        (1..ll.len()).find(|&t| ll[t] < ll[t - 1] - 1e-9 * ll[t - 1].abs())
    }

    #[test]
    fn log_likelihood_never_decreases() {
        let data = draw(&truth(), 5000, 3);
        for (k, seed) in [(3, 1), (5, 2)] {
            let o = FitOptions {
                components: k,
                iters: 40,
                tol: 0.0,
                seed,
                ..opts()
            };
            let mut seen = vec![];
            let fit = fit_ppca_mixture_with(&data, D, &o, &mut |t, ll| seen.push((t, ll))).unwrap();
            let ll = &fit.log_lik_per_iter;
            assert_eq!(ll.len(), 41);
            assert_eq!(seen, ll.iter().copied().enumerate().collect::<Vec<_>>());
            assert_eq!(first_decrease(ll), None, "K = {k}: {ll:?}");
            // EM moved from k-means' start: the check above compared numbers that change.
            assert!(ll[40] > ll[0] + 0.01, "K = {k}: {ll:?}");
        }
        // The check catches an update that is not EM.
        let o = FitOptions {
            iters: 5,
            tol: 0.0,
            ..opts()
        };
        let broken = fit_variant(
            &data,
            D,
            &o,
            Variant::UniformResponsibilities,
            &mut |_, _| {},
        )
        .unwrap();
        assert!(
            first_decrease(&broken.log_lik_per_iter).is_some(),
            "{:?}",
            broken.log_lik_per_iter
        );
    }

    #[test]
    fn same_seed_same_bits_at_any_thread_count() {
        let data = draw(&truth(), 3000, 5);
        let o = FitOptions {
            components: 4,
            iters: 8,
            ridge: 1e-3,
            ..opts()
        };
        let bits = |f: &FittedMixture| -> Vec<u64> {
            f.weights
                .iter()
                .chain(f.means.iter().flatten())
                .chain(f.eigvecs.iter().flatten().flatten())
                .chain(f.eigvals.iter().flatten())
                .chain(&f.floors)
                .chain(&f.log_lik_per_iter)
                .map(|v| v.to_bits())
                .collect()
        };
        let a = fit_ppca_mixture(&data, D, &o).unwrap();
        let b = fit_ppca_mixture(&data, D, &o).unwrap();
        assert_eq!(bits(&a), bits(&b));
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let c = pool.install(|| fit_ppca_mixture(&data, D, &o).unwrap());
        assert_eq!(bits(&a), bits(&c));
        // The seed is used: another one starts k-means elsewhere.
        let other = fit_ppca_mixture(
            &data,
            D,
            &FitOptions {
                seed: 8,
                ..o.clone()
            },
        )
        .unwrap();
        assert_ne!(bits(&a), bits(&other));
    }

    #[test]
    fn bad_options_and_shapes_are_errors() {
        let data = draw(&truth(), 50, 1);
        let fit = |d: usize, o: &FitOptions| fit_ppca_mixture(&data, d, o).unwrap_err().to_string();
        let base = FitOptions { iters: 2, ..opts() };
        let cases: Vec<(FitOptions, &str)> = vec![
            (
                FitOptions {
                    components: 0,
                    ..base.clone()
                },
                "`components`",
            ),
            (
                FitOptions {
                    components: 51,
                    ..base.clone()
                },
                "`components`",
            ),
            (
                FitOptions {
                    rank: 0,
                    ..base.clone()
                },
                "`rank`",
            ),
            (
                FitOptions {
                    rank: D,
                    ..base.clone()
                },
                "`rank`",
            ),
            (
                FitOptions {
                    ridge: -1.0,
                    ..base.clone()
                },
                "`ridge`",
            ),
            (
                FitOptions {
                    ridge: f64::NAN,
                    ..base.clone()
                },
                "`ridge`",
            ),
            (
                FitOptions {
                    floor_min: 0.0,
                    ..base.clone()
                },
                "`floor_min`",
            ),
            (
                FitOptions {
                    floor_min: f64::INFINITY,
                    ..base.clone()
                },
                "`floor_min`",
            ),
            (
                FitOptions {
                    tol: -1e-3,
                    ..base.clone()
                },
                "`tol`",
            ),
            (
                FitOptions {
                    max_images: Some(2),
                    ..base.clone()
                },
                "`max_images`",
            ),
        ];
        for (o, field) in cases {
            let e = fit(D, &o);
            assert!(e.contains(field), "{o:?}: {e}");
        }
        // Shapes: a length that is not a multiple of d, d = 0, no data, a NaN (named by row).
        assert!(fit(7, &base).contains("[N, d = 7]"));
        assert!(fit(0, &base).contains("`d`"));
        let e = fit_ppca_mixture(&[], D, &base).unwrap_err().to_string();
        assert!(e.contains("data"), "{e}");
        let mut nan = data.clone();
        nan[3 * D + 4] = f64::NAN;
        let e = fit_ppca_mixture(&nan, D, &base).unwrap_err().to_string();
        assert!(e.contains("row 3, column 4"), "{e}");
        // Two components on identical rows: k-means cannot seed them.
        let same = vec![0.5; 10 * D];
        let e = fit_ppca_mixture(
            &same,
            D,
            &FitOptions {
                components: 2,
                ..base.clone()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("distinct"), "{e}");
        // Held-out rows of another dimension.
        let f = fit_ppca_mixture(&data, D, &base).unwrap();
        let e = f.mean_log_likelihood(&data, D / 2).unwrap_err().to_string();
        assert!(e.contains("d = 20"), "{e}");
    }

    /// The E-step's low-rank log-density against the full Gaussian's (Cholesky), on a fit with
    /// the ridge, so every part of the formula matters: projections, complement and log det.
    #[test]
    fn low_rank_log_density_matches_the_full_gaussian() {
        let data = draw(&truth(), 2000, 9);
        let o = FitOptions {
            iters: 5,
            ridge: 0.02,
            ..opts()
        };
        let f = fit_ppca_mixture(&data, D, &o).unwrap();
        let rows = &data[..50 * D];
        let mut total = 0.0;
        for x in rows.chunks(D) {
            let mut terms = vec![];
            for k in 0..f.k() {
                let s = f.covariance(k);
                let ch = s.clone().cholesky().unwrap();
                let diff = DVector::from_iterator(D, x.iter().zip(&f.means[k]).map(|(a, b)| a - b));
                let quad = diff.dot(&ch.solve(&diff));
                let logdet = 2.0 * ch.l().diagonal().iter().map(|v| v.ln()).sum::<f64>();
                terms.push(
                    f.weights[k].ln()
                        - 0.5 * (D as f64 * (2.0 * std::f64::consts::PI).ln() + logdet + quad),
                );
            }
            let m = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            total += m + terms.iter().map(|t| (t - m).exp()).sum::<f64>().ln();
        }
        let want = total / 50.0;
        let got = f.mean_log_likelihood(rows, D).unwrap();
        assert!(
            (got - want).abs() < 1e-9 * want.abs().max(1.0),
            "{got} vs {want}"
        );
        // The covariance has the documented form: eigenvalues lambda on U, floor elsewhere.
        for k in 0..f.k() {
            let e = nalgebra::SymmetricEigen::new(f.covariance(k));
            let mut v: Vec<f64> = e.eigenvalues.iter().copied().collect();
            v.sort_by(|a, b| b.total_cmp(a));
            assert!((v[0] - f.eigvals[k][0]).abs() < 1e-9 && (v[1] - f.eigvals[k][1]).abs() < 1e-9);
            assert!(
                v[2..].iter().all(|x| (x - f.floors[k]).abs() < 1e-9),
                "{v:?}"
            );
        }
    }

    fn tmpdir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("diffpost-fit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn npz_holds_the_documented_arrays() {
        let data = draw(&truth(), 2000, 4);
        let o = FitOptions {
            iters: 3,
            ridge: 1e-3,
            ..opts()
        };
        let f = fit_ppca_mixture(&data, D, &o).unwrap();
        let dir = tmpdir("npz");
        let path = dir.join("m.npz");
        f.write_npz(&path).unwrap();
        // Written atomically: nothing else is left in the folder.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("m.npz")]);
        let mut npz = crate::io::NpzReader::open(&path, "").unwrap();
        let mut get = |name: &str| {
            let r = npz.read(name).unwrap();
            let f32 = r.conversion.map(|c| c.contains("float32"));
            (
                r.tensor.dims().to_vec(),
                r.tensor.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
                f32,
            )
        };
        let (k, r) = (3, 2);
        let (ds, w, c) = get("weights");
        assert_eq!((ds, c), (vec![k], None));
        assert_eq!(w, f.weights);
        let (ds, m, c) = get("means");
        assert_eq!((ds, c), (vec![k, D], Some(true)));
        let (ds, u, c) = get("eigvecs");
        assert_eq!((ds, c), (vec![k, r, D], Some(true)));
        let (ds, l, c) = get("eigvals");
        assert_eq!((ds, c), (vec![k, r], Some(true)));
        let (ds, fl, c) = get("floor");
        assert_eq!((ds, c), (vec![k], None));
        assert_eq!(fl, f.floors);
        for kk in 0..k {
            for i in 0..D {
                assert!(
                    (m[kk * D + i] - f.means[kk][i]).abs() <= 1e-6 * f.means[kk][i].abs().max(1.0)
                );
            }
            for a in 0..r {
                let ua = &u[(kk * r + a) * D..(kk * r + a + 1) * D];
                for b in 0..r {
                    let ub = &u[(kk * r + b) * D..(kk * r + b + 1) * D];
                    let dot: f64 = ua.iter().zip(ub).map(|(x, y)| x * y).sum();
                    assert!(
                        (dot - f64::from(u8::from(a == b))).abs() < 1e-6,
                        "{kk} {a} {b}: {dot}"
                    );
                }
                let la = l[kk * r + a];
                assert!(la >= fl[kk] && (la - f.eigvals[kk][a]).abs() < 1e-6 * la);
                if a > 0 {
                    assert!(la <= l[kk * r + a - 1]);
                }
            }
        }
        // Rounding to f32 never puts an eigenvalue below its floor.
        for v in [0.1, 1.0 / 3.0, 2.0f64.sqrt(), 1e-4 + 1e-13] {
            assert!(f64::from(f32_at_least(v)) >= v);
            assert!(f64::from(f32_at_least(v)) - v < 1e-7 * v);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn read_images_scales_u8_and_refuses_what_it_cannot_use() {
        let dir = tmpdir("read");
        let cpu = &Device::Cpu;
        let v: Vec<u8> = (0..30).map(|i| (i * 8) as u8).collect();
        let p = dir.join("u8.npy");
        Tensor::from_vec(v.clone(), (5, 2, 3), cpu)
            .unwrap()
            .write_npy(&p)
            .unwrap();
        let im = read_images(&p, Some(4)).unwrap();
        assert_eq!((im.n, im.d, im.data.len()), (4, 6, 24));
        assert_eq!(im.data[0], -1.0);
        assert!((im.data[23] - (f64::from(v[23]) / 127.5 - 1.0)).abs() < 1e-15);
        let p = dir.join("f32.npy");
        Tensor::from_vec(vec![0.25f32; 12], (3, 4), cpu)
            .unwrap()
            .write_npy(&p)
            .unwrap();
        let im = read_images(&p, None).unwrap();
        assert_eq!((im.n, im.d, im.data[5]), (3, 4, 0.25));
        let p = dir.join("i64.npy");
        Tensor::from_vec(vec![1i64; 12], (3, 4), cpu)
            .unwrap()
            .write_npy(&p)
            .unwrap();
        let e = read_images(&p, None).unwrap_err().to_string();
        assert!(e.contains("i64.npy") && e.contains("int64"), "{e}");
        let p = dir.join("flat.npy");
        Tensor::from_vec(vec![1f32; 12], 12, cpu)
            .unwrap()
            .write_npy(&p)
            .unwrap();
        let e = read_images(&p, None).unwrap_err().to_string();
        assert!(e.contains("flat.npy") && e.contains("[12]"), "{e}");
        let e = read_images(&dir.join("missing.npy"), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.npy") && e.contains("not found"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A `FittedMixture` from a file of [`FittedMixture::write_npz`]'s format, checking what the
    /// format promises: dtypes, shapes, unit orthonormal eigenvector rows, eigenvalues
    /// descending and `>= floor`, floors `> 0`, weights summing to one.
    fn read_checked(path: &Path) -> FittedMixture {
        let mut npz = crate::io::NpzReader::open(path, "").unwrap();
        let mut get = |name: &str, f32: bool| {
            let r = npz.read(name).unwrap();
            assert_eq!(r.conversion.is_some(), f32, "{name}: {:?}", r.conversion);
            let v: Vec<f64> = r.tensor.flatten_all().unwrap().to_vec1().unwrap();
            (r.tensor.dims().to_vec(), v)
        };
        let (wd, w) = get("weights", false);
        let (md, m) = get("means", true);
        let (ud, u) = get("eigvecs", true);
        let (ld, l) = get("eigvals", true);
        let (fd, fl) = get("floor", false);
        let (k, r, d) = (ud[0], ud[1], ud[2]);
        assert_eq!((wd, md, ld, fd), (vec![k], vec![k, d], vec![k, r], vec![k]));
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        for kk in 0..k {
            assert!(fl[kk] > 0.0);
            let row = |a: usize| &u[(kk * r + a) * d..(kk * r + a + 1) * d];
            for a in 0..r {
                assert!(l[kk * r + a] >= fl[kk]);
                assert!(a == 0 || l[kk * r + a] <= l[kk * r + a - 1]);
                for b in 0..=a {
                    let dot: f64 = row(a).iter().zip(row(b)).map(|(x, y)| x * y).sum();
                    let want = f64::from(u8::from(a == b));
                    assert!((dot - want).abs() < 1e-6, "{kk}: rows {a}, {b}: {dot}");
                }
            }
        }
        FittedMixture {
            d,
            images: 0,
            weights: w,
            means: m.chunks(d).map(|c| c.to_vec()).collect(),
            eigvecs: (0..k)
                .map(|kk| {
                    (0..r)
                        .map(|a| u[(kk * r + a) * d..(kk * r + a + 1) * d].to_vec())
                        .collect()
                })
                .collect(),
            eigvals: l.chunks(r).map(|c| c.to_vec()).collect(),
            floors: fl,
            log_lik_per_iter: vec![],
        }
    }

    /// The shipped fits (data/README.md) hold the documented arrays, and the 256 held-out
    /// images shipped beside them score what data/README.md reports for the whole test set
    /// (10,000 images), within 4 standard errors of the 256 images' mean (their own spread).
    #[test]
    fn shipped_fits_hold_the_documented_arrays() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data");
        for (file, test, reported) in [
            ("mnist28_gmm.npz", "mnist_test256.npy", 473.7537),
            ("fashion28_gmm.npz", "fashion_mnist_test256.npy", 429.5484),
        ] {
            let f = read_checked(&data.join(file));
            assert_eq!((f.k(), f.rank(), f.d), (10, 140, 784));
            let t = read_images(&data.join(test), None).unwrap();
            let per: Vec<f64> = t
                .data
                .chunks(t.d)
                .map(|x| f.mean_log_likelihood(x, t.d).unwrap())
                .collect();
            let n = per.len() as f64;
            let mean = per.iter().sum::<f64>() / n;
            let sd = (per.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1.0)).sqrt();
            assert!(
                (mean - reported).abs() < 4.0 * sd / n.sqrt(),
                "{file}: {mean} on {test} (sd {sd}) vs {reported} reported"
            );
        }
    }
}
