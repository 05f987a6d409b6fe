//! `diffpost`: the command-line tool, a thin layer over the `diffpost` library.
// `!(x > 0.0)` is deliberate throughout: it also rejects NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

mod bench_integrator;
mod bench_posterior;
mod commands;
mod demo_images;
mod image_out;
mod modes;
mod report;
mod tradeoff;
mod train_cmd;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "diffpost",
    version,
    about = "Posterior sampling for linear inverse problems with diffusion priors"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Draw posterior samples as described by a problem.toml.
    Sample {
        #[arg(long)]
        config: PathBuf,
        /// Run only shard K (0-based) of N contiguous shards of the run's populations, e.g. 0/4
        /// (put them back together with `diffpost merge`).
        #[arg(long, value_name = "K/N")]
        shard: Option<String>,
        /// Output folder (overrides `[run] out`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
        /// Where network priors run: cpu, cuda or cuda:N (CUDA needs `--features cuda`).
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// Put the shards of a run (`sample --shard K/N`) back together: checks that they are the
    /// same config and seed, none missing or repeated, and writes OUT/samples.npy, summary.json.
    Merge {
        /// The shard folders, in any order.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a random problem instance with a known exact posterior.
    Problem {
        #[command(subcommand)]
        kind: ProblemKind,
    },
    /// Simulate a measurement `y = A x_true + eta xi` from the config's `[measurement] truth`:
    /// writes OUT/y.npy, OUT/x_true.npy (and PNGs for images).
    Measure {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        out: PathBuf,
    },
    /// Distances of samples to the exact posterior, with their Monte-Carlo noise floors (JSON).
    Eval {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        samples: PathBuf,
        /// Size of the exact reference sample.
        #[arg(long, default_value_t = 20000)]
        reference: usize,
    },
    /// A built-in compressed-sensing demo: every sampler against the exact posterior.
    Demo {
        /// Samples per sampler (with --images: per image).
        #[arg(long)]
        n: Option<usize>,
        /// The image demo: inpainting, 2x super-resolution, deblurring and 4x MRI on held-out digits
        /// with DPS and Algorithm 2 warm-started from DPS.
        #[arg(long)]
        images: bool,
        /// Output folder of the image demo.
        #[arg(long, default_value = "demo_images")]
        out: PathBuf,
        /// Model folder of the image demo.
        #[arg(long, default_value = "models/mnist")]
        model: PathBuf,
        /// Held-out images of the image demo.
        #[arg(long, default_value = "data/mnist_test256.npy")]
        data: PathBuf,
        /// Digits per task in the image demo.
        #[arg(long, default_value_t = 2)]
        count: usize,
        /// DPS steps in the image demo.
        #[arg(long, default_value_t = 200)]
        dps_steps: usize,
    },
    /// Train a UNet diffusion prior on images (.npy [N,H,W] or [N,C,H,W], u8 or float) by
    /// denoising score matching; resumes from OUT's checkpoint when one exists. A model in OUT
    /// without a checkpoint (e.g. a shipped one) is never replaced silently: pass
    /// --resume-from-model or --force. Each checkpoint commits OUT as one (config, weights,
    /// optimizer state, loss log); a lock beside OUT refuses a second concurrent run.
    Train {
        #[arg(long)]
        data: PathBuf,
        /// unet.toml with optional [model] and [train] tables (defaults otherwise).
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// OUT holds a model but no checkpoint: continue training from its weights with a fresh
        /// optimizer state (the architecture must match; the step count continues).
        #[arg(long, conflicts_with_all = ["force", "fresh"])]
        resume_from_model: bool,
        /// Start over from step 0, replacing OUT's model, checkpoint and loss log.
        #[arg(long)]
        force: bool,
        /// Ignore OUT's checkpoint and start over; when OUT holds a model this replaces it, so
        /// it needs --force (which alone does the same).
        #[arg(long)]
        fresh: bool,
        #[arg(long)]
        quiet: bool,
    },
    /// Report on a trained prior: unconditional samples (grid) and held-out loss per sigma.
    Report {
        #[arg(long, default_value = "models/mnist")]
        model: PathBuf,
        #[arg(long, default_value = "data/mnist_test256.npy")]
        data: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 64)]
        n: usize,
        /// Heun steps (2 steps - 1 evaluations).
        #[arg(long, default_value_t = 18)]
        steps: usize,
    },
    /// The annealing-time trade-off of Algorithm 2 (L2 to truth vs distance to held-out data):
    /// plot, table and JSON.
    Tradeoff {
        #[arg(long, default_value = "models/mnist")]
        model: PathBuf,
        #[arg(long, default_value = "data/mnist_test256.npy")]
        data: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 32)]
        images: usize,
        #[arg(long, default_value_t = 200)]
        dps_steps: usize,
        /// Langevin steps per stage to try (0, DPS alone, is always included).
        #[arg(long, value_delimiter = ',', default_value = "5,20,80")]
        steps_per_stage: Vec<usize>,
        /// Langevin step size relative to the stage's stiffness (smaller: more accurate, slower).
        #[arg(long, default_value_t = 0.2)]
        h_rel: f64,
        /// Apply the Tweedie denoiser D(x, 0.05) after the last stage (`final_denoise`).
        #[arg(long)]
        final_denoise: bool,
        /// Seed of the samplers' random streams (DPS and Algorithm 2); the digits and their
        /// measurements stay the same, so runs with several seeds give the sampling spread.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// The posterior's modes on the MNIST prior: half of a held-out digit hidden, SMC vs Algorithm 2
    /// vs DPS, samples grouped by the class of their nearest labelled digit (figure + table).
    Modes {
        #[arg(long, default_value = "models/mnist")]
        model: PathBuf,
        #[arg(long, default_value = "data/mnist_test256.npy")]
        data: PathBuf,
        #[arg(long, default_value = "data/mnist_test256_labels.npy")]
        labels: PathBuf,
        #[arg(long, default_value = "modes")]
        out: PathBuf,
        /// Row of the held-out digits (18: a 3).
        #[arg(long, default_value_t = 18)]
        index: usize,
        /// Samples (SMC particles) per method.
        #[arg(long, default_value_t = 64)]
        n: usize,
        /// SMC particles (one population); default: --n.
        #[arg(long)]
        particles: Option<usize>,
        #[arg(long, default_value_t = 200)]
        dps_steps: usize,
        /// SMC Langevin moves per stage (4x as many at the end).
        #[arg(long, default_value_t = 20)]
        moves_per_stage: usize,
        /// More SMC settings as TOML `key = value` pairs separated by `;` (they override the
        /// defaults of this command), e.g. `--smc 'score_sigma = 0.2; integrator = "exact-likelihood-strang"'`.
        #[arg(long, default_value = "")]
        smc: String,
        /// The hidden half: left, right, top or bottom.
        #[arg(long, default_value = "right")]
        hide: String,
    },
    /// Micro-benchmarks (JSON).
    Bench {
        #[command(subcommand)]
        what: BenchKind,
    },
}

#[derive(Subcommand)]
enum ProblemKind {
    /// Gaussian-mixture prior, Gaussian matrix A with entries N(0, 1/m).
    Gmm {
        #[arg(long, default_value_t = 30)]
        d: usize,
        #[arg(long, default_value_t = 15)]
        m: usize,
        #[arg(long, default_value_t = 1)]
        k: usize,
        /// Measurement noise (units of x).
        #[arg(long, default_value_t = 0.1)]
        eta: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing, non-empty OUT (and any runs inside it).
        #[arg(long)]
        force: bool,
    },
    /// Denoising: prior N(0, I_d), identity operator, y = x_true + eta xi (no prior file).
    Denoise {
        #[arg(long, default_value_t = 1000)]
        d: usize,
        #[arg(long, default_value_t = 0.1)]
        eta: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing, non-empty OUT (and any runs inside it).
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum BenchKind {
    /// The exact-posterior suite: every sampler on problems with closed-form posteriors (and
    /// evidence); prints the table and writes OUT/bench.{md,json,png}.
    Posterior {
        /// Three problems at n = 500, defaults only (a minute or two).
        #[arg(long)]
        quick: bool,
        /// Samples per sampler (default 1000; 500 with --quick).
        #[arg(long)]
        n: Option<usize>,
        /// The equal budget of score evaluations per sample of the second table.
        #[arg(long, default_value_t = 2000)]
        budget: u64,
        #[arg(long, default_value = "bench_posterior")]
        out: PathBuf,
        /// Folder with digits_gmm.npz and digits_test100.npy.
        #[arg(long, default_value = "data")]
        data: PathBuf,
        /// Integrator of annealed, ula and smc: euler or exact-likelihood (default: theirs).
        #[arg(long)]
        integrator: Option<String>,
    },
    /// Euler against the exact-likelihood integrator: evaluations per sample to 1.2x the
    /// sliced-W2 floor on exact posteriors; writes OUT/integrator.{md,json,png}.
    Integrator {
        /// Compressed sensing at eta = 0.01 only (a minute).
        #[arg(long)]
        quick: bool,
        #[arg(long, default_value = "bench_integrator")]
        out: PathBuf,
    },
    /// One exact GMM score evaluation (full covariances), median over repeats.
    Score {
        #[arg(long, default_value_t = 100)]
        d: usize,
        #[arg(long, default_value_t = 10)]
        k: usize,
        #[arg(long, default_value_t = 10000)]
        batch: usize,
        #[arg(long, default_value_t = 20)]
        repeats: usize,
    },
}

/// `cpu` or `cuda[:N]` (the latter needs a build with `--features cuda`).
fn parse_device(s: &str) -> Result<candle_core::Device> {
    use anyhow::{anyhow, bail};
    match s {
        "cpu" => Ok(candle_core::Device::Cpu),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal: usize = s
                .strip_prefix("cuda:")
                .map(|n| n.parse())
                .transpose()
                .map_err(|_| anyhow!("--device {s}: expected cuda or cuda:N"))?
                .unwrap_or(0);
            candle_core::Device::new_cuda(ordinal).map_err(|e| {
                anyhow!(
                    "--device {s}: {e} (CUDA needs a build with `--features cuda` and an NVIDIA GPU)"
                )
            })
        }
        other => bail!("--device {other}: expected cpu, cuda or cuda:N"),
    }
}

fn main() {
    // A closed stdout (`diffpost eval ... | head`) ends the process quietly, as for other Unix
    // tools, instead of a panic in `println!`.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // candle's elementwise thread pool spin-waits; we parallelise over sample batches instead.
    diffpost::sysalloc::quiet_candle_pool();
    // Large activation buffers are reused instead of returned to the OS after every call.
    diffpost::sysalloc::tune_for_large_arrays();
    let cli = Cli::parse();
    let res: Result<()> = match cli.cmd {
        Cmd::Sample {
            config,
            shard,
            out,
            quiet,
            device,
        } => parse_device(&device)
            .and_then(|d| commands::sample(&config, quiet, &d, shard.as_deref(), out.as_deref())),
        Cmd::Merge { dirs, out } => commands::merge(&dirs, &out),
        Cmd::Problem {
            kind:
                ProblemKind::Gmm {
                    d,
                    m,
                    k,
                    eta,
                    seed,
                    out,
                    force,
                },
        } => commands::problem_gmm(d, m, k, eta, seed, &out, force),
        Cmd::Problem {
            kind:
                ProblemKind::Denoise {
                    d,
                    eta,
                    seed,
                    out,
                    force,
                },
        } => commands::problem_denoise(d, eta, seed, &out, force),
        Cmd::Measure { config, out } => commands::measure(&config, &out),
        Cmd::Eval {
            config,
            samples,
            reference,
        } => commands::eval(&config, &samples, reference),
        Cmd::Train {
            data,
            config,
            out,
            resume_from_model,
            force,
            fresh,
            quiet,
        } => train_cmd::train(&train_cmd::Opts {
            data: &data,
            config: config.as_deref(),
            out: &out,
            fresh,
            force,
            resume_from_model,
            quiet,
        }),
        Cmd::Demo {
            n, images: false, ..
        } => commands::demo(n.unwrap_or(1000)),
        Cmd::Demo {
            n,
            images: true,
            out,
            model,
            data,
            count,
            dps_steps,
        } => demo_images::run(&demo_images::Opts {
            model,
            data,
            out,
            n: n.unwrap_or(4),
            count,
            dps_steps,
        }),
        Cmd::Report {
            model,
            data,
            out,
            n,
            steps,
        } => report::run(&model, &data, &out, n, steps),
        Cmd::Tradeoff {
            model,
            data,
            out,
            images,
            dps_steps,
            steps_per_stage,
            h_rel,
            final_denoise,
            seed,
        } => tradeoff::run(&tradeoff::Opts {
            model: &model,
            data: &data,
            out: &out,
            images,
            dps_steps,
            steps_per_stage,
            h_rel,
            final_denoise,
            seed,
        }),
        Cmd::Modes {
            model,
            data,
            labels,
            out,
            index,
            n,
            particles,
            dps_steps,
            moves_per_stage,
            smc,
            hide,
        } => modes::run(&modes::Opts {
            model,
            data,
            labels,
            out,
            index,
            n,
            particles,
            dps_steps,
            moves_per_stage,
            smc,
            hide,
        }),
        Cmd::Bench {
            what:
                BenchKind::Posterior {
                    quick,
                    n,
                    budget,
                    out,
                    data,
                    integrator,
                },
        } => (|| {
            let integrator = integrator
                .map(|s| {
                    serde_json::from_value(serde_json::Value::String(s.clone())).map_err(|_| {
                        anyhow::anyhow!("--integrator {s}: expected euler or exact-likelihood")
                    })
                })
                .transpose()?;
            bench_posterior::run(&bench_posterior::Opts {
                quick,
                n,
                budget,
                out: &out,
                data: &data,
                integrator,
            })
        })(),
        Cmd::Bench {
            what: BenchKind::Integrator { quick, out },
        } => bench_integrator::run(quick, &out),
        Cmd::Bench {
            what:
                BenchKind::Score {
                    d,
                    k,
                    batch,
                    repeats,
                },
        } => commands::bench_score(d, k, batch, repeats),
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
