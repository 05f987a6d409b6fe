//! Every sample owns its randomness (docs/algorithms.md): sample `i` of a run with seed `s` is the same
//! whether it runs in a batch of 10 (`SampleStreams::new(s, 20..30)`) or inside a batch of 50
//! (`SampleStreams::range(s, 50)`), for Algorithm 1 and DPS.
//!
//! Tolerance 1e-9 (absolute, entries are O(1)): the same arithmetic on the same row, up to
//! batch-size-dependent blocking of matrix products, which moves results by a few ulps per step.
//! The companion shows the comparison is sensitive: the same rows under different stream indices
//! (as a batch that forgot its global offset would draw) differ by far more than 1e-9.

mod common;

use candle_core::Tensor;
use common::*;
use diffpost::rng::SampleStreams;
use diffpost::sampler::diffusion::DiffusionConfig;
use diffpost::sampler::settings::Start;
use diffpost::sampler::*;

const TOL: f64 = 1e-9;
const SEED: u64 = 42;

fn instance() -> (
    diffpost::problem::Instance,
    diffpost::operator::Dense,
    Tensor,
) {
    let inst = diffpost::problem::random_gmm_instance(30, 15, 1, 0.1, 0).unwrap();
    let op = diffpost::operator::Dense::new(inst.a.clone()).unwrap();
    let y = Tensor::from_vec(
        inst.y.iter().copied().collect::<Vec<_>>(),
        15,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    (inst, op, y)
}

/// A short Algorithm 1 (the property does not depend on the length): 5 stages of 40 steps after
/// a 50-step diffusion start.
fn annealed_rows(streams: &mut SampleStreams) -> Vec<f64> {
    let (inst, op, y) = instance();
    let p = Problem::new(&inst.prior, &op, &y, inst.eta).unwrap();
    let cfg = annealed::AnnealedConfig {
        stages: 5,
        steps_per_stage: 40,
        start: Start::diffusion(&DiffusionConfig {
            steps: 50,
            ..Default::default()
        }),
        ..Default::default()
    };
    to_rows(
        &annealed::sample(&p, Some(&inst.prior), &cfg, streams, &Silent)
            .unwrap()
            .samples,
    )
}

/// DPS with 100 respaced steps.
fn dps_rows(streams: &mut SampleStreams) -> Vec<f64> {
    let (inst, op, y) = instance();
    let p = Problem::new(&inst.prior, &op, &y, inst.eta).unwrap();
    let cfg = dps::DpsConfig {
        steps: 100,
        ..Default::default()
    };
    to_rows(&dps::sample(&p, &cfg, streams, &Silent).unwrap().samples)
}

/// Largest absolute difference between rows 20..30 of the batch of 50 and the batch of 10 drawn
/// with stream indices `small` (20..30 is right; anything else is the broken variant).
fn max_diff(run: fn(&mut SampleStreams) -> Vec<f64>, small: std::ops::Range<u64>) -> f64 {
    let d = 30;
    let big = run(&mut SampleStreams::range(SEED, 50));
    let part = run(&mut SampleStreams::new(SEED, small));
    big[20 * d..30 * d]
        .iter()
        .zip(&part)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
}

#[test]
fn annealed_sample_does_not_depend_on_batch() {
    let e = max_diff(annealed_rows, 20..30);
    println!("annealed batch 10 vs 50: max |diff| {e:.2e}");
    assert!(e <= TOL, "{e}");
}

#[test]
fn annealed_batch_check_detects_wrong_streams() {
    let e = max_diff(annealed_rows, 0..10);
    assert!(e > TOL, "{e}");
}

#[test]
fn dps_sample_does_not_depend_on_batch() {
    let e = max_diff(dps_rows, 20..30);
    println!("dps batch 10 vs 50: max |diff| {e:.2e}");
    assert!(e <= TOL, "{e}");
}

#[test]
fn dps_batch_check_detects_wrong_streams() {
    let e = max_diff(dps_rows, 0..10);
    assert!(e > TOL, "{e}");
}
