//! Gaussian-mixture prior `p(x) = sum_k w_k N(mu_k, S_k)` with full, diagonal or isotropic
//! covariances (a Gaussian is K = 1). Everything is closed form (docs/algorithms.md, "Exact references"):
//! the smoothed prior is `sum_k w_k N(mu_k, S_k + sigma^2 I)`, so the smoothed score, the Tweedie
//! denoiser and the log-density are exact at every `sigma >= 0` (at `sigma = 0` the `S_k` must be
//! positive definite), and the posterior under a linear Gaussian measurement is again a mixture.

use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor, D};
use nalgebra::{DMatrix, DVector};
use rand::Rng;

use super::{Denoiser, ExactSample, LogDensity};
use crate::operator::LinearOperator;
use crate::rng::SampleStreams;
use crate::{Error, Result};

/// How the component covariances are stored (detected from the matrices).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CovKind {
    /// Every `S_k = v_k I`.
    Isotropic,
    /// Every `S_k` diagonal.
    Diagonal,
    /// General symmetric positive semi-definite `S_k`.
    Full,
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
}

/// Precomputed tensors of the smoothed prior at one `sigma`.
struct Smoothed {
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

fn sym_eigen(m: &DMatrix<f64>) -> (DVector<f64>, DMatrix<f64>) {
    let e = nalgebra::SymmetricEigen::new(m.clone());
    (e.eigenvalues.map(|v| v.max(0.0)), e.eigenvectors)
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
        if weights.iter().any(|w| !w.is_finite() || *w < 0.0) {
            return Err(Error::param("weights", "weights must be finite and >= 0"));
        }
        let total: f64 = weights.iter().sum();
        if total <= 0.0 {
            return Err(Error::param("weights", "weights must not all be zero"));
        }
        let weights: Vec<f64> = weights.iter().map(|w| w / total).collect();
        let mut mv = Vec::with_capacity(k);
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
        }
    }
    /// Eigenvalues of `S_i` (unsorted).
    fn eigvals(&self, i: usize) -> DVector<f64> {
        match &self.covs {
            Covs::Diag(v) => v[i].clone(),
            Covs::Full { eigvals, .. } => eigvals[i].clone(),
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
            };
            out += (diag + dm.component_mul(&dm)) * self.weights[i];
        }
        out
    }

    fn smoothed(&self, sigma: f64) -> Result<Arc<Smoothed>> {
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
                    prec: Tensor::from_vec(p, (k, d), &self.device)?,
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
    fn components(&self, x: &Tensor, sigma: f64) -> Result<(Tensor, Tensor)> {
        let dims = x.dims();
        if dims.len() != 2 || dims[1] != self.d {
            return Err(Error::shape("x", format!("[B, {}]", self.d), dims));
        }
        let b = dims[0];
        let k = self.k();
        let sm = self.smoothed(sigma)?;
        let x = x.to_dtype(DType::F64)?;
        let delta = x.unsqueeze(1)?.broadcast_sub(&self.means_t.unsqueeze(0)?)?; // [B,K,d]
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

    /// Fused CPU kernel for full covariances (no autograd). Rows are processed in blocks of 128 on
    /// the rayon pool: per block one GEMM `Y = X_blk [P_1 .. P_K]` (AVX-512/AVX2 kernels of the
    /// `gemm` crate, single-threaded inside the block), then per row `G_k = Y_k - P_k mu_k`, the
    /// quadratic forms, responsibilities and `-sum_k r_k G_k`, all while the block is in cache.
    /// Same maths as the generic path (`components` + `score_from`), which stays the reference and
    /// the autograd/GPU path (`fused_score_matches_generic` tests the two agree).
    fn score_full_cpu(&self, x: &Tensor, sm: &Smoothed) -> Result<Option<Tensor>> {
        use candle_core::Storage;
        use rayon::prelude::*;
        let Some((pcat, pmu, lc)) = &sm.host else {
            return Ok(None);
        };
        if !x.device().is_cpu() || x.track_op() || x.dtype() != DType::F64 || x.rank() != 2 {
            return Ok(None);
        }
        let (b, d) = (x.dims()[0], self.d);
        let k = self.k();
        let kd = k * d;
        let x = x.contiguous()?;
        let mu_v: Vec<f64> = self.means.iter().flat_map(|m| m.iter().copied()).collect();
        let (xs, xl) = x.storage_and_layout();
        let xv = match &*xs {
            Storage::Cpu(a) => &a.as_slice::<f64>()?[xl.start_offset()..xl.start_offset() + b * d],
            _ => return Ok(None),
        };
        const BLOCK: usize = 128;
        let mut out = vec![0.0f64; b * d];
        out.par_chunks_mut(BLOCK * d)
            .enumerate()
            .for_each(|(bi, oblk)| {
                let r0 = bi * BLOCK;
                let nr = oblk.len() / d;
                let xb = &xv[r0 * d..(r0 + nr) * d];
                let mut y = vec![0.0f64; nr * kd];
                // SAFETY: y is [nr, kd], xb is [nr, d], pcat is [d, kd], all row-major and in bounds.
                unsafe {
                    gemm::gemm(
                        nr,
                        kd,
                        d,
                        y.as_mut_ptr(),
                        1,
                        kd as isize,
                        false,
                        xb.as_ptr(),
                        1,
                        d as isize,
                        pcat.as_ptr(),
                        1,
                        kd as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                let mut logits = vec![0.0f64; k];
                for row in 0..nr {
                    let xr = &xb[row * d..(row + 1) * d];
                    let yr = &mut y[row * kd..(row + 1) * kd];
                    for c in 0..k {
                        let (g, m, pm) = (
                            &mut yr[c * d..(c + 1) * d],
                            &mu_v[c * d..(c + 1) * d],
                            &pmu[c * d..(c + 1) * d],
                        );
                        let mut q = 0.0;
                        for j in 0..d {
                            g[j] -= pm[j];
                            q += (xr[j] - m[j]) * g[j];
                        }
                        logits[c] = lc[c] - 0.5 * q;
                    }
                    let mx = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let mut tot = 0.0;
                    for l in logits.iter_mut() {
                        *l = (*l - mx).exp();
                        tot += *l;
                    }
                    let o = &mut oblk[row * d..(row + 1) * d];
                    o.iter_mut().for_each(|v| *v = 0.0);
                    for c in 0..k {
                        let r = logits[c] / tot;
                        let g = &yr[c * d..(c + 1) * d];
                        for j in 0..d {
                            o[j] -= r * g[j];
                        }
                    }
                }
            });
        Ok(Some(Tensor::from_vec(out, (b, d), &Device::Cpu)?))
    }

    /// Responsibilities-weighted score from `(logits, G)`: `-sum_k r_k G_k`.
    fn score_from(&self, logits: &Tensor, g: &Tensor) -> Result<Tensor> {
        if self.k() == 1 {
            return Ok(g.squeeze(1)?.neg()?);
        }
        let lse = logits.log_sum_exp(D::Minus1)?.unsqueeze(1)?;
        let r = logits.broadcast_sub(&lse)?.exp()?; // [B,K]
        Ok(r.unsqueeze(2)?.broadcast_mul(g)?.sum(1)?.neg()?)
    }

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

    /// Exact posterior `p(x | y)` for `y = A x + eta xi` (Kalman/Joseph form, docs/algorithms.md):
    /// `G_k = A S_k A^T + eta^2 I`, `K_k = S_k A^T G_k^-1`, `m_k = mu_k + K_k (y - A mu_k)`,
    /// `C_k = (I - K_k A) S_k (I - K_k A)^T + eta^2 K_k K_k^T`, `w'_k ∝ w_k N(y; A mu_k, G_k)`.
    /// Needs no inverse of `S_k`. Diagonal priors with coordinate-selection operators (identity,
    /// mask) take a per-coordinate path that stays cheap in high dimension.
    pub fn posterior(
        &self,
        op: &dyn LinearOperator,
        y: &[f64],
        eta: f64,
    ) -> Result<GaussianMixture> {
        Ok(self.posterior_and_evidence(op, y, eta)?.0)
    }

    /// The exact posterior and the exact evidence `log p(y) = log sum_k w_k N(y; A mu_k, G_k)`
    /// (nats, all normalising constants included), from the same per-component terms.
    pub fn posterior_and_evidence(
        &self,
        op: &dyn LinearOperator,
        y: &[f64],
        eta: f64,
    ) -> Result<(GaussianMixture, f64)> {
        if op.in_dim() != self.d {
            return Err(Error::shape(
                "operator input",
                format!("[{}] (prior d)", self.d),
                &[op.in_dim()],
            ));
        }
        if y.len() != op.out_dim() {
            return Err(Error::shape(
                "y",
                format!("[{}] (operator m)", op.out_dim()),
                &[y.len()],
            ));
        }
        if !(eta > 0.0) || !eta.is_finite() {
            return Err(Error::param("eta", format!("must be > 0, got {eta}")));
        }
        let e2 = eta * eta;
        let ln2pi = (2.0 * std::f64::consts::PI).ln();
        let k = self.k();
        let mut logw = Vec::with_capacity(k);
        let mut means = Vec::with_capacity(k);
        if let (Covs::Diag(v), Some(sel)) = (&self.covs, op.selection()) {
            let mut diags = Vec::with_capacity(k);
            for ((vi, mi), wi) in v.iter().zip(&self.means).zip(&self.weights) {
                let mut m = mi.clone();
                let mut c = vi.clone();
                let mut lw = wi.ln();
                for (j, &coord) in sel.iter().enumerate() {
                    let s = vi[coord];
                    let g = s + e2;
                    let r = y[j] - mi[coord];
                    lw += -0.5 * (r * r / g + g.ln() + ln2pi);
                    m[coord] += s / g * r;
                    c[coord] = s * e2 / g;
                }
                logw.push(lw);
                means.push(m);
                diags.push(c);
            }
            let weights = normalise_log_weights(&logw);
            let kind = if diags.iter().all(|c| c.iter().all(|&x| x == c[0])) {
                CovKind::Isotropic
            } else {
                CovKind::Diagonal
            };
            let post = Self::assemble(
                self.d,
                weights,
                means,
                Covs::Diag(diags),
                kind,
                self.device.clone(),
            )?;
            return Ok((post, log_sum_exp(&logw)));
        }
        let a = op.to_dense()?;
        let yv = DVector::from_column_slice(y);
        let mut covs = Vec::with_capacity(k);
        let m = op.out_dim();
        for i in 0..k {
            let s = self.cov(i);
            let as_ = &a * &s; // [m, d]
            let g = &as_ * a.transpose() + DMatrix::identity(m, m) * e2;
            let chol = nalgebra::Cholesky::new(g.clone()).ok_or_else(|| {
                Error::Numerical("A S A^T + eta^2 I is not positive definite".into())
            })?;
            let gi_as = chol.solve(&as_); // G^-1 A S, [m, d]
            let kk = gi_as.transpose(); // K = S A^T G^-1, [d, m]
            let r = &yv - &a * &self.means[i];
            let mk = &self.means[i] + &kk * &r;
            let ika = DMatrix::identity(self.d, self.d) - &kk * &a;
            let ck = &ika * &s * ika.transpose() + (&kk * kk.transpose()) * e2;
            let ck = (&ck + ck.transpose()) * 0.5;
            let logdet: f64 = 2.0 * chol.l().diagonal().iter().map(|v| v.ln()).sum::<f64>();
            let quad = r.dot(&chol.solve(&r));
            logw.push(self.weights[i].ln() - 0.5 * (quad + logdet + m as f64 * ln2pi));
            means.push(mk);
            covs.push(ck);
        }
        let weights = normalise_log_weights(&logw);
        let mut eigvals = Vec::with_capacity(k);
        let mut eigvecs = Vec::with_capacity(k);
        for c in &covs {
            let (l, u) = sym_eigen(c);
            eigvals.push(l);
            eigvecs.push(u);
        }
        let post = Self::assemble(
            self.d,
            weights,
            means,
            Covs::Full {
                covs,
                eigvals,
                eigvecs,
            },
            CovKind::Full,
            self.device.clone(),
        )?;
        Ok((post, log_sum_exp(&logw)))
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

fn log_sum_exp(a: &[f64]) -> f64 {
    let mx = a.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    mx + a.iter().map(|l| (l - mx).exp()).sum::<f64>().ln()
}

fn normalise_log_weights(logw: &[f64]) -> Vec<f64> {
    let mx = logw.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = logw.iter().map(|l| (l - mx).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

impl GaussianMixture {
    /// The generic (candle-op) score path: the reference for the fused CPU kernel, and the path
    /// used for autograd and non-CPU devices.
    pub fn score_generic(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        let (logits, g) = self.components(x, sigma)?;
        self.score_from(&logits, &g)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The fused CPU kernel agrees with the generic candle-op path.
    #[test]
    fn fused_score_matches_generic() {
        let inst = crate::problem::random_gmm_instance(12, 3, 4, 0.1, 5).unwrap();
        let x = SampleStreams::range(1, 37)
            .randn(&[12], &Device::Cpu)
            .unwrap();
        for sigma in [0.0, 0.3, 2.0] {
            let a = inst.prior.score(&x, sigma).unwrap();
            let b = inst.prior.score_generic(&x, sigma).unwrap();
            let err = (a - &b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            let scale = b
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(err <= 1e-12 * scale.max(1.0), "sigma {sigma}: {err}");
        }
    }
}
