//! Conv2d by tiled im2col + GEMM, with backward.
//!
//! The output pixels of the whole batch (`B * Ho * Wo` columns) are cut into tiles whose im2col
//! block (`Cin * kh * kw` rows) fits a fixed budget ([`TILE_BYTES`]): small images put several
//! whole samples in one tile (one GEMM with `N = samples * Ho * Wo` instead of one per sample),
//! large images split each sample into pixel ranges (the scratch stays bounded, however large
//! the image). Tiles run in parallel on rayon's threads, each with a thread-local scratch buffer
//! that is reused from call to call, and each GEMM is single-threaded (no nested parallelism).
//! 1x1 stride-1 convolutions read the input in place. The tile count is a multiple of the
//! thread count where possible, with even tiles (every core busy to the end).
//!
//! Backward of a stride-1 convolution (the input gradient is itself a convolution, of the output
//! gradient with the flipped, transposed kernel): ONE im2col per tile, of the output gradient in
//! that flipped geometry, feeds both the input-gradient GEMM and the weight-gradient GEMM (the
//! same columns, shifted by the kernel offsets, pair each input pixel with the output gradients
//! it contributed to), which reads those columns in place with the pixels as its reduction
//! dimension and packs only the small input block. Other strides (and constant inputs) take the
//! weight gradient from the im2col of the input, oriented the same way, and scatter the input
//! gradient (col2im) per sample. Weight gradients accumulate one GEMM per tile into a fixed number
//! of partial sums, reduced in a fixed order (deterministic for a fixed thread count).
//!
//! 3x3 stride-1 padding-1 layers take Winograd's F(2x2, 3x3) instead ([`winograd`]) where it
//! measured faster: the forward pass from 10x10 images, the backward pass (input and weight
//! gradients) from 64 output channels; `DIFFPOST_CONV=im2col` turns it off.

use super::*;
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;
use std::cell::RefCell;

mod winograd;

/// Whether 3x3 stride-1 convolutions take the Winograd path ([`winograd`]; the default). The
/// environment variable `DIFFPOST_CONV=im2col`, read once, selects im2col + GEMM for every
/// convolution (for comparisons).
fn winograd_enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("DIFFPOST_CONV").map_or(true, |v| v != "im2col"))
}

// ---------------------------------------------------------------------------------------------
// Geometry, im2col / col2im over pixel ranges

#[derive(Debug, Clone, Copy)]
struct ConvGeom {
    cin: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    stride: usize,
    pad: usize,
    ho: usize,
    wo: usize,
}

impl ConvGeom {
    fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }

    fn pout(&self) -> usize {
        self.ho * self.wo
    }

    fn xlen(&self) -> usize {
        self.cin * self.h * self.w
    }

    /// A 1x1 stride-1 unpadded conv reads the input directly as its column matrix.
    fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    /// Output columns `[ox0, ox1)` whose input column `ox * stride + kx - pad` is inside.
    fn valid_ox(&self, kx: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.pad);
        // ox * s + kx >= p  <=>  ox >= ceil((p - kx) / s)
        let lo = if kx >= p { 0 } else { (p - kx).div_ceil(s) };
        // ox * s + kx - p <= w - 1  <=>  ox <= (w - 1 + p - kx) / s
        let hi = if self.w + p > kx {
            ((self.w - 1 + p - kx) / s + 1).min(self.wo)
        } else {
            0
        };
        (lo.min(hi), hi)
    }

    /// Calls `f(row, kx, oy, a, e, iy, lo, hi)` for every im2col row and every output row `oy`
    /// that meets the pixel range `[p0, p1)`: output columns `[a, e)` of that row are in the
    /// range, `iy` is the input row (None: padding), `[lo, hi)` (inside `[a, e)`) the columns
    /// that read inside the input.
    #[inline(always)]
    fn for_each_segment(
        &self,
        p0: usize,
        p1: usize,
        mut f: impl FnMut(usize, usize, usize, usize, usize, Option<usize>, usize, usize),
    ) {
        if p1 <= p0 {
            return;
        }
        let (h, s, p, wo) = (self.h, self.stride, self.pad, self.wo);
        let (oy0, oy1) = (p0 / wo, (p1 - 1) / wo + 1);
        for ci in 0..self.cin {
            for ky in 0..self.kh {
                for kx in 0..self.kw {
                    let row = (ci * self.kh + ky) * self.kw + kx;
                    let (vx0, vx1) = self.valid_ox(kx);
                    for oy in oy0..oy1 {
                        let a = if oy == oy0 { p0 - oy * wo } else { 0 };
                        let e = if oy + 1 == oy1 { p1 - oy * wo } else { wo };
                        let iy = (oy * s + ky) as isize - p as isize;
                        let iy = if iy < 0 || iy >= h as isize {
                            None
                        } else {
                            Some(iy as usize + ci * h)
                        };
                        let lo = vx0.clamp(a, e);
                        let hi = vx1.clamp(lo, e);
                        f(row, kx, oy, a, e, iy, lo, hi);
                    }
                }
            }
        }
    }

    /// Columns `[c0, c0 + p1 - p0)` of `cols` (row stride `ld`, `K` rows): the im2col of the
    /// output pixels `[p0, p1)` of one sample `x: [Cin, H, W]`.
    fn im2col_range(
        &self,
        x: &[f32],
        p0: usize,
        p1: usize,
        cols: &mut [f32],
        ld: usize,
        c0: usize,
    ) {
        if p1 <= p0 {
            return;
        }
        if self.stride == 1 && self.ho == self.h && self.wo == self.w {
            self.im2col_same(x, p0, p1, cols, ld, c0);
            return;
        }
        let (w, s, p, wo) = (self.w, self.stride, self.pad, self.wo);
        self.for_each_segment(p0, p1, |row, kx, oy, a, e, iy, lo, hi| {
            let off = row * ld + c0 + oy * wo - p0;
            let d = &mut cols[off + a..off + e];
            let Some(iy) = iy else {
                d.fill(0.0);
                return;
            };
            d[..lo - a].fill(0.0);
            d[hi - a..].fill(0.0);
            if hi > lo {
                let xr = &x[iy * w..(iy + 1) * w];
                let ix0 = lo * s + kx - p;
                let d = &mut d[lo - a..hi - a];
                if s == 1 {
                    d.copy_from_slice(&xr[ix0..ix0 + (hi - lo)]);
                } else {
                    for (j, v) in d.iter_mut().enumerate() {
                        *v = xr[ix0 + j * s];
                    }
                }
            }
        });
    }

    /// [`Self::im2col_range`] for stride 1 and an output as large as the input: each im2col row
    /// is the input channel shifted by `(ky - pad) * W + kx - pad`, one copy, then the few
    /// entries that fall in the padding are zeroed.
    fn im2col_same(&self, x: &[f32], p0: usize, p1: usize, cols: &mut [f32], ld: usize, c0: usize) {
        let (h, w, p) = (self.h, self.w, self.pad);
        let hw = h * w;
        let n = p1 - p0;
        for ci in 0..self.cin {
            let xc = &x[ci * hw..(ci + 1) * hw];
            for ky in 0..self.kh {
                // Pixels q whose input row q / w + ky - p is inside: [qa, qb).
                let qa = (p.saturating_sub(ky) * w).clamp(p0, p1);
                let qb = ((h + p).saturating_sub(ky) * w).min(hw).clamp(qa, p1);
                for kx in 0..self.kw {
                    let row = (ci * self.kh + ky) * self.kw + kx;
                    let d = &mut cols[row * ld + c0..row * ld + c0 + n];
                    d[..qa - p0].fill(0.0);
                    d[qb - p0..].fill(0.0);
                    if qb <= qa {
                        continue;
                    }
                    // Source index q + (ky - p) * w + kx - p (>= 0 for q >= qa up to the
                    // column padding, fixed below).
                    let shift = (ky * w + kx) as isize - (p * w + p) as isize;
                    let (mut a, b) = (qa, qb);
                    // The first pixel can read before the channel start only when it is in the
                    // left padding (zeroed below anyway).
                    while a < b && (a as isize + shift) < 0 {
                        d[a - p0] = 0.0;
                        a += 1;
                    }
                    let mut e = b;
                    while e > a && (e as isize - 1 + shift) >= hw as isize {
                        d[e - 1 - p0] = 0.0;
                        e -= 1;
                    }
                    if e > a {
                        let s0 = (a as isize + shift) as usize;
                        d[a - p0..e - p0].copy_from_slice(&xc[s0..s0 + (e - a)]);
                    }
                    // Columns in the horizontal padding: ox < p - kx or ox >= w + p - kx.
                    if kx < p {
                        let ncol = p - kx;
                        let mut rs = qa / w * w;
                        while rs < qb {
                            for q in rs.max(qa)..(rs + ncol).min(qb) {
                                d[q - p0] = 0.0;
                            }
                            rs += w;
                        }
                    } else if kx > p {
                        let ncol = (kx - p).min(w);
                        let mut rs = qa / w * w;
                        while rs < qb {
                            for q in (rs + w - ncol).max(qa)..(rs + w).min(qb) {
                                d[q - p0] = 0.0;
                            }
                            rs += w;
                        }
                    }
                }
            }
        }
    }

    /// Adds the column gradients of the output pixels `[p0, p1)` (`cols`, `K` rows of `p1 - p0`)
    /// into `dx: [Cin, H, W]`.
    fn col2im_range(&self, cols: &[f32], p0: usize, p1: usize, dx: &mut [f32]) {
        let (w, s, p, wo) = (self.w, self.stride, self.pad, self.wo);
        let ld = p1 - p0;
        self.for_each_segment(p0, p1, |row, kx, oy, _a, _e, iy, lo, hi| {
            let Some(iy) = iy else { return };
            if hi <= lo {
                return;
            }
            let off = row * ld + oy * wo - p0;
            let sr = &cols[off + lo..off + hi];
            let dr = &mut dx[iy * w..(iy + 1) * w];
            let ix0 = lo * s + kx - p;
            if s == 1 {
                for (d, &v) in dr[ix0..ix0 + (hi - lo)].iter_mut().zip(sr) {
                    *d += v;
                }
            } else {
                for (j, &v) in sr.iter().enumerate() {
                    dr[ix0 + j * s] += v;
                }
            }
        });
    }
}

// ---------------------------------------------------------------------------------------------
// GEMM, scratch, tiles

/// A raw pointer that tiles running on several threads write through (disjoint regions).
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used for writes to disjoint regions, one tile each (see the callers).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// (A method, so closures capture the whole `Send` wrapper, not the raw field.)
    fn get(self) -> *mut f32 {
        self.0
    }
}

thread_local! {
    /// Per-thread im2col scratch, kept between calls (no fresh memory from the OS per conv).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on `len` floats of this thread's scratch (contents unspecified).
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    // Taken out while in use, so a re-entrant call (rayon work stealing) gets its own buffer.
    let mut buf = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    if buf.len() < len {
        buf = vec![0f32; len];
    }
    let r = f(&mut buf[..len]);
    SCRATCH.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < buf.len() {
            *s = buf;
        }
    });
    r
}

/// im2col scratch budget of one tile (the column block `K x columns`, f32).
const TILE_BYTES: usize = 4 << 20;

/// Output pixels `[p0, p1)` of samples `b0 .. b0 + nb` (several samples only as whole images).
#[derive(Debug, Clone, Copy)]
struct Tile {
    b0: usize,
    nb: usize,
    p0: usize,
    p1: usize,
}

impl Tile {
    fn np(&self) -> usize {
        self.p1 - self.p0
    }

    fn cols(&self) -> usize {
        self.nb * self.np()
    }
}

/// `0..n` cut into `parts` contiguous ranges `[j n / parts, (j + 1) n / parts)` (sizes differ
/// by at most one).
fn even_split(n: usize, parts: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..parts).map(move |j| (j * n / parts, (j + 1) * n / parts))
}

/// Cuts the `b * pout` output columns into tiles of at most [`TILE_BYTES`] of `k`-row im2col,
/// and into at least `nt` tiles when there are that many columns; the tile count is a multiple of
/// `nt` where possible and the tiles are as even as whole samples (pixel ranges) allow, so that
/// `nt` threads (or contiguous groups of tiles) get equal work. Without `whole`, a tile never
/// spans several samples.
fn plan_tiles(b: usize, pout: usize, k: usize, nt: usize, whole: bool) -> Vec<Tile> {
    if b == 0 || pout == 0 {
        return Vec::new();
    }
    let nt = nt.max(1);
    let cap = (TILE_BYTES / (4 * k.max(1))).max(32);
    let t = cap.min((b * pout).div_ceil(nt)).max(1);
    if whole && pout <= t {
        let g = (t / pout).max(1);
        let n = (b.div_ceil(g).div_ceil(nt) * nt).min(b);
        even_split(b, n)
            .map(|(b0, b1)| Tile {
                b0,
                nb: b1 - b0,
                p0: 0,
                p1: pout,
            })
            .collect()
    } else {
        let mut c = pout.div_ceil(t);
        // Round the number of tiles up to a multiple of `nt` (at most `nt - 1` more ranges).
        let c_even = (c..c + nt)
            .find(|&c| (b * c).is_multiple_of(nt))
            .unwrap_or(c);
        if c_even <= pout {
            c = c_even;
        }
        (0..b)
            .flat_map(|b0| even_split(pout, c).map(move |(p0, p1)| Tile { b0, nb: 1, p0, p1 }))
            .collect()
    }
}

/// Whether tiles may hold several whole samples: only for small images (one GEMM over several
/// samples, at the price of a copy of its output), never for 1x1 convs (which read the input in
/// place per sample).
fn batch_tiles(g: &ConvGeom) -> bool {
    !g.is_pointwise() && g.pout() < BATCH_TILE_PIXELS
}

/// Images with fewer output pixels than this share tiles (GEMMs) between samples.
const BATCH_TILE_PIXELS: usize = 400;

#[derive(Clone, Copy)]
enum Bias<'a> {
    None,
    /// `[Cout]`
    Channel(&'a [f32]),
    /// `[B, Cout]`
    Sample(&'a [f32]),
}

impl Bias<'_> {
    fn get(&self, bi: usize, co: usize, cout: usize) -> f32 {
        match self {
            Bias::None => 0.0,
            Bias::Channel(b) => b[co],
            Bias::Sample(b) => b[bi * cout + co],
        }
    }
}

/// Fills `cols` (`K x t.cols()`) with the im2col of tile `t`, or returns the input itself for a
/// single-sample pointwise tile: (pointer to column 0 of row 0, row stride).
fn tile_columns(g: &ConvGeom, x: &[f32], t: &Tile, cols: &mut [f32]) -> (*const f32, usize) {
    let xlen = g.xlen();
    if g.is_pointwise() && t.nb == 1 {
        return (x[t.b0 * xlen + t.p0..].as_ptr(), g.pout());
    }
    let n = t.cols();
    for j in 0..t.nb {
        let xb = &x[(t.b0 + j) * xlen..(t.b0 + j + 1) * xlen];
        g.im2col_range(xb, t.p0, t.p1, cols, n, j * t.np());
    }
    (cols.as_ptr(), n)
}

fn col_scratch_len(g: &ConvGeom, t: &Tile) -> usize {
    if g.is_pointwise() && t.nb == 1 {
        0
    } else {
        g.k() * t.cols()
    }
}

/// The GEMM of one forward tile: pixels of tile `t` of `out[B, Cout, Ho, Wo]` = `w @ cols + bias`,
/// `cols` (`K` rows of `t.cols()`, row stride `ld`) from [`tile_columns`]; `tmp` holds
/// `cout * t.cols()` floats when the tile has several samples.
///
/// # Safety
/// `out` points at `B * cout * pout` floats of which tile `t` owns its pixels (no other thread
/// writes them); `rhs` spans `K` rows of `t.cols()` at stride `ld`.
#[allow(clippy::too_many_arguments)]
unsafe fn forward_tile(
    g: &ConvGeom,
    cout: usize,
    w: &[f32],
    bias: Bias,
    t: &Tile,
    (rhs, ld): (*const f32, usize),
    tmp: &mut [f32],
    out: SendPtr,
) {
    let (k, pout) = (g.k(), g.pout());
    let olen = cout * pout;
    let n = t.cols();
    if t.nb == 1 {
        let dst = out.get().add(t.b0 * olen + t.p0);
        let acc = !matches!(bias, Bias::None);
        if acc {
            for co in 0..cout {
                std::slice::from_raw_parts_mut(dst.add(co * pout), n)
                    .fill(bias.get(t.b0, co, cout));
            }
        }
        sgemm(
            (cout, n, k),
            dst,
            (pout, 1),
            acc,
            w.as_ptr(),
            (k, 1),
            rhs,
            (ld, 1),
            Parallelism::None,
        );
    } else {
        sgemm(
            (cout, n, k),
            tmp.as_mut_ptr(),
            (n, 1),
            false,
            w.as_ptr(),
            (k, 1),
            rhs,
            (ld, 1),
            Parallelism::None,
        );
        for j in 0..t.nb {
            let bi = t.b0 + j;
            for co in 0..cout {
                let v = bias.get(bi, co, cout);
                let src = &tmp[co * n + j * pout..co * n + (j + 1) * pout];
                let dst =
                    std::slice::from_raw_parts_mut(out.get().add(bi * olen + co * pout), pout);
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = s + v;
                }
            }
        }
    }
}

/// `out[B, Cout, Ho, Wo] = conv(x, w) + bias`, tiled and multi-threaded.
fn conv_forward(
    g: &ConvGeom,
    b: usize,
    cout: usize,
    x: &[f32],
    w: &[f32],
    bias: Bias,
    out: &mut [f32],
) {
    let (k, pout, xlen) = (g.k(), g.pout(), g.xlen());
    assert_eq!(x.len(), b * xlen);
    assert_eq!(w.len(), cout * k);
    assert_eq!(out.len(), b * cout * pout);
    if winograd_enabled() && winograd::applies(g, cout) {
        return winograd::conv3x3(g, b, cout, x, w, bias, out);
    }
    let tiles = plan_tiles(b, pout, k, threads(), batch_tiles(g));
    let optr = SendPtr(out.as_mut_ptr());
    tiles.par_iter().for_each(|t| {
        let ncol = col_scratch_len(g, t);
        let ntmp = if t.nb > 1 { cout * t.cols() } else { 0 };
        with_scratch(ncol + ntmp, |s| {
            let (cols, tmp) = s.split_at_mut(ncol);
            let rhs = tile_columns(g, x, t, cols);
            // SAFETY: tiles are disjoint sets of pixels of `out`; `rhs` from `tile_columns`.
            unsafe { forward_tile(g, cout, w, bias, t, rhs, tmp, optr) };
        })
    });
}

/// `gt[j, i] (+)= sum_q a[i, q] cols[j, q]` (`gt`: `nj x ni`, row-major) over `nq` columns: the
/// weight-gradient GEMM, oriented so that the large column block `cols` (row stride `ld`) is
/// read in place and only the small `a` (`ni` rows at stride `a_rs`) is packed.
///
/// # Safety
/// `gt` holds `nj * ni` floats written by no one else; `a` and `cols` span their rows.
#[allow(clippy::too_many_arguments)]
unsafe fn weight_grad_gemm(
    (ni, nj, nq): (usize, usize, usize),
    gt: *mut f32,
    accumulate: bool,
    a: *const f32,
    a_rs: usize,
    cols: *const f32,
    ld: usize,
) {
    sgemm(
        (ni, nj, nq),
        gt,
        (1, ni),
        accumulate,
        a,
        (a_rs, 1),
        cols,
        (1, ld),
        Parallelism::None,
    );
}

/// Splits `tiles` into at most `nt` contiguous groups (one partial sum each), runs `f(group,
/// partial)` on them in parallel and returns the partials summed in a fixed order.
fn grouped_partials<T: Sync>(
    tiles: &[T],
    len: usize,
    f: impl Fn(&[T], &mut [f32]) + Sync,
) -> Vec<f32> {
    let ng = threads().min(tiles.len()).max(1);
    let mut parts: Vec<Vec<f32>> = (0..ng)
        .into_par_iter()
        .map(|i| {
            let grp = &tiles[i * tiles.len() / ng..(i + 1) * tiles.len() / ng];
            let mut acc = vec![0f32; len];
            f(grp, &mut acc);
            acc
        })
        .collect();
    let mut dw = parts.remove(0);
    for p in parts {
        for (d, v) in dw.iter_mut().zip(p) {
            *d += v;
        }
    }
    dw
}

/// `dW[Cout, K] = sum over the batch of dY [Cout, P] @ cols^T [P, K]`.
fn conv_weight_grad(g: &ConvGeom, b: usize, cout: usize, x: &[f32], dy: &[f32]) -> Vec<f32> {
    let (k, pout) = (g.k(), g.pout());
    let olen = cout * pout;
    assert_eq!(x.len(), b * g.xlen());
    assert_eq!(dy.len(), b * olen);
    let tiles = plan_tiles(b, pout, k, threads(), batch_tiles(g));
    // gt[K, Cout] = sum cols [K, P] @ dY^T [P, Cout]: cols read in place, dY packed.
    let gt = grouped_partials(&tiles, k * cout, |grp, acc| {
        for (i, t) in grp.iter().enumerate() {
            let n = t.cols();
            let ncol = col_scratch_len(g, t);
            let ntmp = if t.nb > 1 { cout * n } else { 0 };
            with_scratch(ncol + ntmp, |s| {
                let (cols, tmp) = s.split_at_mut(ncol);
                let (rhs, ld) = tile_columns(g, x, t, cols);
                let (lhs, ldy) = if t.nb == 1 {
                    (dy[t.b0 * olen + t.p0..].as_ptr(), pout)
                } else {
                    for j in 0..t.nb {
                        let src = &dy[(t.b0 + j) * olen..(t.b0 + j + 1) * olen];
                        for co in 0..cout {
                            tmp[co * n + j * pout..co * n + (j + 1) * pout]
                                .copy_from_slice(&src[co * pout..(co + 1) * pout]);
                        }
                    }
                    (tmp.as_ptr(), n)
                };
                // SAFETY: `lhs` spans `cout` rows of `n` columns at stride `ldy` (in `dy` or
                // `tmp`), `rhs` `k` rows of `n` at stride `ld`; `acc` is `k x cout`.
                unsafe {
                    weight_grad_gemm((cout, k, n), acc.as_mut_ptr(), i > 0, lhs, ldy, rhs, ld)
                };
            });
        }
    });
    let mut dw = vec![0f32; cout * k];
    for (kk, row) in gt.chunks_exact(cout.max(1)).enumerate() {
        for (co, &v) in row.iter().enumerate() {
            dw[co * k + kk] = v;
        }
    }
    dw
}

/// The input gradient of a stride-1 convolution as a convolution: `dX = conv(dY, W')`,
/// `W'[ci, co, ky, kx] = W[co, ci, kh-1-ky, kw-1-kx]`, padding `kh-1-pad`. Returns `(W', its
/// geometry)`, or None where that form does not apply (strides, too few input channels for a
/// GEMM: one channel is a GEMV).
fn flipped_conv(g: &ConvGeom, cout: usize, w: &[f32]) -> Option<(Vec<f32>, ConvGeom)> {
    let (kh, kw) = (g.kh, g.kw);
    if !(g.stride == 1 && kh == kw && g.pad < kh && g.cin >= 8) {
        return None;
    }
    let mut wf = vec![0f32; w.len()];
    for co in 0..cout {
        for ci in 0..g.cin {
            for ky in 0..kh {
                for kx in 0..kw {
                    wf[((ci * cout + co) * kh + kh - 1 - ky) * kw + kw - 1 - kx] =
                        w[((co * g.cin + ci) * kh + ky) * kw + kx];
                }
            }
        }
    }
    let gt = ConvGeom {
        cin: cout,
        h: g.ho,
        w: g.wo,
        kh,
        kw,
        stride: 1,
        pad: kh - 1 - g.pad,
        ho: g.h,
        wo: g.w,
    };
    debug_assert_eq!(
        (gt.ho, gt.wo),
        ((g.ho + kh - 1) - 2 * g.pad, g.wo + kw - 1 - 2 * g.pad)
    );
    Some((wf, gt))
}

/// Input and weight gradients of a stride-1 convolution from ONE im2col per tile: the columns
/// `D` of `dY` in the flipped geometry (see [`flipped_conv`]) give `dX = W' @ D`, and, as
/// `D[(co, a, b), q] = dY[co, q + (a, b) - (kh-1-pad)]`, also
/// `dW[co, ci, kh-1-a, kw-1-b] = sum_q D[(co, a, b), q] X[ci, q]` over the input pixels `q`.
fn conv_backward_fused(
    g: &ConvGeom,
    b: usize,
    cout: usize,
    x: &[f32],
    dy: &[f32],
    (wf, gt): (&[f32], &ConvGeom),
    dx: &mut [f32],
) -> Vec<f32> {
    let (cin, kh, kw) = (g.cin, g.kh, g.kw);
    let (kd, hw, xlen) = (gt.k(), gt.pout(), g.xlen());
    assert_eq!(x.len(), b * xlen);
    assert_eq!(dx.len(), b * xlen);
    assert_eq!(dy.len(), b * cout * g.pout());
    let tiles = plan_tiles(b, hw, kd, threads(), batch_tiles(gt));
    let dxp = SendPtr(dx.as_mut_ptr());
    // gtw[(co, a, b), ci]
    let gtw = grouped_partials(&tiles, kd * cin, |grp, acc| {
        for (i, t) in grp.iter().enumerate() {
            let n = t.cols();
            let ncol = col_scratch_len(gt, t);
            let (ntmp, nx) = if t.nb > 1 { (cin * n, cin * n) } else { (0, 0) };
            with_scratch(ncol + ntmp + nx, |s| {
                let (cols, s) = s.split_at_mut(ncol);
                let (tmp, xs) = s.split_at_mut(ntmp);
                let (rhs, ld) = tile_columns(gt, dy, t, cols);
                // SAFETY: tiles are disjoint sets of pixels of `dx`; `rhs` from `tile_columns`.
                unsafe { forward_tile(gt, cin, wf, Bias::None, t, (rhs, ld), tmp, dxp) };
                let (a, a_rs) = if t.nb == 1 {
                    (x[t.b0 * xlen + t.p0..].as_ptr(), hw)
                } else {
                    for j in 0..t.nb {
                        let src = &x[(t.b0 + j) * xlen..(t.b0 + j + 1) * xlen];
                        for ci in 0..cin {
                            xs[ci * n + j * hw..ci * n + (j + 1) * hw]
                                .copy_from_slice(&src[ci * hw..(ci + 1) * hw]);
                        }
                    }
                    (xs.as_ptr(), n)
                };
                // SAFETY: `a` spans `cin` rows of `n` columns at stride `a_rs` (in `x` or `xs`),
                // `rhs` `kd` rows of `n` at stride `ld`; `acc` is `kd x cin`.
                unsafe {
                    weight_grad_gemm((cin, kd, n), acc.as_mut_ptr(), i > 0, a, a_rs, rhs, ld)
                };
            });
        }
    });
    let mut dw = vec![0f32; cout * cin * kh * kw];
    for co in 0..cout {
        for ky in 0..kh {
            for kx in 0..kw {
                let row = &gtw[((co * kh + kh - 1 - ky) * kw + kw - 1 - kx) * cin..][..cin];
                for (ci, &v) in row.iter().enumerate() {
                    dw[((co * cin + ci) * kh + ky) * kw + kx] = v;
                }
            }
        }
    }
    dw
}

/// `dX[B, Cin, H, W]` from `dY[B, Cout, Ho, Wo]` where [`flipped_conv`] does not apply.
fn conv_input_grad(g: &ConvGeom, b: usize, cout: usize, w: &[f32], dy: &[f32], dx: &mut [f32]) {
    let (k, pout, xlen) = (g.k(), g.pout(), g.xlen());
    // Strided: dcols [K, P] = W^T [K, Cout] @ dY [Cout, P] per pixel range, scattered (col2im)
    // into dX per sample.
    let olen = cout * pout;
    let nt = threads();
    let par = if b >= nt {
        Parallelism::None
    } else {
        Parallelism::Rayon(nt)
    };
    let cap = (TILE_BYTES / (4 * k.max(1))).max(32);
    let chunks = pout.div_ceil(cap).max(1);
    dx.par_chunks_mut(xlen.max(1))
        .enumerate()
        .for_each(|(bi, dxb)| {
            dxb.fill(0.0);
            let gb = &dy[bi * olen..(bi + 1) * olen];
            for c in 0..chunks {
                let (p0, p1) = (c * pout / chunks, (c + 1) * pout / chunks);
                let n = p1 - p0;
                with_scratch(k * n, |dcols| {
                    // SAFETY: `dcols` is `k x n`; `w` is `cout x k`; `gb` holds `cout` rows of
                    // `pout >= p0 + n`.
                    unsafe {
                        sgemm(
                            (k, n, cout),
                            dcols.as_mut_ptr(),
                            (n, 1),
                            false,
                            w.as_ptr(),
                            (1, k),
                            gb[p0..].as_ptr(),
                            (pout, 1),
                            par,
                        );
                    }
                    g.col2im_range(dcols, p0, p1, dxb);
                });
            }
        });
}

// ---------------------------------------------------------------------------------------------
// The op

/// 2-D convolution `x: [B, Cin, H, W]`, `w: [Cout, Cin, kh, kw]`, bias `[Cout]` or `[B, Cout]`.
#[derive(Debug, Clone, Copy)]
struct Conv2dOp {
    stride: usize,
    pad: usize,
}

impl Conv2dOp {
    fn geom(&self, xs: &Shape, ws: &Shape, bs: &Shape) -> Result<(usize, usize, ConvGeom, bool)> {
        let (b, cin, h, w) = xs.dims4()?;
        let (cout, wcin, kh, kw) = ws.dims4()?;
        if wcin != cin {
            bail!("conv2d: input has {cin} channels, the weight expects {wcin}")
        }
        let per_sample = match bs.dims() {
            [c] if *c == cout => false,
            [bb, c] if *bb == b && *c == cout => true,
            d => bail!("conv2d: bias must be [{cout}] or [{b}, {cout}], got {d:?}"),
        };
        let s = self.stride;
        if s == 0 || h + 2 * self.pad < kh || w + 2 * self.pad < kw {
            bail!("conv2d: invalid geometry")
        }
        let ho = (h + 2 * self.pad - kh) / s + 1;
        let wo = (w + 2 * self.pad - kw) / s + 1;
        let g = ConvGeom {
            cin,
            h,
            w,
            kh,
            kw,
            stride: s,
            pad: self.pad,
            ho,
            wo,
        };
        Ok((b, cout, g, per_sample))
    }
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "fused-conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, cout, g, per_sample) = self.geom(l1.shape(), l2.shape(), l3.shape())?;
        let x = slice(s1, l1, "conv2d x")?;
        let wt = slice(s2, l2, "conv2d weight")?;
        let bias = slice(s3, l3, "conv2d bias")?;
        let mut out = vec![0f32; b * cout * g.pout()];
        let bias = if per_sample {
            Bias::Sample(bias)
        } else {
            Bias::Channel(bias)
        };
        conv_forward(&g, b, cout, x, wt, bias, &mut out);
        Ok((CpuStorage::F32(out), Shape::from((b, cout, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, cout, g, per_sample) = self.geom(x.shape(), w.shape(), bias.shape())?;
        let pout = g.pout();
        let need_dx = x.track_op();
        let (dx, dw, dbias) = with_data(x, "conv2d x", |xd| {
            with_data(w, "conv2d weight", |wd| {
                with_data(grad_res, "conv2d grad", |gd| {
                    let mut dbias = vec![0f32; b * cout];
                    dbias
                        .par_chunks_mut(cout.max(1))
                        .zip(gd.par_chunks(cout * pout.max(1)))
                        .for_each(|(db, gb)| {
                            for (d, row) in db.iter_mut().zip(gb.chunks(pout.max(1))) {
                                *d = sum_f32(row);
                            }
                        });
                    let flipped = if need_dx {
                        flipped_conv(&g, cout, wd)
                    } else {
                        None
                    };
                    let winograd_dx = winograd_enabled() && winograd::applies_backward(&g, cout);
                    let (dw, dx) = if let (Some((wf, gt)), true) = (&flipped, winograd_dx) {
                        // dX = conv3x3(dY, W') and dW by the Winograd transforms.
                        let mut dx = vec![0f32; b * g.xlen()];
                        winograd::conv3x3(gt, b, g.cin, gd, wf, Bias::None, &mut dx);
                        (winograd::weight_grad3x3(&g, b, cout, xd, gd), Some(dx))
                    } else if let Some((wf, gt)) = flipped {
                        let mut dx = vec![0f32; b * g.xlen()];
                        let dw = conv_backward_fused(&g, b, cout, xd, gd, (&wf, &gt), &mut dx);
                        (dw, Some(dx))
                    } else if need_dx {
                        let mut dx = vec![0f32; b * g.xlen()];
                        conv_input_grad(&g, b, cout, wd, gd, &mut dx);
                        (conv_weight_grad(&g, b, cout, xd, gd), Some(dx))
                    } else {
                        let dw = if winograd_enabled() && winograd::applies_backward(&g, cout) {
                            winograd::weight_grad3x3(&g, b, cout, xd, gd)
                        } else {
                            conv_weight_grad(&g, b, cout, xd, gd)
                        };
                        (dw, None)
                    };
                    Ok((dx, dw, dbias))
                })
            })
        })?;
        let dev = x.device();
        let db = if per_sample {
            Tensor::from_vec(dbias, (b, cout), dev)?
        } else {
            let mut s = vec![0f32; cout];
            for row in dbias.chunks(cout.max(1)) {
                for (a, &v) in s.iter_mut().zip(row) {
                    *a += v;
                }
            }
            Tensor::from_vec(s, cout, dev)?
        };
        let dx = match dx {
            Some(dx) => Some(Tensor::from_vec(dx, x.shape(), dev)?),
            None => None,
        };
        Ok((dx, Some(Tensor::from_vec(dw, w.shape(), dev)?), Some(db)))
    }
}

/// Convolution of `x: [B, Cin, H, W]` with `weight: [Cout, Cin, kh, kw]` (zero padding `pad`,
/// `stride`), plus `bias` of shape `[Cout]` or per sample `[B, Cout]`. f32 CPU tensors.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    stride: usize,
    pad: usize,
) -> Result<Tensor> {
    x.contiguous()?.apply_op3(
        &weight.contiguous()?,
        &bias.contiguous()?,
        Conv2dOp { stride, pad },
    )
}
