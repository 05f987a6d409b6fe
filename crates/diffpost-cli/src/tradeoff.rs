//! `diffpost tradeoff`: the paper's trade-off on our data. Algorithm 2 refines DPS reconstructions
//! (random inpainting, eta = 0.05) with annealed Langevin for increasing annealing time; for each
//! time: the mean L2 to the ground truth, and the sliced W2 (in pixels, 200 fixed directions)
//! between the set of reconstructions and held-out images, with the same distance for the ground
//! truths themselves as its floor. Writes a plot (PNG, plotters), a Markdown table and JSON.

use std::path::Path;

use anyhow::Result;
use candle_core::{Device, Tensor};
use diffpost::metrics::{random_directions, sliced_w2};
use diffpost::operator::image::ImageOperatorSpec;
use diffpost::rng::SampleStreams;
use diffpost::run::RunContext;
use diffpost::sampler::spec::SamplerSpec;
use diffpost::sampler::{dps, Silent};
use plotters::prelude::*;
use rayon::prelude::*;
use serde_json::json;

pub struct Opts<'a> {
    pub model: &'a Path,
    pub data: &'a Path,
    pub out: &'a Path,
    pub images: usize,
    pub dps_steps: usize,
    pub steps_per_stage: Vec<usize>,
    pub h_rel: f64,
    pub final_denoise: bool,
    /// Sampler seed (0: the streams of the documented figures).
    pub seed: u64,
}

pub fn run(o: &Opts) -> Result<()> {
    if !(o.h_rel > 0.0 && o.h_rel.is_finite()) {
        anyhow::bail!("--h-rel must be finite and > 0, got {}", o.h_rel);
    }
    let model = crate::demo_images::shipped(o.model);
    let prior = diffpost::nn::model_folder::load(&model, &Device::Cpu)?;
    let shape = prior.image_shape();
    let d = prior.dim();
    let data = crate::demo_images::shipped(o.data);
    let all = diffpost::nn::load_images_npy(&data)?
        .flatten_from(1)?
        .to_dtype(candle_core::DType::F64)?;
    let n_all = all.dims()[0];
    let k = o.images.min(n_all / 2);
    let truth = all.narrow(0, 0, k)?;
    let held_out: Vec<f64> = all.narrow(0, k, n_all - k)?.flatten_all()?.to_vec1()?;
    let eta = 0.05;
    let spec: ImageOperatorSpec = toml::from_str("kind = \"inpaint\"\nrate = 0.7\nseed = 1")?;
    let op = spec.build(shape)?;
    // Each image has its own measurement and its own posterior chain (one sample per image).
    let dirs = random_directions(d, 200, 7);
    let truth_rows: Vec<Vec<f64>> = truth.to_vec2()?;
    let floor = sliced_w2(&truth.flatten_all()?.to_vec1::<f64>()?, &held_out, d, &dirs)?;
    // Images run in parallel (each has its own streams: results do not depend on the order).
    let problems: Vec<Tensor> = truth_rows
        .iter()
        .enumerate()
        .map(|(i, t)| -> Result<Tensor> {
            let y = diffpost::config::simulate(op.as_ref(), t, eta, i as u64)?;
            Ok(Tensor::from_vec(y, op.out_dim(), &Device::Cpu)?)
        })
        .collect::<Result<_>>()?;
    let x0s: Vec<Tensor> = (0..k)
        .into_par_iter()
        .map(|i| -> Result<Tensor> {
            let parts = crate::demo_images::parts(&prior, op.as_ref(), &problems[i], eta);
            let spec = SamplerSpec::Dps(dps::DpsConfig {
                steps: o.dps_steps,
                ..Default::default()
            });
            let s = RunContext::new(parts, &spec)?.sample_batch(
                &mut SampleStreams::new(500 + 1000 * o.seed, [i as u64]),
                &Silent,
            )?;
            Ok(s.samples.clamp(-1.0, 1.0)?)
        })
        .collect::<Result<_>>()?;
    let mut rows = Vec::new();
    for &m in std::iter::once(&0usize).chain(o.steps_per_stage.iter()) {
        let outs: Vec<(Vec<f64>, f64)> = (0..k)
            .into_par_iter()
            .map(|i| -> Result<(Vec<f64>, f64)> {
                if m == 0 {
                    return Ok((x0s[i].flatten_all()?.to_vec1::<f64>()?, 0.0));
                }
                let parts = crate::demo_images::parts(&prior, op.as_ref(), &problems[i], eta);
                let spec = crate::demo_images::image_local_spec(m, o.h_rel, o.final_denoise);
                let out = RunContext::new(parts, &spec)?
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
        println!("steps/stage {m:>4}  annealing time {time:>9.5}  mean L2 {l2:.3}  sliced W2 to held-out {sw:.4} (truths: {floor:.4})");
        rows.push((m, time, l2, sw));
    }
    std::fs::create_dir_all(o.out)?;
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
    for (m, t, l2, sw) in &rows {
        md.push_str(&format!(
            "| {m} {} | {t:.5} | {l2:.3} | {sw:.4} |\n",
            if *m == 0 { "(DPS only)" } else { "" }
        ));
    }
    diffpost::io::write_bytes(&o.out.join("tradeoff.md"), md.as_bytes())?;
    let js = json!({ "seed": o.seed, "floor_sw2": floor, "rows": rows.iter().map(|r| json!({"steps_per_stage": r.0, "annealing_time": r.1, "mean_l2": r.2, "sw2": r.3})).collect::<Vec<_>>() });
    diffpost::io::write_bytes(
        &o.out.join("tradeoff.json"),
        serde_json::to_string_pretty(&js)?.as_bytes(),
    )?;
    plot(&o.out.join("tradeoff.png"), &rows, floor)?;
    println!("wrote {}/tradeoff.{{png,md,json}}", o.out.display());
    Ok(())
}

/// Registers DejaVu Sans as the plots' "sans-serif" where the system has it; false without one
/// (plots are then drawn without labels).
pub(crate) fn register_font() -> bool {
    let font = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
    ]
    .iter()
    .find_map(|p| std::fs::read(p).ok());
    match font {
        Some(bytes) => plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            Box::leak(bytes.into_boxed_slice()),
        )
        .is_ok(),
        None => false,
    }
}

fn plot(path: &Path, rows: &[(usize, f64, f64, f64)], floor: f64) -> Result<()> {
    let labels = register_font();
    let tmp = path.with_extension("tmp.png");
    {
        let root = BitMapBackend::new(&tmp, (900, 380)).into_drawing_area();
        root.fill(&WHITE)?;
        let (l, r) = root.split_horizontally(450);
        let xs: Vec<f64> = rows.iter().map(|r| r.0 as f64).collect();
        let xmax = xs.iter().cloned().fold(1.0, f64::max) * 1.05;
        for (area, idx, name) in [
            (&l, 2usize, "mean L2 to ground truth"),
            (&r, 3usize, "sliced W2 to held-out"),
        ] {
            let ys: Vec<f64> = rows
                .iter()
                .map(|r| if idx == 2 { r.2 } else { r.3 })
                .collect();
            let lo = ys
                .iter()
                .cloned()
                .fold(f64::INFINITY, f64::min)
                .min(if idx == 3 { floor } else { f64::INFINITY });
            let hi = ys
                .iter()
                .cloned()
                .fold(f64::NEG_INFINITY, f64::max)
                .max(if idx == 3 { floor } else { f64::NEG_INFINITY });
            let pad = 0.1 * (hi - lo).max(1e-6);
            let mut b = ChartBuilder::on(area);
            b.margin(12)
                .x_label_area_size(if labels { 35 } else { 5 })
                .y_label_area_size(if labels { 55 } else { 5 });
            if labels {
                b.caption(name, ("sans-serif", 18));
            }
            let mut chart = b.build_cartesian_2d(-0.5..xmax, (lo - pad)..(hi + pad))?;
            let mut mesh = chart.configure_mesh();
            if labels {
                mesh.x_desc("Langevin steps per stage (0 = DPS)");
            } else {
                mesh.disable_x_axis().disable_y_axis();
            }
            mesh.draw()?;
            chart.draw_series(LineSeries::new(
                xs.iter().cloned().zip(ys.iter().cloned()),
                &BLUE,
            ))?;
            chart.draw_series(
                xs.iter()
                    .zip(&ys)
                    .map(|(x, y)| Circle::new((*x, *y), 4, BLUE.filled())),
            )?;
            if idx == 3 {
                chart.draw_series(LineSeries::new(vec![(-0.5, floor), (xmax, floor)], &RED))?;
            }
        }
        root.present()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}
