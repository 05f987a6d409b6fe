//! Methods as data: [`SamplerSpec`] is the `[sampler]` table, one variant per method, each the
//! method's typed config (with its `Default`), deserialised straight from the table (unknown keys
//! are errors) and serialised back to it with every default filled in.

use serde::{Deserialize, Serialize};

use super::settings::{
    AnnealedSettings, CsSettings, LocalSettings, LocalSpec, MalaSettings, NoSettings, UlaSettings,
};
use super::{ald, annealed, cs, daps, diffusion, dps, mala, smc, ula};
use crate::{Error, Result};

/// A sampler and all of its settings (`[sampler]`, tagged by `kind`). It (de)serialises through
/// the flat vocabulary of [`super::settings`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawSpec", into = "RawSpec")]
pub enum SamplerSpec {
    /// Algorithm 1 (docs/algorithms.md, "Algorithm 1 (annealed)").
    Annealed(annealed::AnnealedConfig),
    /// Algorithm 2 with its warm start.
    Local(LocalSpec),
    /// Algorithm 3.
    Cs(cs::CsConfig),
    Ula(ula::UlaConfig),
    Mala(mala::MalaConfig),
    Dps(dps::DpsConfig),
    Daps(daps::DapsConfig),
    Ald(ald::AldConfig),
    /// Exact posterior samples (analytic priors).
    Exact(NoSettings),
    /// Unconditional diffusion samples of the prior.
    Prior(diffusion::DiffusionConfig),
    /// SMC over tempered posteriors (multimodal posteriors; the evidence).
    Smc(smc::SmcConfig),
}

/// The `[sampler]` table as written: one flat settings struct per kind.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
enum RawSpec {
    Annealed(AnnealedSettings),
    Local(LocalSettings),
    Cs(CsSettings),
    Ula(UlaSettings),
    Mala(MalaSettings),
    Dps(dps::DpsConfig),
    Daps(daps::DapsConfig),
    Ald(ald::AldConfig),
    Exact(NoSettings),
    Prior(diffusion::DiffusionConfig),
    Smc(smc::SmcConfig),
}

impl TryFrom<RawSpec> for SamplerSpec {
    type Error = Error;
    fn try_from(r: RawSpec) -> Result<Self> {
        Ok(match r {
            RawSpec::Annealed(s) => SamplerSpec::Annealed(s.try_into()?),
            RawSpec::Local(s) => SamplerSpec::Local(s.try_into()?),
            RawSpec::Cs(s) => SamplerSpec::Cs(s.try_into()?),
            RawSpec::Ula(s) => SamplerSpec::Ula(s.try_into()?),
            RawSpec::Mala(s) => SamplerSpec::Mala(s.try_into()?),
            RawSpec::Dps(c) => SamplerSpec::Dps(c),
            RawSpec::Daps(c) => SamplerSpec::Daps(c),
            RawSpec::Ald(c) => SamplerSpec::Ald(c),
            RawSpec::Exact(c) => SamplerSpec::Exact(c),
            RawSpec::Prior(c) => SamplerSpec::Prior(c),
            RawSpec::Smc(c) => SamplerSpec::Smc(c),
        })
    }
}

impl From<SamplerSpec> for RawSpec {
    fn from(s: SamplerSpec) -> Self {
        match s {
            SamplerSpec::Annealed(c) => RawSpec::Annealed(c.into()),
            SamplerSpec::Local(l) => RawSpec::Local(l.into()),
            SamplerSpec::Cs(c) => RawSpec::Cs(c.into()),
            SamplerSpec::Ula(c) => RawSpec::Ula(c.into()),
            SamplerSpec::Mala(c) => RawSpec::Mala(c.into()),
            SamplerSpec::Dps(c) => RawSpec::Dps(c),
            SamplerSpec::Daps(c) => RawSpec::Daps(c),
            SamplerSpec::Ald(c) => RawSpec::Ald(c),
            SamplerSpec::Exact(c) => RawSpec::Exact(c),
            SamplerSpec::Prior(c) => RawSpec::Prior(c),
            SamplerSpec::Smc(c) => RawSpec::Smc(c),
        }
    }
}

impl Default for SamplerSpec {
    fn default() -> Self {
        SamplerSpec::Annealed(Default::default())
    }
}

/// Every `kind`.
pub const KINDS: [&str; 11] = [
    "annealed", "local", "cs", "ula", "mala", "dps", "daps", "ald", "exact", "prior", "smc",
];

impl SamplerSpec {
    /// The `kind` name.
    pub fn name(&self) -> &'static str {
        match self {
            SamplerSpec::Annealed(_) => "annealed",
            SamplerSpec::Local(_) => "local",
            SamplerSpec::Cs(_) => "cs",
            SamplerSpec::Ula(_) => "ula",
            SamplerSpec::Mala(_) => "mala",
            SamplerSpec::Dps(_) => "dps",
            SamplerSpec::Daps(_) => "daps",
            SamplerSpec::Ald(_) => "ald",
            SamplerSpec::Exact(_) => "exact",
            SamplerSpec::Prior(_) => "prior",
            SamplerSpec::Smc(_) => "smc",
        }
    }

    /// Parses a `[sampler]` table given as any serde map (a TOML table, a JSON object, a Python
    /// dict): `kind` defaults to `"annealed"`; an unknown kind, an unknown key or a value out of
    /// range is an error naming the field.
    pub fn from_map(mut map: serde_json::Map<String, serde_json::Value>) -> Result<Self> {
        let kind = match map.get("kind") {
            None => "annealed".to_string(),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(_) => {
                return Err(Error::param(
                    "sampler.kind",
                    format!("must be a string ({})", KINDS.join(" | ")),
                ))
            }
        };
        if !KINDS.contains(&kind.as_str()) {
            return Err(Error::param(
                "sampler.kind",
                format!(
                    "unknown sampler kind `{kind}` (expected one of: {})",
                    KINDS.join(" | ")
                ),
            ));
        }
        map.insert("kind".into(), serde_json::Value::String(kind.clone()));
        check_counts(&map)?;
        let spec = SamplerSpec::deserialize(serde_json::Value::Object(map)).map_err(|e| {
            Error::param(
                "sampler",
                format!("(kind = \"{kind}\"): {e} (see the config reference in the README)"),
            )
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Range checks of every setting (no problem needed): run before anything is loaded.
    pub fn validate(&self) -> Result<()> {
        match self {
            SamplerSpec::Annealed(c) => c.validate(),
            SamplerSpec::Local(l) => {
                if let super::settings::WarmStart::Dps(c) = &l.warm_start {
                    c.validate()?;
                }
                l.local.annealed.validate()
            }
            SamplerSpec::Cs(c) => c.validate(),
            SamplerSpec::Ula(c) => c.validate(),
            SamplerSpec::Mala(c) => c.validate(),
            SamplerSpec::Dps(c) => c.validate(),
            SamplerSpec::Daps(c) => c.validate(),
            SamplerSpec::Ald(c) => c.validate(),
            SamplerSpec::Exact(_) => Ok(()),
            SamplerSpec::Prior(c) => c.validate("steps"),
            SamplerSpec::Smc(c) => c.validate(),
        }
    }

    /// Parses from any serialisable table (e.g. a `toml::Table`).
    pub fn from_table<T: Serialize>(t: &T) -> Result<Self> {
        match serde_json::to_value(t) {
            Ok(serde_json::Value::Object(m)) => Self::from_map(m),
            Ok(_) => Err(Error::param("sampler", "must be a table")),
            Err(e) => Err(Error::param("sampler", e.to_string())),
        }
    }

    /// The flat table of every setting (defaults filled in), as `summary.json` `params` holds it.
    pub fn to_table(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }

    /// Samples per population: 1 for independent chains; SMC's particle systems (`particles`,
    /// default all `n`).
    pub fn population_size(&self, n: usize) -> usize {
        match self {
            SamplerSpec::Smc(c) => c.population_size(n),
            _ => 1,
        }
    }
}

/// Largest value of any count setting (stages, steps, moves, particles): far above any useful
/// value, and small enough that no schedule or buffer of that length is a problem.
pub const MAX_COUNT: u64 = 10_000_000;

/// Largest number of Langevin steps per sample (`stages x steps_per_stage`, `stages x
/// moves_per_stage`): 1e8 network passes per sample is years of compute.
pub const MAX_STEPS: u64 = 100_000_000;

/// Count settings are checked before anything is built from them: each at most [`MAX_COUNT`],
/// stages times steps at most [`MAX_STEPS`] (a clear error instead of a run that never ends or
/// a schedule that cannot be allocated).
fn check_counts(map: &serde_json::Map<String, serde_json::Value>) -> Result<()> {
    const COUNTS: [&str; 13] = [
        "stages",
        "steps",
        "steps_per_stage",
        "init_steps",
        "moves_per_stage",
        "final_moves",
        "particles",
        "ode_steps",
        "max_stages",
        "levels",
        "steps_per_level",
        "annealing_steps",
        "langevin_steps",
    ];
    let get = |k: &str| map.get(k).and_then(|v| v.as_u64());
    for k in COUNTS {
        if let Some(v) = get(k) {
            if v > MAX_COUNT {
                return Err(Error::param(
                    format!("sampler.{k}"),
                    format!("{v} is more than the limit of {MAX_COUNT}"),
                ));
            }
        }
    }
    let stages = get("stages")
        .or(get("levels"))
        .or(get("annealing_steps"))
        .unwrap_or(1);
    for k in [
        "steps_per_stage",
        "steps_per_level",
        "langevin_steps",
        "moves_per_stage",
    ] {
        if let Some(v) = get(k) {
            if stages.saturating_mul(v) > MAX_STEPS {
                return Err(Error::param(
                    format!("sampler.{k}"),
                    format!(
                        "stages x {k} = {} steps per sample is more than the limit of {MAX_STEPS}",
                        stages.saturating_mul(v)
                    ),
                ));
            }
        }
    }
    Ok(())
}
