//! Random problem instances with a known exact posterior (for `diffpost problem gmm`, tests, demo).

use nalgebra::{DMatrix, DVector};
use rand::Rng;

use crate::prior::{Denoiser, ExactSample, GaussianMixture};
use crate::rng::SampleStreams;
use crate::{Error, Result};

/// A compressed-sensing instance `y = A x_true + eta xi` with a Gaussian-mixture prior.
pub struct Instance {
    pub prior: GaussianMixture,
    /// `[m, d]`, entries `N(0, 1/m)`.
    pub a: DMatrix<f64>,
    pub x_true: DVector<f64>,
    pub y: DVector<f64>,
    pub eta: f64,
}

/// A random instance: `K` overlapping components with means `N(0, 0.5^2 I)` (K > 1) or 0 (K = 1),
/// covariances `Q diag(lambda) Q^T` with random rotations `Q` and `lambda` log-uniform in
/// [0.25, 1]; `A` Gaussian with entries `N(0, 1/m)`; `x_true` drawn from the prior.
/// Checks, before allocating, that a random instance of this size fits in memory: `k` dense
/// `d x d` covariances (and their factorisations), an `m x d` matrix.
pub fn check_gmm_instance_size(d: usize, m: usize, k: usize) -> Result<()> {
    use crate::limits::{check_alloc, product};
    let (d, m, k) = (d as u128, m as u128, k as u128);
    let floats = product(&[k.saturating_add(1), 4, d, d]).saturating_add(product(&[2, m, d]));
    check_alloc("--d/--m/--k", floats.saturating_mul(8))
}

pub fn random_gmm_instance(d: usize, m: usize, k: usize, eta: f64, seed: u64) -> Result<Instance> {
    if d == 0 || m == 0 || k == 0 {
        return Err(Error::param("d/m/k", "must be positive"));
    }
    if !(eta > 0.0) || !eta.is_finite() {
        return Err(Error::param(
            "eta",
            format!("must be finite and > 0, got {eta}"),
        ));
    }
    check_gmm_instance_size(d, m, k)?;
    check_gmm_instance_size(d, m, k)?;
    let mut s = SampleStreams::new(seed, [0]);
    let mut weights = Vec::with_capacity(k);
    let mut means = Vec::with_capacity(k);
    let mut covs = Vec::with_capacity(k);
    for _ in 0..k {
        weights.push(0.5 + s.stream(0).random::<f64>());
        let mean: Vec<f64> = if k == 1 {
            vec![0.0; d]
        } else {
            s.normal_vec(d).iter().map(|v| 0.5 * v).collect()
        };
        means.push(mean);
        let g = DMatrix::from_row_slice(d, d, &s.normal_vec(d * d));
        let q = g.qr().q();
        let lam: Vec<f64> = (0..d)
            .map(|_| 0.25f64 * 4f64.powf(s.stream(0).random::<f64>()))
            .collect();
        let c = &q * DMatrix::from_diagonal(&DVector::from_vec(lam)) * q.transpose();
        covs.push((&c + c.transpose()) * 0.5);
    }
    let prior = GaussianMixture::new(weights, means, covs)?;
    let a = DMatrix::from_row_slice(m, d, &s.normal_vec(m * d)) / (m as f64).sqrt();
    let mut xs = SampleStreams::new(seed ^ 0x7472_7565, [0]);
    let x: Vec<f64> = prior.sample_exact(&mut xs)?.flatten_all()?.to_vec1()?;
    let x_true = DVector::from_vec(x);
    let noise = DVector::from_vec(xs.normal_vec(m));
    let y = &a * &x_true + noise * eta;
    Ok(Instance {
        prior,
        a,
        x_true,
        y,
        eta,
    })
}

/// A denoising instance: `x_true ~ N(0, I_d)`, `y = x_true + eta xi`, both from stream 0 of `seed`.
pub fn denoise_instance(d: usize, eta: f64, seed: u64) -> Result<(Vec<f64>, Vec<f64>)> {
    if d == 0 || !(eta > 0.0) || !eta.is_finite() {
        return Err(Error::param("d/eta", "need d >= 1 and eta > 0"));
    }
    let mut s = SampleStreams::new(seed, [0]);
    let x = s.normal_vec(d);
    let y: Vec<f64> = x
        .iter()
        .zip(s.normal_vec(d))
        .map(|(x, z)| x + eta * z)
        .collect();
    Ok((x, y))
}

/// A mixture whose posterior is multimodal with mode weights unlike the prior's: `A` (`[m, d]`,
/// entries `N(0, 1/m)`) cannot see the direction `n` that separates components 0 and 1
/// (`mu_{0,1} = -/+ (sep/2) n -/+ c u`, `u` the direction `A` sees best), so their posterior
/// weights are set by the small visible offset `c u` and the prior weights `0.6, 0.3`; component 2
/// (`0.1`) sits away along a second visible direction and another null direction. Covariances
/// `0.25 I`, so `sep = 4` puts the two modes 8 standard deviations apart. `y = A (b u) + eta xi`
/// with `b` chosen so that component 1 (prior weight 0.3) gets the larger posterior weight.
pub fn separated_gmm_instance(d: usize, m: usize, eta: f64, seed: u64) -> Result<Instance> {
    if d < m + 2 || m < 2 {
        return Err(Error::param("d/m", "need m >= 2 and d >= m + 2"));
    }
    if !(eta > 0.0) || !eta.is_finite() {
        return Err(Error::param(
            "eta",
            format!("must be finite and > 0, got {eta}"),
        ));
    }
    check_gmm_instance_size(d, m, 3)?;
    let mut s = SampleStreams::new(seed, [0]);
    let a = DMatrix::from_row_slice(m, d, &s.normal_vec(m * d)) / (m as f64).sqrt();
    let ata = a.transpose() * &a;
    let eig = nalgebra::SymmetricEigen::new(ata);
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&i, &j| {
        eig.eigenvalues[i]
            .partial_cmp(&eig.eigenvalues[j])
            .expect("finite")
    });
    let col = |i: usize| -> DVector<f64> { eig.eigenvectors.column(order[i]).into_owned() };
    let (n1, n2) = (col(0), col(1)); // invisible to A
    let (u, u2) = (col(d - 1), col(d - 2)); // seen best
    let (sep, c) = (4.0, 0.5);
    let var = 0.25;
    let means = [
        (&n1 * (-sep / 2.0) - &u * c),
        (&n1 * (sep / 2.0) + &u * c),
        (&u2 * 3.0 + &n2 * 2.0),
    ];
    let covs = vec![DMatrix::identity(d, d) * var; 3];
    let prior = GaussianMixture::new(
        vec![0.6, 0.3, 0.1],
        means.iter().map(|v| v.iter().copied().collect()).collect(),
        covs,
    )?;
    let b = 0.3;
    let noise = DVector::from_vec(s.normal_vec(m));
    let x_true = &means[1] - &u * (c - b);
    let y = &a * &x_true + noise * eta;
    Ok(Instance {
        prior,
        a,
        x_true,
        y,
        eta,
    })
}

/// The image case of the exact-posterior suite: 8x8 digits under the fitted digits mixture
/// (`data/digits_gmm.npz`), a held-out digit (`data/digits_test100.npy`, row `index`, 0..16
/// scaled to [-1, 1]) measured through an image operator on `[1, 8, 8]`.
pub struct ImageInstance {
    pub prior: GaussianMixture,
    pub op: Box<dyn crate::operator::LinearOperator>,
    pub x_true: Vec<f64>,
    pub y: Vec<f64>,
    pub eta: f64,
}

/// `y = A x_true + eta xi` for the `index`-th held-out digit, noise from `seed`.
pub fn digits_instance(
    prior: GaussianMixture,
    digits: &std::path::Path,
    index: usize,
    op: &crate::operator::image::ImageOperatorSpec,
    eta: f64,
    seed: u64,
) -> Result<ImageInstance> {
    let t = crate::io::read_array(digits, "digits")?;
    let n = t.dims()[0];
    if t.dims()[1..] != [8, 8] || index >= n {
        return Err(Error::shape(
            format!("{}: digit {index}", digits.display()),
            "[N, 8, 8] with N > index",
            t.dims(),
        ));
    }
    measure_image(prior, &t, index, 8.0, op, eta, seed)
}

/// Image `index` of `t: [N, H, W]`, scaled to [-1, 1] as `v / half - 1`, measured through `op`
/// on `[1, H, W]`: `y = A x_true + eta xi`, noise from `seed`.
fn measure_image(
    prior: GaussianMixture,
    t: &candle_core::Tensor,
    index: usize,
    half: f64,
    op: &crate::operator::image::ImageOperatorSpec,
    eta: f64,
    seed: u64,
) -> Result<ImageInstance> {
    let x_true: Vec<f64> = t
        .get(index)?
        .flatten_all()?
        .to_dtype(candle_core::DType::F64)?
        .to_vec1::<f64>()?
        .iter()
        .map(|v| v / half - 1.0)
        .collect();
    let dims = t.dims();
    let op = op.build([1, dims[1], dims[2]])?;
    let y = crate::config::simulate(op.as_ref(), &x_true, eta, seed)?;
    Ok(ImageInstance {
        prior,
        op,
        x_true,
        y,
        eta,
    })
}

/// `y = A x_true + eta xi` for image `index` of a `[N, H, W]` u8 file (MNIST, Fashion-MNIST; pixels
/// scaled to [-1, 1] as `x / 127.5 - 1`), measured through an image operator on `[1, H, W]`;
/// noise from `seed`.
pub fn image_instance(
    prior: GaussianMixture,
    images: &std::path::Path,
    index: usize,
    op: &crate::operator::image::ImageOperatorSpec,
    eta: f64,
    seed: u64,
) -> Result<ImageInstance> {
    let t = crate::io::read_array(images, "images")?;
    let dims = t.dims().to_vec();
    if dims.len() != 3 || index >= dims[0] || dims[1] * dims[2] != prior.dim() {
        return Err(Error::shape(
            format!("{}: image {index}", images.display()),
            format!(
                "[N, H, W] with N > index and H W = {} (the prior's d)",
                prior.dim()
            ),
            &dims,
        ));
    }
    measure_image(prior, &t, index, 127.5, op, eta, seed)
}
