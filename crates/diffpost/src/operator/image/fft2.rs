//! 2-D FFT of one `H x W` plane (row-major) with RustFFT plans built once, shared by the
//! blur and MRI operators.

use std::sync::Arc;

use rustfft::num_complex::Complex64;
use rustfft::{Fft, FftPlanner};

/// Forward and inverse plans for `H x W` planes. Immutable, `Send + Sync`.
pub(crate) struct Fft2 {
    h: usize,
    w: usize,
    fwd_w: Arc<dyn Fft<f64>>,
    fwd_h: Arc<dyn Fft<f64>>,
    inv_w: Arc<dyn Fft<f64>>,
    inv_h: Arc<dyn Fft<f64>>,
}

impl Fft2 {
    pub(crate) fn new(h: usize, w: usize) -> Self {
        let mut planner = FftPlanner::<f64>::new();
        Self {
            h,
            w,
            fwd_w: planner.plan_fft_forward(w),
            fwd_h: planner.plan_fft_forward(h),
            inv_w: planner.plan_fft_inverse(w),
            inv_h: planner.plan_fft_inverse(h),
        }
    }

    /// Unnormalised 2-D DFT in place: `X[u, v] = sum_{p, q} x[p, q] e^{-+2 pi i (u p / H + v q / W)}`
    /// (minus sign forward, plus sign inverse; no `1/(H W)` either way).
    pub(crate) fn process(&self, buf: &mut [Complex64], inverse: bool) {
        let (h, w) = (self.h, self.w);
        debug_assert_eq!(buf.len(), h * w);
        let (pw, ph) = if inverse {
            (&self.inv_w, &self.inv_h)
        } else {
            (&self.fwd_w, &self.fwd_h)
        };
        let scratch_len = pw
            .get_inplace_scratch_len()
            .max(ph.get_inplace_scratch_len());
        let mut scratch = vec![Complex64::new(0.0, 0.0); scratch_len];
        // Along W: the rows are contiguous chunks of length W.
        pw.process_with_scratch(buf, &mut scratch[..pw.get_inplace_scratch_len()]);
        // Along H: transpose, transform the (now contiguous) columns, transpose back.
        let mut t = vec![Complex64::new(0.0, 0.0); h * w];
        for i in 0..h {
            for j in 0..w {
                t[j * h + i] = buf[i * w + j];
            }
        }
        ph.process_with_scratch(&mut t, &mut scratch[..ph.get_inplace_scratch_len()]);
        for j in 0..w {
            for i in 0..h {
                buf[i * w + j] = t[j * h + i];
            }
        }
    }

    /// `y = Re(F_H^-1 diag(g) F_H x)` on every column of the real `H x W` plane `x`: a circular
    /// filter along H only (plain DFT order, `g[k]` the multiplier of frequency `k` mod H,
    /// `1/H` included), two 1-D transforms per column.
    pub(crate) fn filter_columns(&self, g: &[f64], x: &[f64], y: &mut [f64]) {
        let (h, w) = (self.h, self.w);
        debug_assert_eq!(g.len(), h);
        // Columns made contiguous: t[j * H + i] = x[i, j].
        let mut t = vec![Complex64::new(0.0, 0.0); h * w];
        for i in 0..h {
            for j in 0..w {
                t[j * h + i] = Complex64::new(x[i * w + j], 0.0);
            }
        }
        let n = self
            .fwd_h
            .get_inplace_scratch_len()
            .max(self.inv_h.get_inplace_scratch_len());
        let mut scratch = vec![Complex64::new(0.0, 0.0); n];
        let s = self.fwd_h.get_inplace_scratch_len();
        self.fwd_h.process_with_scratch(&mut t, &mut scratch[..s]);
        let scale = 1.0 / h as f64;
        for col in t.chunks_mut(h) {
            for (z, &gk) in col.iter_mut().zip(g) {
                *z *= gk * scale;
            }
        }
        let s = self.inv_h.get_inplace_scratch_len();
        self.inv_h.process_with_scratch(&mut t, &mut scratch[..s]);
        for i in 0..h {
            for j in 0..w {
                y[i * w + j] = t[j * h + i].re;
            }
        }
    }

    /// Centred orthonormal 2-D DFT in place: `fftshift(fft2(ifftshift(x))) / sqrt(H W)`
    /// forward, its adjoint `fftshift(ifft2_unnormalised(ifftshift(X))) / sqrt(H W)` inverse.
    /// Index `u` stands for frequency `u - H/2` (integer division), pixel `p` for `p - H/2`.
    pub(crate) fn centred(&self, buf: &mut [Complex64], inverse: bool) {
        let (h, w) = (self.h, self.w);
        let (sh, sw) = (h / 2, w / 2);
        // ifftshift: t[i, j] = buf[(i + H/2) % H, (j + W/2) % W].
        let mut t = vec![Complex64::new(0.0, 0.0); h * w];
        for i in 0..h {
            let si = (i + sh) % h;
            for j in 0..w {
                t[i * w + j] = buf[si * w + (j + sw) % w];
            }
        }
        self.process(&mut t, inverse);
        // fftshift and scale: buf[i, j] = t[(i - H/2) mod H, (j - W/2) mod W] / sqrt(H W).
        let scale = 1.0 / ((h * w) as f64).sqrt();
        for i in 0..h {
            let si = (i + h - sh) % h;
            for j in 0..w {
                buf[i * w + j] = t[si * w + (j + w - sw) % w] * scale;
            }
        }
    }
}

/// Index of frequency `-f` for the centred index of frequency `f` (length n):
/// `(2 (n/2) - i) mod n`.
pub(crate) fn reflect(i: usize, n: usize) -> usize {
    (2 * (n / 2) + n - i) % n
}
