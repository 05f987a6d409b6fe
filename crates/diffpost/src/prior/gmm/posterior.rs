//! The closed forms under a linear Gaussian measurement `y = A x + eta xi`: the exact posterior
//! (again a mixture) and the exact evidence `log p(y)`.

use nalgebra::{DMatrix, DVector};

use super::{CovKind, Covs, GaussianMixture};
use crate::operator::LinearOperator;
use crate::{Error, Result};

fn sym_eigen(m: &DMatrix<f64>) -> (DVector<f64>, DMatrix<f64>) {
    let e = nalgebra::SymmetricEigen::new(m.clone());
    (e.eigenvalues.map(|v| v.max(0.0)), e.eigenvectors)
}

impl GaussianMixture {
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

    /// The posterior's mixture weights `w'_k ∝ w_k N(y; A mu_k, A S_k A^T + eta^2 I)` and the
    /// evidence `log p(y)`, without the posterior covariances (cheap at image scale: one
    /// `m x m` Cholesky factor per component).
    pub fn posterior_weights(
        &self,
        op: &dyn LinearOperator,
        y: &[f64],
        eta: f64,
    ) -> Result<(Vec<f64>, f64)> {
        self.check_measurement(op, y, eta)?;
        let a = op.to_dense()?;
        let yv = DVector::from_column_slice(y);
        let m = op.out_dim();
        let ln2pi = (2.0 * std::f64::consts::PI).ln();
        let mut logw = Vec::with_capacity(self.k());
        for i in 0..self.k() {
            let g = &a * self.cov(i) * a.transpose() + DMatrix::identity(m, m) * (eta * eta);
            let chol = nalgebra::Cholesky::new(g).ok_or_else(|| {
                Error::Numerical("A S A^T + eta^2 I is not positive definite".into())
            })?;
            let r = &yv - &a * &self.means[i];
            let logdet: f64 = 2.0 * chol.l().diagonal().iter().map(|v| v.ln()).sum::<f64>();
            let quad = r.dot(&chol.solve(&r));
            logw.push(self.weights[i].ln() - 0.5 * (quad + logdet + m as f64 * ln2pi));
        }
        Ok((normalise_log_weights(&logw), log_sum_exp(&logw)))
    }

    fn check_measurement(&self, op: &dyn LinearOperator, y: &[f64], eta: f64) -> Result<()> {
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
        Ok(())
    }

    /// The exact posterior and the exact evidence `log p(y) = log sum_k w_k N(y; A mu_k, G_k)`
    /// (nats, all normalising constants included), from the same per-component terms.
    pub fn posterior_and_evidence(
        &self,
        op: &dyn LinearOperator,
        y: &[f64],
        eta: f64,
    ) -> Result<(GaussianMixture, f64)> {
        self.check_measurement(op, y, eta)?;
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
