//! Algorithm 2 (local sampler) and Algorithm 3 (competitive compressed sensing) on the Gaussian
//! instance `random_gmm_instance(30, 15, 1, 0.1, 0)`, plus the tilted prior's closed-form score.

mod common;

use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use nalgebra::{DMatrix, DVector};

use common::*;
use diffpost::metrics::{MetricFloors, Metrics, Reference};
use diffpost::operator::Dense;
use diffpost::prior::{Denoiser, GaussianMixture, GaussianTilted};
use diffpost::rng::SampleStreams;
use diffpost::sampler::annealed::AnnealedConfig;
use diffpost::sampler::cs::{self, CsConfig, EstimatorKind};
use diffpost::sampler::local::{self, LocalConfig};
use diffpost::sampler::settings::ScoreLevel;
use diffpost::sampler::{Output, Silent};

static BENCH: OnceLock<Bench> = OnceLock::new();
fn bench() -> &'static Bench {
    shared(&BENCH, gaussian_bench)
}

fn row_tensor(v: &DVector<f64>) -> Tensor {
    Tensor::from_vec(
        v.iter().copied().collect::<Vec<_>>(),
        (1, v.len()),
        &Device::Cpu,
    )
    .unwrap()
}

/// 1.3 x floor_mean for sliced W2 (as for Algorithm 1), floor_mean + 4 floor_sd for the moments.
fn at_floor(m: &Metrics, f: &MetricFloors) -> bool {
    m.sw2 <= 1.3 * f.sw2.floor_mean
        && m.mean_err <= floor_plus(&f.mean_err, 4.0)
        && m.cov_err <= floor_plus(&f.cov_err, 4.0)
}

// ---------------------------------------------------------------------------------------------
// The tilted prior's score against the closed form for a Gaussian prior.

/// Max relative error of `GaussianTilted(N(mu, S), x0, sigma_lib).score(z, t)` against the closed
/// form for `sigma`: `p_x0 = N(m, C)`, `C = (S^-1 + I/sigma^2)^-1`, `m = C (S^-1 mu + x0/sigma^2)`,
/// and smoothed at `t` its score is `-(C + t^2 I)^-1 (z - m)`; over a few `z` and `t` (0 included).
fn tilted_score_error(sigma_lib: f64) -> f64 {
    let inst = diffpost::problem::random_gmm_instance(30, 15, 1, 0.1, 0).unwrap();
    let d = 30;
    let s = inst.prior.cov(0);
    let mu = DVector::from_vec(SampleStreams::new(21, [0]).normal_vec(d)) * 0.5;
    let prior = GaussianMixture::new(
        vec![1.0],
        vec![mu.iter().copied().collect()],
        vec![s.clone()],
    )
    .unwrap();
    let x0 = DVector::from_vec(SampleStreams::new(22, [0]).normal_vec(d));
    let sigma = 0.4;
    let tilted = GaussianTilted::new(&prior, row_tensor(&x0), sigma_lib).unwrap();
    let sinv = s.try_inverse().unwrap();
    let eye = DMatrix::<f64>::identity(d, d);
    let c = (&sinv + &eye / (sigma * sigma)).try_inverse().unwrap();
    let m = &c * (&sinv * &mu + &x0 / (sigma * sigma));
    let zs = SampleStreams::new(23, 0..5).normal_vec(d);
    let z = Tensor::from_vec(zs.clone(), (5, d), &Device::Cpu).unwrap();
    let mut worst: f64 = 0.0;
    for &t in &[0.0, 0.05, 0.4, 2.0, 10.0] {
        let got: Vec<f64> = to_rows(&tilted.score(&z, t).unwrap());
        let prec_t = (&c + &eye * (t * t)).try_inverse().unwrap();
        for (i, zi) in zs.chunks(d).enumerate() {
            let want = -(&prec_t * (DVector::from_column_slice(zi) - &m));
            let g = &got[i * d..(i + 1) * d];
            let num: f64 = g
                .iter()
                .zip(want.iter())
                .map(|(a, b)| (a - b).powi(2))
                .sum();
            worst = worst.max((num / want.norm_squared()).sqrt());
        }
    }
    worst
}

/// A closed-form identity: round-off only (condition numbers here are < 1e3), so 1e-9 relative.
const TILT_TOL: f64 = 1e-9;

#[test]
fn tilted_score_matches_closed_form() {
    let e = tilted_score_error(0.4);
    println!("tilted score vs closed form: {e:.2e}");
    assert!(e < TILT_TOL, "{e}");
}

/// Companion: a tilted prior built with a 5% wrong sigma is rejected.
#[test]
fn tilted_score_check_rejects_wrong_sigma() {
    let e = tilted_score_error(0.42);
    println!("tilted score (sigma 5% off) vs closed form: {e:.2e}");
    assert!(e > TILT_TOL, "{e}");
}

// ---------------------------------------------------------------------------------------------
// Algorithm 2 against the exact p(x | y, x0).

/// Warm-start noise of the Algorithm 2 test.
const SIGMA: f64 = 0.3;

struct LocalTarget {
    x0: DVector<f64>,
    reference: Reference,
    floors: MetricFloors,
}

static LOCAL: OnceLock<LocalTarget> = OnceLock::new();

/// `x0 = x_true + SIGMA xi` (a warm start of the assumed quality) and the exact
/// `p(x | y, x0)`: the posterior under the stacked whitened operator `[A/eta; I/sigma]` with
/// measurement `[y/eta; x0/sigma]` and unit noise, with its reference and floors.
fn local_target() -> &'static LocalTarget {
    LOCAL.get_or_init(|| {
        let b = bench();
        let d = b.d();
        let m = b.a.nrows();
        let xi = DVector::from_vec(SampleStreams::new(31, [0]).normal_vec(d));
        let x0 = &b.x_true + xi * SIGMA;
        let mut stacked = DMatrix::<f64>::zeros(m + d, d);
        stacked.rows_mut(0, m).copy_from(&(&b.a / b.eta));
        stacked
            .rows_mut(m, d)
            .copy_from(&(DMatrix::<f64>::identity(d, d) / SIGMA));
        let mut ys = DVector::<f64>::zeros(m + d);
        ys.rows_mut(0, m).copy_from(&(&b.y_vec / b.eta));
        ys.rows_mut(m, d).copy_from(&(&x0 / SIGMA));
        let op = Dense::new(stacked).unwrap();
        let post = b.prior.posterior(&op, ys.as_slice(), 1.0).unwrap();
        let (reference, floors) = reference_and_floors(&post, 0x10ca1);
        LocalTarget {
            x0,
            reference,
            floors,
        }
    })
}

/// Algorithm 2 with the default Algorithm 1 settings, told warm-start noise `sigma_cfg`.
fn run_local(prior: &dyn Denoiser, sigma_cfg: f64) -> Metrics {
    let b = bench();
    let t = local_target();
    let p = b.problem(prior, b.eta);
    let cfg = LocalConfig {
        sigma: Some(sigma_cfg),
        ..Default::default()
    };
    let out = local::sample(
        &p,
        &row_tensor(&t.x0),
        &cfg,
        &mut SampleStreams::range(201, N),
        &Silent,
    )
    .unwrap();
    eval(&t.reference, &out)
}

/// Floor-level: sliced W2 <= 1.3 x floor_mean, moments within floor_mean + 4 floor_sd (floors of
/// exact draws of p(x | y, x0)).
#[test]
fn local_reaches_floor() {
    let t = local_target();
    let m = timed("local", || run_local(&bench().prior, SIGMA));
    report("local (Alg. 2)", &m, &t.floors);
    assert!(at_floor(&m, &t.floors), "{m:?}");
}

/// Companion: Algorithm 2 told the wrong warm-start noise (2 sigma) samples a wider law.
#[test]
fn local_check_fails_with_wrong_sigma() {
    let t = local_target();
    let m = run_local(&bench().prior, 2.0 * SIGMA);
    report("local sigma*2", &m, &t.floors);
    assert!(
        m.sw2 > 1.3 * t.floors.sw2.floor_mean,
        "sw2 {}",
        ratio(m.sw2, &t.floors.sw2)
    );
}

// ---------------------------------------------------------------------------------------------
// Algorithm 3: with sigma = R/delta large, the marginal of its outputs approximates p(x|y).
//
// For a Gaussian posterior N(m, C) (precision P) and x0' = x0 + sigma z, the output law is exactly
// N(m + C (x0 - m)/sigma^2 + O(sigma^-4), C + O(sigma^-4)): the tilt's effect on the covariance
// cancels to first order and the mean moves by C (x0 - m)/sigma^2. With R = sigma = 20, |x0 - m|
// ~ 4 (the minimum-norm least-squares estimate misses the 15-dim null space of A) and ||C|| <= 1,
// the shift is <= 0.01, i.e. <= 0.003 in units of sqrt(tr C) ~ 3: an eighth of the mean-error floor
// (0.021). So the floor-level bounds of Algorithm 1 apply unchanged.

const CS_RADIUS: f64 = 20.0;

fn run_cs(prior: &dyn Denoiser, estimator: EstimatorKind, iters: usize) -> (Metrics, Output) {
    let b = bench();
    let p = b.problem(prior, b.eta);
    let cfg = CsConfig {
        estimator,
        estimator_iters: iters,
        radius: Some(CS_RADIUS),
        delta: 1.0,
        ..Default::default()
    };
    let out = cs::sample(&p, &cfg, &mut SampleStreams::range(301, N), &Silent).unwrap();
    (b.eval(&out), out)
}

#[test]
fn cs_least_squares_marginal_is_posterior() {
    let b = bench();
    let (m, _) = timed("cs ls", || {
        run_cs(&b.prior, EstimatorKind::LeastSquares, 200)
    });
    report("cs least squares (Alg. 3)", &m, &b.floors);
    assert!(at_floor(&m, &b.floors), "{m:?}");
}

#[test]
fn cs_lasso_marginal_is_posterior() {
    let b = bench();
    let (m, _) = timed("cs lasso", || run_cs(&b.prior, EstimatorKind::Lasso, 500));
    report("cs lasso (Alg. 3)", &m, &b.floors);
    assert!(at_floor(&m, &b.floors), "{m:?}");
}

/// Companion: the same check with the score scaled by 1.5 fails.
#[test]
fn cs_check_fails_with_scaled_score() {
    let b = bench();
    let broken = BrokenScore {
        inner: &b.prior,
        scale: 1.5,
        shift: 0.0,
    };
    let (m, _) = run_cs(&broken, EstimatorKind::LeastSquares, 200);
    report("cs least squares score*1.5", &m, &b.floors);
    assert!(
        m.sw2 > 1.3 * b.floors.sw2.floor_mean,
        "sw2 {}",
        ratio(m.sw2, &b.floors.sw2)
    );
}

// ---------------------------------------------------------------------------------------------
// `final_denoise`: the same chains, then the tilted prior's Tweedie denoiser at score_sigma.

#[test]
fn final_denoise_applies_tweedie_at_the_score_level_to_the_same_chains() {
    let inst = diffpost::problem::random_gmm_instance(30, 15, 1, 0.1, 0).unwrap();
    let op = Dense::new(inst.a.clone()).unwrap();
    let y = Tensor::from_vec(
        inst.y.iter().copied().collect::<Vec<_>>(),
        inst.y.len(),
        &Device::Cpu,
    )
    .unwrap();
    let problem = diffpost::sampler::Problem::new(&inst.prior, &op, &y, inst.eta).unwrap();
    let x0 = Tensor::zeros((1, 30), candle_core::DType::F64, &Device::Cpu).unwrap();
    let s_sigma = 0.3;
    let run = |final_denoise: bool| -> Output {
        let cfg = LocalConfig {
            sigma: Some(0.5),
            start_at_x0: true,
            annealed: AnnealedConfig {
                stages: 3,
                steps_per_stage: 10,
                score: ScoreLevel {
                    score_sigma: Some(s_sigma),
                    l_prior: None,
                },
                final_denoise,
                ..Default::default()
            },
            ..Default::default()
        };
        local::sample(
            &problem,
            &x0,
            &cfg,
            &mut SampleStreams::new(5, 0..8),
            &Silent,
        )
        .unwrap()
    };
    let (plain, denoised) = (run(false), run(true));
    assert_eq!(denoised.score_evals, plain.score_evals + 1);
    let tilted = GaussianTilted::new(&inst.prior, x0.clone(), 0.5).unwrap();
    let want = tilted.denoise(&plain.samples, s_sigma).unwrap();
    let err = common::max_abs_diff(&denoised.samples, &want);
    assert!(err < 1e-12, "{err}");
    // And it changes the samples (Tweedie shrinks them): the check above cannot pass vacuously.
    let moved = common::max_abs_diff(&denoised.samples, &plain.samples);
    assert!(moved > 1e-3, "{moved}");
}
