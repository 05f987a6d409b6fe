//! Evaluations per sample needed to reach 1.2x the sliced-W2 noise floor, Euler-Maruyama
//! against the exact-likelihood integrator, for Algorithm 1 and ULA on log-concave problems with
//! exact posteriors (issue 12): compressed sensing (Gaussian prior, d = 64, m = 32, dense A) and
//! inpainting (Gaussian prior, d = 256, half the coordinates observed), eta = 0.1, 0.01, 0.001.
//! Budgets double until the target is met (or the largest budget fails). n = 1000 samples,
//! exact-prior start, seed 7.
//!
//! `cargo run --release -p diffpost --example integrator_bench` (prints a markdown table).

use candle_core::{Device, Tensor};
use diffpost::metrics::exact_reference;
use diffpost::operator::{Dense, LinearOperator, Mask};
use diffpost::prior::{Denoiser, ExactSample, GaussianMixture};
use diffpost::problem::random_gmm_instance;
use diffpost::rng::SampleStreams;
use diffpost::run::{NoProgress, ProblemParts, RunContext, RunPlan};
use diffpost::sampler::spec::SamplerSpec;

const N: usize = 1000;
const TARGET: f64 = 1.2;

fn ratio(
    prior: &GaussianMixture,
    op: &dyn LinearOperator,
    y: &[f64],
    eta: f64,
    spec: &str,
    reference: &diffpost::metrics::Reference,
    floors: &diffpost::metrics::MetricFloors,
) -> (f64, u64) {
    let yt = Tensor::from_vec(y.to_vec(), y.len(), &Device::Cpu).unwrap();
    let parts = ProblemParts {
        prior: prior as &dyn Denoiser,
        analytic: Some(prior),
        perturbed: false,
        op,
        y: &yt,
        eta,
    };
    let t: toml::Table = toml::from_str(spec).unwrap();
    let out = RunContext::new(parts, &SamplerSpec::from_table(&t).unwrap())
        .unwrap()
        .run(&RunPlan::new(N, 7), &NoProgress);
    match out {
        Ok(out) => {
            let x: Vec<f64> = out.samples.flatten_all().unwrap().to_vec1().unwrap();
            let m = reference.evaluate(&x).unwrap().with_floor(floors);
            (
                m.sw2.value / m.sw2.floor_mean,
                out.diagnostics.score_evals_per_sample.max,
            )
        }
        // A diverged run counts as not reaching the target.
        Err(_) => (f64::INFINITY, 0),
    }
}

fn main() {
    println!("| problem | eta | sampler | Euler: evaluations to 1.2x (ratio there) | exact-likelihood: evaluations to 1.2x (ratio there) |");
    println!("|---|---:|---|---:|---:|");
    for eta in [0.1, 0.01, 0.001] {
        for problem in ["cs d=64 m=32", "inpaint d=256 m=128"] {
            let (prior, op, y): (GaussianMixture, Box<dyn LinearOperator>, Vec<f64>) =
                if problem.starts_with("cs") {
                    let inst = random_gmm_instance(64, 32, 1, eta, 3).unwrap();
                    (
                        inst.prior,
                        Box::new(Dense::new(inst.a).unwrap()),
                        inst.y.as_slice().to_vec(),
                    )
                } else {
                    let inst = random_gmm_instance(256, 1, 1, eta, 4).unwrap();
                    let ind: Vec<f64> = (0..256).map(|i| ((i * 7) % 2) as f64).collect();
                    let op = Mask::from_indicator(&ind).unwrap();
                    let mut s = SampleStreams::new(11, [0]);
                    let x = inst.prior.sample_exact(&mut s).unwrap();
                    let ax: Vec<f64> = op
                        .apply(&x)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1()
                        .unwrap();
                    let noise = s.normal_vec(ax.len());
                    let y = ax.iter().zip(&noise).map(|(a, z)| a + eta * z).collect();
                    (inst.prior, Box::new(op), y)
                };
            let (post, _) = prior.posterior_and_evidence(op.as_ref(), &y, eta).unwrap();
            let (reference, floors) = exact_reference(&post, N, 20_000).unwrap();
            for sampler in ["annealed", "ula"] {
                let mut cells = Vec::new();
                for integrator in ["euler", "exact-likelihood"] {
                    let mut found = None;
                    let mut last = (f64::NAN, 0);
                    for k in 0..9 {
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
                        let r = ratio(&prior, op.as_ref(), &y, eta, &spec, &reference, &floors);
                        last = r;
                        if r.0 <= TARGET {
                            found = Some(r);
                            break;
                        }
                    }
                    cells.push(match found {
                        Some((r, e)) => format!("{e} ({r:.2}x)"),
                        None => format!("> {} ({:.2}x there)", 45usize << 8, last.0),
                    });
                }
                println!(
                    "| {problem} | {eta} | {} | {} | {} |",
                    if sampler == "annealed" {
                        "Alg. 1 (10 stages)"
                    } else {
                        "ULA"
                    },
                    cells[0],
                    cells[1]
                );
            }
        }
    }
}
