//! The low-rank (probabilistic PCA) mixture and the mixtures' exact denoising posterior.
//!
//! - A low-rank mixture equals the same mixture built from its dense covariances: smoothed score,
//!   log-density, posterior and evidence agree to rounding (deterministic identities).
//! - Its file format round-trips.
//! - `sample_denoising_posterior(z, rho)` has mean `D(z, rho)` (Tweedie's first moment) and
//!   covariance `rho^2 dD/dz` (the second-order Tweedie identity, from finite differences of the
//!   denoiser, so independent of the sampler's formulas), for diagonal, full and low-rank
//!   covariances; tolerances from the Monte-Carlo standard errors; the same check rejects draws at
//!   a 20% wrong `rho`.

use candle_core::{Device, Tensor};
use nalgebra::{DMatrix, DVector};

use diffpost::operator::{Dense, LinearOperator};
use diffpost::prior::{Denoiser, GaussianMixture, LogDensity};
use diffpost::rng::SampleStreams;

/// A 3-component low-rank mixture in `d = 7`, `r = 2`, and its dense twin.
fn low_rank_pair() -> (GaussianMixture, GaussianMixture) {
    let d = 7;
    let r = 2;
    let mut s = SampleStreams::new(11, [0]);
    let mut us = Vec::new();
    let mut ls = Vec::new();
    let mut means = Vec::new();
    for k in 0..3 {
        let a = DMatrix::from_vec(d, r, s.normal_vec(d * r));
        let q = a.qr().q();
        us.push(q);
        ls.push(DVector::from_vec(vec![2.0 + k as f64, 0.5]));
        means.push(s.normal_vec(d).iter().map(|v| 1.5 * v).collect::<Vec<_>>());
    }
    let floors = vec![0.05, 0.1, 0.02];
    let lr = GaussianMixture::low_rank(
        vec![0.5, 0.3, 0.2],
        means.clone(),
        us.clone(),
        ls.clone(),
        floors.clone(),
    )
    .unwrap();
    let covs = (0..3).map(|i| lr.cov(i)).collect();
    let dense = GaussianMixture::new(vec![0.5, 0.3, 0.2], means, covs).unwrap();
    (lr, dense)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn low_rank_mixture_equals_its_dense_twin() {
    let (lr, dense) = low_rank_pair();
    let mut s = SampleStreams::range(3, 5);
    let x = s.randn(&[7], &Device::Cpu).unwrap();
    for sigma in [0.0, 0.1, 1.0, 5.0] {
        let a = lr.score(&x, sigma).unwrap();
        let b = dense.score(&x, sigma).unwrap();
        let scale = max_abs_diff(&b, &b.zeros_like().unwrap());
        assert!(
            max_abs_diff(&a, &b) < 1e-9 * scale.max(1.0),
            "sigma {sigma}"
        );
    }
    let (la, _) = lr.log_density_and_score(&x).unwrap();
    let (lb, _) = dense.log_density_and_score(&x).unwrap();
    assert!(max_abs_diff(&la, &lb) < 1e-9);
    assert!((lr.covariance_trace() - dense.covariance_trace()).abs() < 1e-9);
    assert!((lr.covariance_diagonal() - dense.covariance_diagonal()).amax() < 1e-12);
    // Posterior and evidence under a dense operator.
    let a = DMatrix::from_fn(3, 7, |i, j| ((i * 7 + j) as f64 * 0.37).sin());
    let op = Dense::new(a).unwrap();
    let y = [0.3, -1.0, 0.8];
    let (pa, ea) = lr.posterior_and_evidence(&op, &y, 0.2).unwrap();
    let (pb, eb) = dense.posterior_and_evidence(&op, &y, 0.2).unwrap();
    assert!((ea - eb).abs() < 1e-9, "{ea} {eb}");
    for k in 0..3 {
        assert!((pa.weights()[k] - pb.weights()[k]).abs() < 1e-10);
        assert!((pa.cov(k) - pb.cov(k)).amax() < 1e-10);
        assert!((&pa.means()[k] - &pb.means()[k]).amax() < 1e-10);
    }
    assert_eq!(op.out_dim(), 3);
}

#[test]
fn low_rank_file_round_trips_and_bad_files_are_refused() {
    let (lr, _) = low_rank_pair();
    let dir = std::env::temp_dir().join(format!("diffpost-lowrank-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("m.npz");
    lr.write_npz(&p).unwrap();
    let back = GaussianMixture::from_npz(&p).unwrap();
    for k in 0..3 {
        assert!((back.cov(k) - lr.cov(k)).amax() < 1e-12);
    }
    std::fs::remove_dir_all(&dir).unwrap();
    // Non-orthonormal eigenvectors are refused with the field's name.
    let u = DMatrix::from_element(7, 2, 1.0);
    let e = GaussianMixture::low_rank(
        vec![1.0],
        vec![vec![0.0; 7]],
        vec![u],
        vec![DVector::from_vec(vec![1.0, 1.0])],
        vec![0.1],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("eigvecs[0]") && e.contains("orthonormal"), "{e}");
    let q = DMatrix::<f64>::identity(7, 2);
    let e = GaussianMixture::low_rank(
        vec![1.0],
        vec![vec![0.0; 7]],
        vec![q],
        vec![DVector::from_vec(vec![1.0, 1.0])],
        vec![0.0],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("floor[0]"), "{e}");
}

/// The largest deviation, in Monte-Carlo standard errors, of the sample mean and covariance of
/// `n` draws of `x | z` (drawn at `rho * rho_factor`) from Tweedie's moments at `rho`.
fn denoising_posterior_z_scores(p: &GaussianMixture, rho: f64, rho_factor: f64) -> (f64, f64) {
    let d = p.dim();
    let n = 40_000;
    let z0: Vec<f64> = (0..d).map(|j| (j as f64 * 0.9).cos()).collect();
    let zrow = Tensor::from_vec(z0.clone(), (1, d), &Device::Cpu).unwrap();
    let z = zrow.repeat((n, 1)).unwrap();
    let mut s = SampleStreams::range(17, n);
    let x = p
        .sample_denoising_posterior(&z, rho * rho_factor, &mut s)
        .unwrap();
    let xs: Vec<Vec<f64>> = x.to_vec2().unwrap();
    // Tweedie: E[x | z] = D(z, rho); Cov[x | z] = rho^2 dD/dz (central differences).
    let mean: Vec<f64> = p
        .denoise(&zrow, rho)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let h = 1e-5;
    let mut cov = DMatrix::zeros(d, d);
    for j in 0..d {
        let mut zp = z0.clone();
        let mut zm = z0.clone();
        zp[j] += h;
        zm[j] -= h;
        let dp: Vec<f64> = p
            .denoise(&Tensor::from_vec(zp, (1, d), &Device::Cpu).unwrap(), rho)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let dm: Vec<f64> = p
            .denoise(&Tensor::from_vec(zm, (1, d), &Device::Cpu).unwrap(), rho)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for i in 0..d {
            cov[(i, j)] = rho * rho * (dp[i] - dm[i]) / (2.0 * h);
        }
    }
    let mut m_hat = vec![0.0; d];
    for r in &xs {
        for j in 0..d {
            m_hat[j] += r[j] / n as f64;
        }
    }
    let mut worst_mean: f64 = 0.0;
    for j in 0..d {
        let se = (cov[(j, j)] / n as f64).sqrt();
        worst_mean = worst_mean.max((m_hat[j] - mean[j]).abs() / se);
    }
    let mut worst_cov: f64 = 0.0;
    for i in 0..d {
        for j in 0..=i {
            let vals: Vec<f64> = xs
                .iter()
                .map(|r| (r[i] - m_hat[i]) * (r[j] - m_hat[j]))
                .collect();
            let c = vals.iter().sum::<f64>() / n as f64;
            let v = vals.iter().map(|v| (v - c).powi(2)).sum::<f64>() / n as f64;
            let se = (v / n as f64).sqrt().max(1e-12);
            worst_cov = worst_cov.max((c - cov[(i, j)]).abs() / se);
        }
    }
    (worst_mean, worst_cov)
}

fn diag_and_full() -> (GaussianMixture, GaussianMixture) {
    let d = 5;
    let diag = GaussianMixture::new(
        vec![0.6, 0.4],
        vec![vec![-1.0; d], vec![1.2; d]],
        vec![
            DMatrix::from_diagonal(&DVector::from_fn(d, |j, _| 0.2 + 0.1 * j as f64)),
            DMatrix::from_diagonal(&DVector::from_element(d, 0.4)),
        ],
    )
    .unwrap();
    let a = DMatrix::from_fn(d, d, |i, j| ((i * d + j) as f64 * 0.61).sin());
    let full = GaussianMixture::new(
        vec![0.5, 0.5],
        vec![vec![-0.8; d], vec![0.9; d]],
        vec![
            &a * a.transpose() * 0.2 + DMatrix::identity(d, d) * 0.05,
            DMatrix::identity(d, d) * 0.3,
        ],
    )
    .unwrap();
    (diag, full)
}

#[test]
fn denoising_posterior_has_tweedies_moments() {
    let (lr, _) = low_rank_pair();
    let (diag, full) = diag_and_full();
    // 4.5 standard errors over the ~40 moments of each case: a false alarm below 1e-3.
    for (name, p) in [("low-rank", &lr), ("diagonal", &diag), ("full", &full)] {
        for rho in [0.3, 1.5] {
            let (zm, zc) = denoising_posterior_z_scores(p, rho, 1.0);
            assert!(
                zm < 4.5 && zc < 4.5,
                "{name} rho {rho}: z {zm:.2} / {zc:.2}"
            );
        }
    }
}

#[test]
fn denoising_posterior_check_rejects_the_wrong_rho() {
    let (lr, _) = low_rank_pair();
    let (_, full) = diag_and_full();
    for (name, p) in [("low-rank", &lr), ("full", &full)] {
        let (zm, zc) = denoising_posterior_z_scores(p, 0.3, 1.2);
        assert!(zm.max(zc) > 8.0, "{name}: z {zm:.2} / {zc:.2}");
    }
}
