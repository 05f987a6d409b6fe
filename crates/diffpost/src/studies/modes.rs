//! `diffpost modes`: the posterior's modes on a real image prior. Half of a held-out MNIST digit
//! is hidden; SMC (populations of particles over tempered posteriors), Algorithm 2 warm-started
//! from DPS, and DPS sample its posterior under the shipped UNet. Each sample is grouped by the
//! class of its nearest labelled held-out digit; the figure shows, per method, the samples sorted
//! by group, and `modes.md`/`modes.json` the share of every group (for SMC also the summed
//! weights of its weighted particles).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{Device, Tensor};
use serde_json::json;

use super::{dps_then_local, image_local_spec, image_operator, rows, shipped};
use crate::image_metrics::nearest_labels;
use crate::imaging::save_grid;
use crate::rng::SampleStreams;
use crate::run::{NoProgress, ProblemParts, RunContext, RunPlan};
use crate::sampler::spec::SamplerSpec;
use crate::{Error, Result};

/// Measurement noise on the [-1, 1] scale.
pub const ETA: f64 = 0.05;

/// `diffpost modes`'s options.
#[derive(Debug, Clone)]
pub struct Opts {
    pub model: PathBuf,
    pub data: PathBuf,
    pub labels: PathBuf,
    pub out: PathBuf,
    /// Row of the held-out digits.
    pub index: usize,
    /// Samples per method.
    pub n: usize,
    /// SMC particles (one population); `n` when not given.
    pub particles: Option<usize>,
    pub dps_steps: usize,
    pub moves_per_stage: usize,
    /// More `[sampler]` settings of SMC (TOML `key = value` pairs separated by `;`), overriding
    /// this study's.
    pub smc: String,
    /// Which half is hidden: left, right, top, bottom.
    pub hide: String,
}

/// A group's share: `(label, share of samples, summed weight of the weighted particles)`.
pub type Share = (usize, f64, Option<f64>);

/// The study's result.
pub struct Modes {
    /// `modes.md` (also printed).
    pub markdown: String,
    /// `modes.json`.
    pub json: serde_json::Value,
    /// The figure.
    pub figure: PathBuf,
}

/// Mean RMS pixel distance between pairs of samples (0 when they are copies of one another).
pub fn spread(r: &[Vec<f64>]) -> f64 {
    let (mut sum, mut pairs) = (0.0, 0usize);
    for i in 0..r.len() {
        for j in i + 1..r.len() {
            let d2: f64 = r[i].iter().zip(&r[j]).map(|(a, b)| (a - b) * (a - b)).sum();
            sum += (d2 / r[i].len() as f64).sqrt();
            pairs += 1;
        }
    }
    if pairs == 0 {
        0.0
    } else {
        sum / pairs as f64
    }
}

/// Shares of each label (sorted by share) and, given weights, their summed weight.
pub fn shares(labels: &[usize], weights: Option<&[f64]>) -> Vec<Share> {
    let mut v: Vec<Share> = (0..10)
        .map(|c| {
            let n = labels.iter().filter(|&&l| l == c).count() as f64 / labels.len() as f64;
            let w = weights.map(|w| {
                labels
                    .iter()
                    .zip(w)
                    .filter(|(l, _)| **l == c)
                    .map(|(_, w)| w)
                    .sum::<f64>()
            });
            (c, n, w)
        })
        .filter(|(_, n, w)| *n > 0.0 || w.is_some_and(|w| w > 0.0))
        .collect();
    v.sort_by(|a, b| b.1.partial_cmp(&a.1).expect("finite"));
    v
}

/// The hidden box `(top, left, height, width)` of `hide` on an `h x w` image.
fn hidden_box(hide: &str, h: usize, w: usize) -> Result<(usize, usize, usize, usize)> {
    Ok(match hide {
        "left" => (0, 0, h, w / 2),
        "right" => (0, w - w / 2, h, w / 2),
        "top" => (0, 0, h / 2, w),
        "bottom" => (h - h / 2, 0, h / 2, w),
        other => {
            return Err(Error::param(
                "--hide",
                format!("{other}: expected left, right, top or bottom"),
            ))
        }
    })
}

/// SMC's spec: one population, ULA moves on the score at 0.05, `extra` (`key = value; ...`)
/// overriding.
fn smc_spec(moves_per_stage: usize, extra: &str) -> Result<SamplerSpec> {
    let mut t = json!({
        "kind": "smc",
        "moves_per_stage": moves_per_stage,
        "final_moves": 4 * moves_per_stage,
        "score_sigma": 0.05,
        "final_denoise": true,
        "init_steps": 200,
    });
    let extra = toml::from_str::<toml::Table>(&extra.replace(';', "\n"))
        .map_err(|e| Error::param("--smc", e.to_string()))?;
    let extra = serde_json::to_value(extra).map_err(|e| Error::param("--smc", e.to_string()))?;
    if let (Some(t), Some(extra)) = (t.as_object_mut(), extra.as_object()) {
        t.extend(extra.clone());
    }
    super::spec(t)
}

/// Runs the study; `log` gets the printed lines.
pub fn run(o: &Opts, log: &mut dyn FnMut(&str)) -> Result<Modes> {
    let t0 = Instant::now();
    let prior = crate::nn::model_folder::load(&shipped(&o.model), &Device::Cpu)?;
    let shape = prior.image_shape();
    let data = shipped(&o.data);
    let labels_path = shipped(&o.labels);
    let all = crate::nn::load_images_npy(&data)?
        .flatten_from(1)?
        .to_dtype(candle_core::DType::F64)?;
    let all: Vec<Vec<f64>> = all.to_vec2()?;
    let labels: Vec<usize> = crate::io::read_array(&labels_path, "labels")?
        .to_dtype(candle_core::DType::F64)?
        .to_vec1::<f64>()?
        .iter()
        .map(|&v| v as usize)
        .collect();
    if o.index >= all.len() || labels.len() != all.len() {
        return Err(Error::param(
            "--index",
            format!(
                "{} out of range or labels do not match {}",
                o.index,
                data.display()
            ),
        ));
    }
    // References for grouping: every labelled digit but the truth.
    let (refs, ref_labels): (Vec<Vec<f64>>, Vec<usize>) = all
        .iter()
        .zip(&labels)
        .enumerate()
        .filter(|(i, _)| *i != o.index)
        .map(|(_, (r, l))| (r.clone(), *l))
        .unzip();
    let truth = all[o.index].clone();
    let [_, h, w] = shape;
    let (top, left, bh, bw) = hidden_box(&o.hide, h, w)?;
    let op = image_operator(&format!(
        "kind = \"box\"\ntop = {top}\nleft = {left}\nheight = {bh}\nwidth = {bw}"
    ))?
    .build(shape)?;
    let eta = ETA;
    let y = crate::config::simulate(op.as_ref(), &truth, eta, o.index as u64)?;
    let yt = Tensor::from_vec(y, op.out_dim(), &Device::Cpu)?;
    let parts = ProblemParts::denoiser(&prior, op.as_ref(), &yt, eta);
    let smc_spec = smc_spec(o.moves_per_stage, &o.smc)?;
    let local_spec = image_local_spec(o.dps_steps, 20, 0.2, true)?;
    log(&format!(
        "diffpost modes: MNIST test digit {} (label {}), {} half hidden, eta = {eta}; {} samples per method",
        o.index, labels[o.index], o.hide, o.n
    ));

    // SMC: one population of n particles from the diffusion start, ULA moves on the score at 0.05.
    let t = Instant::now();
    let particles = o.particles.unwrap_or(o.n);
    let smc = RunContext::new(parts, &smc_spec)?.run(&RunPlan::new(particles, 0), &NoProgress)?;
    let t_smc = t.elapsed().as_secs_f64();
    // DPS, then Algorithm 2 from each sample's own DPS output (as demo --images).
    let r = dps_then_local(
        parts,
        &local_spec,
        &mut SampleStreams::new(0, 0..o.n as u64),
    )?;
    let (t_dps, t_loc) = (r.dps_wall_s, r.wall_s);
    let (dps_evals, loc_evals) = (r.dps_evals, r.local.score_evals);

    let (smc_rows, dps_rows, loc_rows) =
        (rows(&smc.samples)?, rows(&r.dps)?, rows(&r.local.samples)?);
    let weighted = smc
        .weighted
        .as_ref()
        .ok_or_else(|| Error::param("--smc", "SMC returned no weighted particles"))?;
    let wp = rows(&weighted.particles)?;
    let ww: Vec<f64> = weighted
        .weights
        .to_dtype(candle_core::DType::F64)?
        .to_vec1()?;
    let groups = |r: &[Vec<f64>]| nearest_labels(r, &refs, &ref_labels);
    let (g_smc, g_dps, g_loc, g_w) = (
        groups(&smc_rows)?,
        groups(&dps_rows)?,
        groups(&loc_rows)?,
        groups(&wp)?,
    );
    let smc_shares = shares(&g_smc, None);
    let weight_shares = shares(&g_w, Some(&ww));
    let lz = smc.diagnostics.log_evidence();
    let stages = smc
        .info
        .smc
        .as_ref()
        .map(|t| t[0].lambdas.len())
        .unwrap_or(0);

    // Figure: truth | measurement, then per method its samples sorted by group (first 16).
    let pinv: Vec<f64> = op
        .pseudo_inverse(&yt.unsqueeze(0)?)?
        .flatten_all()?
        .to_vec1()?;
    let cols = 16.min(o.n);
    let sorted = |r: &[Vec<f64>], g: &[usize]| -> Vec<Vec<f64>> {
        let order: Vec<usize> = shares(g, None).iter().map(|s| s.0).collect();
        let mut idx: Vec<usize> = (0..r.len()).collect();
        idx.sort_by_key(|&i| order.iter().position(|&c| c == g[i]).unwrap_or(10));
        // Spread the columns over the sorted samples so that every group shows in its share.
        (0..cols)
            .map(|k| r[idx[k * r.len() / cols]].clone())
            .collect()
    };
    let mut grid = vec![
        truth.clone(),
        pinv.iter().map(|v| v.clamp(-1.0, 1.0)).collect(),
    ];
    grid.resize(cols, vec![-1.0; truth.len()]);
    grid.extend(sorted(&smc_rows, &g_smc));
    grid.extend(sorted(&loc_rows, &g_loc));
    grid.extend(sorted(&dps_rows, &g_dps));
    std::fs::create_dir_all(&o.out)?;
    let figure = o.out.join("modes.png");
    save_grid(&figure, &grid, shape, cols, -1.0, 1.0)?;

    let fmt = |v: &[Share]| -> String {
        v.iter()
            .take(5)
            .map(|(c, n, w)| match w {
                Some(w) => format!("{c}: {:.0}% (weight {:.2})", 100.0 * n, w),
                None => format!("{c}: {:.0}%", 100.0 * n),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let md = format!(
        "MNIST test digit {} (label {}), {} half hidden, eta = {eta}, {} samples per method (`diffpost modes --index {} --hide {} --particles {particles} --moves-per-stage {}{}`, {:.0} s).\n\
         Samples grouped by the label of their nearest labelled held-out digit.\n\n\
         | method | samples | evaluations per sample | wall s | spread | groups (share of samples) |\n|---|---:|---:|---:|---:|---|\n\
         | SMC ({stages} stages, log p(y) = {}) | {particles} | {:.0} | {:.0} | {:.3} | {} |\n\
         | SMC weighted particles (sum of weights) | | | | | {} |\n\
         | Alg. 2 warm-started from DPS | {} | {} | {:.0} | {:.3} | {} |\n\
         | DPS | {} | {} | {:.0} | {:.3} | {} |\n\n\
         Spread: mean RMS pixel distance between two samples of the method (0 for copies).\n",
        o.index,
        labels[o.index],
        o.hide,
        o.n,
        o.index,
        o.hide,
        o.moves_per_stage,
        if o.smc.is_empty() {
            String::new()
        } else {
            format!(" --smc '{}'", o.smc)
        },
        t0.elapsed().as_secs_f64(),
        lz.map(|v| format!("{v:.1}")).unwrap_or_default(),
        smc.diagnostics.score_evals_per_sample.mean,
        t_smc,
        spread(&smc_rows),
        fmt(&smc_shares),
        fmt(&weight_shares),
        o.n,
        loc_evals,
        t_loc,
        spread(&loc_rows),
        fmt(&shares(&g_loc, None)),
        o.n,
        dps_evals,
        t_dps,
        spread(&dps_rows),
        fmt(&shares(&g_dps, None)),
    );
    super::log_text(log, &md);
    super::write_text(&o.out, "modes.md", &md)?;
    let js = |v: &[Share]| -> serde_json::Value {
        json!(v
            .iter()
            .map(|(c, n, w)| json!({"label": c, "share": n, "weight": w}))
            .collect::<Vec<_>>())
    };
    let json = json!({
        "index": o.index, "label": labels[o.index], "hide": o.hide, "eta": eta, "n": o.n,
        "grid": "row 1: truth | pseudo-inverse; then SMC, Alg. 2, DPS samples sorted by group",
        "smc": {"particles": particles, "spread": spread(&smc_rows), "groups": js(&smc_shares), "weighted_groups": js(&weight_shares), "log_evidence": lz,
                "evals": smc.diagnostics.score_evals_per_sample.mean, "stages": stages, "wall_s": t_smc},
        "alg2": {"spread": spread(&loc_rows), "groups": js(&shares(&g_loc, None)), "evals": loc_evals, "wall_s": t_loc},
        "dps": {"spread": spread(&dps_rows), "groups": js(&shares(&g_dps, None)), "evals": dps_evals, "wall_s": t_dps},
    });
    super::write_json(&o.out, "modes.json", &json)?;
    log(&format!("\nfigure {}", figure.display()));
    Ok(Modes {
        markdown: md,
        json,
        figure,
    })
}
