//! The subcommands.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use diffpost::metrics::{noise_floor, MetricFloors, Reference};
use diffpost::prior::{Denoiser, ExactSample, GaussianMixture};
use diffpost::rng::SampleStreams;
use diffpost::sampler::{Monitor, Output};
use indicatif::{ProgressBar, ProgressStyle};
use rayon::prelude::*;
use serde_json::json;

use crate::config::{self, Loaded};
use crate::spec::{self, Spec};

/// Progress over parallel batches: the bar counts sample-steps.
struct Bar {
    bar: Option<ProgressBar>,
    done: AtomicU64,
    len_set: Mutex<bool>,
    n: u64,
}

struct BatchMonitor<'a> {
    bar: &'a Bar,
    batch: u64,
    last: AtomicU64,
}

impl Monitor for BatchMonitor<'_> {
    fn on_step(&self, done: u64, total: u64) {
        let Some(b) = &self.bar.bar else { return };
        {
            let mut set = self.bar.len_set.lock().unwrap();
            if !*set {
                b.set_length(total * self.bar.n);
                *set = true;
            }
        }
        let prev = self.last.swap(done, Ordering::Relaxed);
        if done > prev {
            let add = (done - prev) * self.batch;
            let now = self.bar.done.fetch_add(add, Ordering::Relaxed) + add;
            b.set_position(now);
        }
    }
}

/// Runs `spec` for samples `0..n` in parallel batches (results do not depend on the batching).
pub fn run_batched(
    spec: &Spec,
    l: &Loaded,
    n: usize,
    seed: u64,
    batch: Option<usize>,
    quiet: bool,
) -> Result<(Tensor, Output)> {
    let threads = rayon::current_num_threads().max(1);
    let batch = batch.unwrap_or_else(|| n.div_ceil(2 * threads).clamp(16, 1000));
    let bar = Bar {
        bar: (!quiet).then(|| {
            let b = ProgressBar::new(n as u64);
            b.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{bar:40}] {percent}% eta {eta}")
                    .unwrap()
                    .progress_chars("=> "),
            );
            b.set_message(spec.name());
            b
        }),
        done: AtomicU64::new(0),
        len_set: Mutex::new(false),
        n: n as u64,
    };
    let chunks = SampleStreams::range(seed, n).into_chunks(batch);
    let outs: Vec<Result<Output>> = chunks
        .into_par_iter()
        .map(|mut s| {
            let mon = BatchMonitor {
                bar: &bar,
                batch: s.len() as u64,
                last: AtomicU64::new(0),
            };
            spec::run(spec, l, &mut s, &mon)
        })
        .collect();
    if let Some(b) = &bar.bar {
        b.finish_and_clear();
    }
    let outs: Vec<Output> = outs.into_iter().collect::<Result<_>>()?;
    let all = Tensor::cat(
        &outs.iter().map(|o| o.samples.clone()).collect::<Vec<_>>(),
        0,
    )?;
    let first = outs.into_iter().next().expect("n >= 1");
    Ok((all, first))
}

pub fn sample(config_path: &Path, quiet: bool, device: &candle_core::Device) -> Result<()> {
    let l = config::load_on(config_path, device)?;
    let spec = spec::parse(&l.cfg.sampler).with_context(|| format!("{}", config_path.display()))?;
    let run = &l.cfg.run;
    let out_dir = l.resolve(&run.out);
    let t0 = Instant::now();
    let (samples, first) = run_batched(&spec, &l, run.n, run.seed, run.batch, quiet)?;
    let wall = t0.elapsed().as_secs_f64();
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("{}: cannot create output folder", out_dir.display()))?;
    diffpost::io::write_npy(&out_dir.join("samples.npy"), &samples)?;
    // Fill in defaults that are resolved at run time (eta_1 of the schedule) so `params` lists
    // every value used; the full schedule and step sizes are under `info`.
    let mut params = serde_json::to_value(&spec)?;
    if let Some(etas) = &first.info.etas {
        fn fill(v: &mut serde_json::Value, eta_max: f64) {
            if let Some(o) = v.as_object_mut() {
                if o.get("eta_max").is_some_and(|e| e.is_null()) {
                    o.insert("eta_max".into(), json!(eta_max));
                }
                for (_, c) in o.iter_mut() {
                    fill(c, eta_max);
                }
            }
        }
        fill(&mut params, etas[0]);
    }
    let summary = json!({
        "sampler": spec.name(),
        "params": params,
        "info": first.info,
        "prior": {
            "kind": l.cfg.prior.kind,
            "path": l.cfg.prior.path,
            "preset": l.cfg.prior.preset,
            "timestep": matches!(l.cfg.prior.kind.as_str(), "guided-diffusion" | "diffusers-unet")
                .then(|| l.cfg.prior.timestep.clone().unwrap_or_else(|| "interpolate".into())),
            "sigma_range": l.prior.sigma_range(),
            "image_shape": l.image_shape,
            "device": format!("{device:?}"),
            "perturb": l.perturbation,
            "score_error_norms": l.error_norms,
        },
        "operator": l.op.name(),
        "eta": l.eta,
        "n": run.n,
        "d": l.d,
        "seed": run.seed,
        "score_evals_per_sample": first.score_evals,
        "wall_s": wall,
    });
    diffpost::io::write_bytes(
        &out_dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    if l.image_shape.is_some() {
        let m = crate::image_out::write(&l, &samples, &out_dir)?;
        if !quiet {
            eprintln!(
                "posterior mean: PSNR {} SSIM {}; pseudo-inverse PSNR {}; grids in {}",
                m["mean"]["quality"]["psnr"],
                m["mean"]["quality"]["ssim"],
                m["pseudo_inverse"]["quality"]["psnr"],
                out_dir.display()
            );
        }
    }
    if !quiet {
        eprintln!(
            "{}: {} samples (d = {}) in {:.2} s, {} score evaluations per sample -> {}",
            spec.name(),
            run.n,
            l.d,
            wall,
            first.score_evals,
            out_dir.display()
        );
    }
    Ok(())
}

fn vec_tensor(v: &[f64]) -> Result<Tensor> {
    Ok(Tensor::from_vec(v.to_vec(), v.len(), &Device::Cpu)?)
}

pub fn problem_gmm(d: usize, m: usize, k: usize, eta: f64, seed: u64, out: &Path) -> Result<()> {
    let inst = diffpost::problem::random_gmm_instance(d, m, k, eta, seed)?;
    std::fs::create_dir_all(out)
        .with_context(|| format!("{}: cannot create folder", out.display()))?;
    inst.prior.write_npz(out.join("prior.npz"))?;
    let a_rows: Vec<f64> = inst.a.transpose().iter().copied().collect();
    diffpost::io::write_npy(
        &out.join("A.npy"),
        &Tensor::from_vec(a_rows, (m, d), &Device::Cpu)?,
    )?;
    diffpost::io::write_npy(
        &out.join("x_true.npy"),
        &vec_tensor(inst.x_true.as_slice())?,
    )?;
    diffpost::io::write_npy(&out.join("y.npy"), &vec_tensor(inst.y.as_slice())?)?;
    let toml = format!(
        "# Random instance: diffpost problem gmm --d {d} --m {m} --k {k} --eta {eta} --seed {seed}\n\
         [prior]\nkind = \"gmm\"\npath = \"prior.npz\"\n\n\
         [operator]\nkind = \"matrix\"\npath = \"A.npy\"\n\n\
         [measurement]\ny = \"y.npy\"\neta = {eta:?}   # noise std per measurement, in the units of x\n\n\
         [sampler]\nkind = \"annealed\"   # {}\n\n\
         [run]\nn = 2000\nseed = 0\nout = \"out\"\n",
        spec::KINDS
    );
    diffpost::io::write_bytes(&out.join("problem.toml"), toml.as_bytes())?;
    println!(
        "wrote {}/{{prior.npz, A.npy, x_true.npy, y.npy, problem.toml}}",
        out.display()
    );
    Ok(())
}

pub fn problem_denoise(d: usize, eta: f64, seed: u64, out: &Path) -> Result<()> {
    if d == 0 || !(eta > 0.0) {
        bail!("--d must be >= 1 and --eta > 0");
    }
    let mut s = SampleStreams::new(seed, [0]);
    let x = s.normal_vec(d);
    let y: Vec<f64> = x
        .iter()
        .zip(s.normal_vec(d))
        .map(|(x, z)| x + eta * z)
        .collect();
    std::fs::create_dir_all(out)
        .with_context(|| format!("{}: cannot create folder", out.display()))?;
    diffpost::io::write_npy(&out.join("x_true.npy"), &vec_tensor(&x)?)?;
    diffpost::io::write_npy(&out.join("y.npy"), &vec_tensor(&y)?)?;
    let toml = format!(
        "# Denoising instance: diffpost problem denoise --d {d} --eta {eta} --seed {seed}\n\
         [prior]\nkind = \"isotropic\"\nd = {d}\nvar = 1.0\n\n\
         [operator]\nkind = \"identity\"\n\n\
         [measurement]\ny = \"y.npy\"\neta = {eta:?}   # noise std, in the units of x\n\n\
         [sampler]\nkind = \"annealed\"\n\n\
         [run]\nn = 500\nseed = 0\nout = \"out\"\n"
    );
    diffpost::io::write_bytes(&out.join("problem.toml"), toml.as_bytes())?;
    println!(
        "wrote {}/{{x_true.npy, y.npy, problem.toml}}",
        out.display()
    );
    Ok(())
}

pub fn measure(config_path: &Path, out: &Path) -> Result<()> {
    let l = config::load(config_path)?;
    let truth = l.truth.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "{}: [measurement] needs `truth` (and optionally `index`, `noise_seed`) to simulate y",
            config_path.display()
        )
    })?;
    std::fs::create_dir_all(out)
        .with_context(|| format!("{}: cannot create folder", out.display()))?;
    let y: Vec<f64> = l.y.to_vec1()?;
    diffpost::io::write_npy(&out.join("y.npy"), &vec_tensor(&y)?)?;
    diffpost::io::write_npy(&out.join("x_true.npy"), &vec_tensor(truth)?)?;
    if let Some(shape) = l.image_shape {
        let pinv: Vec<f64> =
            l.op.pseudo_inverse(&l.y.unsqueeze(0)?)?
                .flatten_all()?
                .to_vec1()?;
        diffpost::imaging::save_grid(
            &out.join("measurement.png"),
            &[truth.clone(), pinv],
            shape,
            2,
            -1.0,
            1.0,
        )?;
    }
    println!(
        "operator {}: m = {} real measurements, eta = {} (units of x); wrote {}/y.npy, x_true.npy{}",
        l.op.name(),
        l.op.out_dim(),
        l.eta,
        out.display(),
        if l.image_shape.is_some() { ", measurement.png (truth | pseudo-inverse)" } else { "" }
    );
    Ok(())
}

/// Exact reference and noise floors for samples of size `n`.
pub fn reference(
    post: &GaussianMixture,
    n: usize,
    n_ref: usize,
) -> Result<(Reference, MetricFloors)> {
    let d = post.dim();
    let refs: Vec<f64> = post
        .sample_exact(&mut SampleStreams::new(0x7265_6600, 0..n_ref as u64))?
        .flatten_all()?
        .to_vec1()?;
    let mean: Vec<f64> = post.mean().iter().copied().collect();
    let cov = post.covariance();
    let covv: Vec<f64> = (0..d)
        .flat_map(|r| (0..d).map(move |c| (r, c)))
        .map(|(r, c)| cov[(r, c)])
        .collect();
    let reference = Reference::new(refs, d, mean, covv, 100, 0x6469_7273, 2000.min(n_ref))?;
    let floors = noise_floor(
        &reference,
        |rep| {
            Ok(post
                .sample_exact(&mut SampleStreams::new(
                    0x666c_6f6f + rep as u64,
                    0..n as u64,
                ))?
                .flatten_all()?
                .to_vec1()?)
        },
        10,
    )?;
    Ok((reference, floors))
}

pub fn eval(config_path: &Path, samples: &Path, n_ref: usize) -> Result<()> {
    let l = config::load(config_path)?;
    let x = diffpost::io::read_array(samples, "samples")?;
    let gmm = l.gmm.as_ref().ok_or_else(|| anyhow::anyhow!("eval needs an analytic prior (gmm/isotropic) with an exact posterior; image priors report PSNR/SSIM in metrics.json"))?;
    let d = l.d;
    let n = match x.dims() {
        [n, dd] if *dd == d => *n,
        other => bail!(
            "{}: samples must be [n, d] with d = {d}, got {other:?}",
            samples.display()
        ),
    };
    if n < 2 {
        bail!("{}: need at least 2 samples", samples.display());
    }
    let post = gmm.posterior(l.op.as_ref(), &l.y_vec, l.eta)?;
    let (reference, floors) = reference(&post, n, n_ref)?;
    let xv: Vec<f64> = x.flatten_all()?.to_vec1()?;
    let m = reference.evaluate(&xv)?.with_floor(&floors);
    println!("{}", serde_json::to_string_pretty(&m)?);
    Ok(())
}

pub fn demo(n: usize) -> Result<()> {
    use diffpost::operator::Dense;
    use diffpost::sampler::*;
    if n < 2 {
        bail!("--n must be >= 2");
    }
    let (d, m, eta) = (20usize, 10usize, 0.1);
    let inst = diffpost::problem::random_gmm_instance(d, m, 1, eta, 2024)?;
    let op = Dense::new(inst.a.clone())?;
    let y = vec_tensor(inst.y.as_slice())?;
    let post = inst.prior.posterior(&op, inst.y.as_slice(), eta)?;
    println!("diffpost demo: compressed sensing, d = {d}, m = {m}, eta = {eta}, Gaussian (log-concave) prior, n = {n} samples each");
    let t = Instant::now();
    let (reference, floors) = reference(&post, n, 20000)?;
    println!(
        "exact reference: 20000 samples; noise floor over 10 exact sets of {n}: sliced W2 {:.4} ± {:.4}, MMD² {:.2e} ± {:.1e} ({:.1} s)\n",
        floors.sw2.floor_mean,
        floors.sw2.floor_sd,
        floors.mmd2.floor_mean,
        floors.mmd2.floor_sd,
        t.elapsed().as_secs_f64()
    );
    let prior: &dyn Denoiser = &inst.prior;
    let problem = Problem::new(prior, &op, &y, eta)?;
    type Runner<'a> = Box<dyn Fn(&mut SampleStreams) -> diffpost::Result<Output> + Sync + 'a>;
    let runners: Vec<(&str, Runner)> = vec![
        (
            "exact",
            Box::new(|s: &mut SampleStreams| exact::sample(&post, s)),
        ),
        (
            "annealed (Alg. 1)",
            Box::new(|s: &mut SampleStreams| {
                annealed::sample(
                    &problem,
                    Some(&inst.prior),
                    &annealed::AnnealedConfig::default(),
                    s,
                    &Silent,
                )
            }),
        ),
        (
            "ula",
            Box::new(|s: &mut SampleStreams| {
                ula::sample(
                    &problem,
                    Some(&inst.prior),
                    &ula::UlaConfig::default(),
                    s,
                    &Silent,
                )
            }),
        ),
        (
            "mala",
            Box::new(|s: &mut SampleStreams| {
                mala::sample(
                    &problem,
                    &inst.prior,
                    Some(&inst.prior),
                    &mala::MalaConfig::default(),
                    s,
                    &Silent,
                )
            }),
        ),
        (
            "dps",
            Box::new(|s: &mut SampleStreams| {
                dps::sample(&problem, &dps::DpsConfig::default(), s, &Silent)
            }),
        ),
        (
            "daps",
            Box::new(|s: &mut SampleStreams| {
                daps::sample(&problem, &daps::DapsConfig::default(), s, &Silent)
            }),
        ),
        (
            "ald",
            Box::new(|s: &mut SampleStreams| {
                ald::sample(&problem, &ald::AldConfig::default(), s, &Silent)
            }),
        ),
    ];
    println!(
        "{:<18} {:>12} {:>9} {:>10} {:>8} {:>11} {:>8}",
        "sampler", "score evals", "wall s", "sliced W2", "/floor", "MMD²", "z(MMD²)"
    );
    let batch = n.div_ceil(2 * rayon::current_num_threads().max(1)).max(16);
    for (name, f) in &runners {
        let t = Instant::now();
        let outs: Vec<diffpost::Result<Output>> = SampleStreams::range(1, n)
            .into_chunks(batch)
            .into_par_iter()
            .map(|mut s| f(&mut s))
            .collect();
        let outs: Vec<Output> = outs.into_iter().collect::<diffpost::Result<_>>()?;
        let wall = t.elapsed().as_secs_f64();
        let x = Tensor::cat(
            &outs.iter().map(|o| o.samples.clone()).collect::<Vec<_>>(),
            0,
        )?;
        let met = reference
            .evaluate(&x.flatten_all()?.to_vec1()?)?
            .with_floor(&floors);
        println!(
            "{:<18} {:>12} {:>9.2} {:>10.4} {:>8.2} {:>11.2e} {:>8.1}",
            name,
            outs[0].score_evals,
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
