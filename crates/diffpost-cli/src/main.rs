//! `diffpost`: the command-line tool, a thin layer over the `diffpost` library.

mod commands;
mod image_out;
mod progress;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

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
    Sample(SampleArgs),
    /// Put the shards of a run (`sample --shard K/N`) back together: checks that they are the
    /// same config and seed, none missing or repeated, and writes OUT/samples.npy, summary.json.
    Merge {
        /// The shard folders, in any order.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
    },
    /// Simulation-based calibration of the config's sampler (Talts et al. 2018): for R replicates,
    /// draw x* from the prior, simulate y = A x* + eta xi, draw L posterior samples and rank
    /// statistics of x* among them; writes OUT/calibration.json and calibration.png. Uses the
    /// config's [prior], [operator], [measurement] eta and [sampler]; its measurement (`y` or
    /// `truth`) and [run] are not used: every replicate simulates its own. `calibrate merge`
    /// puts shards (--shard K/N) back together.
    Calibrate(CalibrateArgs),
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
    Demo(DemoArgs),
    /// Train a UNet diffusion prior on images (.npy [N,H,W] or [N,C,H,W], u8 or float) by
    /// denoising score matching; resumes from OUT's checkpoint when one exists. A model in OUT
    /// without a checkpoint (e.g. a shipped one) is never replaced silently: pass
    /// --resume-from-model or --force. Each checkpoint commits OUT as one (config, weights,
    /// optimizer state, loss log); a lock beside OUT refuses a second concurrent run.
    Train(TrainArgs),
    /// Report on a trained prior: unconditional samples (grid) and held-out loss per sigma.
    Report(ReportArgs),
    /// The annealing-time trade-off of Algorithm 2 (L2 to truth vs distance to held-out data):
    /// plot, table and JSON.
    Tradeoff(TradeoffArgs),
    /// The posterior's modes on the MNIST prior: half of a held-out digit hidden, SMC vs Algorithm 2
    /// vs DPS, samples grouped by the class of their nearest labelled digit (figure + table).
    Modes(ModesArgs),
    /// Fit a Gaussian mixture with low-rank-plus-floor covariances (a mixture of probabilistic
    /// PCA, Tipping & Bishop 1999) to images by EM and write it as OUT (.npz: weights [K],
    /// means [K,d], eigvecs [K,r,d], eigvals [K,r], floor [K]). u8 images are scaled to [-1, 1].
    FitGmm(FitGmmArgs),
    /// Micro-benchmarks (JSON).
    Bench {
        #[command(subcommand)]
        what: BenchKind,
    },
}

#[derive(Args)]
pub struct SampleArgs {
    #[arg(long)]
    pub config: PathBuf,
    /// Run only shard K (0-based) of N contiguous shards of the run's populations, e.g. 0/4
    /// (put them back together with `diffpost merge`).
    #[arg(long, value_name = "K/N")]
    pub shard: Option<String>,
    /// Output folder (overrides `[run] out`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Where network priors run: cpu, cuda or cuda:N (CUDA needs `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct CalibrateArgs {
    #[command(subcommand)]
    pub merge: Option<CalibrateMerge>,
    /// The problem.toml whose [prior], [operator], [measurement] eta and [sampler] are
    /// calibrated (its `y`/`truth` and [run] are not used; [measurement] may hold eta alone).
    #[arg(required = true)]
    pub config: Option<PathBuf>,
    /// R: simulated problems (100-1000 for a useful test).
    #[arg(long, required = true)]
    pub replicates: Option<usize>,
    /// L: posterior samples per replicate (ranks are on 0..L).
    #[arg(long, required = true)]
    pub samples: Option<usize>,
    /// Replicate r draws only from seeds derived from (seed, r).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Run only shard K (0-based) of N contiguous blocks of replicates, e.g. 0/4 (put them back
    /// together with `diffpost calibrate merge`).
    #[arg(long, value_name = "K/N")]
    pub shard: Option<String>,
    /// Fixed random unit projections of x ranked.
    #[arg(long, default_value_t = 8)]
    pub projections: usize,
    /// Fixed coordinates ranked (among the hidden ones for a mask/inpainting/box operator).
    #[arg(long, default_value_t = 4)]
    pub pixels: usize,
    /// Diagnostic: give the sampler eta x SCALE while the data have eta (measures the test's
    /// power: any scale but 1 makes even an exact sampler wrong).
    #[arg(long, default_value_t = 1.0, value_name = "SCALE")]
    pub sampler_eta_scale: f64,
    /// Rank-histogram bins (default R/10 within 2..20).
    #[arg(long)]
    pub bins: Option<usize>,
    /// Output folder (new or empty; a previous calibration in it is replaced only with --force).
    #[arg(long, required = true)]
    pub out: Option<PathBuf>,
    /// Replace a previous calibration in OUT.
    #[arg(long)]
    pub force: bool,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Where network priors run: cpu, cuda or cuda:N (CUDA needs `--features cuda`).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Subcommand)]
pub enum CalibrateMerge {
    /// Put the shards of a calibration (`calibrate --shard K/N`) back together: checks that they
    /// are parts of one calibration (same fingerprint), each replicate once, none missing, and
    /// writes OUT/calibration.json and calibration.png over all replicates.
    Merge {
        /// The shard folders, in any order.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        #[arg(long)]
        out: PathBuf,
        /// Replace a previous calibration in OUT.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Args)]
pub struct DemoArgs {
    /// Samples per sampler (with --images: per image).
    #[arg(long)]
    pub n: Option<usize>,
    /// The image demo: inpainting, 2x super-resolution, deblurring and 4x MRI on held-out digits
    /// with DPS and Algorithm 2 warm-started from DPS.
    #[arg(long)]
    pub images: bool,
    /// Output folder of the image demo.
    #[arg(long, default_value = "demo_images")]
    pub out: PathBuf,
    /// Model folder of the image demo.
    #[arg(long, default_value = "models/mnist")]
    pub model: PathBuf,
    /// Held-out images of the image demo.
    #[arg(long, default_value = "data/mnist_test256.npy")]
    pub data: PathBuf,
    /// Digits per task in the image demo.
    #[arg(long, default_value_t = 2)]
    pub count: usize,
    /// DPS steps in the image demo.
    #[arg(long, default_value_t = 200)]
    pub dps_steps: usize,
}

#[derive(Args)]
pub struct TrainArgs {
    #[arg(long)]
    pub data: PathBuf,
    /// unet.toml with optional [model] and [train] tables (defaults otherwise).
    #[arg(long)]
    pub config: Option<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    /// OUT holds a model but no checkpoint: continue training from its weights with a fresh
    /// optimizer state (the architecture must match; the step count continues).
    #[arg(long, conflicts_with_all = ["force", "fresh"])]
    pub resume_from_model: bool,
    /// Start over from step 0, replacing OUT's model, checkpoint and loss log.
    #[arg(long)]
    pub force: bool,
    /// Ignore OUT's checkpoint and start over; when OUT holds a model this replaces it, so
    /// it needs --force (which alone does the same).
    #[arg(long)]
    pub fresh: bool,
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Args)]
pub struct ReportArgs {
    #[arg(long, default_value = "models/mnist")]
    pub model: PathBuf,
    #[arg(long, default_value = "data/mnist_test256.npy")]
    pub data: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 64)]
    pub n: usize,
    /// Heun steps (2 steps - 1 evaluations).
    #[arg(long, default_value_t = 18)]
    pub steps: usize,
}

#[derive(Args)]
pub struct TradeoffArgs {
    #[arg(long, default_value = "models/mnist")]
    pub model: PathBuf,
    #[arg(long, default_value = "data/mnist_test256.npy")]
    pub data: PathBuf,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 32)]
    pub images: usize,
    #[arg(long, default_value_t = 200)]
    pub dps_steps: usize,
    /// Langevin steps per stage to try (0, DPS alone, is always included).
    #[arg(long, value_delimiter = ',', default_value = "5,20,80")]
    pub steps_per_stage: Vec<usize>,
    /// Langevin step size relative to the stage's stiffness (smaller: more accurate, slower).
    #[arg(long, default_value_t = 0.2)]
    pub h_rel: f64,
    /// Apply the Tweedie denoiser D(x, 0.05) after the last stage (`final_denoise`).
    #[arg(long)]
    pub final_denoise: bool,
    /// Seed of the samplers' random streams (DPS and Algorithm 2); the digits and their
    /// measurements stay the same, so runs with several seeds give the sampling spread.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Args)]
pub struct ModesArgs {
    #[arg(long, default_value = "models/mnist")]
    pub model: PathBuf,
    #[arg(long, default_value = "data/mnist_test256.npy")]
    pub data: PathBuf,
    #[arg(long, default_value = "data/mnist_test256_labels.npy")]
    pub labels: PathBuf,
    #[arg(long, default_value = "modes")]
    pub out: PathBuf,
    /// Row of the held-out digits (18: a 3).
    #[arg(long, default_value_t = 18)]
    pub index: usize,
    /// Samples (SMC particles) per method.
    #[arg(long, default_value_t = 64)]
    pub n: usize,
    /// SMC particles (one population); default: --n.
    #[arg(long)]
    pub particles: Option<usize>,
    #[arg(long, default_value_t = 200)]
    pub dps_steps: usize,
    /// SMC Langevin moves per stage (4x as many at the end).
    #[arg(long, default_value_t = 20)]
    pub moves_per_stage: usize,
    /// More SMC settings as TOML `key = value` pairs separated by `;` (they override the
    /// defaults of this command), e.g. `--smc 'score_sigma = 0.2; integrator = "exact-likelihood-strang"'`.
    #[arg(long, default_value = "")]
    pub smc: String,
    /// The hidden half: left, right, top or bottom.
    #[arg(long, default_value = "right")]
    pub hide: String,
}

#[derive(Args)]
pub struct FitGmmArgs {
    /// Images .npy [N, H, W] (u8, scaled to [-1, 1] as x/127.5 - 1) or rows [N, d] (float,
    /// used as they are).
    #[arg(long)]
    pub data: PathBuf,
    /// The .npz to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Replace an existing OUT.
    #[arg(long)]
    pub force: bool,
    /// Mixture components K.
    #[arg(long, default_value_t = 10)]
    pub components: usize,
    /// Eigenpairs kept per component r (the file holds K r d float32 eigenvector entries).
    #[arg(long, default_value_t = 32)]
    pub rank: usize,
    /// EM iterations.
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    /// Added to every eigenvalue of each component's weighted covariance.
    #[arg(long, default_value_t = 1e-3)]
    pub ridge: f64,
    /// Smallest isotropic floor of a component's covariance.
    #[arg(long, default_value_t = 1e-4)]
    pub floor_min: f64,
    /// Seed of the k-means++ initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Fit on the first N images only (default: all).
    #[arg(long)]
    pub max_images: Option<usize>,
    /// Stop once an iteration improves the log-likelihood by less than TOL relative (0: never).
    #[arg(long, default_value_t = 0.0)]
    pub tol: f64,
    /// Held-out images (same layout as --data): print their mean log-likelihood.
    #[arg(long)]
    pub test: Option<PathBuf>,
}

#[derive(Args)]
pub struct BenchPosteriorArgs {
    /// "small" (d <= 64, every sampler at its defaults and at --budget) or "images" (the exact
    /// 28x28 suite: multimodal posteriors under mixtures fitted to MNIST and Fashion-MNIST).
    #[arg(long, default_value = "small", value_parser = ["small", "images"])]
    pub suite: String,
    /// Three problems at n = 500, defaults only (a minute or two).
    #[arg(long)]
    pub quick: bool,
    /// Samples per sampler (default 1000; 500 with --quick).
    #[arg(long)]
    pub n: Option<usize>,
    /// The equal budget of score evaluations per sample of the second table.
    #[arg(long, default_value_t = 2000)]
    pub budget: u64,
    #[arg(long, default_value = "bench_posterior")]
    pub out: PathBuf,
    /// Folder with digits_gmm.npz and digits_test100.npy.
    #[arg(long, default_value = "data")]
    pub data: PathBuf,
    /// Integrator of annealed, ula and smc: euler or exact-likelihood (default: theirs).
    #[arg(long)]
    pub integrator: Option<String>,
}

#[derive(Subcommand)]
pub enum ProblemKind {
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
pub enum BenchKind {
    /// The exact-posterior suite: every sampler on problems with closed-form posteriors (and
    /// evidence); prints the table and writes OUT/bench.{md,json,png}.
    Posterior(BenchPosteriorArgs),
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
    let res: Result<()> = match Cli::parse().cmd {
        Cmd::Sample(a) => commands::sample(&a),
        Cmd::Merge { dirs, out } => commands::merge(&dirs, &out),
        Cmd::Calibrate(a) => commands::calibrate(a),
        Cmd::Problem { kind } => commands::problem(kind),
        Cmd::Measure { config, out } => commands::measure(&config, &out),
        Cmd::Eval {
            config,
            samples,
            reference,
        } => commands::eval(&config, &samples, reference),
        Cmd::Train(a) => commands::train(&a),
        Cmd::Demo(a) => commands::demo(a),
        Cmd::Report(a) => commands::report(a),
        Cmd::Tradeoff(a) => commands::tradeoff(a),
        Cmd::Modes(a) => commands::modes(a),
        Cmd::FitGmm(a) => commands::fit_gmm(&a),
        Cmd::Bench { what } => commands::bench(what),
    };
    if let Err(e) = res {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
