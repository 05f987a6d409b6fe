//! The statistics ranked by a calibration: fixed random unit projections of `x`, the data misfit
//! `|y - A x|^2`, a few fixed coordinates ("pixels") and the mean of the hidden part.

use serde::{Deserialize, Serialize};

use crate::operator::LinearOperator;
use crate::rng::SampleStreams;
use crate::{Error, Result};

/// The stream (of the calibration's seed) that draws the projection directions.
pub const PROJECTION_STREAM: u64 = u64::MAX - 5;

/// Which statistics to rank.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StatisticsOptions {
    /// Fixed random unit directions `v` (drawn from stream [`PROJECTION_STREAM`] of the seed):
    /// statistics `v . x`.
    pub projections: usize,
    /// Fixed coordinates `x_j`, spread evenly over the hidden coordinates when the operator is a
    /// selection (mask, inpainting, box), else over all `d`.
    pub pixels: usize,
    /// The data misfit `|y - A x|^2` (for the truth: `eta^2 |xi|^2`).
    pub misfit: bool,
    /// The mean of `x` over the hidden coordinates (all coordinates when the operator is not a
    /// selection or hides none).
    pub hidden_mean: bool,
}

impl Default for StatisticsOptions {
    fn default() -> Self {
        Self {
            projections: 8,
            pixels: 4,
            misfit: true,
            hidden_mean: true,
        }
    }
}

/// One statistic `f(x)`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Statistic {
    /// `v . x` for the `index`-th projection direction.
    Projection { index: usize },
    /// `|y - A x|^2`.
    Misfit,
    /// `x_j`.
    Pixel { coordinate: usize },
    /// Mean of `x` over `coordinates` hidden ones (`hidden = false`: over all of `x`).
    HiddenMean { coordinates: usize, hidden: bool },
}

/// The statistics of one calibration, resolved for its model.
#[derive(Debug, Clone)]
pub struct Statistics {
    pub list: Vec<(String, Statistic)>,
    directions: Vec<Vec<f64>>,
    hidden: Vec<usize>,
}

impl Statistics {
    /// Resolves `opts` for a model of dimension `d` and operator `op`; directions from `seed`.
    pub fn new(opts: &StatisticsOptions, op: &dyn LinearOperator, seed: u64) -> Result<Self> {
        let d = op.in_dim();
        let mut list = Vec::new();
        let mut s = SampleStreams::new(seed, [PROJECTION_STREAM]);
        let mut directions = Vec::with_capacity(opts.projections);
        for k in 0..opts.projections {
            let mut v = s.normal_vec(d);
            let n = v.iter().map(|a| a * a).sum::<f64>().sqrt();
            v.iter_mut().for_each(|a| *a /= n);
            directions.push(v);
            list.push((format!("proj{k}"), Statistic::Projection { index: k }));
        }
        if opts.misfit {
            list.push(("misfit".into(), Statistic::Misfit));
        }
        // Hidden coordinates: the complement of a selection operator's observed ones.
        let hidden: Vec<usize> = match op.selection() {
            Some(sel) => {
                let mut seen = vec![false; d];
                for &i in sel {
                    if i < d {
                        seen[i] = true;
                    }
                }
                (0..d).filter(|&i| !seen[i]).collect()
            }
            None => Vec::new(),
        };
        let is_hidden = !hidden.is_empty();
        let pool: Vec<usize> = if is_hidden {
            hidden.clone()
        } else {
            (0..d).collect()
        };
        let p = opts.pixels.min(pool.len());
        let mut pixels: Vec<usize> = (0..p)
            .map(|j| pool[((2 * j + 1) * pool.len()) / (2 * p)])
            .collect();
        pixels.dedup();
        for j in pixels {
            list.push((format!("pixel{j}"), Statistic::Pixel { coordinate: j }));
        }
        let hidden = if is_hidden { hidden } else { (0..d).collect() };
        if opts.hidden_mean {
            let name = if is_hidden { "hidden_mean" } else { "mean" };
            list.push((
                name.into(),
                Statistic::HiddenMean {
                    coordinates: hidden.len(),
                    hidden: is_hidden,
                },
            ));
        }
        if list.is_empty() {
            return Err(Error::param(
                "statistics",
                "no statistic to rank: set projections or pixels >= 1, or misfit/hidden_mean",
            ));
        }
        Ok(Self {
            list,
            directions,
            hidden,
        })
    }

    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn names(&self) -> Vec<String> {
        self.list.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Every statistic of every row of `x` (`[n][d]`), `misfit[i]` being `|y - A x_i|^2`:
    /// `out[s][i]`.
    pub fn eval(&self, x: &[Vec<f64>], misfit: &[f64]) -> Vec<Vec<f64>> {
        self.list
            .iter()
            .map(|(_, s)| match s {
                Statistic::Projection { index } => {
                    let v = &self.directions[*index];
                    x.iter()
                        .map(|r| r.iter().zip(v).map(|(a, b)| a * b).sum())
                        .collect()
                }
                Statistic::Misfit => misfit.to_vec(),
                Statistic::Pixel { coordinate } => x.iter().map(|r| r[*coordinate]).collect(),
                Statistic::HiddenMean { .. } => x
                    .iter()
                    .map(|r| {
                        self.hidden.iter().map(|&j| r[j]).sum::<f64>() / self.hidden.len() as f64
                    })
                    .collect(),
            })
            .collect()
    }
}
