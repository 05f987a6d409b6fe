//! Building blocks shared by the UNets of this crate ([`super::unet`], and the architectures of
//! pretrained checkpoints): convolution, GroupNorm (+ SiLU), SiLU and `(a + b) s`, each running
//! one fused CPU kernel ([`super::kernels`]) on f32 CPU tensors and candle's ops elsewhere.
//! Parameter names and shapes are candle-nn's (`weight`, `bias`), which are PyTorch's.

use candle_core::{Module, Result, Tensor};
use candle_nn::{conv2d, Conv2d, Conv2dConfig, GroupNorm, VarBuilder};

use super::kernels;

/// GroupNorm epsilon of PyTorch, guided-diffusion and diffusers (their default).
pub(crate) const GN_EPS: f64 = 1e-5;

/// A convolution with bias (candle-nn's parameters and initialisation) that runs the fused
/// im2col + GEMM kernel ([`kernels::conv2d`]) on f32 CPU tensors and candle's conv elsewhere.
#[derive(Debug, Clone)]
pub(crate) struct Conv {
    inner: Conv2d,
    stride: usize,
    pad: usize,
}

impl Conv {
    pub(crate) fn bias(&self) -> Result<&Tensor> {
        self.inner
            .bias()
            .ok_or_else(|| candle_core::Error::Msg("UNet convs have a bias".into()))
    }

    pub(crate) fn forward(&self, x: &Tensor, fused: bool) -> Result<Tensor> {
        if fused && kernels::supported(x) {
            kernels::conv2d(x, self.inner.weight(), self.bias()?, self.stride, self.pad)
        } else {
            self.inner.forward(x)
        }
    }

    /// Convolution plus a per-sample, per-channel term `add: [B, Cout]` (folded into the bias).
    pub(crate) fn forward_add(&self, x: &Tensor, add: &Tensor, fused: bool) -> Result<Tensor> {
        if fused && kernels::supported(x) {
            let bias = add.broadcast_add(&self.bias()?.unsqueeze(0)?)?;
            kernels::conv2d(x, self.inner.weight(), &bias, self.stride, self.pad)
        } else {
            let h = self.inner.forward(x)?;
            let (b, c, _, _) = h.dims4()?;
            h.broadcast_add(&add.reshape((b, c, 1, 1))?)
        }
    }
}

pub(crate) fn conv3(cin: usize, cout: usize, stride: usize, vb: VarBuilder) -> Result<Conv> {
    let cfg = Conv2dConfig {
        padding: 1,
        stride,
        ..Default::default()
    };
    Ok(Conv {
        inner: conv2d(cin, cout, 3, cfg, vb)?,
        stride,
        pad: 1,
    })
}

pub(crate) fn conv1(cin: usize, cout: usize, vb: VarBuilder) -> Result<Conv> {
    Ok(Conv {
        inner: conv2d(cin, cout, 1, Conv2dConfig::default(), vb)?,
        stride: 1,
        pad: 0,
    })
}

/// GroupNorm (candle-nn's parameter names and initialisation), optionally followed by SiLU:
/// one fused kernel ([`kernels::group_norm`]) on f32 CPU tensors, candle's ops elsewhere.
#[derive(Debug, Clone)]
pub(crate) struct Norm {
    inner: GroupNorm,
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

pub(crate) fn group_norm(groups: usize, ch: usize, vb: VarBuilder) -> Result<Norm> {
    group_norm_eps(groups, ch, GN_EPS, vb)
}

/// GroupNorm with an explicit epsilon (diffusers configs carry `norm_eps`).
pub(crate) fn group_norm_eps(groups: usize, ch: usize, eps: f64, vb: VarBuilder) -> Result<Norm> {
    let weight = vb.get_with_hints(ch, "weight", candle_nn::Init::Const(1.))?;
    let bias = vb.get_with_hints(ch, "bias", candle_nn::Init::Const(0.))?;
    Ok(Norm {
        inner: GroupNorm::new(weight.clone(), bias.clone(), ch, groups, eps)?,
        weight,
        bias,
        groups,
        eps,
    })
}

impl Norm {
    pub(crate) fn forward(&self, x: &Tensor, silu: bool, fused: bool) -> Result<Tensor> {
        if fused && kernels::supported(x) {
            kernels::group_norm(x, &self.weight, &self.bias, self.groups, self.eps, silu)
        } else if silu {
            self.inner.forward(x)?.silu()
        } else {
            self.inner.forward(x)
        }
    }

    /// `norm(x) * (1 + scale) + shift` (guided-diffusion's scale-shift norm) with per-sample
    /// `scale`, `shift: [B, C]`, optionally followed by SiLU. On f32 CPU tensors the affine
    /// terms fold into the GroupNorm's (`weight (1 + scale)`, `bias (1 + scale) + shift`): one
    /// fused kernel per sample.
    pub(crate) fn forward_scale_shift(
        &self,
        x: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        silu: bool,
        fused: bool,
    ) -> Result<Tensor> {
        let b = x.dim(0)?;
        let s1 = (scale + 1.0)?;
        if fused && kernels::supported(x) {
            let w = s1.broadcast_mul(&self.weight.unsqueeze(0)?)?;
            let bias = (s1.broadcast_mul(&self.bias.unsqueeze(0)?)? + shift)?;
            let outs = (0..b)
                .map(|i| {
                    kernels::group_norm(
                        &x.narrow(0, i, 1)?,
                        &w.get(i)?,
                        &bias.get(i)?,
                        self.groups,
                        self.eps,
                        silu,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            if b == 1 {
                Ok(outs.into_iter().next().expect("one sample"))
            } else {
                Tensor::cat(&outs, 0)
            }
        } else {
            let mut shape = vec![1usize; x.rank()];
            shape[0] = b;
            shape[1] = s1.dim(1)?;
            let h = self
                .inner
                .forward(x)?
                .broadcast_mul(&s1.reshape(shape.as_slice())?)?
                .broadcast_add(&shift.reshape(shape.as_slice())?)?;
            if silu {
                h.silu()
            } else {
                Ok(h)
            }
        }
    }
}

/// `(a + b) * s`: one fused pass on f32 CPU tensors.
pub(crate) fn add_scale(a: &Tensor, b: &Tensor, s: f64, fused: bool) -> Result<Tensor> {
    if fused && kernels::supported(a) && a.dims() == b.dims() {
        kernels::add_scale(a, b, s)
    } else {
        (a + b)? * s
    }
}

pub(crate) fn silu(x: &Tensor, fused: bool) -> Result<Tensor> {
    if fused && kernels::supported(x) {
        kernels::silu(x)
    } else {
        x.silu()
    }
}

/// A `k x k` convolution with bias, `padding = k / 2` unless given (PyTorch's `Conv2d` names).
pub(crate) fn conv_k(
    cin: usize,
    cout: usize,
    k: usize,
    stride: usize,
    pad: usize,
    vb: VarBuilder,
) -> Result<Conv> {
    let cfg = Conv2dConfig {
        padding: pad,
        stride,
        ..Default::default()
    };
    Ok(Conv {
        inner: conv2d(cin, cout, k, cfg, vb)?,
        stride,
        pad,
    })
}

/// Softmax over the last dimension with a backward pass: one pass per row on f32 CPU tensors,
/// candle-nn's generic `softmax` elsewhere. (candle-nn's `softmax_last_dim` has no backward:
/// it silently cuts the gradient, and DPS backpropagates through the attention.)
pub(crate) fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if kernels::supported(x) {
        x.contiguous()?.apply_op1(SoftmaxLastDim)
    } else {
        candle_nn::ops::softmax(x, candle_core::D::Minus1)
    }
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
