//! Outputs of an image run: PNG grids (ground truth, the measurement's pseudo-inverse, samples,
//! posterior mean, per-pixel standard deviation) and `metrics.json` (PSNR, SSIM, L2 of every sample
//! and of the mean, and the data-consistency residual `|y - A x| / (eta sqrt(m))`).

use std::path::Path;

use anyhow::Result;
use candle_core::{Device, Tensor};
use diffpost::imaging::save_grid;
use serde_json::{json, Value};

use diffpost::config::LoadedProblem as Loaded;

/// Images live in [-1, 1]: the PSNR/SSIM data range is 2.
const RANGE: f64 = 2.0;

fn quality(x: &[f64], truth: Option<&[f64]>, shape: [usize; 3]) -> Result<Value> {
    Ok(match truth {
        Some(t) => json!(diffpost::image_metrics::quality(x, t, shape, RANGE)?),
        None => Value::Null,
    })
}

/// Residual `|y - A x| / (eta sqrt(m))` per row of `x: [B, d]`.
fn residuals(l: &Loaded, x: &Tensor) -> Result<Vec<f64>> {
    let problem =
        diffpost::sampler::Problem::new(l.prior.denoiser.as_ref(), l.op.as_ref(), &l.y, l.eta)?;
    Ok(problem.normalized_residuals(x)?)
}

/// Writes the grids and returns the metrics JSON (also written to `out/metrics.json`).
pub fn write(l: &Loaded, samples: &Tensor, out: &Path) -> Result<Value> {
    let shape = l.image_shape().expect("image run");
    let d = l.d;
    let rows: Vec<Vec<f64>> = samples.to_dtype(candle_core::DType::F64)?.to_vec2()?;
    let (mean, std) = diffpost::image_metrics::mean_std(&rows);
    let pinv: Vec<f64> =
        l.op.pseudo_inverse(&l.y.unsqueeze(0)?)?
            .flatten_all()?
            .to_vec1()?;
    let truth = l.truth.as_deref();
    let std_max = std.iter().cloned().fold(0.0, f64::max).max(1e-12);

    // One summary row: truth | pseudo-inverse | mean | std | first samples.
    let mut row: Vec<Vec<f64>> = Vec::new();
    if let Some(t) = truth {
        row.push(t.to_vec());
    }
    row.push(pinv.iter().map(|v| v.clamp(-1.0, 1.0)).collect());
    row.push(mean.clone());
    row.push(std.iter().map(|s| s / std_max * 2.0 - 1.0).collect());
    row.extend(rows.iter().take(6).cloned());
    let cols = row.len();
    save_grid(&out.join("grid.png"), &row, shape, cols, -1.0, 1.0)?;
    let show: Vec<Vec<f64>> = rows.iter().take(64).cloned().collect();
    save_grid(
        &out.join("samples.png"),
        &show,
        shape,
        8.min(show.len()),
        -1.0,
        1.0,
    )?;
    save_grid(
        &out.join("mean.png"),
        std::slice::from_ref(&mean),
        shape,
        1,
        -1.0,
        1.0,
    )?;
    save_grid(
        &out.join("std.png"),
        std::slice::from_ref(&std),
        shape,
        1,
        0.0,
        std_max,
    )?;
    save_grid(
        &out.join("pinv.png"),
        std::slice::from_ref(&pinv),
        shape,
        1,
        -1.0,
        1.0,
    )?;
    if let Some(t) = truth {
        save_grid(&out.join("truth.png"), &[t.to_vec()], shape, 1, -1.0, 1.0)?;
    }

    let res = residuals(l, samples)?;
    let mean_t = Tensor::from_vec(mean.clone(), (1, d), &Device::Cpu)?;
    let per_sample: Vec<Value> = rows
        .iter()
        .zip(&res)
        .map(|(r, res)| Ok(json!({ "quality": quality(r, truth, shape)?, "residual": res })))
        .collect::<Result<_>>()?;
    let psnrs: Vec<f64> = per_sample
        .iter()
        .filter_map(|v| v["quality"]["psnr"].as_f64())
        .collect();
    let metrics = json!({
        "note": "images in [-1, 1], PSNR/SSIM with data range 2; residual = |y - A x| / (eta sqrt(m)), about 1 when consistent with the noise",
        "grid.png": "truth (if known) | pseudo-inverse | posterior mean | per-pixel std (scaled to its max) | samples",
        "std_max": std_max,
        "mean": { "quality": quality(&mean, truth, shape)?, "residual": residuals(l, &mean_t)?[0] },
        "pseudo_inverse": { "quality": quality(&pinv, truth, shape)? },
        "samples_mean_psnr": if psnrs.is_empty() { Value::Null } else { json!(psnrs.iter().sum::<f64>() / psnrs.len() as f64) },
        "samples_mean_residual": res.iter().sum::<f64>() / res.len() as f64,
        "samples": per_sample,
    });
    diffpost::io::write_bytes(
        &out.join("metrics.json"),
        serde_json::to_string_pretty(&metrics)?.as_bytes(),
    )?;
    Ok(metrics)
}
