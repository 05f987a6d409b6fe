//! The run context: a problem and a method prepared for it, once per run.

use candle_core::Tensor;

use crate::operator::LinearOperator;
use crate::prior::{Denoiser, GaussianMixture};
use crate::rng::SampleStreams;
use crate::sampler::method::Kernel;
use crate::sampler::spec::SamplerSpec;
use crate::sampler::{Monitor, Output, Problem};
use crate::{Error, Result};

/// The parts of an inverse problem a run needs, borrowed from their owner (a loaded config, a
/// test, the demo).
#[derive(Clone, Copy)]
pub struct ProblemParts<'a> {
    /// The prior the samplers see (possibly a perturbed score); what a method needs of it is
    /// asked through its capability queries (`as_log_density`, `as_exact_sample`,
    /// `as_mixture`, `differentiable`).
    pub prior: &'a dyn Denoiser,
    pub op: &'a dyn LinearOperator,
    /// `[m]` or `[1, m]`.
    pub y: &'a Tensor,
    pub eta: f64,
}

impl<'a> ProblemParts<'a> {
    /// A Gaussian-mixture prior, seen as it is (exact posterior, log-density, exact draws).
    pub fn mixture(
        prior: &'a GaussianMixture,
        op: &'a dyn LinearOperator,
        y: &'a Tensor,
        eta: f64,
    ) -> Self {
        Self { prior, op, y, eta }
    }

    /// A prior known only through its denoiser (a network, a callable).
    pub fn denoiser(
        prior: &'a dyn Denoiser,
        op: &'a dyn LinearOperator,
        y: &'a Tensor,
        eta: f64,
    ) -> Self {
        Self { prior, op, y, eta }
    }
}

/// Everything a run shares read-only between its batches; built once.
pub struct RunContext<'a> {
    spec: SamplerSpec,
    problem: Problem<'a>,
    kernel: Box<dyn Kernel>,
}

impl<'a> RunContext<'a> {
    /// Validates the problem and the spec, then prepares the method once
    /// ([`crate::sampler::method::Method::prepare`]: what it needs of the prior, `||A||`, the
    /// exact posterior, the warm start, the estimate of Algorithm 3's step 1).
    pub fn new(parts: ProblemParts<'a>, spec: &SamplerSpec) -> Result<Self> {
        let problem = Problem::new(parts.prior, parts.op, parts.y, parts.eta)?;
        spec.validate()?;
        let kernel = spec.method().prepare(&problem)?;
        Ok(Self {
            spec: spec.clone(),
            problem,
            kernel,
        })
    }

    /// Algorithm 2 with a warm start computed by the caller: `x0` is `[d]`/`[1, d]` (shared) or
    /// `[n, d]` (row `i` for sample `i`); replaces the spec's own warm start.
    pub fn with_warm_start(mut self, x0: Tensor) -> Result<Self> {
        let SamplerSpec::Local(l) = &self.spec else {
            return Err(Error::param(
                "sampler.kind",
                "a warm start applies to `local` only",
            ));
        };
        self.kernel = l.with_x0(x0, self.problem.prior.dim())?;
        Ok(self)
    }

    /// Stops the run once `flag` is set: batches not yet started do not start, running ones
    /// stop at their sampler's next check (every few steps); the run returns
    /// [`Error::Cancelled`].
    pub fn with_cancel(mut self, flag: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.problem = self.problem.with_cancel(flag);
        self
    }

    pub fn spec(&self) -> &SamplerSpec {
        &self.spec
    }

    pub fn problem(&self) -> &Problem<'a> {
        &self.problem
    }

    /// Executes the prepared method on one batch of streams (whole populations).
    pub fn sample_batch(&self, streams: &mut SampleStreams, mon: &dyn Monitor) -> Result<Output> {
        self.kernel.sample(&self.problem, streams, mon)
    }
}
