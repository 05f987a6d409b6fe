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
            self.candle_forward(x)
        }
    }

    /// candle's conv. For strided convs whose padded input does not end on a stride boundary,
    /// the rows/columns no output reads are cut and the padding made explicit first: candle
    /// 0.11's conv2d backward derives one `output_padding` from the height and applies it to
    /// the width too, which fails (shape mismatch) when height and width differ in parity.
    /// Same values; the backward of pad/narrow is exact.
    fn candle_forward(&self, x: &Tensor) -> Result<Tensor> {
        let (s, p) = (self.stride, self.pad);
        let (_, _, h, w) = x.dims4()?;
        let (_, _, kh, kw) = self.inner.weight().dims4()?;
        if s == 1 || h + 2 * p < kh || w + 2 * p < kw {
            return self.inner.forward(x);
        }
        let (rh, rw) = ((h + 2 * p - kh) % s, (w + 2 * p - kw) % s);
        if rh == 0 && rw == 0 {
            return self.inner.forward(x);
        }
        // Explicit padding: `p` before; after, `p - r` (cutting the input when r > p).
        let fit = |x: Tensor, dim: usize, n: usize, r: usize| -> Result<Tensor> {
            let x = if r > p {
                x.narrow(dim, 0, n - (r - p))?
            } else {
                x
            };
            x.pad_with_zeros(dim, p, p.saturating_sub(r))
        };
        let xp = fit(fit(x.clone(), 2, h, rh)?, 3, w, rw)?;
        let y = xp.conv2d(self.inner.weight(), 0, s, 1, 1)?;
        let c = self.inner.weight().dim(0)?;
        y.broadcast_add(&self.bias()?.reshape((1, c, 1, 1))?)
    }

    /// Convolution plus a per-sample, per-channel term `add: [B, Cout]` (folded into the bias).
    pub(crate) fn forward_add(&self, x: &Tensor, add: &Tensor, fused: bool) -> Result<Tensor> {
        if fused && kernels::supported(x) {
            let bias = add.broadcast_add(&self.bias()?.unsqueeze(0)?)?;
            kernels::conv2d(x, self.inner.weight(), &bias, self.stride, self.pad)
        } else {
            let h = self.candle_forward(x)?;
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
    /// terms fold into per-sample GroupNorm ones (`weight (1 + scale)`,
    /// `bias (1 + scale) + shift`, `[B, C]`): one fused kernel for the whole batch.
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
            kernels::group_norm(x, &w, &bias, self.groups, self.eps, silu)
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

/// Softmax over the last dimension with a backward pass: the fused kernel
/// ([`kernels::softmax_last_dim`]) on f32 CPU tensors, candle-nn's generic `softmax` elsewhere.
/// (candle-nn's `softmax_last_dim` has no backward: it silently cuts the gradient, and DPS
/// backpropagates through the attention.)
pub(crate) fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    if kernels::supported(x) {
        kernels::softmax_last_dim(x)
    } else {
        candle_nn::ops::softmax(x, candle_core::D::Minus1)
    }
}

/// Nearest-neighbour x2 upsampling with candle's ops only (the path off the fused CPU kernels, e.g.
/// on CUDA), as a broadcast rather than candle 0.11's `upsample_nearest2d`, whose backward
/// overwrites instead of accumulating (wrong when the input is used twice) and fails on some
/// non-square sizes.
pub(crate) fn upsample2_nearest(x: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    x.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .contiguous()?
        .reshape((b, c, 2 * h, 2 * w))
}

/// The fused-kernel switch of a network with a `fused: bool` field, as methods of its `impl`
/// block: `with_fused_kernels`, `set_fused_kernels`, `fused_kernels`.
macro_rules! fused_kernel_switch {
    () => {
        /// Whether the fused CPU kernels ([`super::kernels`]) are used for f32 CPU inputs (the
        /// default); off, every op is candle's own (the reference path, and the one on GPUs).
        pub fn with_fused_kernels(mut self, on: bool) -> Self {
            self.fused = on;
            self
        }

        /// See [`Self::with_fused_kernels`].
        pub fn set_fused_kernels(&mut self, on: bool) {
            self.fused = on;
        }

        /// Whether the fused CPU kernels are on (see [`Self::with_fused_kernels`]).
        pub fn fused_kernels(&self) -> bool {
            self.fused
        }
    };
}
pub(super) use fused_kernel_switch;

/// `Ok` when a configuration count `v` is positive, else an error naming `field`.
pub(super) fn positive(v: usize, field: &str) -> diffpost_core::Result<()> {
    if v == 0 {
        Err(diffpost_core::Error::param(field, "must be positive"))
    } else {
        Ok(())
    }
}
