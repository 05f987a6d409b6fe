//! `diffpost demo --images`: random inpainting, 2x super-resolution, Gaussian deblurring and 4x MRI
//! on a few held-out digits with DPS and Algorithm 2 warm-started from DPS (each posterior sample's
//! own DPS output is its warm start, as in the paper's image experiments). Writes a grid per task
//! and `metrics.json`; the table is printed.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use serde_json::json;

use super::{dps_then_local, image_local_spec, image_operator, mean_rows, rows, shipped};
use crate::image_metrics::{psnr, ssim};
use crate::imaging::save_grid;
use crate::nn::EdmDenoiser;
use crate::rng::SampleStreams;
use crate::run::ProblemParts;
use crate::{Error, Result};

/// Measurement noise on the [-1, 1] scale.
pub const ETA: f64 = 0.05;

/// `diffpost demo --images`'s options.
#[derive(Debug, Clone)]
pub struct Opts {
    pub model: PathBuf,
    pub data: PathBuf,
    pub out: PathBuf,
    /// Samples per image.
    pub n: usize,
    /// Digits per task.
    pub count: usize,
    pub dps_steps: usize,
}

/// One method on one task, averaged over its digits.
#[derive(Debug, Clone)]
pub struct MethodRow {
    pub method: String,
    /// PSNR and SSIM of the posterior mean.
    pub psnr_mean: f64,
    pub ssim_mean: f64,
    /// Mean PSNR of the samples (NaN for the pseudo-inverse).
    pub psnr_samples: f64,
    /// Summed over the digits.
    pub wall_s: f64,
}

/// The demo's result.
pub struct DemoImages {
    pub tasks: Vec<(String, Vec<MethodRow>)>,
    /// `metrics.json`.
    pub metrics: serde_json::Value,
}

/// Loads a model folder of the studies (a shipped one by default), with the hint how to train
/// one when there is none.
pub fn load_model(model: &Path) -> Result<(PathBuf, EdmDenoiser)> {
    let dir = shipped(model);
    if !dir.join("config.json").exists() {
        return Err(Error::File {
            path: dir,
            reason: "no trained model (config.json + weights.safetensors). Train one with: diffpost train --data ../shared/data/mnist_train.npy --config models/mnist.toml --out runs/mnist, then pass --model runs/mnist".into(),
        });
    }
    let prior = crate::nn::model_folder::load(&dir, &Device::Cpu)?;
    Ok((dir, prior))
}

/// Runs the demo; `log` gets the printed lines as they come.
pub fn run(o: &Opts, log: &mut dyn FnMut(&str)) -> Result<DemoImages> {
    let (model_dir, prior) = load_model(&o.model)?;
    let shape = prior.image_shape();
    let data = shipped(&o.data);
    let eta = ETA;
    let tasks = [
        ("inpaint", "kind = \"inpaint\"\nrate = 0.7\nseed = 1"),
        ("superres2x", "kind = \"superres\"\nfactor = 2"),
        ("deblur", "kind = \"blur\"\nkernel_size = 9\nstd = 2.0"),
        (
            "mri4x",
            "kind = \"mri\"\nacceleration = 4\ncenter_lines = 4\nseed = 1",
        ),
    ];
    let tasks = tasks
        .iter()
        .map(|(name, t)| Ok((*name, image_operator(t)?)))
        .collect::<Result<Vec<_>>>()?;
    let spec = image_local_spec(o.dps_steps, 20, 0.2, true)?;
    log(&format!(
        "diffpost demo --images: {} held-out digits x {} samples, eta = {eta} on the [-1, 1] scale, model {}",
        o.count,
        o.n,
        model_dir.display()
    ));
    log(&format!(
        "{:<11} {:<22} {:>10} {:>10} {:>13} {:>8}",
        "task", "method", "PSNR(mean)", "SSIM(mean)", "PSNR(samples)", "wall s"
    ));
    let mut all = Vec::new();
    let mut results = Vec::new();
    for (name, op_spec) in &tasks {
        let op = op_spec.build(shape)?;
        let mut rows_out: Vec<MethodRow> = Vec::new();
        let (mut acc_pinv, mut acc_dps, mut acc_loc) = (vec![], vec![], vec![]);
        let mut grid = Vec::new();
        for idx in 0..o.count {
            let truth =
                crate::config::read_truth(&data, Some(shape), prior.dim(), idx).map_err(|e| {
                    Error::File {
                        path: data.clone(),
                        reason: e.to_string(),
                    }
                })?;
            let y = crate::config::simulate(op.as_ref(), &truth, eta, idx as u64)?;
            let yt = Tensor::from_vec(y, op.out_dim(), &Device::Cpu)?;
            let parts = ProblemParts::denoiser(&prior, op.as_ref(), &yt, eta);
            let pinv: Vec<f64> = op
                .pseudo_inverse(&yt.unsqueeze(0)?)?
                .flatten_all()?
                .to_vec1()?;
            // DPS, then Algorithm 2 warm-started from each sample's own DPS output, continuing
            // the same per-sample streams. The chains sample the posterior of p smoothed at
            // 0.05; D(x, 0.05) at the end removes that smoothing noise (`final_denoise`).
            let mut s = SampleStreams::new(1000 + idx as u64, 0..o.n as u64);
            let r = dps_then_local(parts, &spec, &mut s)?;
            let dv = rows(&r.dps)?;
            let lv = rows(&r.local.samples)?;
            let q = |x: &[f64]| -> Result<(f64, f64)> {
                Ok((psnr(x, &truth, 2.0)?, ssim(x, &truth, shape, 2.0)?))
            };
            let (dm, lm) = (mean_rows(&dv), mean_rows(&lv));
            let avg_psnr = |v: &[Vec<f64>]| -> Result<f64> {
                Ok(v.iter()
                    .map(|r| psnr(r, &truth, 2.0))
                    .collect::<Result<Vec<_>>>()?
                    .iter()
                    .sum::<f64>()
                    / v.len() as f64)
            };
            let (pp, ps) = q(&pinv)?;
            acc_pinv.push((pp, ps, f64::NAN, 0.0));
            let (a, b) = q(&dm)?;
            acc_dps.push((a, b, avg_psnr(&dv)?, r.dps_wall_s));
            let (a, b) = q(&lm)?;
            acc_loc.push((a, b, avg_psnr(&lv)?, r.wall_s));
            grid.extend([
                truth.clone(),
                pinv.iter().map(|v| v.clamp(-1.0, 1.0)).collect(),
                dm,
                lm,
            ]);
            grid.extend(dv.iter().take(2).cloned());
            grid.extend(lv.iter().take(2).cloned());
        }
        let avg = |v: &[(f64, f64, f64, f64)]| {
            let n = v.len() as f64;
            (
                v.iter().map(|x| x.0).sum::<f64>() / n,
                v.iter().map(|x| x.1).sum::<f64>() / n,
                v.iter().map(|x| x.2).sum::<f64>() / n,
                v.iter().map(|x| x.3).sum::<f64>(),
            )
        };
        for (label, acc) in [
            ("pseudo-inverse", &acc_pinv),
            ("dps", &acc_dps),
            ("alg2 (warm: dps)", &acc_loc),
        ] {
            let (a, b, c, t) = avg(acc);
            rows_out.push(MethodRow {
                method: label.to_string(),
                psnr_mean: a,
                ssim_mean: b,
                psnr_samples: c,
                wall_s: t,
            });
            log(&format!(
                "{:<11} {:<22} {:>10.2} {:>10.3} {:>13} {:>8.1}",
                name,
                label,
                a,
                b,
                if c.is_nan() {
                    "-".to_string()
                } else {
                    format!("{c:.2}")
                },
                t
            ));
        }
        std::fs::create_dir_all(&o.out)?;
        save_grid(
            &o.out.join(format!("{name}.png")),
            &grid,
            shape,
            8,
            -1.0,
            1.0,
        )?;
        all.push(json!({
            "task": name, "operator": op.name(),
            "results": rows_out.iter().map(|r| json!({"method": r.method, "psnr_mean": r.psnr_mean, "ssim_mean": r.ssim_mean, "psnr_samples": if r.psnr_samples.is_nan() { serde_json::Value::Null } else { json!(r.psnr_samples) }, "wall_s": r.wall_s})).collect::<Vec<_>>(),
        }));
        results.push((name.to_string(), rows_out));
    }
    let m = json!({
        "eta": eta, "n_samples": o.n, "images": o.count, "dps_steps": o.dps_steps, "model": model_dir,
        "grid": "per image: truth | pseudo-inverse | DPS mean | Alg. 2 mean | 2 DPS samples | 2 Alg. 2 samples",
        "tasks": all,
    });
    super::write_json(&o.out, "metrics.json", &m)?;
    log(&format!("\ngrids and metrics.json in {}", o.out.display()));
    Ok(DemoImages {
        tasks: results,
        metrics: m,
    })
}
