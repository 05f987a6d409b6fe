//! Every sampler on a log-concave, non-Gaussian instance (`common::logconcave_bench`: d = 10, m = 5,
//! prior `0.3 N(mu, S) + 0.7 N(-mu, S)` with `mu^T S^-1 mu = 0.81`), n = 2000.
//!
//! Tolerances are stated against the noise floor (`common`): `floor_mean` and `floor_sd` of each
//! metric over 10 fresh exact sets of 2000 rows. Each check has a companion that runs it with one
//! broken ingredient and asserts that the same metric then exceeds the same tolerance.
//! Run with `--nocapture` to see the measured ratios.

#[macro_use]
mod common;

use std::sync::OnceLock;

use common::*;
use diffpost::metrics::{MetricFloors, Metrics};

// ---------------------------------------------------------------------------------------------
// Biased baselines: regression bounds on the sliced-W2 ratio to the floor.
//
// These methods do not sample p(x|y) exactly even with exact scores, so the bound is a
// regression bound: about 20% above the ratio measured with these seeds at the time of writing
// (stated per method), so that a change making a baseline worse (or a broken ingredient) is
// caught, while an improvement passes. On this smaller, weakly bimodal instance ALD happens to be
// close to the floor, DAPS and DPS are further off than on the Gaussian one.

// ALD bound 1.3x; DAPS (measured 2.11x) 2.5x; DPS (measured 8.18x) 9.5x.
sampler_suite!(
    logconcave_bench,
    "logconcave",
    ald = 1.3,
    daps = 2.5,
    dps = 9.5
);
