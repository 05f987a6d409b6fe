//! Inpainting: some pixels are missing, the observed ones are measured exactly.
//!
//! `A x` selects the observed entries of `x` (a pixel is missing in all channels at once), so
//! `y` holds the observed entries only, like [`crate::operator::Mask`]: `m = C * (observed
//! pixels)`, in increasing flat index order (channel-major: all observed pixels of channel 0,
//! then of channel 1, ...). `A A^T = I`, so `||A|| = 1` and `A^+ = A^T` (zero-fill).
//! `A^T A = diag(observed)` (0/1 per entry), the [`GramSpectrum`] used by exact-likelihood
//! integrators.

use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::check_image_shape;
use crate::operator::{check_in, check_out, diagonal_gram_fn, GramSpectrum, LinearOperator};
use crate::{Error, Result};

/// Pixel-mask inpainting on `[C, H, W]` images.
pub struct Inpaint {
    shape: [usize; 3],
    sel: Vec<usize>,
    idx: Tensor,
    /// The diagonal of `A^T A`, `[C H W]`: 1 on observed entries, 0 on missing ones.
    diag: Vec<f64>,
    label: String,
}

impl Inpaint {
    /// Pixels missing at random: exactly `round(rate_missing * H * W)` pixels, drawn uniformly
    /// without replacement from a ChaCha8 stream seeded with `seed`; `rate_missing` in [0, 1)
    /// and at least one pixel must stay observed.
    pub fn random(shape: [usize; 3], rate_missing: f64, seed: u64) -> Result<Self> {
        check_image_shape(shape)?;
        if !(0.0..1.0).contains(&rate_missing) {
            return Err(Error::param(
                "rate",
                format!("the missing fraction must be in [0, 1), got {rate_missing}"),
            ));
        }
        let hw = shape[1] * shape[2];
        let n_missing = (rate_missing * hw as f64).round() as usize;
        if n_missing >= hw {
            return Err(Error::param(
                "rate",
                format!("rate {rate_missing} leaves no observed pixel of {hw}"),
            ));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut observed = vec![true; hw];
        for p in rand::seq::index::sample(&mut rng, hw, n_missing).iter() {
            observed[p] = false;
        }
        Self::from_pixels(
            shape,
            &observed,
            format!("inpaint[{:.0}% missing]", 100.0 * rate_missing),
        )
    }

    /// A missing box: rows `top..top+height`, columns `left..left+width`, all channels. The box
    /// must be non-empty, lie inside the image and leave at least one pixel observed.
    pub fn boxed(
        shape: [usize; 3],
        top: usize,
        left: usize,
        height: usize,
        width: usize,
    ) -> Result<Self> {
        check_image_shape(shape)?;
        let [_, h, w] = shape;
        if height == 0 || width == 0 {
            return Err(Error::param(
                "height",
                format!("the box must be non-empty, got {height} x {width}"),
            ));
        }
        if top + height > h || left + width > w {
            return Err(Error::param(
                "top",
                format!(
                    "box rows {top}..{} and columns {left}..{} exceed the {h} x {w} image",
                    top + height,
                    left + width
                ),
            ));
        }
        if height * width == h * w {
            return Err(Error::param("height", "the box covers the whole image"));
        }
        let mut observed = vec![true; h * w];
        for i in top..top + height {
            for j in left..left + width {
                observed[i * w + j] = false;
            }
        }
        Self::from_pixels(
            shape,
            &observed,
            format!("box[{height}x{width} at ({top},{left})]"),
        )
    }

    /// From a per-pixel observed indicator of length `H * W` (shared by all channels).
    pub fn from_pixel_mask(shape: [usize; 3], observed: &[bool]) -> Result<Self> {
        check_image_shape(shape)?;
        if observed.len() != shape[1] * shape[2] {
            return Err(Error::shape(
                "inpainting pixel mask",
                format!("[{}] (H * W)", shape[1] * shape[2]),
                &[observed.len()],
            ));
        }
        if !observed.iter().any(|&o| o) {
            return Err(Error::param("mask", "no observed pixel"));
        }
        Self::from_pixels(shape, observed, "inpaint[mask]".into())
    }

    fn from_pixels(shape: [usize; 3], observed: &[bool], label: String) -> Result<Self> {
        let hw = shape[1] * shape[2];
        let sel: Vec<usize> = (0..shape[0])
            .flat_map(|c| {
                observed
                    .iter()
                    .enumerate()
                    .filter(|(_, &o)| o)
                    .map(move |(p, _)| c * hw + p)
            })
            .collect();
        let idx = Tensor::from_vec(
            sel.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            sel.len(),
            &Device::Cpu,
        )?;
        let mut diag = vec![0.0; shape.iter().product()];
        for &i in &sel {
            diag[i] = 1.0;
        }
        Ok(Self {
            shape,
            sel,
            idx,
            diag,
            label,
        })
    }

    /// Per-pixel observed indicator (length `H * W`).
    pub fn observed_pixels(&self) -> Vec<bool> {
        let hw = self.shape[1] * self.shape[2];
        let mut o = vec![false; hw];
        for &i in self.sel.iter().take_while(|&&i| i < hw) {
            o[i] = true;
        }
        o
    }
}

impl GramSpectrum for Inpaint {
    /// `A^T A = diag(observed)`: `f(1) x` on observed entries, `f(0) x` on missing ones.
    fn gram_fn(&self, x: &Tensor, f: &dyn Fn(f64) -> f64) -> Result<Tensor> {
        check_in(self, x)?;
        diagonal_gram_fn(&x.to_dtype(DType::F64)?, &self.diag, f)
    }
    /// The diagonal itself (`C H W` values, with repetition): 1 per observed entry, 0 per
    /// missing one.
    fn eigenvalues(&self) -> Result<Vec<f64>> {
        Ok(self.diag.clone())
    }
}

impl LinearOperator for Inpaint {
    fn in_dim(&self) -> usize {
        self.shape.iter().product()
    }
    fn out_dim(&self) -> usize {
        self.sel.len()
    }
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        check_in(self, x)?;
        Ok(x.to_dtype(DType::F64)?
            .index_select(&self.idx.to_device(x.device())?, 1)?)
    }
    fn adjoint(&self, y: &Tensor) -> Result<Tensor> {
        check_out(self, y)?;
        let b = y.dims()[0];
        let z = Tensor::zeros((b, self.in_dim()), DType::F64, y.device())?;
        Ok(z.index_add(
            &self.idx.to_device(y.device())?,
            &y.to_dtype(DType::F64)?,
            1,
        )?)
    }
    fn name(&self) -> String {
        self.label.clone()
    }
    fn selection(&self) -> Option<&[usize]> {
        Some(&self.sel)
    }
    /// Zero-fill: exact, since `A A^T = I`.
    fn pseudo_inverse(&self, y: &Tensor) -> Result<Tensor> {
        self.adjoint(y)
    }
    fn image_shape(&self) -> Option<[usize; 3]> {
        Some(self.shape)
    }
    fn gram_spectrum(&self) -> Option<&dyn GramSpectrum> {
        Some(self)
    }
}
