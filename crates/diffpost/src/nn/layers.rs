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
