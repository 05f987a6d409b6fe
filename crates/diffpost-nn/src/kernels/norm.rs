//! Fused GroupNorm (+ SiLU) with backward, and the runtime SIMD dispatch the elementwise
//! kernels share ([`simd_fn`]).
//!
//! The crate is built for baseline x86-64 (SSE2), so LLVM's vectorised loops are 4 lanes wide;
//! the polynomial `exp` of SiLU then makes GroupNorm+SiLU compute-bound. [`simd_fn`] compiles a
//! kernel body three times (AVX-512, AVX2+FMA, baseline) and picks one at run time. The loops
//! contain no `mul_add`, and Rust never contracts `a * b + c` on its own, so the three versions
//! round identically: results do not depend on the machine.

use super::*;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::OnceLock;

// ---------------------------------------------------------------------------------------------
// Runtime SIMD dispatch

/// 2: AVX-512 (F, BW, DQ, VL) + AVX2 + FMA; 1: AVX2 + FMA; 0: baseline.
pub(super) fn simd_level() -> u8 {
    static LEVEL: OnceLock<u8> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let v3 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            let v4 = v3
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512dq")
                && is_x86_feature_detected!("avx512vl");
            if v4 {
                return 2;
            }
            if v3 {
                return 1;
            }
        }
        0
    })
}

/// Defines `fn name(args)` whose body is compiled for AVX-512, AVX2 and the baseline, dispatched
/// on [`simd_level`] (the body and every `#[inline(always)]` helper it calls, such as
/// [`exp_f32`], are inlined into each version). Arguments: slices and scalars (elided
/// lifetimes only); the calling module must have [`simd_level`] in scope.
macro_rules! simd_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($a: $t),*) {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn imp($($a: $t),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v4($($a: $t),*) {
                    imp($($a),*)
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v3($($a: $t),*) {
                    imp($($a),*)
                }
                match simd_level() {
                    // SAFETY: the level says the CPU has these features.
                    2 => return unsafe { v4($($a),*) },
                    1 => return unsafe { v3($($a),*) },
                    _ => {}
                }
            }
            imp($($a),*)
        }
    };
}
pub(super) use simd_fn;

// ---------------------------------------------------------------------------------------------
// Vectorisable helpers (inlined into the dispatched kernels).

/// Sum with 16 independent accumulators (one AVX-512 register; order fixed).
#[inline(always)]
fn sum16(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut it = xs.chunks_exact(16);
    for c in &mut it {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    let mut s: f32 = 0.0;
    for &x in it.remainder() {
        s += x;
    }
    for a in acc {
        s += a;
    }
    s
}

/// `sum (x - m)^2`.
#[inline(always)]
fn sq_dev16(xs: &[f32], m: f32) -> f32 {
    let mut acc = [0f32; 16];
    let mut it = xs.chunks_exact(16);
    for c in &mut it {
        for i in 0..16 {
            let d = c[i] - m;
            acc[i] += d * d;
        }
    }
    let mut s: f32 = 0.0;
    for &x in it.remainder() {
        s += (x - m) * (x - m);
    }
    for a in acc {
        s += a;
    }
    s
}

/// Mean and `1/sqrt(var + eps)` of one group (two passes over data that stays in cache).
#[inline(always)]
fn stats(xs: &[f32], eps: f32) -> (f32, f32) {
    let n = xs.len() as f32;
    let mean = sum16(xs) / n;
    let var = sq_dev16(xs, mean) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// `x / (1 + exp(-x))`.
#[inline(always)]
fn silu_v(x: f32) -> f32 {
    x / (1.0 + exp_f32(-x))
}

simd_fn! {
    /// One `(sample, group)` block: `cg` channels of `hw` values; `gamma`, `beta`: the group's
    /// `cg` affine terms.
    fn gn_fwd_group(
        xs: &[f32],
        o: &mut [f32],
        gamma: &[f32],
        beta: &[f32],
        hw: usize,
        eps: f32,
        silu: bool,
    ) {
        let (mean, rstd) = stats(xs, eps);
        for (ci, (xr, or)) in xs.chunks_exact(hw).zip(o.chunks_exact_mut(hw)).enumerate() {
            let (a, c) = (gamma[ci] * rstd, beta[ci]);
            if silu {
                for (o, &x) in or.iter_mut().zip(xr) {
                    *o = silu_v((x - mean) * a + c);
                }
            } else {
                for (o, &x) in or.iter_mut().zip(xr) {
                    *o = (x - mean) * a + c;
                }
            }
        }
    }
}

/// `dz = dy * silu'((x - mean) a + c)` (or `dy`) into `dz`; returns `(sum dz, sum dz (x - mean))`.
#[inline(always)]
fn bwd_dz<const SILU: bool>(
    xr: &[f32],
    dyr: &[f32],
    dzr: &mut [f32],
    a: f32,
    c: f32,
    mean: f32,
) -> (f32, f32) {
    let hw = xr.len();
    let (dyr, dzr) = (&dyr[..hw], &mut dzr[..hw]);
    let one = |x: f32, dy: f32| -> f32 {
        if SILU {
            let z = (x - mean) * a + c;
            let s = 1.0 / (1.0 + exp_f32(-z));
            dy * (s * (1.0 + z * (1.0 - s)))
        } else {
            dy
        }
    };
    let mut acc_dz = [0f32; 16];
    let mut acc_dzx = [0f32; 16];
    let n16 = hw - hw % 16;
    for ((xc, dyc), dzc) in xr[..n16]
        .chunks_exact(16)
        .zip(dyr[..n16].chunks_exact(16))
        .zip(dzr[..n16].chunks_exact_mut(16))
    {
        for k in 0..16 {
            let dz = one(xc[k], dyc[k]);
            dzc[k] = dz;
            acc_dz[k] += dz;
            acc_dzx[k] += dz * (xc[k] - mean);
        }
    }
    let (mut sdz, mut sdzx) = (0f32, 0f32);
    for j in n16..hw {
        let dz = one(xr[j], dyr[j]);
        dzr[j] = dz;
        sdz += dz;
        sdzx += dz * (xr[j] - mean);
    }
    for k in 0..16 {
        sdz += acc_dz[k];
        sdzx += acc_dzx[k];
    }
    (sdz, sdzx)
}

simd_fn! {
    /// Backward of one `(sample, group)` block: writes `dx` and the group's `cg` partial sums
    /// `dgamma`, `dbeta`.
    fn gn_bwd_group(
        xs: &[f32],
        dys: &[f32],
        dxs: &mut [f32],
        gamma: &[f32],
        beta: &[f32],
        dgamma: &mut [f32],
        dbeta: &mut [f32],
        hw: usize,
        eps: f32,
        silu: bool,
    ) {
        let (mean, rstd) = stats(xs, eps);
        let (mut s1, mut s2) = (0f32, 0f32);
        for ci in 0..gamma.len() {
            let r = ci * hw..(ci + 1) * hw;
            let (xr, dyr, dzr) = (&xs[r.clone()], &dys[r.clone()], &mut dxs[r]);
            let (gm, bt) = (gamma[ci], beta[ci]);
            let (a, c) = (gm * rstd, bt);
            // dz (the gradient before the affine map), kept in dx; sums of dz and dz * xhat.
            let (sdz, sdzx) = if silu {
                bwd_dz::<true>(xr, dyr, dzr, a, c, mean)
            } else {
                bwd_dz::<false>(xr, dyr, dzr, a, c, mean)
            };
            let sdzx = sdzx * rstd; // sum dz * xhat
            dgamma[ci] = sdzx;
            dbeta[ci] = sdz;
            s1 += gm * sdz;
            s2 += gm * sdzx;
        }
        // dx = rstd (gamma dz - mean(gamma dz) - xhat mean(gamma dz xhat)).
        let n = xs.len() as f32;
        let (m1, m2) = (s1 / n, s2 / n);
        for ((xr, dr), &gm) in xs.chunks(hw.max(1)).zip(dxs.chunks_mut(hw.max(1))).zip(gamma) {
            for (d, &x) in dr.iter_mut().zip(xr) {
                let xh = (x - mean) * rstd;
                *d = rstd * (gm * *d - m1 - xh * m2);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GroupNorm (+ SiLU)

/// GroupNorm over `[B, C, ...]` with affine `weight`, `bias`: `[C]` (shared) or `[B, C]`
/// (per sample, e.g. a folded scale-shift), optionally followed by SiLU.
#[derive(Debug, Clone, Copy)]
struct GroupNormOp {
    groups: usize,
    eps: f32,
    silu: bool,
}

impl GroupNormOp {
    /// `(B, C, H*W..., per-sample affine)`.
    fn dims(&self, shape: &Shape, affine: &Shape) -> Result<(usize, usize, usize, bool)> {
        let d = shape.dims();
        if d.len() < 3 {
            bail!("group_norm: rank >= 3 expected, got {d:?}")
        }
        let (b, c) = (d[0], d[1]);
        if self.groups == 0 || c % self.groups != 0 {
            bail!(
                "group_norm: {} groups do not divide {c} channels",
                self.groups
            )
        }
        let per_sample = match affine.dims() {
            [n] if *n == c => false,
            [bb, n] if *bb == b && *n == c => true,
            a => bail!("group_norm: weight and bias must be [{c}] or [{b}, {c}], got {a:?}"),
        };
        Ok((b, c, d[2..].iter().product(), per_sample))
    }
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        if self.silu {
            "fused-group-norm-silu"
        } else {
            "fused-group-norm"
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, c, hw, per_sample) = self.dims(l1.shape(), l2.shape())?;
        if l2.shape() != l3.shape() {
            bail!("group_norm: weight and bias shapes differ")
        }
        let x = slice(s1, l1, "group_norm x")?;
        let gamma = slice(s2, l2, "group_norm weight")?;
        let beta = slice(s3, l3, "group_norm bias")?;
        let cg = c / self.groups;
        let glen = cg * hw;
        let mut out = vec![0f32; x.len()];
        if glen > 0 {
            let (groups, eps, silu) = (self.groups, self.eps, self.silu);
            out.par_chunks_mut(glen)
                .zip(x.par_chunks(glen))
                .enumerate()
                .for_each(|(i, (o, xs))| {
                    let (bi, g) = (i / groups, i % groups);
                    let off = if per_sample { bi * c } else { 0 } + g * cg;
                    let (ga, be) = (&gamma[off..off + cg], &beta[off..off + cg]);
                    gn_fwd_group(xs, o, ga, be, hw, eps, silu);
                });
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, c, hw, per_sample) = self.dims(x.shape(), gamma.shape())?;
        let cg = c / self.groups;
        let glen = cg * hw;
        let (groups, eps, silu) = (self.groups, self.eps, self.silu);
        let mut dx = vec![0f32; x.elem_count()];
        // Per-sample d/dgamma and d/dbeta (reduced over the batch in order when shared).
        let mut pg = vec![0f32; b * c];
        let mut pb = vec![0f32; b * c];
        if glen > 0 {
            with_data(x, "group_norm x", |xd| {
                with_data(gamma, "group_norm weight", |gd| {
                    with_data(beta, "group_norm bias", |bd| {
                        with_data(grad_res, "group_norm grad", |dy| {
                            dx.par_chunks_mut(glen)
                                .zip(pg.par_chunks_mut(cg).zip(pb.par_chunks_mut(cg)))
                                .zip(xd.par_chunks(glen).zip(dy.par_chunks(glen)))
                                .enumerate()
                                .for_each(|(i, ((dxs, (pgs, pbs)), (xs, dys)))| {
                                    let (bi, g) = (i / groups, i % groups);
                                    let off = if per_sample { bi * c } else { 0 } + g * cg;
                                    gn_bwd_group(
                                        xs,
                                        dys,
                                        dxs,
                                        &gd[off..off + cg],
                                        &bd[off..off + cg],
                                        pgs,
                                        pbs,
                                        hw,
                                        eps,
                                        silu,
                                    );
                                });
                            Ok(())
                        })
                    })
                })
            })?;
        }
        let dev = x.device();
        let (dg, db) = if per_sample {
            (
                Tensor::from_vec(pg, (b, c), dev)?,
                Tensor::from_vec(pb, (b, c), dev)?,
            )
        } else {
            let mut dg = vec![0f32; c];
            let mut db = vec![0f32; c];
            for bi in 0..b {
                for ch in 0..c {
                    dg[ch] += pg[bi * c + ch];
                    db[ch] += pb[bi * c + ch];
                }
            }
            (Tensor::from_vec(dg, c, dev)?, Tensor::from_vec(db, c, dev)?)
        };
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(dg),
            Some(db),
        ))
    }
}

/// GroupNorm of `x: [B, C, ...]` (f32, CPU) with `weight`, `bias`: `[C]`, or `[B, C]` for a
/// per-sample affine map (a folded scale-shift); `silu` fuses a SiLU after it. Same result as
/// candle-nn's `GroupNorm` (then the per-sample affine map, then `.silu()`) up to float rounding.
pub fn group_norm(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        GroupNormOp {
            groups,
            eps: eps as f32,
            silu,
        },
    )
}
