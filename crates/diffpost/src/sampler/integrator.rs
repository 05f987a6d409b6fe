//! Langevin integrators (docs/algorithms.md, "Exact-likelihood integrator").
//!
//! The Langevin diffusion on `p(x | y)` has drift `s(x) + A^T (y - A x)/eta^2`. Euler-Maruyama
//! (`integrator = "euler"`) steps both terms, so its step is capped by the likelihood's stiffness
//! `||A||^2 / eta^2`. The likelihood part alone is an Ornstein-Uhlenbeck process, linear with
//! `G = A^T A = V diag(lambda) V^T`:
//! `dX = (A^T y - G X)/eta^2 dt + sqrt(2) dW`, whose law after a time `h` is exact (Eq. 36):
//! `X_h = f1(G) X_0 + f2(G) A^T y + f3(G)^{1/2} xi`,
//! `f1(l) = exp(-l h / eta^2)`, `f2(l) = (1 - f1(l)) / l` (`h / eta^2` at `l = 0`),
//! `f3(l) = eta^2 (1 - f1(l)^2) / l` (`2 h` at `l = 0`).
//! `integrator = "exact-likelihood"` is the Lie-Trotter splitting (Eq. 37): a prior Euler step
//! `X' = X + h s(X)` (one score evaluation), then the exact OU flow for `h`, so the step is set by
//! the prior alone, `h = h_rel / L_prior`. Its bias on a Gaussian prior is in closed form
//! ([`gaussian_stationary`]).

use candle_core::{DType, Tensor};
use nalgebra::{DMatrix, DVector};
use serde::{Deserialize, Serialize};

use crate::operator::{GramSpectrum, LinearOperator};
use crate::{Error, Result};

/// How Langevin steps treat the likelihood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Integrator {
    /// Euler-Maruyama on the whole drift (step capped by `||A||^2 / eta^2`).
    #[default]
    Euler,
    /// Prior Euler step, then the likelihood's Ornstein-Uhlenbeck flow integrated exactly
    /// (needs the operator's [`GramSpectrum`]; others fall back to Euler, reported).
    ExactLikelihood,
    /// Strang splitting the other way round: the likelihood's exact flow for `h/2`, a prior
    /// Euler step `h`, the flow for `h/2` again (Eq. 39): still one score evaluation per step,
    /// two normal draws.
    ExactLikelihoodStrang,
}

impl Integrator {
    /// Whether the likelihood caps the step (`||A||` enters the step rule).
    pub fn likelihood_in_step(&self) -> bool {
        matches!(self, Integrator::Euler)
    }

    /// Whether the step uses the operator's spectrum.
    pub fn needs_spectrum(&self) -> bool {
        !self.likelihood_in_step()
    }
}

/// `f1, f2, f3` of Eq. 36 at eigenvalue `l`.
fn f1(l: f64, h: f64, eta: f64) -> f64 {
    (-l * h / (eta * eta)).exp()
}
fn f2(l: f64, h: f64, eta: f64) -> f64 {
    let a = l * h / (eta * eta);
    if a < 1e-8 {
        h / (eta * eta) * (1.0 - 0.5 * a)
    } else {
        (1.0 - (-a).exp()) / l
    }
}
fn f3(l: f64, h: f64, eta: f64) -> f64 {
    let a = 2.0 * l * h / (eta * eta);
    if a < 1e-8 {
        2.0 * h * (1.0 - 0.5 * a)
    } else {
        eta * eta * (1.0 - (-a).exp()) / l
    }
}

/// The exact OU flow of the likelihood part for a step `h` (Eq. 36), with `f2(G) A^T y`
/// precomputed for one `y` (`[1, m]` or `[B, m]`).
pub(crate) struct LikelihoodFlow<'a> {
    spec: &'a dyn GramSpectrum,
    h: f64,
    eta: f64,
    shift: Tensor,
}

impl<'a> LikelihoodFlow<'a> {
    pub fn new(
        op: &'a dyn LinearOperator,
        spec: &'a dyn GramSpectrum,
        y: &Tensor,
        eta: f64,
        h: f64,
    ) -> Result<Self> {
        if !(h > 0.0) || !h.is_finite() {
            return Err(Error::param(
                "sampler.h_rel",
                format!("the exact-likelihood step must be finite and > 0, got {h}"),
            ));
        }
        let aty = op.adjoint(&y.to_dtype(DType::F64)?)?;
        let shift = spec.gram_fn(&aty, &|l| f2(l, h, eta))?;
        Ok(Self {
            spec,
            h,
            eta,
            shift,
        })
    }

    /// `X_h` from `X_0 = x` with standard normal `xi` (Eq. 36).
    pub fn step(&self, x: &Tensor, xi: &Tensor) -> Result<Tensor> {
        let (h, eta) = (self.h, self.eta);
        let a = self.spec.gram_fn(x, &|l| f1(l, h, eta))?;
        let n = self.spec.gram_fn(xi, &|l| f3(l, h, eta).sqrt())?;
        Ok((a.broadcast_add(&self.shift)? + n)?)
    }
}

/// The stationary law `N(m, S)` of the exact-likelihood scheme (Eq. 37) on a Gaussian prior
/// `N(mu, Sigma)` with a dense `A` (Eq. 38): the scheme is the linear recursion
/// `X' = F X + b + w`, `F = E (I - h P)`, `b = E h P mu + f2(G) A^T y`, `w ~ N(0, f3(G))`,
/// `E = f1(G)`, `P = Sigma^-1`, so `m = (I - F)^-1 b` and `S = F S F^T + f3(G)` (solved by
/// doubling). Compare with the exact posterior to read the scheme's bias at step `h`.
pub fn gaussian_stationary(
    mu: &DVector<f64>,
    sigma: &DMatrix<f64>,
    a: &DMatrix<f64>,
    y: &DVector<f64>,
    eta: f64,
    h: f64,
) -> Result<(DVector<f64>, DMatrix<f64>)> {
    let d = mu.len();
    let p = sigma
        .clone()
        .try_inverse()
        .ok_or_else(|| Error::Numerical("prior covariance is singular".into()))?;
    let g = a.transpose() * a;
    let eig = nalgebra::SymmetricEigen::new((&g + g.transpose()) * 0.5);
    let fun = |f: &dyn Fn(f64) -> f64| -> DMatrix<f64> {
        let dg = DVector::from_iterator(d, eig.eigenvalues.iter().map(|&l| f(l.max(0.0))));
        &eig.eigenvectors * DMatrix::from_diagonal(&dg) * eig.eigenvectors.transpose()
    };
    let e = fun(&|l| f1(l, h, eta));
    let e2 = fun(&|l| f2(l, h, eta));
    let q = fun(&|l| f3(l, h, eta));
    let f = &e * (DMatrix::identity(d, d) - &p * h);
    let b = &e * (&p * mu) * h + &e2 * (a.transpose() * y);
    let m = (DMatrix::identity(d, d) - &f)
        .lu()
        .solve(&b)
        .ok_or_else(|| Error::Numerical("the scheme has no stationary law at this h".into()))?;
    // S = sum_k F^k Q F^kT by doubling: S <- S + F S F^T, F <- F^2.
    let (mut s, mut fk) = (q.clone(), f.clone());
    let mut converged = false;
    for _ in 0..60 {
        let next = &s + &fk * &s * fk.transpose();
        fk = &fk * &fk;
        converged = (&next - &s).norm() <= 1e-14 * next.norm();
        s = next;
        if converged || !s.iter().all(|v| v.is_finite()) {
            break;
        }
    }
    if !converged || !s.iter().all(|v| v.is_finite()) {
        return Err(Error::Numerical(
            "the scheme is unstable at this h (spectral radius >= 1)".into(),
        ));
    }
    Ok((m, (&s + s.transpose()) * 0.5))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ou_coefficients_have_their_small_eigenvalue_limits() {
        let (h, eta) = (0.3, 0.2);
        assert!((f2(0.0, h, eta) - h / (eta * eta)).abs() < 1e-12);
        assert!((f3(0.0, h, eta) - 2.0 * h).abs() < 1e-12);
        // Continuity across the series cut-off.
        let l = 1e-9 * eta * eta / h;
        assert!((f2(l, h, eta) - f2(l * 1.0001, h, eta)).abs() < 1e-6 * f2(l, h, eta));
        assert!(
            (f3(10.0, h, eta) - eta * eta * (1.0 - (-2.0 * 10.0 * h / (eta * eta)).exp()) / 10.0)
                .abs()
                < 1e-15
        );
    }
}
