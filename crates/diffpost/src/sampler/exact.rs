//! Exact posterior sampling for analytic (Gaussian-mixture) priors: the posterior of a linear
//! Gaussian measurement is again a mixture (Kalman/Joseph form, see
//! [`crate::prior::GaussianMixture::posterior`]). No score evaluations.

use super::method::{missing, Kernel, Method};
use super::settings::NoSettings;
use super::{Info, Monitor, Output, Problem};
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

impl Method for NoSettings {
    fn validate(&self) -> Result<()> {
        Ok(())
    }

    /// The posterior in closed form: needs the Gaussian mixture behind the prior.
    fn prepare(&self, problem: &Problem) -> Result<Box<dyn Kernel>> {
        let g = problem
            .prior
            .as_mixture()
            .ok_or_else(|| missing("exact", "an analytic (gmm/isotropic) prior"))?;
        let y: Vec<f64> = problem
            .y
            .flatten_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_vec1()?;
        Ok(Box::new(ExactKernel(g.posterior(
            problem.op,
            &y,
            problem.eta,
        )?)))
    }
}

/// The exact posterior, computed once per run.
struct ExactKernel(GaussianMixture);

impl Kernel for ExactKernel {
    fn sample(
        &self,
        _problem: &Problem,
        streams: &mut SampleStreams,
        _mon: &dyn Monitor,
    ) -> Result<Output> {
        sample(&self.0, streams)
    }
}
