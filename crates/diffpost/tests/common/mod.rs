//! Shared fixtures of the statistical test suite.
//!
//! Every statistical tolerance in this suite is stated against the Monte-Carlo noise floor
//! (`metrics::noise_floor`, 10 repeats): the same metric for a fresh exact posterior sample of the
//! same size `n` against the same reference. `floor_mean` is what a perfect sampler gets on average,
//! `floor_sd` its spread over the repeats. Everything uses fixed seeds, so each test is
//! deterministic; the bounds are still chosen so that an exact sampler passes them with a margin.
#![allow(dead_code)]

#[macro_use]
mod suite;

use candle_core::{Device, Tensor};
use nalgebra::{DMatrix, DVector};

use diffpost::metrics::{noise_floor, Floor, MetricFloors, Metrics, Reference};
use diffpost::operator::Dense;
use diffpost::prior::{Denoiser, ExactSample, GaussianMixture};
use diffpost::rng::SampleStreams;
use diffpost::sampler::{Output, Problem};

/// Samples per evaluated set (the floors are computed for this size).
pub const N: usize = 2000;
/// Exact reference draws (sliced W2 is taken against all of them, MMD against the first `N`).
pub const N_REF: usize = 20_000;
/// Sliced-W2 projection directions.
pub const N_DIR: usize = 50;
/// Repeats of the noise floor.
pub const REPEATS: usize = 10;

/// A linear inverse problem with its exact posterior, reference and noise floors.
pub struct Bench {
    pub name: String,
    pub prior: GaussianMixture,
    pub a: DMatrix<f64>,
    pub op: Dense,
    /// `[m]` (as a tensor for `Problem::new`).
    pub y: Tensor,
    pub y_vec: DVector<f64>,
    pub x_true: DVector<f64>,
    pub eta: f64,
    pub post: GaussianMixture,
    pub reference: Reference,
    pub floors: MetricFloors,
}

impl Bench {
    /// Builds the exact posterior `p(x | y)` (library Kalman form), its reference sample and the
    /// noise floors for sets of `N` rows.
    pub fn new(
        name: &str,
        prior: GaussianMixture,
        a: DMatrix<f64>,
        x_true: DVector<f64>,
        y: DVector<f64>,
        eta: f64,
    ) -> Self {
        let op = Dense::new(a.clone()).unwrap();
        let post = prior.posterior(&op, y.as_slice(), eta).unwrap();
        let (reference, floors) = reference_and_floors(&post, 0x5eed);
        let y_t =
            Tensor::from_vec(y.iter().copied().collect::<Vec<_>>(), y.len(), &Device::Cpu).unwrap();
        Bench {
            name: name.into(),
            prior,
            a,
            op,
            y: y_t,
            y_vec: y,
            x_true,
            eta,
            post,
            reference,
            floors,
        }
    }

    pub fn d(&self) -> usize {
        self.prior.dim()
    }

    /// The problem with the true `eta` (or a deliberately wrong one in the broken variants).
    pub fn problem<'a>(&'a self, prior: &'a dyn Denoiser, eta: f64) -> Problem<'a> {
        Problem::new(prior, &self.op, &self.y, eta).unwrap()
    }

    pub fn eval(&self, out: &Output) -> Metrics {
        eval(&self.reference, out)
    }
}

/// Reference (N_REF exact draws, stream seed `seed`) and noise floors (REPEATS fresh exact sets of
/// N rows, seeds disjoint from the reference's) of an exact mixture `post`.
pub fn reference_and_floors(post: &GaussianMixture, seed: u64) -> (Reference, MetricFloors) {
    let d = post.dim();
    let refs: Vec<f64> = post
        .sample_exact(&mut SampleStreams::range(seed, N_REF))
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let mean: Vec<f64> = post.mean().iter().copied().collect();
    let cov = post.covariance();
    let covv: Vec<f64> = (0..d)
        .flat_map(|r| (0..d).map(move |c| (r, c)))
        .map(|(r, c)| cov[(r, c)])
        .collect();
    let reference = Reference::new(refs, d, mean, covv, N_DIR, 1, N).unwrap();
    let floors = noise_floor(
        &reference,
        |rep| {
            Ok(post
                .sample_exact(&mut SampleStreams::range(seed + 1000 + rep as u64, N))?
                .flatten_all()?
                .to_vec1()?)
        },
        REPEATS,
    )
    .unwrap();
    (reference, floors)
}

pub fn to_rows(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

pub fn eval(reference: &Reference, out: &Output) -> Metrics {
    reference.evaluate(&to_rows(&out.samples)).unwrap()
}

/// The Gaussian (K = 1) instance of the issue: `random_gmm_instance(30, 15, 1, 0.1, 0)`.
pub fn gaussian_bench() -> Bench {
    let inst = diffpost::problem::random_gmm_instance(30, 15, 1, 0.1, 0).unwrap();
    Bench::new(
        "gaussian d=30 m=15",
        inst.prior,
        inst.a,
        inst.x_true,
        inst.y,
        inst.eta,
    )
}

/// A log-concave, non-Gaussian instance (d = 10, m = 5, eta = 0.1): the operator and covariance
/// `S` of `random_gmm_instance(10, 5, 1, 0.1, 1)`, and the prior
/// `0.3 N(mu, S) + 0.7 N(-mu, S)` with `mu` in the null space of `A` and `mu^T S^-1 mu = 0.81`.
///
/// Why log-concave: for two components with a common covariance, the Hessian of `log p` is
/// `-S^-1 + r(1-r) S^-1 D D^T S^-1` with `D = 2 mu` and `r(1-r) <= 1/4`, which is negative definite
/// iff `mu^T S^-1 mu < 1`. Because `A mu = 0`, the posterior keeps the prior weights and the
/// component separation (`D^T C^-1 D = D^T S^-1 D`), so the posterior is log-concave and
/// non-Gaussian too. (d = 10 rather than 30: the library's K > 1 score costs ~10x the K = 1 score at
/// d = 30 with n = 2000 rows, 2 ms per call, which would put this instance alone over the suite's
/// time budget.)
pub fn logconcave_bench() -> Bench {
    let inst = diffpost::problem::random_gmm_instance(10, 5, 1, 0.1, 1).unwrap();
    let d = 10;
    let s = inst.prior.cov(0);
    let a = inst.a.clone();
    // v = (I - A^T (A A^T)^-1 A) w, a null-space direction of A.
    let w = DVector::from_vec(SampleStreams::new(77, [0]).normal_vec(d));
    let aat = &a * a.transpose();
    let proj = a.transpose() * aat.cholesky().unwrap().solve(&(&a * &w));
    let v = &w - proj;
    assert!((&a * &v).norm() < 1e-9 * v.norm());
    let sinv = s.clone().try_inverse().unwrap();
    let maha = v.dot(&(&sinv * &v));
    let mu = &v * (0.9 / maha.sqrt());
    assert!((mu.dot(&(&sinv * &mu)) - 0.81).abs() < 1e-9);
    let prior = GaussianMixture::new(
        vec![0.3, 0.7],
        vec![
            mu.iter().copied().collect(),
            mu.iter().map(|v| -v).collect(),
        ],
        vec![s.clone(), s],
    )
    .unwrap();
    let mut xs = SampleStreams::new(0x10c, [0]);
    let x_true = DVector::from_vec(to_rows(&prior.sample_exact(&mut xs).unwrap()));
    let noise = DVector::from_vec(xs.normal_vec(5));
    let y = &a * &x_true + noise * inst.eta;
    Bench::new("log-concave 2-GMM d=10 m=5", prior, a, x_true, y, inst.eta)
}

/// `value / floor_mean`, the ratio reported for every sampler.
pub fn ratio(value: f64, f: &Floor) -> f64 {
    value / f.floor_mean
}

/// `floor_mean + k floor_sd`.
pub fn floor_plus(f: &Floor, k: f64) -> f64 {
    f.floor_mean + k * f.floor_sd
}

/// Prints the four metrics next to their floors (run with `--nocapture` to see them).
pub fn report(label: &str, m: &Metrics, f: &MetricFloors) {
    println!(
        "[{label}] sw2 {:.4} = {:.2}x floor ({:.4}+-{:.4}); mean_err {:.4} = {:.2}x ({:.4}+-{:.4}); \
         cov_err {:.4} = {:.2}x ({:.4}+-{:.4}); mmd2 {:.2e} (floor {:.2e}+-{:.2e})",
        m.sw2,
        ratio(m.sw2, &f.sw2),
        f.sw2.floor_mean,
        f.sw2.floor_sd,
        m.mean_err,
        ratio(m.mean_err, &f.mean_err),
        f.mean_err.floor_mean,
        f.mean_err.floor_sd,
        m.cov_err,
        ratio(m.cov_err, &f.cov_err),
        f.cov_err.floor_mean,
        f.cov_err.floor_sd,
        m.mmd2,
        f.mmd2.floor_mean,
        f.mmd2.floor_sd,
    );
}

/// A deliberately broken prior for the companion tests: the smoothed score is replaced by
/// `scale * s_sigma(x) + shift` (and the denoiser by the matching Tweedie `x + sigma^2 score`);
/// everything else (range, Lipschitz constant, diffusion start) is the wrapped prior's.
pub struct BrokenScore<'a> {
    pub inner: &'a dyn Denoiser,
    pub scale: f64,
    pub shift: f64,
}

impl Denoiser for BrokenScore<'_> {
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn sample_shape(&self) -> Vec<usize> {
        self.inner.sample_shape()
    }
    fn denoise(&self, x: &Tensor, sigma: f64) -> diffpost::Result<Tensor> {
        if sigma == 0.0 {
            return Ok(x.clone());
        }
        Ok((x + (self.score(x, sigma)? * (sigma * sigma))?)?)
    }
    fn score(&self, x: &Tensor, sigma: f64) -> diffpost::Result<Tensor> {
        Ok(((self.inner.score(x, sigma)? * self.scale)? + self.shift)?)
    }
    fn sigma_range(&self) -> (f64, f64) {
        self.inner.sigma_range()
    }
    fn sigma_max_hint(&self) -> f64 {
        self.inner.sigma_max_hint()
    }
    fn lipschitz(&self) -> Option<f64> {
        self.inner.lipschitz()
    }
    fn diffusion_start(&self, z: &Tensor, sigma_max: f64) -> diffpost::Result<Tensor> {
        self.inner.diffusion_start(z, sigma_max)
    }
}

/// Times a closure and prints the elapsed seconds.
pub fn timed<T>(label: &str, f: impl FnOnce() -> T) -> T {
    let t = std::time::Instant::now();
    let v = f();
    println!("[{label}] {:.1}s", t.elapsed().as_secs_f64());
    v
}

/// Lazily built, shared by the tests of one test binary.
pub fn shared(cell: &'static std::sync::OnceLock<Bench>, make: fn() -> Bench) -> &'static Bench {
    cell.get_or_init(make)
}

/// The samplers as the suite runs them, on `b`'s operator and measurement, with a possibly broken
/// `prior` (score) and a possibly wrong `eta`. Seeds are fixed per sampler.
pub mod run {
    use super::*;
    use diffpost::prior::LogDensity;
    use diffpost::sampler::settings::{Start, StartKind, Step};
    use diffpost::sampler::*;

    /// Algorithm 1 with its default configuration (20 stages, 400 steps each, diffusion start).
    pub fn annealed_default(b: &Bench, prior: &dyn Denoiser, eta: f64) -> Metrics {
        let p = b.problem(prior, eta);
        let out = annealed::sample(
            &p,
            Some(&b.prior),
            &annealed::AnnealedConfig::default(),
            &mut SampleStreams::range(101, N),
            &Silent,
        )
        .unwrap();
        b.eval(&out)
    }

    /// ULA settings used for floor-level agreement: `h = 0.5 / (L + ||A||^2/eta^2)`, 5000 steps
    /// from an exact prior draw. The slowest posterior direction has precision about
    /// `1/lambda_max(S) >= 1`, so the chain relaxes within `1/h ~ 1200` steps; 5000 steps are about
    /// four relaxation times (mean and covariance transients below e^-4 of the prior-posterior gap).
    /// The ULA discretisation bias at this step inflates variances by at most `1/(1 - h L/2)`,
    /// i.e. 33% in the stiffest (well-measured) directions whose spread is ~eta/||A||, invisible at
    /// the floor (measured: about 1.0x floor in sliced W2).
    pub fn ula_cfg() -> ula::UlaConfig {
        ula::UlaConfig {
            steps: 5000,
            step: Step::relative(0.5),
            start: Start::kind(StartKind::ExactPrior),
            ..Default::default()
        }
    }

    pub fn ula(b: &Bench, prior: &dyn Denoiser, eta: f64) -> Metrics {
        let p = b.problem(prior, eta);
        let out = ula::sample(
            &p,
            Some(&b.prior),
            &ula_cfg(),
            &mut SampleStreams::range(102, N),
            &Silent,
        )
        .unwrap();
        b.eval(&out)
    }

    /// MALA: `h = 0.5 / (L + ||A||^2/eta^2)` (acceptance about 0.85), 4000 steps from an exact prior
    /// draw (about three relaxation times `1/h`; Metropolis removes the discretisation bias).
    pub fn mala_cfg() -> mala::MalaConfig {
        mala::MalaConfig {
            steps: 4000,
            step: Step::relative(0.5),
            start: Start::kind(StartKind::ExactPrior),
            l_prior: None,
        }
    }

    /// MALA targets `log_prior` (the true prior, or a broken one) with noise `eta`.
    pub fn mala(b: &Bench, log_prior: &dyn LogDensity, eta: f64) -> (Metrics, f64) {
        let p = b.problem(&b.prior, eta);
        let out = mala::sample(
            &p,
            log_prior,
            Some(&b.prior),
            &mala_cfg(),
            &mut SampleStreams::range(103, N),
            &Silent,
        )
        .unwrap();
        (b.eval(&out), out.info.acceptance.unwrap())
    }

    /// ALD, default configuration (50 levels x 40 steps).
    pub fn ald(b: &Bench, prior: &dyn Denoiser, eta: f64) -> Metrics {
        let p = b.problem(prior, eta);
        let out = ald::sample(
            &p,
            &ald::AldConfig::default(),
            &mut SampleStreams::range(104, N),
            &Silent,
        )
        .unwrap();
        b.eval(&out)
    }

    /// DAPS, default configuration (100 levels, 5 ODE steps, 50 Langevin steps).
    pub fn daps(b: &Bench, prior: &dyn Denoiser, eta: f64) -> Metrics {
        let p = b.problem(prior, eta);
        let out = daps::sample(
            &p,
            &daps::DapsConfig::default(),
            &mut SampleStreams::range(105, N),
            &Silent,
        )
        .unwrap();
        b.eval(&out)
    }

    /// DPS, default configuration (1000 steps) with guidance `zeta`.
    pub fn dps(b: &Bench, zeta: f64) -> Metrics {
        let p = b.problem(&b.prior, b.eta);
        let out = dps::sample(
            &p,
            &dps::DpsConfig {
                zeta,
                ..Default::default()
            },
            &mut SampleStreams::range(106, N),
            &Silent,
        )
        .unwrap();
        b.eval(&out)
    }

    /// Exact sampling of `posterior`, evaluated against `b`'s reference.
    pub fn exact(b: &Bench, posterior: &GaussianMixture) -> Metrics {
        b.eval(&exact::sample(posterior, &mut SampleStreams::range(107, N)).unwrap())
    }

    /// A prior with every covariance multiplied by `factor` (the broken prior for MALA: for a
    /// zero-mean Gaussian, `factor = 1/1.5` is exactly the score scaled by 1.5).
    pub fn scaled_cov_prior(p: &GaussianMixture, factor: f64) -> GaussianMixture {
        let c = p.components_dense();
        GaussianMixture::new(
            c.iter().map(|c| c.0).collect(),
            c.iter().map(|c| c.1.iter().copied().collect()).collect(),
            c.iter().map(|c| &c.2 * factor).collect(),
        )
        .unwrap()
    }
}

/// `max |a - b|` over all entries (f64 tensors of the same shape).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}
