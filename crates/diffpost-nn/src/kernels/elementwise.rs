//! Fused elementwise ops: SiLU, `(a + b) s`.

use super::*;
use candle_core::{bail, CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::norm::{simd_fn, simd_level};

simd_fn! {
    fn silu_slice(x: &[f32], o: &mut [f32]) {
        for (o, &x) in o.iter_mut().zip(x) {
            *o = silu_f32(x);
        }
    }
}

simd_fn! {
    fn silu_bwd_slice(x: &[f32], dy: &[f32], d: &mut [f32]) {
        for ((d, &x), &dy) in d.iter_mut().zip(x).zip(dy) {
            *d = dy * silu_grad_f32(x);
        }
    }
}

simd_fn! {
    fn add_scale_slice(a: &[f32], b: &[f32], o: &mut [f32], s: f32) {
        for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
            *o = (a + b) * s;
        }
    }
}

simd_fn! {
    fn scale_slice(a: &[f32], o: &mut [f32], s: f32) {
        for (o, &a) in o.iter_mut().zip(a) {
            *o = a * s;
        }
    }
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
            .for_each(|(o, x)| silu_slice(x, o));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let mut dx = vec![0f32; arg.elem_count()];
        with_data(arg, "silu x", |x| {
            with_data(grad_res, "silu grad", |dy| {
                dx.par_chunks_mut(ELEM_CHUNK)
                    .zip(x.par_chunks(ELEM_CHUNK).zip(dy.par_chunks(ELEM_CHUNK)))
                    .for_each(|(d, (x, dy))| silu_bwd_slice(x, dy, d));
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
            .for_each(|(o, (a, b))| add_scale_slice(a, b, o, s));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _a: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // One multi-threaded pass (candle's affine is single-threaded); both sides share it.
        let mut g = vec![0f32; grad_res.elem_count()];
        let s = self.scale;
        with_data(grad_res, "add_scale grad", |dy| {
            g.par_chunks_mut(ELEM_CHUNK)
                .zip(dy.par_chunks(ELEM_CHUNK))
                .for_each(|(o, a)| scale_slice(a, o, s));
            Ok(())
        })?;
        let g = Tensor::from_vec(g, grad_res.shape(), grad_res.device())?;
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
