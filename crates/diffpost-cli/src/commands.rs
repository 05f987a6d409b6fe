//! The subcommands: parse arguments, call the library, write outputs and print.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use candle_core::{Device, Tensor};
use diffpost::calibrate::{self, CalibrateOptions, StatisticsOptions};
use diffpost::commit::{Replace, Staging};
use diffpost::config::ProblemConfig;
use diffpost::nn::model_folder;
use diffpost::nn::{train::WEIGHTS_FILE, Trainer};
use diffpost::run::summary::{check_merge_target, merge_parts, write_run, ShardParts, RUN_OUTPUTS};
use diffpost::run::{NoProgress, RunContext, RunPlan, Shard};
use diffpost::sampler::spec::KINDS;
use diffpost::studies::{
    self, bench_integrator, bench_posterior, demo_images, modes, report, tradeoff,
};
use diffpost::training::{self, TrainFile};
use serde_json::json;

use crate::{
    BenchKind, CalibrateArgs, CalibrateMerge, DemoArgs, FitGmmArgs, ModesArgs, ProblemKind,
    ReportArgs, SampleArgs, TradeoffArgs,
};

/// Takes the output folder (validated, locked, staged) and reports what it cleaned up.
pub fn stage(out: &Path, replace: Replace) -> Result<Staging> {
    let s = Staging::begin(out, replace)?;
    for n in s.notes() {
        eprintln!("note: {n}");
    }
    Ok(s)
}

/// `cpu` or `cuda[:N]` (the latter needs a build with `--features cuda`).
fn parse_device(s: &str) -> Result<Device> {
    match s {
        "cpu" => Ok(Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal: usize = s
                .strip_prefix("cuda:")
                .map(|n| n.parse())
                .transpose()
                .map_err(|_| anyhow!("--device {s}: expected cuda or cuda:N"))?
                .unwrap_or(0);
            Device::new_cuda(ordinal).map_err(|e| {
                anyhow!(
                    "--device {s}: {e} (CUDA needs a build with `--features cuda` and an NVIDIA GPU)"
                )
            })
        }
        other => bail!("--device {other}: expected cpu, cuda or cuda:N"),
    }
}

/// `diffpost sample`: the whole run, or shard `--shard` of it; `--out` overrides `[run] out`.
pub fn sample(a: &SampleArgs) -> Result<()> {
    let (config_path, quiet) = (a.config.as_path(), a.quiet);
    let device = parse_device(&a.device)?;
    // Everything is parsed and validated before anything heavy is loaded.
    let cfg = ProblemConfig::read(config_path)?;
    let shard = a.shard.as_deref().map(Shard::parse).transpose()?;
    let shard = shard.unwrap_or(Shard::WHOLE);
    let plan = RunPlan {
        n: cfg.run.n,
        seed: cfg.run.seed,
        batch: cfg.run.batch,
        shard,
    };
    plan.layout(&cfg.sampler)
        .with_context(|| format!("{}: --shard", config_path.display()))?;
    let out_dir = a.out.clone().unwrap_or_else(|| cfg.resolve(&cfg.run.out));
    if !quiet {
        for w in &cfg.warnings {
            eprintln!("warning: {}: {w}", config_path.display());
        }
    }
    // The output folder is checked and locked before any work.
    let staging = stage(&out_dir, RUN_OUTPUTS)?;
    let t_load = Instant::now();
    let l = cfg.load(&device)?;
    let load_s = t_load.elapsed().as_secs_f64();
    let t_ctx = Instant::now();
    let ctx = RunContext::new(l.parts(), &cfg.sampler)
        .with_context(|| format!("{}", config_path.display()))?;
    let context_s = t_ctx.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let out = if quiet {
        ctx.run(&plan, &NoProgress)?
    } else {
        let b = crate::progress::bar(cfg.sampler.name());
        let o = ctx.run(&plan, &b);
        b.0.finish_and_clear();
        o?
    };
    let wall = t0.elapsed().as_secs_f64();
    let mut summary = l.summary(&out, wall, &device);
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
    if quiet {
        return Ok(());
    }
    if let Some(m) = &image_metrics {
        eprintln!(
            "posterior mean: PSNR {} SSIM {}; pseudo-inverse PSNR {}; grids in {}",
            m["mean"]["quality"]["psnr"],
            m["mean"]["quality"]["ssim"],
            m["pseudo_inverse"]["quality"]["psnr"],
            out_dir.display()
        );
    }
    let [lo, hi] = out.layout.sample_range;
    let shard_note = if shard.count > 1 {
        format!(
            " (shard {}/{}: samples {lo}..{hi})",
            shard.index, shard.count
        )
    } else {
        String::new()
    };
    eprintln!(
        "{}: {} samples (d = {}) in {:.2} s, {} score evaluations per sample{} -> {}",
        cfg.sampler.name(),
        hi - lo,
        l.d,
        wall,
        summary.score_evals_per_sample,
        shard_note,
        out_dir.display()
    );
    Ok(())
}

/// `diffpost merge`: checks that `dirs` are the shards of one run and writes the whole run.
pub fn merge(dirs: &[PathBuf], out: &Path) -> Result<()> {
    for d in dirs {
        if d.join("calibration.json").exists() && !d.join("summary.json").exists() {
            bail!(
                "{}: holds a calibration (calibration.json), not a run: merge calibration shards \
                 with `diffpost calibrate merge`",
                d.display()
            );
        }
    }
    check_merge_target(dirs, out)?;
    let staging = stage(out, RUN_OUTPUTS)?;
    let parts = dirs.iter().map(|d| ShardParts::read(d));
    let m = merge_parts(parts.collect::<diffpost::Result<_>>()?)?;
    write_run(&staging, &m.samples, m.weighted.as_ref(), &m.summary)?;
    staging.commit()?;
    println!(
        "merged {} shards: {} samples (d = {}) -> {}",
        dirs.len(),
        m.summary.n,
        m.summary.d,
        out.display()
    );
    Ok(())
}

/// A calibration folder: new or empty, or with `--force` a previous calibration's.
fn calibration_replace(force: bool) -> Replace<'static> {
    if force {
        calibrate::OUTPUTS
    } else {
        Replace::Never {
            allow_with: "pass --force to replace a previous calibration in it",
        }
    }
}

/// `diffpost calibrate` (`calibrate merge`: its shards put back together).
pub fn calibrate(a: CalibrateArgs) -> Result<()> {
    if let Some(CalibrateMerge::Merge { dirs, out, force }) = a.merge {
        return calibrate_merge(&dirs, &out, force);
    }
    let (Some(config_path), Some(replicates), Some(samples), Some(out)) =
        (a.config, a.replicates, a.samples, a.out)
    else {
        bail!("calibrate needs a problem.toml, --replicates, --samples and --out");
    };
    let device = parse_device(&a.device)?;
    let cfg = ProblemConfig::read_model(&config_path)?;
    let shard = a.shard.as_deref().map(Shard::parse).transpose()?;
    let opts = CalibrateOptions {
        replicates,
        samples,
        seed: a.seed,
        statistics: StatisticsOptions {
            projections: a.projections,
            pixels: a.pixels,
            ..Default::default()
        },
        sampler_eta_scale: a.sampler_eta_scale,
        bins: a.bins,
        shard,
        ..Default::default()
    };
    opts.validate().map_err(|e| match e {
        diffpost::Error::InvalidParam { field, reason } => {
            anyhow!("--{}: {reason}", field.replace('_', "-"))
        }
        e => e.into(),
    })?;
    if !a.quiet {
        for w in &cfg.warnings {
            eprintln!("warning: {}: {w}", config_path.display());
        }
        let m = &cfg.measurement;
        if let Some(p) = m.y.as_ref().or(m.truth.as_ref()) {
            eprintln!(
                "note: {}: [measurement] {} is not used: calibrate simulates y = A x* + eta xi \
                 (eta = {}) for every replicate",
                config_path.display(),
                p.display(),
                m.eta
            );
        }
    }
    calibrate::check_sampler(&cfg.sampler).with_context(|| format!("{}", config_path.display()))?;
    // The output folder is checked and locked before any work.
    let staging = stage(&out, calibration_replace(a.force))?;
    let m = cfg.load_model(&device)?;
    let model = calibrate::Model {
        prior: m.prior.denoiser.as_ref(),
        op: m.op.as_ref(),
        eta: m.eta,
        description: cfg.model_description(),
        cancel: None,
    };
    let res = if a.quiet {
        calibrate::calibrate(&model, &cfg.sampler, &opts, &NoProgress)
    } else {
        let b = crate::progress::bar(&format!("calibrate {} (replicates)", cfg.sampler.name()));
        let r = calibrate::calibrate(&model, &cfg.sampler, &opts, &b);
        b.0.finish_and_clear();
        r
    }
    .with_context(|| format!("{}", config_path.display()))?;
    calibrate::write(&staging, &res)?;
    staging.commit()?;
    print_calibration(&res, &out);
    Ok(())
}

fn print_calibration(res: &calibrate::CalibrationResult, out: &Path) {
    let range = res
        .options
        .shard
        .filter(|s| s.count > 1)
        .map(|s| {
            let r = &res.replicates;
            format!(
                " (shard {}/{}: replicates {}..{})",
                s.index,
                s.count,
                r.first().map_or(0, |r| r.index),
                r.last().map_or(0, |r| r.index + 1)
            )
        })
        .unwrap_or_default();
    println!(
        "calibration of {} (x* {}): {} replicates{range} of L = {} samples (d = {}, m = {}, \
         sampler eta = {} x {}) in {:.2} s -> {}",
        res.sampler,
        res.truth_sampler,
        res.summary.replicates,
        res.options.samples,
        res.d,
        res.m,
        res.eta,
        res.options.sampler_eta_scale,
        res.wall_s,
        out.display()
    );
    println!("{}", res.report());
    for w in &res.health_warnings {
        eprintln!("warning: {w}");
    }
}

/// `diffpost calibrate merge`.
fn calibrate_merge(dirs: &[PathBuf], out: &Path, force: bool) -> Result<()> {
    calibrate::check_merge_target(dirs, out)?;
    let staging = stage(out, calibration_replace(force))?;
    let parts = dirs
        .iter()
        .map(|d| Ok((calibrate::read(d)?, d.display().to_string())))
        .collect::<diffpost::Result<Vec<_>>>()?;
    let res = calibrate::merge(parts)?;
    calibrate::write(&staging, &res)?;
    staging.commit()?;
    println!("merged {} parts", dirs.len());
    print_calibration(&res, out);
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

/// `diffpost problem gmm|denoise`.
pub fn problem(kind: ProblemKind) -> Result<()> {
    let (out, files) = match kind {
        ProblemKind::Gmm {
            d,
            m,
            k,
            eta,
            seed,
            out,
            force,
        } => {
            diffpost::problem::check_gmm_instance_size(d, m, k)?;
            let staging = stage(&out, problem_replace(force))?;
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
            (out, "prior.npz, A.npy, x_true.npy, y.npy, problem.toml")
        }
        ProblemKind::Denoise {
            d,
            eta,
            seed,
            out,
            force,
        } => {
            diffpost::limits::check_alloc("--d", 3 * 8 * d as u128)?;
            let staging = stage(&out, problem_replace(force))?;
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
            (out, "x_true.npy, y.npy, problem.toml")
        }
    };
    println!("wrote {}/{{{files}}}", out.display());
    Ok(())
}

/// `diffpost measure`: simulates `y` from the config's ground truth.
pub fn measure(config_path: &Path, out: &Path) -> Result<()> {
    let cfg = ProblemConfig::read(config_path)?;
    if cfg.measurement.truth.is_none() {
        bail!(
            "{}: [measurement] needs `truth` (and optionally `index`, `noise_seed`) to simulate y",
            config_path.display()
        );
    }
    let outputs = Replace::Outputs {
        names: &["y.npy", "x_true.npy", "measurement.png"],
        suffixes: &[],
    };
    let staging = stage(out, outputs)?;
    let l = cfg.load(&Device::Cpu)?;
    let truth = l.truth.as_ref().expect("simulated from truth");
    staging.write_npy("y.npy", &vec_tensor(&l.y_vec)?)?;
    staging.write_npy("x_true.npy", &vec_tensor(truth)?)?;
    if let Some(shape) = l.image_shape() {
        let pinv = l.op.pseudo_inverse(&l.y.unsqueeze(0)?)?;
        let grid = [truth.clone(), pinv.flatten_all()?.to_vec1()?];
        let path = staging.path().join("measurement.png");
        diffpost::imaging::save_grid(&path, &grid, shape, 2, -1.0, 1.0)?;
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

/// `diffpost eval`: distances of samples to the exact posterior (JSON).
pub fn eval(config_path: &Path, samples: &Path, n_ref: usize) -> Result<()> {
    let cfg = ProblemConfig::read(config_path)?;
    let l = cfg.load(&Device::Cpu)?;
    let x = diffpost::io::read_array(samples, "samples")?;
    let gmm = l.prior.analytic.as_ref().ok_or_else(|| anyhow!("eval needs an analytic prior (gmm/isotropic) with an exact posterior; image priors report PSNR/SSIM in metrics.json"))?;
    // The run's evidence estimate, when its summary.json sits beside the samples.
    let estimate = samples
        .parent()
        .map(|p| p.join("summary.json"))
        .and_then(|sp| std::fs::read_to_string(sp).ok())
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|s| s.get("log_evidence").and_then(|v| v.as_f64()));
    let (op, y) = (l.op.as_ref(), &l.y_vec);
    let report = diffpost::metrics::evaluate_posterior(gmm, op, y, l.eta, &x, n_ref, estimate)
        .with_context(|| format!("{}", samples.display()))?;
    // As a JSON value: keys in the order they always had (sorted).
    println!(
        "{}",
        serde_json::to_string_pretty(&serde_json::to_value(report)?)?
    );
    Ok(())
}

/// `diffpost train`: the folder's policy is the library's ([`diffpost::training`]).
pub fn train(a: &crate::TrainArgs) -> Result<()> {
    let (out, quiet) = (a.out.as_path(), a.quiet);
    let images = diffpost::nn::load_images_npy(&a.data)
        .with_context(|| format!("--data {}", a.data.display()))?;
    let dims = images.dims().to_vec();
    let (tf, cfg_path) = TrainFile::read(a.config.as_deref())?;
    let mf = tf.model_file(&cfg_path, &a.data, &dims)?;
    let train = &mf.train;
    // The lock is held until the end; every checkpoint commits the folder as one.
    let mut staging = stage(out, model_folder::MODEL_OUTPUTS)?;
    let flags = training::Flags {
        fresh: a.fresh,
        force: a.force,
        resume_from_model: a.resume_from_model,
    };
    let how = training::start(out, flags, &mf)?;
    let mut trainer = Trainer::new(mf.model.clone(), train.clone(), &images, &Device::Cpu)?;
    let mut note = |l: &str| eprintln!("{l}");
    let mut quiet_note = |_: &str| {};
    let note: &mut dyn FnMut(&str) = if quiet { &mut quiet_note } else { &mut note };
    let log = training::begin(&mut trainer, out, how, note)?;
    let step = trainer.step_count();
    if step >= train.steps {
        eprintln!(
            "nothing to train: {} is at step {step} and [train] steps = {}; raise steps to continue",
            out.display(),
            train.steps
        );
        return Ok(());
    }
    if !quiet {
        eprintln!(
            "training a {}-parameter UNet on {} images {:?} for {} steps (batch {})",
            trainer.num_params(),
            dims[0],
            &dims[1..],
            train.steps,
            train.batch_size
        );
    }
    let bar = (!quiet).then(|| crate::progress::train_bar(train.steps, step));
    let (steps, every) = (train.steps, train.checkpoint_every);
    model_folder::train_into(
        &mut trainer,
        &mut staging,
        &mf,
        log,
        steps,
        every,
        |s, avg| {
            if let Some(b) = &bar {
                b.set_position(s);
                b.set_message(format!("{avg:.4}"));
            }
        },
    )?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if !quiet {
        eprintln!(
            "done: {} steps; EMA weights in {}",
            trainer.step_count(),
            out.join(WEIGHTS_FILE).display()
        );
    }
    Ok(())
}

/// Prints a study's line.
fn say(line: &str) {
    println!("{line}");
}

/// `diffpost demo` (`--images`: the image demo).
pub fn demo(a: DemoArgs) -> Result<()> {
    if !a.images {
        studies::demo::run(a.n.unwrap_or(1000), &mut say)?;
        return Ok(());
    }
    let o = demo_images::Opts {
        model: a.model,
        data: a.data,
        out: a.out,
        n: a.n.unwrap_or(4),
        count: a.count,
        dps_steps: a.dps_steps,
    };
    demo_images::run(&o, &mut say)?;
    Ok(())
}

/// `diffpost report`.
pub fn report(a: ReportArgs) -> Result<()> {
    let o = report::Opts {
        model: a.model,
        data: a.data,
        out: a.out,
        n: a.n,
        steps: a.steps,
    };
    report::run(&o, &mut say)?;
    Ok(())
}

/// `diffpost tradeoff`.
pub fn tradeoff(a: TradeoffArgs) -> Result<()> {
    let o = tradeoff::Opts {
        model: a.model,
        data: a.data,
        out: a.out,
        images: a.images,
        dps_steps: a.dps_steps,
        steps_per_stage: a.steps_per_stage,
        h_rel: a.h_rel,
        final_denoise: a.final_denoise,
        seed: a.seed,
    };
    tradeoff::run(&o, &mut say)?;
    Ok(())
}

/// `diffpost modes`.
pub fn modes(a: ModesArgs) -> Result<()> {
    let o = modes::Opts {
        model: a.model,
        data: a.data,
        labels: a.labels,
        out: a.out,
        index: a.index,
        n: a.n,
        particles: a.particles,
        dps_steps: a.dps_steps,
        moves_per_stage: a.moves_per_stage,
        smc: a.smc,
        hide: a.hide,
    };
    modes::run(&o, &mut say)?;
    Ok(())
}

/// `diffpost fit-gmm`: EM for a mixture of probabilistic PCA ([`diffpost::prior::fit`]).
pub fn fit_gmm(a: &FitGmmArgs) -> Result<()> {
    use diffpost::prior::fit::{fit_ppca_mixture_with, read_images, FitOptions};
    let replace = if a.force {
        Replace::Any
    } else {
        Replace::Never {
            allow_with: "pass --force to replace it",
        }
    };
    diffpost::commit::check_out_file(&a.out, replace)?;
    let opts = FitOptions {
        components: a.components,
        rank: a.rank,
        iters: a.iters,
        ridge: a.ridge,
        floor_min: a.floor_min,
        seed: a.seed,
        max_images: a.max_images,
        tol: a.tol,
    };
    opts.validate()?;
    let data = read_images(&a.data, a.max_images).context("--data")?;
    let test = a
        .test
        .as_deref()
        .map(|p| read_images(p, None).context("--test"));
    let test = test.transpose()?;
    if let Some(t) = &test {
        if t.d != data.d {
            bail!(
                "--test: its images have d = {} values, --data's d = {}",
                t.d,
                data.d
            );
        }
    }
    opts.validate_for(data.n, data.d)?;
    println!("data: {} {}", a.data.display(), data.description);
    println!(
        "fitting K = {}, r = {}, {} iterations, ridge = {}, floor_min = {}, seed = {}",
        a.components, a.rank, a.iters, a.ridge, a.floor_min, a.seed
    );
    let t0 = Instant::now();
    let mut last = t0;
    let fit = fit_ppca_mixture_with(&data.data, data.d, &opts, &mut |t, ll| {
        let what = if t == 0 {
            "k-means init".into()
        } else {
            format!("iteration {t}")
        };
        println!(
            "{what:>14}: log-likelihood {ll:.4} nats/image ({:.1} s)",
            last.elapsed().as_secs_f64()
        );
        last = Instant::now();
    })?;
    let wall = t0.elapsed().as_secs_f64();
    fit.write_npz(&a.out)?;
    let size = std::fs::metadata(&a.out)
        .with_context(|| format!("{}", a.out.display()))?
        .len();
    if let Some(t) = test {
        let ll = fit.mean_log_likelihood(&t.data, t.d).context("--test")?;
        println!(
            "held-out: log-likelihood {ll:.4} nats/image over {} images of {}",
            t.n,
            a.test.as_deref().unwrap_or(Path::new("")).display()
        );
    }
    let floors = fit
        .floors
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(lo, hi), &f| {
            (lo.min(f), hi.max(f))
        });
    println!(
        "floors in [{:.3e}, {:.3e}]; fit took {wall:.1} s on {} images",
        floors.0, floors.1, fit.images
    );
    println!(
        "wrote {}: {size} bytes ({:.2} MB; K = {}, r = {}, d = {})",
        a.out.display(),
        size as f64 / 1e6,
        fit.k(),
        fit.rank(),
        fit.d
    );
    Ok(())
}

/// `diffpost bench posterior|integrator|score`.
pub fn bench(what: BenchKind) -> Result<()> {
    match what {
        BenchKind::Posterior(a) => {
            let o = bench_posterior::Opts {
                suite: if a.suite == "images" {
                    bench_posterior::Suite::Images
                } else {
                    bench_posterior::Suite::Small
                },
                quick: a.quick,
                n: a.n,
                budget: a.budget,
                out: a.out,
                data: a.data,
                integrator: a.integrator,
            };
            bench_posterior::study(&o, &mut say)?;
        }
        BenchKind::Integrator { quick, out } => {
            let staging = stage(&out, bench_integrator::OUTPUTS)?;
            bench_integrator::study(quick, staging.path(), &mut say)?;
            staging.commit()?;
            println!("wrote {}/integrator.{{md,json,png}}", out.display());
        }
        BenchKind::Score {
            d,
            k,
            batch,
            repeats,
        } => {
            let j = studies::bench_score::run(d, k, batch, repeats)?;
            println!("{}", serde_json::to_string_pretty(&j)?);
        }
    }
    Ok(())
}
