//! Fused CPU kernels for the UNet, as candle custom ops with backward passes (autograd keeps
//! working through them: training and DPS both backpropagate).
//!
//! candle 0.11's CPU conv (im2col into its generic matmul), GroupNorm (about ten primitive ops,
//! each a single-threaded memory pass) and unary ops (scalar `exp`) are the UNet's bottlenecks
//! (see `shared/design/PERFORMANCE.md`). Here:
//! - [`group_norm`]: GroupNorm with an optional fused SiLU, forward and backward in one pass each
//!   over the data, multi-threaded over `(batch, group)`;
//! - [`silu`]: SiLU with a vectorisable `exp`;
//! - [`conv2d`]: 2-D convolution (any kernel size, stride and padding) as im2col + `gemm`, with
//!   a per-channel `[C_out]` or per-sample `[B, C_out]` bias (the UNet folds its noise embedding
//!   into the latter), multi-threaded over the batch;
//! - [`add_scale`]: `(a + b) * s` (the residual joins).
//!
//! Every op wants contiguous f32 CPU tensors; the wrappers make their inputs contiguous and the
//! callers ([`super::unet`]) fall back to candle's own ops on other devices and dtypes. Results are
//! deterministic for a fixed rayon thread count (partial sums are reduced in a fixed order).

use candle_core::{
    bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Storage,
    Tensor,
};
use gemm::Parallelism;
use rayon::prelude::*;

/// True when the fused kernels can run on `t` (contiguity is arranged by the wrappers).
pub fn supported(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{what}: the fused kernel needs a contiguous input"),
    }
}

/// Runs `f` on the contiguous f32 data of a CPU tensor (no copy when already contiguous).
fn with_data<R>(t: &Tensor, what: &str, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cpu(c) => f(slice(c, l, what)?),
        _ => bail!("{what}: the fused kernel runs on the CPU only"),
    }
}

fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

// ---------------------------------------------------------------------------------------------
// Vectorisable scalar math (no libm calls, no branches: LLVM turns the loops into SIMD).

/// `exp(x)` for f32 (Cephes polynomial, about 2 ulp), clamped to the finite range.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let x = x.clamp(-87.0, 88.0);
    let t = x * LOG2E + MAGIC;
    let n = t - MAGIC;
    let ni = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let r = x - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let y = p * r2 + r + 1.0;
    y * f32::from_bits(((ni + 127) << 23) as u32)
}

#[inline(always)]
fn sigmoid_f32(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

#[inline(always)]
fn silu_f32(x: f32) -> f32 {
    x * sigmoid_f32(x)
}

/// `d silu / dx = s (1 + x (1 - s))` with `s = sigmoid(x)`.
#[inline(always)]
fn silu_grad_f32(x: f32) -> f32 {
    let s = sigmoid_f32(x);
    s * (1.0 + x * (1.0 - s))
}

/// Sum with 16 independent accumulators (vectorises; more accurate than a serial sum).
#[inline(always)]
fn sum_f32(xs: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut it = xs.chunks_exact(16);
    for c in &mut it {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    let mut s: f32 = it.remainder().iter().sum();
    for a in acc {
        s += a;
    }
    s
}

/// `sum (x - m)^2`.
#[inline(always)]
fn sq_dev_sum_f32(xs: &[f32], m: f32) -> f32 {
    let mut acc = [0f32; 16];
    let mut it = xs.chunks_exact(16);
    for c in &mut it {
        for i in 0..16 {
            let d = c[i] - m;
            acc[i] += d * d;
        }
    }
    let mut s: f32 = it.remainder().iter().map(|&x| (x - m) * (x - m)).sum();
    for a in acc {
        s += a;
    }
    s
}

/// Mean and `1/sqrt(var + eps)` of one group (two-pass, like candle's GroupNorm).
fn group_stats(xs: &[f32], eps: f32) -> (f32, f32) {
    let n = xs.len() as f32;
    let mean = sum_f32(xs) / n;
    let var = sq_dev_sum_f32(xs, mean) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

// ---------------------------------------------------------------------------------------------
// GroupNorm (+ SiLU)

/// GroupNorm over `[B, C, ...]` with affine `weight`, `bias: [C]`, optionally followed by SiLU.
#[derive(Debug, Clone, Copy)]
struct GroupNormOp {
    groups: usize,
    eps: f32,
    silu: bool,
}

impl GroupNormOp {
    fn dims(&self, shape: &Shape) -> Result<(usize, usize, usize)> {
        let d = shape.dims();
        if d.len() < 3 {
            bail!("group_norm: rank >= 3 expected, got {d:?}")
        }
        let (b, c) = (d[0], d[1]);
        if c % self.groups != 0 {
            bail!(
                "group_norm: {} groups do not divide {c} channels",
                self.groups
            )
        }
        Ok((b, c, d[2..].iter().product()))
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
        let (_, c, hw) = self.dims(l1.shape())?;
        let x = slice(s1, l1, "group_norm x")?;
        let gamma = slice(s2, l2, "group_norm weight")?;
        let beta = slice(s3, l3, "group_norm bias")?;
        if gamma.len() != c || beta.len() != c {
            bail!("group_norm: weight and bias must have {c} entries")
        }
        let cg = c / self.groups;
        let glen = cg * hw;
        let mut out = vec![0f32; x.len()];
        if glen > 0 {
            let (groups, eps, silu) = (self.groups, self.eps, self.silu);
            out.par_chunks_mut(glen)
                .zip(x.par_chunks(glen))
                .enumerate()
                .for_each(|(i, (o, xs))| {
                    let g = i % groups;
                    let (mean, rstd) = group_stats(xs, eps);
                    for ci in 0..cg {
                        let ch = g * cg + ci;
                        let a = gamma[ch] * rstd;
                        let bb = beta[ch];
                        let xr = &xs[ci * hw..(ci + 1) * hw];
                        let or = &mut o[ci * hw..(ci + 1) * hw];
                        if silu {
                            for (o, &x) in or.iter_mut().zip(xr) {
                                *o = silu_f32((x - mean) * a + bb);
                            }
                        } else {
                            for (o, &x) in or.iter_mut().zip(xr) {
                                *o = (x - mean) * a + bb;
                            }
                        }
                    }
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
        let (b, c, hw) = self.dims(x.shape())?;
        let cg = c / self.groups;
        let glen = cg * hw;
        let (groups, eps, silu) = (self.groups, self.eps, self.silu);
        let n = x.elem_count();
        let mut dx = vec![0f32; n];
        // Per-sample partial sums of d/dgamma and d/dbeta, reduced over the batch in order.
        let mut pg = vec![0f32; b * c];
        let mut pb = vec![0f32; b * c];
        with_data(x, "group_norm x", |xd| {
            with_data(gamma, "group_norm weight", |gd| {
                with_data(beta, "group_norm bias", |bd| {
                    with_data(grad_res, "group_norm grad", |dy| {
                        if glen == 0 {
                            return Ok(());
                        }
                        dx.par_chunks_mut(glen)
                            .zip(pg.par_chunks_mut(cg).zip(pb.par_chunks_mut(cg)))
                            .enumerate()
                            .for_each(|(i, (dxs, (pgs, pbs)))| {
                                let g = i % groups;
                                let xs = &xd[i * glen..(i + 1) * glen];
                                let dys = &dy[i * glen..(i + 1) * glen];
                                let (mean, rstd) = group_stats(xs, eps);
                                let (mut s1, mut s2) = (0f32, 0f32);
                                for ci in 0..cg {
                                    let ch = g * cg + ci;
                                    let (gm, bt) = (gd[ch], bd[ch]);
                                    let r = ci * hw..(ci + 1) * hw;
                                    let (xr, dyr) = (&xs[r.clone()], &dys[r.clone()]);
                                    // dz (the gradient before the affine map) goes into dx.
                                    let dzr = &mut dxs[r];
                                    if silu {
                                        for ((dz, &x), &dy) in dzr.iter_mut().zip(xr).zip(dyr) {
                                            let z = (x - mean) * rstd * gm + bt;
                                            *dz = dy * silu_grad_f32(z);
                                        }
                                    } else {
                                        dzr.copy_from_slice(dyr);
                                    }
                                    let sdz = sum_f32(dzr);
                                    let mut acc = [0f32; 16];
                                    let mut it = dzr.chunks_exact(16).zip(xr.chunks_exact(16));
                                    for (dzc, xc) in &mut it {
                                        for k in 0..16 {
                                            acc[k] += dzc[k] * (xc[k] - mean);
                                        }
                                    }
                                    let tail = hw - hw % 16;
                                    let mut sdzx: f32 = dzr[tail..]
                                        .iter()
                                        .zip(&xr[tail..])
                                        .map(|(&d, &x)| d * (x - mean))
                                        .sum();
                                    for a in acc {
                                        sdzx += a;
                                    }
                                    let sdzx = sdzx * rstd; // sum dz * xhat
                                    pgs[ci] = sdzx;
                                    pbs[ci] = sdz;
                                    s1 += gm * sdz;
                                    s2 += gm * sdzx;
                                }
                                // dx = rstd (gamma dz - mean(gamma dz) - xhat mean(gamma dz xhat)).
                                let m1 = s1 / glen as f32;
                                let m2 = s2 / glen as f32;
                                for ci in 0..cg {
                                    let gm = gd[g * cg + ci];
                                    let r = ci * hw..(ci + 1) * hw;
                                    let xr = &xs[r.clone()];
                                    for (d, &x) in dxs[r].iter_mut().zip(xr) {
                                        let xh = (x - mean) * rstd;
                                        *d = rstd * (gm * *d - m1 - xh * m2);
                                    }
                                }
                            });
                        Ok(())
                    })
                })
            })
        })?;
        let mut dg = vec![0f32; c];
        let mut db = vec![0f32; c];
        for bi in 0..b {
            for ch in 0..c {
                dg[ch] += pg[bi * c + ch];
                db[ch] += pb[bi * c + ch];
            }
        }
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dg, c, dev)?),
            Some(Tensor::from_vec(db, c, dev)?),
        ))
    }
}

/// GroupNorm of `x: [B, C, ...]` (f32, CPU) with `weight`, `bias: [C]`; `silu` fuses a SiLU after
/// it. Same result as candle-nn's `GroupNorm` (then `.silu()`) up to float rounding.
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

// ---------------------------------------------------------------------------------------------
// SiLU

/// Elements per parallel task of the elementwise ops.
const ELEM_CHUNK: usize = 1 << 14;

#[derive(Debug, Clone, Copy)]
struct SiluOp;

impl CustomOp1 for SiluOp {
    fn name(&self) -> &'static str {
        "fused-silu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, "silu")?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(ELEM_CHUNK)
            .zip(x.par_chunks(ELEM_CHUNK))
            .for_each(|(o, x)| {
                for (o, &x) in o.iter_mut().zip(x) {
                    *o = silu_f32(x);
                }
            });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let mut dx = vec![0f32; arg.elem_count()];
        with_data(arg, "silu x", |x| {
            with_data(grad_res, "silu grad", |dy| {
                dx.par_chunks_mut(ELEM_CHUNK)
                    .zip(x.par_chunks(ELEM_CHUNK).zip(dy.par_chunks(ELEM_CHUNK)))
                    .for_each(|(d, (x, dy))| {
                        for ((d, &x), &dy) in d.iter_mut().zip(x).zip(dy) {
                            *d = dy * silu_grad_f32(x);
                        }
                    });
                Ok(())
            })
        })?;
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// SiLU `x sigmoid(x)` of an f32 CPU tensor (multi-threaded, vectorised).
pub fn silu(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(SiluOp)
}

// ---------------------------------------------------------------------------------------------
// (a + b) * s

#[derive(Debug, Clone, Copy)]
struct AddScaleOp {
    scale: f32,
}

impl CustomOp2 for AddScaleOp {
    fn name(&self) -> &'static str {
        "fused-add-scale"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            bail!(
                "add_scale: shapes {:?} and {:?} differ",
                l1.shape(),
                l2.shape()
            )
        }
        let a = slice(s1, l1, "add_scale a")?;
        let b = slice(s2, l2, "add_scale b")?;
        let s = self.scale;
        let mut out = vec![0f32; a.len()];
        out.par_chunks_mut(ELEM_CHUNK)
            .zip(a.par_chunks(ELEM_CHUNK).zip(b.par_chunks(ELEM_CHUNK)))
            .for_each(|(o, (a, b))| {
                for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                    *o = (a + b) * s;
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = (grad_res * self.scale as f64)?;
        Ok((Some(g.clone()), Some(g)))
    }
}

/// `(a + b) * scale` in one multi-threaded pass (same shapes, f32 CPU).
pub fn add_scale(a: &Tensor, b: &Tensor, scale: f64) -> Result<Tensor> {
    a.contiguous()?.apply_op2(
        &b.contiguous()?,
        AddScaleOp {
            scale: scale as f32,
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Conv2d: im2col + gemm

#[derive(Debug, Clone, Copy)]
struct ConvGeom {
    cin: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl ConvGeom {
    fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }

    fn pout(&self) -> usize {
        self.ho * self.wo
    }

    /// A 1x1 stride-1 unpadded conv reads the input directly as its column matrix.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    /// Output columns `[ox0, ox1)` whose input column `ox * stride + kx - pad` is inside.
    fn valid_ox(&self, kx: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.pad);
        // ox * s + kx >= p  <=>  ox >= ceil((p - kx) / s)
        let lo = if kx >= p { 0 } else { (p - kx).div_ceil(s) };
        // ox * s + kx - p <= w - 1  <=>  ox <= (w - 1 + p - kx) / s
        let hi = if self.w + p > kx {
            ((self.w - 1 + p - kx) / s + 1).min(self.wo)
        } else {
            0
        };
        (lo.min(hi), hi)
    }

    /// `cols[K, Ho*Wo]` of one sample `x: [Cin, H, W]`.
    fn im2col(&self, x: &[f32], cols: &mut [f32]) {
        let (h, w, s, p, wo, pout) = (self.h, self.w, self.stride, self.pad, self.wo, self.pout());
        for ci in 0..self.cin {
            let xc = &x[ci * h * w..(ci + 1) * h * w];
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    let row = (ci * self.kh + ky) * self.kw + kx;
                    let dst = &mut cols[row * pout..(row + 1) * pout];
                    let (ox0, ox1) = self.valid_ox(kx);
                    for oy in 0..self.ho {
                        let d = &mut dst[oy * wo..(oy + 1) * wo];
                        let iy = (oy * s + ky) as isize - p as isize;
                        if iy < 0 || iy >= h as isize {
                            d.fill(0.0);
                            continue;
                        }
                        let xr = &xc[iy as usize * w..(iy as usize + 1) * w];
                        d[..ox0].fill(0.0);
                        d[ox1..].fill(0.0);
                        if ox1 > ox0 {
                            let ix0 = ox0 * s + kx - p;
                            if s == 1 {
                                d[ox0..ox1].copy_from_slice(&xr[ix0..ix0 + (ox1 - ox0)]);
                            } else {
                                for (j, v) in d[ox0..ox1].iter_mut().enumerate() {
                                    *v = xr[ix0 + j * s];
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Adds the column gradients `cols[K, Ho*Wo]` back into `dx: [Cin, H, W]` (zeroed first).
    fn col2im(&self, cols: &[f32], dx: &mut [f32]) {
        let (h, w, s, p, wo, pout) = (self.h, self.w, self.stride, self.pad, self.wo, self.pout());
        dx.fill(0.0);
        for ci in 0..self.cin {
            let dc = &mut dx[ci * h * w..(ci + 1) * h * w];
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    let row = (ci * self.kh + ky) * self.kw + kx;
                    let src = &cols[row * pout..(row + 1) * pout];
                    let (ox0, ox1) = self.valid_ox(kx);
                    if ox1 <= ox0 {
                        continue;
                    }
                    for oy in 0..self.ho {
                        let iy = (oy * s + ky) as isize - p as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        let sr = &src[oy * wo..(oy + 1) * wo];
                        let dr = &mut dc[iy as usize * w..(iy as usize + 1) * w];
                        let ix0 = ox0 * s + kx - p;
                        if s == 1 {
                            for (d, &v) in dr[ix0..ix0 + (ox1 - ox0)].iter_mut().zip(&sr[ox0..ox1])
                            {
                                *d += v;
                            }
                        } else {
                            for (j, &v) in sr[ox0..ox1].iter().enumerate() {
                                dr[ix0 + j * s] += v;
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Row-major `dst[m, n] (+)= lhs[m, k] @ rhs[k, n]` with explicit (row, column) strides.
#[allow(clippy::too_many_arguments)]
fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    lhs: &[f32],
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: &[f32],
    (rhs_rs, rhs_cs): (usize, usize),
    par: Parallelism,
) {
    assert!(dst.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    assert!(lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
    assert!(rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    // SAFETY: the asserts above keep every access of the three matrices in bounds, and `dst`
    // does not alias `lhs` or `rhs` (a `&mut` and two `&` slices).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_cs as isize,
            lhs_rs as isize,
            rhs.as_ptr(),
            rhs_cs as isize,
            rhs_rs as isize,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            par,
        )
    }
}

/// Splits `0..b` into `parts` contiguous ranges of nearly equal length.
fn batch_ranges(b: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.clamp(1, b.max(1));
    (0..parts)
        .map(|i| (i * b / parts)..((i + 1) * b / parts))
        .collect()
}

/// 2-D convolution `x: [B, Cin, H, W]`, `w: [Cout, Cin, kh, kw]`, bias `[Cout]` or `[B, Cout]`.
#[derive(Debug, Clone, Copy)]
struct Conv2dOp {
    stride: usize,
    pad: usize,
}

impl Conv2dOp {
    fn geom(&self, xs: &Shape, ws: &Shape, bs: &Shape) -> Result<(usize, usize, ConvGeom, bool)> {
        let (b, cin, h, w) = xs.dims4()?;
        let (cout, wcin, kh, kw) = ws.dims4()?;
        if wcin != cin {
            bail!("conv2d: input has {cin} channels, the weight expects {wcin}")
        }
        let per_sample = match bs.dims() {
            [c] if *c == cout => false,
            [bb, c] if *bb == b && *c == cout => true,
            d => bail!("conv2d: bias must be [{cout}] or [{b}, {cout}], got {d:?}"),
        };
        let s = self.stride;
        if s == 0 || h + 2 * self.pad < kh || w + 2 * self.pad < kw {
            bail!("conv2d: invalid geometry")
        }
        let ho = (h + 2 * self.pad - kh) / s + 1;
        let wo = (w + 2 * self.pad - kw) / s + 1;
        let g = ConvGeom {
            cin,
            h,
            w,
            kh,
            kw,
            stride: s,
            pad: self.pad,
            ho,
            wo,
        };
        Ok((b, cout, g, per_sample))
    }
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "fused-conv2d"
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
        let (b, cout, g, per_sample) = self.geom(l1.shape(), l2.shape(), l3.shape())?;
        let x = slice(s1, l1, "conv2d x")?;
        let wt = slice(s2, l2, "conv2d weight")?;
        let bias = slice(s3, l3, "conv2d bias")?;
        let (k, pout, xlen) = (g.k(), g.pout(), g.cin * g.h * g.w);
        let olen = cout * pout;
        let mut out = vec![0f32; b * olen];
        let nt = threads();
        let par = if b >= nt {
            Parallelism::None
        } else {
            Parallelism::Rayon(nt)
        };
        let ranges = batch_ranges(b, nt);
        // Hand each range its own slice of the output.
        let mut outs: Vec<&mut [f32]> = Vec::with_capacity(ranges.len());
        let mut rest = out.as_mut_slice();
        for r in &ranges {
            let (head, tail) = rest.split_at_mut(r.len() * olen);
            outs.push(head);
            rest = tail;
        }
        outs.into_par_iter()
            .zip(ranges.into_par_iter())
            .for_each(|(o, r)| {
                let mut cols = if g.is_pointwise() {
                    Vec::new()
                } else {
                    vec![0f32; k * pout]
                };
                for (j, bi) in r.enumerate() {
                    let xb = &x[bi * xlen..(bi + 1) * xlen];
                    let ob = &mut o[j * olen..(j + 1) * olen];
                    let bb = if per_sample {
                        &bias[bi * cout..(bi + 1) * cout]
                    } else {
                        bias
                    };
                    for (row, &v) in ob.chunks_mut(pout).zip(bb) {
                        row.fill(v);
                    }
                    let c: &[f32] = if g.is_pointwise() {
                        xb
                    } else {
                        g.im2col(xb, &mut cols);
                        &cols
                    };
                    sgemm(cout, pout, k, ob, true, wt, (k, 1), c, (pout, 1), par);
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, cout, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, cout, g, per_sample) = self.geom(x.shape(), w.shape(), bias.shape())?;
        let (k, pout, xlen) = (g.k(), g.pout(), g.cin * g.h * g.w);
        let olen = cout * pout;
        let need_dx = x.track_op();
        let nt = threads();
        let par = if b >= nt {
            Parallelism::None
        } else {
            Parallelism::Rayon(nt)
        };
        let ranges = batch_ranges(b, nt);
        let mut dx = vec![0f32; if need_dx { b * xlen } else { 0 }];
        let mut dbias = vec![0f32; b * cout];
        let mut dw_parts = vec![vec![0f32; cout * k]; ranges.len()];
        with_data(x, "conv2d x", |xd| {
            with_data(w, "conv2d weight", |wd| {
                with_data(grad_res, "conv2d grad", |gd| {
                    let mut dxs: Vec<&mut [f32]> = Vec::with_capacity(ranges.len());
                    let mut rest = dx.as_mut_slice();
                    let mut dbs: Vec<&mut [f32]> = Vec::with_capacity(ranges.len());
                    let mut brest = dbias.as_mut_slice();
                    for r in &ranges {
                        let n = if need_dx { r.len() * xlen } else { 0 };
                        let (head, tail) = rest.split_at_mut(n);
                        dxs.push(head);
                        rest = tail;
                        let (bh, bt) = brest.split_at_mut(r.len() * cout);
                        dbs.push(bh);
                        brest = bt;
                    }
                    dxs.into_par_iter()
                        .zip(dbs.into_par_iter())
                        .zip(dw_parts.par_iter_mut())
                        .zip(ranges.clone().into_par_iter())
                        .for_each(|(((dxr, dbr), dwp), r)| {
                            let mut cols = if g.is_pointwise() {
                                Vec::new()
                            } else {
                                vec![0f32; k * pout]
                            };
                            let mut dcols = if need_dx && !g.is_pointwise() {
                                vec![0f32; k * pout]
                            } else {
                                Vec::new()
                            };
                            for (j, bi) in r.enumerate() {
                                let xb = &xd[bi * xlen..(bi + 1) * xlen];
                                let gb = &gd[bi * olen..(bi + 1) * olen];
                                for (db, row) in dbr[j * cout..(j + 1) * cout]
                                    .iter_mut()
                                    .zip(gb.chunks(pout))
                                {
                                    *db = sum_f32(row);
                                }
                                let c: &[f32] = if g.is_pointwise() {
                                    xb
                                } else {
                                    g.im2col(xb, &mut cols);
                                    &cols
                                };
                                // dW += dY [Cout, P] @ cols^T [P, K]
                                sgemm(cout, k, pout, dwp, j > 0, gb, (pout, 1), c, (1, pout), par);
                                if need_dx {
                                    // dcols [K, P] = W^T [K, Cout] @ dY [Cout, P]
                                    let dxb = &mut dxr[j * xlen..(j + 1) * xlen];
                                    if g.is_pointwise() {
                                        sgemm(
                                            k,
                                            pout,
                                            cout,
                                            dxb,
                                            false,
                                            wd,
                                            (1, k),
                                            gb,
                                            (pout, 1),
                                            par,
                                        );
                                    } else {
                                        sgemm(
                                            k,
                                            pout,
                                            cout,
                                            &mut dcols,
                                            false,
                                            wd,
                                            (1, k),
                                            gb,
                                            (pout, 1),
                                            par,
                                        );
                                        g.col2im(&dcols, dxb);
                                    }
                                }
                            }
                        });
                    Ok(())
                })
            })
        })?;
        let mut dw = vec![0f32; cout * k];
        for p in &dw_parts {
            for (d, &v) in dw.iter_mut().zip(p) {
                *d += v;
            }
        }
        let dev = x.device();
        let db = if per_sample {
            Tensor::from_vec(dbias, (b, cout), dev)?
        } else {
            let mut s = vec![0f32; cout];
            for row in dbias.chunks(cout) {
                for (a, &v) in s.iter_mut().zip(row) {
                    *a += v;
                }
            }
            Tensor::from_vec(s, cout, dev)?
        };
        let dx = if need_dx {
            Some(Tensor::from_vec(dx, x.shape(), dev)?)
        } else {
            None
        };
        Ok((dx, Some(Tensor::from_vec(dw, w.shape(), dev)?), Some(db)))
    }
}

/// Convolution of `x: [B, Cin, H, W]` with `weight: [Cout, Cin, kh, kw]` (zero padding `pad`,
/// `stride`), plus `bias` of shape `[Cout]` or per sample `[B, Cout]`. f32 CPU tensors.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        Conv2dOp { stride, pad },
    )
}

// ---------------------------------------------------------------------------------------------
// Nearest x2 upsampling, cropped

/// Nearest-neighbour x2 upsampling of `[B, C, H, W]` cropped to `[B, C, th, tw]`
/// (`th <= 2H`, `tw <= 2W`).
#[derive(Debug, Clone, Copy)]
struct Upsample2Op {
    th: usize,
    tw: usize,
}

impl CustomOp1 for Upsample2Op {
    fn name(&self) -> &'static str {
        "fused-upsample2-crop"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, w) = l.shape().dims4()?;
        let (th, tw) = (self.th, self.tw);
        if th > 2 * h || tw > 2 * w {
            bail!("upsample2: target {th}x{tw} exceeds twice {h}x{w}")
        }
        let x = slice(s, l, "upsample2")?;
        let mut out = vec![0f32; b * c * th * tw];
        if th * tw > 0 {
            out.par_chunks_mut(th * tw)
                .zip(x.par_chunks(h * w))
                .for_each(|(o, xs)| {
                    for (oy, row) in o.chunks_mut(tw).enumerate() {
                        let xr = &xs[(oy / 2) * w..(oy / 2 + 1) * w];
                        for (ox, v) in row.iter_mut().enumerate() {
                            *v = xr[ox / 2];
                        }
                    }
                });
        }
        Ok((CpuStorage::F32(out), Shape::from((b, c, th, tw))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, h, w) = arg.dims4()?;
        let (th, tw) = (self.th, self.tw);
        let mut dx = vec![0f32; arg.elem_count()];
        if h * w > 0 && th * tw > 0 {
            with_data(grad_res, "upsample2 grad", |g| {
                dx.par_chunks_mut(h * w)
                    .zip(g.par_chunks(th * tw))
                    .for_each(|(d, gs)| {
                        for (oy, row) in gs.chunks(tw).enumerate() {
                            let dr = &mut d[(oy / 2) * w..(oy / 2 + 1) * w];
                            for (ox, &v) in row.iter().enumerate() {
                                dr[ox / 2] += v;
                            }
                        }
                    });
                Ok(())
            })?;
        }
        Ok(Some(Tensor::from_vec(dx, arg.shape(), arg.device())?))
    }
}

/// Nearest-neighbour x2 upsampling of `x: [B, C, H, W]` (f32 CPU) cropped to `th x tw`
/// (`th <= 2H`, `tw <= 2W`): candle's `upsample_nearest2d(2H, 2W)` then `narrow`s, in one pass.
pub fn upsample2_crop(x: &Tensor, th: usize, tw: usize) -> Result<Tensor> {
    x.contiguous()?.apply_op1(Upsample2Op { th, tw })
}
