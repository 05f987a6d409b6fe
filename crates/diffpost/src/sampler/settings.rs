//! The key groups several methods share, declared once and flattened into the methods' configs
//! (`#[serde(flatten)]`): the step rule ([`Step`]: `h_rel` | `h`), where a chain starts
//! ([`Start`]: `init` and the diffusion start's `init_steps`, `init_method`, `sigma_max`,
//! `sigma_min`, `rho`), the prior score's level ([`ScoreLevel`]: `l_prior`, `score_sigma`) and
//! the admissible schedule's constants ([`AdmissibleKeys`]).
//!
//! A method's config *is* its `[sampler]` table: the file's keys are the config's fields. Keys
//! whose default depends on another key are `Option`s here, resolved by the group's method
//! ([`Step::rule`], [`Start::resolve`]) and written back by `filled` for `summary.json`'s `params`
//! (so `params` lists every value used and is itself a valid `[sampler]` table).
//!
//! Shared names (docs/algorithms.md, "Settings vocabulary"): `stages` (number of annealing
//! levels), `steps_per_stage` (Langevin steps per level), `h_rel` (step relative to the drift's
//! stiffness).

use serde::{Deserialize, Serialize};

use super::diffusion::{DiffusionConfig, Solver};
use super::StepRule;
use crate::schedule::AdmissibleParams;
use crate::{Error, Result};

/// `h_rel` or `h` (not both): the Langevin step, relative to the drift's stiffness
/// (`h = h_rel / (L_prior + ||A||^2 / eta^2)`, docs/algorithms.md "Step rule") or fixed.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Step {
    pub h_rel: Option<f64>,
    pub h: Option<f64>,
}

impl Step {
    /// `h = h_rel / (L_prior + ||A||^2 / eta^2)`.
    pub fn relative(h_rel: f64) -> Self {
        Self {
            h_rel: Some(h_rel),
            h: None,
        }
    }

    /// A fixed step `h` (units of x^2).
    pub fn fixed(h: f64) -> Self {
        Self {
            h_rel: None,
            h: Some(h),
        }
    }

    /// The rule, `h_rel` defaulting to `default_h_rel`; both set is an error.
    pub fn rule(&self, default_h_rel: f64) -> Result<StepRule> {
        let rule = match (self.h_rel, self.h) {
            (Some(_), Some(_)) => {
                return Err(Error::param(
                    "sampler.h",
                    "set either `h_rel` or `h`, not both",
                ))
            }
            (_, Some(h)) => StepRule::Fixed { h },
            (h_rel, None) => StepRule::Relative {
                h_rel: h_rel.unwrap_or(default_h_rel),
            },
        };
        rule.validate()?;
        Ok(rule)
    }

    /// `h_rel` written out when neither key is set.
    pub fn filled(&self, default_h_rel: f64) -> Self {
        match (self.h_rel, self.h) {
            (None, None) => Self::relative(default_h_rel),
            _ => *self,
        }
    }
}

/// `init`: where a Langevin chain starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StartKind {
    /// A prior sample drawn by reverse diffusion (counts its score evaluations).
    Diffusion,
    /// Standard normal noise `N(0, I)` in the units of x.
    Noise,
    /// An exact prior sample (priors with exact draws; no score evaluations).
    ExactPrior,
}

/// Where a chain starts: `init`, and for `init = "diffusion"` the diffusion start's settings
/// (`init_steps = 500`, `init_method = "sde"`, `sigma_max`, `sigma_min`, `rho = 7`; see
/// [`DiffusionConfig`]). `init` unset means the method's default, or `"diffusion"` when a key of
/// the diffusion start is set.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Start {
    pub init: Option<StartKind>,
    pub init_steps: Option<usize>,
    pub init_method: Option<Solver>,
    pub sigma_max: Option<f64>,
    pub sigma_min: Option<f64>,
    pub rho: Option<f64>,
}

/// A chain's start, resolved: what [`super::ula::initialise`] draws.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Init {
    Diffusion(DiffusionConfig),
    Noise,
    ExactPrior,
}

impl Start {
    /// The diffusion start with these settings.
    pub fn diffusion(c: &DiffusionConfig) -> Self {
        Self {
            init: Some(StartKind::Diffusion),
            init_steps: Some(c.steps),
            init_method: Some(c.init_method),
            sigma_max: c.sigma_max,
            sigma_min: c.sigma_min,
            rho: Some(c.rho),
        }
    }

    /// `init = kind` with nothing else set.
    pub fn kind(kind: StartKind) -> Self {
        Self {
            init: Some(kind),
            ..Default::default()
        }
    }

    fn diffusion_keys(&self) -> [(&'static str, bool); 5] {
        [
            ("init_steps", self.init_steps.is_some()),
            ("init_method", self.init_method.is_some()),
            ("sigma_max", self.sigma_max.is_some()),
            ("sigma_min", self.sigma_min.is_some()),
            ("rho", self.rho.is_some()),
        ]
    }

    /// `init`, or `auto` when unset (`"diffusion"` when a diffusion key is set).
    pub fn kind_or(&self, auto: StartKind) -> StartKind {
        match self.init {
            Some(k) => k,
            None if self.diffusion_keys().iter().any(|(_, s)| *s) => StartKind::Diffusion,
            None => auto,
        }
    }

    /// The start, `auto` standing for an unset `init`; the diffusion keys are errors with any
    /// other start.
    pub(crate) fn resolve(&self, auto: StartKind) -> Result<Init> {
        match self.kind_or(auto) {
            StartKind::Diffusion => {
                let d = DiffusionConfig::default();
                let c = DiffusionConfig {
                    init_method: self.init_method.unwrap_or(d.init_method),
                    steps: self.init_steps.unwrap_or(d.steps),
                    sigma_max: self.sigma_max,
                    sigma_min: self.sigma_min,
                    rho: self.rho.unwrap_or(d.rho),
                };
                c.validate("init_steps")?;
                Ok(Init::Diffusion(c))
            }
            other => {
                if let Some((k, _)) = self.diffusion_keys().iter().find(|(_, s)| *s) {
                    return Err(Error::param(
                        format!("sampler.{k}"),
                        "applies only to init = \"diffusion\"",
                    ));
                }
                Ok(match other {
                    StartKind::Noise => Init::Noise,
                    _ => Init::ExactPrior,
                })
            }
        }
    }

    /// Every default of the resolved start written out (`summary.json` `params`).
    pub fn filled(&self, auto: StartKind) -> Self {
        match self.resolve(auto) {
            Ok(Init::Diffusion(c)) => Self::diffusion(&c),
            Ok(Init::Noise) => Self::kind(StartKind::Noise),
            Ok(Init::ExactPrior) => Self::kind(StartKind::ExactPrior),
            Err(_) => *self,
        }
    }
}

/// The prior score as the Langevin steps use it: `l_prior` overrides the prior's Lipschitz
/// constant in the step rule; `score_sigma` is the noise level of the score (default the prior's
/// `sigma_min`, i.e. exact for analytic priors; see [`super::score_level`]).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ScoreLevel {
    pub l_prior: Option<f64>,
    pub score_sigma: Option<f64>,
}

/// `schedule`: the eta levels of the annealed samplers (Algorithms 1-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EtaScheduleKind {
    /// `stages` geometric levels from `eta_max` to `eta` (`eta_i <= sqrt(2) eta_{i+1}` enforced).
    #[default]
    Geometric,
    /// The paper's Definition D.1 construction (its number of stages replaces `stages`).
    Admissible,
}

/// Definition D.1's constants (`schedule = "admissible"` only; defaults in
/// [`AdmissibleParams`]).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AdmissibleKeys {
    pub lambda: Option<f64>,
    pub eps: Option<f64>,
    pub alpha: Option<f64>,
    pub c: Option<f64>,
    pub r: Option<f64>,
    pub t: Option<f64>,
    pub max_stages: Option<usize>,
}

impl AdmissibleKeys {
    fn set(&self) -> [(&'static str, bool); 7] {
        [
            ("lambda", self.lambda.is_some()),
            ("eps", self.eps.is_some()),
            ("alpha", self.alpha.is_some()),
            ("c", self.c.is_some()),
            ("r", self.r.is_some()),
            ("t", self.t.is_some()),
            ("max_stages", self.max_stages.is_some()),
        ]
    }

    /// The constants, defaults filled in.
    pub fn params(&self) -> AdmissibleParams {
        let p = AdmissibleParams::default();
        AdmissibleParams {
            lambda: self.lambda.unwrap_or(p.lambda),
            eps: self.eps.unwrap_or(p.eps),
            alpha: self.alpha.unwrap_or(p.alpha),
            c: self.c.unwrap_or(p.c),
            r: self.r.unwrap_or(p.r),
            t: self.t.unwrap_or(p.t),
            max_stages: self.max_stages.unwrap_or(p.max_stages),
        }
    }

    /// Errors when a constant is set but the schedule is not admissible.
    pub fn check(&self, kind: EtaScheduleKind) -> Result<()> {
        if kind == EtaScheduleKind::Geometric {
            if let Some((k, _)) = self.set().iter().find(|(_, s)| *s) {
                return Err(Error::param(
                    format!("sampler.{k}"),
                    "applies only to schedule = \"admissible\"",
                ));
            }
        }
        Ok(())
    }

    /// Every constant written out for the admissible schedule.
    pub fn filled(&self, kind: EtaScheduleKind) -> Self {
        match kind {
            EtaScheduleKind::Geometric => *self,
            EtaScheduleKind::Admissible => {
                let p = self.params();
                Self {
                    lambda: Some(p.lambda),
                    eps: Some(p.eps),
                    alpha: Some(p.alpha),
                    c: Some(p.c),
                    r: Some(p.r),
                    t: Some(p.t),
                    max_stages: Some(p.max_stages),
                }
            }
        }
    }
}

/// Settings of a method that has none (`exact`): any key is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct NoSettings {}
