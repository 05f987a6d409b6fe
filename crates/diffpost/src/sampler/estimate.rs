//! The naive estimators that start Algorithms 2 and 3 (the paper's step 1 of Algorithm 3, and
//! Algorithm 2's `warm_start = "lasso"` / `"least-squares"`): LASSO by FISTA and minimum-norm
//! least squares by CG. Deterministic: a run computes them once.

use candle_core::{DType, Tensor};
use serde::Serialize;

use super::Problem;
use crate::operator::{cg_least_squares, LinearOperator};
use crate::{Error, Result};

/// The naive estimator of step 1, resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Estimator {
    /// `argmin 0.5 |A x - y|^2 + lambda |x|_1` by FISTA (Beck & Teboulle 2009); default
    /// `lambda = eta sqrt(2 ln d) ||A||` (the universal threshold).
    Lasso { lambda: Option<f64>, iters: usize },
    /// Minimum-norm least squares by CG on the normal equations.
    LeastSquares { iters: usize },
}

/// FISTA for the LASSO on every row of `y: [B, m]`.
/// `a_norm` is `||A||` (the gradient's Lipschitz constant is its square).
pub fn fista(
    op: &dyn LinearOperator,
    y: &Tensor,
    lambda: f64,
    iters: usize,
    a_norm: f64,
) -> Result<Tensor> {
    let l = a_norm * a_norm;
    if l == 0.0 {
        return Err(Error::param("operator", "zero operator"));
    }
    let b = y.dims()[0];
    let mut x = Tensor::zeros((b, op.in_dim()), DType::F64, y.device())?;
    let mut z = x.clone();
    let mut t = 1.0f64;
    let tau = lambda / l;
    for _ in 0..iters {
        let grad = op.adjoint(&op.apply(&z)?.broadcast_sub(y)?)?;
        let v = (&z - (grad / l)?)?;
        // Soft threshold: v - clamp(v, -tau, tau).
        let x_new = (&v - v.clamp(-tau, tau)?)?;
        let t_new = 0.5 * (1.0 + (1.0 + 4.0 * t * t).sqrt());
        z = (&x_new + ((&x_new - &x)? * ((t - 1.0) / t_new))?)?;
        x = x_new;
        t = t_new;
    }
    Ok(x)
}

/// The naive estimate `x0` (`[1, d]`).
pub fn estimate(problem: &Problem, est: &Estimator) -> Result<Tensor> {
    match est {
        Estimator::Lasso { lambda, iters } => {
            let a = problem.a_norm()?;
            let lam = lambda
                .unwrap_or(problem.eta * (2.0 * (problem.prior.dim() as f64).ln()).sqrt() * a);
            fista(problem.op, &problem.y, lam, *iters, a)
        }
        Estimator::LeastSquares { iters } => {
            cg_least_squares(problem.op, &problem.y, None, 0.0, *iters, 1e-10)
        }
    }
}
