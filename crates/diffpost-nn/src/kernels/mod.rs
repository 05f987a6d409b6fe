//! Fused CPU kernels for the UNet, as candle custom ops with backward passes (autograd keeps
//! working through them: training and DPS both backpropagate).
//!
//! candle 0.11's CPU conv (im2col into its generic matmul), GroupNorm (about ten primitive ops,
//! each a single-threaded memory pass) and unary ops (scalar `exp`) are the UNet's bottlenecks
//! (see `docs/images.md`, "UNet speed on CPU"). Here:
//! - [`group_norm`]: GroupNorm with an optional fused SiLU, forward and backward in one pass each
//!   over the data, multi-threaded over `(batch, group)`;
//! - [`silu`]: SiLU with a vectorisable `exp`;
//! - [`conv2d`]: 2-D convolution (any kernel size, stride and padding) as im2col + `gemm`, or for
//!   3x3 stride-1 layers where it measured faster by Winograd's F(2x2, 3x3), with a per-channel
//!   `[C_out]` or per-sample `[B, C_out]` bias (the UNet folds its noise embedding into the
//!   latter), tiled (bounded, reused scratch);
//! - [`add_scale`]: `(a + b) * s` (the residual joins);
//! - [`softmax_last_dim`]: softmax over the last dimension, with the backward candle-nn's lacks;
//! - [`attention_block`]: the whole attention block (qkv linear, softmax attention, output
//!   linear; weights packed by [`pack_linear`]) as one op, multi-threaded over the batch;
//! - `adam_ema_in_place` (crate-internal): the trainer's Adam + EMA update, in place.
//!
//! Every op wants contiguous f32 CPU tensors; the wrappers make their inputs contiguous and the
//! callers ([`super::unet`], the layers of the pretrained UNets, the trainer) fall back to candle's own ops on other devices and dtypes. Results are
//! deterministic for a fixed rayon thread count (partial sums are reduced in a fixed order).

use candle_core::{bail, CpuStorage, DType, Layout, Result, Storage, Tensor};

/// True when the fused kernels can run on `t` (contiguity is arranged by the wrappers).
pub fn supported(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

pub(crate) fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let data = s.as_slice::<f32>()?;
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => bail!("{what}: the fused kernel needs a contiguous input"),
    }
}

/// Runs `f` on the contiguous f32 data of a CPU tensor (no copy when already contiguous).
pub(super) fn with_data<R>(
    t: &Tensor,
    what: &str,
    f: impl FnOnce(&[f32]) -> Result<R>,
) -> Result<R> {
    let t = t.contiguous()?;
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cpu(c) => f(slice(c, l, what)?),
        _ => bail!("{what}: the fused kernel runs on the CPU only"),
    }
}

pub(super) fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

// ---------------------------------------------------------------------------------------------
// Vectorisable scalar math (no libm calls, no branches: LLVM turns the loops into SIMD).

/// `exp(x)` for f32 (Cephes polynomial, about 2 ulp), clamped to the finite range.
#[inline(always)]
pub(super) fn exp_f32(x: f32) -> f32 {
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
pub(super) fn sigmoid_f32(x: f32) -> f32 {
    1.0 / (1.0 + exp_f32(-x))
}

#[inline(always)]
pub(super) fn silu_f32(x: f32) -> f32 {
    x * sigmoid_f32(x)
}

/// `d silu / dx = s (1 + x (1 - s))` with `s = sigmoid(x)`.
#[inline(always)]
pub(super) fn silu_grad_f32(x: f32) -> f32 {
    let s = sigmoid_f32(x);
    s * (1.0 + x * (1.0 - s))
}

/// Sum with 16 independent accumulators (vectorises; more accurate than a serial sum).
#[inline(always)]
pub(super) fn sum_f32(xs: &[f32]) -> f32 {
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

// ---------------------------------------------------------------------------------------------
// GEMM

/// `dst[m, n] (+)= lhs[m, k] @ rhs[k, n]`, every operand with explicit (row, column) strides.
/// (`gemm` packs its `lhs` in `m`-contiguous panels and reads an `rhs` with unit row stride in
/// place, transposing the problem when `dst` is row-major: callers choose the orientation that
/// leaves the large operand in the layout read without a transposing copy.)
///
/// # Safety
/// Every element addressed through the three pointers and strides must be in bounds, and `dst`
/// must not overlap `lhs`, `rhs` or memory written concurrently.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn sgemm(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    (dst_rs, dst_cs): (usize, usize),
    accumulate: bool,
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
    par: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    *dst.add(i * dst_rs + j * dst_cs) = 0.0;
                }
            }
        }
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_cs as isize,
        dst_rs as isize,
        accumulate,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
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

mod adam;
mod attention;
mod conv;
mod elementwise;
mod norm;
mod softmax;
mod upsample;

pub(crate) use adam::{adam_ema_in_place, AdamCoefs};
pub use attention::{attention_block, pack_linear};
pub use conv::conv2d;
pub use elementwise::{add_scale, silu};
pub use norm::group_norm;
pub use softmax::softmax_last_dim;
pub use upsample::upsample2_crop;
