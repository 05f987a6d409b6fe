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

/// Whether [`conv3x3`] computes this convolution (enough channels for the 16 GEMMs to pay).
pub(super) fn applies(g: &ConvGeom, cout: usize) -> bool {
    g.kh == 3 && g.kw == 3 && g.stride == 1 && g.pad == 1 && g.cin >= 8 && cout >= 8
}

/// Scratch budget of one chunk of tiles: transformed input and products, `16 (Cin + Cout)`
/// floats per tile.
const CHUNK_BYTES: usize = 2 << 20;

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
        (0..n)
            .map(|i| {
                let (b0, b1) = (i * b / n, (i + 1) * b / n);
                Chunk {
                    b0,
                    nb: b1 - b0,
                    ty0: 0,
                    ty1: th,
                }
            })
            .collect()
    } else {
        let rows = (cap / tw).max(1);
        let c = th.div_ceil(rows);
        (0..b)
            .flat_map(|b0| {
                (0..c).map(move |j| Chunk {
                    b0,
                    nb: 1,
                    ty0: j * th / c,
                    ty1: (j + 1) * th / c,
                })
            })
            .collect()
    }
}

/// Scratch floats of [`input_plane_transform`] for `nty` tile rows of `tw` tiles.
fn input_scratch(nty: usize, tw: usize) -> usize {
    12 * (nty + 1) * tw
}

simd_fn! {
    /// `B^T d B` of every tile of tile rows `[ty0, ty0 + nty)` of one channel plane `xc` (`h x
    /// w`), into the 16 rows of `v` (`nty tw` tiles each, at stride `vs`, from offset `v0`).
    /// Separable: the horizontal transform first, over the even and the odd input rows apart
    /// (each as one flat run of columns deinterleaved into even and odd), then the vertical one
    /// as flat runs over the tiles. Every loop is long and contiguous (or a full 2-way
    /// deinterleave), which LLVM vectorises; images of any width (an odd one gets a zero column).
    fn input_plane_transform(xc: &[f32], h: usize, w: usize, ty0: usize, nty: usize, tw: usize,
        s: &mut [f32], v: &mut [f32], vs: usize, v0: usize) {
        let (nr, rw) = (nty + 1, 2 * tw);
        let len = nr * tw;
        let (r, s) = s.split_at_mut(nr * rw);
        let (ev, s) = s.split_at_mut(len);
        let (od, s) = s.split_at_mut(len);
        let hs = &mut s[..8 * len];
        // p = 0: even rows 2 (ty0 + t); p = 1: odd rows 2 (ty0 + t) - 1; t in 0..=nty.
        for p in 0..2 {
            for (t, dst) in r.chunks_exact_mut(rw).enumerate() {
                let y = 2 * (ty0 + t) as isize - p as isize;
                if y >= 0 && (y as usize) < h {
                    dst[..w].copy_from_slice(&xc[y as usize * w..][..w]);
                    dst[w..].fill(0.0);
                } else {
                    dst.fill(0.0);
                }
            }
            // od[q] = column 2x, ev[q] = column 2x + 1 of row t (q = t tw + x).
            for q in 0..len {
                od[q] = r[2 * q];
                ev[q] = r[2 * q + 1];
            }
            // Patch columns 2x - 1, 2x, 2x + 1, 2x + 2 = (ev[q - 1], od[q], ev[q], od[q + 1]),
            // zero past the row ends.
            let (h0, rest) = hs[4 * p * len..].split_at_mut(len);
            let (h1, rest) = rest.split_at_mut(len);
            let (h2, h3) = rest.split_at_mut(len);
            let h3 = &mut h3[..len];
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
            for t in 0..nr {
                h0[t * tw] = -ev[t * tw];
                h3[t * tw + tw - 1] = od[t * tw + tw - 1];
            }
        }
        // Rows 2ty - 1, 2ty, 2ty + 1, 2ty + 2 = (ho[q], he[q], ho[q + tw], he[q + tw]).
        let n = nty * tw;
        for c in 0..4 {
            let he = &hs[c * len..][..len];
            let ho = &hs[(4 + c) * len..][..len];
            let (va, rest) = v[v0 + c * vs..].split_at_mut(4 * vs);
            let (vb, rest) = rest.split_at_mut(4 * vs);
            let (vc, vd) = rest.split_at_mut(4 * vs);
            let (va, vb, vc, vd) = (&mut va[..n], &mut vb[..n], &mut vc[..n], &mut vd[..n]);
            for q in 0..n {
                let (d0, d1, d2, d3) = (ho[q], he[q], ho[q + tw], he[q + tw]);
                va[q] = d0 - d2;
                vb[q] = d1 + d2;
                vc[q] = d2 - d1;
                vd[q] = d1 - d3;
            }
        }
    }
}

/// Scratch floats of [`output_plane_transform`] for `nty` tile rows of `tw` tiles.
fn output_scratch(nty: usize, tw: usize) -> usize {
    12 * nty * tw
}

simd_fn! {
    /// `A^T m A + bias` of `nty` tile rows of one output channel: `m` the 16 product rows
    /// (`nty tw` tiles at stride `ms`, from offset `m0`), into `y`, the `h` (at most `2 nty`)
    /// output rows of `w` columns these tiles cover. Flat runs as in [`input_plane_transform`].
    fn output_plane_transform(m: &[f32], ms: usize, m0: usize, nty: usize,
        tw: usize, bias: f32, s: &mut [f32], y: &mut [f32], h: usize, w: usize) {
        let n = nty * tw;
        let (sv, rest) = s.split_at_mut(8 * n);
        let (ye, rest) = rest.split_at_mut(n);
        let (yo, rest) = rest.split_at_mut(n);
        let t2 = &mut rest[..2 * n];
        // sv[2c] = (A^T m)[0][c], sv[2c + 1] = (A^T m)[1][c] (output rows 2ty and 2ty + 1).
        for c in 0..4 {
            let row = |k: usize| &m[m0 + k * ms..][..n];
            let (a, b, cc, d) = (row(c), row(4 + c), row(8 + c), row(12 + c));
            let (s0, s1) = sv[2 * c * n..].split_at_mut(n);
            let s1 = &mut s1[..n];
            for q in 0..n {
                s0[q] = a[q] + b[q] + cc[q];
                s1[q] = b[q] - cc[q] - d[q];
            }
        }
        for r in 0..2 {
            let sr = |c: usize| &sv[(2 * c + r) * n..][..n];
            let (q0, q1, q2, q3) = (sr(0), sr(1), sr(2), sr(3));
            for q in 0..n {
                ye[q] = q0[q] + q1[q] + q2[q] + bias;
                yo[q] = q1[q] - q2[q] - q3[q] + bias;
            }
            for q in 0..n {
                t2[2 * q] = ye[q];
                t2[2 * q + 1] = yo[q];
            }
            for t in 0..nty {
                let yy = 2 * t + r;
                if yy < h {
                    y[yy * w..][..w].copy_from_slice(&t2[t * 2 * tw..][..w]);
                }
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
    let cap = (CHUNK_BYTES / (64 * (cin + cout))).max(tw);
    let chunks = plan_chunks(b, th, tw, cap, threads());
    let optr = SendPtr(out.as_mut_ptr());
    let plane = h * wd;
    chunks.par_iter().for_each(|ch| {
        let nty = ch.ty1 - ch.ty0;
        let n = ch.nb * nty * tw; // GEMM columns: (sample, tile row, tile column)
        let (nv, nm) = (16 * cin * n, 16 * cout * n);
        let ns = input_scratch(nty, tw).max(output_scratch(nty, tw));
        with_scratch(nv + nm + ns, |s| {
            let (v, s) = s.split_at_mut(nv);
            let (m, tmp) = s.split_at_mut(nm);
            // V[xi][ci][col], col = (sample j, tile row, tile column)
            for j in 0..ch.nb {
                let xb = &x[(ch.b0 + j) * cin * plane..][..cin * plane];
                for ci in 0..cin {
                    let v0 = ci * n + j * nty * tw;
                    let xc = &xb[ci * plane..][..plane];
                    input_plane_transform(xc, h, wd, ch.ty0, nty, tw, tmp, v, cin * n, v0);
                }
            }
            // M[xi] = U[xi] @ V[xi]
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
            // Y = A^T M A (+ bias), rows of this chunk only.
            for j in 0..ch.nb {
                let bi = ch.b0 + j;
                for co in 0..cout {
                    // SAFETY: channel `co` of sample `bi`; this task writes only the rows of its
                    // own tile rows (chunks are disjoint tile rows or samples).
                    let (r0, r1) = (2 * ch.ty0, (2 * ch.ty1).min(h));
                    let yc = unsafe {
                        std::slice::from_raw_parts_mut(
                            optr.get().add((bi * cout + co) * plane + r0 * wd),
                            (r1 - r0) * wd,
                        )
                    };
                    let m0 = co * n + j * nty * tw;
                    let bv = bias.get(bi, co, cout);
                    output_plane_transform(m, cout * n, m0, nty, tw, bv, tmp, yc, r1 - r0, wd);
                }
            }
        })
    });
}
