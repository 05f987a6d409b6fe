//! Conv2d by im2col + GEMM, with backward.

use super::*;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

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
