//! The fused CPU score kernel for full covariances: one GEMM per block of rows against the
//! concatenated precisions, then responsibilities and the score while the block is in cache.

use candle_core::{DType, Device, Tensor};

use super::{GaussianMixture, Smoothed};
use crate::Result;

impl GaussianMixture {
    /// Fused CPU kernel for full covariances (no autograd). Rows are processed in blocks of 128 on
    /// the rayon pool: per block one GEMM `Y = X_blk [P_1 .. P_K]` (AVX-512/AVX2 kernels of the
    /// `gemm` crate, single-threaded inside the block), then per row `G_k = Y_k - P_k mu_k`, the
    /// quadratic forms, responsibilities and `-sum_k r_k G_k`, all while the block is in cache.
    /// Same maths as the generic path (`components` + `score_from`), which stays the reference and
    /// the autograd/GPU path (`fused_score_matches_generic` tests the two agree).
    pub(super) fn score_full_cpu(&self, x: &Tensor, sm: &Smoothed) -> Result<Option<Tensor>> {
        use candle_core::Storage;
        use rayon::prelude::*;
        let Some((pcat, pmu, lc)) = &sm.host else {
            return Ok(None);
        };
        if !x.device().is_cpu() || x.track_op() || x.dtype() != DType::F64 || x.rank() != 2 {
            return Ok(None);
        }
        let (b, d) = (x.dims()[0], self.d);
        let k = self.k();
        let kd = k * d;
        let x = x.contiguous()?;
        let mu_v: Vec<f64> = self.means.iter().flat_map(|m| m.iter().copied()).collect();
        let (xs, xl) = x.storage_and_layout();
        let xv = match &*xs {
            Storage::Cpu(a) => &a.as_slice::<f64>()?[xl.start_offset()..xl.start_offset() + b * d],
            _ => return Ok(None),
        };
        const BLOCK: usize = 128;
        let mut out = vec![0.0f64; b * d];
        out.par_chunks_mut(BLOCK * d)
            .enumerate()
            .for_each(|(bi, oblk)| {
                let r0 = bi * BLOCK;
                let nr = oblk.len() / d;
                let xb = &xv[r0 * d..(r0 + nr) * d];
                let mut y = vec![0.0f64; nr * kd];
                // SAFETY: y is [nr, kd], xb is [nr, d], pcat is [d, kd], all row-major and in bounds.
                unsafe {
                    gemm::gemm(
                        nr,
                        kd,
                        d,
                        y.as_mut_ptr(),
                        1,
                        kd as isize,
                        false,
                        xb.as_ptr(),
                        1,
                        d as isize,
                        pcat.as_ptr(),
                        1,
                        kd as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
                let mut logits = vec![0.0f64; k];
                for row in 0..nr {
                    let xr = &xb[row * d..(row + 1) * d];
                    let yr = &mut y[row * kd..(row + 1) * kd];
                    for c in 0..k {
                        let (g, m, pm) = (
                            &mut yr[c * d..(c + 1) * d],
                            &mu_v[c * d..(c + 1) * d],
                            &pmu[c * d..(c + 1) * d],
                        );
                        let mut q = 0.0;
                        for j in 0..d {
                            g[j] -= pm[j];
                            q += (xr[j] - m[j]) * g[j];
                        }
                        logits[c] = lc[c] - 0.5 * q;
                    }
                    let mx = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let mut tot = 0.0;
                    for l in logits.iter_mut() {
                        *l = (*l - mx).exp();
                        tot += *l;
                    }
                    let o = &mut oblk[row * d..(row + 1) * d];
                    o.iter_mut().for_each(|v| *v = 0.0);
                    for c in 0..k {
                        let r = logits[c] / tot;
                        let g = &yr[c * d..(c + 1) * d];
                        for j in 0..d {
                            o[j] -= r * g[j];
                        }
                    }
                }
            });
        Ok(Some(Tensor::from_vec(out, (b, d), &Device::Cpu)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prior::Denoiser;
    use crate::rng::SampleStreams;

    /// The fused CPU kernel agrees with the generic candle-op path.
    #[test]
    fn fused_score_matches_generic() {
        let inst = crate::problem::random_gmm_instance(12, 3, 4, 0.1, 5).unwrap();
        let x = SampleStreams::range(1, 37)
            .randn(&[12], &Device::Cpu)
            .unwrap();
        for sigma in [0.0, 0.3, 2.0] {
            let a = inst.prior.score(&x, sigma).unwrap();
            let b = inst.prior.score_generic(&x, sigma).unwrap();
            let err = (a - &b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            let scale = b
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(err <= 1e-12 * scale.max(1.0), "sigma {sigma}: {err}");
        }
    }
}
