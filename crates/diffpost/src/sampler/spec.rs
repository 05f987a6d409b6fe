//! The registry of methods: [`SamplerSpec`] is the `[sampler]` table, one variant per method,
//! each the method's typed config (which *is* its table: see [`super::settings`]). One line per
//! method in [`methods!`] generates the variant, the `kind` list ([`KINDS`]), the parser arm and
//! the dispatch to the method's [`Method`] implementation; nothing else in the crate lists the
//! methods.

use serde::{Deserialize, Serialize};

use super::method::Method;
use super::settings::NoSettings;
use super::table;
use super::{ald, annealed, cs, daps, diffusion, dps, local, mala, smc, smc_gibbs, ula};
use crate::{Error, Result};

pub use super::table::{MAX_COUNT, MAX_STEPS};

/// Registers the methods: `Variant("kind", config type)`, doc comments allowed.
macro_rules! methods {
    ($( $(#[$doc:meta])* $variant:ident($kind:literal, $cfg:ty) ),* $(,)?) => {
        /// A sampler and all of its settings (`[sampler]`, tagged by `kind`). Two specs are
        /// equal when they run the same settings (dependent defaults written out or not).
        #[derive(Debug, Clone)]
        pub enum SamplerSpec {
            $( $(#[$doc])* $variant($cfg), )*
        }

        impl PartialEq for SamplerSpec {
            fn eq(&self, other: &Self) -> bool {
                match (self.filled(), other.filled()) {
                    $( (SamplerSpec::$variant(a), SamplerSpec::$variant(b)) => a == b, )*
                    _ => false,
                }
            }
        }

        /// Every `kind`, in the order of the registry.
        pub const KINDS: &[&str] = &[$($kind),*];

        impl SamplerSpec {
            /// The `kind` name.
            pub fn name(&self) -> &'static str {
                match self { $( SamplerSpec::$variant(_) => $kind, )* }
            }

            /// The method behind the settings.
            pub fn method(&self) -> &dyn Method {
                match self { $( SamplerSpec::$variant(c) => c, )* }
            }

            /// The keys a `[sampler]` table of `kind` accepts (besides `kind`).
            pub fn keys(kind: &str) -> Option<Vec<String>> {
                match kind {
                    $( $kind => Some(table::keys_of::<$cfg>()), )*
                    _ => None,
                }
            }

            /// The settings as a table (no `kind`), unset options left out; `filled` writes
            /// out every default that depends on another key.
            fn settings_table(&self, filled: bool) -> Result<toml::Table> {
                match self {
                    $( SamplerSpec::$variant(c) => {
                        if filled { table::to_table(&c.filled()) } else { table::to_table(c) }
                    } )*
                }
            }

            /// The same settings with every default that depends on another key written out.
            pub fn filled(&self) -> Self {
                match self { $( SamplerSpec::$variant(c) => SamplerSpec::$variant(c.filled()), )* }
            }

            /// Parses the table of a known `kind` (unknown keys, values and types checked).
            fn parse_kind(kind: &str, t: toml::Table) -> Result<Self> {
                match kind {
                    $( $kind => Ok(SamplerSpec::$variant(table::parse::<$cfg>(kind, t)?)), )*
                    other => Err(unknown_kind(other)),
                }
            }
        }

        $( impl From<$cfg> for SamplerSpec {
            fn from(c: $cfg) -> Self {
                SamplerSpec::$variant(c)
            }
        } )*
    };
}

methods! {
    /// Algorithm 1 (docs/algorithms.md, "Algorithm 1 (annealed)").
    Annealed("annealed", annealed::AnnealedConfig),
    /// Algorithm 2 with its warm start.
    Local("local", local::LocalConfig),
    /// Algorithm 3.
    Cs("cs", cs::CsConfig),
    Ula("ula", ula::UlaConfig),
    Mala("mala", mala::MalaConfig),
    Dps("dps", dps::DpsConfig),
    Daps("daps", daps::DapsConfig),
    Ald("ald", ald::AldConfig),
    /// Exact posterior samples (priors with a closed-form posterior).
    Exact("exact", NoSettings),
    /// Unconditional diffusion samples of the prior.
    Prior("prior", diffusion::DiffusionConfig),
    /// SMC over tempered posteriors (multimodal posteriors; the evidence).
    Smc("smc", smc::SmcConfig),
    /// SMC with Gibbs moves over the split coupling (multimodal posteriors at image scale).
    SmcGibbs("smc-gibbs", smc_gibbs::SmcGibbsConfig),
}

fn unknown_kind(kind: &str) -> Error {
    Error::param(
        "sampler.kind",
        format!(
            "unknown sampler kind `{kind}` (expected one of: {})",
            KINDS.join(" | ")
        ),
    )
}

impl Default for SamplerSpec {
    fn default() -> Self {
        SamplerSpec::Annealed(Default::default())
    }
}

impl SamplerSpec {
    /// Parses a `[sampler]` table: `kind` defaults to `"annealed"`; deprecated names are
    /// renamed; an unknown kind, an unknown key, a value of the wrong type, a non-finite float,
    /// a count over the limit or a value out of range is an error naming the key
    /// ([`super::table`]). The result has its dependent defaults written out
    /// ([`SamplerSpec::filled`]), so it equals the spec parsed back from its own table.
    pub fn from_toml(table: &toml::Table) -> Result<Self> {
        let mut t = table.clone();
        let kind = match t.remove("kind") {
            None => "annealed".to_string(),
            Some(toml::Value::String(s)) => s,
            Some(_) => {
                return Err(Error::param(
                    "sampler.kind",
                    format!("must be a string ({})", KINDS.join(" | ")),
                ))
            }
        };
        let renamed = table::rename_deprecated(&kind, &mut t)?;
        let parsed = Self::parse_kind(&kind, t).and_then(|spec| {
            spec.validate()?;
            Ok(spec.filled())
        });
        // Errors name the key as the table wrote it.
        parsed.map_err(|e| match e {
            Error::InvalidParam { field, reason } => {
                let field = renamed
                    .iter()
                    .find(|(_, new)| field == format!("sampler.{new}"))
                    .map(|(old, _)| format!("sampler.{old}"))
                    .unwrap_or(field);
                Error::InvalidParam { field, reason }
            }
            other => other,
        })
    }

    /// [`SamplerSpec::from_toml`] from any JSON object (a Python dict, `summary.json` `params`).
    pub fn from_map(map: serde_json::Map<String, serde_json::Value>) -> Result<Self> {
        Self::from_toml(&table::from_json(map)?)
    }

    /// Parses from any serialisable table (a `toml::Table`, a JSON object).
    pub fn from_table<T: Serialize>(t: &T) -> Result<Self> {
        match toml::Value::try_from(t) {
            Ok(toml::Value::Table(t)) => Self::from_toml(&t),
            Ok(_) => Err(Error::param("sampler", "must be a table")),
            Err(e) => Err(Error::param("sampler", e.to_string())),
        }
    }

    /// Every float finite and every count in range ([`table::check_values`]), then the
    /// method's own range checks: no problem needed, run before anything is loaded.
    pub fn validate(&self) -> Result<()> {
        table::check_values(&self.settings_table(false)?)?;
        self.method().validate()
    }

    /// The `[sampler]` table with every default filled in (`summary.json` `params`), `kind`
    /// included.
    pub fn to_toml(&self) -> toml::Table {
        let mut t = self.settings_table(true).unwrap_or_default();
        t.insert("kind".into(), toml::Value::String(self.name().into()));
        t
    }

    /// [`SamplerSpec::to_toml`] as JSON.
    pub fn to_table(&self) -> serde_json::Value {
        serde_json::to_value(self.to_toml()).unwrap_or(serde_json::Value::Null)
    }

    /// Samples per population (the method's; 1 for independent chains).
    pub fn population_size(&self, n: usize) -> usize {
        self.method().population_size(n)
    }
}

impl Serialize for SamplerSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_toml().serialize(s)
    }
}

impl<'de> Deserialize<'de> for SamplerSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let t = toml::Table::deserialize(d)?;
        SamplerSpec::from_toml(&t).map_err(serde::de::Error::custom)
    }
}
