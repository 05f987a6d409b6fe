//! Softmax over the last dimension with a backward pass (one pass per row, multi-threaded over
//! rows). candle-nn's `softmax_last_dim` has no backward: it silently cuts the gradient, and DPS
//! backpropagates through the attention.

use candle_core::{Result, Tensor};

/// Softmax over the last dimension of an f32 CPU tensor, with a backward pass
/// (`dx = y (dy - sum(dy y))`). The caller (`layers::softmax_last_dim`) falls back to candle-nn's
/// generic `softmax` on other devices and dtypes.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1(SoftmaxLastDim)
}

struct SoftmaxLastDim;

impl candle_core::CustomOp1 for SoftmaxLastDim {
    fn name(&self) -> &'static str {
        "diffpost-softmax-last-dim"
    }

    fn cpu_fwd(
        &self,
        s: &candle_core::CpuStorage,
        l: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let data = s.as_slice::<f32>()?;
        let x = match l.contiguous_offsets() {
            Some((a, b)) => &data[a..b],
            None => candle_core::bail!("softmax: the input must be contiguous"),
        };
        let n = l.dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(n)
            .zip(x.par_chunks(n))
            .for_each(|(o, x)| {
                let m = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for (o, &v) in o.iter_mut().zip(x) {
                    *o = (v - m).exp();
                    sum += *o;
                }
                let inv = 1.0 / sum;
                for o in o.iter_mut() {
                    *o *= inv;
                }
            });
        Ok((candle_core::CpuStorage::F32(out), l.shape().clone()))
    }

    /// `dx = y (dy - sum(dy y))`.
    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let gy = (grad_res * res)?;
        let s = gy.sum_keepdim(candle_core::D::Minus1)?;
        Ok(Some((gy - res.broadcast_mul(&s)?)?))
    }
}
