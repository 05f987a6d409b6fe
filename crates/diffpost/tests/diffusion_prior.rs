//! Unconditional diffusion (reverse VE SDE and probability-flow ODE with Heun) against exact prior
//! samples, with tolerances from the exact-vs-exact noise floor; and the autograd gradient DPS uses.

use candle_core::{Device, Tensor, Var, D};
use diffpost::metrics::{noise_floor, Reference};
use diffpost::operator::{Dense, LinearOperator};
use diffpost::prior::{Denoiser, ExactSample, GaussianMixture};
use diffpost::rng::SampleStreams;
use diffpost::sampler::diffusion::{self, DiffusionConfig, Solver};
use diffpost::sampler::Silent;

const N: usize = 2000;

fn reference(g: &GaussianMixture) -> (Reference, diffpost::metrics::MetricFloors) {
    let d = g.dim();
    let refs: Vec<f64> = g
        .sample_exact(&mut SampleStreams::new(9, 0..20000))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let cov = g.covariance();
    let r = Reference::new(
        refs,
        d,
        g.mean().iter().copied().collect(),
        cov.transpose().iter().copied().collect(),
        50,
        2,
        2000,
    )
    .unwrap();
    let f = noise_floor(
        &r,
        |rep| {
            Ok(
                g.sample_exact(&mut SampleStreams::new(500 + rep as u64, 0..N as u64))?
                    .flatten_all()?
                    .to_vec1()?,
            )
        },
        10,
    )
    .unwrap();
    (r, f)
}

fn sw2_of(g: &GaussianMixture, cfg: &DiffusionConfig, r: &Reference) -> (f64, u64) {
    let out = diffusion::sample(g, cfg, &mut SampleStreams::range(4, N), &Silent).unwrap();
    (
        r.evaluate(&out.samples.flatten_all().unwrap().to_vec1::<f64>().unwrap())
            .unwrap()
            .sw2,
        out.score_evals,
    )
}

#[test]
fn reverse_sde_and_heun_sample_the_prior() {
    // Three overlapping components in d = 10.
    let inst = diffpost::problem::random_gmm_instance(10, 5, 3, 0.1, 11).unwrap();
    let (r, f) = reference(&inst.prior);
    // Tolerance: floor mean + 4 floor sd (the exact-vs-exact spread at n = 2000).
    let tol = f.sw2.floor_mean + 4.0 * f.sw2.floor_sd;
    let sde = DiffusionConfig {
        init_method: Solver::Sde,
        steps: 500,
        ..Default::default()
    };
    let (v, evals) = sw2_of(&inst.prior, &sde, &r);
    assert_eq!(evals, 500);
    assert!(v <= tol, "SDE sw2 {v} > {tol}");
    let heun = DiffusionConfig {
        init_method: Solver::Heun,
        steps: 40,
        ..Default::default()
    };
    let (v, evals) = sw2_of(&inst.prior, &heun, &r);
    assert_eq!(evals, 79);
    assert!(v <= tol, "Heun sw2 {v} > {tol}");
    // Broken variant: too few SDE steps (a 5-step Euler–Maruyama) must fail the same check.
    let broken = DiffusionConfig {
        init_method: Solver::Sde,
        steps: 5,
        ..Default::default()
    };
    let (v, _) = sw2_of(&inst.prior, &broken, &r);
    assert!(v > tol, "a 5-step SDE should not pass: {v} <= {tol}");
}

/// The DPS guidance gradient `grad_x sum_b |y - A D(x_b, sigma)|` by candle autograd through the
/// GMM denoiser matches central finite differences.
#[test]
fn autograd_through_gmm_denoiser_matches_finite_differences() {
    let inst = diffpost::problem::random_gmm_instance(6, 3, 3, 0.1, 5).unwrap();
    let op = Dense::new(inst.a.clone()).unwrap();
    let y = Tensor::from_vec(
        inst.y.iter().copied().collect::<Vec<_>>(),
        (1, 3),
        &Device::Cpu,
    )
    .unwrap();
    let sigma = 0.7;
    let loss = |x: &Tensor| -> Tensor {
        let r = y
            .broadcast_sub(&op.apply(&inst.prior.denoise(x, sigma).unwrap()).unwrap())
            .unwrap();
        r.sqr()
            .unwrap()
            .sum(D::Minus1)
            .unwrap()
            .sqrt()
            .unwrap()
            .sum_all()
            .unwrap()
    };
    let x0 = SampleStreams::range(3, 4)
        .randn(&[6], &Device::Cpu)
        .unwrap();
    let xv = Var::from_tensor(&x0).unwrap();
    let g = loss(xv.as_tensor()).backward().unwrap();
    let g: Vec<f64> = g
        .get(xv.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let base: Vec<f64> = x0.flatten_all().unwrap().to_vec1().unwrap();
    let h = 1e-6;
    for i in 0..base.len() {
        let mut p = base.clone();
        p[i] += h;
        let mut m = base.clone();
        m[i] -= h;
        let f = |v: Vec<f64>| {
            loss(&Tensor::from_vec(v, (4, 6), &Device::Cpu).unwrap())
                .to_scalar::<f64>()
                .unwrap()
        };
        let fd = (f(p) - f(m)) / (2.0 * h);
        assert!(
            (fd - g[i]).abs() <= 1e-5 * (1.0 + fd.abs()),
            "coordinate {i}: autograd {} vs fd {fd}",
            g[i]
        );
    }
}
