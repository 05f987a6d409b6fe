//! `diffpost tradeoff`: the paper's trade-off on our data. Algorithm 2 refines DPS reconstructions
//! (random inpainting, eta = 0.05) with annealed Langevin for increasing annealing time; for each
//! time: the mean L2 to the ground truth, and the sliced W2 (in pixels, 200 fixed directions)
//! between the set of reconstructions and held-out images, with the same distance for the ground
//! truths themselves as its floor. Writes a plot (PNG, plotters), a Markdown table and JSON.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use plotters::prelude::*;
use rayon::prelude::*;
use serde_json::json;

use super::{image_local_spec, image_operator, plot_err, shipped, warm_dps_spec, IMAGE_RANGE};
use crate::metrics::{random_directions, sliced_w2};
use crate::rng::SampleStreams;
use crate::run::{ProblemParts, RunContext};
use crate::sampler::Silent;
use crate::{Error, Result};

/// `diffpost tradeoff`'s options.
#[derive(Debug, Clone)]
pub struct Opts {
    pub model: PathBuf,
    pub data: PathBuf,
    pub out: PathBuf,
    /// Test digits (at most half of the data; the rest are the held-out set).
    pub images: usize,
    pub dps_steps: usize,
    /// Langevin steps per stage to try (0, DPS alone, is always included first).
    pub steps_per_stage: Vec<usize>,
    pub h_rel: f64,
    pub final_denoise: bool,
    /// Sampler seed (0: the streams of the documented figures).
    pub seed: u64,
}

/// One annealing time.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct TradeoffRow {
    pub steps_per_stage: usize,
    pub annealing_time: f64,
    /// Mean L2 distance to the ground truths.
    pub mean_l2: f64,
    /// Sliced W2 of the reconstructions to the held-out digits.
    pub sw2: f64,
}

/// The study's result.
pub struct Tradeoff {
    /// Sliced W2 of the ground truths themselves to the held-out digits.
    pub floor_sw2: f64,
    pub rows: Vec<TradeoffRow>,
    /// `tradeoff.md`.
    pub markdown: String,
}

/// Runs the study; `log` gets the printed lines as they come.
pub fn run(o: &Opts, log: &mut dyn FnMut(&str)) -> Result<Tradeoff> {
    if !(o.h_rel > 0.0 && o.h_rel.is_finite()) {
        return Err(Error::param(
            "--h-rel",
            format!("must be finite and > 0, got {}", o.h_rel),
        ));
    }
    let model = shipped(&o.model);
    let prior = crate::nn::model_folder::load(&model, &Device::Cpu)?;
    let shape = prior.image_shape();
    let d = prior.dim();
    let data = shipped(&o.data);
    let all = crate::nn::load_images_npy(&data)?
        .flatten_from(1)?
        .to_dtype(candle_core::DType::F64)?;
    let n_all = all.dims()[0];
    let k = o.images.min(n_all / 2);
    let truth = all.narrow(0, 0, k)?;
    let held_out: Vec<f64> = all.narrow(0, k, n_all - k)?.flatten_all()?.to_vec1()?;
    let eta = 0.05;
    let op = image_operator("kind = \"inpaint\"\nrate = 0.7\nseed = 1")?.build(shape)?;
    // Each image has its own measurement and its own posterior chain (one sample per image).
    let dirs = random_directions(d, 200, 7);
    let truth_rows: Vec<Vec<f64>> = truth.to_vec2()?;
    let floor = sliced_w2(&truth.flatten_all()?.to_vec1::<f64>()?, &held_out, d, &dirs)?;
    // Images run in parallel (each has its own streams: results do not depend on the order).
    let problems: Vec<Tensor> = truth_rows
        .iter()
        .enumerate()
        .map(|(i, t)| -> Result<Tensor> {
            let y = crate::config::simulate(op.as_ref(), t, eta, i as u64)?;
            Ok(Tensor::from_vec(y, op.out_dim(), &Device::Cpu)?)
        })
        .collect::<Result<_>>()?;
    // One DPS run per image, shared by every annealing time: the warm starts. Algorithm 2 then
    // runs on streams of its own and clips them to the data range (its spec's `clip`).
    let spec_for = |m: usize| image_local_spec(o.dps_steps, m, o.h_rel, o.final_denoise);
    let dps_spec = warm_dps_spec(&spec_for(1)?)?;
    let x0s: Vec<Tensor> = (0..k)
        .into_par_iter()
        .map(|i| -> Result<Tensor> {
            let parts = ProblemParts::denoiser(&prior, op.as_ref(), &problems[i], eta);
            let s = RunContext::new(parts, &dps_spec)?.sample_batch(
                &mut SampleStreams::new(500 + 1000 * o.seed, [i as u64]),
                &Silent,
            )?;
            Ok(s.samples)
        })
        .collect::<Result<_>>()?;
    let mut rows = Vec::new();
    for &m in std::iter::once(&0usize).chain(o.steps_per_stage.iter()) {
        let spec = if m == 0 { None } else { Some(spec_for(m)?) };
        let outs: Vec<(Vec<f64>, f64)> = (0..k)
            .into_par_iter()
            .map(|i| -> Result<(Vec<f64>, f64)> {
                let Some(spec) = &spec else {
                    // DPS alone, clipped as Algorithm 2 starts from it.
                    let x0 = x0s[i].clamp(IMAGE_RANGE[0], IMAGE_RANGE[1])?;
                    return Ok((x0.flatten_all()?.to_vec1::<f64>()?, 0.0));
                };
                let parts = ProblemParts::denoiser(&prior, op.as_ref(), &problems[i], eta);
                let out = RunContext::new(parts, spec)?
                    .with_warm_start(x0s[i].clone())?
                    .sample_batch(
                        &mut SampleStreams::new(900 + 1000 * o.seed, [i as u64]),
                        &Silent,
                    )?;
                let time = out
                    .info
                    .steps
                    .as_ref()
                    .map(|h| h.iter().sum::<f64>() * m as f64)
                    .unwrap_or(0.0);
                Ok((out.samples.flatten_all()?.to_vec1::<f64>()?, time))
            })
            .collect::<Result<_>>()?;
        let time = outs.last().map(|o| o.1).unwrap_or(0.0);
        let recon: Vec<f64> = outs.into_iter().flat_map(|o| o.0).collect();
        let l2: f64 = truth_rows
            .iter()
            .enumerate()
            .map(|(i, t)| {
                t.iter()
                    .zip(&recon[i * d..(i + 1) * d])
                    .map(|(a, b)| (a - b) * (a - b))
                    .sum::<f64>()
                    .sqrt()
            })
            .sum::<f64>()
            / k as f64;
        let sw = sliced_w2(&recon, &held_out, d, &dirs)?;
        log(&format!("steps/stage {m:>4}  annealing time {time:>9.5}  mean L2 {l2:.3}  sliced W2 to held-out {sw:.4} (truths: {floor:.4})"));
        rows.push(TradeoffRow {
            steps_per_stage: m,
            annealing_time: time,
            mean_l2: l2,
            sw2: sw,
        });
    }
    std::fs::create_dir_all(&o.out)?;
    let mut md = format!(
        "Random inpainting (70% missing), eta = 0.05, {k} test digits, one posterior sample each; DPS ({} steps) then Algorithm 2\n\
         (5 stages, sigma = 0.1, score at sigma 0.05, h_rel = {}, final denoise: {}, sampler seed {}) for increasing steps per stage. Sliced W2 in pixels\n\
         (200 directions) to {} held-out digits; the ground truths themselves are at {floor:.4}.\n\n| steps/stage | annealing time | mean L2 to truth | sliced W2 to held-out |\n|---|---|---|---|\n",
        o.dps_steps,
        o.h_rel,
        if o.final_denoise { "D(x, 0.05)" } else { "none" },
        o.seed,
        n_all - k
    );
    for r in &rows {
        md.push_str(&format!(
            "| {} {} | {:.5} | {:.3} | {:.4} |\n",
            r.steps_per_stage,
            if r.steps_per_stage == 0 {
                "(DPS only)"
            } else {
                ""
            },
            r.annealing_time,
            r.mean_l2,
            r.sw2
        ));
    }
    super::write_text(&o.out, "tradeoff.md", &md)?;
    let js = json!({ "seed": o.seed, "floor_sw2": floor, "rows": rows });
    super::write_json(&o.out, "tradeoff.json", &js)?;
    plot(&o.out.join("tradeoff.png"), &rows, floor)?;
    log(&format!(
        "wrote {}/tradeoff.{{png,md,json}}",
        o.out.display()
    ));
    Ok(Tradeoff {
        floor_sw2: floor,
        rows,
        markdown: md,
    })
}

fn plot(path: &Path, rows: &[TradeoffRow], floor: f64) -> Result<()> {
    let labels = super::register_font();
    let tmp = path.with_extension("tmp.png");
    let err = |e: &dyn std::fmt::Display| plot_err(path, e);
    {
        let root = BitMapBackend::new(&tmp, (900, 380)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let (l, r) = root.split_horizontally(450);
        let xs: Vec<f64> = rows.iter().map(|r| r.steps_per_stage as f64).collect();
        let xmax = xs.iter().cloned().fold(1.0, f64::max) * 1.05;
        for (area, sw, name) in [
            (&l, false, "mean L2 to ground truth"),
            (&r, true, "sliced W2 to held-out"),
        ] {
            let ys: Vec<f64> = rows
                .iter()
                .map(|r| if sw { r.sw2 } else { r.mean_l2 })
                .collect();
            let lo = ys.iter().cloned().fold(f64::INFINITY, f64::min).min(if sw {
                floor
            } else {
                f64::INFINITY
            });
            let hi = ys
                .iter()
                .cloned()
                .fold(f64::NEG_INFINITY, f64::max)
                .max(if sw { floor } else { f64::NEG_INFINITY });
            let pad = 0.1 * (hi - lo).max(1e-6);
            let mut b = ChartBuilder::on(area);
            b.margin(12)
                .x_label_area_size(if labels { 35 } else { 5 })
                .y_label_area_size(if labels { 55 } else { 5 });
            if labels {
                b.caption(name, ("sans-serif", 18));
            }
            let mut chart = b
                .build_cartesian_2d(-0.5..xmax, (lo - pad)..(hi + pad))
                .map_err(|e| err(&e))?;
            let mut mesh = chart.configure_mesh();
            if labels {
                mesh.x_desc("Langevin steps per stage (0 = DPS)");
            } else {
                mesh.disable_x_axis().disable_y_axis();
            }
            mesh.draw().map_err(|e| err(&e))?;
            chart
                .draw_series(LineSeries::new(
                    xs.iter().cloned().zip(ys.iter().cloned()),
                    &BLUE,
                ))
                .map_err(|e| err(&e))?;
            chart
                .draw_series(
                    xs.iter()
                        .zip(&ys)
                        .map(|(x, y)| Circle::new((*x, *y), 4, BLUE.filled())),
                )
                .map_err(|e| err(&e))?;
            if sw {
                chart
                    .draw_series(LineSeries::new(vec![(-0.5, floor), (xmax, floor)], &RED))
                    .map_err(|e| err(&e))?;
            }
        }
        root.present().map_err(|e| err(&e))?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}
