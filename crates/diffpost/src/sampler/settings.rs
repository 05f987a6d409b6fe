//! The flat `[sampler]` vocabulary: one set of key names for every method, the methods' typed
//! configs deserialised from it (validated on construction) and serialised back to it, so a run's
//! `summary.json` `params` is itself a valid `[sampler]` table with every default filled in.
//!
//! Shared names (docs/algorithms.md, "Settings vocabulary"): `stages` (number of annealing levels),
//! `steps_per_stage` (Langevin steps per level), `h_rel` (step relative to the drift's stiffness).
//! The older per-method names `levels`/`annealing_steps`, `steps_per_level`/`langevin_steps` and
//! `lr_rel` are accepted as deprecated aliases ([`deprecated_keys`]).

use super::integrator::Integrator;
use serde::{Deserialize, Serialize};

use super::annealed::{AnnealedConfig, EtaSchedule};
use super::cs::{CsConfig, Estimator};
use super::diffusion::{DiffusionConfig, Method};
use super::local::LocalConfig;
use super::mala::MalaConfig;
use super::ula::{Init, UlaConfig};
use super::StepRule;
use crate::schedule::AdmissibleParams;
use crate::{Error, Result};

/// `init`: where a Langevin chain starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InitKind {
    #[default]
    Diffusion,
    Noise,
    ExactPrior,
}

/// `schedule`: the eta levels of the annealed samplers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    #[default]
    Geometric,
    Admissible,
}

/// `estimator` of Algorithm 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EstimatorKind {
    #[default]
    Lasso,
    LeastSquares,
}

/// `h_rel` or `h` (not both); `h_rel` defaults to `default`.
pub(crate) fn step_rule(h_rel: Option<f64>, h: Option<f64>, default: f64) -> Result<StepRule> {
    let rule = match (h_rel, h) {
        (Some(_), Some(_)) => {
            return Err(Error::param(
                "sampler.h",
                "set either `h_rel` or `h`, not both",
            ))
        }
        (_, Some(h)) => StepRule::Fixed { h },
        (h_rel, None) => StepRule::Relative {
            h_rel: h_rel.unwrap_or(default),
        },
    };
    rule.validate()?;
    Ok(rule)
}

fn split_step(s: StepRule) -> (Option<f64>, Option<f64>) {
    match s {
        StepRule::Relative { h_rel } => (Some(h_rel), None),
        StepRule::Fixed { h } => (None, Some(h)),
    }
}

/// The flat keys of a chain's start (`init`, and for `init = "diffusion"` its sampler).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct InitKeys {
    pub init: InitKind,
    pub init_steps: Option<usize>,
    pub init_method: Option<Method>,
    pub sigma_max: Option<f64>,
    pub sigma_min: Option<f64>,
    pub rho: Option<f64>,
}

impl InitKeys {
    pub fn build(&self) -> Result<Init> {
        match self.init {
            InitKind::Diffusion => {
                let d = DiffusionConfig::default();
                let c = DiffusionConfig {
                    method: self.init_method.unwrap_or(d.method),
                    steps: self.init_steps.unwrap_or(d.steps),
                    sigma_max: self.sigma_max,
                    sigma_min: self.sigma_min,
                    rho: self.rho.unwrap_or(d.rho),
                };
                c.validate("init_steps")?;
                Ok(Init::Diffusion(c))
            }
            other => {
                let set = [
                    ("init_steps", self.init_steps.is_some()),
                    ("init_method", self.init_method.is_some()),
                    ("sigma_max", self.sigma_max.is_some()),
                    ("sigma_min", self.sigma_min.is_some()),
                    ("rho", self.rho.is_some()),
                ];
                if let Some((k, _)) = set.iter().find(|(_, s)| *s) {
                    return Err(Error::param(
                        format!("sampler.{k}"),
                        "applies only to init = \"diffusion\"",
                    ));
                }
                Ok(match other {
                    InitKind::Noise => Init::Noise,
                    _ => Init::ExactPrior,
                })
            }
        }
    }
    pub fn of(init: &Init) -> Self {
        match init {
            Init::Diffusion(c) => InitKeys {
                init: InitKind::Diffusion,
                init_steps: Some(c.steps),
                init_method: Some(c.method),
                sigma_max: c.sigma_max,
                sigma_min: c.sigma_min,
                rho: Some(c.rho),
            },
            Init::Noise => InitKeys {
                init: InitKind::Noise,
                ..Default::default()
            },
            Init::ExactPrior => InitKeys {
                init: InitKind::ExactPrior,
                ..Default::default()
            },
        }
    }
}

/// Declares a flat settings struct holding Algorithm 1's keys plus `extra` ones (Algorithms 2 and 3
/// embed Algorithm 1; serde's `flatten` cannot be combined with `deny_unknown_fields`).
macro_rules! annealed_keys {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            $($(#[$fm])* pub $f: $t,)*
            /// `N`, the number of eta levels.
            pub stages: usize,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub eta_max: Option<f64>,
            pub schedule: ScheduleKind,
            /// Definition D.1 parameters (`schedule = "admissible"` only; in `cs`, `lambda` is the
            /// LASSO weight).
            #[serde(skip_serializing_if = "Option::is_none")]
            pub lambda: Option<f64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub eps: Option<f64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub alpha: Option<f64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub c: Option<f64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub r: Option<f64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub t: Option<f64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub max_stages: Option<usize>,
            pub steps_per_stage: usize,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub h_rel: Option<f64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub h: Option<f64>,
            pub init: InitKind,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub init_steps: Option<usize>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub init_method: Option<Method>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub sigma_max: Option<f64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub sigma_min: Option<f64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub rho: Option<f64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub l_prior: Option<f64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub score_sigma: Option<f64>,
            pub final_denoise: bool,
            /// "euler" | "exact-likelihood".
            pub integrator: Integrator,
        }

        impl $name {
            /// Algorithm 1's keys from `a`, the extra ones as given.
            #[allow(clippy::too_many_arguments, dead_code)]
            fn from_parts(a: &AnnealedSettings, $($f: $t),*) -> Self {
                Self {
                    $($f,)*
                    stages: a.stages,
                    eta_max: a.eta_max,
                    schedule: a.schedule,
                    lambda: a.lambda,
                    eps: a.eps,
                    alpha: a.alpha,
                    c: a.c,
                    r: a.r,
                    t: a.t,
                    max_stages: a.max_stages,
                    steps_per_stage: a.steps_per_stage,
                    h_rel: a.h_rel,
                    h: a.h,
                    init: a.init,
                    init_steps: a.init_steps,
                    init_method: a.init_method,
                    sigma_max: a.sigma_max,
                    sigma_min: a.sigma_min,
                    rho: a.rho,
                    l_prior: a.l_prior,
                    score_sigma: a.score_sigma,
                    final_denoise: a.final_denoise,
                    integrator: a.integrator,
                }
            }

            fn annealed_part(&self, schedule_lambda: Option<f64>) -> Result<AnnealedConfig> {
                let schedule = match self.schedule {
                    ScheduleKind::Geometric => {
                        let set = [
                            ("lambda", schedule_lambda.is_some()),
                            ("eps", self.eps.is_some()),
                            ("alpha", self.alpha.is_some()),
                            ("c", self.c.is_some()),
                            ("r", self.r.is_some()),
                            ("t", self.t.is_some()),
                            ("max_stages", self.max_stages.is_some()),
                        ];
                        if let Some((k, _)) = set.iter().find(|(_, s)| *s) {
                            return Err(Error::param(
                                format!("sampler.{k}"),
                                "applies only to schedule = \"admissible\"",
                            ));
                        }
                        EtaSchedule::Geometric
                    }
                    ScheduleKind::Admissible => {
                        let p = AdmissibleParams::default();
                        EtaSchedule::Admissible(AdmissibleParams {
                            lambda: schedule_lambda.unwrap_or(p.lambda),
                            eps: self.eps.unwrap_or(p.eps),
                            alpha: self.alpha.unwrap_or(p.alpha),
                            c: self.c.unwrap_or(p.c),
                            r: self.r.unwrap_or(p.r),
                            t: self.t.unwrap_or(p.t),
                            max_stages: self.max_stages.unwrap_or(p.max_stages),
                        })
                    }
                };
                let cfg = AnnealedConfig {
                    stages: self.stages,
                    eta_max: self.eta_max,
                    schedule,
                    steps_per_stage: self.steps_per_stage,
                    step: step_rule(self.h_rel, self.h, 0.2)?,
                    init: InitKeys {
                        init: self.init,
                        init_steps: self.init_steps,
                        init_method: self.init_method,
                        sigma_max: self.sigma_max,
                        sigma_min: self.sigma_min,
                        rho: self.rho,
                    }
                    .build()?,
                    l_prior: self.l_prior,
                    score_sigma: self.score_sigma,
                    final_denoise: self.final_denoise,
                    integrator: self.integrator,
                };
                cfg.validate()?;
                Ok(cfg)
            }

            fn set_annealed_part(&mut self, c: &AnnealedConfig, with_lambda: bool) {
                self.stages = c.stages;
                self.eta_max = c.eta_max;
                match &c.schedule {
                    EtaSchedule::Geometric => self.schedule = ScheduleKind::Geometric,
                    EtaSchedule::Admissible(p) => {
                        self.schedule = ScheduleKind::Admissible;
                        if with_lambda {
                            self.lambda = Some(p.lambda);
                        }
                        self.eps = Some(p.eps);
                        self.alpha = Some(p.alpha);
                        self.c = Some(p.c);
                        self.r = Some(p.r);
                        self.t = Some(p.t);
                        self.max_stages = Some(p.max_stages);
                    }
                }
                self.steps_per_stage = c.steps_per_stage;
                (self.h_rel, self.h) = split_step(c.step);
                let i = InitKeys::of(&c.init);
                self.init = i.init;
                self.init_steps = i.init_steps;
                self.init_method = i.init_method;
                self.sigma_max = i.sigma_max;
                self.sigma_min = i.sigma_min;
                self.rho = i.rho;
                self.l_prior = c.l_prior;
                self.score_sigma = c.score_sigma;
                self.final_denoise = c.final_denoise;
                self.integrator = c.integrator;
            }
        }
    };
}

annealed_keys! {
    /// `kind = "annealed"` (Algorithm 1).
    AnnealedSettings {}
}

annealed_keys! {
    /// `kind = "local"` (Algorithm 2): Algorithm 1's keys plus the warm start's.
    LocalSettings {
        /// Noise level of the warm start (required).
        #[serde(skip_serializing_if = "Option::is_none")]
        sigma: Option<f64>,
        start_at_x0: bool,
        /// "dps" | "lasso" | "least-squares" | a path to a `[d]`/`[n, d]` `.npy`.
        warm_start: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        warm_steps: Option<usize>,
        #[serde(skip_serializing_if = "Option::is_none")]
        zeta: Option<f64>,
        /// `[lo, hi]`: the warm start is clipped to it before Algorithm 2 (images on [-1, 1]).
        #[serde(skip_serializing_if = "Option::is_none")]
        clip: Option<[f64; 2]>,
    }
}

annealed_keys! {
    /// `kind = "cs"` (Algorithm 3): Algorithm 1's keys plus the estimator's.
    CsSettings {
        estimator: EstimatorKind,
        estimator_iters: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        radius: Option<f64>,
        delta: f64,
        start_at_x0: bool,
    }
}

impl Default for AnnealedSettings {
    fn default() -> Self {
        let mut s: AnnealedSettings = AnnealedConfig::default().into();
        // Keys whose default depends on another key stay unset (filled in on conversion).
        s.h_rel = None;
        s.init_steps = None;
        s.init_method = None;
        s.sigma_max = None;
        s.sigma_min = None;
        s.rho = None;
        s
    }
}

impl From<AnnealedConfig> for AnnealedSettings {
    fn from(c: AnnealedConfig) -> Self {
        let mut s = AnnealedSettings {
            stages: 0,
            eta_max: None,
            schedule: ScheduleKind::Geometric,
            lambda: None,
            eps: None,
            alpha: None,
            c: None,
            r: None,
            t: None,
            max_stages: None,
            steps_per_stage: 0,
            h_rel: None,
            h: None,
            init: InitKind::Diffusion,
            init_steps: None,
            init_method: None,
            sigma_max: None,
            sigma_min: None,
            rho: None,
            l_prior: None,
            score_sigma: None,
            final_denoise: false,
            integrator: Integrator::Euler,
        };
        s.set_annealed_part(&c, true);
        s
    }
}

impl TryFrom<AnnealedSettings> for AnnealedConfig {
    type Error = Error;
    fn try_from(s: AnnealedSettings) -> Result<Self> {
        s.annealed_part(s.lambda)
    }
}

/// Where Algorithm 2 gets its warm start `x0`.
#[derive(Debug, Clone, PartialEq)]
pub enum WarmStart {
    /// One DPS sample per posterior sample (as in the paper's image experiments).
    Dps(super::dps::DpsConfig),
    /// LASSO by FISTA (the `cs` default lambda), shared by all samples.
    Lasso,
    /// Minimum-norm least squares by CG, shared by all samples.
    LeastSquares,
    /// A `[d]` (shared) or `[n, d]` (row `i` for sample `i`) `.npy` file.
    File(std::path::PathBuf),
}

/// `kind = "local"`: Algorithm 2 and its warm start.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalSpec {
    pub local: LocalConfig,
    pub warm_start: WarmStart,
    /// `[lo, hi]`: `x0` is clipped to it before Algorithm 2 (a DPS sample of an image prior on
    /// [-1, 1] may leave the data range).
    pub clip: Option<[f64; 2]>,
}

impl Default for LocalSettings {
    fn default() -> Self {
        LocalSettings::from_parts(
            &AnnealedSettings::default(),
            None,
            false,
            "dps".into(),
            None,
            None,
            None,
        )
    }
}

impl TryFrom<LocalSettings> for LocalSpec {
    type Error = Error;
    fn try_from(s: LocalSettings) -> Result<Self> {
        let sigma = s.sigma.ok_or_else(|| {
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
        let warm_start = match s.warm_start.as_str() {
            "dps" => {
                let d = super::dps::DpsConfig::default();
                let c = super::dps::DpsConfig {
                    steps: s.warm_steps.unwrap_or(d.steps),
                    zeta: s.zeta.unwrap_or(d.zeta),
                    ..d
                };
                c.validate()?;
                WarmStart::Dps(c)
            }
            other => {
                if s.warm_steps.is_some() || s.zeta.is_some() {
                    return Err(Error::param(
                        "sampler.warm_steps",
                        "`warm_steps` and `zeta` apply only to warm_start = \"dps\"",
                    ));
                }
                match other {
                    "lasso" => WarmStart::Lasso,
                    "least-squares" => WarmStart::LeastSquares,
                    "" => return Err(Error::param("sampler.warm_start", "must not be empty")),
                    path => WarmStart::File(path.into()),
                }
            }
        };
        if let Some([lo, hi]) = s.clip {
            if !lo.is_finite() || !hi.is_finite() || !(lo < hi) {
                return Err(Error::param(
                    "sampler.clip",
                    format!("must be [lo, hi] with finite lo < hi, got [{lo}, {hi}]"),
                ));
            }
        }
        Ok(LocalSpec {
            clip: s.clip,
            local: LocalConfig {
                sigma,
                start_at_x0: s.start_at_x0,
                annealed: s.annealed_part(s.lambda)?,
            },
            warm_start,
        })
    }
}

impl From<LocalSpec> for LocalSettings {
    fn from(l: LocalSpec) -> Self {
        let mut s = LocalSettings {
            sigma: Some(l.local.sigma),
            start_at_x0: l.local.start_at_x0,
            clip: l.clip,
            ..Default::default()
        };
        s.set_annealed_part(&l.local.annealed, true);
        match l.warm_start {
            WarmStart::Dps(c) => {
                s.warm_start = "dps".into();
                s.warm_steps = Some(c.steps);
                s.zeta = Some(c.zeta);
            }
            WarmStart::Lasso => s.warm_start = "lasso".into(),
            WarmStart::LeastSquares => s.warm_start = "least-squares".into(),
            WarmStart::File(p) => s.warm_start = p.display().to_string(),
        }
        s
    }
}

impl Default for CsSettings {
    fn default() -> Self {
        CsSettings::from_parts(
            &AnnealedSettings::default(),
            EstimatorKind::Lasso,
            500,
            None,
            1.0,
            false,
        )
    }
}

impl TryFrom<CsSettings> for CsConfig {
    type Error = Error;
    fn try_from(s: CsSettings) -> Result<Self> {
        let estimator = match s.estimator {
            EstimatorKind::Lasso => Estimator::Lasso {
                lambda: s.lambda,
                iters: s.estimator_iters,
            },
            EstimatorKind::LeastSquares => {
                if s.lambda.is_some() {
                    return Err(Error::param(
                        "sampler.lambda",
                        "is the LASSO weight: applies only to estimator = \"lasso\"",
                    ));
                }
                Estimator::LeastSquares {
                    iters: s.estimator_iters,
                }
            }
        };
        let cfg = CsConfig {
            estimator,
            radius: s.radius,
            delta: s.delta,
            local: LocalConfig {
                sigma: 1.0,
                start_at_x0: s.start_at_x0,
                annealed: s.annealed_part(None)?,
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

impl From<CsConfig> for CsSettings {
    fn from(c: CsConfig) -> Self {
        let mut s = CsSettings {
            radius: c.radius,
            delta: c.delta,
            start_at_x0: c.local.start_at_x0,
            ..Default::default()
        };
        s.set_annealed_part(&c.local.annealed, false);
        match c.estimator {
            Estimator::Lasso { lambda, iters } => {
                s.estimator = EstimatorKind::Lasso;
                s.lambda = lambda;
                s.estimator_iters = iters;
            }
            Estimator::LeastSquares { iters } => {
                s.estimator = EstimatorKind::LeastSquares;
                s.estimator_iters = iters;
            }
        }
        s
    }
}

/// Declares the flat settings of a single Langevin chain (ULA, MALA): `steps`, the step rule,
/// the start and `l_prior`, plus `extra` keys.
macro_rules! chain_keys {
    ($(#[$m:meta])* $name:ident { $($(#[$fm:meta])* $f:ident : $t:ty),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            pub steps: usize,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub h_rel: Option<f64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub h: Option<f64>,
            pub init: InitKind,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub init_steps: Option<usize>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub init_method: Option<Method>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub sigma_max: Option<f64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub sigma_min: Option<f64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub rho: Option<f64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            pub l_prior: Option<f64>,
            $($(#[$fm])* pub $f: $t,)*
        }

        impl $name {
            fn init_keys(&self) -> InitKeys {
                InitKeys {
                    init: self.init,
                    init_steps: self.init_steps,
                    init_method: self.init_method,
                    sigma_max: self.sigma_max,
                    sigma_min: self.sigma_min,
                    rho: self.rho,
                }
            }

            /// `steps`, step rule, start and `l_prior` of a config; the extra keys as given.
            fn from_chain(steps: usize, step: StepRule, init: &Init, l_prior: Option<f64>, $($f: $t),*) -> Self {
                let (h_rel, h) = split_step(step);
                let i = InitKeys::of(init);
                Self {
                    steps,
                    h_rel,
                    h,
                    init: i.init,
                    init_steps: i.init_steps,
                    init_method: i.init_method,
                    sigma_max: i.sigma_max,
                    sigma_min: i.sigma_min,
                    rho: i.rho,
                    l_prior,
                    $($f,)*
                }
            }

            /// Defaults: keys whose default depends on another key stay unset.
            fn unset_dependent(mut self) -> Self {
                self.h_rel = None;
                self.init_steps = None;
                self.init_method = None;
                self.sigma_max = None;
                self.sigma_min = None;
                self.rho = None;
                self
            }
        }
    };
}

chain_keys! {
    /// `kind = "ula"`.
    UlaSettings {
        #[serde(skip_serializing_if = "Option::is_none")]
        score_sigma: Option<f64>,
        /// "euler" | "exact-likelihood".
        integrator: Integrator,
    }
}

chain_keys! {
    /// `kind = "mala"`: no `score_sigma` (MALA needs the exact log-density).
    MalaSettings {}
}

impl Default for UlaSettings {
    fn default() -> Self {
        UlaSettings::from(UlaConfig::default()).unset_dependent()
    }
}

impl From<UlaConfig> for UlaSettings {
    fn from(c: UlaConfig) -> Self {
        UlaSettings::from_chain(
            c.steps,
            c.step,
            &c.init,
            c.l_prior,
            c.score_sigma,
            c.integrator,
        )
    }
}

impl TryFrom<UlaSettings> for UlaConfig {
    type Error = Error;
    fn try_from(s: UlaSettings) -> Result<Self> {
        let c = UlaConfig {
            steps: s.steps,
            step: step_rule(s.h_rel, s.h, 0.2)?,
            init: s.init_keys().build()?,
            l_prior: s.l_prior,
            score_sigma: s.score_sigma,
            integrator: s.integrator,
        };
        c.validate()?;
        Ok(c)
    }
}

impl Default for MalaSettings {
    fn default() -> Self {
        MalaSettings::from(MalaConfig::default()).unset_dependent()
    }
}

impl From<MalaConfig> for MalaSettings {
    fn from(c: MalaConfig) -> Self {
        MalaSettings::from_chain(c.steps, c.step, &c.init, c.l_prior)
    }
}

impl TryFrom<MalaSettings> for MalaConfig {
    type Error = Error;
    fn try_from(s: MalaSettings) -> Result<Self> {
        let c = MalaConfig {
            steps: s.steps,
            step: step_rule(s.h_rel, s.h, 0.5)?,
            init: s.init_keys().build()?,
            l_prior: s.l_prior,
        };
        c.validate()?;
        Ok(c)
    }
}

/// Settings of a method that has none (`exact`): any key is an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoSettings {}

/// Deprecated key names still accepted, per sampler kind: `(old, new)`.
pub const DEPRECATED: &[(&str, &str, &str)] = &[
    ("ald", "levels", "stages"),
    ("ald", "steps_per_level", "steps_per_stage"),
    ("daps", "annealing_steps", "stages"),
    ("daps", "langevin_steps", "steps_per_stage"),
    ("daps", "lr_rel", "h_rel"),
];

/// The deprecated key names used in a `[sampler]` table of `kind`, as `(old, new)` pairs.
pub fn deprecated_keys<'a>(
    kind: &str,
    keys: impl IntoIterator<Item = &'a str>,
) -> Vec<(&'static str, &'static str)> {
    let keys: Vec<&str> = keys.into_iter().collect();
    DEPRECATED
        .iter()
        .filter(|(k, old, _)| *k == kind && keys.contains(old))
        .map(|(_, old, new)| (*old, *new))
        .collect()
}
