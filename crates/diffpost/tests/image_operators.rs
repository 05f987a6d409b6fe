//! Image operators (inpainting, super-resolution, blur, MRI), their spec, and image metrics.

use candle_core::{Device, Tensor, Var};
use diffpost::image_metrics::{psnr, ssim};
use diffpost::operator::image::{Blur, BlurPath, ImageOperatorSpec, Inpaint, Mri, SuperRes};
use diffpost::operator::{cg_least_squares, op_norm, LinearOperator};
use diffpost::rng::SampleStreams;
use rustfft::num_complex::Complex64;
use serde::Deserialize;

fn randn(seed: u64, b: usize, d: usize) -> Tensor {
    SampleStreams::range(seed, b)
        .randn(&[d], &Device::Cpu)
        .unwrap()
}

fn dot(a: &Tensor, b: &Tensor) -> f64 {
    (a * b)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn norm(a: &Tensor) -> f64 {
    dot(a, a).sqrt()
}

fn max_abs(a: &Tensor) -> f64 {
    a.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

fn diff(a: &Tensor, b: &Tensor) -> f64 {
    max_abs(&(a - b).unwrap())
}

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    t.to_vec2().unwrap()
}

/// Random complex sensitivities `[coils, H, W]` as (re, im).
fn sensitivities(coils: usize, h: usize, w: usize, seed: u64) -> (Vec<f64>, Vec<f64>) {
    let mut s = SampleStreams::range(seed, 2);
    let v = s.normal_vec(coils * h * w);
    let n = coils * h * w;
    (v[..n].to_vec(), v[n..].to_vec())
}

/// Every image operator, on a few shapes (C = 3, non-square, odd sizes).
fn all_ops() -> Vec<Box<dyn LinearOperator>> {
    let mut ops: Vec<Box<dyn LinearOperator>> = Vec::new();
    for shape in [[3, 8, 12], [1, 10, 6]] {
        ops.push(Box::new(Inpaint::random(shape, 0.4, 7).unwrap()));
        ops.push(Box::new(Inpaint::boxed(shape, 2, 1, 3, 4).unwrap()));
        ops.push(Box::new(SuperRes::new(shape, 2).unwrap()));
        // A non-symmetric kernel, so a wrong flip in the adjoint shows up.
        let k: Vec<f64> = SampleStreams::range(5, 1).normal_vec(25);
        for path in [BlurPath::Direct, BlurPath::Fft] {
            ops.push(Box::new(
                Blur::from_kernel(shape, &k, 5).unwrap().with_path(path),
            ));
            ops.push(Box::new(
                Blur::gaussian(shape, 3, 0.8).unwrap().with_path(path),
            ));
        }
    }
    ops.push(Box::new(SuperRes::new([3, 9, 6], 3).unwrap()));
    for [_, h, w] in [[1, 10, 6], [1, 7, 9]] {
        ops.push(Box::new(Mri::cartesian([1, h, w], 3.0, 2, 1).unwrap()));
        let (re, im) = sensitivities(3, h, w, 9);
        ops.push(Box::new(
            Mri::multicoil([1, h, w], &re, &im, 2.0, 1, 4).unwrap(),
        ));
    }
    ops
}

/// The adjointness sweep: `<A x, y> = <x, A^T y>` for every image operator, and the dense form.
#[test]
fn adjointness_sweep() {
    for op in all_ops() {
        let (d, m) = (op.in_dim(), op.out_dim());
        let x = randn(11, 3, d);
        let y = randn(12, 3, m);
        let ax = op.apply(&x).unwrap();
        let aty = op.adjoint(&y).unwrap();
        assert_eq!(ax.dims(), &[3, m], "{}", op.name());
        assert_eq!(aty.dims(), &[3, d], "{}", op.name());
        let (lhs, rhs) = (dot(&ax, &y), dot(&x, &aty));
        let scale = norm(&ax) * norm(&y);
        assert!(
            (lhs - rhs).abs() <= 1e-10 * scale,
            "{}: {lhs} vs {rhs}",
            op.name()
        );
        let [c, h, w] = op.image_shape().unwrap();
        assert_eq!(c * h * w, d);
        // Rows are independent: the batch result equals the row-by-row result.
        let x1 = x.narrow(0, 1, 1).unwrap();
        assert!(diff(&op.apply(&x1).unwrap(), &ax.narrow(0, 1, 1).unwrap()) < 1e-12);
        // The dense matrix agrees with apply.
        let a = op.to_dense().unwrap();
        let xv = nalgebra::DVector::from_vec(rows(&x)[0].clone());
        let dense = &a * xv;
        for (u, v) in dense.iter().zip(&rows(&ax)[0]) {
            assert!((u - v).abs() < 1e-10, "{}", op.name());
        }
    }
}

/// `apply` is differentiable and its gradient is the adjoint (custom ops included).
#[test]
fn autograd_through_apply_is_the_adjoint() {
    for op in all_ops() {
        let x = Var::from_tensor(&randn(3, 2, op.in_dim())).unwrap();
        let y = randn(4, 2, op.out_dim());
        let loss = (op.apply(x.as_tensor()).unwrap() * &y)
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(x.as_tensor()).unwrap();
        let aty = op.adjoint(&y).unwrap();
        assert!(
            diff(g, &aty) < 1e-10 * (1.0 + max_abs(&aty)),
            "{}",
            op.name()
        );
    }
}

#[test]
fn shape_errors_are_errors() {
    for op in all_ops() {
        let (d, m) = (op.in_dim(), op.out_dim());
        assert!(op.apply(&randn(1, 2, d + 1)).is_err(), "{}", op.name());
        assert!(op.adjoint(&randn(1, 2, m + 1)).is_err(), "{}", op.name());
        assert!(op.pseudo_inverse(&randn(1, 2, m + 1)).is_err());
        let three = Tensor::zeros((1, 1, d), candle_core::DType::F64, &Device::Cpu).unwrap();
        assert!(op.apply(&three).is_err(), "{}", op.name());
    }
    // Constructors.
    assert!(SuperRes::new([1, 9, 8], 2).is_err());
    assert!(SuperRes::new([1, 8, 8], 0).is_err());
    assert!(SuperRes::new([0, 8, 8], 2).is_err());
    assert!(Blur::gaussian([1, 8, 8], 4, 1.0).is_err());
    assert!(Blur::gaussian([1, 8, 8], 5, 0.0).is_err());
    assert!(Blur::gaussian([1, 8, 8], 5, f64::NAN).is_err());
    assert!(Blur::from_kernel([1, 8, 8], &[1.0; 8], 3).is_err());
    assert_eq!(
        Blur::gaussian([1, 8, 8], 9, 2.0).unwrap().path(),
        BlurPath::Direct
    );
    assert_eq!(
        Blur::gaussian([1, 8, 8], 11, 2.0).unwrap().path(),
        BlurPath::Fft
    );
    assert!(Blur::gaussian([1, 8, 8], 3, 1.0)
        .unwrap()
        .with_pinv_eps(0.0)
        .is_err());
    assert!(Inpaint::random([1, 4, 4], 1.0, 0).is_err());
    assert!(Inpaint::random([1, 4, 4], 0.99, 0).is_err()); // rounds to all 16 missing
    assert!(Inpaint::random([1, 4, 4], -0.1, 0).is_err());
    assert!(Inpaint::boxed([1, 4, 4], 2, 2, 3, 1).is_err());
    assert!(Inpaint::boxed([1, 4, 4], 0, 0, 4, 4).is_err());
    assert!(Inpaint::boxed([1, 4, 4], 0, 0, 0, 2).is_err());
    assert!(Mri::cartesian([3, 8, 8], 2.0, 2, 0).is_err());
    assert!(Mri::cartesian([1, 8, 8], 0.5, 2, 0).is_err());
    assert!(Mri::cartesian([1, 8, 8], 2.0, 9, 0).is_err());
    assert!(Mri::from_mask([1, 8, 8], &[false; 8]).is_err());
    assert!(Mri::from_mask([1, 8, 8], &[true; 7]).is_err());
    assert!(Mri::multicoil([1, 8, 8], &[1.0; 64], &[0.0; 63], 2.0, 2, 0).is_err());
    assert!(Mri::multicoil([1, 8, 8], &[1.0; 100], &[0.0; 100], 2.0, 2, 0).is_err());
}

#[test]
fn inpaint_masks() {
    let op = Inpaint::random([3, 10, 10], 0.3, 2).unwrap();
    assert_eq!(op.out_dim(), 3 * 70);
    let sel = op.selection().unwrap();
    assert!(sel.windows(2).all(|w| w[0] < w[1]));
    // The same pixels in every channel.
    assert_eq!(
        sel[..70].iter().map(|i| i + 100).collect::<Vec<_>>(),
        sel[70..140].to_vec()
    );
    // Same seed, same mask; another seed, another mask.
    let again = Inpaint::random([3, 10, 10], 0.3, 2).unwrap();
    assert_eq!(again.selection().unwrap(), sel);
    let other = Inpaint::random([3, 10, 10], 0.3, 3).unwrap();
    assert_ne!(other.selection().unwrap(), sel);
    let b = Inpaint::boxed([2, 5, 6], 1, 2, 2, 3).unwrap();
    let obs = b.observed_pixels();
    assert_eq!(obs.iter().filter(|o| !**o).count(), 6);
    assert!(!obs[6 + 2] && !obs[2 * 6 + 4] && obs[6 + 1] && obs[3 * 6 + 2]);
    assert_eq!(b.out_dim(), 2 * 24);
}

/// `A A^+ y = y` for the surjective operators; `A^+` is the documented closed form.
#[test]
fn pseudo_inverses_surjective() {
    let ops: Vec<Box<dyn LinearOperator>> = vec![
        Box::new(Inpaint::random([3, 8, 12], 0.5, 1).unwrap()),
        Box::new(Inpaint::boxed([1, 10, 6], 0, 0, 5, 6).unwrap()),
        Box::new(SuperRes::new([3, 8, 12], 4).unwrap()),
    ];
    for op in ops {
        let y = randn(8, 3, op.out_dim());
        let xp = op.pseudo_inverse(&y).unwrap();
        assert!(diff(&op.apply(&xp).unwrap(), &y) < 1e-12, "{}", op.name());
        // Minimum norm: agrees with CGLS from zero.
        let cg = cg_least_squares(op.as_ref(), &y, None, 0.0, 200, 1e-13).unwrap();
        assert!(diff(&cg, &xp) < 1e-9, "{}", op.name());
    }
    // Super-resolution's pseudo-inverse is nearest-neighbour upsampling.
    let op = SuperRes::new([1, 4, 6], 2).unwrap();
    let y = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0], (1, 6), &Device::Cpu).unwrap();
    let up = rows(&op.pseudo_inverse(&y).unwrap())[0].clone();
    #[rustfmt::skip]
    let expect = vec![
        1.0, 1.0, 2.0, 2.0, 3.0, 3.0,
        1.0, 1.0, 2.0, 2.0, 3.0, 3.0,
        4.0, 4.0, 5.0, 5.0, 6.0, 6.0,
        4.0, 4.0, 5.0, 5.0, 6.0, 6.0,
    ];
    assert_eq!(up, expect);
}

/// Single-coil MRI: the Hermitian-completion closed form is the minimum-norm least-squares
/// solution (matches CGLS), reproduces measurements in the range of A, and is `A^T` for a
/// symmetric mask. Multi-coil: CGLS solves the normal equations.
#[test]
fn mri_pseudo_inverse() {
    for [h, w] in [[10, 6], [7, 9]] {
        let op = Mri::cartesian([1, h, w], 2.5, 1, 3).unwrap();
        let y = randn(2, 3, op.out_dim());
        let xp = op.pseudo_inverse(&y).unwrap();
        let cg = cg_least_squares(&op, &y, None, 0.0, 500, 1e-14).unwrap();
        assert!(diff(&xp, &cg) < 1e-9, "{}: {}", op.name(), diff(&xp, &cg));
        let ax = op.apply(&randn(3, 3, h * w)).unwrap();
        let back = op.apply(&op.pseudo_inverse(&ax).unwrap()).unwrap();
        assert!(diff(&back, &ax) < 1e-12);
    }
    // Symmetric mask (rows 4 +- 1 and the DC row 4 for H = 8): A^+ = A^T.
    let mut mask = vec![false; 8];
    for i in [3, 4, 5, 0] {
        mask[i] = true;
    }
    let op = Mri::from_mask([1, 8, 6], &mask).unwrap();
    let y = randn(5, 2, op.out_dim());
    assert!(diff(&op.pseudo_inverse(&y).unwrap(), &op.adjoint(&y).unwrap()) < 1e-13);
    // Multi-coil: normal-equation residual of the CGLS pseudo-inverse.
    let (re, im) = sensitivities(4, 8, 6, 1);
    let op = Mri::multicoil([1, 8, 6], &re, &im, 2.0, 2, 5).unwrap();
    assert_eq!(op.coils(), 4);
    assert_eq!(op.out_dim(), 2 * 4 * 4 * 6);
    let y = randn(6, 2, op.out_dim());
    let xp = op.pseudo_inverse(&y).unwrap();
    let aty = op.adjoint(&y).unwrap();
    let res = (op.normal(&xp).unwrap() - &aty).unwrap();
    assert!(
        norm(&res) < 1e-7 * norm(&aty),
        "{}",
        norm(&res) / norm(&aty)
    );
}

#[test]
fn mri_masks() {
    let m = Mri::cartesian_mask(64, 4.0, 8, 11).unwrap();
    assert_eq!(m.iter().filter(|v| **v).count(), 16);
    assert!(m[28..36].iter().all(|v| *v), "centre rows 28..36 kept");
    assert_eq!(m, Mri::cartesian_mask(64, 4.0, 8, 11).unwrap());
    assert_ne!(m, Mri::cartesian_mask(64, 4.0, 8, 12).unwrap());
    let op = Mri::cartesian([1, 64, 16], 4.0, 8, 11).unwrap();
    assert_eq!(op.kept_rows().len(), 16);
    assert_eq!(op.out_dim(), 2 * 16 * 16);
    assert_eq!(op.row_mask(), m.as_slice());
}

/// Naive centred orthonormal DFT of a real image, `[H, W]` complex.
fn naive_dft(x: &[f64], h: usize, w: usize) -> Vec<Complex64> {
    let mut out = vec![Complex64::new(0.0, 0.0); h * w];
    let (ch, cw) = ((h / 2) as f64, (w / 2) as f64);
    for u in 0..h {
        for v in 0..w {
            let mut s = Complex64::new(0.0, 0.0);
            for p in 0..h {
                for q in 0..w {
                    let ph = -2.0
                        * std::f64::consts::PI
                        * ((u as f64 - ch) * (p as f64 - ch) / h as f64
                            + (v as f64 - cw) * (q as f64 - cw) / w as f64);
                    s += Complex64::from_polar(x[p * w + q], ph);
                }
            }
            out[u * w + v] = s / ((h * w) as f64).sqrt();
        }
    }
    out
}

/// The MRI transform against a naive DFT (even and odd sizes), orthonormality, and the
/// interleaved `(re, im)` layout.
#[test]
fn mri_fft_convention() {
    for [h, w] in [[6, 8], [5, 7]] {
        let op = Mri::from_mask([1, h, w], &vec![true; h]).unwrap();
        let x = randn(21, 2, h * w);
        let y = rows(&op.apply(&x).unwrap());
        for (b, xr) in rows(&x).iter().enumerate() {
            let k = naive_dft(xr, h, w);
            for (e, z) in k.iter().enumerate() {
                assert!((y[b][2 * e] - z.re).abs() < 1e-12, "{h}x{w} re {e}");
                assert!((y[b][2 * e + 1] - z.im).abs() < 1e-12, "{h}x{w} im {e}");
            }
        }
        let ax = op.apply(&x).unwrap();
        assert!((norm(&ax) - norm(&x)).abs() < 1e-12 * norm(&x));
        assert!(diff(&op.normal(&x).unwrap(), &x) < 1e-12);
    }
    // A constant image lands on the DC entry (row H/2, column W/2) only.
    let op = Mri::from_mask([1, 6, 8], &[true; 6]).unwrap();
    let y = rows(
        &op.apply(&Tensor::ones((1, 48), candle_core::DType::F64, &Device::Cpu).unwrap())
            .unwrap(),
    )[0]
    .clone();
    let dc = 3 * 8 + 4;
    assert!((y[2 * dc] - 48f64.sqrt()).abs() < 1e-12);
    assert!(y
        .iter()
        .enumerate()
        .all(|(i, v)| i == 2 * dc || v.abs() < 1e-12));
    // Kept rows only, in increasing order: row 1 of a mask keeping rows 1 and 4.
    let mut mask = vec![false; 6];
    mask[1] = true;
    mask[4] = true;
    let sub = Mri::from_mask([1, 6, 8], &mask).unwrap();
    let x = randn(1, 1, 48);
    let full = rows(&op.apply(&x).unwrap())[0].clone();
    let part = rows(&sub.apply(&x).unwrap())[0].clone();
    assert_eq!(part.len(), 2 * 2 * 8);
    assert_eq!(&part[..16], &full[16..32]);
    assert_eq!(&part[16..], &full[64..80]);
}

/// Spectral norms: inpaint 1, superres 1/k, blur 1 (normalised kernel), single-coil MRI 1 with
/// the DC row kept and 1/sqrt(2) for one unpaired row.
#[test]
fn operator_norms() {
    let cases: Vec<(Box<dyn LinearOperator>, f64)> = vec![
        (Box::new(Inpaint::random([3, 8, 12], 0.5, 1).unwrap()), 1.0),
        (Box::new(SuperRes::new([1, 8, 12], 2).unwrap()), 0.5),
        (Box::new(SuperRes::new([3, 12, 12], 3).unwrap()), 1.0 / 3.0),
        (Box::new(Blur::gaussian([1, 16, 12], 5, 1.0).unwrap()), 1.0),
        (
            Box::new(Mri::cartesian([1, 16, 12], 4.0, 2, 0).unwrap()),
            1.0,
        ),
        (
            Box::new(
                Mri::from_mask(
                    [1, 8, 6],
                    &[false, true, false, false, false, false, false, false],
                )
                .unwrap(),
            ),
            std::f64::consts::FRAC_1_SQRT_2,
        ),
    ];
    for (op, expect) in cases {
        let exact = op.to_dense().unwrap().singular_values().max();
        assert!((exact - expect).abs() < 1e-10, "{}: {exact}", op.name());
        let est = op_norm(op.as_ref(), 2000, 3).unwrap();
        assert!((est - expect).abs() < 1e-4, "{}: {est}", op.name());
    }
}

fn smooth_image(c: usize, h: usize, w: usize) -> Tensor {
    let mut v = Vec::with_capacity(c * h * w);
    for ch in 0..c {
        for i in 0..h {
            for j in 0..w {
                let (s, t) = (i as f64 / h as f64, j as f64 / w as f64);
                let tau = 2.0 * std::f64::consts::PI;
                v.push(
                    0.3 * ch as f64
                        + (tau * s).cos()
                        + 0.5 * (tau * (2.0 * t + s)).sin()
                        + 0.2 * (tau * 2.0 * s).cos() * (tau * t).sin(),
                );
            }
        }
    }
    Tensor::from_vec(v, (1, c * h * w), &Device::Cpu).unwrap()
}

#[test]
fn blur_paths_agree_and_invert_smooth_images() {
    // Small kernels: direct (auto) against FFT.
    let k: Vec<f64> = SampleStreams::range(2, 1).normal_vec(49);
    for (shape, op) in [
        ([3, 16, 20], Blur::gaussian([3, 16, 20], 7, 1.5).unwrap()),
        ([2, 9, 13], Blur::from_kernel([2, 9, 13], &k, 7).unwrap()),
    ] {
        assert_eq!(op.path(), BlurPath::Direct);
        let fft = Blur::from_kernel(shape, op.kernel(), 7)
            .unwrap()
            .with_path(BlurPath::Fft);
        let x = randn(1, 2, op.in_dim());
        assert!(diff(&op.apply(&x).unwrap(), &fft.apply(&x).unwrap()) < 1e-12);
        assert!(diff(&op.adjoint(&x).unwrap(), &fft.adjoint(&x).unwrap()) < 1e-12);
    }
    // A 61 x 61, std 3 kernel on 64 x 64 images: FFT by default, equal to the direct path.
    let big = Blur::gaussian([1, 64, 64], 61, 3.0).unwrap();
    assert_eq!(big.path(), BlurPath::Fft);
    let direct = Blur::gaussian([1, 64, 64], 61, 3.0)
        .unwrap()
        .with_path(BlurPath::Direct);
    let x = randn(4, 2, 64 * 64);
    let yb = big.apply(&x).unwrap();
    assert!(diff(&yb, &direct.apply(&x).unwrap()) < 1e-12);
    // A kernel larger than the image wraps onto itself on both paths.
    let k: Vec<f64> = SampleStreams::range(6, 1).normal_vec(21 * 21);
    let wrap = Blur::from_kernel([2, 8, 6], &k, 21).unwrap();
    assert_eq!(wrap.path(), BlurPath::Fft);
    let x8 = randn(5, 2, 96);
    let wrap_direct = Blur::from_kernel([2, 8, 6], &k, 21)
        .unwrap()
        .with_path(BlurPath::Direct);
    assert!(diff(&wrap.apply(&x8).unwrap(), &wrap_direct.apply(&x8).unwrap()) < 1e-12);
    assert!(
        diff(
            &wrap.adjoint(&x8).unwrap(),
            &wrap_direct.adjoint(&x8).unwrap()
        ) < 1e-12
    );
    // A kernel sums to 1: a constant image is unchanged.
    let ones = Tensor::ones((1, 64 * 64), candle_core::DType::F64, &Device::Cpu).unwrap();
    assert!(diff(&big.apply(&ones).unwrap(), &ones) < 1e-12);
    // The blur smooths: high frequencies are damped.
    assert!(norm(&yb) < 0.2 * norm(&x));
    // Tikhonov pseudo-inverse: A^+ A x = x on smooth images, to about eps / |K|^2.
    for op in [big, Blur::gaussian([3, 16, 20], 5, 1.0).unwrap()] {
        let [c, h, w] = op.image_shape().unwrap();
        let x = smooth_image(c, h, w);
        let back = op.pseudo_inverse(&op.apply(&x).unwrap()).unwrap();
        assert!(diff(&back, &x) < 1e-6, "{}: {}", op.name(), diff(&back, &x));
        // The blurred image itself is far from x.
        assert!(diff(&op.apply(&x).unwrap(), &x) > 1e-3);
    }
    // Larger eps regularises more.
    let op = Blur::gaussian([1, 16, 16], 5, 1.0)
        .unwrap()
        .with_pinv_eps(1e-2)
        .unwrap();
    let x = smooth_image(1, 16, 16);
    let back = op.pseudo_inverse(&op.apply(&x).unwrap()).unwrap();
    assert!(diff(&back, &x) > 1e-4);
}

// A minimal self-describing deserializer, to read specs without a format crate.
#[derive(Clone)]
enum V {
    S(&'static str),
    U(u64),
    F(f64),
}

struct VD(V);

impl<'de> serde::Deserializer<'de> for VD {
    type Error = serde::de::value::Error;
    fn deserialize_any<Vi: serde::de::Visitor<'de>>(self, v: Vi) -> Result<Vi::Value, Self::Error> {
        match self.0 {
            V::S(s) => v.visit_str(s),
            V::U(u) => v.visit_u64(u),
            V::F(f) => v.visit_f64(f),
        }
    }
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

impl<'de> serde::de::IntoDeserializer<'de, serde::de::value::Error> for V {
    type Deserializer = VD;
    fn into_deserializer(self) -> VD {
        VD(self)
    }
}

fn spec(pairs: &[(&'static str, V)]) -> Result<ImageOperatorSpec, serde::de::value::Error> {
    ImageOperatorSpec::deserialize(serde::de::value::MapDeserializer::new(
        pairs.iter().cloned(),
    ))
}

#[test]
fn operator_spec() {
    use V::*;
    let s = spec(&[("kind", S("superres")), ("factor", U(2))]).unwrap();
    assert_eq!(s, ImageOperatorSpec::Superres { factor: 2 });
    let op = s.build([3, 8, 8]).unwrap();
    assert_eq!(op.out_dim(), 3 * 16);
    let s = spec(&[("kind", S("inpaint")), ("rate", F(0.5)), ("seed", U(4))]).unwrap();
    assert_eq!(s.build([1, 4, 4]).unwrap().out_dim(), 8);
    // `seed` defaults to 0.
    assert!(matches!(
        spec(&[("kind", S("inpaint")), ("rate", F(0.5))]).unwrap(),
        ImageOperatorSpec::Inpaint { seed: 0, .. }
    ));
    let s = spec(&[
        ("kind", S("box")),
        ("top", U(1)),
        ("left", U(1)),
        ("height", U(2)),
        ("width", U(2)),
    ])
    .unwrap();
    assert_eq!(s.build([2, 4, 4]).unwrap().out_dim(), 24);
    // An integer std (as TOML `std = 2` gives) is accepted.
    let s = spec(&[("kind", S("blur")), ("kernel_size", U(5)), ("std", U(2))]).unwrap();
    assert_eq!(s.build([1, 8, 8]).unwrap().out_dim(), 64);
    let s = spec(&[
        ("kind", S("mri")),
        ("acceleration", F(4.0)),
        ("center_lines", U(4)),
        ("seed", U(1)),
    ])
    .unwrap();
    assert_eq!(s.build([1, 16, 8]).unwrap().out_dim(), 2 * 4 * 8);
    assert!(s.build([3, 16, 8]).is_err());
    // Unknown kinds and fields, missing fields and invalid values are errors.
    assert!(spec(&[("kind", S("deblur")), ("factor", U(2))]).is_err());
    assert!(spec(&[("kind", S("superres")), ("factor", U(2)), ("scale", U(2))]).is_err());
    assert!(spec(&[("kind", S("superres"))]).is_err());
    assert!(spec(&[("kind", S("superres")), ("factor", U(3))])
        .unwrap()
        .build([1, 8, 8])
        .is_err());
}

#[test]
fn image_metrics() {
    let shape = [3, 16, 20];
    let n = 3 * 16 * 20;
    let r: Vec<f64> = SampleStreams::range(1, 1)
        .uniform_vec_n(n)
        .into_iter()
        .collect();
    assert_eq!(psnr(&r, &r, 1.0).unwrap(), f64::INFINITY);
    assert!((ssim(&r, &r, shape, 1.0).unwrap() - 1.0).abs() < 1e-12);
    // Known noise level: +-0.1 everywhere gives MSE 0.01, PSNR 20 dB (40 dB at range 10).
    let noisy: Vec<f64> = r
        .iter()
        .enumerate()
        .map(|(i, v)| v + if i % 2 == 0 { 0.1 } else { -0.1 })
        .collect();
    assert!((psnr(&noisy, &r, 1.0).unwrap() - 20.0).abs() < 1e-10);
    assert!((psnr(&noisy, &r, 10.0).unwrap() - 40.0).abs() < 1e-10);
    // Constant offset c on a constant image u: SSIM = (2u(u+c) + C1) / (u^2 + (u+c)^2 + C1).
    let flat = vec![0.5; n];
    let shifted = vec![0.6; n];
    let c1 = 1e-4;
    let expect = (2.0 * 0.5 * 0.6 + c1) / (0.25 + 0.36 + c1);
    assert!((ssim(&shifted, &flat, shape, 1.0).unwrap() - expect).abs() < 1e-12);
    // On a textured image an offset keeps contrast and structure terms at 1: SSIM is the mean
    // luminance term, between the flat-image value and 1.
    let off: Vec<f64> = r.iter().map(|v| v + 0.1).collect();
    let s = ssim(&off, &r, shape, 1.0).unwrap();
    assert!(s < 1.0 && s > 0.9, "{s}");
    // Against a direct (non-separable) evaluation of the same definition.
    let x: Vec<f64> = noisy.iter().map(|v| v * 0.8).collect();
    let direct = ssim_direct(&x, &r, shape, 1.0);
    assert!((ssim(&x, &r, shape, 1.0).unwrap() - direct).abs() < 1e-12);
    // Symmetric, and decreasing with the noise.
    assert!((ssim(&r, &x, shape, 1.0).unwrap() - direct).abs() < 1e-12);
    assert!(ssim(&noisy, &r, shape, 1.0).unwrap() > ssim(&x, &r, shape, 1.0).unwrap());
    // Errors.
    assert!(psnr(&r[1..], &r, 1.0).is_err());
    assert!(psnr(&r, &r, 0.0).is_err());
    assert!(ssim(&r, &r, [3, 16, 21], 1.0).is_err());
    assert!(ssim(&r[..100], &r[..100], [1, 10, 10], 1.0).is_err());
}

fn ssim_direct(x: &[f64], y: &[f64], [c, h, w]: [usize; 3], l: f64) -> f64 {
    let g: Vec<f64> = (0..11)
        .map(|t| (-0.5 * ((t as f64 - 5.0) / 1.5).powi(2)).exp())
        .collect();
    let gs: f64 = g.iter().sum();
    let (c1, c2) = ((0.01 * l).powi(2), (0.03 * l).powi(2));
    let mut total = 0.0;
    for ch in 0..c {
        let mut s = 0.0;
        let mut count = 0.0;
        for i in 5..h - 5 {
            for j in 5..w - 5 {
                let (mut mx, mut my, mut xx, mut yy, mut xy) = (0.0, 0.0, 0.0, 0.0, 0.0);
                for a in 0..11 {
                    for b in 0..11 {
                        let wt = g[a] * g[b] / (gs * gs);
                        let p = ch * h * w + (i + a - 5) * w + (j + b - 5);
                        mx += wt * x[p];
                        my += wt * y[p];
                        xx += wt * x[p] * x[p];
                        yy += wt * y[p] * y[p];
                        xy += wt * x[p] * y[p];
                    }
                }
                let (vx, vy, vxy) = (xx - mx * mx, yy - my * my, xy - mx * my);
                s += (2.0 * mx * my + c1) * (2.0 * vxy + c2)
                    / ((mx * mx + my * my + c1) * (vx + vy + c2));
                count += 1.0;
            }
        }
        total += s / count;
    }
    total / c as f64
}
