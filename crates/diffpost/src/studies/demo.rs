//! `diffpost demo`: every sampler at its defaults against the exact posterior of a small
//! compressed-sensing problem (d = 20, m = 10, eta = 0.1, Gaussian prior): evaluations, wall
//! time, sliced W2 and MMD² with their Monte-Carlo noise floors.

use std::time::Instant;

use candle_core::{Device, Tensor};
use serde_json::json;

use super::spec;
use crate::metrics::{exact_reference, MetricFloors};
use crate::operator::Dense;
use crate::problem::Instance;
use crate::run::{NoProgress, ProblemParts, RunContext, RunPlan};
use crate::sampler::spec::SamplerSpec;
use crate::{Error, Result};

/// Size of the exact reference sample.
pub const REFERENCE: usize = 20000;

/// The demo's compressed-sensing instance (d = 20, m = 10, eta = 0.1, Gaussian prior).
pub fn instance() -> Result<Instance> {
    crate::problem::random_gmm_instance(20, 10, 1, 0.1, 2024)
}

/// The demo's samplers: every method at its defaults, with the names the table shows.
pub fn specs() -> Result<Vec<(&'static str, SamplerSpec)>> {
    [
        ("exact", "exact"),
        ("annealed (Alg. 1)", "annealed"),
        ("ula", "ula"),
        ("mala", "mala"),
        ("dps", "dps"),
        ("daps", "daps"),
        ("ald", "ald"),
        ("smc", "smc"),
    ]
    .into_iter()
    .map(|(name, kind)| Ok((name, spec(json!({ "kind": kind }))?)))
    .collect()
}

/// One sampler's row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DemoRow {
    pub sampler: String,
    /// Score evaluations per sample (the largest).
    pub evals: u64,
    pub wall_s: f64,
    pub sw2: f64,
    /// Sliced W2 over the mean exact-vs-exact value.
    pub sw2_over_floor: f64,
    pub mmd2: f64,
    /// `(MMD² - floor mean) / floor sd`.
    pub mmd2_z: f64,
}

impl DemoRow {
    /// The row as the table prints it.
    pub fn line(&self) -> String {
        format!(
            "{:<18} {:>12} {:>9.2} {:>10.4} {:>8.2} {:>11.2e} {:>8.1}",
            self.sampler,
            self.evals,
            self.wall_s,
            self.sw2,
            self.sw2_over_floor,
            self.mmd2,
            self.mmd2_z
        )
    }
}

/// The demo's result.
pub struct Demo {
    /// Samples per sampler.
    pub n: usize,
    /// Noise floors over 10 exact sets of `n`.
    pub floors: MetricFloors,
    pub rows: Vec<DemoRow>,
}

/// Runs the demo with `n` samples per sampler (seed 1); `log` gets the printed lines as they come.
pub fn run(n: usize, log: &mut dyn FnMut(&str)) -> Result<Demo> {
    if n < 2 {
        return Err(Error::param("--n", "must be >= 2"));
    }
    let inst = instance()?;
    let (d, m, eta) = (inst.a.ncols(), inst.a.nrows(), inst.eta);
    let op = Dense::new(inst.a.clone())?;
    let y = Tensor::from_vec(inst.y.as_slice().to_vec(), m, &Device::Cpu)?;
    let post = inst.prior.posterior(&op, inst.y.as_slice(), eta)?;
    log(&format!("diffpost demo: compressed sensing, d = {d}, m = {m}, eta = {eta}, Gaussian (log-concave) prior, n = {n} samples each"));
    let t = Instant::now();
    let (reference, floors) = exact_reference(&post, n, REFERENCE)?;
    log(&format!(
        "exact reference: {REFERENCE} samples; noise floor over 10 exact sets of {n}: sliced W2 {:.4} ± {:.4}, MMD² {:.2e} ± {:.1e} ({:.1} s)\n",
        floors.sw2.floor_mean,
        floors.sw2.floor_sd,
        floors.mmd2.floor_mean,
        floors.mmd2.floor_sd,
        t.elapsed().as_secs_f64()
    ));
    let parts = ProblemParts::mixture(&inst.prior, &op, &y, eta);
    log(&format!(
        "{:<18} {:>12} {:>9} {:>10} {:>8} {:>11} {:>8}",
        "sampler", "score evals", "wall s", "sliced W2", "/floor", "MMD²", "z(MMD²)"
    ));
    let mut rows = Vec::new();
    for (name, spec) in specs()? {
        let t = Instant::now();
        let out = RunContext::new(parts, &spec)?.run(&RunPlan::new(n, 1), &NoProgress)?;
        let wall = t.elapsed().as_secs_f64();
        let met = reference
            .evaluate(&out.samples.flatten_all()?.to_vec1()?)?
            .with_floor(&floors);
        let row = DemoRow {
            sampler: name.into(),
            evals: out.diagnostics.score_evals_per_sample.max,
            wall_s: wall,
            sw2: met.sw2.value,
            sw2_over_floor: met.sw2.value / met.sw2.floor_mean,
            mmd2: met.mmd2.value,
            mmd2_z: met.mmd2.z_score(),
        };
        log(&row.line());
        rows.push(row);
    }
    log("\n/floor: sliced W2 over the mean exact-vs-exact value (1.0 = indistinguishable from exact at this n);");
    log("z(MMD²): (MMD² - floor mean) / floor sd. Defaults of every sampler; see the README for what they are.");
    Ok(Demo { n, floors, rows })
}
