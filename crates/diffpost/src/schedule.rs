//! Noise-level schedules (continuous time, all `f64`).
//!
//! * `sigma` schedules are the diffusion noise levels of the prior (VE/EDM convention
//!   `x_sigma = x_0 + sigma * z`), listed from large to small.
//! * `eta` schedules are the annealed measurement-noise levels `eta_1 > ... > eta_N = eta` of
//!   annealed Langevin posterior sampling (Xun, Gupta, Price, NeurIPS 2025): stage `i` runs
//!   Langevin dynamics on `p(x | y)` with the measurement noise inflated to `eta_i`.

use crate::error::{Error, Result};

fn check_pos_finite(field: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && v > 0.0) {
        return Err(Error::param(
            field,
            format!("must be finite and > 0, got {v}"),
        ));
    }
    Ok(())
}

fn check_sigma_range(sigma_max: f64, sigma_min: f64, n: usize) -> Result<()> {
    check_pos_finite("sigma_min", sigma_min)?;
    check_pos_finite("sigma_max", sigma_max)?;
    if sigma_min >= sigma_max {
        return Err(Error::param(
            "sigma_min",
            format!("must be < sigma_max = {sigma_max}, got {sigma_min}"),
        ));
    }
    if n < 2 {
        return Err(Error::param(
            "n",
            format!("need at least 2 levels, got {n}"),
        ));
    }
    Ok(())
}

/// `n` noise levels from `sigma_max` down to `sigma_min`, equally spaced in `log sigma`
/// (`sigma_i = sigma_max (sigma_min / sigma_max)^(i/(n-1))`, as in NCSN, Song & Ermon 2019).
///
/// Requires `n >= 2` and `0 < sigma_min < sigma_max`. The endpoints are exact.
pub fn sigma_geometric(sigma_max: f64, sigma_min: f64, n: usize) -> Result<Vec<f64>> {
    check_sigma_range(sigma_max, sigma_min, n)?;
    let (lmax, lmin) = (sigma_max.ln(), sigma_min.ln());
    let mut v: Vec<f64> = (0..n)
        .map(|i| (lmax + (i as f64 / (n - 1) as f64) * (lmin - lmax)).exp())
        .collect();
    v[0] = sigma_max;
    v[n - 1] = sigma_min;
    Ok(v)
}

/// EDM schedule (Karras et al. 2022, eq. 5):
/// `sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho`,
/// `i = 0..n-1`; `rho = 7` is the usual choice.
///
/// Requires `n >= 2`, `0 < sigma_min < sigma_max` and `rho > 0`. The endpoints are exact.
pub fn sigma_karras(sigma_max: f64, sigma_min: f64, n: usize, rho: f64) -> Result<Vec<f64>> {
    check_sigma_range(sigma_max, sigma_min, n)?;
    check_pos_finite("rho", rho)?;
    let (a, b) = (sigma_max.powf(1.0 / rho), sigma_min.powf(1.0 / rho));
    let mut v: Vec<f64> = (0..n)
        .map(|i| (a + (i as f64 / (n - 1) as f64) * (b - a)).powf(rho))
        .collect();
    v[0] = sigma_max;
    v[n - 1] = sigma_min;
    Ok(v)
}

/// Appends a final `0.0` (the noiseless end point of a sampling trajectory).
pub fn append_zero(mut v: Vec<f64>) -> Vec<f64> {
    v.push(0.0);
    v
}

/// `stages = N` measurement-noise levels `eta_1 = eta_max > ... > eta_N = eta` with a constant
/// ratio `r = (eta_max / eta)^(1/(N-1))`.
///
/// The annealing analysis of Xun, Gupta, Price (NeurIPS 2025) needs consecutive levels to
/// satisfy `eta_i <= sqrt(2) eta_{i+1}` (i.e. `gamma_i <= 1` in Definition D.1); an error
/// (field `stages`) is returned if `r > sqrt(2)`, so that more stages are needed. Also errors if
/// `eta_max <= eta` or `stages < 2`. The endpoints are exact.
pub fn eta_geometric(eta_max: f64, eta: f64, stages: usize) -> Result<Vec<f64>> {
    check_pos_finite("eta", eta)?;
    check_pos_finite("eta_max", eta_max)?;
    if eta_max <= eta {
        return Err(Error::param(
            "eta_max",
            format!("must be > eta = {eta}, got {eta_max}"),
        ));
    }
    if stages < 2 {
        return Err(Error::param(
            "stages",
            format!("need at least 2 stages, got {stages}"),
        ));
    }
    let log_ratio = (eta_max / eta).ln() / (stages - 1) as f64;
    // Tiny slack so that an exactly-sqrt(2) schedule is not rejected by rounding.
    if log_ratio > 0.5 * std::f64::consts::LN_2 * (1.0 + 1e-12) {
        let min_stages =
            1 + ((eta_max / eta).ln() / (0.5 * std::f64::consts::LN_2)).ceil() as usize;
        return Err(Error::param(
            "stages",
            format!(
                "ratio eta_i/eta_(i+1) = {:.6} exceeds sqrt(2) (eta_max = {eta_max}, eta = {eta}); \
                 use at least {min_stages} stages or a smaller eta_max",
                log_ratio.exp()
            ),
        ));
    }
    let mut v: Vec<f64> = (0..stages)
        .map(|i| eta * (log_ratio * (stages - 1 - i) as f64).exp())
        .collect();
    v[0] = eta_max;
    v[stages - 1] = eta;
    Ok(v)
}

/// Free constants of the admissible schedule (Xun, Gupta, Price, NeurIPS 2025, Definition D.1).
///
/// The theory only fixes these up to absolute constants; the defaults (all 1, `eps = 0.1`) are
/// a neutral choice, not values derived in the paper.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdmissibleParams {
    /// `lambda`: multiplier in the start-level bound `eta_1 >= lambda ||A|| sqrt(d) / (eps sqrt(alpha))`.
    pub lambda: f64,
    /// `eps`: target accuracy; the first stage must be this close to the (broad) initial law.
    pub eps: f64,
    /// `alpha`: strong log-concavity / spread constant of the prior used in the eta_1 bound.
    pub alpha: f64,
    /// `C`: absolute constant in the per-stage bound `||A||^4 (T^2 m + T R^2) <= eta_i^4 / (C gamma_i^2)`.
    pub c: f64,
    /// `R`: radius bound on the iterates (enters as `T R^2`).
    pub r: f64,
    /// `T_i`: Langevin time spent in each stage (same for all stages).
    pub t: f64,
    /// Maximum number of stages before [`eta_admissible`] gives up with an error.
    pub max_stages: usize,
}

impl Default for AdmissibleParams {
    /// `lambda = 1, eps = 0.1, alpha = 1, c = 1, r = 1, t = 1, max_stages = 10_000`.
    fn default() -> Self {
        Self {
            lambda: 1.0,
            eps: 0.1,
            alpha: 1.0,
            c: 1.0,
            r: 1.0,
            t: 1.0,
            max_stages: 10_000,
        }
    }
}

/// Admissible annealing schedule of Xun, Gupta, Price (NeurIPS 2025), Definition D.1.
///
/// Constraints: `eta_N = eta`; `eta_1 >= lambda ||A|| sqrt(d) / (eps sqrt(alpha))`;
/// `gamma_i = (eta_i / eta_{i+1})^2 - 1 <= 1`; and
/// `||A||^4 (T^2 m + T R^2) <= eta_i^4 / (C gamma_i^2)`.
///
/// Built backwards from `eta`: each step takes the largest admissible `gamma`, i.e. with
/// `s = eta_{i+1}^2 / (||A||^2 sqrt(C (T^2 m + T R^2)))` the last bound reads
/// `gamma / (1 + gamma) <= s`, so `gamma = min(1, s / (1 - s))` (`gamma = 1` if `s >= 1`),
/// and `eta_i = eta_{i+1} sqrt(1 + gamma)`. It stops at the first level `>= ` the `eta_1`
/// bound, so `eta_1` may overshoot that bound by at most a factor `sqrt(2)` (the last step is not
/// capped, which would only add a short extra stage). If `eta` already meets the `eta_1` bound
/// the schedule is the single level `[eta]`.
///
/// `a_norm` is the operator norm `||A||`, `d` the signal dimension, `m` the measurement
/// dimension. Returns `eta_1 > ... > eta_N`; errors if more than `p.max_stages` levels are needed.
pub fn eta_admissible(
    eta: f64,
    a_norm: f64,
    d: usize,
    m: usize,
    p: &AdmissibleParams,
) -> Result<Vec<f64>> {
    check_pos_finite("eta", eta)?;
    if !(a_norm.is_finite() && a_norm >= 0.0) {
        return Err(Error::param(
            "a_norm",
            format!("must be finite and >= 0, got {a_norm}"),
        ));
    }
    if d == 0 {
        return Err(Error::param("d", "must be >= 1"));
    }
    if m == 0 {
        return Err(Error::param("m", "must be >= 1"));
    }
    check_pos_finite("lambda", p.lambda)?;
    check_pos_finite("eps", p.eps)?;
    check_pos_finite("alpha", p.alpha)?;
    check_pos_finite("c", p.c)?;
    check_pos_finite("t", p.t)?;
    if !(p.r.is_finite() && p.r >= 0.0) {
        return Err(Error::param(
            "r",
            format!("must be finite and >= 0, got {}", p.r),
        ));
    }
    if p.max_stages == 0 {
        return Err(Error::param("max_stages", "must be >= 1"));
    }

    let eta1_bound = p.lambda * a_norm * (d as f64).sqrt() / (p.eps * p.alpha.sqrt());
    // K = ||A||^2 sqrt(C (T^2 m + T R^2)); K > 0 whenever the loop runs (a_norm > 0 there).
    let k = a_norm * a_norm * (p.c * (p.t * p.t * m as f64 + p.t * p.r * p.r)).sqrt();

    let mut levels = vec![eta];
    let mut cur = eta;
    while cur < eta1_bound {
        if levels.len() >= p.max_stages {
            return Err(Error::param(
                "max_stages",
                format!(
                    "admissible schedule needs more than {} stages (eta = {eta}, eta_1 bound = \
                     {eta1_bound:.4e}, reached {cur:.4e})",
                    p.max_stages
                ),
            ));
        }
        let s = cur * cur / k;
        let gamma = if s >= 0.5 { 1.0 } else { s / (1.0 - s) };
        cur *= (1.0 + gamma).sqrt();
        levels.push(cur);
    }
    levels.reverse();
    Ok(levels)
}

/// Langevin step size for the stage targeting measurement-noise level `eta_next`:
/// `h = h_rel / (L_prior + ||A||^2 / eta_next^2)`, i.e. `h_rel` over the smoothness constant of
/// the stage's log-posterior (prior smoothness plus likelihood curvature).
pub fn step_size(h_rel: f64, l_prior: f64, a_norm: f64, eta_next: f64) -> f64 {
    h_rel / (l_prior + a_norm * a_norm / (eta_next * eta_next))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strictly_decreasing(v: &[f64]) -> bool {
        v.windows(2).all(|w| w[0] > w[1])
    }

    #[test]
    fn geometric_sigma() {
        let v = sigma_geometric(80.0, 0.002, 11).unwrap();
        assert_eq!(v.len(), 11);
        assert_eq!(v[0], 80.0);
        assert_eq!(v[10], 0.002);
        assert!(strictly_decreasing(&v));
        let r = (0.002f64 / 80.0).powf(0.1);
        for w in v.windows(2) {
            assert!((w[1] / w[0] - r).abs() < 1e-12);
        }
        assert!(sigma_geometric(1.0, 2.0, 5).is_err());
        assert!(sigma_geometric(1.0, 0.0, 5).is_err());
        assert!(sigma_geometric(1.0, 0.1, 1).is_err());
    }

    #[test]
    fn karras_sigma() {
        let (smax, smin, rho) = (80.0, 0.002, 7.0);
        let v = sigma_karras(smax, smin, 5, rho).unwrap();
        assert_eq!(v[0], smax);
        assert_eq!(v[4], smin);
        assert!(strictly_decreasing(&v));
        let mid = (0.5 * (smax.powf(1.0 / rho) + smin.powf(1.0 / rho))).powf(rho);
        assert!((v[2] - mid).abs() < 1e-12 * mid);
        // rho = 1 is linear spacing.
        let lin = sigma_karras(2.0, 1.0, 3, 1.0).unwrap();
        assert!((lin[1] - 1.5).abs() < 1e-14);
        assert!(sigma_karras(80.0, 0.002, 5, 0.0).is_err());
        assert_eq!(append_zero(vec![2.0, 1.0]), vec![2.0, 1.0, 0.0]);
    }

    #[test]
    fn geometric_eta() {
        let v = eta_geometric(1.0, 0.01, 20).unwrap();
        assert_eq!(v.len(), 20);
        assert_eq!(v[0], 1.0);
        assert_eq!(v[19], 0.01);
        assert!(strictly_decreasing(&v));
        let r = 100f64.powf(1.0 / 19.0);
        for w in v.windows(2) {
            assert!((w[0] / w[1] - r).abs() < 1e-12);
        }
        // Exactly sqrt(2) is allowed, anything larger is not.
        assert!(eta_geometric(2.0, 1.0, 3).is_ok());
        let e = eta_geometric(1.0, 0.01, 10).unwrap_err();
        assert!(matches!(e, Error::InvalidParam { ref field, .. } if field == "stages"));
        assert!(eta_geometric(0.01, 0.01, 10).is_err());
        assert!(eta_geometric(1.0, 0.5, 1).is_err());
    }

    fn check_d1(v: &[f64], eta: f64, a: f64, d: usize, m: usize, p: &AdmissibleParams) {
        assert_eq!(*v.last().unwrap(), eta);
        assert!(strictly_decreasing(v));
        let bound = p.lambda * a * (d as f64).sqrt() / (p.eps * p.alpha.sqrt());
        assert!(v[0] >= bound);
        assert!(v.len() == 1 || v[1] < bound, "stopped late");
        let lhs = a.powi(4) * (p.t * p.t * m as f64 + p.t * p.r * p.r);
        for w in v.windows(2) {
            let gamma = (w[0] / w[1]).powi(2) - 1.0;
            assert!(gamma <= 1.0 + 1e-12, "gamma = {gamma}");
            let rhs = w[0].powi(4) / (p.c * gamma * gamma);
            assert!(lhs <= rhs * (1.0 + 1e-9), "lhs {lhs} > rhs {rhs}");
        }
    }

    #[test]
    fn admissible_satisfies_d1() {
        let cases = [
            (0.1, 1.0, 16, 8, AdmissibleParams::default()),
            (0.5, 2.0, 100, 50, AdmissibleParams::default()),
            (
                1.0,
                0.5,
                10,
                10,
                AdmissibleParams {
                    lambda: 2.0,
                    eps: 0.5,
                    alpha: 0.5,
                    c: 4.0,
                    r: 3.0,
                    t: 0.5,
                    max_stages: 10_000,
                },
            ),
            (0.05, 1.0, 4, 4, AdmissibleParams::default()),
        ];
        for (eta, a, d, m, p) in cases {
            let v = eta_admissible(eta, a, d, m, &p).unwrap();
            assert!(v.len() >= 2);
            check_d1(&v, eta, a, d, m, &p);
        }
        // Already above the eta_1 bound: single stage.
        let v = eta_admissible(100.0, 1.0, 4, 4, &AdmissibleParams::default()).unwrap();
        assert_eq!(v, vec![100.0]);
    }

    #[test]
    fn admissible_too_many_stages() {
        let p = AdmissibleParams {
            max_stages: 50,
            ..Default::default()
        };
        let e = eta_admissible(1e-3, 1.0, 100, 100, &p).unwrap_err();
        assert!(matches!(e, Error::InvalidParam { ref field, .. } if field == "max_stages"));
    }

    #[test]
    fn step_size_rule() {
        let h = step_size(0.1, 1.0, 2.0, 0.5);
        assert!((h - 0.1 / (1.0 + 16.0)).abs() < 1e-15);
    }
}
