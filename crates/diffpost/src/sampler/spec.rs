//! Methods as data: [`SamplerSpec`] is the `[sampler]` table, one variant per method, each the
//! method's typed config (with its `Default`), deserialised straight from the table (unknown keys
//! are errors) and serialised back to it with every default filled in.

use serde::{Deserialize, Serialize};

use super::settings::{LocalSpec, NoSettings};
use super::{ald, annealed, cs, daps, diffusion, dps, mala, ula};
use crate::{Error, Result};

/// A sampler and all of its settings (`[sampler]`, tagged by `kind`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
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
}

impl Default for SamplerSpec {
    fn default() -> Self {
        SamplerSpec::Annealed(Default::default())
    }
}

/// Every `kind`.
pub const KINDS: [&str; 10] = [
    "annealed", "local", "cs", "ula", "mala", "dps", "daps", "ald", "exact", "prior",
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

    /// Samples per population: 1 for every method today (independent chains); the SMC sampler's
    /// populations are its particle systems.
    pub fn population_size(&self, _n: usize) -> usize {
        1
    }
}
