//! Criterion benches: the exact GMM score (batch 10,000, d = 100, K = 10, full covariances; about
//! 2e9 flops) and Algorithm 1 on the demo problem. Run: `cargo bench -p diffpost --bench score`.
//! The numpy reference for the score is `tools/bench_score_numpy.py`.

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use diffpost::operator::Dense;
use diffpost::prior::Denoiser;
use diffpost::rng::SampleStreams;
use diffpost::sampler::{annealed, Problem, Silent};

fn gmm_score(c: &mut Criterion) {
    let inst = diffpost::problem::random_gmm_instance(100, 1, 10, 0.1, 7).unwrap();
    let x = SampleStreams::range(3, 10_000)
        .randn(&[100], &Device::Cpu)
        .unwrap();
    let _ = inst.prior.score(&x, 0.5).unwrap();
    let mut g = c.benchmark_group("gmm_score_b10000_d100_k10_full");
    g.sample_size(20);
    g.bench_function("fused", |b| b.iter(|| inst.prior.score(&x, 0.5).unwrap()));
    g.bench_function("generic_candle_ops", |b| {
        b.iter(|| inst.prior.score_generic(&x, 0.5).unwrap())
    });
    // The GEMM alone ([10000,100] x [100,1000]) for reference.
    let pc = Tensor::randn(0f64, 1.0, (100, 1000), &Device::Cpu).unwrap();
    g.bench_function("gemm_only", |b| b.iter(|| x.matmul(&pc).unwrap()));
    g.finish();
}

fn annealed_demo(c: &mut Criterion) {
    let inst = diffpost::problem::random_gmm_instance(20, 10, 1, 0.1, 2024).unwrap();
    let op = Dense::new(inst.a.clone()).unwrap();
    let y = Tensor::from_vec(inst.y.iter().copied().collect::<Vec<_>>(), 10, &Device::Cpu).unwrap();
    let problem = Problem::new(&inst.prior, &op, &y, 0.1).unwrap();
    let cfg = annealed::AnnealedConfig::default();
    let mut g = c.benchmark_group("annealed_demo_d20_m10");
    g.sample_size(10);
    g.bench_function("n500_default_8100_evals", |b| {
        b.iter(|| {
            annealed::sample(
                &problem,
                Some(&inst.prior),
                &cfg,
                &mut SampleStreams::range(1, 500),
                &Silent,
            )
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, gmm_score, annealed_demo);
criterion_main!(benches);
