//! Pretrained checkpoints through the CLI, at small size: the random-weight parity models
//! (`crates/diffpost/tests/fixtures/parity`) as `kind = "guided-diffusion"` and
//! `kind = "diffusers-unet"` priors, a PNG ground truth at the model's resolution, every sampler
//! that takes a network prior, the `.pt` path, and the errors a user meets first.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../diffpost/tests/fixtures")
}

fn run(c: &mut Command) -> (bool, String) {
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!err.contains("panicked"), "panic: {err}");
    (o.status.success(), err)
}

/// A smooth 32x32 RGB test picture.
fn write_png(path: &Path) {
    write_png_sized(path, 32)
}

fn write_png_sized(path: &Path, size: u32) {
    let img = image::RgbImage::from_fn(size, size, |x, y| {
        image::Rgb([(x * 8) as u8, (y * 8) as u8, (((x + y) * 4) % 256) as u8])
    });
    img.save(path).unwrap();
}

/// The fixtures' networks have random weights: their outputs are not images in [-1, 1] (RMS
/// about 250), so every prior here sets `data_scale` for the divergence check.
fn guided_prior() -> String {
    let f = fixtures().join("parity/guided_dps");
    format!(
        "[prior]\nkind = \"guided-diffusion\"\ndata_scale = 1000.0\npath = \"{}\"\nconfig = \"{}\"\n",
        f.join("weights.safetensors").display(),
        f.join("config.json").display()
    )
}

fn write_config(dir: &Path, prior: &str, sampler: &str, n: usize) -> PathBuf {
    let text = format!(
        "{prior}\n[operator]\nkind = \"inpaint\"\nrate = 0.5\nseed = 1\n\n\
         [measurement]\ntruth = \"truth.png\"\neta = 0.05\n\n[sampler]\n{sampler}\n\n\
         [run]\nn = {n}\nseed = 3\nout = \"out\"\n"
    );
    let p = dir.join("problem.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn metrics_psnr(dir: &Path) -> f64 {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/metrics.json")).unwrap())
            .unwrap();
    let v = m["mean"]["quality"]["psnr"].as_f64();
    v.unwrap_or_else(|| panic!("no PSNR of the mean in {m}"))
}

#[test]
fn every_sampler_runs_on_both_checkpoint_kinds() {
    let samplers = [
        ("dps", "kind = \"dps\"\nsteps = 12"),
        (
            "local",
            "kind = \"local\"\nwarm_start = \"dps\"\nwarm_steps = 8\nsigma = 0.1\nstart_at_x0 = true\nstages = 3\nsteps_per_stage = 3",
        ),
        (
            "annealed",
            "kind = \"annealed\"\nstages = 3\nsteps_per_stage = 3\ninit_steps = 10",
        ),
        ("ula", "kind = \"ula\"\nsteps = 5\ninit_steps = 10"),
        (
            "daps",
            "kind = \"daps\"\nannealing_steps = 4\node_steps = 2\nlangevin_steps = 3",
        ),
        ("ald", "kind = \"ald\"\nlevels = 4\nsteps_per_level = 2"),
        ("prior", "kind = \"prior\"\nsteps = 10"),
        (
            "smc",
            "kind = \"smc\"\nmoves_per_stage = 2\nfinal_moves = 2\ninit_steps = 10\nscore_sigma = 0.05",
        ),
        (
            "cs",
            "kind = \"cs\"\nestimator = \"least-squares\"\nestimator_iters = 20\nstages = 3\nsteps_per_stage = 3\ninit_steps = 10",
        ),
    ];
    let diffusers_prior = format!(
        "[prior]\nkind = \"diffusers-unet\"\ndata_scale = 1000.0\npath = \"{}\"\n",
        fixtures()
            .join("parity/diffusers_flip_heads/weights.safetensors")
            .display()
    );
    let priors = [
        ("guided", guided_prior(), 32usize),
        ("diffusers", diffusers_prior, 16),
    ];
    for ((name, sampler), (pname, prior, size)) in samplers
        .iter()
        .flat_map(|s| priors.iter().map(move |p| (s, p)))
    {
        let dir = tmpdir(&format!("{pname}-{name}"));
        write_png_sized(&dir.join("truth.png"), *size as u32);
        let cfg = write_config(&dir, prior, sampler, 2);
        let (ok, err) = run(bin().args(["sample", "--quiet", "--config"]).arg(&cfg));
        assert!(ok, "{pname} {name}: {err}");
        let samples = std::fs::read(dir.join("out/samples.npy")).unwrap();
        // [2, 3*size*size] f64 plus the header.
        let d = 3 * size * size;
        assert!(
            samples.len() > 2 * d * 8 && samples.len() < 2 * d * 8 + 256,
            "{pname} {name}: {} bytes",
            samples.len()
        );
        let psnr = metrics_psnr(&dir);
        assert!(psnr.is_finite(), "{pname} {name}: PSNR {psnr}");
        assert!(dir.join("out/grid.png").exists(), "{pname} {name}: no grid");
    }
    // MALA needs a log-density, which a network does not have: a clear error, not a panic.
    let dir = tmpdir("guided-mala");
    write_png(&dir.join("truth.png"));
    let cfg = write_config(&dir, &guided_prior(), "kind = \"mala\"\nsteps = 3", 1);
    let (ok, err) = run(bin().args(["sample", "--quiet", "--config"]).arg(&cfg));
    assert!(!ok && err.to_lowercase().contains("mala"), "{err}");
}

#[test]
fn diffusers_checkpoint_and_pt_files_load() {
    // diffusers: `path` is the weights file; config.json beside it is read.
    let f = fixtures().join("parity/diffusers_ddpm_flags");
    let dir = tmpdir("diffusers");
    write_png_sized(&dir.join("truth.png"), 16);
    let prior = format!(
        "[prior]\nkind = \"diffusers-unet\"\ndata_scale = 1000.0\npath = \"{}\"\ntimestep = \"nearest\"\n",
        f.join("weights.safetensors").display()
    );
    let cfg = write_config(&dir, &prior, "kind = \"dps\"\nsteps = 10", 2);
    let (ok, err) = run(bin().args(["sample", "--quiet", "--config"]).arg(&cfg));
    assert!(ok, "{err}");
    assert!(metrics_psnr(&dir).is_finite());

    // guided-diffusion from a PyTorch zip .pt, nested under state_dict with module. prefixes.
    let g = fixtures().join("parity/guided_dps/config.json");
    for pt in ["guided_small.pt", "guided_small_nested.pt"] {
        let dir = tmpdir(pt);
        write_png(&dir.join("truth.png"));
        let prior = format!(
            "[prior]\nkind = \"guided-diffusion\"\ndata_scale = 1000.0\npath = \"{}\"\nconfig = \"{}\"\n",
            fixtures().join("pt").join(pt).display(),
            g.display()
        );
        let cfg = write_config(&dir, &prior, "kind = \"dps\"\nsteps = 5", 1);
        let (ok, err) = run(bin().args(["sample", "--quiet", "--config"]).arg(&cfg));
        assert!(ok, "{pt}: {err}");
    }
}

#[test]
fn pretrained_errors_are_clear() {
    let dir = tmpdir("errors");
    write_png(&dir.join("truth.png"));
    let check = |prior: &str, needles: &[&str]| {
        let cfg = write_config(&dir, prior, "kind = \"dps\"\nsteps = 3", 1);
        let (ok, err) = run(bin().args(["sample", "--quiet", "--config"]).arg(&cfg));
        assert!(!ok, "expected failure for {prior}");
        for n in needles {
            assert!(err.contains(n), "error should mention `{n}`: {err}");
        }
    };
    let w = fixtures().join("parity/guided_dps/weights.safetensors");
    // The DPS FFHQ preset on the small model's weights: missing and mis-shaped tensors, listed.
    check(
        &format!(
            "[prior]\nkind = \"guided-diffusion\"\ndata_scale = 1000.0\npath = \"{}\"\npreset = \"dps-ffhq256\"\n",
            w.display()
        ),
        &[
            "weights.safetensors",
            "missing tensor",
            "shape mismatch",
            "input_blocks.",
        ],
    );
    check(
        &format!(
            "[prior]\nkind = \"guided-diffusion\"\ndata_scale = 1000.0\npath = \"{}\"\npreset = \"ffhq\"\n",
            w.display()
        ),
        &["dps-ffhq256", "adm-imagenet256-uncond"],
    );
    check(
        &format!(
            "[prior]\nkind = \"guided-diffusion\"\ndata_scale = 1000.0\npath = \"{}\"\n",
            w.display()
        ),
        &["preset", "config"],
    );
    // The legacy (pre-1.6) format is refused with the conversion to run.
    check(
        &format!(
            "[prior]\nkind = \"guided-diffusion\"\ndata_scale = 1000.0\npath = \"{}\"\npreset = \"dps-ffhq256\"\n",
            fixtures().join("pt/legacy.pt").display()
        ),
        &["legacy.pt", "legacy", "torch.save"],
    );
    // A PNG at the wrong resolution names the file and both sizes.
    let small = dir.join("small.png");
    image::RgbImage::new(16, 16).save(&small).unwrap();
    let f = fixtures().join("parity/guided_dps");
    let text = format!(
        "{}\n[operator]\nkind = \"inpaint\"\nrate = 0.5\n\n[measurement]\ntruth = \"small.png\"\n\
         eta = 0.05\n\n[sampler]\nkind = \"dps\"\nsteps = 3\n",
        guided_prior()
    );
    let p = dir.join("bad_png.toml");
    std::fs::write(&p, text).unwrap();
    let (ok, err) = run(bin().args(["sample", "--quiet", "--config"]).arg(&p));
    assert!(
        !ok && err.contains("small.png") && err.contains("32x32"),
        "{err}"
    );
    let _ = f;
    // --device cuda in a build without the feature: a clear error.
    if !cfg!(feature = "cuda") {
        let cfg = write_config(&dir, &guided_prior(), "kind = \"dps\"\nsteps = 3", 1);
        let (ok, err) = run(bin()
            .args(["sample", "--quiet", "--device", "cuda", "--config"])
            .arg(&cfg));
        assert!(!ok && err.contains("cuda"), "{err}");
    }
}

/// The FFHQ recipe configs (`examples/ffhq/*.toml`) parse and run: same operator kinds, sampler
/// keys and measurement settings, with the small parity model in place of `ffhq_10m.pt`, a 32x32
/// picture, short runs, and the blur kernel cut to the picture's size.
#[test]
fn ffhq_recipes_are_valid_configs() {
    let recipes = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/ffhq");
    for name in ["inpaint", "sr4", "deblur"] {
        let text = std::fs::read_to_string(recipes.join(format!("{name}.toml"))).unwrap();
        let mut t: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(t["prior"]["preset"].as_str(), Some("dps-ffhq256"));
        assert_eq!(t["measurement"]["eta"].as_float(), Some(0.05));
        let f = fixtures().join("parity/guided_dps");
        let mut prior = toml::Table::new();
        prior.insert("kind".into(), "guided-diffusion".into());
        // Random weights: the network's outputs are not images in [-1, 1] (RMS about 250), so
        // the divergence check gets their scale.
        prior.insert("data_scale".into(), 1000.0.into());
        prior.insert(
            "path".into(),
            f.join("weights.safetensors").display().to_string().into(),
        );
        prior.insert(
            "config".into(),
            f.join("config.json").display().to_string().into(),
        );
        t.insert("prior".into(), prior.into());
        let s = t["sampler"].as_table_mut().unwrap();
        s.insert("warm_steps".into(), 5.into());
        s.insert("steps_per_stage".into(), 2.into());
        let op = t["operator"].as_table_mut().unwrap();
        if op.contains_key("kernel_size") {
            op.insert("kernel_size".into(), 9.into());
        }
        t["run"]
            .as_table_mut()
            .unwrap()
            .insert("n".into(), 1.into());
        let dir = tmpdir(&format!("recipe-{name}"));
        write_png(&dir.join("face.png"));
        let p = dir.join("recipe.toml");
        std::fs::write(&p, toml::to_string(&t).unwrap()).unwrap();
        let (ok, err) = run(bin().args(["sample", "--quiet", "--config"]).arg(&p));
        assert!(ok, "{name}: {err}");
        assert!(
            dir.join(format!("out_{name}/metrics.json")).exists(),
            "{name}"
        );
    }
}
