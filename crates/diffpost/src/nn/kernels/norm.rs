//! Fused GroupNorm (+ SiLU) with backward.

use super::*;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

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
