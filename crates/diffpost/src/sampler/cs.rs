//! Algorithm 3 of Xun, Gupta & Price (2025), competitive compressed sensing (Corollary 1.3): a naive
//! estimator (LASSO by FISTA, or least squares by CG) gives `x0` with error at most `R`; set
//! `sigma = R / delta`, draw `x0' = x0 + N(0, sigma^2 I)` per sample and return Algorithm 2 with
//! `(x0', sigma)`. Under local log-concavity the error is at most `2r` when any algorithm achieves `r`.

use candle_core::{DType, Tensor};
use serde::Serialize;

use super::local::{self, LocalConfig};
use super::{Monitor, Output, Problem};
use crate::operator::{cg_least_squares, LinearOperator};
use crate::rng::SampleStreams;
use crate::{Error, Result};

/// The naive estimator of step 1.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Estimator {
    /// `argmin 0.5 |A x - y|^2 + lambda |x|_1` by FISTA (Beck & Teboulle 2009); default
    /// `lambda = eta sqrt(2 ln d) ||A||` (the universal threshold).
    Lasso { lambda: Option<f64>, iters: usize },
    /// Minimum-norm least squares by CG on the normal equations.
    LeastSquares { iters: usize },
}

/// Algorithm 3 settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CsConfig {
    pub estimator: Estimator,
    /// `R`, the estimator's error bound; default `sqrt(d) * sigma_max_hint / 50` (the prior's spread).
    pub radius: Option<f64>,
    /// `delta` in `sigma = R / delta` (default 1).
    pub delta: f64,
    /// Algorithm 2/1 settings (its `sigma` is replaced by `R / delta`).
    pub local: LocalConfig,
}

impl Default for CsConfig {
    fn default() -> Self {
        Self {
            estimator: Estimator::Lasso {
                lambda: None,
                iters: 500,
            },
            radius: None,
            delta: 1.0,
            local: LocalConfig {
                sigma: 1.0,
                start_at_x0: false,
                annealed: Default::default(),
            },
        }
    }
}

impl CsConfig {
    /// Range checks that need no problem.
    pub fn validate(&self) -> Result<()> {
        if !(self.delta > 0.0) || !self.delta.is_finite() {
            return Err(Error::param(
                "sampler.delta",
                format!("must be > 0, got {}", self.delta),
            ));
        }
        if let Some(r) = self.radius {
            if !(r > 0.0) || !r.is_finite() {
                return Err(Error::param(
                    "sampler.radius",
                    format!("must be > 0, got {r}"),
                ));
            }
        }
        match self.estimator {
            Estimator::Lasso { lambda, iters } => {
                if let Some(l) = lambda {
                    if !(l >= 0.0) || !l.is_finite() {
                        return Err(Error::param(
                            "sampler.lambda",
                            format!("must be >= 0, got {l}"),
                        ));
                    }
                }
                if iters == 0 {
                    return Err(Error::param("sampler.estimator_iters", "must be >= 1"));
                }
            }
            Estimator::LeastSquares { iters } => {
                if iters == 0 {
                    return Err(Error::param("sampler.estimator_iters", "must be >= 1"));
                }
            }
        }
        self.local.annealed.validate()
    }
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

/// Runs Algorithm 3 (the estimate of step 1 computed here; see [`sample_from`]).
pub fn sample(
    problem: &Problem,
    cfg: &CsConfig,
    streams: &mut SampleStreams,
    mon: &dyn Monitor,
) -> Result<Output> {
    let x0 = estimate(problem, &cfg.estimator)?;
    sample_from(problem, &x0, cfg, streams, mon)
}

/// Steps 2-3 of Algorithm 3 from the estimate `x0` (`[1, d]`) of step 1, which is the same for
/// every sample (a run computes it once).
pub fn sample_from(
    problem: &Problem,
    x0: &Tensor,
    cfg: &CsConfig,
    streams: &mut SampleStreams,
    mon: &dyn Monitor,
) -> Result<Output> {
    if !(cfg.delta > 0.0) {
        return Err(Error::param("sampler.delta", "must be > 0"));
    }
    let d = problem.prior.dim();
    let r = cfg
        .radius
        .unwrap_or((d as f64).sqrt() * problem.prior.sigma_max_hint() / 50.0);
    if !(r > 0.0) || !r.is_finite() {
        return Err(Error::param(
            "sampler.radius",
            format!("must be > 0, got {r}"),
        ));
    }
    let sigma = r / cfg.delta;
    let z = streams.randn(&[d], &problem.device())?;
    let x0p = (z * sigma)?.broadcast_add(x0)?;
    let local_cfg = LocalConfig {
        sigma,
        ..cfg.local.clone()
    };
    local::sample(problem, &x0p, &local_cfg, streams, mon)
}
