//! Nearest x2 upsampling, cropped, with backward.

use super::*;
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

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
