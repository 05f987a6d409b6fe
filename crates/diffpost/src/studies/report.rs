//! `diffpost report`: what a trained prior does on its own: a grid of unconditional samples
//! (probability-flow ODE, Heun, EDM schedule) and the held-out EDM denoising loss per sigma.

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use serde_json::json;

use super::{rows, shipped};
use crate::imaging::save_grid;
use crate::operator::Identity;
use crate::rng::SampleStreams;
use crate::run::{ProblemParts, RunContext};
use crate::sampler::diffusion::{DiffusionConfig, Solver};
use crate::sampler::spec::SamplerSpec;
use crate::sampler::Silent;
use crate::Result;

/// The noise levels of the held-out loss.
pub const SIGMAS: [f64; 8] = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0];

/// `diffpost report`'s options.
#[derive(Debug, Clone)]
pub struct Opts {
    pub model: PathBuf,
    pub data: PathBuf,
    pub out: PathBuf,
    /// Unconditional samples.
    pub n: usize,
    /// Heun steps (2 steps - 1 evaluations).
    pub steps: usize,
}

/// The report.
pub struct Report {
    /// Held-out loss per sigma of [`SIGMAS`].
    pub losses: Vec<f64>,
    /// `loss_per_sigma.md` (also printed).
    pub markdown: String,
    /// `report.json`.
    pub json: serde_json::Value,
    pub unconditional: PathBuf,
}

/// Writes `unconditional.png`, `report.json` and `loss_per_sigma.md` into `out`; `log` gets the
/// printed lines.
pub fn run(o: &Opts, log: &mut dyn FnMut(&str)) -> Result<Report> {
    let model = shipped(&o.model);
    let prior = crate::nn::model_folder::load(&model, &Device::Cpu)?;
    let shape = prior.image_shape();
    std::fs::create_dir_all(&o.out)?;
    let (smin, smax) = prior.sigma_range();
    let sampler = SamplerSpec::Prior(DiffusionConfig {
        init_method: Solver::Heun,
        steps: o.steps,
        sigma_max: Some(smax),
        sigma_min: Some(smin),
        rho: 7.0,
    });
    // The prior sampler never looks at the measurement: any problem of the prior's dimension.
    let (op, y) = (
        Identity::new(prior.dim()),
        Tensor::zeros(prior.dim(), candle_core::DType::F64, &Device::Cpu)?,
    );
    let s = RunContext::new(ProblemParts::denoiser(&prior, &op, &y, 1.0), &sampler)?
        .sample_batch(&mut SampleStreams::range(0, o.n), &Silent)?;
    let unconditional = o.out.join("unconditional.png");
    save_grid(
        &unconditional,
        &rows(&s.samples)?,
        shape,
        8.min(o.n),
        -1.0,
        1.0,
    )?;
    let data = shipped(&o.data);
    let images = crate::nn::load_images_npy(&data)?;
    let losses = crate::nn::held_out_loss_per_sigma(&prior, &images, &SIGMAS, 0)?;
    let mut md = String::from("| sigma | held-out EDM loss |\n|---|---|\n");
    for (s, l) in SIGMAS.iter().zip(&losses) {
        md.push_str(&format!("| {s} | {l:.4} |\n"));
    }
    let rep = json!({
        "model": model, "held_out": data, "held_out_images": images.dims()[0],
        "unconditional": { "file": "unconditional.png", "n": o.n, "sampler": "probability-flow ODE, Heun", "steps": o.steps, "score_evals": s.score_evals },
        "loss_per_sigma": SIGMAS.iter().zip(&losses).map(|(s, l)| json!({"sigma": s, "loss": l})).collect::<Vec<_>>(),
        "loss": "EDM loss lambda(sigma) * mean squared error per pixel, lambda = (sigma^2 + 0.25)/(0.5 sigma)^2",
    });
    super::write_json(&o.out, "report.json", &rep)?;
    super::write_text(&o.out, "loss_per_sigma.md", &md)?;
    super::log_text(log, &md);
    log(&format!(
        "unconditional samples: {}",
        unconditional.display()
    ));
    Ok(Report {
        losses,
        markdown: md,
        json: rep,
        unconditional,
    })
}
