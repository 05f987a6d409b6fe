//! The run pipeline: a [`RunContext`] built once per run (`context.rs`: the problem and the
//! method prepared for it), one entry ([`RunContext::sample_batch`]) that executes the prepared
//! method on a batch of sample streams, a runner ([`RunContext::run`], `runner.rs`) that executes
//! a run as independent *populations* of samples, in parallel batches, optionally one shard of
//! them, and the diagnostics aggregated over all populations (`diagnostics.rs`); `summary.rs`
//! makes `summary.json` and merges shards, `shard.rs` splits a run.
//!
//! Populations: a population is the unit of samples that must run together (1 sample for an
//! independent chain; an SMC sampler's particle system). Population `j` holds samples
//! `j P .. (j + 1) P`; sample `i` draws only from its own stream `(seed, i)`, so the result of a
//! population depends neither on the batch it ran in, the thread count nor the shard.
//!
//! What `diffpost sample` does, from Rust:
//!
//! ```no_run
//! use diffpost::config::ProblemConfig;
//! use diffpost::run::{NoProgress, RunContext, RunPlan};
//!
//! # fn main() -> diffpost::Result<()> {
//! let cfg = ProblemConfig::read("my/problem.toml".as_ref())?; // parse + validate all sections
//! let problem = cfg.load(&candle_core::Device::Cpu)?; // prior, operator, y
//! let ctx = RunContext::new(problem.parts(), &cfg.sampler)?; // ||A||, posterior, warm start
//! let out = ctx.run(&RunPlan::new(cfg.run.n, cfg.run.seed), &NoProgress)?;
//! println!("{:?} {:?}", out.samples.dims(), out.diagnostics);
//! # Ok(())
//! # }
//! ```

mod context;
mod diagnostics;
mod runner;
pub mod shard;
pub mod summary;

pub use context::{ProblemParts, RunContext};
pub use diagnostics::{Diagnostics, EvalStats, SampleMean};
pub use runner::{Layout, NoProgress, Progress, RunOutput, RunPlan};
pub use shard::Shard;
