//! Image quality metrics: PSNR and SSIM for single images `[C, H, W]` stored as flat `&[f64]`
//! (row-major). `data_range` is the span of the pixel values (1 for images in [0, 1], 2 for
//! images in [-1, 1], 255 for bytes).

use crate::{Error, Result};

fn check_pair(x: &[f64], reference: &[f64], data_range: f64) -> Result<()> {
    if x.len() != reference.len() {
        return Err(Error::shape(
            "image compared with the reference",
            format!("[{}] (the reference's length)", reference.len()),
            &[x.len()],
        ));
    }
    if x.is_empty() {
        return Err(Error::param("image", "empty image"));
    }
    if !(data_range.is_finite() && data_range > 0.0) {
        return Err(Error::param(
            "data_range",
            format!("must be positive and finite, got {data_range}"),
        ));
    }
    if x.iter().chain(reference).any(|v| !v.is_finite()) {
        return Err(Error::NonFinite {
            what: "image or reference".into(),
        });
    }
    Ok(())
}

/// Peak signal-to-noise ratio in dB: `10 log10(data_range^2 / MSE)`, MSE over all entries;
/// `+inf` for identical images.
pub fn psnr(x: &[f64], reference: &[f64], data_range: f64) -> Result<f64> {
    check_pair(x, reference, data_range)?;
    let mse = x
        .iter()
        .zip(reference)
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f64>()
        / x.len() as f64;
    Ok(if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (data_range * data_range / mse).log10()
    })
}

/// Window radius of SSIM's Gaussian (scikit-image: `int(3.5 * 1.5 + 0.5)`, an 11 x 11 window).
pub const SSIM_RADIUS: usize = 5;
/// Standard deviation of SSIM's Gaussian window, in pixels.
pub const SSIM_SIGMA: f64 = 1.5;

/// Structural similarity (Wang et al. 2004, IEEE TIP 13(4), eq. 13) of `x` against
/// `reference`, both `[C, H, W]`, with an 11 x 11 Gaussian window (sigma 1.5, normalised),
/// `K1 = 0.01`, `K2 = 0.03`, `C1 = (K1 L)^2`, `C2 = (K2 L)^2` with `L = data_range`, and
/// population (not sample) covariances. The SSIM map is averaged over the valid pixels (those
/// at least 5 pixels from every border, so no window leaves the image: no padding) and then over
/// channels. This equals scikit-image's
/// `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
/// data_range=L, channel_axis=0)`: its reflect padding only reaches pixels it crops away.
/// H and W must be at least 11.
pub fn ssim(x: &[f64], reference: &[f64], shape: [usize; 3], data_range: f64) -> Result<f64> {
    check_pair(x, reference, data_range)?;
    let [c, h, w] = shape;
    if c * h * w != x.len() {
        return Err(Error::shape(
            "image for SSIM",
            format!("{shape:?} ({} entries)", c * h * w),
            &[x.len()],
        ));
    }
    let win = 2 * SSIM_RADIUS + 1;
    if h < win || w < win {
        return Err(Error::param(
            "shape",
            format!("SSIM needs images of at least {win} x {win}, got {h} x {w}"),
        ));
    }
    let g: Vec<f64> = {
        let v: Vec<f64> = (0..win)
            .map(|t| {
                let d = t as f64 - SSIM_RADIUS as f64;
                (-0.5 * d * d / (SSIM_SIGMA * SSIM_SIGMA)).exp()
            })
            .collect();
        let s: f64 = v.iter().sum();
        v.into_iter().map(|t| t / s).collect()
    };
    let c1 = (0.01 * data_range).powi(2);
    let c2 = (0.03 * data_range).powi(2);
    let (ho, wo) = (h - win + 1, w - win + 1);
    // Valid separable Gaussian filter of an H x W plane: [ho, wo].
    let filter = |plane: &[f64]| -> Vec<f64> {
        let mut rows = vec![0.0; h * wo];
        for i in 0..h {
            for j in 0..wo {
                rows[i * wo + j] = (0..win).map(|t| g[t] * plane[i * w + j + t]).sum();
            }
        }
        let mut out = vec![0.0; ho * wo];
        for i in 0..ho {
            for j in 0..wo {
                out[i * wo + j] = (0..win).map(|t| g[t] * rows[(i + t) * wo + j]).sum();
            }
        }
        out
    };
    let hw = h * w;
    let mut total = 0.0;
    for ch in 0..c {
        let a = &x[ch * hw..(ch + 1) * hw];
        let b = &reference[ch * hw..(ch + 1) * hw];
        let prod = |f: &dyn Fn(f64, f64) -> f64| -> Vec<f64> {
            a.iter().zip(b).map(|(&u, &v)| f(u, v)).collect()
        };
        let ux = filter(a);
        let uy = filter(b);
        let uxx = filter(&prod(&|u, _| u * u));
        let uyy = filter(&prod(&|_, v| v * v));
        let uxy = filter(&prod(&|u, v| u * v));
        let mut s = 0.0;
        for p in 0..ho * wo {
            let (mx, my) = (ux[p], uy[p]);
            let vx = uxx[p] - mx * mx;
            let vy = uyy[p] - my * my;
            let vxy = uxy[p] - mx * my;
            s += ((2.0 * mx * my + c1) * (2.0 * vxy + c2))
                / ((mx * mx + my * my + c1) * (vx + vy + c2));
        }
        total += s / (ho * wo) as f64;
    }
    Ok(total / c as f64)
}

/// Reconstruction quality of `x` against the truth: PSNR, SSIM (`None` for images smaller than
/// SSIM's 11 x 11 window) and the L2 distance.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Quality {
    pub psnr: f64,
    pub ssim: Option<f64>,
    pub l2: f64,
}

/// [`Quality`] of `x` against `truth`, images of `shape` with `data_range` (2 for [-1, 1]).
pub fn quality(x: &[f64], truth: &[f64], shape: [usize; 3], data_range: f64) -> Result<Quality> {
    Ok(Quality {
        psnr: psnr(x, truth, data_range)?,
        ssim: ssim(x, truth, shape, data_range).ok(),
        l2: x
            .iter()
            .zip(truth)
            .map(|(a, b)| (a - b) * (a - b))
            .sum::<f64>()
            .sqrt(),
    })
}

/// Per-coordinate posterior mean and standard deviation (unbiased, `n - 1`) of sample rows.
pub fn mean_std(rows: &[Vec<f64>]) -> (Vec<f64>, Vec<f64>) {
    let n = rows.len();
    let d = rows.first().map_or(0, |r| r.len());
    if n == 0 {
        return (vec![], vec![]);
    }
    let mean: Vec<f64> = (0..d)
        .map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / n as f64)
        .collect();
    let std: Vec<f64> = (0..d)
        .map(|j| {
            (rows.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f64>() / (n.max(2) - 1) as f64)
                .sqrt()
        })
        .collect();
    (mean, std)
}

/// The label of each row's nearest reference (Euclidean, 1-NN): groups posterior samples of
/// images by the class they look like, with labelled held-out images as references.
pub fn nearest_labels(
    rows: &[Vec<f64>],
    refs: &[Vec<f64>],
    labels: &[usize],
) -> Result<Vec<usize>> {
    if refs.is_empty() || refs.len() != labels.len() {
        return Err(Error::param(
            "references",
            format!("{} references for {} labels", refs.len(), labels.len()),
        ));
    }
    Ok(rows
        .iter()
        .map(|r| {
            let d2 = |q: &Vec<f64>| q.iter().zip(r).map(|(a, b)| (a - b) * (a - b)).sum::<f64>();
            let (mut best, mut bd) = (0, f64::INFINITY);
            for (i, q) in refs.iter().enumerate() {
                let d = d2(q);
                if d < bd {
                    best = i;
                    bd = d;
                }
            }
            labels[best]
        })
        .collect())
}
