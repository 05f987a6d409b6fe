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

// ---------------------------------------------------------------------------------------------
// Fused attention block (qkv linear, softmax attention, output linear) with backward.

/// Row-major `dst[m, n] (+)= lhs[m, k] @ rhs[k, n]` with explicit (row, column) strides,
/// single-threaded (the callers parallelise over samples).
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
) {
    assert!(dst.len() >= m * n);
    if m > 0 && n > 0 && k > 0 {
        assert!(lhs.len() > (m - 1) * lhs_rs + (k - 1) * lhs_cs);
        assert!(rhs.len() > (k - 1) * rhs_rs + (n - 1) * rhs_cs);
    }
    // SAFETY: the asserts keep every access of the three matrices in bounds (with `k = 0` only
    // `dst` is written), and `dst` does not alias `lhs` or `rhs` (a `&mut` and two `&` slices).
    unsafe {
        super::kernels::sgemm(
            (m, n, k),
            dst.as_mut_ptr(),
            (n, 1),
            accumulate,
            lhs.as_ptr(),
            (lhs_rs, lhs_cs),
            rhs.as_ptr(),
            (rhs_rs, rhs_cs),
            gemm::Parallelism::None,
        )
    }
}

/// Self-attention over the `N = H W` positions of `t: [B, C, H, W]` (already normalised):
/// `qkv = Wqkv t + bqkv` (`[3C]` rows: q, k, v; heads split the channels), per head
/// `o = softmax(q^T k / sqrt(hd)) v`, output `Wproj o + bproj` as `[B, C, H, W]`. The weights
/// come packed with their bias as a last column: `[3C, C + 1]` and `[C, C + 1]`.
#[derive(Debug, Clone, Copy)]
struct AttentionOp {
    heads: usize,
}

struct AttnGeom {
    b: usize,
    c: usize,
    n: usize,
    hd: usize,
}

impl AttentionOp {
    fn geom(
        &self,
        t: &candle_core::Shape,
        wqkv: &candle_core::Shape,
        wproj: &candle_core::Shape,
    ) -> Result<AttnGeom> {
        let d = t.dims();
        if d.len() < 3 {
            candle_core::bail!("attention: rank >= 3 expected, got {d:?}")
        }
        let (b, c) = (d[0], d[1]);
        let n: usize = d[2..].iter().product();
        if self.heads == 0 || c % self.heads != 0 {
            candle_core::bail!("attention: {} heads do not divide {c} channels", self.heads)
        }
        if wqkv.dims() != [3 * c, c + 1] || wproj.dims() != [c, c + 1] {
            candle_core::bail!(
                "attention: packed weights must be [{}, {}] and [{c}, {}], got {:?} and {:?}",
                3 * c,
                c + 1,
                c + 1,
                wqkv.dims(),
                wproj.dims()
            )
        }
        Ok(AttnGeom {
            b,
            c,
            n,
            hd: c / self.heads,
        })
    }
}

/// `y[r, :] = W[r, :C] x + W[r, C]` for a packed `[R, C + 1]` weight and `x: [C, N]`.
fn linear_packed(w: &[f32], rows: usize, c: usize, x: &[f32], n: usize, y: &mut [f32]) {
    for (r, yr) in y.chunks_exact_mut(n).enumerate().take(rows) {
        yr.fill(w[r * (c + 1) + c]);
    }
    sgemm(rows, n, c, y, true, w, (c + 1, 1), x, (n, 1));
}

/// Attention probabilities of one head: `p[i, j] = softmax_j(scale q[:, i] . k[:, j])` for
/// `q`, `k` given as `[hd, N]` rows (row stride `n`).
fn attn_probs(q: &[f32], k: &[f32], hd: usize, n: usize, scale: f32, p: &mut [f32]) {
    sgemm(n, n, hd, p, false, q, (1, n), k, (n, 1));
    for row in p.chunks_exact_mut(n) {
        let mut m = f32::NEG_INFINITY;
        for &v in row.iter() {
            m = m.max(v * scale);
        }
        let mut s = 0f32;
        for v in row.iter_mut() {
            *v = (*v * scale - m).exp();
            s += *v;
        }
        let inv = 1.0 / s;
        for v in row.iter_mut() {
            *v *= inv;
        }
    }
}

impl candle_core::CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "diffpost-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
        s3: &candle_core::CpuStorage,
        l3: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let g = self.geom(l1.shape(), l2.shape(), l3.shape())?;
        let t = kernels::slice(s1, l1, "attention t")?;
        let wqkv = kernels::slice(s2, l2, "attention qkv")?;
        let wproj = kernels::slice(s3, l3, "attention proj")?;
        let (c, n, hd, heads) = (g.c, g.n, g.hd, self.heads);
        let scale = 1.0 / (hd as f32).sqrt();
        let mut out = vec![0f32; t.len()];
        if c * n > 0 {
            out.par_chunks_mut(c * n)
                .zip(t.par_chunks(c * n))
                .for_each(|(y, x)| {
                    let mut qkv = vec![0f32; 3 * c * n];
                    linear_packed(wqkv, 3 * c, c, x, n, &mut qkv);
                    let mut o = vec![0f32; c * n];
                    let mut p = vec![0f32; n * n];
                    for h in 0..heads {
                        let r = h * hd * n;
                        let q = &qkv[r..];
                        let k = &qkv[c * n + r..];
                        let v = &qkv[2 * c * n + r..];
                        attn_probs(q, k, hd, n, scale, &mut p);
                        // o^T[d, i] = sum_j v^T[d, j] p[i, j]
                        sgemm(hd, n, n, &mut o[r..], false, v, (n, 1), &p, (1, n));
                    }
                    linear_packed(wproj, c, c, &o, n, y);
                });
        }
        Ok((candle_core::CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        t: &Tensor,
        wqkv: &Tensor,
        wproj: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        use rayon::prelude::*;
        let g = self.geom(t.shape(), wqkv.shape(), wproj.shape())?;
        let (b, c, n, hd, heads) = (g.b, g.c, g.n, g.hd, self.heads);
        let scale = 1.0 / (hd as f32).sqrt();
        let cn = c * n;
        let mut dt = vec![0f32; b * cn];
        // Per sample: the gradient w.r.t. qkv ([3C, N]) and the attention output o ([C, N]),
        // for the weight gradients (reduced over the batch in order afterwards).
        let mut dqkv_all = vec![0f32; b * 3 * cn];
        let mut o_all = vec![0f32; b * cn];
        let mut dwqkv = vec![0f32; 3 * c * (c + 1)];
        let mut dwproj = vec![0f32; c * (c + 1)];
        kernels::with_data(t, "attention t", |td| {
            kernels::with_data(wqkv, "attention qkv", |wq| {
                kernels::with_data(wproj, "attention proj", |wp| {
                    kernels::with_data(grad, "attention grad", |dy| {
                        if cn == 0 {
                            return Ok(());
                        }
                        dt.par_chunks_mut(cn)
                            .zip(
                                dqkv_all
                                    .par_chunks_mut(3 * cn)
                                    .zip(o_all.par_chunks_mut(cn)),
                            )
                            .zip(td.par_chunks(cn).zip(dy.par_chunks(cn)))
                            .for_each(|((dx, (dqkv, o)), (x, dy))| {
                                let mut qkv = vec![0f32; 3 * cn];
                                linear_packed(wq, 3 * c, c, x, n, &mut qkv);
                                // do^T = Wproj^T dy: [C, N]
                                let mut d_o = vec![0f32; cn];
                                sgemm(c, n, c, &mut d_o, false, wp, (1, c + 1), dy, (n, 1));
                                let mut p = vec![0f32; n * n];
                                let mut dp = vec![0f32; n * n];
                                for h in 0..heads {
                                    let r = h * hd * n;
                                    let (q, k, v) = (&qkv[r..], &qkv[cn + r..], &qkv[2 * cn + r..]);
                                    attn_probs(q, k, hd, n, scale, &mut p);
                                    sgemm(hd, n, n, &mut o[r..], false, v, (n, 1), &p, (1, n));
                                    let dor = &d_o[r..];
                                    // dv^T[d, j] = sum_i do^T[d, i] p[i, j]
                                    sgemm(
                                        hd,
                                        n,
                                        n,
                                        &mut dqkv[2 * cn + r..],
                                        false,
                                        dor,
                                        (n, 1),
                                        &p,
                                        (n, 1),
                                    );
                                    // dp[i, j] = sum_d do^T[d, i] v^T[d, j]
                                    sgemm(n, n, hd, &mut dp, false, dor, (1, n), v, (n, 1));
                                    // ds = p (dp - sum_j dp p), times the logit scale
                                    for (pr, dr) in p.chunks_exact(n).zip(dp.chunks_exact_mut(n)) {
                                        let mut s = 0f32;
                                        for (&pv, &dv) in pr.iter().zip(dr.iter()) {
                                            s += pv * dv;
                                        }
                                        for (&pv, dv) in pr.iter().zip(dr.iter_mut()) {
                                            *dv = pv * (*dv - s) * scale;
                                        }
                                    }
                                    // dq^T[d, i] = sum_j k^T[d, j] ds[i, j]
                                    sgemm(hd, n, n, &mut dqkv[r..], false, k, (n, 1), &dp, (1, n));
                                    // dk^T[d, j] = sum_i q^T[d, i] ds[i, j]
                                    sgemm(
                                        hd,
                                        n,
                                        n,
                                        &mut dqkv[cn + r..],
                                        false,
                                        q,
                                        (n, 1),
                                        &dp,
                                        (n, 1),
                                    );
                                }
                                // dx = Wqkv[:, :C]^T dqkv: [C, N]
                                sgemm(c, n, 3 * c, dx, false, wq, (1, c + 1), dqkv, (n, 1));
                            });
                        // Weight gradients: blocks of rows in parallel, samples summed in order.
                        packed_weight_grad(&mut dwqkv, 3 * c, c, n, b, &dqkv_all, td);
                        packed_weight_grad(&mut dwproj, c, c, n, b, dy, &o_all);
                        Ok(())
                    })
                })
            })
        })?;
        let dev = t.device();
        Ok((
            Some(Tensor::from_vec(dt, t.shape(), dev)?),
            Some(Tensor::from_vec(dwqkv, (3 * c, c + 1), dev)?),
            Some(Tensor::from_vec(dwproj, (c, c + 1), dev)?),
        ))
    }
}

/// `dw[r, :C] = sum_b g_b[r, :] x_b^T`, `dw[r, C] = sum_b sum g_b[r, :]` for a packed
/// `[rows, C + 1]` gradient; `g: [B, rows, N]`, `x: [B, C, N]`. Row blocks run in parallel, the
/// batch is summed in order (deterministic).
fn packed_weight_grad(
    dw: &mut [f32],
    rows: usize,
    c: usize,
    n: usize,
    b: usize,
    g: &[f32],
    x: &[f32],
) {
    use rayon::prelude::*;
    let blk = rows.div_ceil(2 * kernels::threads()).max(1);
    dw.par_chunks_mut(blk * (c + 1))
        .enumerate()
        .for_each(|(bi_blk, dst)| {
            let r0 = bi_blk * blk;
            let nr = dst.len() / (c + 1);
            let mut acc = vec![0f32; nr * c];
            for bi in 0..b {
                let gs = &g[bi * rows * n + r0 * n..bi * rows * n + (r0 + nr) * n];
                let xs = &x[bi * c * n..(bi + 1) * c * n];
                sgemm(nr, c, n, &mut acc, bi > 0, gs, (n, 1), xs, (1, n));
                for (r, gr) in gs.chunks_exact(n).enumerate() {
                    let mut s = 0f32;
                    for &v in gr {
                        s += v;
                    }
                    dst[r * (c + 1) + c] += s;
                }
            }
            for (r, ar) in acc.chunks_exact(c).enumerate() {
                dst[r * (c + 1)..r * (c + 1) + c].copy_from_slice(ar);
            }
        });
}

/// The fused attention block of `t: [B, C, H, W]` (f32 CPU, normalised input) with packed
/// weights `wqkv: [3C, C + 1]` (q, k, v rows; bias last column) and `wproj: [C, C + 1]`:
/// `Wproj softmax(q^T k / sqrt(hd)) v + bproj` per head, as `[B, C, H, W]`. One op with a
/// hand-written backward (GEMMs per sample, multi-threaded over the batch) instead of about
/// 20 candle ops.
pub fn attention_block(t: &Tensor, wqkv: &Tensor, wproj: &Tensor, heads: usize) -> Result<Tensor> {
    t.contiguous()?.apply_op3(
        &wqkv.contiguous()?,
        &wproj.contiguous()?,
        AttentionOp { heads },
    )
}

/// Packs a linear layer's `weight: [R, C]` and `bias: [R]` as `[R, C + 1]` (differentiable).
pub fn pack_linear(weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    Tensor::cat(&[weight, &bias.unsqueeze(1)?], 1)
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
pub(super) fn positive(v: usize, field: &str) -> crate::Result<()> {
    if v == 0 {
        Err(crate::Error::param(field, "must be positive"))
    } else {
        Ok(())
    }
}
