//! Algorithm 3 of Xun, Gupta & Price (2025), competitive compressed sensing (Corollary 1.3): a naive
//! estimator (LASSO by FISTA, or least squares by CG) gives `x0` with error at most `R`; set
//! `sigma = R / delta`, draw `x0' = x0 + N(0, sigma^2 I)` per sample and return Algorithm 2 with
//! `(x0', sigma)`. Under local log-concavity the error is at most `2r` when any algorithm achieves `r`.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::annealed::AnnealedConfig;
pub use super::estimate::{estimate, fista, Estimator};
use super::local;
use super::method::{Kernel, Method};
use super::{Info, Monitor, Output, Problem};
use crate::rng::SampleStreams;
use crate::{Error, Result};

/// `estimator`: the naive estimator of step 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EstimatorKind {
    /// LASSO by FISTA (`lasso_lambda`).
    #[default]
    Lasso,
    /// Minimum-norm least squares by CG.
    LeastSquares,
}

/// Algorithm 3 settings (`kind = "cs"`): the estimator's, then Algorithm 1's (Algorithm 2's
/// `sigma` is `R / delta`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CsConfig {
    pub estimator: EstimatorKind,
    /// Iterations of the estimator (default 500).
    pub estimator_iters: usize,
    /// The LASSO weight (`estimator = "lasso"`; default `eta sqrt(2 ln d) ||A||`). Was `lambda`,
    /// which also names Definition D.1's constant.
    pub lasso_lambda: Option<f64>,
    /// `R`, the estimator's error bound; default `sqrt(d) * sigma_max_hint / 50` (the prior's spread).
    pub radius: Option<f64>,
    /// `delta` in `sigma = R / delta` (default 1).
    pub delta: f64,
    /// Start the Langevin chains at `x0'` rather than from diffusion on the tilted prior.
    pub start_at_x0: bool,
    /// The annealing (Algorithm 1) settings.
    #[serde(flatten)]
    pub annealed: AnnealedConfig,
}

impl Default for CsConfig {
    fn default() -> Self {
        Self {
            estimator: EstimatorKind::Lasso,
            estimator_iters: 500,
            lasso_lambda: None,
            radius: None,
            delta: 1.0,
            start_at_x0: false,
            annealed: AnnealedConfig::default(),
        }
    }
}

impl CsConfig {
    /// The estimator of step 1.
    pub fn estimator(&self) -> Result<Estimator> {
        if self.estimator_iters == 0 {
            return Err(Error::param("sampler.estimator_iters", "must be >= 1"));
        }
        Ok(match self.estimator {
            EstimatorKind::Lasso => {
                if let Some(l) = self.lasso_lambda {
                    if !(l >= 0.0) || !l.is_finite() {
                        return Err(Error::param(
                            "sampler.lasso_lambda",
                            format!("must be >= 0, got {l}"),
                        ));
                    }
                }
                Estimator::Lasso {
                    lambda: self.lasso_lambda,
                    iters: self.estimator_iters,
                }
            }
            EstimatorKind::LeastSquares => {
                if self.lasso_lambda.is_some() {
                    return Err(Error::param(
                        "sampler.lasso_lambda",
                        "is the LASSO weight: applies only to estimator = \"lasso\"",
                    ));
                }
                Estimator::LeastSquares {
                    iters: self.estimator_iters,
                }
            }
        })
    }

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
        self.estimator()?;
        if self.annealed.admissible.lambda.is_some() {
            return Err(Error::param(
                "sampler.lambda",
                "is `lasso_lambda` in sampler `cs` (Definition D.1's lambda keeps its default)",
            ));
        }
        self.annealed.validate()
    }
}

impl Method for CsConfig {
    fn validate(&self) -> Result<()> {
        CsConfig::validate(self)
    }

    /// Step 1 of Algorithm 3 is deterministic: once per run, not per batch.
    fn prepare(&self, problem: &Problem) -> Result<Box<dyn Kernel>> {
        problem.a_norm()?;
        let x0 = estimate(problem, &self.estimator()?)?;
        Ok(Box::new(CsKernel {
            cfg: self.clone(),
            x0,
        }))
    }

    fn record_resolved(
        &self,
        info: &Info,
        params: &mut serde_json::Map<String, serde_json::Value>,
    ) {
        super::annealed::record_schedule(info, params);
    }

    fn filled(&self) -> Self {
        let mut annealed = self.annealed.filled();
        // Definition D.1's lambda is not a key of `cs` (`lambda` there was the LASSO weight).
        annealed.admissible.lambda = None;
        Self {
            annealed,
            ..self.clone()
        }
    }
}

struct CsKernel {
    cfg: CsConfig,
    /// The estimate of step 1, `[1, d]`.
    x0: Tensor,
}

impl Kernel for CsKernel {
    fn sample(
        &self,
        problem: &Problem,
        streams: &mut SampleStreams,
        mon: &dyn Monitor,
    ) -> Result<Output> {
        sample_from(problem, &self.x0, &self.cfg, streams, mon)
    }
}

/// Runs Algorithm 3 (the estimate of step 1 computed here; see [`sample_from`]).
pub fn sample(
    problem: &Problem,
    cfg: &CsConfig,
    streams: &mut SampleStreams,
    mon: &dyn Monitor,
) -> Result<Output> {
    let x0 = estimate(problem, &cfg.estimator()?)?;
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
    local::sample_tilted(
        problem,
        &x0p,
        sigma,
        cfg.start_at_x0,
        &cfg.annealed,
        streams,
        mon,
    )
}
