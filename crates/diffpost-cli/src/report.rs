//! `diffpost report`: what a trained prior does on its own: a grid of unconditional samples
//! (probability-flow ODE, Heun, EDM schedule) and the held-out EDM denoising loss per sigma.

use std::path::Path;

use anyhow::Result;
use candle_core::Device;
use diffpost::imaging::save_grid;
use diffpost::rng::SampleStreams;
use diffpost::sampler::diffusion::{self, DiffusionConfig, Solver};
use diffpost::sampler::Silent;
use serde_json::json;

pub fn run(model: &Path, data: &Path, out: &Path, n: usize, steps: usize) -> Result<()> {
    let model = crate::demo_images::shipped(model);
    let prior = diffpost::nn::model_folder::load(&model, &Device::Cpu)?;
    let shape = prior.image_shape();
    std::fs::create_dir_all(out)?;
    let (smin, smax) = prior.sigma_range();
    let cfg = DiffusionConfig {
        init_method: Solver::Heun,
        steps,
        sigma_max: Some(smax),
        sigma_min: Some(smin),
        rho: 7.0,
    };
    let s = diffusion::sample(&prior, &cfg, &mut SampleStreams::range(0, n), &Silent)?;
    let rows: Vec<Vec<f64>> = s.samples.to_vec2()?;
    save_grid(
        &out.join("unconditional.png"),
        &rows,
        shape,
        8.min(n),
        -1.0,
        1.0,
    )?;
    let data = crate::demo_images::shipped(data);
    let images = diffpost::nn::load_images_npy(&data)?;
    let sigmas = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0];
    let losses = diffpost::nn::held_out_loss_per_sigma(&prior, &images, &sigmas, 0)?;
    let mut md = String::from("| sigma | held-out EDM loss |\n|---|---|\n");
    for (s, l) in sigmas.iter().zip(&losses) {
        md.push_str(&format!("| {s} | {l:.4} |\n"));
    }
    let rep = json!({
        "model": model, "held_out": data, "held_out_images": images.dims()[0],
        "unconditional": { "file": "unconditional.png", "n": n, "sampler": "probability-flow ODE, Heun", "steps": steps, "score_evals": s.score_evals },
        "loss_per_sigma": sigmas.iter().zip(&losses).map(|(s, l)| json!({"sigma": s, "loss": l})).collect::<Vec<_>>(),
        "loss": "EDM loss lambda(sigma) * mean squared error per pixel, lambda = (sigma^2 + 0.25)/(0.5 sigma)^2",
    });
    diffpost::io::write_bytes(
        &out.join("report.json"),
        serde_json::to_string_pretty(&rep)?.as_bytes(),
    )?;
    diffpost::io::write_bytes(&out.join("loss_per_sigma.md"), md.as_bytes())?;
    print!("{md}");
    println!(
        "unconditional samples: {}",
        out.join("unconditional.png").display()
    );
    Ok(())
}
