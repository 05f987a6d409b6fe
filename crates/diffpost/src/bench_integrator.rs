//! Euler-Maruyama against the exact-likelihood integrator (issue 12; docs/algorithms.md,
//! "Exact-likelihood integrator"): score evaluations per sample needed to reach 1.2x the
//! sliced-W2 noise floor, for Algorithm 1 (10 stages) and ULA, on log-concave problems with exact
//! posteriors: compressed sensing (Gaussian prior, d = 64, m = 32, dense A) and inpainting
//! (Gaussian prior, d = 256, every other coordinate observed), eta = 0.1, 0.01, 0.001. Budgets
//! double from 45 until the target is met or 11,520 fails; n = 1000 samples, exact-prior start,
//! seed 7. `diffpost bench integrator` prints and plots it.

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::metrics::{exact_reference, MetricFloors, Reference};
use crate::operator::{Dense, LinearOperator, Mask};
use crate::prior::{ExactSample, GaussianMixture};
use crate::problem::random_gmm_instance;
use crate::rng::SampleStreams;
use crate::run::{NoProgress, ProblemParts, RunContext, RunPlan};
use crate::sampler::spec::SamplerSpec;
use crate::Result;

/// The target: sliced W2 at most this times its noise floor.
pub const TARGET: f64 = 1.2;
const N: usize = 1000;
const BUDGETS: usize = 9;

/// One (problem, eta, sampler, integrator): its budget sweep up to the first budget that meets the
/// target.
#[derive(Debug, Clone, Serialize)]
pub struct IntegratorRow {
    pub problem: String,
    pub eta: f64,
    pub sampler: String,
    pub integrator: String,
    /// `(evaluations per sample, sliced W2 / floor)` for each budget tried.
    pub curve: Vec<(u64, f64)>,
    /// The first budget that met the target, if any.
    pub evals_to_target: Option<u64>,
}

impl IntegratorRow {
    /// "1440 (1.14x)" or "> 11520 (4.05x there)".
    pub fn cell(&self) -> String {
        let (e, r) = self.curve.last().copied().unwrap_or((0, f64::NAN));
        match self.evals_to_target {
            Some(_) => format!("{e} ({r:.2}x)"),
            None => format!("> {e} ({r:.2}x there)"),
        }
    }
}

struct Case {
    name: &'static str,
    prior: GaussianMixture,
    op: Box<dyn LinearOperator>,
    y: Vec<f64>,
    eta: f64,
    reference: Reference,
    floors: MetricFloors,
}

fn case(name: &'static str, eta: f64) -> Result<Case> {
    let (prior, op, y): (GaussianMixture, Box<dyn LinearOperator>, Vec<f64>) =
        if name.starts_with("cs") {
            let inst = random_gmm_instance(64, 32, 1, eta, 3)?;
            (
                inst.prior,
                Box::new(Dense::new(inst.a)?),
                inst.y.as_slice().to_vec(),
            )
        } else {
            let inst = random_gmm_instance(256, 1, 1, eta, 4)?;
            let ind: Vec<f64> = (0..256).map(|i| ((i * 7) % 2) as f64).collect();
            let op = Mask::from_indicator(&ind)?;
            let mut s = SampleStreams::new(11, [0]);
            let x = inst.prior.sample_exact(&mut s)?;
            let ax: Vec<f64> = op.apply(&x)?.flatten_all()?.to_vec1()?;
            let noise = s.normal_vec(ax.len());
            let y = ax.iter().zip(&noise).map(|(a, z)| a + eta * z).collect();
            (inst.prior, Box::new(op), y)
        };
    let (post, _) = prior.posterior_and_evidence(op.as_ref(), &y, eta)?;
    let (reference, floors) = exact_reference(&post, N, 20_000)?;
    Ok(Case {
        name,
        prior,
        op,
        y,
        eta,
        reference,
        floors,
    })
}

/// `(sliced W2 / floor, evaluations per sample)`; a diverged run counts as missing the target.
fn ratio(c: &Case, spec: &str) -> Result<(f64, u64)> {
    let yt = Tensor::from_vec(c.y.clone(), c.y.len(), &Device::Cpu)?;
    let parts = ProblemParts::mixture(&c.prior, c.op.as_ref(), &yt, c.eta);
    let t: toml::Table =
        toml::from_str(spec).map_err(|e| crate::Error::param("sampler", e.to_string()))?;
    let ctx = RunContext::new(parts, &SamplerSpec::from_table(&t)?)?;
    Ok(match ctx.run(&RunPlan::new(N, 7), &NoProgress) {
        Ok(out) => {
            let x: Vec<f64> = out.samples.flatten_all()?.to_vec1()?;
            let m = c.reference.evaluate(&x)?.with_floor(&c.floors);
            (
                m.sw2.value / m.sw2.floor_mean,
                out.diagnostics.score_evals_per_sample.max,
            )
        }
        Err(crate::Error::Diverged { .. }) => (f64::INFINITY, 0),
        Err(e) => return Err(e),
    })
}

/// Runs the sweep (`quick`: compressed sensing at eta = 0.01 only), calling `each` on every row.
pub fn run(quick: bool, mut each: impl FnMut(&IntegratorRow)) -> Result<Vec<IntegratorRow>> {
    let etas: &[f64] = if quick { &[0.01] } else { &[0.1, 0.01, 0.001] };
    let problems: &[&'static str] = if quick {
        &["cs d=64 m=32"]
    } else {
        &["cs d=64 m=32", "inpaint d=256 m=128"]
    };
    let mut rows = Vec::new();
    for &eta in etas {
        for &problem in problems {
            let c = case(problem, eta)?;
            for sampler in ["annealed", "ula"] {
                for integrator in ["euler", "exact-likelihood"] {
                    let mut curve = Vec::new();
                    let mut hit = None;
                    for k in 0..BUDGETS {
                        let spec = if sampler == "annealed" {
                            format!(
                                "kind = \"annealed\"\ninit = \"exact-prior\"\nstages = 10\nsteps_per_stage = {}\nintegrator = \"{integrator}\"",
                                5usize << k
                            )
                        } else {
                            format!(
                                "kind = \"ula\"\ninit = \"exact-prior\"\nsteps = {}\nintegrator = \"{integrator}\"",
                                45usize << k
                            )
                        };
                        let (r, e) = ratio(&c, &spec)?;
                        let e = if e == 0 { 45u64 << k } else { e };
                        curve.push((e, r));
                        if r <= TARGET {
                            hit = Some(e);
                            break;
                        }
                    }
                    let row = IntegratorRow {
                        problem: c.name.into(),
                        eta,
                        sampler: if sampler == "annealed" {
                            "Alg. 1 (10 stages)".into()
                        } else {
                            "ULA".into()
                        },
                        integrator: integrator.into(),
                        curve,
                        evals_to_target: hit,
                    };
                    each(&row);
                    rows.push(row);
                }
            }
        }
    }
    Ok(rows)
}

/// The markdown table: one line per (problem, eta, sampler), Euler and exact-likelihood side by
/// side.
pub fn markdown(rows: &[IntegratorRow]) -> String {
    let mut s = String::from(
        "| problem | eta | sampler | Euler: evaluations to 1.2x (ratio there) | exact-likelihood: evaluations to 1.2x (ratio there) |\n|---|---:|---|---:|---:|\n",
    );
    for pair in rows.chunks(2) {
        if let [e, x] = pair {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                e.problem,
                e.eta,
                e.sampler,
                e.cell(),
                x.cell()
            ));
        }
    }
    s
}
