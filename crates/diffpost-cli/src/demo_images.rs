//! `diffpost demo --images`: random inpainting, 2x super-resolution, Gaussian deblurring and 4x MRI
//! on a few held-out digits with DPS and Algorithm 2 warm-started from DPS (each posterior sample's
//! own DPS output is its warm start, as in the paper's image experiments). Prints a table and
//! writes grids and `metrics.json`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use diffpost::image_metrics::{psnr, ssim};
use diffpost::imaging::save_grid;
use diffpost::operator::image::ImageOperatorSpec;
use diffpost::prior::Denoiser;
use diffpost::rng::SampleStreams;
use diffpost::run::{ProblemParts, RunContext};
use diffpost::sampler::annealed::AnnealedConfig;
use diffpost::sampler::local::LocalConfig;
use diffpost::sampler::settings::{ScoreLevel, Step};
use diffpost::sampler::spec::SamplerSpec;
use diffpost::sampler::{dps, Silent};
use serde_json::json;

/// Finds a shipped file: as given, else relative to the repository this binary was built from.
pub fn shipped(p: &Path) -> PathBuf {
    if p.exists() || p.is_absolute() {
        return p.to_path_buf();
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(p);
    if repo.exists() {
        repo
    } else {
        p.to_path_buf()
    }
}

fn mean_rows(x: &[Vec<f64>]) -> Vec<f64> {
    let d = x[0].len();
    (0..d)
        .map(|j| x.iter().map(|r| r[j]).sum::<f64>() / x.len() as f64)
        .collect()
}

/// The image problem `(prior, A, y, eta)` as a run sees it.
pub fn parts<'a>(
    prior: &'a dyn Denoiser,
    op: &'a dyn diffpost::operator::LinearOperator,
    y: &'a Tensor,
    eta: f64,
) -> ProblemParts<'a> {
    ProblemParts::denoiser(prior, op, y, eta)
}

/// Algorithm 2 as the image demo and the trade-off run it: warm start `x0` (a DPS sample clipped
/// to the data range) taken as a measurement with `sigma = 0.1`, chains started at `x0`, 5 stages
/// of `steps_per_stage` steps, the prior score at 0.05 (the network's usable level).
pub fn image_local_spec(steps_per_stage: usize, h_rel: f64, final_denoise: bool) -> SamplerSpec {
    SamplerSpec::Local(LocalConfig {
        sigma: Some(0.1),
        start_at_x0: true,
        annealed: AnnealedConfig {
            stages: 5,
            steps_per_stage,
            step: Step::relative(h_rel),
            score: ScoreLevel {
                score_sigma: Some(0.05),
                l_prior: None,
            },
            final_denoise,
            ..Default::default()
        },
        ..Default::default()
    })
}

pub struct Opts {
    pub model: PathBuf,
    pub data: PathBuf,
    pub out: PathBuf,
    pub n: usize,
    pub count: usize,
    pub dps_steps: usize,
}

pub fn run(o: &Opts) -> Result<()> {
    let model_dir = shipped(&o.model);
    if !model_dir.join("config.json").exists() {
        bail!(
            "{}: no trained model (config.json + weights.safetensors). Train one with: diffpost train --data ../shared/data/mnist_train.npy --config models/mnist.toml --out runs/mnist, then pass --model runs/mnist",
            model_dir.display()
        );
    }
    let prior = diffpost::nn::model_folder::load(&model_dir, &Device::Cpu)?;
    let shape = prior.image_shape();
    let data = shipped(&o.data);
    let eta = 0.05;
    let tasks: [(&str, ImageOperatorSpec); 4] = [
        (
            "inpaint",
            toml::from_str("kind = \"inpaint\"\nrate = 0.7\nseed = 1")?,
        ),
        (
            "superres2x",
            toml::from_str("kind = \"superres\"\nfactor = 2")?,
        ),
        (
            "deblur",
            toml::from_str("kind = \"blur\"\nkernel_size = 9\nstd = 2.0")?,
        ),
        (
            "mri4x",
            toml::from_str("kind = \"mri\"\nacceleration = 4\ncenter_lines = 4\nseed = 1")?,
        ),
    ];
    println!(
        "diffpost demo --images: {} held-out digits x {} samples, eta = {eta} on the [-1, 1] scale, model {}",
        o.count,
        o.n,
        model_dir.display()
    );
    println!(
        "{:<11} {:<22} {:>10} {:>10} {:>13} {:>8}",
        "task", "method", "PSNR(mean)", "SSIM(mean)", "PSNR(samples)", "wall s"
    );
    let mut all = Vec::new();
    for (name, spec) in &tasks {
        let op = spec.build(shape)?;
        let mut rows: Vec<(String, f64, f64, f64, f64)> = Vec::new();
        let (mut acc_pinv, mut acc_dps, mut acc_loc) = (vec![], vec![], vec![]);
        let mut grid = Vec::new();
        for idx in 0..o.count {
            let truth = diffpost::config::read_truth(&data, Some(shape), prior.dim(), idx)
                .with_context(|| format!("{}", data.display()))?;
            let y = diffpost::config::simulate(op.as_ref(), &truth, eta, idx as u64)?;
            let yt = Tensor::from_vec(y, op.out_dim(), &Device::Cpu)?;
            let parts = parts(&prior, op.as_ref(), &yt, eta);
            let pinv: Vec<f64> = op
                .pseudo_inverse(&yt.unsqueeze(0)?)?
                .flatten_all()?
                .to_vec1()?;
            let t = Instant::now();
            // DPS, then Algorithm 2 warm-started from each sample's own DPS output, continuing
            // the same per-sample streams.
            let mut s = SampleStreams::new(1000 + idx as u64, 0..o.n as u64);
            let dps_spec = SamplerSpec::Dps(dps::DpsConfig {
                steps: o.dps_steps,
                ..Default::default()
            });
            let d = RunContext::new(parts, &dps_spec)?.sample_batch(&mut s, &Silent)?;
            let t_dps = t.elapsed().as_secs_f64();
            let t = Instant::now();
            // The chains sample the posterior of p smoothed at 0.05; D(x, 0.05) at the end
            // removes that smoothing noise (see AnnealedConfig::final_denoise).
            let l = RunContext::new(parts, &image_local_spec(20, 0.2, true))?
                .with_warm_start(d.samples.clamp(-1.0, 1.0)?)?
                .sample_batch(&mut s, &Silent)?;
            let t_loc = t.elapsed().as_secs_f64() + t_dps;
            let dv: Vec<Vec<f64>> = d.samples.to_vec2()?;
            let lv: Vec<Vec<f64>> = l.samples.to_vec2()?;
            let q = |x: &[f64]| -> Result<(f64, f64)> {
                Ok((psnr(x, &truth, 2.0)?, ssim(x, &truth, shape, 2.0)?))
            };
            let (dm, lm) = (mean_rows(&dv), mean_rows(&lv));
            let avg_psnr = |v: &[Vec<f64>]| -> Result<f64> {
                Ok(v.iter()
                    .map(|r| psnr(r, &truth, 2.0))
                    .collect::<diffpost::Result<Vec<_>>>()?
                    .iter()
                    .sum::<f64>()
                    / v.len() as f64)
            };
            let (pp, ps) = q(&pinv)?;
            acc_pinv.push((pp, ps, f64::NAN, 0.0));
            let (a, b) = q(&dm)?;
            acc_dps.push((a, b, avg_psnr(&dv)?, t_dps));
            let (a, b) = q(&lm)?;
            acc_loc.push((a, b, avg_psnr(&lv)?, t_loc));
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
            rows.push((label.to_string(), a, b, c, t));
            println!(
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
            );
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
            "results": rows.iter().map(|r| json!({"method": r.0, "psnr_mean": r.1, "ssim_mean": r.2, "psnr_samples": if r.3.is_nan() { serde_json::Value::Null } else { json!(r.3) }, "wall_s": r.4})).collect::<Vec<_>>(),
        }));
    }
    let m = json!({
        "eta": eta, "n_samples": o.n, "images": o.count, "dps_steps": o.dps_steps, "model": model_dir,
        "grid": "per image: truth | pseudo-inverse | DPS mean | Alg. 2 mean | 2 DPS samples | 2 Alg. 2 samples",
        "tasks": all,
    });
    diffpost::io::write_bytes(
        &o.out.join("metrics.json"),
        serde_json::to_string_pretty(&m)?.as_bytes(),
    )?;
    println!("\ngrids and metrics.json in {}", o.out.display());
    Ok(())
}
