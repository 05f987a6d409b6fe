//! `GramSpectrum`: `f(A^T A) x` and the eigenvalues of `A^T A` against the dense matrix.
//!
//! For every operator with a spectrum, `A` is built with `to_dense()`, `A^T A = V L V^T` is
//! eigen-decomposed with nalgebra, and `gram_fn(x, f)` is compared with `V f(L) V^T x` on
//! random `x: [3, d]` for several `f` (to 1e-9 relative), `f(l) = l` also with `normal(x)`;
//! `eigenvalues()` is compared with the dense spectrum (the sorted multiset of all `d` values). A deliberately broken wrapper (eigenvalues
//! scaled by 1.01) must fail the same comparison.

use std::time::Instant;

use candle_core::{Device, Tensor};
use diffpost::operator::image::{Blur, BlurPath, Inpaint, Mri, SuperRes};
use diffpost::operator::{Dense, GramSpectrum, Identity, LinearOperator, Mask};
use diffpost::rng::SampleStreams;
use nalgebra::{DMatrix, DVector};

const TOL: f64 = 1e-9;

fn randn(seed: u64, b: usize, d: usize) -> Tensor {
    SampleStreams::range(seed, b)
        .randn(&[d], &Device::Cpu)
        .unwrap()
}

type Named = (&'static str, fn(f64) -> f64);

/// The test functions of the eigenvalues.
fn functions() -> Vec<Named> {
    vec![
        ("l", |l| l),
        ("exp(-3 l)", |l| (-3.0 * l).exp()),
        ("sqrt(1 + l)", |l| (1.0 + l).sqrt()),
        ("1 / (1 + l)", |l| 1.0 / (1.0 + l)),
    ]
}

/// Max-abs difference relative to the max-abs of the reference.
fn rel_err(got: &[Vec<f64>], want: &[Vec<f64>]) -> f64 {
    let scale = want
        .iter()
        .flatten()
        .fold(0.0f64, |m, v| m.max(v.abs()))
        .max(1e-300);
    let err = got
        .iter()
        .flatten()
        .zip(want.iter().flatten())
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    if got.len() != want.len() || got.iter().zip(want).any(|(a, b)| a.len() != b.len()) {
        return f64::INFINITY;
    }
    err / scale
}

/// Sorted distinct values, merging those within `tol` of each other.
fn distinct(v: &[f64], tol: f64) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let mut out: Vec<f64> = Vec::new();
    for x in s {
        match out.last() {
            Some(&l) if (x - l).abs() <= tol => {}
            _ => out.push(x),
        }
    }
    out
}

/// Compares `op.gram_spectrum()` with the eigen-decomposition of the dense `A^T A`. `Err`
/// describes the first mismatch.
fn check_gram(op: &dyn LinearOperator, seed: u64) -> Result<(), String> {
    let name = op.name();
    let spec = op
        .gram_spectrum()
        .ok_or_else(|| format!("{name}: no gram spectrum"))?;
    let d = op.in_dim();
    let a = op.to_dense().map_err(|e| e.to_string())?;
    let g = a.transpose() * &a;
    let eig = nalgebra::SymmetricEigen::new((&g + g.transpose()) * 0.5);
    let lam: Vec<f64> = eig.eigenvalues.iter().copied().collect();
    let v = &eig.eigenvectors;
    let lmax = lam.iter().copied().fold(0.0, f64::max);

    let x = randn(seed, 3, d);
    let xs: Vec<Vec<f64>> = x.to_vec2().unwrap();
    for (fname, f) in functions() {
        let want: Vec<Vec<f64>> = xs
            .iter()
            .map(|row| {
                let c = v.transpose() * DVector::from_column_slice(row);
                let fc = DVector::from_iterator(d, c.iter().zip(&lam).map(|(c, &l)| c * f(l)));
                (v * fc).iter().copied().collect()
            })
            .collect();
        let got: Vec<Vec<f64>> = spec
            .gram_fn(&x, &f)
            .map_err(|e| format!("{name}: gram_fn failed: {e}"))?
            .to_vec2()
            .map_err(|e| e.to_string())?;
        let err = rel_err(&got, &want);
        if err.is_nan() || err > TOL {
            return Err(format!(
                "{name}: gram_fn with f = {fname} differs from the dense V f(L) V^T x by {err:e} (relative)"
            ));
        }
        if fname == "l" {
            let normal: Vec<Vec<f64>> = op.normal(&x).unwrap().to_vec2().unwrap();
            let err = rel_err(&got, &normal);
            if err.is_nan() || err > TOL {
                return Err(format!(
                    "{name}: gram_fn with f(l) = l differs from normal(x) by {err:e} (relative)"
                ));
            }
        }
    }

    let ev = spec.eigenvalues().map_err(|e| e.to_string())?;
    let tol = TOL * lmax.max(1.0);
    let emax = ev.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if (emax - lmax).abs() > tol {
        return Err(format!("{name}: largest eigenvalue {emax} vs dense {lmax}"));
    }
    // All d of them, with multiplicity (the evidence of SMC with Gibbs moves needs the
    // log-determinant).
    if ev.len() != d {
        return Err(format!("{name}: {} eigenvalues listed, d = {d}", ev.len()));
    }
    let mut e = ev.clone();
    e.sort_by(f64::total_cmp);
    let mut l = lam.clone();
    l.sort_by(f64::total_cmp);
    if let Some((i, (p, q))) = e
        .iter()
        .zip(&l)
        .enumerate()
        .find(|(_, (p, q))| (*p - *q).abs() > tol)
    {
        return Err(format!("{name}: eigenvalue {i} (sorted) is {p}, dense {q}"));
    }
    Ok(())
}

fn assert_gram(op: &dyn LinearOperator, seed: u64) {
    if let Err(e) = check_gram(op, seed) {
        panic!("{e}");
    }
}

/// A deliberately broken spectrum: the operator's own, with `gram_fn` (or, with `in_gram_fn =
/// false`, `eigenvalues`) using the eigenvalues scaled by 1.01 (lent to the operator by
/// [`Borrowed`]).
struct Scaled<'a> {
    inner: &'a dyn LinearOperator,
    in_gram_fn: bool,
}

impl GramSpectrum for Scaled<'_> {
    fn gram_fn(&self, x: &Tensor, f: &dyn Fn(f64) -> f64) -> diffpost::Result<Tensor> {
        let spec = self.inner.gram_spectrum().unwrap();
        if self.in_gram_fn {
            spec.gram_fn(x, &|l| f(1.01 * l))
        } else {
            spec.gram_fn(x, f)
        }
    }
    fn eigenvalues(&self) -> diffpost::Result<Vec<f64>> {
        let ev = self.inner.gram_spectrum().unwrap().eigenvalues()?;
        Ok(if self.in_gram_fn {
            ev
        } else {
            ev.iter().map(|l| 1.01 * l).collect()
        })
    }
}

fn random_dense(m: usize, d: usize, seed: u64) -> Dense {
    let mut s = SampleStreams::new(seed, [0]);
    Dense::new(DMatrix::from_row_slice(m, d, &s.normal_vec(m * d))).unwrap()
}

#[test]
fn generic_operators() {
    assert_gram(&Identity::new(12), 1);
    let ind = [1., 0., 1., 1., 0., 0., 1., 1., 0., 1., 0., 1.];
    assert_gram(&Mask::from_indicator(&ind).unwrap(), 2);
    assert_gram(&Mask::from_indicator(&[1.0; 5]).unwrap(), 3);
    // Rank-deficient (zero eigenvalues) and full-rank normal operators.
    assert_gram(&random_dense(7, 12, 4), 4);
    assert_gram(&random_dense(12, 7, 5), 5);
}

#[test]
fn inpaint() {
    let ops = [
        Inpaint::random([3, 8, 12], 0.4, 7).unwrap(),
        Inpaint::random([1, 6, 10], 0.3, 1).unwrap(),
        Inpaint::random([2, 5, 7], 0.0, 1).unwrap(),
        Inpaint::boxed([3, 8, 12], 2, 1, 3, 4).unwrap(),
        Inpaint::boxed([1, 6, 10], 0, 0, 6, 9).unwrap(),
    ];
    for (i, op) in ops.iter().enumerate() {
        assert_gram(op, 10 + i as u64);
    }
}

#[test]
fn superres() {
    let mut seed = 20;
    for c in [1, 3] {
        for k in [2, 4] {
            assert_gram(&SuperRes::new([c, 8, 12], k).unwrap(), seed);
            seed += 1;
        }
    }
    // k = 1 is the identity; a non-square low-resolution grid with odd sides.
    assert_gram(&SuperRes::new([2, 4, 6], 1).unwrap(), seed);
    assert_gram(&SuperRes::new([2, 6, 10], 2).unwrap(), seed + 1);
}

/// A fixed non-symmetric, non-normalised kernel (complex `K`, `|K|^2` away from 1).
fn skew_kernel(s: usize, seed: u64) -> Vec<f64> {
    let mut r = SampleStreams::new(seed, [0]);
    r.normal_vec(s * s).iter().map(|v| 0.3 + v).collect()
}

#[test]
fn blur() {
    let mut seed = 30;
    for s in [3, 7] {
        for shape in [[3, 8, 12], [1, 7, 5]] {
            for path in [BlurPath::Direct, BlurPath::Fft] {
                let g = Blur::gaussian(shape, s, 1.2).unwrap().with_path(path);
                assert_gram(&g, seed);
                let k = Blur::from_kernel(shape, &skew_kernel(s, seed), s)
                    .unwrap()
                    .with_path(path);
                assert_gram(&k, seed + 1);
                seed += 2;
            }
        }
    }
    // A kernel larger than the image wraps onto the torus.
    let k = Blur::from_kernel([1, 4, 5], &skew_kernel(7, 3), 7).unwrap();
    assert_gram(&k, seed);
}

/// `M_s[u] = (M[u] + M[-u]) / 2` per row for a centred mask (`-u = (2 (H/2) - u) mod H`).
fn symmetrised(mask: &[bool]) -> Vec<f64> {
    let h = mask.len();
    (0..h)
        .map(|u| (mask[u] as u8 + mask[(2 * (h / 2) + h - u) % h] as u8) as f64 / 2.0)
        .collect()
}

#[test]
fn mri_single_coil() {
    let t = true;
    let f = false;
    let cases: Vec<([usize; 3], Vec<bool>, bool)> = vec![
        // 8 x 8: rows 1 and 2 without their reflections 7 and 6 (eigenvalue 1/2), DC row 4.
        ([1, 8, 8], vec![f, t, t, f, t, f, f, f], false),
        // Row 0 (frequency -H/2) is its own reflection on an even grid.
        ([1, 8, 8], vec![t, t, f, f, f, f, f, f], false),
        ([1, 8, 8], vec![t, f, f, t, t, t, f, f], true),
        ([1, 6, 10], vec![f, t, t, t, f, f], false),
        ([1, 6, 10], vec![t, f, t, t, t, f], true),
        // Odd H: DC row 3, pairs (2, 4), (1, 5), (0, 6).
        ([1, 7, 5], vec![t, t, f, t, t, f, f], false),
        ([1, 7, 5], vec![f, t, t, t, t, t, f], true),
    ];
    for (i, (shape, mask, symmetric)) in cases.iter().enumerate() {
        let ms = symmetrised(mask);
        let is_sym = ms.iter().all(|&v| v != 0.5);
        assert_eq!(is_sym, *symmetric, "case {i}: mask symmetry");
        let op = Mri::from_mask(*shape, mask).unwrap();
        assert_gram(&op, 40 + i as u64);
        let mut ev = op.gram_spectrum().unwrap().eigenvalues().unwrap();
        ev.dedup();
        assert_eq!(
            distinct(&ev, 0.0),
            distinct(&ms, 0.0),
            "case {i}: eigenvalues"
        );
    }
    let op = Mri::cartesian([1, 10, 6], 3.0, 2, 5).unwrap();
    assert_gram(&op, 50);
}

#[test]
fn mri_multicoil_has_no_spectrum() {
    let mut s = SampleStreams::range(9, 2);
    let v = s.normal_vec(2 * 8 * 6);
    let n = 2 * 8 * 6;
    let (re, im) = (&v[..n], &v[n..]);
    let op = Mri::multicoil([1, 8, 6], re, im, 2.0, 2, 1).unwrap();
    assert!(op.gram_spectrum().is_none());
    // One coil with a non-trivial sensitivity is still not diagonal in k-space.
    let mask = [true, false, true, true, true, false, false, false];
    let op = Mri::multicoil_from_mask([1, 8, 6], &re[..48], &im[..48], &mask).unwrap();
    assert!(op.gram_spectrum().is_none());
    // ... and the dense check agrees: the single-coil spectrum (k-space basis, same mask) is
    // not that of its A^T A.
    let single = Mri::from_mask([1, 8, 6], &mask).unwrap();
    assert_gram(&single, 1);
    let borrowed = Borrowed {
        inner: &op,
        spec: single.gram_spectrum().unwrap(),
    };
    assert!(check_gram(&borrowed, 1).is_err());
}

/// An operator with another operator's spectrum.
struct Borrowed<'a> {
    inner: &'a dyn LinearOperator,
    spec: &'a dyn GramSpectrum,
}

impl LinearOperator for Borrowed<'_> {
    fn in_dim(&self) -> usize {
        self.inner.in_dim()
    }
    fn out_dim(&self) -> usize {
        self.inner.out_dim()
    }
    fn apply(&self, x: &Tensor) -> diffpost::Result<Tensor> {
        self.inner.apply(x)
    }
    fn adjoint(&self, y: &Tensor) -> diffpost::Result<Tensor> {
        self.inner.adjoint(y)
    }
    fn name(&self) -> String {
        format!("borrowed[{}]", self.inner.name())
    }
    fn gram_spectrum(&self) -> Option<&dyn GramSpectrum> {
        Some(self.spec)
    }
}

#[test]
fn broken_spectrum_fails_the_comparison() {
    let ops: Vec<Box<dyn LinearOperator>> = vec![
        Box::new(Identity::new(6)),
        Box::new(random_dense(5, 8, 1)),
        Box::new(Inpaint::random([3, 8, 12], 0.4, 7).unwrap()),
        Box::new(SuperRes::new([3, 8, 12], 2).unwrap()),
        Box::new(Blur::gaussian([3, 8, 12], 3, 1.0).unwrap()),
        Box::new(
            Mri::from_mask(
                [1, 8, 8],
                &[false, true, true, false, true, false, false, false],
            )
            .unwrap(),
        ),
    ];
    for op in &ops {
        assert_gram(op.as_ref(), 60);
        for in_gram_fn in [true, false] {
            let scaled = Scaled {
                inner: op.as_ref(),
                in_gram_fn,
            };
            let broken = Borrowed {
                inner: op.as_ref(),
                spec: &scaled,
            };
            let r = check_gram(&broken, 60);
            assert!(
                r.is_err(),
                "{} (eigenvalues x 1.01 in {}) passed the comparison",
                op.name(),
                if in_gram_fn { "gram_fn" } else { "eigenvalues" }
            );
        }
    }
}

#[test]
fn shape_errors() {
    let ops: Vec<Box<dyn LinearOperator>> = vec![
        Box::new(Identity::new(6)),
        Box::new(Mask::from_indicator(&[1., 0., 1.]).unwrap()),
        Box::new(random_dense(5, 8, 1)),
        Box::new(Inpaint::random([3, 8, 12], 0.4, 7).unwrap()),
        Box::new(SuperRes::new([3, 8, 12], 2).unwrap()),
        Box::new(Blur::gaussian([3, 8, 12], 3, 1.0).unwrap()),
        Box::new(Mri::from_mask([1, 8, 8], &[true; 8]).unwrap()),
    ];
    for op in &ops {
        let x = randn(1, 2, op.in_dim() + 1);
        assert!(
            op.gram_spectrum().unwrap().gram_fn(&x, &|l| l).is_err(),
            "{}",
            op.name()
        );
    }
}

/// Timing of `gram_fn` against `normal` on 3 x 64 x 64 images, batch 8 (run with
/// `--ignored --nocapture`).
#[test]
#[ignore]
fn gram_fn_cost() {
    let shape = [3, 64, 64];
    let ops: Vec<Box<dyn LinearOperator>> = vec![
        Box::new(Inpaint::random(shape, 0.5, 1).unwrap()),
        Box::new(SuperRes::new(shape, 4).unwrap()),
        Box::new(Blur::gaussian(shape, 7, 2.0).unwrap()),
        Box::new(Blur::gaussian(shape, 15, 3.0).unwrap()),
        Box::new(Mri::cartesian([1, 128, 128], 4.0, 8, 1).unwrap()),
    ];
    for op in &ops {
        let x = randn(1, 8, op.in_dim());
        let spec = op.gram_spectrum().unwrap();
        let f = |l: f64| (-0.1 * l).exp();
        let reps = 20;
        let _ = (op.normal(&x).unwrap(), spec.gram_fn(&x, &f).unwrap());
        let t = Instant::now();
        for _ in 0..reps {
            let _ = op.normal(&x).unwrap();
        }
        let tn = t.elapsed().as_secs_f64() / reps as f64;
        let t = Instant::now();
        for _ in 0..reps {
            let _ = spec.gram_fn(&x, &f).unwrap();
        }
        let tg = t.elapsed().as_secs_f64() / reps as f64;
        println!(
            "{:40} normal {:8.3} ms  gram_fn {:8.3} ms",
            op.name(),
            1e3 * tn,
            1e3 * tg
        );
    }
}
