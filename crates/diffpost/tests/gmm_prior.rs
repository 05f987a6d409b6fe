//! Closed-form checks of the Gaussian-mixture prior (no Monte Carlo): the smoothed score against a
//! finite-difference gradient of the smoothed log-density, Tweedie's denoiser, and the exact
//! posterior against the information form computed independently with nalgebra.
//!
//! These are deterministic numerical identities, so their tolerances come from floating-point and
//! finite-difference error, not from a Monte-Carlo floor; each one is shown to reject a slightly
//! wrong variant (a 5% error in sigma, a 1% error in eta, a wrong power of sigma).

mod common;

use candle_core::{Device, Tensor};
use nalgebra::{DMatrix, DVector};

use diffpost::operator::Dense;
use diffpost::prior::{Denoiser, GaussianMixture, LogDensity};
use diffpost::rng::SampleStreams;

/// `GaussianMixture` with every covariance `S_k + sigma^2 I`: the smoothed prior `p_sigma`,
/// built independently of the library's smoothing code.
fn smoothed_mixture(p: &GaussianMixture, sigma: f64) -> GaussianMixture {
    let d = p.dim();
    let comps = p.components_dense();
    GaussianMixture::new(
        comps.iter().map(|c| c.0).collect(),
        comps
            .iter()
            .map(|c| c.1.iter().copied().collect())
            .collect(),
        comps
            .iter()
            .map(|c| &c.2 + DMatrix::identity(d, d) * (sigma * sigma))
            .collect(),
    )
    .unwrap()
}

fn row(x: &[f64]) -> Tensor {
    Tensor::from_vec(x.to_vec(), (1, x.len()), &Device::Cpu).unwrap()
}

fn log_density(p: &GaussianMixture, x: &[f64]) -> f64 {
    let (lp, _) = p.log_density_and_score(&row(x)).unwrap();
    lp.to_vec1::<f64>().unwrap()[0]
}

/// Central finite-difference gradient of `log p_sigma` at `x` (step `h`).
fn fd_grad(p_sigma: &GaussianMixture, x: &[f64], h: f64) -> Vec<f64> {
    (0..x.len())
        .map(|j| {
            let mut xp = x.to_vec();
            let mut xm = x.to_vec();
            xp[j] += h;
            xm[j] -= h;
            (log_density(p_sigma, &xp) - log_density(p_sigma, &xm)) / (2.0 * h)
        })
        .collect()
}

fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let num: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum::<f64>();
    let den: f64 = b.iter().map(|y| y * y).sum::<f64>();
    (num / den).sqrt()
}

/// Largest relative error of the library score against the finite-difference gradient, over a few
/// points and the levels `sigmas`; `score_sigma_factor` != 1 is the broken variant (the library
/// score evaluated at a wrong level).
fn max_score_fd_error(score_sigma_factor: f64) -> f64 {
    let inst = diffpost::problem::random_gmm_instance(10, 5, 3, 0.3, 0).unwrap();
    let p = inst.prior;
    let d = p.dim();
    let pts = SampleStreams::new(11, 0..4).normal_vec(d);
    let mut worst: f64 = 0.0;
    for &sigma in &[0.1, 0.5, 2.0] {
        let ps = smoothed_mixture(&p, sigma);
        for x in pts.chunks(d) {
            let s: Vec<f64> = p
                .score(&row(x), sigma * score_sigma_factor)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let fd = fd_grad(&ps, x, 1e-5);
            worst = worst.max(rel_err(&s, &fd));
        }
    }
    worst
}

/// Tolerance of the finite-difference check: the central difference has truncation error
/// `h^2/6 |f'''| ~ 1e-11` and round-off `eps |log p| / h ~ 1e-10` for `h = 1e-5` and these O(1)
/// curvatures; 1e-6 relative leaves four orders of magnitude for both.
const FD_TOL: f64 = 1e-6;

#[test]
fn gmm_score_matches_fd_gradient_of_smoothed_log_density() {
    let e = max_score_fd_error(1.0);
    println!("GMM score vs FD: max relative error {e:.2e} (tol {FD_TOL:.0e})");
    assert!(e < FD_TOL, "score vs finite differences: {e}");
}

/// Companion: the score at a 5% wrong level is rejected by the same tolerance.
#[test]
fn gmm_score_fd_check_rejects_wrong_level() {
    let e = max_score_fd_error(1.05);
    println!("GMM score at 1.05 sigma vs FD: max relative error {e:.2e}");
    assert!(e > FD_TOL, "the FD check must reject a 5% wrong sigma: {e}");
}

/// Largest relative deviation of `denoise(x, sigma)` from `x + sigma^power score(x, sigma)`.
fn max_tweedie_error(power: i32) -> f64 {
    let inst = diffpost::problem::random_gmm_instance(10, 5, 3, 0.3, 0).unwrap();
    let p = inst.prior;
    let x = Tensor::from_vec(
        SampleStreams::new(12, 0..8).normal_vec(10),
        (8, 10),
        &Device::Cpu,
    )
    .unwrap();
    let mut worst: f64 = 0.0;
    for &sigma in &[0.05, 0.5, 3.0] {
        let den: Vec<f64> = p
            .denoise(&x, sigma)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let tw: Vec<f64> = (&x + (p.score(&x, sigma).unwrap() * sigma.powi(power)).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        worst = worst.max(rel_err(&den, &tw));
    }
    worst
}

/// Tweedie is an identity in floating point up to a few ulps of the O(1) entries: 1e-12.
const TWEEDIE_TOL: f64 = 1e-12;

#[test]
fn gmm_denoise_is_tweedie() {
    let e = max_tweedie_error(2);
    println!("denoise vs x + sigma^2 score: {e:.2e}");
    assert!(e < TWEEDIE_TOL, "{e}");
}

/// Companion: the same check with `sigma^1` instead of `sigma^2` fails.
#[test]
fn gmm_tweedie_check_rejects_wrong_power() {
    let e = max_tweedie_error(1);
    assert!(e > TWEEDIE_TOL, "{e}");
}

/// Relative errors (mean, covariance) of the library posterior (Kalman/Joseph form) against the
/// information form `C = (S^-1 + A^T A/eta'^2)^-1`, `m = C (S^-1 mu + A^T y/eta'^2)` computed here
/// with nalgebra, for `eta' = eta * eta_factor` (`!= 1`: the broken variant).
fn info_form_errors(eta_factor: f64) -> (f64, f64) {
    let inst = diffpost::problem::random_gmm_instance(30, 15, 1, 0.1, 0).unwrap();
    let d = 30;
    let s = inst.prior.cov(0);
    // A non-zero prior mean, so the mean formula is exercised.
    let mu = DVector::from_vec(SampleStreams::new(13, [0]).normal_vec(d)) * 0.5;
    let prior = GaussianMixture::new(
        vec![1.0],
        vec![mu.iter().copied().collect()],
        vec![s.clone()],
    )
    .unwrap();
    let op = Dense::new(inst.a.clone()).unwrap();
    let post = prior.posterior(&op, inst.y.as_slice(), inst.eta).unwrap();
    assert_eq!(post.k(), 1);
    let e2 = (inst.eta * eta_factor).powi(2);
    let sinv = s.try_inverse().unwrap();
    let prec = &sinv + inst.a.transpose() * &inst.a / e2;
    let c = prec.try_inverse().unwrap();
    let m = &c * (&sinv * &mu + inst.a.transpose() * &inst.y / e2);
    let em = (post.mean() - &m).norm() / m.norm();
    let ec = (post.covariance() - &c).norm() / c.norm();
    (em, ec)
}

/// The two forms agree to round-off: the condition number of the posterior precision is about
/// `(4 + ||A||^2/eta^2) / 1 ~ 600`, so errors of order `600 * 1e-16` are expected; 1e-9 leaves
/// a wide margin and still rejects a 1% change of eta by orders of magnitude.
const INFO_TOL: f64 = 1e-9;

#[test]
fn gaussian_posterior_matches_information_form() {
    let (em, ec) = info_form_errors(1.0);
    println!("posterior vs information form: mean {em:.2e}, cov {ec:.2e}");
    assert!(em < INFO_TOL && ec < INFO_TOL, "mean {em}, cov {ec}");
}

/// Companion: the information form for a 1% wrong eta is rejected.
#[test]
fn information_form_check_rejects_wrong_eta() {
    let (em, ec) = info_form_errors(1.01);
    println!("posterior vs information form at 1.01 eta: mean {em:.2e}, cov {ec:.2e}");
    assert!(em > INFO_TOL && ec > INFO_TOL, "mean {em}, cov {ec}");
}
