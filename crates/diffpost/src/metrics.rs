//! Distances between a sample set and an exact posterior, with Monte-Carlo noise floors.
//!
//! Sample sets are row-major `&[f64]` with `n` rows (samples) of `d` columns. Metrics:
//! sliced 2-Wasserstein (exact 1-D W2 per direction, Rabin et al. 2011), unbiased Gaussian-kernel
//! MMD^2 (Gretton et al. 2012, eq. 3), and relative mean / covariance errors against the exact
//! posterior moments. A [`Floor`] is the spread of a metric for a fresh exact sample of the same
//! size, i.e. the value a perfect sampler would get.

use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

/// Validates a row-major `n x d` sample set and returns `n` (requires `n >= min_rows`).
fn check_set(x: &[f64], d: usize, min_rows: usize, what: &str) -> Result<usize> {
    if d == 0 {
        return Err(Error::param("d", "dimension must be >= 1"));
    }
    if !x.len().is_multiple_of(d) {
        return Err(Error::shape(
            what,
            format!("a multiple of d = {d} values (n x d row-major)"),
            &[x.len()],
        ));
    }
    let n = x.len() / d;
    if n < min_rows {
        return Err(Error::shape(
            what,
            format!("at least {min_rows} rows of d = {d}"),
            &[n, d],
        ));
    }
    if x.iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite { what: what.into() });
    }
    Ok(n)
}

fn check_len(v: &[f64], len: usize, what: &str) -> Result<()> {
    if v.len() != len {
        return Err(Error::shape(what, format!("{len} values"), &[v.len()]));
    }
    if v.iter().any(|a| !a.is_finite()) {
        return Err(Error::NonFinite { what: what.into() });
    }
    Ok(())
}

/// `a b^T` for row-major `a` (`na x d`) and `b` (`nb x d`), via candle's CPU matmul.
fn matmul_nt(a: &[f64], na: usize, b: &[f64], nb: usize, d: usize) -> Result<Vec<f64>> {
    let ta = Tensor::from_slice(a, (na, d), &Device::Cpu)?;
    let tb = Tensor::from_slice(b, (nb, d), &Device::Cpu)?;
    Ok(ta.matmul(&tb.t()?)?.flatten_all()?.to_vec1::<f64>()?)
}

fn sq_norms(x: &[f64], d: usize) -> Vec<f64> {
    x.par_chunks(d)
        .map(|r| r.iter().map(|v| v * v).sum())
        .collect()
}

fn sort_f64(v: &mut [f64]) {
    v.sort_unstable_by(|a, b| a.total_cmp(b));
}

/// `l` random unit vectors in `R^d` (row-major `l x d`): standard Gaussian draws from
/// `ChaCha8Rng::seed_from_u64(seed)`, normalised (uniform on the sphere).
pub fn random_directions(d: usize, l: usize, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(d * l);
    if d == 0 {
        return out;
    }
    let mut row = vec![0.0; d];
    for _ in 0..l {
        loop {
            for v in row.iter_mut() {
                *v = StandardNormal.sample(&mut rng);
            }
            let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
            if norm > 0.0 {
                out.extend(row.iter().map(|v| v / norm));
                break;
            }
        }
    }
    out
}

/// Exact squared W2 between two 1-D empirical measures with uniform weights, given their
/// sorted atoms: `int_0^1 (F^-1(u) - G^-1(u))^2 du`, merging the two quantile step functions
/// (breakpoints `i/n` and `j/m`).
pub fn w2_sq_sorted_1d(xs: &[f64], ys: &[f64]) -> f64 {
    let (n, m) = (xs.len(), ys.len());
    if n == 0 || m == 0 {
        return f64::NAN;
    }
    let (nf, mf) = (n as f64, m as f64);
    let (mut i, mut j) = (0usize, 0usize);
    let mut u = 0.0;
    let mut acc = 0.0;
    while i < n && j < m {
        // Compare the next breakpoints (i+1)/n and (j+1)/m exactly in integers.
        let (bi, bj) = ((i as u128 + 1) * m as u128, (j as u128 + 1) * n as u128);
        let next = if bi <= bj {
            (i + 1) as f64 / nf
        } else {
            (j + 1) as f64 / mf
        };
        let diff = xs[i] - ys[j];
        acc += (next - u) * diff * diff;
        u = next;
        if bi <= bj {
            i += 1;
        }
        if bj <= bi {
            j += 1;
        }
    }
    acc
}

/// Mean squared 1-D W2 over directions, given per-direction projections of `x`
/// (`n x l` row-major) and the already sorted reference projections (`l` rows).
fn sliced_from_projections(px: &[f64], n: usize, l: usize, sorted_y: &[Vec<f64>]) -> f64 {
    let per_direction: Vec<f64> = (0..l)
        .into_par_iter()
        .map(|k| {
            let mut col: Vec<f64> = (0..n).map(|i| px[i * l + k]).collect();
            sort_f64(&mut col);
            w2_sq_sorted_1d(&col, &sorted_y[k])
        })
        .collect();
    // Summed in order (a parallel sum's order, hence its rounding, depends on work stealing).
    per_direction.iter().sum::<f64>() / l as f64
}

/// Sliced W2: `sqrt(mean_k W2^2(<theta_k, x>, <theta_k, y>))` over the unit `directions`
/// (row-major `l x d`), with the exact 1-D W2 between empirical measures
/// (see [`w2_sq_sorted_1d`]); `x` and `y` may have different numbers of rows.
pub fn sliced_w2(x: &[f64], y: &[f64], d: usize, directions: &[f64]) -> Result<f64> {
    let n = check_set(x, d, 1, "sliced_w2 x")?;
    let m = check_set(y, d, 1, "sliced_w2 y")?;
    let l = check_set(directions, d, 1, "sliced_w2 directions")?;
    let px = matmul_nt(x, n, directions, l, d)?;
    let py = matmul_nt(y, m, directions, l, d)?;
    let sorted_y: Vec<Vec<f64>> = (0..l)
        .into_par_iter()
        .map(|k| {
            let mut col: Vec<f64> = (0..m).map(|i| py[i * l + k]).collect();
            sort_f64(&mut col);
            col
        })
        .collect();
    Ok(sliced_from_projections(&px, n, l, &sorted_y).sqrt())
}

/// Rows of a sample set with their squared norms.
#[derive(Clone, Copy)]
struct Rows<'a> {
    x: &'a [f64],
    n: usize,
    norms: &'a [f64],
}

/// Gram-matrix entries processed per block (bounds memory at ~32 MB for any `n`).
const BLOCK_ENTRIES: usize = 1 << 22;

/// Sum of `k(a_i, b_j) = exp(-|a_i - b_j|^2 * inv2bw2)` over all pairs, from blocked Gram
/// matrices and squared norms. `self_pairs`: `b` is `a` and the sum is over `i != j` (only the
/// upper triangle is computed, then doubled).
fn kernel_sum(a: Rows, b: Rows, d: usize, inv2bw2: f64, self_pairs: bool) -> Result<f64> {
    kernel_sum_blocked(a, b, d, inv2bw2, self_pairs, BLOCK_ENTRIES)
}

fn kernel_sum_blocked(
    a: Rows,
    b: Rows,
    d: usize,
    inv2bw2: f64,
    self_pairs: bool,
    block_entries: usize,
) -> Result<f64> {
    let block = (block_entries / b.n.max(1)).max(64).min(a.n).max(1);
    let mut total = 0.0;
    for r0 in (0..a.n).step_by(block) {
        let r1 = (r0 + block).min(a.n);
        // For self pairs only columns j > i matter, so start the columns at r0.
        let c0 = if self_pairs { r0 } else { 0 };
        let nc = b.n - c0;
        if nc == 0 {
            continue;
        }
        let g = matmul_nt(&a.x[r0 * d..r1 * d], r1 - r0, &b.x[c0 * d..], nc, d)?;
        // Row sums in parallel, added in row order (deterministic rounding).
        let part: f64 = g
            .par_chunks(nc)
            .enumerate()
            .map(|(ii, row)| {
                let i = r0 + ii;
                let skip = if self_pairs { i + 1 - c0 } else { 0 };
                row.iter()
                    .enumerate()
                    .skip(skip)
                    .map(|(jj, &dot)| {
                        let d2 = (a.norms[i] + b.norms[c0 + jj] - 2.0 * dot).max(0.0);
                        (-d2 * inv2bw2).exp()
                    })
                    .sum::<f64>()
            })
            .collect::<Vec<f64>>()
            .iter()
            .sum();
        total += part;
    }
    Ok(if self_pairs { 2.0 * total } else { total })
}

/// Unbiased MMD^2 (Gretton et al. 2012, eq. 3) with the Gaussian kernel
/// `k(a, b) = exp(-|a - b|^2 / (2 bandwidth^2))`:
/// `sum_{i!=j} k(x_i,x_j)/(n(n-1)) + sum_{i!=j} k(y_i,y_j)/(m(m-1)) - 2 sum_{i,j} k(x_i,y_j)/(nm)`.
/// Can be slightly negative. Needs at least 2 rows in each set.
pub fn mmd2_unbiased(x: &[f64], y: &[f64], d: usize, bandwidth: f64) -> Result<f64> {
    let n = check_set(x, d, 2, "mmd2 x")?;
    let m = check_set(y, d, 2, "mmd2 y")?;
    if !(bandwidth.is_finite() && bandwidth > 0.0) {
        return Err(Error::param(
            "bandwidth",
            format!("must be finite and > 0, got {bandwidth}"),
        ));
    }
    let inv = 1.0 / (2.0 * bandwidth * bandwidth);
    let (xn, yn) = (sq_norms(x, d), sq_norms(y, d));
    let xr = Rows { x, n, norms: &xn };
    let yr = Rows {
        x: y,
        n: m,
        norms: &yn,
    };
    let kxx = kernel_sum(xr, xr, d, inv, true)? / (n * (n - 1)) as f64;
    let kyy = kernel_sum(yr, yr, d, inv, true)? / (m * (m - 1)) as f64;
    let kxy = kernel_sum(xr, yr, d, inv, false)? / (n * m) as f64;
    Ok(kxx + kyy - 2.0 * kxy)
}

/// Median heuristic (Gretton et al. 2012): the median of the pairwise Euclidean distances
/// `|x_i - x_j|`, `i < j`, among the first `max_points` rows of `x` (mean of the two middle
/// values for an even count). Returns NaN if `x` is not a valid finite set with >= 2 rows
/// (or `max_points < 2`).
pub fn median_bandwidth(x: &[f64], d: usize, max_points: usize) -> f64 {
    let Ok(n) = check_set(x, d, 2, "median_bandwidth x") else {
        return f64::NAN;
    };
    let p = n.min(max_points);
    if p < 2 {
        return f64::NAN;
    }
    let xs = &x[..p * d];
    let Ok(g) = matmul_nt(xs, p, xs, p, d) else {
        return f64::NAN;
    };
    let norms = sq_norms(xs, d);
    let mut dists: Vec<f64> = (0..p)
        .into_par_iter()
        .flat_map_iter(|i| {
            let (g, norms) = (&g, &norms);
            (i + 1..p).map(move |j| (norms[i] + norms[j] - 2.0 * g[i * p + j]).max(0.0).sqrt())
        })
        .collect();
    let k = dists.len();
    let (_, &mut hi, _) = dists.select_nth_unstable_by(k / 2, |a, b| a.total_cmp(b));
    if k % 2 == 1 {
        hi
    } else {
        let lo = dists[..k / 2]
            .iter()
            .copied()
            .fold(f64::NEG_INFINITY, f64::max);
        0.5 * (lo + hi)
    }
}

fn sample_mean(x: &[f64], n: usize, d: usize) -> Vec<f64> {
    let mut m = vec![0.0; d];
    for row in x.chunks(d) {
        for (a, v) in m.iter_mut().zip(row) {
            *a += v;
        }
    }
    m.iter_mut().for_each(|a| *a /= n as f64);
    m
}

/// Relative mean error `|m_hat - m| / sqrt(tr C)`, with `m_hat` the sample mean of `x`, `m` the
/// exact mean and `cov_trace = tr C` the exact total variance.
pub fn mean_error(x: &[f64], d: usize, mean: &[f64], cov_trace: f64) -> Result<f64> {
    let n = check_set(x, d, 1, "mean_error x")?;
    check_len(mean, d, "mean")?;
    if !(cov_trace.is_finite() && cov_trace > 0.0) {
        return Err(Error::param(
            "cov_trace",
            format!("must be finite and > 0, got {cov_trace}"),
        ));
    }
    let mh = sample_mean(x, n, d);
    let e2: f64 = mh.iter().zip(mean).map(|(a, b)| (a - b) * (a - b)).sum();
    Ok((e2 / cov_trace).sqrt())
}

/// Unbiased sample covariance `(X - m_hat)^T (X - m_hat) / (n - 1)` (row-major `d x d`).
fn sample_cov(x: &[f64], n: usize, d: usize) -> Result<Vec<f64>> {
    let mh = sample_mean(x, n, d);
    let xc: Vec<f64> = x
        .chunks(d)
        .flat_map(|row| row.iter().zip(&mh).map(|(v, m)| v - m))
        .collect();
    let t = Tensor::from_slice(&xc, (n, d), &Device::Cpu)?;
    let c = t.t()?.matmul(&t)?.flatten_all()?.to_vec1::<f64>()?;
    Ok(c.into_iter().map(|v| v / (n - 1) as f64).collect())
}

fn cov_error_with_norm(x: &[f64], n: usize, d: usize, cov: &[f64], cov_fro: f64) -> Result<f64> {
    let ch = sample_cov(x, n, d)?;
    let e2: f64 = ch.iter().zip(cov).map(|(a, b)| (a - b) * (a - b)).sum();
    Ok(e2.sqrt() / cov_fro)
}

fn frobenius(cov: &[f64]) -> Result<f64> {
    let f = cov.iter().map(|v| v * v).sum::<f64>().sqrt();
    if f <= 0.0 {
        return Err(Error::param("cov", "covariance is zero"));
    }
    Ok(f)
}

/// Relative covariance error `|C_hat - C|_F / |C|_F`, with `C_hat` the unbiased sample
/// covariance of `x` (needs >= 2 rows) and `cov` the exact `d x d` covariance (row-major).
pub fn cov_error(x: &[f64], d: usize, cov: &[f64]) -> Result<f64> {
    let n = check_set(x, d, 2, "cov_error x")?;
    check_len(cov, d * d, "cov")?;
    cov_error_with_norm(x, n, d, cov, frobenius(cov)?)
}

/// The four metrics of a sample set against a [`Reference`].
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Metrics {
    /// Sliced W2 against the full reference sample ([`sliced_w2`]).
    pub sw2: f64,
    /// Unbiased MMD^2 against the reference's MMD subset ([`mmd2_unbiased`]).
    pub mmd2: f64,
    /// [`mean_error`] against the exact mean.
    pub mean_err: f64,
    /// [`cov_error`] against the exact covariance.
    pub cov_err: f64,
}

/// An exact posterior: a large exact sample plus the exact mean and covariance, with
/// everything that does not depend on the evaluated set precomputed (fixed projection
/// directions and sorted reference projections, median-heuristic MMD bandwidth, the
/// reference-reference MMD term).
#[derive(Debug, Clone)]
pub struct Reference {
    d: usize,
    n_ref: usize,
    mean: Vec<f64>,
    cov: Vec<f64>,
    cov_trace: f64,
    cov_fro: f64,
    directions: Vec<f64>,
    n_directions: usize,
    sorted_proj: Vec<Vec<f64>>,
    mmd_ref: Vec<f64>,
    mmd_ref_norms: Vec<f64>,
    mmd_ref_kyy: f64,
    bandwidth: f64,
}

impl Reference {
    /// Builds a reference from `samples` (row-major `n_ref x d`, exact posterior draws), the
    /// exact `mean` (`d`) and `cov` (`d x d` row-major), `n_directions` sliced-W2 directions
    /// drawn with [`random_directions`]`(d, n_directions, seed)`, and the first `mmd_points`
    /// rows (clamped to `n_ref`, at least 2) as the MMD reference; the MMD bandwidth is
    /// [`median_bandwidth`] on those rows.
    pub fn new(
        samples: Vec<f64>,
        d: usize,
        mean: Vec<f64>,
        cov: Vec<f64>,
        n_directions: usize,
        seed: u64,
        mmd_points: usize,
    ) -> Result<Self> {
        let n_ref = check_set(&samples, d, 2, "reference samples")?;
        check_len(&mean, d, "reference mean")?;
        check_len(&cov, d * d, "reference cov")?;
        if n_directions == 0 {
            return Err(Error::param("n_directions", "must be >= 1"));
        }
        if mmd_points < 2 {
            return Err(Error::param(
                "mmd_points",
                format!("must be >= 2, got {mmd_points}"),
            ));
        }
        let cov_trace: f64 = (0..d).map(|i| cov[i * d + i]).sum();
        if cov_trace <= 0.0 {
            return Err(Error::param(
                "cov",
                format!("trace must be > 0, got {cov_trace}"),
            ));
        }
        let cov_fro = frobenius(&cov)?;

        let directions = random_directions(d, n_directions, seed);
        let l = n_directions;
        let proj = matmul_nt(&samples, n_ref, &directions, l, d)?;
        let sorted_proj: Vec<Vec<f64>> = (0..l)
            .into_par_iter()
            .map(|k| {
                let mut col: Vec<f64> = (0..n_ref).map(|i| proj[i * l + k]).collect();
                sort_f64(&mut col);
                col
            })
            .collect();
        drop(proj);

        let p = mmd_points.min(n_ref);
        let mmd_ref = samples[..p * d].to_vec();
        drop(samples);
        let bandwidth = median_bandwidth(&mmd_ref, d, p);
        if !(bandwidth.is_finite() && bandwidth > 0.0) {
            return Err(Error::Numerical(format!(
                "median-heuristic bandwidth is {bandwidth} (degenerate reference sample)"
            )));
        }
        let inv = 1.0 / (2.0 * bandwidth * bandwidth);
        let mmd_ref_norms = sq_norms(&mmd_ref, d);
        let yr = Rows {
            x: &mmd_ref,
            n: p,
            norms: &mmd_ref_norms,
        };
        let mmd_ref_kyy = kernel_sum(yr, yr, d, inv, true)? / (p * (p - 1)) as f64;

        Ok(Self {
            d,
            n_ref,
            mean,
            cov,
            cov_trace,
            cov_fro,
            directions,
            n_directions,
            sorted_proj,
            mmd_ref,
            mmd_ref_norms,
            mmd_ref_kyy,
            bandwidth,
        })
    }

    /// Dimension `d`.
    pub fn dim(&self) -> usize {
        self.d
    }
    /// Number of reference rows used for sliced W2.
    pub fn n_reference(&self) -> usize {
        self.n_ref
    }
    /// Number of reference rows used for MMD.
    pub fn n_mmd(&self) -> usize {
        self.mmd_ref.len() / self.d
    }
    /// The fixed MMD bandwidth (median heuristic).
    pub fn bandwidth(&self) -> f64 {
        self.bandwidth
    }
    /// The fixed projection directions (row-major `n_directions x d`).
    pub fn directions(&self) -> &[f64] {
        &self.directions
    }
    /// Exact posterior mean.
    pub fn mean(&self) -> &[f64] {
        &self.mean
    }
    /// Exact posterior covariance (row-major `d x d`).
    pub fn cov(&self) -> &[f64] {
        &self.cov
    }

    /// All four [`Metrics`] of `x` (row-major `n x d`, `n >= 2`) against this reference.
    pub fn evaluate(&self, x: &[f64]) -> Result<Metrics> {
        let d = self.d;
        let n = check_set(x, d, 2, "evaluated samples")?;
        let l = self.n_directions;
        let px = matmul_nt(x, n, &self.directions, l, d)?;
        let sw2 = sliced_from_projections(&px, n, l, &self.sorted_proj).sqrt();

        let inv = 1.0 / (2.0 * self.bandwidth * self.bandwidth);
        let xn = sq_norms(x, d);
        let p = self.n_mmd();
        let xr = Rows { x, n, norms: &xn };
        let yr = Rows {
            x: &self.mmd_ref,
            n: p,
            norms: &self.mmd_ref_norms,
        };
        let kxx = kernel_sum(xr, xr, d, inv, true)? / (n * (n - 1)) as f64;
        let kxy = kernel_sum(xr, yr, d, inv, false)? / (n * p) as f64;
        let mmd2 = kxx + self.mmd_ref_kyy - 2.0 * kxy;

        let mean_err = mean_error(x, d, &self.mean, self.cov_trace)?;
        let cov_err = cov_error_with_norm(x, n, d, &self.cov, self.cov_fro)?;
        Ok(Metrics {
            sw2,
            mmd2,
            mean_err,
            cov_err,
        })
    }
}

/// Noise floor of one metric: mean and sample standard deviation over repeated fresh exact
/// samples of the same size.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Floor {
    pub floor_mean: f64,
    pub floor_sd: f64,
}

/// Noise floors of all four metrics, for sample sets of `n` rows.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct MetricFloors {
    /// Rows of the fresh samples the floors were computed for.
    pub n: usize,
    /// Number of fresh samples.
    pub repeats: usize,
    pub sw2: Floor,
    pub mmd2: Floor,
    pub mean_err: Floor,
    pub cov_err: Floor,
}

/// A metric value next to its noise floor; serialises as
/// `{"value": .., "floor_mean": .., "floor_sd": ..}`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct WithFloor {
    pub value: f64,
    pub floor_mean: f64,
    pub floor_sd: f64,
}

impl WithFloor {
    /// `(value - floor_mean) / floor_sd` (how many floor standard deviations above the floor).
    pub fn z_score(&self) -> f64 {
        (self.value - self.floor_mean) / self.floor_sd
    }
}

/// [`Metrics`] with their noise floors; serialises as
/// `{"sw2": {"value", "floor_mean", "floor_sd"}, "mmd2": {..}, "mean_err": {..}, "cov_err": {..}}`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct MetricsWithFloor {
    pub sw2: WithFloor,
    pub mmd2: WithFloor,
    pub mean_err: WithFloor,
    pub cov_err: WithFloor,
}

impl Metrics {
    /// Pairs each metric with its floor.
    pub fn with_floor(&self, f: &MetricFloors) -> MetricsWithFloor {
        let w = |value: f64, fl: Floor| WithFloor {
            value,
            floor_mean: fl.floor_mean,
            floor_sd: fl.floor_sd,
        };
        MetricsWithFloor {
            sw2: w(self.sw2, f.sw2),
            mmd2: w(self.mmd2, f.mmd2),
            mean_err: w(self.mean_err, f.mean_err),
            cov_err: w(self.cov_err, f.cov_err),
        }
    }
}

/// Noise floors: evaluates `repeats >= 2` fresh exact samples `fresh(rep)`, `rep = 0..repeats`
/// (each must have the same number of rows `n`, the size of the sets to be compared) against
/// `reference`, and returns the mean and sample standard deviation (`repeats - 1` denominator)
/// of each metric.
pub fn noise_floor(
    reference: &Reference,
    mut fresh: impl FnMut(usize) -> Result<Vec<f64>>,
    repeats: usize,
) -> Result<MetricFloors> {
    if repeats < 2 {
        return Err(Error::param(
            "repeats",
            format!("need at least 2 repeats for a spread, got {repeats}"),
        ));
    }
    let mut vals: Vec<Metrics> = Vec::with_capacity(repeats);
    let mut n = None;
    for rep in 0..repeats {
        let x = fresh(rep)?;
        let rows = check_set(&x, reference.d, 2, "noise-floor sample")?;
        match n {
            None => n = Some(rows),
            Some(n0) if n0 != rows => {
                return Err(Error::shape(
                    "noise-floor sample",
                    format!("{n0} rows like the first repeat"),
                    &[rows, reference.d],
                ))
            }
            _ => {}
        }
        vals.push(reference.evaluate(&x)?);
    }
    let floor = |f: fn(&Metrics) -> f64| {
        let k = vals.len() as f64;
        let mean = vals.iter().map(f).sum::<f64>() / k;
        let var = vals.iter().map(|m| (f(m) - mean).powi(2)).sum::<f64>() / (k - 1.0);
        Floor {
            floor_mean: mean,
            floor_sd: var.sqrt(),
        }
    };
    Ok(MetricFloors {
        n: n.unwrap_or(0),
        repeats,
        sw2: floor(|m| m.sw2),
        mmd2: floor(|m| m.mmd2),
        mean_err: floor(|m| m.mean_err),
        cov_err: floor(|m| m.cov_err),
    })
}

/// Evaluates `x` against `reference` and pairs the result with `floors`; errors if `x` does
/// not have the `floors.n` rows the floors were computed for (floors depend on `n`).
pub fn evaluate_with_floor(
    reference: &Reference,
    x: &[f64],
    floors: &MetricFloors,
) -> Result<MetricsWithFloor> {
    let n = check_set(x, reference.d, 2, "evaluated samples")?;
    if n != floors.n {
        return Err(Error::shape(
            "evaluated samples",
            format!(
                "{} rows (the size the noise floors were computed for)",
                floors.n
            ),
            &[n, reference.d],
        ));
    }
    Ok(reference.evaluate(x)?.with_floor(floors))
}

/// The exact reference of `posterior` (`n_ref` draws, its mean and covariance) and the noise
/// floors of every metric for sample sets of size `n` (10 fresh exact sets). Fixed seeds, so
/// `diffpost eval`, the demo and the benchmarks compare against the same reference.
pub fn exact_reference(
    posterior: &crate::prior::GaussianMixture,
    n: usize,
    n_ref: usize,
) -> Result<(Reference, MetricFloors)> {
    use crate::prior::{Denoiser, ExactSample};
    use crate::rng::SampleStreams;
    let d = posterior.dim();
    // The reference sample, its copies, and the floors' two exact sets of `n`.
    crate::limits::check_alloc(
        "--reference",
        (n_ref as u128 + 2 * n as u128)
            .saturating_mul((4 * 8 * d + SampleStreams::BYTES_PER_STREAM) as u128),
    )?;
    let refs: Vec<f64> = posterior
        .sample_exact(&mut SampleStreams::new(0x7265_6600, 0..n_ref as u64))?
        .flatten_all()?
        .to_vec1()?;
    let mean: Vec<f64> = posterior.mean().iter().copied().collect();
    let cov = posterior.covariance();
    let covv: Vec<f64> = (0..d)
        .flat_map(|r| (0..d).map(move |c| (r, c)))
        .map(|(r, c)| cov[(r, c)])
        .collect();
    let reference = Reference::new(refs, d, mean, covv, 100, 0x6469_7273, 2000.min(n_ref))?;
    let floors = noise_floor(
        &reference,
        |rep| {
            Ok(posterior
                .sample_exact(&mut SampleStreams::new(
                    0x666c_6f6f + rep as u64,
                    0..n as u64,
                ))?
                .flatten_all()?
                .to_vec1()?)
        },
        10,
    )?;
    Ok((reference, floors))
}

/// Mode-weight total variation `0.5 sum_k |s_k - w_k|`: `s_k` the share of samples assigned to
/// component `k` (`assign`), `w_k` the exact posterior component weights.
pub fn mode_weight_tv(assign: &[usize], weights: &[f64]) -> f64 {
    let n = assign.len().max(1) as f64;
    let mut share = vec![0.0; weights.len()];
    for &a in assign {
        if a < share.len() {
            share[a] += 1.0 / n;
        }
    }
    0.5 * share
        .iter()
        .zip(weights)
        .map(|(s, w)| (s - w).abs())
        .sum::<f64>()
}

/// The mode-weight TV of the rows of `x` (each assigned to its most responsible component of
/// `posterior`), with its noise floor: the same TV for `repeats` fresh exact sets of as many
/// rows (the sets of [`exact_reference`]'s floors).
pub fn mode_weight_tv_with_floor(
    posterior: &crate::prior::GaussianMixture,
    x: &Tensor,
    repeats: usize,
) -> Result<WithFloor> {
    use crate::prior::ExactSample;
    use crate::rng::SampleStreams;
    let n = x.dims()[0];
    let w = posterior.weights().to_vec();
    let value = mode_weight_tv(&posterior.assign(x)?, &w);
    let mut fl = Vec::with_capacity(repeats);
    for rep in 0..repeats {
        let e = posterior.sample_exact(&mut SampleStreams::new(
            0x666c_6f6f + rep as u64,
            0..n as u64,
        ))?;
        fl.push(mode_weight_tv(&posterior.assign(&e)?, &w));
    }
    let mean = fl.iter().sum::<f64>() / repeats as f64;
    let sd =
        (fl.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (repeats.max(2) - 1) as f64).sqrt();
    Ok(WithFloor {
        value,
        floor_mean: mean,
        floor_sd: sd,
    })
}

/// `log p(y)`: exact, and a sampler's estimate (SMC) with its error when one is given.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct EvidenceCheck {
    pub exact: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<f64>,
}

/// What `diffpost eval` reports for samples of a mixture prior's posterior: every metric with
/// its noise floor, for mixture posteriors (K > 1) the mode-weight TV with its floor and the
/// exact component weights, and the evidence.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PosteriorEval {
    #[serde(flatten)]
    pub metrics: MetricsWithFloor,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode_tv: Option<WithFloor>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub posterior_weights: Option<Vec<f64>>,
    pub log_evidence: EvidenceCheck,
}

/// Evaluates `samples` (`[n, d]`, `n >= 2`) against the exact posterior of `prior` under
/// `y = A x + eta xi`: [`exact_reference`] with `n_ref` reference draws, the mode-weight TV of
/// mixture posteriors, and the exact evidence next to `log_evidence_estimate` when given.
pub fn evaluate_posterior(
    prior: &crate::prior::GaussianMixture,
    op: &dyn crate::operator::LinearOperator,
    y: &[f64],
    eta: f64,
    samples: &Tensor,
    n_ref: usize,
    log_evidence_estimate: Option<f64>,
) -> Result<PosteriorEval> {
    use crate::prior::Denoiser;
    let d = prior.dim();
    let n = match samples.dims() {
        [n, dd] if *dd == d && *n >= 2 => *n,
        other => {
            return Err(Error::shape(
                "samples",
                format!("[n, d] with d = {d} (the prior's) and n >= 2"),
                other,
            ))
        }
    };
    let (post, log_evidence) = prior.posterior_and_evidence(op, y, eta)?;
    let (reference, floors) = exact_reference(&post, n, n_ref)?;
    let x = samples.to_dtype(candle_core::DType::F64)?;
    let xv: Vec<f64> = x.flatten_all()?.to_vec1()?;
    if xv.iter().any(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            what: "samples".into(),
        });
    }
    let metrics = reference.evaluate(&xv)?.with_floor(&floors);
    let (mode_tv, posterior_weights) = if post.k() > 1 {
        (
            Some(mode_weight_tv_with_floor(&post, &x, 10)?),
            Some(post.weights().to_vec()),
        )
    } else {
        (None, None)
    };
    Ok(PosteriorEval {
        metrics,
        mode_tv,
        posterior_weights,
        log_evidence: EvidenceCheck {
            exact: log_evidence,
            estimate: log_evidence_estimate,
            error: log_evidence_estimate.map(|e| e - log_evidence),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn w2_1d_unequal_sizes_by_hand() {
        // x = {0, 1} (weights 1/2), y = {0, 1, 2} (weights 1/3). Quantile pieces:
        // u in [0,1/3): 0 vs 0; [1/3,1/2): 0 vs 1; [1/2,2/3): 1 vs 1; [2/3,1]: 1 vs 2.
        let w = w2_sq_sorted_1d(&[0.0, 1.0], &[0.0, 1.0, 2.0]);
        let expect = (0.5 - 1.0 / 3.0) * 1.0 + (1.0 - 2.0 / 3.0) * 1.0;
        assert!((w - expect).abs() < 1e-15, "{w} vs {expect}");
        // Symmetric, and equal sizes reduce to the mean of squared sorted differences.
        assert!((w2_sq_sorted_1d(&[0.0, 1.0, 2.0], &[0.0, 1.0]) - expect).abs() < 1e-15);
        let e = w2_sq_sorted_1d(&[0.0, 1.0, 5.0], &[1.0, 1.0, 2.0]);
        assert!((e - (1.0 + 0.0 + 9.0) / 3.0).abs() < 1e-15);
        // Through sliced_w2 in d = 1 (direction +-1 leaves W2 unchanged).
        let s = sliced_w2(&[1.0, 0.0], &[2.0, 0.0, 1.0], 1, &[1.0]).unwrap();
        assert!((s - expect.sqrt()).abs() < 1e-15);
    }

    #[test]
    fn directions_are_unit_and_seeded() {
        let a = random_directions(7, 5, 3);
        assert_eq!(a.len(), 35);
        for r in a.chunks(7) {
            assert!((r.iter().map(|v| v * v).sum::<f64>() - 1.0).abs() < 1e-12);
        }
        assert_eq!(a, random_directions(7, 5, 3));
        assert_ne!(a, random_directions(7, 5, 4));
    }

    #[test]
    fn validation_errors() {
        assert!(matches!(
            sliced_w2(&[1.0, 2.0, 3.0], &[1.0, 2.0], 2, &[1.0, 0.0]),
            Err(Error::Shape { .. })
        ));
        assert!(matches!(
            mmd2_unbiased(&[1.0, f64::NAN], &[1.0, 2.0], 1, 1.0),
            Err(Error::NonFinite { .. })
        ));
        assert!(mmd2_unbiased(&[1.0, 2.0], &[1.0, 2.0], 1, 0.0).is_err());
        assert!(cov_error(&[1.0, 2.0], 2, &[1.0, 0.0, 0.0, 1.0]).is_err());
        assert!(median_bandwidth(&[1.0], 1, 10).is_nan());
    }

    #[test]
    fn median_bandwidth_small() {
        // Points 0, 1, 3 in 1-D: distances 1, 2, 3 -> median 2.
        assert!((median_bandwidth(&[0.0, 1.0, 3.0], 1, 100) - 2.0).abs() < 1e-12);
        // Points 0, 1, 3, 7: distances 1,2,3,4,6,7 -> median 3.5.
        assert!((median_bandwidth(&[0.0, 1.0, 3.0, 7.0], 1, 100) - 3.5).abs() < 1e-12);
        // max_points = 2 keeps only the first two rows.
        assert!((median_bandwidth(&[0.0, 1.0, 3.0, 7.0], 1, 2) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn blocked_kernel_sum_matches_single_block() {
        let (n, m, d) = (300, 170, 3);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let x: Vec<f64> = (0..n * d)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        let y: Vec<f64> = (0..m * d)
            .map(|_| StandardNormal.sample(&mut rng))
            .collect();
        let (xn, yn) = (sq_norms(&x, d), sq_norms(&y, d));
        let xr = Rows {
            x: &x,
            n,
            norms: &xn,
        };
        let yr = Rows {
            x: &y,
            n: m,
            norms: &yn,
        };
        for (a, b, sp) in [(xr, xr, true), (xr, yr, false), (yr, xr, false)] {
            let one = kernel_sum_blocked(a, b, d, 0.3, sp, usize::MAX).unwrap();
            let many = kernel_sum_blocked(a, b, d, 0.3, sp, 1000).unwrap();
            assert!((one - many).abs() < 1e-9 * one.abs(), "{one} vs {many}");
        }
    }

    #[test]
    fn mmd_matches_naive() {
        let x = [0.0, 1.0, 0.5, -0.3, 2.0, 0.1];
        let y = [0.2, 0.9, -1.0, 0.4, 0.3, 0.3, 1.5, -0.5];
        let bw = 0.7;
        let k = |a: &[f64], b: &[f64]| {
            let d2: f64 = a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum();
            (-d2 / (2.0 * bw * bw)).exp()
        };
        let (xs, ys): (Vec<&[f64]>, Vec<&[f64]>) = (x.chunks(2).collect(), y.chunks(2).collect());
        let (n, m) = (xs.len() as f64, ys.len() as f64);
        let mut kxx = 0.0;
        for (i, a) in xs.iter().enumerate() {
            for (j, b) in xs.iter().enumerate() {
                if i != j {
                    kxx += k(a, b);
                }
            }
        }
        let mut kyy = 0.0;
        for (i, a) in ys.iter().enumerate() {
            for (j, b) in ys.iter().enumerate() {
                if i != j {
                    kyy += k(a, b);
                }
            }
        }
        let kxy: f64 = xs.iter().flat_map(|a| ys.iter().map(|b| k(a, b))).sum();
        let expect = kxx / (n * (n - 1.0)) + kyy / (m * (m - 1.0)) - 2.0 * kxy / (n * m);
        let got = mmd2_unbiased(&x, &y, 2, bw).unwrap();
        assert!((got - expect).abs() < 1e-12, "{got} vs {expect}");
    }
}
