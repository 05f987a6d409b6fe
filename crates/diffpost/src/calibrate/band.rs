//! The simultaneous ECDF band for uniform ranks (Säilynoja, Bürkner & Vehtari 2022, "Graphical
//! test for discrete uniformity", section 2.2, the simulation method).
//!
//! With `R` ranks uniform on `0..=L`, the count of ranks below threshold `t` is
//! `Binomial(R, z)`, `z = t / (L + 1)`. A pointwise band of level `1 - gamma` keeps each count
//! inside the `gamma/2` and `1 - gamma/2` binomial quantiles; the band is *simultaneous* at level
//! `1 - alpha` when `gamma` is chosen so that the whole ECDF of uniform ranks stays inside it with
//! probability `1 - alpha`. `gamma` is found by simulation: draw `draws` samples of `R` uniform
//! ranks, take each one's smallest pointwise two-sided tail probability `min_t p_t`, and set
//! `gamma` to the `alpha` quantile of those minima.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::Result;

/// The seed of the band's simulation: the band depends on `R`, `L`, the level and the number of
/// draws only (not on the calibration's seed), so every shard split and merge gets the same band.
pub const BAND_SEED: u64 = 0x5bc0_ba2d;

/// At most this many evaluation thresholds (all of `1..=L` when `L` is at most this).
pub const MAX_POINTS: usize = 99;

/// The simultaneous band of the ECDF of `replicates` ranks on `0..=samples`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Band {
    /// Simultaneous level (0.95).
    pub level: f64,
    /// The pointwise level `gamma` that makes the band simultaneous at `level` (found by
    /// simulation): a point is inside when its two-sided binomial tail probability is at least
    /// `gamma`.
    pub adjusted_level: f64,
    /// The pointwise level that makes the band simultaneous at `1 - (1 - level) / family` (a
    /// Bonferroni correction over the `family` statistics of a calibration, so that an exact
    /// sampler leaves *any* of their bands with probability at most `1 - level`).
    pub family_adjusted_level: f64,
    /// The number of statistics the family level corrects for.
    pub family: usize,
    /// Simulated rank samples used to find the adjusted levels.
    pub draws: usize,
    /// Rank thresholds `t` (in `1..=L`) where the ECDF is evaluated: `F(t)` is the fraction of
    /// ranks below `t`.
    pub thresholds: Vec<usize>,
    /// Fractional ranks `z = t / (L + 1)`: the ECDF of uniform ranks there is `z`.
    pub z: Vec<f64>,
    /// Lower and upper edges of the band for the ECDF difference `F(t) - z` at each threshold.
    pub lower: Vec<f64>,
    pub upper: Vec<f64>,
    /// The same edges at the family-wise level (`family_adjusted_level`: a wider band).
    pub family_lower: Vec<f64>,
    pub family_upper: Vec<f64>,
}

/// Evaluation thresholds for ranks on `0..=samples`: every `t` in `1..=samples` when there are at
/// most [`MAX_POINTS`], else [`MAX_POINTS`] evenly spread ones.
pub fn thresholds(samples: usize) -> Vec<usize> {
    let k = samples.min(MAX_POINTS);
    let mut t: Vec<usize> = (1..=k)
        .map(|j| {
            if samples <= MAX_POINTS {
                j
            } else {
                ((j as f64) * (samples + 1) as f64 / (k + 1) as f64).round() as usize
            }
        })
        .map(|t| t.clamp(1, samples.max(1)))
        .collect();
    t.dedup();
    t
}

/// `P(X <= k)` and `P(X >= k)` for `X ~ Binomial(n, p)`, `k = 0..=n`, from the log-pmf (stable
/// for large `n`).
pub fn binomial_tails(n: usize, p: f64) -> (Vec<f64>, Vec<f64>) {
    let mut pmf = vec![0.0; n + 1];
    if p <= 0.0 {
        pmf[0] = 1.0;
    } else if p >= 1.0 {
        pmf[n] = 1.0;
    } else {
        let (lp, lq) = (p.ln(), (1.0 - p).ln());
        let mut l = vec![0.0; n + 1];
        l[0] = n as f64 * lq;
        for k in 0..n {
            l[k + 1] = l[k] + ((n - k) as f64 / (k + 1) as f64).ln() + lp - lq;
        }
        let mx = l.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0.0;
        for (v, lk) in pmf.iter_mut().zip(&l) {
            *v = (lk - mx).exp();
            sum += *v;
        }
        for v in pmf.iter_mut() {
            *v /= sum;
        }
    }
    let mut below = vec![0.0; n + 1];
    let mut acc = 0.0;
    for k in 0..=n {
        acc += pmf[k];
        below[k] = acc.min(1.0);
    }
    let mut above = vec![0.0; n + 1];
    acc = 0.0;
    for k in (0..=n).rev() {
        acc += pmf[k];
        above[k] = acc.min(1.0);
    }
    (below, above)
}

/// The tail tables of every threshold.
struct Tails {
    below: Vec<Vec<f64>>,
    above: Vec<Vec<f64>>,
}

impl Tails {
    fn new(replicates: usize, samples: usize, thresholds: &[usize]) -> Result<Self> {
        crate::limits::check_alloc(
            "calibration band (replicates x thresholds)",
            (thresholds.len() as u128) * (replicates as u128 + 1) * 16,
        )?;
        let (below, above) = thresholds
            .iter()
            .map(|&t| binomial_tails(replicates, t as f64 / (samples + 1) as f64))
            .unzip();
        Ok(Self { below, above })
    }

    /// Two-sided tail probability of `count` ranks below threshold `j`.
    fn p(&self, j: usize, count: usize) -> f64 {
        (2.0 * self.below[j][count].min(self.above[j][count])).min(1.0)
    }

    /// The smallest pointwise tail probability of an ECDF given as counts below each threshold.
    fn min_p(&self, counts: &[usize]) -> f64 {
        counts
            .iter()
            .enumerate()
            .map(|(j, &c)| self.p(j, c))
            .fold(1.0, f64::min)
    }
}

/// Counts of ranks below each threshold.
pub fn counts_below(ranks: &[u32], samples: usize, thresholds: &[usize]) -> Vec<usize> {
    let mut hist = vec![0usize; samples + 1];
    for &r in ranks {
        hist[(r as usize).min(samples)] += 1;
    }
    let mut cum = vec![0usize; samples + 2];
    for k in 0..=samples {
        cum[k + 1] = cum[k] + hist[k];
    }
    thresholds.iter().map(|&t| cum[t]).collect()
}

/// The band for `replicates` ranks on `0..=samples` at simultaneous `level`, `draws` simulated
/// rank samples (seeded with [`BAND_SEED`]).
pub fn band(
    replicates: usize,
    samples: usize,
    level: f64,
    family: usize,
    draws: usize,
) -> Result<Band> {
    let t = thresholds(samples);
    let tails = Tails::new(replicates, samples, &t)?;
    let mut rng = ChaCha8Rng::seed_from_u64(BAND_SEED);
    rng.set_stream(((replicates as u64) << 32) ^ samples as u64);
    let mut ranks = vec![0u32; replicates];
    let mut mins: Vec<f64> = (0..draws)
        .map(|_| {
            for r in ranks.iter_mut() {
                *r = rng.random_range(0..=samples as u32);
            }
            tails.min_p(&counts_below(&ranks, samples, &t))
        })
        .collect();
    mins.sort_by(f64::total_cmp);
    let quantile = |alpha: f64| mins[((alpha * draws as f64).floor() as usize).min(draws - 1)];
    let alpha = 1.0 - level;
    let gamma = quantile(alpha);
    let family = family.max(1);
    let family_gamma = quantile(alpha / family as f64);
    let rf = replicates as f64;
    let z: Vec<f64> = t
        .iter()
        .map(|&tj| tj as f64 / (samples + 1) as f64)
        .collect();
    // Inside at pointwise level `g`: P(X <= c) >= g/2 and P(X >= c) >= g/2.
    let edges = |g: f64| -> (Vec<f64>, Vec<f64>) {
        (0..t.len())
            .map(|j| {
                let lo = (0..=replicates)
                    .find(|&c| 2.0 * tails.below[j][c] >= g)
                    .unwrap_or(0);
                let hi = (0..=replicates)
                    .rev()
                    .find(|&c| 2.0 * tails.above[j][c] >= g)
                    .unwrap_or(replicates);
                (lo as f64 / rf - z[j], hi as f64 / rf - z[j])
            })
            .unzip()
    };
    let (lower, upper) = edges(gamma);
    let (family_lower, family_upper) = edges(family_gamma);
    Ok(Band {
        level,
        adjusted_level: gamma,
        family_adjusted_level: family_gamma,
        family,
        draws,
        thresholds: t,
        z,
        lower,
        upper,
        family_lower,
        family_upper,
    })
}

/// Where ranks leave a band: the ECDF difference at each threshold, the smallest pointwise tail
/// probability (the band is left when it is below `band.adjusted_level`), and the fractional
/// ranks `z` where the ECDF difference is outside.
pub struct EcdfCheck {
    pub diff: Vec<f64>,
    pub min_p: f64,
    pub outside_at: Vec<f64>,
}

pub fn check(ranks: &[u32], samples: usize, band: &Band) -> Result<EcdfCheck> {
    let tails = Tails::new(ranks.len(), samples, &band.thresholds)?;
    let counts = counts_below(ranks, samples, &band.thresholds);
    let rf = ranks.len() as f64;
    let mut diff = Vec::with_capacity(counts.len());
    let mut outside_at = Vec::new();
    for (j, &c) in counts.iter().enumerate() {
        diff.push(c as f64 / rf - band.z[j]);
        if tails.p(j, c) < band.adjusted_level {
            outside_at.push(band.z[j]);
        }
    }
    Ok(EcdfCheck {
        diff,
        min_p: tails.min_p(&counts),
        outside_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binomial_tails_match_direct_sums() {
        let (n, p) = (12usize, 0.3);
        let (below, above) = binomial_tails(n, p);
        let choose = |n: usize, k: usize| -> f64 {
            (0..k).fold(1.0, |a, i| a * (n - i) as f64 / (i + 1) as f64)
        };
        let pmf: Vec<f64> = (0..=n)
            .map(|k| choose(n, k) * p.powi(k as i32) * (1.0 - p).powi((n - k) as i32))
            .collect();
        for k in 0..=n {
            let b: f64 = pmf[..=k].iter().sum();
            let a: f64 = pmf[k..].iter().sum();
            assert!((below[k] - b).abs() < 1e-12, "{k}");
            assert!((above[k] - a).abs() < 1e-12, "{k}");
        }
        // Large n does not underflow.
        let (b, a) = binomial_tails(20000, 0.5);
        assert!((b[10000] + a[10000] - 1.0 - (b[10000] - b[9999])).abs() < 1e-9);
    }

    #[test]
    fn thresholds_cover_the_ranks() {
        assert_eq!(thresholds(3), vec![1, 2, 3]);
        let t = thresholds(1000);
        assert_eq!(t.len(), MAX_POINTS);
        assert!(t.windows(2).all(|w| w[0] < w[1]));
        assert!(t[0] >= 1 && *t.last().unwrap() <= 1000);
    }

    /// The band holds uniform ranks with about its level: over 400 fresh uniform rank samples
    /// (not the band's own draws), the fraction that stays inside is 0.95 within 3 binomial sd
    /// (sd = 0.011), and pointwise the adjusted level is below 0.05 (a simultaneous band is wider
    /// than a pointwise one).
    #[test]
    fn band_has_its_simultaneous_level() {
        let (r, l) = (100usize, 15usize);
        let b = band(r, l, 0.95, 1, 2000).unwrap();
        assert!(
            b.adjusted_level < 0.05 && b.adjusted_level > 0.001,
            "{}",
            b.adjusted_level
        );
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        let trials = 400;
        let inside = (0..trials)
            .filter(|_| {
                let ranks: Vec<u32> = (0..r).map(|_| rng.random_range(0..=l as u32)).collect();
                check(&ranks, l, &b).unwrap().outside_at.is_empty()
            })
            .count() as f64
            / trials as f64;
        let sd = (0.95f64 * 0.05 / trials as f64).sqrt();
        assert!((inside - 0.95).abs() < 3.0 * sd, "inside {inside}");
        // The same band for the same sizes, whatever else happened before.
        assert_eq!(band(r, l, 0.95, 1, 2000).unwrap(), b);
        for j in 0..b.z.len() {
            assert!(b.lower[j] < 0.0 && b.upper[j] > 0.0);
        }
        // The family-wise band over 10 statistics is the wider one.
        let f = band(r, l, 0.95, 10, 2000).unwrap();
        assert_eq!(f.adjusted_level, b.adjusted_level);
        assert!(f.family_adjusted_level < f.adjusted_level);
        for j in 0..f.z.len() {
            assert!(f.family_lower[j] <= f.lower[j] && f.family_upper[j] >= f.upper[j]);
        }
    }

    /// Broken companion: ranks piled in the middle (an over-dispersed sampler) leave the band.
    #[test]
    fn band_rejects_non_uniform_ranks() {
        let (r, l) = (100usize, 15usize);
        let b = band(r, l, 0.95, 1, 2000).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let ranks: Vec<u32> = (0..r).map(|_| rng.random_range(4..=11u32)).collect();
        let c = check(&ranks, l, &b).unwrap();
        assert!(!c.outside_at.is_empty());
        assert!(c.min_p < b.adjusted_level);
    }
}
