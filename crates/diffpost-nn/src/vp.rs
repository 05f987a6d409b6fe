//! The variance-preserving (DDPM) adapter: a network trained on `x_t = sqrt(abar_t) x0 +
//! sqrt(1 - abar_t) eps` at integer timesteps `t = 0..T-1`, seen as the variance-exploding
//! denoiser `D(x, sigma)` the samplers use (docs/algorithms.md, "Conventions").
//!
//! With `sigma_t = sqrt((1 - abar_t) / abar_t)`, the VE point `x = x0 + sigma z` is the VP point
//! `x_t = x / sqrt(1 + sigma^2)` at the `t` with `sigma_t = sigma`, so
//!
//! `D(x, sigma) = x - sigma eps_theta(x / sqrt(1 + sigma^2), t(sigma))` (eps prediction),
//!
//! `D = sqrt(abar) x_t - sqrt(1 - abar) v` (v prediction), `D = F` (sample prediction). Learned
//! variance channels (guided-diffusion's `learn_sigma`, the second half of the output) are dropped.
//!
//! `t(sigma)`: [`TimestepMode::Interpolate`] (default) interpolates linearly in `ln sigma`
//! between the two neighbouring integer timesteps and feeds the fractional `t` to the network's
//! sinusoidal embedding (as k-diffusion's `DiscreteSchedule` does); [`TimestepMode::Nearest`]
//! rounds to the nearest timestep in `ln sigma` and then uses that timestep's own `sigma_t` in
//! the formulas above (docs/algorithms.md). A sigma outside `[sigma_0, sigma_{T-1}]` is an
//! error ([`diffpost_core::Error::SigmaOutOfRange`]).

use candle_core::{DType, Device, Tensor};
use diffpost_core::{Error, Result};
use serde::{Deserialize, Serialize};

use super::adapter::denoise_chunked;

/// `beta_t` schedules of DDPM-style training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum BetaSchedule {
    /// `beta_t = linspace(beta_start, beta_end, T)` (Ho et al. 2020). guided-diffusion scales
    /// both ends by `1000 / T`: use [`BetaSchedule::guided_linear`] for its checkpoints.
    Linear { beta_start: f64, beta_end: f64 },
    /// `beta_t = linspace(sqrt(beta_start), sqrt(beta_end), T)^2` (diffusers' `scaled_linear`).
    ScaledLinear { beta_start: f64, beta_end: f64 },
    /// Nichol & Dhariwal (2021) eq. 17: `abar(t) = cos^2(((t/T + s)/(1 + s)) pi/2)`, betas capped
    /// at 0.999 (guided-diffusion's `cosine`, diffusers' `squaredcos_cap_v2`).
    Cosine {
        #[serde(default = "default_cosine_s")]
        s: f64,
    },
}

fn default_cosine_s() -> f64 {
    0.008
}

impl BetaSchedule {
    /// DDPM's linear schedule, `1e-4 .. 0.02`.
    pub fn ddpm_linear() -> Self {
        Self::Linear {
            beta_start: 1e-4,
            beta_end: 0.02,
        }
    }

    /// guided-diffusion's `get_named_beta_schedule("linear", T)`: `1e-4 .. 0.02` scaled by
    /// `1000 / T` (the DDPM values when `T = 1000`).
    pub fn guided_linear(num_timesteps: usize) -> Self {
        let scale = 1000.0 / num_timesteps as f64;
        Self::Linear {
            beta_start: scale * 1e-4,
            beta_end: scale * 0.02,
        }
    }

    /// The betas for `T = num_timesteps` steps.
    pub fn betas(&self, num_timesteps: usize) -> Result<Vec<f64>> {
        let t = num_timesteps;
        if t < 2 {
            return Err(Error::param("num_timesteps", "must be at least 2"));
        }
        let lin = |a: f64, b: f64| -> Vec<f64> {
            (0..t)
                .map(|i| a + (b - a) * i as f64 / (t - 1) as f64)
                .collect()
        };
        let betas = match *self {
            Self::Linear {
                beta_start,
                beta_end,
            } => lin(beta_start, beta_end),
            Self::ScaledLinear {
                beta_start,
                beta_end,
            } => lin(beta_start.sqrt(), beta_end.sqrt())
                .into_iter()
                .map(|b| b * b)
                .collect(),
            Self::Cosine { s } => {
                if !(s.is_finite() && s >= 0.0) {
                    return Err(Error::param("s", "must be finite and >= 0"));
                }
                let abar = |u: f64| {
                    ((u + s) / (1.0 + s) * std::f64::consts::FRAC_PI_2)
                        .cos()
                        .powi(2)
                };
                (0..t)
                    .map(|i| {
                        let (u1, u2) = (i as f64 / t as f64, (i + 1) as f64 / t as f64);
                        (1.0 - abar(u2) / abar(u1)).min(0.999)
                    })
                    .collect()
            }
        };
        if betas
            .iter()
            .any(|b| !(b.is_finite() && *b > 0.0 && *b < 1.0))
        {
            return Err(Error::param("beta_schedule", "betas must lie in (0, 1)"));
        }
        Ok(betas)
    }
}

/// What the network predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    /// The noise `eps` (DDPM, guided-diffusion, DPS).
    #[default]
    Epsilon,
    /// `v = sqrt(abar) eps - sqrt(1 - abar) x0` (Salimans & Ho 2022).
    VPrediction,
    /// `x0` itself.
    Sample,
}

/// How a continuous `sigma` becomes the network's timestep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepMode {
    /// Fractional `t`, linear in `ln sigma` between neighbouring integer timesteps.
    #[default]
    Interpolate,
    /// The nearest integer timestep in `ln sigma`.
    Nearest,
}

/// The discrete VP schedule: `abar_t` and `sigma_t = sqrt((1 - abar_t)/abar_t)`, `t = 0..T-1`.
#[derive(Debug, Clone, PartialEq)]
pub struct VpSchedule {
    alphas_cumprod: Vec<f64>,
    log_sigmas: Vec<f64>,
}

impl VpSchedule {
    pub fn new(betas: &BetaSchedule, num_timesteps: usize) -> Result<Self> {
        let b = betas.betas(num_timesteps)?;
        let mut acc = 1.0;
        let alphas_cumprod: Vec<f64> = b
            .iter()
            .map(|beta| {
                acc *= 1.0 - beta;
                acc
            })
            .collect();
        let log_sigmas: Vec<f64> = alphas_cumprod
            .iter()
            .map(|a| (((1.0 - a) / a).sqrt()).ln())
            .collect();
        if log_sigmas
            .windows(2)
            .any(|w| !(w[1] > w[0]) || !w[1].is_finite())
        {
            return Err(Error::param(
                "beta_schedule",
                "sigma_t must increase strictly with t",
            ));
        }
        Ok(Self {
            alphas_cumprod,
            log_sigmas,
        })
    }

    /// DDPM linear betas over 1000 steps (DPS, guided-diffusion, google/ddpm-*).
    pub fn ddpm_linear_1000() -> Self {
        Self::new(&BetaSchedule::ddpm_linear(), 1000).expect("valid DDPM schedule")
    }

    pub fn num_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    pub fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// `sigma_t` of integer timestep `t`.
    pub fn sigma(&self, t: usize) -> f64 {
        self.log_sigmas[t].exp()
    }

    /// `[sigma_0, sigma_{T-1}]`.
    pub fn sigma_range(&self) -> (f64, f64) {
        (self.sigma(0), self.sigma(self.num_timesteps() - 1))
    }

    /// The (fractional or integer) timestep for `sigma`; an error outside the range (a relative
    /// slack of 1e-9 absorbs rounding at the ends).
    pub fn timestep(&self, sigma: f64, mode: TimestepMode) -> Result<f64> {
        let (lo, hi) = self.sigma_range();
        if !(sigma.is_finite() && sigma >= lo * (1.0 - 1e-9) && sigma <= hi * (1.0 + 1e-9)) {
            return Err(Error::SigmaOutOfRange {
                sigma,
                min: lo,
                max: hi,
            });
        }
        let ls = sigma.ln();
        let n = self.log_sigmas.len();
        // First index with log_sigma >= ls, clamped into [1, n-1].
        let hi_i = self.log_sigmas.partition_point(|&v| v < ls).clamp(1, n - 1);
        let lo_i = hi_i - 1;
        let (a, b) = (self.log_sigmas[lo_i], self.log_sigmas[hi_i]);
        let w = ((ls - a) / (b - a)).clamp(0.0, 1.0);
        Ok(match mode {
            TimestepMode::Interpolate => lo_i as f64 + w,
            TimestepMode::Nearest => {
                if w < 0.5 {
                    lo_i as f64
                } else {
                    hi_i as f64
                }
            }
        })
    }
}

/// A network on VP inputs: `x_t: [B, C, H, W]` f32 and timesteps `[B]` f32 (fractional allowed)
/// to the raw output `[B, C_out, H, W]` (`C_out >= C`; extra channels are dropped).
pub trait TimestepNetwork: Send + Sync {
    fn forward(&self, x: &Tensor, timesteps: &Tensor) -> candle_core::Result<Tensor>;
    /// `[C, H, W]` the network was trained on.
    fn image_shape(&self) -> [usize; 3];
    /// A short name for errors and summaries.
    fn name(&self) -> String;
}

/// A VP network as a variance-exploding denoiser on flattened `[B, C*H*W]` f64 batches (the
/// library `diffpost` makes it a `prior::Denoiser`).
pub struct VpDenoiser {
    net: Box<dyn TimestepNetwork>,
    schedule: VpSchedule,
    prediction: Prediction,
    mode: TimestepMode,
    shape: [usize; 3],
    /// Where the network runs; sampler state stays on the CPU (f64) and is moved per call.
    net_device: Device,
    chunk: usize,
    /// RMS per coordinate of the data the network models (1: images in `[-1, 1]`).
    data_scale: f64,
}

impl std::fmt::Debug for VpDenoiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VpDenoiser")
            .field("net", &self.net.name())
            .field("timesteps", &self.schedule.num_timesteps())
            .field("prediction", &self.prediction)
            .field("mode", &self.mode)
            .field("shape", &self.shape)
            .finish()
    }
}

impl VpDenoiser {
    /// `net_device`: where the network's weights live (CPU or CUDA); samplers still see CPU
    /// tensors.
    pub fn new(
        net: Box<dyn TimestepNetwork>,
        schedule: VpSchedule,
        prediction: Prediction,
        net_device: Device,
    ) -> Self {
        Self {
            shape: net.image_shape(),
            net,
            schedule,
            prediction,
            mode: TimestepMode::default(),
            net_device,
            chunk: 8,
            data_scale: 1.0,
        }
    }

    /// The data's scale per coordinate, for the divergence check (default 1, images in
    /// `[-1, 1]`); a network trained on other data, or one with random weights, sets its own.
    pub fn with_data_scale(mut self, s: f64) -> Self {
        self.data_scale = s;
        self
    }

    pub fn with_timestep_mode(mut self, mode: TimestepMode) -> Self {
        self.mode = mode;
        self
    }

    /// Rows per network call (bounds memory; results do not depend on it beyond rounding).
    pub fn with_chunk_size(mut self, chunk: usize) -> Self {
        self.chunk = chunk.max(1);
        self
    }

    pub fn schedule(&self) -> &VpSchedule {
        &self.schedule
    }

    pub fn timestep_mode(&self) -> TimestepMode {
        self.mode
    }

    pub fn image_shape(&self) -> [usize; 3] {
        self.shape
    }

    pub fn network_device(&self) -> &Device {
        &self.net_device
    }

    pub fn network_name(&self) -> String {
        self.net.name()
    }

    /// The data's scale per coordinate ([`Self::with_data_scale`]; 1 unless set).
    pub fn data_scale(&self) -> f64 {
        self.data_scale
    }

    /// Entries per sample, `C*H*W` (the flattened image).
    pub fn dim(&self) -> usize {
        self.shape.iter().product()
    }

    /// `D(x, sigma)` on flattened `x: [B, C*H*W]`, through [`Self::denoise_images`] chunk by
    /// chunk on the network's device; a sigma outside the schedule's range is an error.
    pub fn denoise(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        denoise_chunked(
            x,
            self.shape,
            self.chunk,
            &self.net_device,
            || self.net.name(),
            |xi| self.denoise_images(xi, sigma),
        )
    }

    /// `D(x, sigma)` on images `[B, C, H, W]` (any float dtype; computed in f32 by the network).
    pub fn denoise_images(&self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        let t = self.schedule.timestep(sigma, self.mode)?;
        // Nearest: the formulas use that timestep's own sigma (docs/algorithms.md, "Conventions").
        let sigma = match self.mode {
            TimestepMode::Nearest => self.schedule.sigma(t as usize),
            TimestepMode::Interpolate => sigma,
        };
        let (b, c, _, _) = x.dims4()?;
        let scale = 1.0 / (1.0 + sigma * sigma).sqrt();
        let x_t = (x * scale)?;
        let ts = Tensor::full(t as f32, b, &self.net_device)?;
        let x_in = x_t.to_dtype(DType::F32)?.to_device(&self.net_device)?;
        let out = self.net.forward(&x_in, &ts)?.to_device(x.device())?;
        let oc = out.dim(1)?;
        if oc < c {
            return Err(Error::shape(
                format!("output of {}", self.net.name()),
                format!("at least {c} channels"),
                out.dims(),
            ));
        }
        let f = out.narrow(1, 0, c)?.to_dtype(x.dtype())?;
        Ok(match self.prediction {
            Prediction::Epsilon => (x - (f * sigma)?)?,
            Prediction::Sample => f,
            Prediction::VPrediction => {
                // sqrt(abar) = scale, sqrt(1 - abar) = sigma * scale at this sigma.
                ((x_t * scale)? - (f * (sigma * scale))?)?
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap()
    }

    #[test]
    fn ddpm_linear_sigma_range() {
        let s = VpSchedule::ddpm_linear_1000();
        let (lo, hi) = s.sigma_range();
        // sigma_0 = sqrt(beta_0 / (1 - beta_0)) with beta_0 = 1e-4.
        assert!((lo - (1e-4f64 / (1.0 - 1e-4)).sqrt()).abs() < 1e-12);
        // abar_999 of DDPM's linear schedule is about 4.04e-5: sigma about 157.
        assert!((hi - 157.4).abs() < 0.5, "{hi}");
    }

    #[test]
    fn timestep_mapping_hits_integers_and_interpolates_in_log_sigma() {
        let s = VpSchedule::ddpm_linear_1000();
        for t in [0usize, 1, 10, 500, 998, 999] {
            let got = s.timestep(s.sigma(t), TimestepMode::Interpolate).unwrap();
            assert!((got - t as f64).abs() < 1e-9, "t {t}: {got}");
            assert_eq!(
                s.timestep(s.sigma(t), TimestepMode::Nearest).unwrap(),
                t as f64
            );
        }
        // Geometric mean of sigma_100 and sigma_101 is half-way in ln sigma.
        let mid = (s.sigma(100) * s.sigma(101)).sqrt();
        let t = s.timestep(mid, TimestepMode::Interpolate).unwrap();
        assert!((t - 100.5).abs() < 1e-9, "{t}");
        let q = (s.sigma(100).ln() * 0.7 + s.sigma(101).ln() * 0.3).exp();
        assert!((s.timestep(q, TimestepMode::Interpolate).unwrap() - 100.3).abs() < 1e-9);
        assert_eq!(s.timestep(q, TimestepMode::Nearest).unwrap(), 100.0);
        for bad in [s.sigma(0) * 0.9, s.sigma(999) * 1.1, f64::NAN, 0.0] {
            let e = s.timestep(bad, TimestepMode::Interpolate).unwrap_err();
            assert!(matches!(e, Error::SigmaOutOfRange { .. }), "{e}");
        }
    }

    #[test]
    fn guided_linear_matches_ddpm_at_1000_and_cosine_is_capped() {
        assert_eq!(
            BetaSchedule::guided_linear(1000).betas(1000).unwrap(),
            BetaSchedule::ddpm_linear().betas(1000).unwrap()
        );
        let b = BetaSchedule::Cosine { s: 0.008 }.betas(1000).unwrap();
        assert!(b.iter().all(|&x| x > 0.0 && x <= 0.999));
        assert!((b[999] - 0.999).abs() < 1e-12);
        let s = VpSchedule::new(&BetaSchedule::Cosine { s: 0.008 }, 1000).unwrap();
        // abar_0 = cos^2(...(1/T + s)...) / cos^2(...s...) in closed form.
        let f = |u: f64| {
            ((u + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                .cos()
                .powi(2)
        };
        assert!((s.alphas_cumprod()[0] - f(0.001) / f(0.0)).abs() < 1e-12);
    }

    /// A network whose eps-prediction is exact for the prior N(0, v I): for VP input x_t at
    /// abar, eps = E[eps | x_t] = sqrt(1 - abar) x_t / (abar v + 1 - abar).
    struct GaussianEps {
        v: f64,
        schedule: VpSchedule,
    }

    impl TimestepNetwork for GaussianEps {
        fn forward(&self, x: &Tensor, t: &Tensor) -> candle_core::Result<Tensor> {
            let t = t.to_vec1::<f32>()?[0] as f64;
            let (i, w) = (t.floor() as usize, t - t.floor());
            let ls = |k: usize| self.schedule.sigma(k.min(999)).ln();
            let sigma = ((1.0 - w) * ls(i) + w * ls(i + 1)).exp();
            let abar = 1.0 / (1.0 + sigma * sigma);
            let k = (1.0 - abar).sqrt() / (abar * self.v + 1.0 - abar);
            // Two output channels per input channel: the second half mimics learned variance.
            Tensor::cat(&[(x * k)?, (x * 1e6)?], 1)
        }
        fn image_shape(&self) -> [usize; 3] {
            [1, 2, 2]
        }
        fn name(&self) -> String {
            "gaussian-eps".into()
        }
    }

    #[test]
    fn eps_adapter_gives_the_exact_gaussian_denoiser() {
        let v = 0.3;
        let net = GaussianEps {
            v,
            schedule: VpSchedule::ddpm_linear_1000(),
        };
        let d = VpDenoiser::new(
            Box::new(net),
            VpSchedule::ddpm_linear_1000(),
            Prediction::Epsilon,
            Device::Cpu,
        );
        let x = Tensor::new(
            &[[1.0f64, -2.0, 0.5, 3.0], [0.1, 0.2, -0.3, 0.4]],
            &Device::Cpu,
        )
        .unwrap();
        for sigma in [0.02, 0.5, 3.0, 100.0] {
            // Exact D for N(0, v): v / (v + sigma^2) x.
            let want = (&x * (v / (v + sigma * sigma))).unwrap();
            let got = d.denoise(&x, sigma).unwrap();
            let err = max_abs_diff(&got, &want);
            assert!(err < 1e-5, "sigma {sigma}: {err}");
        }
        // Nearest: the denoiser of the nearest timestep's own sigma.
        let s = VpSchedule::ddpm_linear_1000();
        let q = (s.sigma(100).ln() * 0.7 + s.sigma(101).ln() * 0.3).exp();
        let st = s.sigma(100);
        let near = VpDenoiser::new(
            Box::new(GaussianEps {
                v,
                schedule: VpSchedule::ddpm_linear_1000(),
            }),
            s,
            Prediction::Epsilon,
            Device::Cpu,
        )
        .with_timestep_mode(TimestepMode::Nearest);
        let want = (&x * (v / (v + st * st))).unwrap();
        let err = max_abs_diff(&near.denoise(&x, q).unwrap(), &want);
        assert!(err < 1e-5 && (q - st).abs() > 1e-4, "{err}");
        assert!(matches!(
            d.denoise(&x, 500.0).unwrap_err(),
            Error::SigmaOutOfRange { .. }
        ));
        let bad = Tensor::zeros((1, 3), DType::F64, &Device::Cpu).unwrap();
        assert!(d
            .denoise(&bad, 1.0)
            .unwrap_err()
            .to_string()
            .contains("gaussian-eps"));
    }
}
