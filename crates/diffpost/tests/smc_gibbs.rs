//! SMC with Gibbs moves against exact multimodal posteriors: a 3-component mixture with modes 8 sd
//! apart (d = 10) and the 8x8-digits mixture with the left 5 columns hidden (three classes share
//! the posterior). At its defaults (4 populations pooled) and n = 1000, over seeds 1, 2, 3: every
//! run's mode-weight TV <= 0.05 and evidence within 0.5 nats of the exact `log p(y)`; the median
//! run's TV within 3 floor sd of the floor (the same metric between two exact sample sets of
//! 1000) and its sliced W2 <= 1.5x the floor. One run in a few misses the 3-sd band by itself (seed
//! 1 on the separated mixture: TV 0.019 against the bound 0.023, sliced W2 1.57x), hence the
//! median. Companions that must fail the single-run check and exceed TV 0.05 (seed 1): weights
//! never applied; `x | z` drawn at 1.5 rho (measured: TV 0.11-0.14).

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use diffpost::metrics::{
    exact_reference, mode_weight_tv_with_floor, MetricFloors, Reference, WithFloor,
};
use diffpost::operator::{Dense, LinearOperator};
use diffpost::prior::GaussianMixture;
use diffpost::rng::SampleStreams;
use diffpost::run::{NoProgress, ProblemParts, RunContext, RunOutput, RunPlan};
use diffpost::sampler::smc_gibbs::{self, Fault, SmcGibbsConfig};
use diffpost::sampler::spec::SamplerSpec;
use diffpost::sampler::Problem;

const N: usize = 1000;

struct Case {
    prior: GaussianMixture,
    op: Box<dyn LinearOperator>,
    y: Tensor,
    eta: f64,
    post: GaussianMixture,
    log_z: f64,
    reference: Reference,
    floors: MetricFloors,
}

impl Case {
    fn new(prior: GaussianMixture, op: Box<dyn LinearOperator>, y: Vec<f64>, eta: f64) -> Self {
        let (post, log_z) = prior.posterior_and_evidence(op.as_ref(), &y, eta).unwrap();
        let (reference, floors) = exact_reference(&post, N, 20_000).unwrap();
        let m = y.len();
        Case {
            prior,
            op,
            y: Tensor::from_vec(y, m, &Device::Cpu).unwrap(),
            eta,
            post,
            log_z,
            reference,
            floors,
        }
    }

    fn run(&self, spec: &str, seed: u64) -> RunOutput {
        let t: toml::Table = toml::from_str(spec).unwrap();
        let spec = SamplerSpec::from_table(&t).unwrap();
        RunContext::new(
            ProblemParts::mixture(&self.prior, self.op.as_ref(), &self.y, self.eta),
            &spec,
        )
        .unwrap()
        .run(&RunPlan::new(N, seed), &NoProgress)
        .unwrap()
    }

    fn check(&self, x: &Tensor) -> (f64, WithFloor) {
        let m = self
            .reference
            .evaluate(&x.flatten_all().unwrap().to_vec1().unwrap())
            .unwrap()
            .with_floor(&self.floors);
        let tv = mode_weight_tv_with_floor(&self.post, x, 10).unwrap();
        (m.sw2.value / m.sw2.floor_mean, tv)
    }

    fn passes(&self, x: &Tensor, label: &str) -> bool {
        let (r, tv) = self.check(x);
        let ok = tv.value <= tv.floor_mean + 3.0 * tv.floor_sd && tv.value <= 0.05 && r <= 1.5;
        eprintln!(
            "{label}: sliced W2 {r:.2}x floor, mode TV {:.4} (floor {:.4} ± {:.4}) -> {}",
            tv.value,
            tv.floor_mean,
            tv.floor_sd,
            if ok { "pass" } else { "fail" }
        );
        ok
    }
}

fn separated() -> Case {
    let inst = diffpost::problem::separated_gmm_instance(10, 3, 0.3, 1).unwrap();
    let op = Box::new(Dense::new(inst.a.clone()).unwrap());
    Case::new(inst.prior, op, inst.y.as_slice().to_vec(), inst.eta)
}

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../data")
        .join(name)
}

fn digits() -> Case {
    let prior = GaussianMixture::from_npz(data("digits_gmm.npz")).unwrap();
    let spec = toml::from_str("kind = \"box\"\ntop = 0\nleft = 0\nheight = 8\nwidth = 5").unwrap();
    let inst =
        diffpost::problem::digits_instance(prior, &data("digits_test100.npy"), 2, &spec, 0.3, 0)
            .unwrap();
    Case::new(inst.prior, inst.op, inst.y, inst.eta)
}

/// `(every run's TV <= 0.05 and evidence within 0.5 nats, median run passes)` over 3 seeds.
fn passes_over_seeds(c: &Case, name: &str, run: impl Fn(u64) -> (Tensor, Option<f64>)) -> bool {
    let mut ok_all = true;
    let mut results = Vec::new();
    for seed in 1..=3u64 {
        let (x, lz) = run(seed);
        let (r, tv) = c.check(&x);
        let dz = lz.map(|l| l - c.log_z);
        eprintln!(
            "{name} seed {seed}: sliced W2 {r:.2}x floor, mode TV {:.4} (floor {:.4} ± {:.4}), evidence error {dz:?}",
            tv.value, tv.floor_mean, tv.floor_sd
        );
        ok_all &= tv.value <= 0.05 && dz.is_none_or(|d| d.abs() < 0.5);
        results.push(c.passes(&x, name));
    }
    let median = results.iter().filter(|p| **p).count() >= 2;
    ok_all && median
}

#[test]
fn gibbs_smc_gets_mode_weights_and_evidence_on_small_mixtures() {
    for (name, c) in [("separated", separated()), ("digits 8x8", digits())] {
        let good = passes_over_seeds(&c, name, |seed| {
            let out = c.run("kind = \"smc-gibbs\"", seed);
            (out.samples, out.diagnostics.log_evidence())
        });
        assert!(good, "{name}");
        let problem = Problem::new(&c.prior, c.op.as_ref(), &c.y, c.eta).unwrap();
        for fault in [Fault::NoWeights, Fault::WrongRho] {
            let b = smc_gibbs::sample_with_fault(
                &problem,
                &SmcGibbsConfig::default(),
                fault,
                &mut SampleStreams::range(1, N),
            )
            .unwrap();
            let (_, tv) = c.check(&b.samples);
            assert!(!c.passes(&b.samples, &format!("{name} {fault:?}")));
            assert!(tv.value > 0.05, "{name} {fault:?}: TV {}", tv.value);
        }
    }
}

#[test]
fn pools_do_not_depend_on_batch_threads_or_shards() {
    use diffpost::run::Shard;
    let c = separated();
    let spec = SamplerSpec::from_table(
        &toml::from_str::<toml::Table>(
            "kind = \"smc-gibbs\"\nparticles = 50\npopulations = 2\nsweeps = 3\nfinal_moves = 5",
        )
        .unwrap(),
    )
    .unwrap();
    let ctx = RunContext::new(
        ProblemParts::mixture(&c.prior, c.op.as_ref(), &c.y, c.eta),
        &spec,
    )
    .unwrap();
    let plan = RunPlan::new(200, 7);
    let whole = ctx.run(&plan, &NoProgress).unwrap();
    let rows = |t: &Tensor| -> Vec<f64> { t.flatten_all().unwrap().to_vec1().unwrap() };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let one = pool.install(|| ctx.run(&plan, &NoProgress).unwrap());
    assert_eq!(rows(&whole.samples), rows(&one.samples));
    let b = ctx
        .run(
            &RunPlan {
                batch: Some(7),
                ..plan
            },
            &NoProgress,
        )
        .unwrap();
    assert_eq!(rows(&whole.samples), rows(&b.samples));
    let mut parts = vec![];
    for k in 0..2 {
        let o = ctx
            .run(
                &RunPlan {
                    shard: Shard::new(k, 2).unwrap(),
                    ..plan
                },
                &NoProgress,
            )
            .unwrap();
        parts.extend(rows(&o.samples));
    }
    assert_eq!(rows(&whole.samples), parts);
    // 4 pools of 50 samples, 2 populations each.
    assert_eq!(whole.diagnostics.log_evidence_populations.len(), 8);
}

#[test]
fn operators_without_a_spectrum_and_bad_settings_are_refused() {
    let c = separated();
    for (table, key) in [
        ("kind = \"smc-gibbs\"\ness_target = 1.0", "ess_target"),
        ("kind = \"smc-gibbs\"\npopulations = 0", "populations"),
        ("kind = \"smc-gibbs\"\nsde_ratio = 1.0", "sde_ratio"),
        ("kind = \"smc-gibbs\"\nrho_max = -1.0", "rho_max"),
    ] {
        let e = SamplerSpec::from_table(&toml::from_str::<toml::Table>(table).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{table}: {e}");
    }
    // Multi-coil MRI has no eigen-decomposition of A^T A.
    let mut s = SampleStreams::range(9, 2);
    let v = s.normal_vec(2 * 8 * 6);
    let n = 2 * 8 * 6;
    let op =
        diffpost::operator::image::Mri::multicoil([1, 8, 6], &v[..n], &v[n..], 2.0, 2, 1).unwrap();
    let prior = GaussianMixture::isotropic(vec![0.0; 48], 1.0).unwrap();
    let y = Tensor::zeros(op.out_dim(), candle_core::DType::F64, &Device::Cpu).unwrap();
    let spec =
        SamplerSpec::from_table(&toml::from_str::<toml::Table>("kind = \"smc-gibbs\"").unwrap())
            .unwrap();
    let e = RunContext::new(ProblemParts::mixture(&prior, &op, &y, 0.1), &spec)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("A^T A"), "{e}");
    let _ = c;
}

/// `x | z` through the denoiser alone (what a network offers): the reverse SDE from `sigma = rho`.
/// On the separated mixture its samples get the mode weights (TV 0.004 at `sde_ratio = 1.15`, four
/// populations, 5 sweeps; measured). Its discretisation biases the evidence (+0.46 nats at
/// `sde_ratio = 1.15`, +0.12 at 1.05, one population; the exact `x | z`: within 0.1): the test
/// checks the bias shrinks with the grid.
#[test]
fn the_denoiser_only_move_gets_the_modes_and_converges_with_its_grid() {
    let c = separated();
    let out = c.run("kind = \"smc-gibbs\"\nxz = \"sde\"\nsweeps = 5", 1);
    assert!(c.passes(&out.samples, "smc-gibbs, x | z by the SDE"));
    let dz = |ratio: f64| {
        let o = c.run(
            &format!("kind = \"smc-gibbs\"\nxz = \"sde\"\nsweeps = 5\npopulations = 1\nsde_ratio = {ratio}"),
            1,
        );
        o.diagnostics.log_evidence().unwrap() - c.log_z
    };
    let (coarse, fine) = (dz(1.15), dz(1.05));
    eprintln!("evidence error: sde_ratio 1.15 {coarse:+.3}, 1.05 {fine:+.3}");
    assert!(
        fine.abs() < coarse.abs() && fine.abs() < 0.3,
        "{coarse} {fine}"
    );
}
