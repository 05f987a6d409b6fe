//! 3x3, stride-1, padding-1 convolution by Winograd's minimal filtering `F(2x2, 3x3)` (Lavin &
//! Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016, eq. 8):
//!
//! `Y = A^T [ (G g G^T) (.) (B^T d B) ] A` for each 2x2 output tile `Y`, its 4x4 input patch `d`
//! (zero outside the image: the padding) and each 3x3 filter `g`, with
//! `B^T = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]`, `G = [[1,0,0],[1/2,1/2,1/2],
//! [1/2,-1/2,1/2],[0,0,1]]`, `A^T = [[1,1,1,0],[0,1,-1,-1]]`.
//!
//! Summed over input channels, the 16 products become 16 GEMMs `M[xi] = U[xi] @ V[xi]`
//! (`U[xi]`: `Cout x Cin` transformed filters, `V[xi]`: `Cin x tiles` transformed patches): 4
//! multiplies per output pixel and channel pair instead of 9, and the transformed input is 4x the
//! input (im2col: 9x). Tiles of several whole samples (small images) or row ranges of one sample
//! (large images) run in parallel, each GEMM single-threaded, with per-thread scratch bounded by
//! [`CHUNK_BYTES`]. The result equals the direct convolution up to f32 rounding (the transforms
//! use only +, - and halves).

use super::super::norm::{simd_fn, simd_level};
use super::*;

/// Whether the forward pass takes [`conv3x3`]: 3x3, stride 1, padding 1, at least 8 channels
/// in and out, images of at least 10x10, and a chunk budget of a whole sample or at least 4 tile
/// rows (the padding row then costs at most a fifth of each GEMM). Measured, 2 cores: the MNIST
/// UNet's 14x14 and 28x28 layers at batch 32 run 1.2-2x faster than im2col + GEMM; at 7x7,
/// where half-empty edge tiles and the padding row waste much of each GEMM, 1.25x slower; the
/// 256x256 guided-diffusion model (128-512 channels, one or two tile rows per chunk) 7% slower.
pub(super) fn applies(g: &ConvGeom, cout: usize) -> bool {
    let (th, tw) = (g.h.div_ceil(2), g.w.div_ceil(2));
    let cap = chunk_cap(g.cin, cout, tw);
    g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.pad == 1
        && g.cin >= 8
        && cout >= 8
        && g.h >= 10
        && g.w >= 10
        && (th * tw <= cap || cap >= 4 * tw)
}

/// Whether the backward pass (input gradient by [`conv3x3`] of the flipped kernel, weight
/// gradient by [`weight_grad3x3`]) takes this path: as [`applies`], with at least 64 output
/// channels. (Measured as above: 1.15-1.25x faster than the fused im2col backward at 64 output
/// channels; at 32, whose GEMMs reduce over only 32 channels, as fast or up to 8% slower.)
pub(super) fn applies_backward(g: &ConvGeom, cout: usize) -> bool {
    applies(g, cout) && cout >= 64
}

/// Scratch budget of one chunk of tiles: transformed input and products (`16 (Cin + Cout)`
/// floats per tile) and the transforms' work space (`14 max(Cin, Cout)`).
const CHUNK_BYTES: usize = 2 << 20;

/// Tiles per chunk for the budget.
fn chunk_cap(cin: usize, cout: usize, tw: usize) -> usize {
    (CHUNK_BYTES / (4 * (16 * (cin + cout) + 14 * cin.max(cout)))).max(tw)
}

/// `U[xi][co][ci] = (G w[co, ci] G^T)[xi]`, `xi = 4 row + col`.
fn transform_filters(w: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    let mut u = vec![0f32; 16 * cout * cin];
    let plane = cout * cin;
    for co in 0..cout {
        for ci in 0..cin {
            let g = &w[(co * cin + ci) * 9..][..9];
            // t = G g (4 x 3), then t G^T (4 x 4).
            let mut t = [[0f32; 3]; 4];
            for c in 0..3 {
                let (g0, g1, g2) = (g[c], g[3 + c], g[6 + c]);
                t[0][c] = g0;
                t[1][c] = 0.5 * (g0 + g1 + g2);
                t[2][c] = 0.5 * (g0 - g1 + g2);
                t[3][c] = g2;
            }
            for (r, tr) in t.iter().enumerate() {
                let v = [
                    tr[0],
                    0.5 * (tr[0] + tr[1] + tr[2]),
                    0.5 * (tr[0] - tr[1] + tr[2]),
                    tr[2],
                ];
                for (c, &vc) in v.iter().enumerate() {
                    u[(4 * r + c) * plane + co * cin + ci] = vc;
                }
            }
        }
    }
    u
}

/// Output-tile rows `[ty0, ty1)` of samples `b0 .. b0 + nb` (several samples only whole).
#[derive(Debug, Clone, Copy)]
struct Chunk {
    b0: usize,
    nb: usize,
    ty0: usize,
    ty1: usize,
}

/// Cuts the `b` samples of `th x tw` tiles into chunks of at most `cap` tiles (whole tile rows),
/// at least `nt` chunks where the work allows it.
fn plan_chunks(b: usize, th: usize, tw: usize, cap: usize, nt: usize) -> Vec<Chunk> {
    let per = th * tw;
    if b == 0 || per == 0 {
        return Vec::new();
    }
    if per <= cap {
        let g = (cap / per).clamp(1, b.div_ceil(nt.max(1)));
        let n = b.div_ceil(g);
        even_split(b, n)
            .map(|(b0, b1)| Chunk {
                b0,
                nb: b1 - b0,
                ty0: 0,
                ty1: th,
            })
            .collect()
    } else {
        let c = th.div_ceil((cap / tw).max(1));
        (0..b)
            .flat_map(|b0| {
                even_split(th, c).map(move |(ty0, ty1)| Chunk {
                    b0,
                    nb: 1,
                    ty0,
                    ty1,
                })
            })
            .collect()
    }
}

/// The columns of a chunk's GEMMs: for each channel `c` (rows of the 16 matrices), its samples
/// `j` one after the other, each as `nty + 1` tile rows of `tw` tiles (`c`, `j`, `t`, `x` ->
/// `(c nb + j) L + t tw + x`, `L = (nty + 1) tw`). The last tile row of each sample is padding:
/// it lets every transform run as one flat loop over all channels and samples (the vertical
/// steps read one row ahead), and its columns are zero in `V` and ignored in `M`.
#[derive(Debug, Clone, Copy)]
struct Cols {
    nb: usize,
    nty: usize,
    tw: usize,
}

impl Cols {
    fn new(ch: &Chunk, tw: usize) -> Self {
        Self {
            nb: ch.nb,
            nty: ch.ty1 - ch.ty0,
            tw,
        }
    }
    /// Columns per sample block.
    fn l(&self) -> usize {
        (self.nty + 1) * self.tw
    }
    /// GEMM columns (row stride of the 16 matrices).
    fn n(&self) -> usize {
        self.nb * self.l()
    }
}

/// Fills `r` (blocks of `nr` rows of `rw >= w` columns, block `c nb + j` from channel `c` of
/// sample `b0 + j` of `x`) with image rows `2 (ty0 + t) - p` (`t` in `0..nr`), zero outside the
/// image and past column `w`.
#[allow(clippy::too_many_arguments)]
fn gather_rows(
    x: &[f32],
    (nc, h, w): (usize, usize, usize),
    (b0, nb): (usize, usize),
    (ty0, nr, p): (usize, usize, usize),
    rw: usize,
    r: &mut [f32],
) {
    let plane = h * w;
    for (blk, rows) in r.chunks_exact_mut(nr * rw).enumerate().take(nc * nb) {
        let (c, j) = (blk / nb, blk % nb);
        let xc = &x[((b0 + j) * nc + c) * plane..][..plane];
        for (t, dst) in rows.chunks_exact_mut(rw).enumerate() {
            let y = (2 * (ty0 + t)) as isize - p as isize;
            if y >= 0 && (y as usize) < h {
                dst[..w].copy_from_slice(&xc[y as usize * w..][..w]);
                dst[w..].fill(0.0);
            } else {
                dst.fill(0.0);
            }
        }
    }
}

simd_fn! {
    /// Splits `r` into its even (`od`: columns `2x`) and odd (`ev`: columns `2x + 1`) entries.
    fn deinterleave(r: &[f32], od: &mut [f32], ev: &mut [f32]) {
        let n = od.len().min(ev.len()).min(r.len() / 2);
        let r = &r[..2 * n];
        for q in 0..n {
            od[q] = r[2 * q];
            ev[q] = r[2 * q + 1];
        }
    }
}

simd_fn! {
    /// Horizontal `B^T` step over rows of `tw` tiles: patch columns `2x - 1, 2x, 2x + 1, 2x + 2`
    /// of tile `x` are `(ev[q - 1], od[q], ev[q], od[q + 1])`, zero past the row ends.
    fn input_horizontal(od: &[f32], ev: &[f32], tw: usize, h: &mut [f32]) {
        let len = od.len();
        let (h0, rest) = h.split_at_mut(len);
        let (h1, rest) = rest.split_at_mut(len);
        let (h2, h3) = rest.split_at_mut(len);
        let (ev, h3) = (&ev[..len], &mut h3[..len]);
        for q in 0..len {
            h1[q] = od[q] + ev[q];
            h2[q] = ev[q] - od[q];
        }
        h0[0] = -ev[0];
        for q in 1..len {
            h0[q] = ev[q - 1] - ev[q];
        }
        for q in 0..len - 1 {
            h3[q] = od[q] - od[q + 1];
        }
        h3[len - 1] = od[len - 1];
        for q in (0..len).step_by(tw) {
            h0[q] = -ev[q];
            h3[q + tw - 1] = od[q + tw - 1];
        }
    }
}

simd_fn! {
    /// Vertical `B^T` step: rows `2ty - 1, 2ty, 2ty + 1, 2ty + 2` of tile `q` are `(ho[q], he[q],
    /// ho[q + tw], he[q + tw])`; writes column `c` of the 4x4 result to `v` rows `c, 4 + c, 8 + c,
    /// 12 + c` (stride `vs`), for all `len - tw` tiles that have a row below.
    fn input_vertical(he: &[f32], ho: &[f32], tw: usize, v: &mut [f32], vs: usize, c: usize) {
        let len = he.len();
        let n = len - tw;
        let (va, rest) = v[c * vs..].split_at_mut(4 * vs);
        let (vb, rest) = rest.split_at_mut(4 * vs);
        let (vc, vd) = rest.split_at_mut(4 * vs);
        let (va, vb, vc, vd) = (&mut va[..n], &mut vb[..n], &mut vc[..n], &mut vd[..n]);
        let ho = &ho[..len];
        for q in 0..n {
            let (d0, d1, d2, d3) = (ho[q], he[q], ho[q + tw], he[q + tw]);
            va[q] = d0 - d2;
            vb[q] = d1 + d2;
            vc[q] = d2 - d1;
            vd[q] = d1 - d3;
        }
    }
}

/// `V = B^T d B` of every tile of chunk `ch` of `x` (`[B, nc, h, w]`), into the 16 matrices of
/// `v` (`nc` rows of [`Cols::n`] each); `s` holds `12 nc cols.n()` floats.
#[allow(clippy::too_many_arguments)]
fn input_transform(
    x: &[f32],
    (nc, h, w): (usize, usize, usize),
    ch: &Chunk,
    cols: Cols,
    s: &mut [f32],
    v: &mut [f32],
) {
    let (tw, l) = (cols.tw, cols.l());
    let total = nc * cols.n();
    let vs = total;
    let (r, s) = s.split_at_mut(2 * total);
    let (od, s) = s.split_at_mut(total);
    let (ev, s) = s.split_at_mut(total);
    let hs = &mut s[..8 * total];
    for p in 0..2 {
        gather_rows(
            x,
            (nc, h, w),
            (ch.b0, ch.nb),
            (ch.ty0, cols.nty + 1, p),
            2 * tw,
            r,
        );
        deinterleave(r, od, ev);
        input_horizontal(od, ev, tw, &mut hs[4 * p * total..][..4 * total]);
    }
    let (he, ho) = hs.split_at(4 * total);
    for c in 0..4 {
        input_vertical(
            &he[c * total..][..total],
            &ho[c * total..][..total],
            tw,
            v,
            vs,
            c,
        );
    }
    // The padding row of every block (and the last block's, which had no row below) is zero.
    for xi in 0..16 {
        for blk in v[xi * vs..][..vs].chunks_exact_mut(l) {
            blk[l - tw..].fill(0.0);
        }
    }
}

simd_fn! {
    /// `A^T m A + bias` in one pass: `m` the 16 rows (stride `ms`, length `len`) of products;
    /// writes the output rows `2ty` and `2ty + 1` of each tile row, columns interleaved, into
    /// `t0` and `t1` (`2 len` each); `bias` per block of `l` columns (`bias[blk]`).
    fn output_flat(m: &[f32], ms: usize, len: usize, l: usize, bias: &[f32], t0: &mut [f32],
        t1: &mut [f32]) {
        let rows: [&[f32]; 16] = std::array::from_fn(|k| &m[k * ms..][..len]);
        let (t0, t1) = (&mut t0[..2 * len], &mut t1[..2 * len]);
        for (blk, &bv) in bias.iter().enumerate().take(len / l.max(1)) {
            let o = blk * l;
            let r: [&[f32]; 16] = std::array::from_fn(|k| &rows[k][o..o + l]);
            let (u0, u1) = (&mut t0[2 * o..2 * (o + l)], &mut t1[2 * o..2 * (o + l)]);
            for q in 0..l {
                // s0[c] = (A^T m)[0][c], s1[c] = (A^T m)[1][c]
                let s0 = |c: usize| r[c][q] + r[4 + c][q] + r[8 + c][q];
                let s1 = |c: usize| r[4 + c][q] - r[8 + c][q] - r[12 + c][q];
                let (a0, a1, a2, a3) = (s0(0), s0(1), s0(2), s0(3));
                let (b0, b1, b2, b3) = (s1(0), s1(1), s1(2), s1(3));
                u0[2 * q] = a0 + a1 + a2 + bv;
                u0[2 * q + 1] = a1 - a2 - a3 + bv;
                u1[2 * q] = b0 + b1 + b2 + bv;
                u1[2 * q + 1] = b1 - b2 - b3 + bv;
            }
        }
    }
}

simd_fn! {
    /// `Gm = A dY A^T` over flat runs: `a0, b0` (`a1, b1`) the even and odd columns of output
    /// rows `2ty` (`2ty + 1`); writes the 16 rows of `gm` (stride `gs`).
    fn grad_flat(a0: &[f32], b0: &[f32], a1: &[f32], b1: &[f32], gm: &mut [f32], gs: usize) {
        let len = a0.len();
        let (b0, a1, b1) = (&b0[..len], &a1[..len], &b1[..len]);
        // A = [[1, 0], [1, 1], [1, -1], [0, -1]] on rows (i), then on columns.
        for i in 0..4 {
            let (ga, rest) = gm[4 * i * gs..].split_at_mut(gs);
            let (gb, rest) = rest.split_at_mut(gs);
            let (gc, gd) = rest.split_at_mut(gs);
            let (ga, gb, gc, gd) = (&mut ga[..len], &mut gb[..len], &mut gc[..len], &mut gd[..len]);
            for q in 0..len {
                let (a, b) = match i {
                    0 => (a0[q], b0[q]),
                    1 => (a0[q] + a1[q], b0[q] + b1[q]),
                    2 => (a0[q] - a1[q], b0[q] - b1[q]),
                    _ => (-a1[q], -b1[q]),
                };
                ga[q] = a;
                gb[q] = a + b;
                gc[q] = a - b;
                gd[q] = -b;
            }
        }
    }
}

/// `out[B, Cout, H, W] = conv3x3(x, w, padding 1) + bias` (see the module doc); requires
/// [`applies`].
pub(super) fn conv3x3(
    g: &ConvGeom,
    b: usize,
    cout: usize,
    x: &[f32],
    w: &[f32],
    bias: Bias,
    out: &mut [f32],
) {
    let (cin, h, wd) = (g.cin, g.h, g.w);
    debug_assert!(applies(g, cout) && g.ho == h && g.wo == wd);
    assert_eq!(x.len(), b * cin * h * wd);
    assert_eq!(w.len(), cout * cin * 9);
    assert_eq!(out.len(), b * cout * h * wd);
    let (th, tw) = (h.div_ceil(2), wd.div_ceil(2));
    let u = transform_filters(w, cout, cin);
    let chunks = plan_chunks(b, th, tw, chunk_cap(cin, cout, tw), threads());
    let optr = SendPtr(out.as_mut_ptr());
    let plane = h * wd;
    chunks.par_iter().for_each(|ch| {
        let cols = Cols::new(ch, tw);
        let (n, l) = (cols.n(), cols.l());
        let (nv, nm) = (16 * cin * n, 16 * cout * n);
        let ns = 14 * cin.max(cout) * n + cout * ch.nb;
        with_scratch(nv + nm + ns, |s| {
            let (v, s) = s.split_at_mut(nv);
            let (m, s) = s.split_at_mut(nm);
            let (bv, tmp) = s.split_at_mut(cout * ch.nb);
            input_transform(x, (cin, h, wd), ch, cols, tmp, v);
            for xi in 0..16 {
                // SAFETY: `m`, `u`, `v` hold the `cout x n`, `cout x cin`, `cin x n` blocks of
                // plane `xi` at the given strides.
                unsafe {
                    sgemm(
                        (cout, n, cin),
                        m[xi * cout * n..].as_mut_ptr(),
                        (n, 1),
                        false,
                        u[xi * cout * cin..].as_ptr(),
                        (cin, 1),
                        v[xi * cin * n..].as_ptr(),
                        (n, 1),
                        Parallelism::None,
                    )
                };
            }
            // Y = A^T M A + bias, into the chunk's rows.
            for (blk, b) in bv.iter_mut().enumerate() {
                *b = bias.get(ch.b0 + blk % ch.nb, blk / ch.nb, cout);
            }
            let len = cout * n;
            let (t0, rest) = tmp.split_at_mut(2 * len);
            let t1 = &mut rest[..2 * len];
            output_flat(m, len, len, l, bv, t0, t1);
            for blk in 0..cout * ch.nb {
                let (co, j) = (blk / ch.nb, blk % ch.nb);
                let bi = ch.b0 + j;
                for t in 0..cols.nty {
                    for (r, tr) in [&*t0, &*t1].into_iter().enumerate() {
                        let y = 2 * (ch.ty0 + t) + r;
                        if y < h {
                            // SAFETY: row `y` of channel `co` of sample `bi` belongs to this
                            // chunk's tiles only (chunks are disjoint tile rows or samples).
                            let dst = unsafe {
                                std::slice::from_raw_parts_mut(
                                    optr.get().add((bi * cout + co) * plane + y * wd),
                                    wd,
                                )
                            };
                            dst.copy_from_slice(&tr[2 * (blk * l + t * tw)..][..wd]);
                        }
                    }
                }
            }
        })
    });
}

/// Weight gradient `dW[Cout, Cin, 3, 3]` of [`conv3x3`] for inputs `x` and output gradient
/// `dy`, by the same transforms: with `V` the input transform of `x` and `Gm = A dY A^T`,
/// `dU[xi] = sum over tiles Gm[xi] V[xi]^T` (16 GEMMs reducing over the tiles) and
/// `dW = G^T dU G` (the adjoint of the filter transform). Partial sums per thread, reduced in a
/// fixed order.
pub(super) fn weight_grad3x3(
    g: &ConvGeom,
    b: usize,
    cout: usize,
    x: &[f32],
    dy: &[f32],
) -> Vec<f32> {
    let (cin, h, wd) = (g.cin, g.h, g.w);
    debug_assert!(applies(g, cout) && g.ho == h && g.wo == wd);
    assert_eq!(x.len(), b * cin * h * wd);
    assert_eq!(dy.len(), b * cout * h * wd);
    let (th, tw) = (h.div_ceil(2), wd.div_ceil(2));
    let chunks = plan_chunks(b, th, tw, chunk_cap(cin, cout, tw), threads());
    // dU[xi][ci][co]
    let du = grouped_partials(&chunks, 16 * cin * cout, |grp, acc| {
        for (k, ch) in grp.iter().enumerate() {
            let cols = Cols::new(ch, tw);
            let n = cols.n();
            let (nv, nm) = (16 * cin * n, 16 * cout * n);
            let ns = 12 * cin.max(cout) * n;
            with_scratch(nv + nm + ns, |s| {
                let (v, s) = s.split_at_mut(nv);
                let (gm, tmp) = s.split_at_mut(nm);
                input_transform(x, (cin, h, wd), ch, cols, tmp, v);
                // Output-gradient rows 2 (ty0 + t) + p (the padding tile row reads as zero).
                let len = cout * n;
                let (r, rest) = tmp.split_at_mut(2 * len);
                let (ab, _) = rest.split_at_mut(4 * len);
                for p in 0..2 {
                    // gather_rows takes rows 2 (ty0 + t) - p'; row 2 (ty0 + t) + 1 is
                    // 2 (ty0 + t + 1) - 1 with the tile rows shifted by one.
                    let (ty0, pp) = if p == 0 { (ch.ty0, 0) } else { (ch.ty0 + 1, 1) };
                    gather_rows(
                        dy,
                        (cout, h, wd),
                        (ch.b0, ch.nb),
                        (ty0, cols.nty + 1, pp),
                        2 * tw,
                        r,
                    );
                    let (a, rest) = ab[2 * p * len..].split_at_mut(len);
                    deinterleave(r, a, &mut rest[..len]);
                }
                let (a0, rest) = ab.split_at(len);
                let (b0, rest) = rest.split_at(len);
                let (a1, b1) = rest.split_at(len);
                grad_flat(a0, b0, a1, &b1[..len], gm, len);
                // The padding tile row: zero gradient.
                let l = cols.l();
                for xi in 0..16 {
                    for blk in gm[xi * len..][..len].chunks_exact_mut(l) {
                        blk[l - tw..].fill(0.0);
                    }
                }
                for xi in 0..16 {
                    // SAFETY: `gm` and `v` hold `cout` and `cin` rows of `n` at stride `n` for
                    // plane `xi`; `acc` holds 16 `cin x cout` blocks.
                    unsafe {
                        weight_grad_gemm(
                            (cout, cin, n),
                            acc[xi * cin * cout..].as_mut_ptr(),
                            k > 0,
                            gm[xi * cout * n..].as_ptr(),
                            n,
                            v[xi * cin * n..].as_ptr(),
                            n,
                        )
                    };
                }
            });
        }
    });
    // dW[co, ci] = G^T dU[.][ci][co] G, G^T = [[1, 1/2, 1/2, 0], [0, 1/2, -1/2, 0],
    // [0, 1/2, 1/2, 1]].
    let mut dw = vec![0f32; cout * cin * 9];
    let gt = |d: [f32; 4]| {
        [
            d[0] + 0.5 * (d[1] + d[2]),
            0.5 * (d[1] - d[2]),
            0.5 * (d[1] + d[2]) + d[3],
        ]
    };
    for co in 0..cout {
        for ci in 0..cin {
            let d = |xi: usize| du[(xi * cin + ci) * cout + co];
            // Columns first: r[c] = G^T (column c of dU).
            let cols: [[f32; 3]; 4] =
                std::array::from_fn(|c| gt([d(c), d(4 + c), d(8 + c), d(12 + c)]));
            let out = &mut dw[(co * cin + ci) * 9..][..9];
            for ky in 0..3 {
                let row = gt([cols[0][ky], cols[1][ky], cols[2][ky], cols[3][ky]]);
                out[ky * 3..ky * 3 + 3].copy_from_slice(&row);
            }
        }
    }
    dw
}
