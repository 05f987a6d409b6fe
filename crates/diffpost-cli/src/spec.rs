//! The `[sampler]` table: typed per-kind settings with documented defaults; keys that do not apply
//! to the chosen kind are errors.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use candle_core::Tensor;
use diffpost::rng::SampleStreams;
use diffpost::sampler::annealed::{AnnealedConfig, EtaSchedule};
use diffpost::sampler::cs::{CsConfig, Estimator};
use diffpost::sampler::diffusion::{DiffusionConfig, Method};
use diffpost::sampler::local::LocalConfig;
use diffpost::sampler::ula::{Init, UlaConfig};
use diffpost::sampler::{
    ald, annealed, cs, daps, diffusion, dps, exact, local, mala, ula, Monitor, Output, Problem,
    StepRule,
};
use diffpost::schedule::AdmissibleParams;
use serde::Serialize;

use crate::config::Loaded;

/// Where Algorithm 2 gets its warm start.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WarmStart {
    /// One DPS sample per posterior sample (as in the paper's image experiments).
    Dps(dps::DpsConfig),
    /// A `[d]` or `[n, d]` `.npy` file.
    File(PathBuf),
    Lasso,
    LeastSquares,
}

/// A fully resolved sampler.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Spec {
    Annealed(AnnealedConfig),
    Local {
        local: LocalConfig,
        warm_start: WarmStart,
    },
    Cs(CsConfig),
    Ula(UlaConfig),
    Mala(mala::MalaConfig),
    Dps(dps::DpsConfig),
    Daps(daps::DapsConfig),
    Ald(ald::AldConfig),
    Exact,
    Prior(DiffusionConfig),
}

pub const KINDS: &str = "annealed | local | cs | ula | mala | dps | daps | ald | exact | prior";

struct Table<'a> {
    t: &'a toml::Table,
    kind: String,
    used: Vec<&'static str>,
}

impl<'a> Table<'a> {
    fn get<T: serde::de::DeserializeOwned>(&mut self, key: &'static str) -> Result<Option<T>> {
        self.used.push(key);
        match self.t.get(key) {
            None => Ok(None),
            Some(v) => v
                .clone()
                .try_into()
                .map(Some)
                .map_err(|e| anyhow!("[sampler] field `{key}`: {e}")),
        }
    }
    fn or<T: serde::de::DeserializeOwned>(&mut self, key: &'static str, default: T) -> Result<T> {
        Ok(self.get(key)?.unwrap_or(default))
    }
    fn finish(self) -> Result<()> {
        for k in self.t.keys() {
            if k != "kind" && !self.used.contains(&k.as_str()) {
                bail!("[sampler] field `{k}` is not a setting of sampler `{}` (see the config reference in the README)", self.kind);
            }
        }
        Ok(())
    }

    fn step(&mut self, default_h_rel: f64) -> Result<StepRule> {
        let h_rel: Option<f64> = self.get("h_rel")?;
        let h: Option<f64> = self.get("h")?;
        let rule = match (h_rel, h) {
            (Some(_), Some(_)) => bail!("[sampler] set either `h_rel` or `h`, not both"),
            (_, Some(h)) => StepRule::Fixed { h },
            (h_rel, None) => StepRule::Relative {
                h_rel: h_rel.unwrap_or(default_h_rel),
            },
        };
        rule.validate().map_err(|e| anyhow!("[sampler] {e}"))?;
        Ok(rule)
    }

    fn diffusion(
        &mut self,
        steps_key: &'static str,
        default_steps: usize,
    ) -> Result<DiffusionConfig> {
        let method = match self.or::<String>("init_method", "sde".into())?.as_str() {
            "sde" => Method::Sde,
            "heun" => Method::Heun,
            other => bail!(
                "[sampler] field `init_method`: expected \"sde\" or \"heun\", got \"{other}\""
            ),
        };
        Ok(DiffusionConfig {
            method,
            steps: self.or(steps_key, default_steps)?,
            sigma_max: self.get("sigma_max")?,
            sigma_min: self.get("sigma_min")?,
            rho: self.or("rho", 7.0)?,
        })
    }

    fn init(&mut self, default: &str) -> Result<Init> {
        match self.or::<String>("init", default.into())?.as_str() {
            "diffusion" => Ok(Init::Diffusion(self.diffusion("init_steps", 500)?)),
            "noise" => Ok(Init::Noise),
            "exact-prior" => Ok(Init::ExactPrior),
            other => bail!("[sampler] field `init`: expected \"diffusion\", \"noise\" or \"exact-prior\", got \"{other}\""),
        }
    }

    fn annealed(&mut self) -> Result<AnnealedConfig> {
        let d = AnnealedConfig::default();
        let schedule = match self.or::<String>("schedule", "geometric".into())?.as_str() {
            "geometric" => EtaSchedule::Geometric,
            "admissible" => {
                let p = AdmissibleParams::default();
                EtaSchedule::Admissible(AdmissibleParams {
                    lambda: self.or("lambda", p.lambda)?,
                    eps: self.or("eps", p.eps)?,
                    alpha: self.or("alpha", p.alpha)?,
                    c: self.or("c", p.c)?,
                    r: self.or("r", p.r)?,
                    t: self.or("t", p.t)?,
                    max_stages: self.or("max_stages", p.max_stages)?,
                })
            }
            other => bail!("[sampler] field `schedule`: expected \"geometric\" or \"admissible\", got \"{other}\""),
        };
        Ok(AnnealedConfig {
            stages: self.or("stages", d.stages)?,
            eta_max: self.get("eta_max")?,
            schedule,
            steps_per_stage: self.or("steps_per_stage", d.steps_per_stage)?,
            step: self.step(0.2)?,
            init: self.init("diffusion")?,
            l_prior: self.get("l_prior")?,
            score_sigma: self.get("score_sigma")?,
            final_denoise: self.or("final_denoise", d.final_denoise)?,
        })
    }

    fn dps(&mut self, steps_key: &'static str) -> Result<dps::DpsConfig> {
        let d = dps::DpsConfig::default();
        Ok(dps::DpsConfig {
            steps: self.or(steps_key, d.steps)?,
            zeta: self.or("zeta", d.zeta)?,
            ..d
        })
    }
}

/// Parses the `[sampler]` table.
pub fn parse(t: &toml::Table) -> Result<Spec> {
    let kind: String = match t.get("kind") {
        None => "annealed".into(),
        Some(v) => v
            .as_str()
            .ok_or_else(|| anyhow!("[sampler] field `kind` must be a string ({KINDS})"))?
            .to_string(),
    };
    let mut tb = Table {
        t,
        kind: kind.clone(),
        used: Vec::new(),
    };
    let spec = match kind.as_str() {
        "annealed" => Spec::Annealed(tb.annealed()?),
        "local" => {
            let warm = match tb.or::<String>("warm_start", "dps".into())?.as_str() {
                "dps" => WarmStart::Dps(tb.dps("warm_steps")?),
                "lasso" => WarmStart::Lasso,
                "least-squares" => WarmStart::LeastSquares,
                other => WarmStart::File(PathBuf::from(other)),
            };
            let sigma: f64 = tb.get("sigma")?.ok_or_else(|| anyhow!("[sampler] field `sigma` (noise level of the warm start, units of x) is required for sampler `local`"))?;
            let start_at_x0 = tb.or("start_at_x0", false)?;
            Spec::Local {
                local: LocalConfig {
                    sigma,
                    start_at_x0,
                    annealed: tb.annealed()?,
                },
                warm_start: warm,
            }
        }
        "cs" => {
            let estimator = match tb.or::<String>("estimator", "lasso".into())?.as_str() {
                "lasso" => Estimator::Lasso { lambda: tb.get("lambda")?, iters: tb.or("estimator_iters", 500)? },
                "least-squares" => Estimator::LeastSquares { iters: tb.or("estimator_iters", 500)? },
                other => bail!("[sampler] field `estimator`: expected \"lasso\" or \"least-squares\", got \"{other}\""),
            };
            let radius = tb.get("radius")?;
            let delta = tb.or("delta", 1.0)?;
            let start_at_x0 = tb.or("start_at_x0", false)?;
            Spec::Cs(CsConfig {
                estimator,
                radius,
                delta,
                local: LocalConfig {
                    sigma: 1.0,
                    start_at_x0,
                    annealed: tb.annealed()?,
                },
            })
        }
        "ula" => {
            let d = UlaConfig::default();
            Spec::Ula(UlaConfig {
                steps: tb.or("steps", d.steps)?,
                step: tb.step(0.2)?,
                init: tb.init("diffusion")?,
                l_prior: tb.get("l_prior")?,
                score_sigma: tb.get("score_sigma")?,
            })
        }
        "mala" => {
            let d = mala::MalaConfig::default();
            Spec::Mala(mala::MalaConfig {
                steps: tb.or("steps", d.steps)?,
                step: tb.step(0.5)?,
                init: tb.init("diffusion")?,
                l_prior: tb.get("l_prior")?,
            })
        }
        "dps" => Spec::Dps(tb.dps("steps")?),
        "daps" => {
            let d = daps::DapsConfig::default();
            Spec::Daps(daps::DapsConfig {
                annealing_steps: tb.or("annealing_steps", d.annealing_steps)?,
                ode_steps: tb.or("ode_steps", d.ode_steps)?,
                langevin_steps: tb.or("langevin_steps", d.langevin_steps)?,
                lr_rel: tb.or("lr_rel", d.lr_rel)?,
                sigma_max: tb.get("sigma_max")?,
                sigma_min: tb.get("sigma_min")?,
                rho: tb.or("rho", d.rho)?,
            })
        }
        "ald" => {
            let d = ald::AldConfig::default();
            Spec::Ald(ald::AldConfig {
                levels: tb.or("levels", d.levels)?,
                steps_per_level: tb.or("steps_per_level", d.steps_per_level)?,
                h_rel: tb.or("h_rel", d.h_rel)?,
                sigma_max: tb.get("sigma_max")?,
                sigma_min: tb.get("sigma_min")?,
                l_prior: tb.get("l_prior")?,
            })
        }
        "exact" => Spec::Exact,
        "prior" => Spec::Prior(tb.diffusion("steps", 500)?),
        other => bail!("[sampler] unknown sampler kind `{other}` (expected one of: {KINDS})"),
    };
    tb.finish()?;
    Ok(spec)
}

impl Spec {
    pub fn name(&self) -> &'static str {
        match self {
            Spec::Annealed(_) => "annealed",
            Spec::Local { .. } => "local",
            Spec::Cs(_) => "cs",
            Spec::Ula(_) => "ula",
            Spec::Mala(_) => "mala",
            Spec::Dps(_) => "dps",
            Spec::Daps(_) => "daps",
            Spec::Ald(_) => "ald",
            Spec::Exact => "exact",
            Spec::Prior(_) => "prior",
        }
    }
}

/// Runs the sampler on one batch of streams.
pub fn run(
    spec: &Spec,
    l: &Loaded,
    streams: &mut SampleStreams,
    mon: &dyn Monitor,
) -> Result<Output> {
    let problem = Problem::new(l.prior.as_ref(), l.op.as_ref(), &l.y, l.eta)?;
    let exact_prior: Option<&dyn diffpost::prior::ExactSample> = l
        .gmm
        .as_ref()
        .map(|g| g as &dyn diffpost::prior::ExactSample);
    let need_gmm = |what: &str| {
        l.gmm
            .as_ref()
            .ok_or_else(|| anyhow!("[sampler] {what} needs an analytic (gmm/isotropic) prior"))
    };
    let out = match spec {
        Spec::Annealed(c) => annealed::sample(&problem, exact_prior, c, streams, mon)?,
        Spec::Ula(c) => ula::sample(&problem, exact_prior, c, streams, mon)?,
        Spec::Mala(c) => {
            if l.perturbed {
                bail!("[sampler] mala needs the prior's log-density, which a perturbed score does not have");
            }
            mala::sample(&problem, need_gmm("mala")?, exact_prior, c, streams, mon)?
        }
        Spec::Dps(c) => dps::sample(&problem, c, streams, mon)?,
        Spec::Daps(c) => daps::sample(&problem, c, streams, mon)?,
        Spec::Ald(c) => ald::sample(&problem, c, streams, mon)?,
        Spec::Exact => exact::sample(
            &need_gmm("exact")?.posterior(l.op.as_ref(), &l.y_vec, l.eta)?,
            streams,
        )?,
        Spec::Prior(c) => diffusion::sample(l.prior.as_ref(), c, streams, mon)?,
        Spec::Cs(c) => cs::sample(&problem, c, streams, mon)?,
        Spec::Local {
            local: c,
            warm_start,
        } => {
            let (x0, warm_evals) = match warm_start {
                WarmStart::Dps(dc) => {
                    let o = dps::sample(&problem, dc, streams, &diffpost::sampler::Silent)?;
                    (o.samples, o.score_evals)
                }
                WarmStart::Lasso => (
                    cs::estimate(
                        &problem,
                        &Estimator::Lasso {
                            lambda: None,
                            iters: 500,
                        },
                    )?,
                    0,
                ),
                WarmStart::LeastSquares => (
                    cs::estimate(&problem, &Estimator::LeastSquares { iters: 500 })?,
                    0,
                ),
                WarmStart::File(p) => {
                    let p = l.resolve(p);
                    let t = diffpost::io::read_array(&p, "warm start x0")?;
                    let d = l.d;
                    let t = match t.dims() {
                        [dd] if *dd == d => t.unsqueeze(0)?,
                        [_, dd] if *dd == d => {
                            // Rows are the global sample indices of this batch.
                            let idx: Vec<u32> =
                                streams.indices().iter().map(|&i| i as u32).collect();
                            let n = t.dims()[0];
                            if let Some(bad) = idx.iter().find(|&&i| i as usize >= n) {
                                bail!(
                                    "{}: warm start has {n} rows, sample {bad} needs one",
                                    p.display()
                                );
                            }
                            t.index_select(&Tensor::new(idx, &candle_core::Device::Cpu)?, 0)?
                        }
                        other => bail!(
                            "{}: warm start must be [d] or [n, d] with d = {d}, got {other:?}",
                            p.display()
                        ),
                    };
                    (t, 0)
                }
            };
            let mut o = local::sample(&problem, &x0, c, streams, mon)?;
            o.score_evals += warm_evals;
            o
        }
    };
    Ok(out)
}
