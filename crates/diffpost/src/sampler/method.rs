//! A method as one unit: each sampler file implements [`Method`] for its config, and one line in
//! [`super::spec`] registers it (its `kind`, its config type). The runner then needs nothing
//! else: it prepares the method once per run ([`Method::prepare`]: capability checks against the
//! prior, `||A||`, estimates, the exact posterior) and calls the resulting [`Kernel`] on batches
//! of whole populations.
//!
//! What a method needs from the prior is asked of the prior itself, through the capability
//! queries of [`crate::prior::Denoiser`] (`as_log_density`, `as_exact_sample`, `as_mixture`,
//! `differentiable`), never through a list of prior kinds.

use serde_json::{Map, Value};

use super::{Info, Monitor, Output, Problem};
use crate::rng::SampleStreams;
use crate::{Error, Result};

/// A sampling method, as configured (its config type implements this).
pub trait Method: Send + Sync {
    /// Range checks that need no problem: run when the config is parsed, before anything is
    /// loaded. (Every float is checked finite and every count bounded in one place,
    /// [`super::table::check_values`], before this.)
    fn validate(&self) -> Result<()>;

    /// The per-run work, done once before any batch: checks what the method needs of the prior
    /// (capabilities) and precomputes what every batch shares.
    fn prepare(&self, problem: &Problem) -> Result<Box<dyn Kernel>>;

    /// Samples per population: 1 for independent chains; an SMC particle system's size. The
    /// runner keeps populations whole in every batch and shard.
    fn population_size(&self, _n: usize) -> usize {
        1
    }

    /// Whether the samples target the posterior (then the data residual is a diagnostic);
    /// unconditional prior samples do not.
    fn conditional(&self) -> bool {
        true
    }

    /// Method-specific signs of trouble for `summary.json` `health_warnings`, from the run's
    /// merged diagnostics (the residual and acceptance checks are the runner's).
    fn warnings(&self, _info: &Info, _population_size: usize) -> Vec<String> {
        Vec::new()
    }

    /// Values resolved at run time that `summary.json` `params` lists (e.g. the schedule's
    /// `eta_max`), so that `params` holds every value used.
    fn record_resolved(&self, _info: &Info, _params: &mut Map<String, Value>) {}

    /// The config with every default that depends on another key written out (the `params`
    /// of `summary.json`: itself a valid `[sampler]` table).
    fn filled(&self) -> Self
    where
        Self: Sized + Clone,
    {
        self.clone()
    }
}

/// A method prepared for one problem: samples one batch of whole populations. Randomness comes
/// only from `streams` (one per sample), so a sample never depends on its batch.
pub trait Kernel: Send + Sync {
    fn sample(
        &self,
        problem: &Problem,
        streams: &mut SampleStreams,
        mon: &dyn Monitor,
    ) -> Result<Output>;
}

/// The error of a method whose prior lacks a capability it needs.
pub(crate) fn missing(kind: &str, what: &str) -> Error {
    Error::param("sampler.kind", format!("{kind} needs {what}"))
}
