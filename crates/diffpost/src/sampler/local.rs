//! Algorithm 2 of Xun, Gupta & Price (2025), the local (warm-started) sampler: a coarse estimate
//! `x0` is treated as a Gaussian measurement `x0 = x + N(0, sigma^2 I)` and Algorithm 1 runs on
//! the prior `p_x0(x) ∝ p(x) N(x0; x, sigma^2 I)` (see [`crate::prior::GaussianTilted`]), so it
//! samples `p(x | x0, y)`. The diffusion start is drawn from `p_x0` itself (it begins at
//! `x0 + sqrt(sigma^2 + t_max^2) z`); `start_at_x0` starts the chains at `x0` instead.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::annealed::{sample_with, AnnealedConfig};
use super::dps::DpsConfig;
use super::estimate::{estimate, Estimator};
use super::method::{Kernel, Method};
use super::{dps, Info, Monitor, Output, Problem, Silent, StepRule, WarmStartRun};
use crate::prior::{Denoiser, GaussianTilted};
use crate::rng::SampleStreams;
use crate::{Error, Result};

/// Where Algorithm 2 gets its warm start `x0` (`warm_start`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum WarmStart {
    /// `"dps"`: one DPS sample per posterior sample (as in the paper's image experiments;
    /// `warm_steps`, `zeta`).
    #[default]
    Dps,
    /// `"lasso"`: LASSO by FISTA (the `cs` default lambda), shared by all samples.
    Lasso,
    /// `"least-squares"`: minimum-norm least squares by CG, shared by all samples.
    LeastSquares,
    /// A path to a `[d]` (shared) or `[n, d]` (row `i` for sample `i`) `.npy` file.
    File(PathBuf),
}

impl From<String> for WarmStart {
    fn from(s: String) -> Self {
        match s.as_str() {
            "dps" => WarmStart::Dps,
            "lasso" => WarmStart::Lasso,
            "least-squares" => WarmStart::LeastSquares,
            _ => WarmStart::File(s.into()),
        }
    }
}

impl From<WarmStart> for String {
    fn from(w: WarmStart) -> Self {
        match w {
            WarmStart::Dps => "dps".into(),
            WarmStart::Lasso => "lasso".into(),
            WarmStart::LeastSquares => "least-squares".into(),
            WarmStart::File(p) => p.display().to_string(),
        }
    }
}

/// Algorithm 2 settings (`kind = "local"`): the warm start's, then Algorithm 1's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LocalConfig {
    /// Noise level `sigma` of the warm start, in the units of x (required).
    pub sigma: Option<f64>,
    /// Start the Langevin chains at `x0` rather than from diffusion on `p_x0`.
    pub start_at_x0: bool,
    pub warm_start: WarmStart,
    /// `warm_start = "dps"`: its steps (default 1000) and guidance scale (default 1).
    pub warm_steps: Option<usize>,
    pub zeta: Option<f64>,
    /// `[lo, hi]`: `x0` is clipped to it before Algorithm 2 (a DPS sample of an image prior on
    /// [-1, 1] may leave the data range).
    pub clip: Option<[f64; 2]>,
    /// The annealing (Algorithm 1) settings.
    #[serde(flatten)]
    pub annealed: AnnealedConfig,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            sigma: None,
            start_at_x0: false,
            warm_start: WarmStart::Dps,
            warm_steps: None,
            zeta: None,
            clip: None,
            annealed: AnnealedConfig::default(),
        }
    }
}

impl LocalConfig {
    /// `sigma`, which has no default.
    pub fn sigma(&self) -> Result<f64> {
        let sigma = self.sigma.ok_or_else(|| {
            Error::param(
                "sampler.sigma",
                "is required for sampler `local` (noise level of the warm start, units of x)",
            )
        })?;
        if !(sigma > 0.0) || !sigma.is_finite() {
            return Err(Error::param(
                "sampler.sigma",
                format!("must be > 0, got {sigma}"),
            ));
        }
        Ok(sigma)
    }

    /// The DPS run of `warm_start = "dps"`.
    pub fn warm_dps(&self) -> Result<Option<DpsConfig>> {
        if self.warm_start != WarmStart::Dps {
            if self.warm_steps.is_some() || self.zeta.is_some() {
                return Err(Error::param(
                    "sampler.warm_steps",
                    "`warm_steps` and `zeta` apply only to warm_start = \"dps\"",
                ));
            }
            return Ok(None);
        }
        let d = DpsConfig::default();
        let c = DpsConfig {
            steps: self.warm_steps.unwrap_or(d.steps),
            zeta: self.zeta.unwrap_or(d.zeta),
            ..d
        };
        c.validate()?;
        Ok(Some(c))
    }
}

impl Method for LocalConfig {
    fn validate(&self) -> Result<()> {
        self.sigma()?;
        if self.warm_start == WarmStart::File(PathBuf::new()) {
            return Err(Error::param("sampler.warm_start", "must not be empty"));
        }
        self.warm_dps()?;
        if let Some([lo, hi]) = self.clip {
            if !lo.is_finite() || !hi.is_finite() || !(lo < hi) {
                return Err(Error::param(
                    "sampler.clip",
                    format!("must be [lo, hi] with finite lo < hi, got [{lo}, {hi}]"),
                ));
            }
        }
        self.annealed.validate()
    }

    fn prepare(&self, problem: &Problem) -> Result<Box<dyn Kernel>> {
        problem.a_norm()?;
        let warm = match &self.warm_start {
            WarmStart::Dps if !problem.prior.differentiable() => {
                return Err(super::method::missing(
                    "local",
                    "gradients through the denoiser for its DPS warm start (a callable denoiser \
                     needs its vjp; or warm_start = \"lasso\")",
                ))
            }
            WarmStart::Dps => Warm::Dps(self.warm_dps()?.expect("warm_start = dps")),
            WarmStart::Lasso => Warm::Shared(estimate(
                problem,
                &Estimator::Lasso {
                    lambda: None,
                    iters: 500,
                },
            )?),
            WarmStart::LeastSquares => {
                Warm::Shared(estimate(problem, &Estimator::LeastSquares { iters: 500 })?)
            }
            WarmStart::File(p) => {
                let d = problem.prior.dim();
                let t = crate::io::read_array(p, "warm start x0")?;
                Warm::from_tensor(t, d, |other| Error::File {
                    path: p.clone(),
                    reason: format!("warm start must be [d] or [n, d] with d = {d}, got {other:?}"),
                })?
            }
        };
        Ok(Box::new(LocalKernel {
            cfg: self.clone(),
            warm,
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
        let dps = self.warm_dps().ok().flatten();
        Self {
            warm_steps: dps.as_ref().map(|c| c.steps).or(self.warm_steps),
            zeta: dps.as_ref().map(|c| c.zeta).or(self.zeta),
            annealed: self.annealed.filled(),
            ..self.clone()
        }
    }
}

impl LocalConfig {
    /// Algorithm 2 prepared with a warm start computed by the caller: `x0` is `[d]`/`[1, d]`
    /// (shared) or `[n, d]` (row `i` for sample `i`); replaces `warm_start`.
    pub fn with_x0(&self, x0: Tensor, d: usize) -> Result<Box<dyn Kernel>> {
        let x0 = x0.to_dtype(candle_core::DType::F64)?;
        let warm = Warm::from_tensor(x0, d, |other| {
            Error::shape(
                "warm start x0",
                format!("[d], [1, d] or [n, d] with d = {d}"),
                other,
            )
        })?;
        Ok(Box::new(LocalKernel {
            cfg: self.clone(),
            warm,
        }))
    }
}

/// Algorithm 2's warm start, resolved once per run.
enum Warm {
    /// One `x0` for every sample, `[1, d]` (LASSO, least squares, a `[d]` file).
    Shared(Tensor),
    /// Row `i` for sample `i`, `[n, d]` (a file).
    Rows(Tensor),
    /// A DPS run per sample.
    Dps(DpsConfig),
}

impl Warm {
    /// `x0` as `[d]`/`[1, d]` (shared) or `[n, d]` (one row per sample); any other shape is the
    /// error `bad(dims)`.
    fn from_tensor(x0: Tensor, d: usize, bad: impl FnOnce(&[usize]) -> Error) -> Result<Warm> {
        Ok(match x0.dims() {
            [dd] if *dd == d => Warm::Shared(x0.unsqueeze(0)?),
            [1, dd] if *dd == d => Warm::Shared(x0),
            [_, dd] if *dd == d => Warm::Rows(x0),
            other => return Err(bad(other)),
        })
    }

    /// The batch's `x0` and the evaluations per sample it cost.
    fn draw(&self, problem: &Problem, streams: &mut SampleStreams) -> Result<(Tensor, u64)> {
        Ok(match self {
            Warm::Dps(dc) => {
                let o = dps::sample(problem, dc, streams, &Silent)?;
                (o.samples, o.score_evals)
            }
            Warm::Shared(x0) => (x0.clone(), 0),
            Warm::Rows(t) => {
                let n = t.dims()[0];
                if let Some(bad) = streams.indices().iter().find(|&&i| i as usize >= n) {
                    return Err(Error::shape(
                        format!("warm start rows (sample {bad} needs row {bad})"),
                        format!("at least {} rows", bad + 1),
                        t.dims(),
                    ));
                }
                let idx: Vec<u32> = streams.indices().iter().map(|&i| i as u32).collect();
                let idx = Tensor::new(idx, &Device::Cpu)?;
                (t.index_select(&idx, 0)?, 0)
            }
        })
    }
}

struct LocalKernel {
    cfg: LocalConfig,
    warm: Warm,
}

impl Kernel for LocalKernel {
    /// The warm start (clipped to `clip`), then Algorithm 2 from it on the same streams.
    fn sample(
        &self,
        problem: &Problem,
        streams: &mut SampleStreams,
        mon: &dyn Monitor,
    ) -> Result<Output> {
        let t = std::time::Instant::now();
        let (x0, warm_evals) = self.warm.draw(problem, streams)?;
        let (x0, unclipped) = match self.cfg.clip {
            Some([lo, hi]) => (x0.clamp(lo, hi)?, Some(x0)),
            None => (x0, None),
        };
        let wall_s = t.elapsed().as_secs_f64();
        let mut o = sample(problem, &x0, &self.cfg, streams, mon)?;
        o.score_evals += warm_evals;
        o.warm_start = Some(WarmStartRun {
            x0,
            unclipped,
            score_evals: warm_evals,
            wall_s,
        });
        Ok(o)
    }
}

/// Samples `p(x | x0, y)`; `x0` is `[1, d]` (shared) or `[B, d]` (one per sample, e.g. DPS outputs).
pub fn sample(
    problem: &Problem,
    x0: &Tensor,
    cfg: &LocalConfig,
    streams: &mut SampleStreams,
    mon: &dyn Monitor,
) -> Result<Output> {
    sample_tilted(
        problem,
        x0,
        cfg.sigma()?,
        cfg.start_at_x0,
        &cfg.annealed,
        streams,
        mon,
    )
}

/// Algorithm 1 on the prior tilted by the Gaussian measurement `x0 = x + N(0, sigma^2 I)`.
pub(crate) fn sample_tilted(
    problem: &Problem,
    x0: &Tensor,
    sigma: f64,
    start_at_x0: bool,
    annealed: &AnnealedConfig,
    streams: &mut SampleStreams,
    mon: &dyn Monitor,
) -> Result<Output> {
    let tilted = GaussianTilted::new(problem.prior, x0.clone(), sigma)?;
    let rows = x0.dims()[0];
    if rows != 1 && rows != streams.len() {
        return Err(Error::shape(
            "warm start x0",
            format!("[1, d] or [{}, d]", streams.len()),
            x0.dims(),
        ));
    }
    let a = problem.a_norm()?;
    let l = match annealed.step.rule(super::annealed::H_REL)? {
        StepRule::Fixed { .. } => 0.0,
        _ => {
            let s_sigma = super::score_level(problem.prior, annealed.score.score_sigma)?;
            super::prior_lipschitz_at(problem.prior, annealed.score.l_prior, s_sigma)?
                + 1.0 / (sigma * sigma)
        }
    };
    let local = problem.with_prior(&tilted as &dyn Denoiser);
    let start = if start_at_x0 { Some(x0) } else { None };
    sample_with(&local, None, annealed, a, l, start, streams, mon, "local")
}
