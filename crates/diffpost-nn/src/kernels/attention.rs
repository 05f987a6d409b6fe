//! The fused attention block (qkv linear, softmax attention, output linear) with a hand-written
//! backward: [`attention_block`], with its weights packed by [`pack_linear`].

use candle_core::{Result, Tensor};

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
        super::sgemm(
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
        let t = super::slice(s1, l1, "attention t")?;
        let wqkv = super::slice(s2, l2, "attention qkv")?;
        let wproj = super::slice(s3, l3, "attention proj")?;
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
        super::with_data(t, "attention t", |td| {
            super::with_data(wqkv, "attention qkv", |wq| {
                super::with_data(wproj, "attention proj", |wp| {
                    super::with_data(grad, "attention grad", |dy| {
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
    let blk = rows.div_ceil(2 * super::threads()).max(1);
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
