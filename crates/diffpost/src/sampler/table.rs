//! Reading a `[sampler]` table into a method's typed config: the one place that checks its keys
//! and values, for every method alike.
//!
//! 1. Deprecated names are renamed ([`DEPRECATED`]; both old and new set is an error).
//! 2. Unknown keys are refused with their name: the keys a method accepts are its config's
//!    fields, flattened groups included ([`keys_of`]).
//! 3. The typed config is deserialised; an error names the key it came from.
//! 4. Every float setting must be finite and every integer setting (all are counts) at most
//!    `MAX_COUNT`; `stages` times `steps_per_stage` (or `moves_per_stage`) at most `MAX_STEPS`
//!    ([`check_values`], on the typed config serialised back, so it sees each key with its
//!    type). `SamplerSpec::validate` runs it, on parsed configs and on configs built in code
//!    alike, before the method's own range checks.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Error, Result};

/// Largest value of any count setting (stages, steps, moves, particles): far above any useful
/// value, and small enough that no schedule or buffer of that length is a problem.
pub const MAX_COUNT: u64 = 10_000_000;

/// Largest number of Langevin steps per sample (`stages x steps_per_stage`, `stages x
/// moves_per_stage`): 1e8 network passes per sample is years of compute.
pub const MAX_STEPS: u64 = 100_000_000;

/// Deprecated key names still accepted, per sampler kind: `(kind, old, new)`.
pub const DEPRECATED: &[(&str, &str, &str)] = &[
    ("ald", "levels", "stages"),
    ("ald", "steps_per_level", "steps_per_stage"),
    ("daps", "annealing_steps", "stages"),
    ("daps", "langevin_steps", "steps_per_stage"),
    ("daps", "lr_rel", "h_rel"),
    ("smc", "schedule", "tempering"),
    ("cs", "lambda", "lasso_lambda"),
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

/// Step 1: renames the deprecated keys of `kind` in `table` (both names set is an error);
/// returns the `(old, new)` pairs renamed.
pub fn rename_deprecated(
    kind: &str,
    table: &mut toml::Table,
) -> Result<Vec<(&'static str, &'static str)>> {
    let mut renamed = Vec::new();
    for (k, old, new) in DEPRECATED {
        if *k != kind {
            continue;
        }
        if let Some(v) = table.remove(*old) {
            if table.contains_key(*new) {
                return Err(Error::param(
                    format!("sampler.{old}"),
                    format!("is the deprecated name of `{new}`, which is also set"),
                ));
            }
            table.insert((*new).to_string(), v);
            renamed.push((*old, *new));
        }
    }
    Ok(renamed)
}

/// Every key of a config type: the fields of its default serialised (an unset `Option` is a
/// `null`, so it is listed too), flattened groups included.
pub fn keys_of<T: Serialize + Default>() -> Vec<String> {
    match serde_json::to_value(T::default()) {
        Ok(serde_json::Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// A config as its table: unset options left out.
pub fn to_table<T: Serialize>(c: &T) -> Result<toml::Table> {
    match toml::Value::try_from(c) {
        Ok(toml::Value::Table(t)) => Ok(t),
        Ok(_) => Err(Error::param("sampler", "settings must be a table")),
        Err(e) => Err(Error::param("sampler", e.to_string())),
    }
}

/// Parses the table of `kind` (without its `kind` key, deprecated names renamed) into its config
/// `T`: steps 2-3 of the module doc. The value checks ([`check_values`]) and the method's own range checks are
/// `SamplerSpec::validate`'s.
pub fn parse<T: DeserializeOwned + Serialize + Default>(
    kind: &str,
    table: toml::Table,
) -> Result<T> {
    let keys = keys_of::<T>();
    if let Some(k) = table.keys().find(|k| !keys.contains(k)) {
        let mut known = keys.clone();
        known.sort();
        return Err(Error::param(
            format!("sampler.{k}"),
            format!(
                "unknown field `{k}` for sampler `{kind}` (its keys: {})",
                known.join(", ")
            ),
        ));
    }
    T::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
        // Name the key: the first one that fails on its own.
        let key = table.iter().find(|(k, v)| {
            let mut one = toml::Table::new();
            one.insert((*k).clone(), (*v).clone());
            T::deserialize(toml::Value::Table(one)).is_err()
        });
        match key {
            Some((k, v)) => {
                Error::param(format!("sampler.{k}"), format!("{} (got {v})", e.message()))
            }
            None => Error::param("sampler", e.message().to_string()),
        }
    })
}

/// On a config serialised back ([`to_table`]): every float finite, every integer (a count) at
/// most [`MAX_COUNT`], `stages x steps_per_stage` and `stages x moves_per_stage` at most
/// [`MAX_STEPS`]. Errors name the key.
pub fn check_values(table: &toml::Table) -> Result<()> {
    for (k, v) in table {
        check_value(k, v)?;
    }
    let get = |k: &str| table.get(k).and_then(|v| v.as_integer()).map(|v| v as u64);
    let stages = get("stages").unwrap_or(1);
    for k in ["steps_per_stage", "moves_per_stage"] {
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

fn check_value(k: &str, v: &toml::Value) -> Result<()> {
    match v {
        toml::Value::Float(f) if !f.is_finite() => Err(Error::param(
            format!("sampler.{k}"),
            format!("must be finite, got {f}"),
        )),
        toml::Value::Integer(i) if *i as u64 > MAX_COUNT => Err(Error::param(
            format!("sampler.{k}"),
            format!("{i} is more than the limit of {MAX_COUNT}"),
        )),
        toml::Value::Array(a) => a.iter().try_for_each(|x| check_value(k, x)),
        _ => Ok(()),
    }
}

/// A JSON object (a Python dict, a `summary.json` `params`) as a `[sampler]` table. A `null`
/// value means the key is unset (its default), as an absent key in TOML.
pub fn from_json(map: serde_json::Map<String, serde_json::Value>) -> Result<toml::Table> {
    fn conv(k: &str, v: serde_json::Value) -> Result<toml::Value> {
        use serde_json::Value as J;
        Ok(match v {
            J::Null => unreachable!("nulls are dropped below"),
            J::Bool(b) => toml::Value::Boolean(b),
            J::Number(n) => match n.as_i64() {
                Some(i) => toml::Value::Integer(i),
                None => match n.as_u64() {
                    // Above i64::MAX: certainly over every count limit.
                    Some(_) => {
                        return Err(Error::param(
                            format!("sampler.{k}"),
                            format!("{n} is more than the limit of {MAX_COUNT}"),
                        ))
                    }
                    None => toml::Value::Float(n.as_f64().unwrap_or(f64::NAN)),
                },
            },
            J::String(s) => toml::Value::String(s),
            J::Array(a) => toml::Value::Array(
                a.into_iter()
                    .filter(|x| !x.is_null())
                    .map(|x| conv(k, x))
                    .collect::<Result<Vec<_>>>()?,
            ),
            J::Object(o) => toml::Value::Table(
                o.into_iter()
                    .filter(|(_, x)| !x.is_null())
                    .map(|(kk, x)| Ok((kk.clone(), conv(&format!("{k}.{kk}"), x)?)))
                    .collect::<Result<toml::Table>>()?,
            ),
        })
    }
    map.into_iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| Ok((k.clone(), conv(&k, v)?)))
        .collect()
}
