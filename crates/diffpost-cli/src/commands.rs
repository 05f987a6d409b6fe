//! The subcommands: parse arguments, call the library, write outputs and print.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use diffpost::commit::{Replace, Staging};
use diffpost::config::ProblemConfig;
use diffpost::metrics::exact_reference;
use diffpost::prior::Denoiser;
use diffpost::rng::SampleStreams;
use diffpost::run::summary::{merge as merge_shards, RunSummary};
use diffpost::run::{NoProgress, ProblemParts, Progress, RunContext, RunPlan, Shard};
use diffpost::sampler::spec::{SamplerSpec, KINDS};
use diffpost::sampler::Weighted;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

/// A terminal progress bar over sample-steps.
struct Bar(ProgressBar);

impl Progress for Bar {
    fn start(&self, total: u64) {
        self.0.set_length(total);
    }
    fn advance(&self, delta: u64) {
        self.0.inc(delta);
    }
}

fn bar(name: &str) -> Bar {
    let b = ProgressBar::new(1);
    b.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{bar:40}] {percent}% eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    b.set_message(name.to_string());
    Bar(b)
}

/// What a run folder may hold: a previous run's outputs are replaced as a whole, anything else
/// in the folder makes the run refuse it (before any work).
const RUN_OUTPUTS: Replace = Replace::Outputs {
    names: &[
        "samples.npy",
        "particles.npy",
        "weights.npy",
        "summary.json",
        "metrics.json",
    ],
    suffixes: &[".png"],
};

/// Takes the output folder (validated, locked, staged) and reports what it cleaned up.
pub fn stage(out: &Path, replace: Replace) -> Result<Staging> {
    let s = Staging::begin(out, replace)?;
    for n in s.notes() {
        eprintln!("note: {n}");
    }
    Ok(s)
}

/// Writes `samples.npy`, `summary.json` and, for weighted samplers (SMC), `particles.npy` and
/// `weights.npy` into the staging folder.
fn write_run(
    dir: &Staging,
    samples: &Tensor,
    weighted: Option<&Weighted>,
    summary: &RunSummary,
) -> Result<()> {
    dir.write_npy("samples.npy", samples)?;
    if let Some(w) = weighted {
        dir.write_npy("particles.npy", &w.particles)?;
        dir.write_npy("weights.npy", &w.weights)?;
    }
    dir.write_bytes(
        "summary.json",
        serde_json::to_string_pretty(summary)?.as_bytes(),
    )?;
    Ok(())
}

/// `diffpost sample`: the whole run, or shard `shard` of it; `out` overrides `[run] out`.
pub fn sample(
    config_path: &Path,
    quiet: bool,
    device: &Device,
    shard: Option<&str>,
    out: Option<&Path>,
) -> Result<()> {
    // Everything is parsed and validated before anything heavy is loaded.
    let cfg = ProblemConfig::read(config_path)?;
    let shard = shard.map(Shard::parse).transpose()?.unwrap_or(Shard::WHOLE);
    let plan = RunPlan {
        n: cfg.run.n,
        seed: cfg.run.seed,
        batch: cfg.run.batch,
        shard,
    };
    plan.layout(&cfg.sampler)
        .with_context(|| format!("{}: --shard", config_path.display()))?;
    let out_dir = match out {
        Some(o) => o.to_path_buf(),
        None => cfg.resolve(&cfg.run.out),
    };
    if !quiet {
        for w in &cfg.warnings {
            eprintln!("warning: {}: {w}", config_path.display());
        }
    }
    // The output folder is checked and locked before any work.
    let staging = stage(&out_dir, RUN_OUTPUTS)?;
    let t_load = Instant::now();
    let l = cfg.load(device)?;
    let load_s = t_load.elapsed().as_secs_f64();
    let t_ctx = Instant::now();
    let ctx = RunContext::new(l.parts(), &cfg.sampler)
        .with_context(|| format!("{}", config_path.display()))?;
    let context_s = t_ctx.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let out = if quiet {
        ctx.run(&plan, &NoProgress)?
    } else {
        let b = bar(cfg.sampler.name());
        let o = ctx.run(&plan, &b);
        b.0.finish_and_clear();
        o?
    };
    let wall = t0.elapsed().as_secs_f64();
    let mut summary = l.summary(&out, wall, device);
    // Where the time outside the sampler goes (wall_s is the sampling alone).
    summary.extra.insert(
        "timing_s".into(),
        json!({ "load": load_s, "build_run": context_s, "sample": wall }),
    );
    let image_metrics = match l.image_shape() {
        Some(_) => Some(crate::image_out::write(&l, &out.samples, staging.path())?),
        None => None,
    };
    if image_metrics.is_some() {
        summary
            .extra
            .insert("image_metrics".into(), json!("metrics.json"));
    }
    write_run(&staging, &out.samples, out.weighted.as_ref(), &summary)?;
    staging.commit()?;
    for w in &summary.health_warnings {
        eprintln!("warning: {w}");
    }
    if !quiet {
        if let Some(m) = &image_metrics {
            eprintln!(
                "posterior mean: PSNR {} SSIM {}; pseudo-inverse PSNR {}; grids in {}",
                m["mean"]["quality"]["psnr"],
                m["mean"]["quality"]["ssim"],
                m["pseudo_inverse"]["quality"]["psnr"],
                out_dir.display()
            );
        }
        let shard_note = if shard.count > 1 {
            format!(
                " (shard {}/{}: samples {}..{})",
                shard.index, shard.count, out.layout.sample_range[0], out.layout.sample_range[1]
            )
        } else {
            String::new()
        };
        eprintln!(
            "{}: {} samples (d = {}) in {:.2} s, {} score evaluations per sample{} -> {}",
            cfg.sampler.name(),
            out.layout.sample_range[1] - out.layout.sample_range[0],
            l.d,
            wall,
            summary.score_evals_per_sample,
            shard_note,
            out_dir.display()
        );
    }
    Ok(())
}

/// `diffpost merge`: checks that `dirs` are the shards of one run and writes the whole run.
pub fn merge(dirs: &[PathBuf], out: &Path) -> Result<()> {
    let staging = stage(out, RUN_OUTPUTS)?;
    let mut parts = Vec::with_capacity(dirs.len());
    let mut weighted = Vec::with_capacity(dirs.len());
    for d in dirs {
        let sp = d.join("summary.json");
        let text = std::fs::read_to_string(&sp)
            .with_context(|| format!("{}: cannot read shard summary", sp.display()))?;
        let s: RunSummary = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a diffpost summary", sp.display()))?;
        let x = diffpost::io::read_array(&d.join("samples.npy"), "shard samples")?;
        let w = if d.join("weights.npy").exists() {
            Some((
                diffpost::io::read_array(&d.join("particles.npy"), "shard particles")?,
                diffpost::io::read_array(&d.join("weights.npy"), "shard weights")?,
            ))
        } else {
            None
        };
        weighted.push(w);
        parts.push((s, x, d.display().to_string()));
    }
    // Order of the shards as merge will put them.
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by_key(|&i| parts[i].0.run.shard.index);
    let (summary, samples) = merge_shards(parts)?;
    let weighted = if weighted.iter().all(|w| w.is_some()) && !weighted.is_empty() {
        let (p, w): (Vec<Tensor>, Vec<Tensor>) = order
            .iter()
            .map(|&i| weighted[i].clone().expect("all present"))
            .unzip();
        Some(Weighted {
            particles: Tensor::cat(&p, 0)?,
            weights: Tensor::cat(&w, 0)?,
        })
    } else if weighted.iter().any(|w| w.is_some()) {
        bail!("some shards have weights.npy and others not: not shards of one run");
    } else {
        None
    };
    write_run(&staging, &samples, weighted.as_ref(), &summary)?;
    staging.commit()?;
    println!(
        "merged {} shards: {} samples (d = {}) -> {}",
        dirs.len(),
        summary.n,
        summary.d,
        out.display()
    );
    Ok(())
}

fn vec_tensor(v: &[f64]) -> Result<Tensor> {
    Ok(Tensor::from_vec(v.to_vec(), v.len(), &Device::Cpu)?)
}

/// A problem folder is replaced only with `--force` (its earlier runs go with it).
fn problem_replace(force: bool) -> Replace<'static> {
    if force {
        Replace::Any
    } else {
        Replace::Never {
            allow_with: "pass --force to replace the whole folder (with any runs inside it)",
        }
    }
}

pub fn problem_gmm(
    d: usize,
    m: usize,
    k: usize,
    eta: f64,
    seed: u64,
    out: &Path,
    force: bool,
) -> Result<()> {
    diffpost::problem::check_gmm_instance_size(d, m, k)?;
    let staging = stage(out, problem_replace(force))?;
    let inst = diffpost::problem::random_gmm_instance(d, m, k, eta, seed)?;
    inst.prior.write_npz(staging.path().join("prior.npz"))?;
    let a_rows: Vec<f64> = inst.a.transpose().iter().copied().collect();
    staging.write_npy("A.npy", &Tensor::from_vec(a_rows, (m, d), &Device::Cpu)?)?;
    staging.write_npy("x_true.npy", &vec_tensor(inst.x_true.as_slice())?)?;
    staging.write_npy("y.npy", &vec_tensor(inst.y.as_slice())?)?;
    let toml = format!(
        "# Random instance: diffpost problem gmm --d {d} --m {m} --k {k} --eta {eta} --seed {seed}\n\
         [prior]\nkind = \"gmm\"\npath = \"prior.npz\"\n\n\
         [operator]\nkind = \"matrix\"\npath = \"A.npy\"\n\n\
         [measurement]\ny = \"y.npy\"\neta = {eta:?}   # noise std per measurement, in the units of x\n\n\
         [sampler]\nkind = \"annealed\"   # {}\n\n\
         [run]\nn = 2000\nseed = 0\nout = \"out\"\n",
        KINDS.join(" | ")
    );
    staging.write_bytes("problem.toml", toml.as_bytes())?;
    staging.commit()?;
    println!(
        "wrote {}/{{prior.npz, A.npy, x_true.npy, y.npy, problem.toml}}",
        out.display()
    );
    Ok(())
}

pub fn problem_denoise(d: usize, eta: f64, seed: u64, out: &Path, force: bool) -> Result<()> {
    diffpost::limits::check_alloc("--d", 3 * 8 * d as u128)?;
    let staging = stage(out, problem_replace(force))?;
    let (x, y) = diffpost::problem::denoise_instance(d, eta, seed)?;
    staging.write_npy("x_true.npy", &vec_tensor(&x)?)?;
    staging.write_npy("y.npy", &vec_tensor(&y)?)?;
    let toml = format!(
        "# Denoising instance: diffpost problem denoise --d {d} --eta {eta} --seed {seed}\n\
         [prior]\nkind = \"isotropic\"\nd = {d}\nvar = 1.0\n\n\
         [operator]\nkind = \"identity\"\n\n\
         [measurement]\ny = \"y.npy\"\neta = {eta:?}   # noise std, in the units of x\n\n\
         [sampler]\nkind = \"annealed\"\n\n\
         [run]\nn = 500\nseed = 0\nout = \"out\"\n"
    );
    staging.write_bytes("problem.toml", toml.as_bytes())?;
    staging.commit()?;
    println!(
        "wrote {}/{{x_true.npy, y.npy, problem.toml}}",
        out.display()
    );
    Ok(())
}

pub fn measure(config_path: &Path, out: &Path) -> Result<()> {
    let cfg = ProblemConfig::read(config_path)?;
    if cfg.measurement.truth.is_none() {
        bail!(
            "{}: [measurement] needs `truth` (and optionally `index`, `noise_seed`) to simulate y",
            config_path.display()
        );
    }
    let staging = stage(
        out,
        Replace::Outputs {
            names: &["y.npy", "x_true.npy", "measurement.png"],
            suffixes: &[],
        },
    )?;
    let l = cfg.load(&Device::Cpu)?;
    let truth = l.truth.as_ref().expect("simulated from truth");
    staging.write_npy("y.npy", &vec_tensor(&l.y_vec)?)?;
    staging.write_npy("x_true.npy", &vec_tensor(truth)?)?;
    if let Some(shape) = l.image_shape() {
        let pinv: Vec<f64> =
            l.op.pseudo_inverse(&l.y.unsqueeze(0)?)?
                .flatten_all()?
                .to_vec1()?;
        diffpost::imaging::save_grid(
            &staging.path().join("measurement.png"),
            &[truth.clone(), pinv],
            shape,
            2,
            -1.0,
            1.0,
        )?;
    }
    staging.commit()?;
    println!(
        "operator {}: m = {} real measurements, eta = {} (units of x); wrote {}/y.npy, x_true.npy{}",
        l.op.name(),
        l.op.out_dim(),
        l.eta,
        out.display(),
        if l.image_shape().is_some() { ", measurement.png (truth | pseudo-inverse)" } else { "" }
    );
    Ok(())
}

pub fn eval(config_path: &Path, samples: &Path, n_ref: usize) -> Result<()> {
    let cfg = ProblemConfig::read(config_path)?;
    let l = cfg.load(&Device::Cpu)?;
    let x = diffpost::io::read_array(samples, "samples")?;
    let gmm = l.prior.analytic.as_ref().ok_or_else(|| anyhow::anyhow!("eval needs an analytic prior (gmm/isotropic) with an exact posterior; image priors report PSNR/SSIM in metrics.json"))?;
    // The run's evidence estimate, when its summary.json sits beside the samples.
    let estimate = samples
        .parent()
        .map(|p| p.join("summary.json"))
        .and_then(|sp| std::fs::read_to_string(sp).ok())
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|s| s.get("log_evidence").and_then(|v| v.as_f64()));
    let report = diffpost::metrics::evaluate_posterior(
        gmm,
        l.op.as_ref(),
        &l.y_vec,
        l.eta,
        &x,
        n_ref,
        estimate,
    )
    .with_context(|| format!("{}", samples.display()))?;
    // As a JSON value: keys in the order they always had (sorted).
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::to_value(report)?)?
    );
    Ok(())
}

/// The demo's compressed-sensing instance (d = 20, m = 10, eta = 0.1, Gaussian prior).
pub fn demo_instance() -> Result<diffpost::problem::Instance> {
    Ok(diffpost::problem::random_gmm_instance(
        20, 10, 1, 0.1, 2024,
    )?)
}

/// The demo's samplers: every method at its defaults.
pub fn demo_specs() -> Vec<(&'static str, SamplerSpec)> {
    vec![
        ("exact", SamplerSpec::Exact(Default::default())),
        (
            "annealed (Alg. 1)",
            SamplerSpec::Annealed(Default::default()),
        ),
        ("ula", SamplerSpec::Ula(Default::default())),
        ("mala", SamplerSpec::Mala(Default::default())),
        ("dps", SamplerSpec::Dps(Default::default())),
        ("daps", SamplerSpec::Daps(Default::default())),
        ("ald", SamplerSpec::Ald(Default::default())),
        ("smc", SamplerSpec::Smc(Default::default())),
    ]
}

pub fn demo(n: usize) -> Result<()> {
    use diffpost::operator::Dense;
    if n < 2 {
        bail!("--n must be >= 2");
    }
    let inst = demo_instance()?;
    let (d, m, eta) = (inst.a.ncols(), inst.a.nrows(), inst.eta);
    let op = Dense::new(inst.a.clone())?;
    let y = vec_tensor(inst.y.as_slice())?;
    let post = inst.prior.posterior(&op, inst.y.as_slice(), eta)?;
    println!("diffpost demo: compressed sensing, d = {d}, m = {m}, eta = {eta}, Gaussian (log-concave) prior, n = {n} samples each");
    let t = Instant::now();
    let (reference, floors) = exact_reference(&post, n, 20000)?;
    println!(
        "exact reference: 20000 samples; noise floor over 10 exact sets of {n}: sliced W2 {:.4} ± {:.4}, MMD² {:.2e} ± {:.1e} ({:.1} s)\n",
        floors.sw2.floor_mean,
        floors.sw2.floor_sd,
        floors.mmd2.floor_mean,
        floors.mmd2.floor_sd,
        t.elapsed().as_secs_f64()
    );
    let parts = ProblemParts::mixture(&inst.prior, &op, &y, eta);
    println!(
        "{:<18} {:>12} {:>9} {:>10} {:>8} {:>11} {:>8}",
        "sampler", "score evals", "wall s", "sliced W2", "/floor", "MMD²", "z(MMD²)"
    );
    for (name, spec) in demo_specs() {
        let t = Instant::now();
        let out = RunContext::new(parts, &spec)?.run(&RunPlan::new(n, 1), &NoProgress)?;
        let wall = t.elapsed().as_secs_f64();
        let met = reference
            .evaluate(&out.samples.flatten_all()?.to_vec1()?)?
            .with_floor(&floors);
        println!(
            "{:<18} {:>12} {:>9.2} {:>10.4} {:>8.2} {:>11.2e} {:>8.1}",
            name,
            out.diagnostics.score_evals_per_sample.max,
            wall,
            met.sw2.value,
            met.sw2.value / met.sw2.floor_mean,
            met.mmd2.value,
            met.mmd2.z_score()
        );
    }
    println!("\n/floor: sliced W2 over the mean exact-vs-exact value (1.0 = indistinguishable from exact at this n);");
    println!("z(MMD²): (MMD² - floor mean) / floor sd. Defaults of every sampler; see the README for what they are.");
    Ok(())
}

pub fn bench_score(d: usize, k: usize, batch: usize, repeats: usize) -> Result<()> {
    if d == 0 || k == 0 || batch == 0 || repeats == 0 {
        bail!("--d, --k, --batch and --repeats must be >= 1");
    }
    let inst = diffpost::problem::random_gmm_instance(d, 1, k, 0.1, 7)?;
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
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let median = times[times.len() / 2];
    let flops = 2.0 * (batch * k * d * d) as f64;
    let out = json!({
        "bench": "gmm_score", "d": d, "k": k, "batch": batch, "cov": format!("{:?}", inst.prior.cov_kind()),
        "repeats": repeats, "median_ms": median, "min_ms": times[0], "gemm_gflops_at_median": flops / median / 1e6,
        "threads": rayon::current_num_threads(),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}
