//! Exact posterior sampling for analytic (Gaussian-mixture) priors: the posterior of a linear
//! Gaussian measurement is again a mixture (Kalman/Joseph form, see
//! [`crate::prior::GaussianMixture::posterior`]). No score evaluations.

use super::{Info, Output};
use crate::prior::{ExactSample, GaussianMixture};
use crate::rng::SampleStreams;
use crate::Result;

/// Draws `[B, d]` exact samples of `posterior`.
pub fn sample(posterior: &GaussianMixture, streams: &mut SampleStreams) -> Result<Output> {
    Ok(Output {
        weighted: None,
        samples: posterior.sample_exact(streams)?,
        score_evals: 0,
        info: Info::default(),
        warm_start: None,
    })
}
