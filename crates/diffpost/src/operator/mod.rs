//! Linear forward operators `A: R^d -> R^m` acting on batch-first tensors `[B, d] -> [B, m]`.
//!
//! Each operator offers `apply` (A) and `adjoint` (A^T); the normal operator, the spectral norm
//! (power iteration) and least squares (CGLS) have generic defaults here (deepinv style).

pub mod dense;
pub mod identity;
pub mod image;
pub mod mask;

use candle_core::{DType, Tensor};
use nalgebra::DMatrix;

use crate::rng::SampleStreams;
use crate::{Error, Result};

pub use dense::Dense;
pub use identity::Identity;
pub use mask::Mask;

/// The spectral decomposition `A^T A = V diag(lambda) V^T` of an operator's normal operator
/// (docs/algorithms.md, "Exact-likelihood integrator"), used to integrate the Gaussian
/// likelihood's Langevin flow exactly. `f` acts on the eigenvalues.
pub trait GramSpectrum: Send + Sync {
    /// `f(A^T A) x = V diag(f(lambda)) V^T x` for `x: [B, d]`.
    fn gram_fn(&self, x: &Tensor, f: &dyn Fn(f64) -> f64) -> Result<Tensor>;
    /// The `d` eigenvalues of `A^T A`, with multiplicity (the nonzero ones are those of
    /// `A A^T`, so `log det(eta^2 I_m + rho^2 A A^T)` follows); the largest is `||A||^2`.
    fn eigenvalues(&self) -> Result<Vec<f64>>;
}

/// `f(diag(w)) x = x * f(w)` for a normal operator that is diagonal in the pixel basis
/// (identity, masks, boxes): `w` holds the diagonal, `[d]`. `f` is evaluated once per distinct
/// value while there are few of them (0/1 masks: twice per call, not `d` times).
pub(crate) fn diagonal_gram_fn(x: &Tensor, w: &[f64], f: &dyn Fn(f64) -> f64) -> Result<Tensor> {
    let mut seen: Vec<(u64, f64)> = Vec::with_capacity(4);
    let fw: Vec<f64> = w
        .iter()
        .map(|&v| {
            let bits = v.to_bits();
            if let Some(&(_, fv)) = seen.iter().find(|(b, _)| *b == bits) {
                return fv;
            }
            let fv = f(v);
            if seen.len() < 4 {
                seen.push((bits, fv));
            }
            fv
        })
        .collect();
    let t = Tensor::from_vec(fw, (1, w.len()), x.device())?.to_dtype(x.dtype())?;
    Ok(x.broadcast_mul(&t)?)
}

/// A linear operator with its adjoint. Row-independent on the batch dimension.
pub trait LinearOperator: Send + Sync {
    /// Input dimension d.
    fn in_dim(&self) -> usize;
    /// Output dimension m (real entries).
    fn out_dim(&self) -> usize;
    /// `A x` for `x: [B, d]`, returns `[B, m]`. Differentiable through candle autograd.
    fn apply(&self, x: &Tensor) -> Result<Tensor>;
    /// `A^T y` for `y: [B, m]`, returns `[B, d]`.
    fn adjoint(&self, y: &Tensor) -> Result<Tensor>;
    /// `A^T A x`.
    fn normal(&self, x: &Tensor) -> Result<Tensor> {
        self.adjoint(&self.apply(x)?)
    }
    /// Short name for summaries.
    fn name(&self) -> String;
    /// For coordinate-selection operators (identity, mask): the observed coordinates, in the
    /// order of `y`. Lets exact posteriors take a per-coordinate path.
    fn selection(&self) -> Option<&[usize]> {
        None
    }
    /// Pseudo-inverse `A^+ y` for `y: [B, m]`: the minimum-norm least-squares solution. Default:
    /// CGLS from zero (which converges to the minimum-norm solution), 300 iterations, relative
    /// tolerance 1e-8; operators with a closed form override it.
    fn pseudo_inverse(&self, y: &Tensor) -> Result<Tensor> {
        cg_least_squares(self, y, None, 0.0, 300, 1e-8)
    }
    /// For image operators: the `[C, H, W]` shape of `x` (flattened to `d = C H W` on the batch).
    fn image_shape(&self) -> Option<[usize; 3]> {
        None
    }
    /// The eigen-decomposition of `A^T A` when the operator has a fast one (all but multi-coil
    /// MRI); samplers with `integrator = "exact-likelihood"` need it.
    fn gram_spectrum(&self) -> Option<&dyn GramSpectrum> {
        None
    }
    /// The operator as a dense `[m, d]` matrix (for exact posteriors on small problems).
    fn to_dense(&self) -> Result<DMatrix<f64>> {
        let d = self.in_dim();
        let eye = Tensor::eye(d, DType::F64, &candle_core::Device::Cpu)?;
        let cols = self.apply(&eye)?; // row j = A e_j, [d, m]
        let v: Vec<Vec<f64>> = cols.to_dtype(DType::F64)?.to_vec2()?;
        let m = self.out_dim();
        Ok(DMatrix::from_fn(m, d, |r, c| v[c][r]))
    }
}

/// Checks `x` is `[B, d]` for this operator.
pub(crate) fn check_in<O: LinearOperator + ?Sized>(op: &O, x: &Tensor) -> Result<()> {
    let dims = x.dims();
    if dims.len() != 2 || dims[1] != op.in_dim() {
        return Err(Error::shape(
            format!("input of operator `{}`", op.name()),
            format!("[B, {}]", op.in_dim()),
            dims,
        ));
    }
    Ok(())
}

/// Checks `y` is `[B, m]` for this operator.
pub(crate) fn check_out<O: LinearOperator + ?Sized>(op: &O, y: &Tensor) -> Result<()> {
    let dims = y.dims();
    if dims.len() != 2 || dims[1] != op.out_dim() {
        return Err(Error::shape(
            format!("measurement for operator `{}`", op.name()),
            format!("[B, {}]", op.out_dim()),
            dims,
        ));
    }
    Ok(())
}

fn row_norms(x: &Tensor) -> Result<Tensor> {
    Ok(x.sqr()?.sum_keepdim(1)?.sqrt()?)
}

/// Spectral norm `||A||` by power iteration on `A^T A` from a seeded random start.
pub fn op_norm(op: &dyn LinearOperator, iters: usize, seed: u64) -> Result<f64> {
    let device = candle_core::Device::Cpu;
    let mut s = SampleStreams::new(seed, [0]);
    let mut v = s.randn(&[op.in_dim()], &device)?;
    v = v.broadcast_div(&row_norms(&v)?)?;
    let mut lam = 0.0;
    for _ in 0..iters.max(1) {
        let w = op.normal(&v)?;
        let n = row_norms(&w)?.flatten_all()?.to_vec1::<f64>()?[0];
        if n == 0.0 {
            return Ok(0.0);
        }
        let new = n.sqrt();
        v = (w / n)?;
        if (new - lam).abs() <= 1e-10 * new {
            lam = new;
            break;
        }
        lam = new;
    }
    Ok(lam)
}

/// Least squares `argmin_x |A x - y|^2 + damping |x|^2` by CGLS, per row of `y: [B, m]`,
/// started from `x0` (zeros if `None`). Stops after `iters` or when every row's normal-equation
/// residual is below `tol` relative to `|A^T y|`.
pub fn cg_least_squares<O: LinearOperator + ?Sized>(
    op: &O,
    y: &Tensor,
    x0: Option<&Tensor>,
    damping: f64,
    iters: usize,
    tol: f64,
) -> Result<Tensor> {
    check_out(op, y)?;
    let b = y.dims()[0];
    let mut x = match x0 {
        Some(x) => x.clone(),
        None => Tensor::zeros((b, op.in_dim()), DType::F64, y.device())?,
    };
    let normal = |v: &Tensor| -> Result<Tensor> {
        let n = op.normal(v)?;
        Ok(if damping > 0.0 {
            (n + (v * damping)?)?
        } else {
            n
        })
    };
    // Conjugate gradients on (A^T A + damping I) x = A^T y, row by row (all rows in lock-step).
    let rhs = op.adjoint(y)?;
    let rhs_norm = rhs.sqr()?.sum_keepdim(1)?.sqrt()?;
    let mut r = (&rhs - normal(&x)?)?;
    let mut p = r.clone();
    let mut rs = r.sqr()?.sum_keepdim(1)?;
    for _ in 0..iters {
        let res: Vec<f64> = rs
            .sqrt()?
            .broadcast_div(&(&rhs_norm + 1e-300)?)?
            .flatten_all()?
            .to_vec1()?;
        if res.iter().all(|v| *v <= tol) {
            break;
        }
        let ap = normal(&p)?;
        let pap = (&p * &ap)?.sum_keepdim(1)?;
        // Rows already converged have pap = 0 and rs = 0: guard the divisions.
        let alpha = rs.broadcast_div(&(pap + 1e-300)?)?;
        x = (x + p.broadcast_mul(&alpha)?)?;
        r = (r - ap.broadcast_mul(&alpha)?)?;
        let rs_new = r.sqr()?.sum_keepdim(1)?;
        let beta = rs_new.broadcast_div(&(&rs + 1e-300)?)?;
        p = (&r + p.broadcast_mul(&beta)?)?;
        rs = rs_new;
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn ops() -> Vec<Box<dyn LinearOperator>> {
        let mut s = SampleStreams::new(3, [0]);
        let a = s.normal_vec(7 * 12);
        vec![
            Box::new(Dense::new(DMatrix::from_row_slice(7, 12, &a)).unwrap()),
            Box::new(Identity::new(12)),
            Box::new(
                Mask::from_indicator(&[1., 0., 1., 1., 0., 0., 1., 1., 0., 1., 0., 1.]).unwrap(),
            ),
        ]
    }

    /// The adjointness sweep: `<A x, y> = <x, A^T y>` for every operator.
    #[test]
    fn adjointness_sweep() {
        for op in ops() {
            let mut s = SampleStreams::range(11, 5);
            let x = s.randn(&[op.in_dim()], &Device::Cpu).unwrap();
            let y = s.randn(&[op.out_dim()], &Device::Cpu).unwrap();
            let lhs = (op.apply(&x).unwrap() * &y)
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            let rhs = (&x * op.adjoint(&y).unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(
                (lhs - rhs).abs() <= 1e-10 * (1.0 + lhs.abs()),
                "{}: {lhs} vs {rhs}",
                op.name()
            );
            // Dense form agrees with apply.
            let a = op.to_dense().unwrap();
            let xv: Vec<f64> = x
                .narrow(0, 0, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let ax = &a * nalgebra::DVector::from_vec(xv);
            let ap: Vec<f64> = op
                .apply(&x)
                .unwrap()
                .narrow(0, 0, 1)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            for (u, v) in ax.iter().zip(ap) {
                assert!((u - v).abs() < 1e-10);
            }
        }
    }

    #[test]
    fn norm_and_least_squares() {
        for op in ops() {
            let a = op.to_dense().unwrap();
            let exact = a.singular_values().max();
            let est = op_norm(op.as_ref(), 500, 1).unwrap();
            assert!(
                (est - exact).abs() < 1e-6 * exact,
                "{}: {est} vs {exact}",
                op.name()
            );
        }
        // CGLS on an overdetermined full-rank system recovers x.
        let mut s = SampleStreams::new(5, [0]);
        let a = DMatrix::from_row_slice(12, 7, &s.normal_vec(84));
        let op = Dense::new(a.clone()).unwrap();
        let x = SampleStreams::range(2, 3)
            .randn(&[7], &Device::Cpu)
            .unwrap();
        let y = op.apply(&x).unwrap();
        let xh = cg_least_squares(&op, &y, None, 0.0, 100, 1e-12).unwrap();
        let err = (xh - &x)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(err < 1e-8, "{err}");
    }
}
