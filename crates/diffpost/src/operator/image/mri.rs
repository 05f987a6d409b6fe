//! Cartesian MRI: undersampled centred orthonormal 2-D Fourier transform, single- or multi-coil.
//!
//! Images are real, shape `[1, H, W]`. The Fourier transform is centred and orthonormal,
//! `F x = fftshift(fft2(ifftshift(x))) / sqrt(H W)`, i.e.
//! `(F x)[u, v] = (H W)^{-1/2} sum_{p, q} x[p, q] exp(-2 pi i ((u - H/2)(p - H/2)/H + (v - W/2)(q - W/2)/W))`
//! (integer division `H/2`, `W/2`): k-space row `H/2` is the DC line, and the image centre is
//! pixel `(H/2, W/2)`. `P` keeps a set of phase-encode lines (k-space rows, all W columns).
//!
//! Single coil: `A x = P F x`; multi-coil with complex sensitivities `S_c`:
//! `A x = [P F (S_c x)]_c`. Measurements are complex, each entry two reals: `y` is the complex
//! array `[coils, kept rows, W]` (kept rows in increasing order) stored as interleaved
//! `(re, im)` pairs, so `m = 2 * coils * kept * W` and numpy's `y.view(complex128)` recovers it.
//! As docs/algorithms.md fixes for complex data, the noise on the real and on the imaginary part
//! each has standard deviation `eta`. The adjoint of this real-to-real map is
//! `A^T y = sum_c Re(conj(S_c) F^H P^T y_c)`.
//!
//! Pseudo-inverse. Single coil: `A^T A = F^H M_s F` on real images, with `M_s[k] =
//! (M[k] + M[-k]) / 2` (a real image has Hermitian-symmetric k-space), so `A^+ = A^T` only for
//! masks symmetric under `k -> -k`. The closed form used here is exact for any mask: complete
//! the zero-filled k-space Hermitian-symmetrically, `c[k] = (M[k] y[k] + M[-k] conj(y[-k])) /
//! (M[k] + M[-k])` (0 where neither is kept), and return `Re(F^H c)`. `A` is not surjective
//! (e.g. the DC entry of a real image is real), so `A A^+ y = y` holds for `y` in the range
//! of `A`. `||A|| = 1` when a self-symmetric row (the DC row `H/2`, or row 0 for even H) is kept,
//! else `1/sqrt(2)`. Multi-coil: CGLS (the trait default).
//!
//! Normal operator ([`GramSpectrum`], single coil only). For real `x`, `A^T A x = Re(F^H M F x)`
//! with `M` the 0/1 row mask on k-space; since `conj(F^H Z) = F^H Z'` with `Z'[k] =
//! conj(Z[-k])` and `F x` is Hermitian-symmetric, `A^T A = F^H diag(M_s) F` with `M_s[u] =
//! (M[u] + M[-u]) / 2` in {0, 1/2, 1}, `-u` the centred row [`reflect`]`(u, H)` (rows `H/2` and,
//! for even H, 0 are their own reflections). So `f(A^T A) x = Re(F^H diag(f(M_s)) F x)`, the
//! imaginary part being round-off as `M_s` is even. As `M_s` depends on the row only and the
//! centring shifts commute with circular filters, this is a plain 1-D circular filter along H
//! on every column (two 1-D FFTs per column). Multi-coil (any sensitivities, even one
//! coil): `A^T A = sum_c Re(conj(S_c) F^H M F S_c .)` mixes frequencies through the
//! sensitivities and has no fast eigenbasis, so [`LinearOperator::gram_spectrum`] is `None`.

use std::sync::Arc;

use candle_core::Tensor;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rustfft::num_complex::Complex64;

use super::fft2::{reflect, Fft2};
use super::{check_image_shape, map_forward, map_rows_plain, map_transpose, RowMap};
use crate::operator::{check_in, check_out, GramSpectrum, LinearOperator};
use crate::{Error, Result};

/// Cartesian-undersampled Fourier operator on real `[1, H, W]` images.
pub struct Mri {
    shape: [usize; 3],
    map: Arc<MriMap>,
    dyn_map: Arc<dyn RowMap>,
    label: String,
}

impl Mri {
    /// Single coil, a random Cartesian mask from [`Mri::cartesian_mask`].
    pub fn cartesian(
        shape: [usize; 3],
        acceleration: f64,
        center_lines: usize,
        seed: u64,
    ) -> Result<Self> {
        check_mri_shape(shape)?;
        let mask = Self::cartesian_mask(shape[1], acceleration, center_lines, seed)?;
        let mut op = Self::from_mask(shape, &mask)?;
        op.label = format!(
            "mri[R={acceleration}, {}/{} rows]",
            op.map.rows.len(),
            shape[1]
        );
        Ok(op)
    }

    /// Single coil with a user mask over the `H` k-space rows (`true` = kept; row `H/2` is DC).
    pub fn from_mask(shape: [usize; 3], row_mask: &[bool]) -> Result<Self> {
        Self::build(shape, row_mask, None)
    }

    /// Multi-coil with complex sensitivities `[coils, H, W]` given as real and imaginary parts
    /// (row-major, equal lengths, a multiple of `H W`), random Cartesian mask.
    pub fn multicoil(
        shape: [usize; 3],
        sens_re: &[f64],
        sens_im: &[f64],
        acceleration: f64,
        center_lines: usize,
        seed: u64,
    ) -> Result<Self> {
        check_mri_shape(shape)?;
        let mask = Self::cartesian_mask(shape[1], acceleration, center_lines, seed)?;
        Self::multicoil_from_mask(shape, sens_re, sens_im, &mask)
    }

    /// Multi-coil with a user row mask.
    pub fn multicoil_from_mask(
        shape: [usize; 3],
        sens_re: &[f64],
        sens_im: &[f64],
        row_mask: &[bool],
    ) -> Result<Self> {
        check_mri_shape(shape)?;
        let hw = shape[1] * shape[2];
        if sens_re.len() != sens_im.len() || sens_re.is_empty() || !sens_re.len().is_multiple_of(hw)
        {
            return Err(Error::shape(
                "coil sensitivities (real and imaginary parts)",
                format!(
                    "two arrays [coils, {}, {}] of equal length",
                    shape[1], shape[2]
                ),
                &[sens_re.len(), sens_im.len()],
            ));
        }
        if sens_re.iter().chain(sens_im).any(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                what: "coil sensitivities".into(),
            });
        }
        let sens: Vec<Complex64> = sens_re
            .iter()
            .zip(sens_im)
            .map(|(&re, &im)| Complex64::new(re, im))
            .collect();
        Self::build(shape, row_mask, Some(sens))
    }

    fn build(shape: [usize; 3], row_mask: &[bool], sens: Option<Vec<Complex64>>) -> Result<Self> {
        check_mri_shape(shape)?;
        let [_, h, w] = shape;
        if row_mask.len() != h {
            return Err(Error::shape(
                "MRI row mask",
                format!("[{h}] (one entry per k-space row)"),
                &[row_mask.len()],
            ));
        }
        let rows: Vec<usize> = (0..h).filter(|&i| row_mask[i]).collect();
        if rows.is_empty() {
            return Err(Error::param("mask", "no k-space row kept"));
        }
        let coils = sens.as_ref().map_or(1, |s| s.len() / (h * w));
        let map = Arc::new(MriMap {
            h,
            w,
            coils,
            row_mask: row_mask.to_vec(),
            rows,
            sens,
            fft: Fft2::new(h, w),
        });
        let label = if coils > 1 || map.sens.is_some() {
            format!("mri[{coils} coils, {}/{h} rows]", map.rows.len())
        } else {
            format!("mri[{}/{h} rows]", map.rows.len())
        };
        Ok(Self {
            shape,
            dyn_map: map.clone(),
            map,
            label,
        })
    }

    /// A Cartesian row mask of length `h`: the `center_lines` rows around the DC row `h/2`
    /// (rows `h/2 - center_lines/2 ..`), plus rows drawn uniformly without replacement (ChaCha8
    /// seeded with `seed`) from the others, `max(round(h / acceleration), center_lines, 1)` rows
    /// in all. `acceleration >= 1`, `center_lines <= h`.
    pub fn cartesian_mask(
        h: usize,
        acceleration: f64,
        center_lines: usize,
        seed: u64,
    ) -> Result<Vec<bool>> {
        if !(acceleration.is_finite() && acceleration >= 1.0) {
            return Err(Error::param(
                "acceleration",
                format!("must be finite and at least 1, got {acceleration}"),
            ));
        }
        if center_lines > h {
            return Err(Error::param(
                "center_lines",
                format!("{center_lines} exceeds the {h} k-space rows"),
            ));
        }
        let total = ((h as f64 / acceleration).round() as usize)
            .max(center_lines)
            .max(1)
            .min(h);
        let mut mask = vec![false; h];
        let start = h / 2 - center_lines / 2;
        for m in mask.iter_mut().skip(start).take(center_lines) {
            *m = true;
        }
        let rest: Vec<usize> = (0..h).filter(|&i| !mask[i]).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for t in rand::seq::index::sample(&mut rng, rest.len(), total - center_lines).iter() {
            mask[rest[t]] = true;
        }
        Ok(mask)
    }

    /// The row mask (length H, `true` = kept).
    pub fn row_mask(&self) -> &[bool] {
        &self.map.row_mask
    }

    /// The kept rows, increasing (the order of `y`).
    pub fn kept_rows(&self) -> &[usize] {
        &self.map.rows
    }

    /// Number of coils (1 for single coil).
    pub fn coils(&self) -> usize {
        self.map.coils
    }
}

fn check_mri_shape(shape: [usize; 3]) -> Result<()> {
    check_image_shape(shape)?;
    if shape[0] != 1 {
        return Err(Error::param(
            "shape",
            format!("MRI images have one channel, [1, H, W], got {shape:?}"),
        ));
    }
    Ok(())
}

impl Mri {
    /// `M_s[u] = (M[u] + M[-u]) / 2` per k-space row (centred index): the eigenvalue of
    /// `A^T A` on the W Fourier modes of row `u` (single coil).
    fn symmetrised_mask(&self) -> Vec<f64> {
        let h = self.map.h;
        let m = &self.map.row_mask;
        (0..h)
            .map(|u| (m[u] as u8 + m[reflect(u, h)] as u8) as f64 / 2.0)
            .collect()
    }
}

impl GramSpectrum for Mri {
    /// `Re(F^H diag(f(M_s)) F x)` (single coil; rows in parallel on the CPU). Errors for
    /// multi-coil operators, which have no such decomposition.
    fn gram_fn(&self, x: &Tensor, f: &dyn Fn(f64) -> f64) -> Result<Tensor> {
        check_in(self, x)?;
        if self.map.sens.is_some() {
            return Err(Error::param(
                "operator",
                "multi-coil MRI has no fast eigen-decomposition of A^T A",
            ));
        }
        // The multiplier depends on the k-space row only, so f(A^T A) acts along H alone, and
        // the centring shifts (cyclic) commute with that circular filter: plain frequency k is
        // centred row (k + H/2) mod H.
        let h = self.map.h;
        let ms = self.symmetrised_mask();
        let g: Vec<f64> = (0..h).map(|k| f(ms[(k + h / 2) % h])).collect();
        let map = &self.map;
        map_rows_plain(x, self.in_dim(), |xr, yr| {
            map.fft.filter_columns(&g, xr, yr)
        })
    }
    /// `M_s[u]` for every k-space row `u`, each W times (`H W` values, with repetition).
    fn eigenvalues(&self) -> Result<Vec<f64>> {
        if self.map.sens.is_some() {
            return Err(Error::param(
                "operator",
                "multi-coil MRI has no fast eigen-decomposition of A^T A",
            ));
        }
        let w = self.map.w;
        Ok(self
            .symmetrised_mask()
            .into_iter()
            .flat_map(|v| std::iter::repeat_n(v, w))
            .collect())
    }
}

impl LinearOperator for Mri {
    fn in_dim(&self) -> usize {
        self.map.h * self.map.w
    }
    fn out_dim(&self) -> usize {
        self.map.out_len()
    }
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        check_in(self, x)?;
        map_forward(&self.dyn_map, x)
    }
    fn adjoint(&self, y: &Tensor) -> Result<Tensor> {
        check_out(self, y)?;
        map_transpose(&self.dyn_map, y)
    }
    fn name(&self) -> String {
        self.label.clone()
    }
    /// Single coil: Hermitian completion then `Re(F^H .)` (exact, see the module doc);
    /// multi-coil: CGLS.
    fn pseudo_inverse(&self, y: &Tensor) -> Result<Tensor> {
        check_out(self, y)?;
        if self.map.sens.is_some() {
            return crate::operator::cg_least_squares(self, y, None, 0.0, 300, 1e-8);
        }
        let map = &self.map;
        map_rows_plain(y, self.in_dim(), |yr, xr| map.pinv_single(yr, xr))
    }
    fn image_shape(&self) -> Option<[usize; 3]> {
        Some(self.shape)
    }
    /// Single coil: `F^H diag(M_s) F` (see the module doc). Multi-coil: `None`, since
    /// `A^T A = sum_c Re(conj(S_c) F^H M F S_c .)` is not diagonal in any fast basis.
    fn gram_spectrum(&self) -> Option<&dyn GramSpectrum> {
        if self.map.sens.is_some() {
            None
        } else {
            Some(self)
        }
    }
}

struct MriMap {
    h: usize,
    w: usize,
    coils: usize,
    row_mask: Vec<bool>,
    rows: Vec<usize>,
    /// `[coils, H, W]`; `None` for single coil (`S = 1`).
    sens: Option<Vec<Complex64>>,
    fft: Fft2,
}

impl MriMap {
    /// Zero-filled k-space `P^T y_c` of coil `c`.
    fn zero_fill(&self, y: &[f64], c: usize, buf: &mut [Complex64]) {
        let (w, kept) = (self.w, self.rows.len());
        buf.iter_mut().for_each(|z| *z = Complex64::new(0.0, 0.0));
        for (ri, &row) in self.rows.iter().enumerate() {
            for j in 0..w {
                let e = (c * kept + ri) * w + j;
                buf[row * w + j] = Complex64::new(y[2 * e], y[2 * e + 1]);
            }
        }
    }

    fn pinv_single(&self, y: &[f64], x: &mut [f64]) {
        let (h, w) = (self.h, self.w);
        let mut v = vec![Complex64::new(0.0, 0.0); h * w];
        self.zero_fill(y, 0, &mut v);
        let mut c = vec![Complex64::new(0.0, 0.0); h * w];
        for i in 0..h {
            let ri = reflect(i, h);
            let (mi, mr) = (self.row_mask[i], self.row_mask[ri]);
            let n = mi as u8 + mr as u8;
            if n == 0 {
                continue;
            }
            for j in 0..w {
                let mut s = Complex64::new(0.0, 0.0);
                if mi {
                    s += v[i * w + j];
                }
                if mr {
                    s += v[ri * w + reflect(j, w)].conj();
                }
                c[i * w + j] = s / n as f64;
            }
        }
        self.fft.centred(&mut c, true);
        for (o, z) in x.iter_mut().zip(&c) {
            *o = z.re;
        }
    }
}

impl RowMap for MriMap {
    fn in_len(&self) -> usize {
        self.h * self.w
    }
    fn out_len(&self) -> usize {
        2 * self.coils * self.rows.len() * self.w
    }
    fn forward(&self, x: &[f64], y: &mut [f64]) {
        let (hw, w, kept) = (self.h * self.w, self.w, self.rows.len());
        let mut buf = vec![Complex64::new(0.0, 0.0); hw];
        for c in 0..self.coils {
            match &self.sens {
                Some(s) => {
                    for (p, z) in buf.iter_mut().enumerate() {
                        *z = s[c * hw + p] * x[p];
                    }
                }
                None => {
                    for (z, &v) in buf.iter_mut().zip(x) {
                        *z = Complex64::new(v, 0.0);
                    }
                }
            }
            self.fft.centred(&mut buf, false);
            for (ri, &row) in self.rows.iter().enumerate() {
                for j in 0..w {
                    let e = (c * kept + ri) * w + j;
                    let z = buf[row * w + j];
                    y[2 * e] = z.re;
                    y[2 * e + 1] = z.im;
                }
            }
        }
    }
    fn transpose(&self, y: &[f64], x: &mut [f64]) {
        let hw = self.h * self.w;
        let mut buf = vec![Complex64::new(0.0, 0.0); hw];
        x.iter_mut().for_each(|v| *v = 0.0);
        for c in 0..self.coils {
            self.zero_fill(y, c, &mut buf);
            self.fft.centred(&mut buf, true);
            match &self.sens {
                Some(s) => {
                    for (p, o) in x.iter_mut().enumerate() {
                        *o += (s[c * hw + p].conj() * buf[p]).re;
                    }
                }
                None => {
                    for (o, z) in x.iter_mut().zip(&buf) {
                        *o += z.re;
                    }
                }
            }
        }
    }
}
