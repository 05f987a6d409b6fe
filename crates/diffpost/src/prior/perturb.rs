//! Score perturbations for robustness studies: an error field `e(x)` added to the smoothed score
//! `s_sigma(x)` at every `sigma` (the same field at every level; the denoiser is derived from the
//! perturbed score by Tweedie, `D = x + sigma^2 (s_sigma + e)`).
//!
//! The paper's point (Xun, Gupta, Price 2025, Thm 1.1) is that Algorithm 1 needs only an
//! `L^4`-accurate score, where plain Langevin needs MGF-accurate ones. The `shell-trap` field has a
//! tiny `L^4` norm under the prior yet captures a Langevin chain that wanders through its band.

use candle_core::{Tensor, D};
use serde::Serialize;

use super::{Denoiser, GaussianMixture};
use crate::rng::SampleStreams;
use crate::{Error, Result};

/// Which error field to add.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Perturbation {
    /// `e_j(x) = a sin(f (x_j - c_j)/sqrt(v) + phi_j)`: bounded and smooth; `a` is set so that the
    /// field's RMS size is `rel` times the prior score's RMS size (`E|e|^2 = rel^2 E|s|^2`,
    /// phases averaged). Phases `phi_j` come from `seed`.
    Smooth { rel: f64, freq: f64, seed: u64 },
    /// `e(x) = -kappa b(r) (r - r0) (x - c)`, `r = |x - c|^2 / (d v)`,
    /// `b(r) = S((r - r_lo)/w) S((r_hi - r)/w)`, `S(t) = 6t^5 - 15t^4 + 10t^3` on `t` clamped to
    /// [0, 1]; `c` and `v = tr(Cov)/d` are the unsmoothed prior's total mean and covariance.
    ShellTrap {
        kappa: f64,
        r_lo: f64,
        r_hi: f64,
        r0: f64,
        w: f64,
    },
}

impl Perturbation {
    /// The shell trap with defaults `r0 = (r_lo + r_hi)/2`, `w = 0.02` when `None`.
    pub fn shell_trap(
        kappa: f64,
        r_lo: f64,
        r_hi: f64,
        r0: Option<f64>,
        w: Option<f64>,
    ) -> Result<Self> {
        let r0 = r0.unwrap_or(0.5 * (r_lo + r_hi));
        let w = w.unwrap_or(0.02);
        if !(r_lo < r_hi) || r_lo < 0.0 {
            return Err(Error::param(
                "perturb.r_lo/r_hi",
                format!("need 0 <= r_lo < r_hi, got {r_lo}, {r_hi}"),
            ));
        }
        if !(w > 0.0) || !kappa.is_finite() || !r0.is_finite() {
            return Err(Error::param(
                "perturb.w/kappa/r0",
                "w must be > 0, kappa and r0 finite",
            ));
        }
        Ok(Perturbation::ShellTrap {
            kappa,
            r_lo,
            r_hi,
            r0,
            w,
        })
    }
}

/// Smootherstep `S(t) = 6t^5 - 15t^4 + 10t^3`, `t` clamped to [0, 1].
pub fn smootherstep(t: f64) -> f64 {
    let t = t.clamp(0.0, 1.0);
    t * t * t * (t * (6.0 * t - 15.0) + 10.0)
}

fn smootherstep_t(t: &Tensor) -> Result<Tensor> {
    let t = t.clamp(0.0, 1.0)?;
    let inner = ((&t * 6.0)? - 15.0)?;
    let inner = ((&t * inner)? + 10.0)?;
    Ok((t.powf(3.0)? * inner)?)
}

/// A prior whose score carries an added error field.
pub struct Perturbed {
    inner: Box<dyn Denoiser>,
    kind: Perturbation,
    center: Tensor,
    /// `v = tr(Cov)/d` of the unsmoothed prior.
    v: f64,
    d: usize,
    /// Smooth field: amplitude and phases `[d]`.
    amp: f64,
    phases: Option<Tensor>,
}

/// `L2`/`L4` sizes of the error field and of the true score under the prior.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorNorms {
    /// `(E|e(x)|^2)^(1/2)` under the prior.
    pub error_l2: f64,
    /// `(E|e(x)|^4)^(1/4)` under the prior.
    pub error_l4: f64,
    /// `(E|s(x)|^2)^(1/2)` of the unperturbed score.
    pub score_l2: f64,
    /// `(E|s(x)|^4)^(1/4)`.
    pub score_l4: f64,
    /// "quadrature (exact, chi-square law of r)" or "monte-carlo (n = ...)".
    pub method: String,
}

impl Perturbed {
    /// Wraps `inner` (usually `gmm` itself, boxed) with the field; `gmm` supplies `c`, `v`, `E|s|^2`.
    pub fn new(
        inner: Box<dyn Denoiser>,
        gmm: &GaussianMixture,
        kind: Perturbation,
    ) -> Result<Self> {
        let d = gmm.dim();
        let c: Vec<f64> = gmm.mean().iter().copied().collect();
        let v = gmm.covariance_trace() / d as f64;
        let center = Tensor::from_vec(c, (1, d), &candle_core::Device::Cpu)?;
        let (amp, phases) = match &kind {
            Perturbation::Smooth { rel, freq, seed } => {
                if !(*rel >= 0.0) || !freq.is_finite() {
                    return Err(Error::param("perturb.rel", "must be >= 0"));
                }
                let mut s = SampleStreams::new(*seed, [u64::MAX]);
                let ph: Vec<f64> = s
                    .uniform_vec_n(d)
                    .into_iter()
                    .map(|u| 2.0 * std::f64::consts::PI * u)
                    .collect();
                let score_l2 = mc_norms(gmm, None, 4000)?.score_l2;
                // E sin^2 = 1/2 on average over phases.
                let amp = rel * score_l2 / (0.5 * d as f64).sqrt();
                (
                    amp,
                    Some(Tensor::from_vec(ph, (1, d), &candle_core::Device::Cpu)?),
                )
            }
            Perturbation::ShellTrap { .. } => (0.0, None),
        };
        Ok(Self {
            inner,
            kind,
            center,
            v,
            d,
            amp,
            phases,
        })
    }

    /// The error field `e(x)` for `x: [B, d]`.
    pub fn field(&self, x: &Tensor) -> Result<Tensor> {
        let dev = x.device();
        let xc = x.broadcast_sub(&self.center.to_device(dev)?)?;
        match &self.kind {
            Perturbation::ShellTrap {
                kappa,
                r_lo,
                r_hi,
                r0,
                w,
            } => {
                let r = (xc.sqr()?.sum_keepdim(D::Minus1)? / (self.d as f64 * self.v))?;
                let b1 = smootherstep_t(&((&r - *r_lo)? / *w)?)?;
                let b2 = smootherstep_t(&((r.affine(-1.0, *r_hi))? / *w)?)?;
                let coef = ((b1 * b2)? * (r - *r0)?)?;
                Ok((xc.broadcast_mul(&coef)? * (-kappa))?)
            }
            Perturbation::Smooth { freq, .. } => {
                let ph = self
                    .phases
                    .as_ref()
                    .expect("smooth field has phases")
                    .to_device(dev)?;
                Ok(((xc * (freq / self.v.sqrt()))?.broadcast_add(&ph)?.sin()? * self.amp)?)
            }
        }
    }

    /// Sizes of the field and of the score under the (unsmoothed) prior `gmm`: exactly by 1-D
    /// quadrature over the chi-square law of `r` for a shell trap on an isotropic Gaussian prior
    /// (Monte Carlo would see nothing: the band's prior mass can be ~1e-19); by Monte Carlo with
    /// `n_mc` prior samples otherwise (the `method` field says which).
    pub fn error_norms(&self, gmm: &GaussianMixture, n_mc: usize) -> Result<ErrorNorms> {
        let iso_gauss = gmm.k() == 1 && gmm.cov_kind() == super::gmm::CovKind::Isotropic;
        if let (
            true,
            Perturbation::ShellTrap {
                kappa,
                r_lo,
                r_hi,
                r0,
                w,
            },
        ) = (iso_gauss, &self.kind)
        {
            let d = self.d as f64;
            let v = self.v;
            // |x - c|^2 = v u, u ~ chi^2_d, r = u / d. |e|^2 = kappa^2 b^2 (r - r0)^2 v u.
            let f = |u: f64| {
                let r = u / d;
                let b = smootherstep((r - r_lo) / w) * smootherstep((r_hi - r) / w);
                kappa * kappa * b * b * (r - r0) * (r - r0) * v * u
            };
            let lo = d * r_lo;
            let hi = d * r_hi;
            let n = 20_000usize;
            let hstep = (hi - lo) / n as f64;
            let (mut e2, mut e4) = (0.0, 0.0);
            for i in 0..=n {
                let u = lo + i as f64 * hstep;
                let wgt = if i == 0 || i == n {
                    1.0
                } else if i % 2 == 1 {
                    4.0
                } else {
                    2.0
                };
                let p = chi2_logpdf(u, d).exp();
                let e = f(u);
                e2 += wgt * e * p;
                e4 += wgt * e * e * p;
            }
            e2 *= hstep / 3.0;
            e4 *= hstep / 3.0;
            return Ok(ErrorNorms {
                error_l2: e2.sqrt(),
                error_l4: e4.powf(0.25),
                score_l2: (d / v).sqrt(),
                score_l4: ((d * d + 2.0 * d) / (v * v)).powf(0.25),
                method: "quadrature (exact, chi-square law of r)".into(),
            });
        }
        mc_norms(gmm, Some(self), n_mc)
    }
}

fn mc_norms(gmm: &GaussianMixture, p: Option<&Perturbed>, n: usize) -> Result<ErrorNorms> {
    use super::ExactSample;
    let mut s = SampleStreams::new(0x5eed, 0..n as u64);
    let x = gmm.sample_exact(&mut s)?;
    let sc = gmm.score(&x, gmm.sigma_range().0)?;
    let moments = |t: &Tensor| -> Result<(f64, f64)> {
        let n2 = t.sqr()?.sum(D::Minus1)?;
        let m2 = n2.mean_all()?.to_scalar::<f64>()?;
        let m4 = n2.sqr()?.mean_all()?.to_scalar::<f64>()?;
        Ok((m2.sqrt(), m4.powf(0.25)))
    };
    let (s2, s4) = moments(&sc)?;
    let (e2, e4) = match p {
        Some(p) => moments(&p.field(&x)?)?,
        None => (0.0, 0.0),
    };
    Ok(ErrorNorms {
        error_l2: e2,
        error_l4: e4,
        score_l2: s2,
        score_l4: s4,
        method: format!("monte-carlo (n = {n})"),
    })
}

/// log-density of the chi-square law with `k` degrees of freedom.
fn chi2_logpdf(u: f64, k: f64) -> f64 {
    if u <= 0.0 {
        return f64::NEG_INFINITY;
    }
    (0.5 * k - 1.0) * u.ln() - 0.5 * u - 0.5 * k * std::f64::consts::LN_2 - ln_gamma(0.5 * k)
}

/// `ln Gamma(x)` for x > 0 (Lanczos, g = 7, n = 9; relative error ~1e-15).
pub fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = G[0];
    let t = x + 7.5;
    for (i, g) in G.iter().enumerate().skip(1) {
        a += g / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

impl Denoiser for Perturbed {
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn sample_shape(&self) -> Vec<usize> {
        self.inner.sample_shape()
    }
    /// Tweedie from the perturbed score: `x + sigma^2 (s_sigma(x) + e(x))`.
    fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        if sigma == 0.0 {
            return Ok(x.clone());
        }
        Ok((x + (self.score(x, sigma)? * (sigma * sigma))?)?)
    }
    fn score(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        Ok((self.inner.score(x, sigma)? + self.field(x)?)?)
    }
    fn sigma_range(&self) -> (f64, f64) {
        self.inner.sigma_range()
    }
    fn device(&self) -> candle_core::Device {
        self.inner.device()
    }
    fn scale(&self) -> f64 {
        self.inner.scale()
    }
    fn sigma_max_hint(&self) -> f64 {
        self.inner.sigma_max_hint()
    }
    fn lipschitz(&self) -> Option<f64> {
        self.inner.lipschitz()
    }
    fn diffusion_start(&self, z: &Tensor, sigma_max: f64) -> Result<Tensor> {
        self.inner.diffusion_start(z, sigma_max)
    }
    /// Exact draws of the unperturbed prior (the perturbation changes the score, not the
    /// prior the problem was drawn from).
    fn as_exact_sample(&self) -> Option<&dyn crate::prior::ExactSample> {
        self.inner.as_exact_sample()
    }
    /// The unperturbed mixture: the exact posterior a perturbed score is measured against.
    fn as_mixture(&self) -> Option<&crate::prior::GaussianMixture> {
        self.inner.as_mixture()
    }
    fn differentiable(&self) -> bool {
        self.inner.differentiable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_gamma_spot_values() {
        assert!((ln_gamma(1.0)).abs() < 1e-13);
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-12);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-12);
        assert!((ln_gamma(500.5) - 2608.2229044109868).abs() < 1e-9);
    }

    /// The smooth field has the requested relative L2 size (Monte Carlo, the method says so).
    #[test]
    fn smooth_field_has_requested_size() {
        let gmm = GaussianMixture::isotropic(vec![0.0; 50], 2.0).unwrap();
        let kind = Perturbation::Smooth {
            rel: 0.1,
            freq: 1.0,
            seed: 3,
        };
        let p = Perturbed::new(
            Box::new(GaussianMixture::isotropic(vec![0.0; 50], 2.0).unwrap()),
            &gmm,
            kind,
        )
        .unwrap();
        let n = p.error_norms(&gmm, 4000).unwrap();
        assert!(n.method.starts_with("monte-carlo"));
        let rel = n.error_l2 / n.score_l2;
        // E sin^2 = 1/2 up to the phases' finite-d average (50 coordinates): within 20%.
        assert!((rel - 0.1).abs() < 0.02, "{n:?}");
        // Bounded: |e_j| <= amplitude everywhere.
        let x = Tensor::from_vec(vec![100.0f64; 50], (1, 50), &candle_core::Device::Cpu).unwrap();
        let m = p
            .field(&x)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(m <= p.amp + 1e-12);
    }

    #[test]
    fn shell_trap_norms_match_issue_figures() {
        let gmm = GaussianMixture::isotropic(vec![0.0; 1000], 1.0).unwrap();
        let kind = Perturbation::shell_trap(1000.0, 0.45, 0.65, None, None).unwrap();
        let p = Perturbed::new(
            Box::new(GaussianMixture::isotropic(vec![0.0; 1000], 1.0).unwrap()),
            &gmm,
            kind,
        )
        .unwrap();
        let n = p.error_norms(&gmm, 100).unwrap();
        eprintln!("{n:?}");
        assert!((n.score_l4 - 31.6).abs() < 0.05, "{n:?}");
        // The issue quotes about 0.017 for this trap.
        assert!((n.error_l4 - 0.017).abs() < 0.001, "{n:?}");
        // Inside the band the field pulls r toward r0 (here it points inward for r > r0).
        let x = Tensor::from_vec(
            vec![0.6f64.sqrt(); 1000],
            (1, 1000),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let e = p.field(&x).unwrap();
        let dot = (e * &x)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(dot < 0.0);
    }
}
