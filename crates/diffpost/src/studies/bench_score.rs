//! `diffpost bench score`: one exact score evaluation of a random Gaussian mixture (full
//! covariances) on a batch, the median over repeats.

use std::time::Instant;

use candle_core::Device;
use serde_json::json;

use crate::prior::Denoiser;
use crate::rng::SampleStreams;
use crate::{Error, Result};

/// Times `repeats` score evaluations of a `k`-component mixture in dimension `d` on `batch`
/// points (after one warm-up that builds the cached precisions); returns the JSON the command
/// prints (median and minimum in ms, GEMM GFLOP/s at the median, threads).
pub fn run(d: usize, k: usize, batch: usize, repeats: usize) -> Result<serde_json::Value> {
    if d == 0 || k == 0 || batch == 0 || repeats == 0 {
        return Err(Error::param(
            "--d, --k, --batch and --repeats",
            "must be >= 1",
        ));
    }
    let inst = crate::problem::random_gmm_instance(d, 1, k, 0.1, 7)?;
    let x = SampleStreams::range(3, batch).randn(&[d], &Device::Cpu)?;
    let sigma = 0.5;
    let _ = inst.prior.score(&x, sigma)?; // warm-up (builds the cached precisions)
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t = Instant::now();
        let s = inst.prior.score(&x, sigma)?;
        let _ = s.sum_all()?.to_scalar::<f64>()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    let flops = 2.0 * (batch * k * d * d) as f64;
    Ok(json!({
        "bench": "gmm_score", "d": d, "k": k, "batch": batch, "cov": format!("{:?}", inst.prior.cov_kind()),
        "repeats": repeats, "median_ms": median, "min_ms": times[0], "gemm_gflops_at_median": flops / median / 1e6,
        "threads": rayon::current_num_threads(),
    }))
}
