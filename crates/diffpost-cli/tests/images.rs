//! The image workflow end to end on a tiny model: train (a few steps), measure, sample with DPS
//! and with Algorithm 2 warm-started from DPS, and the outputs (grids, metrics.json); plus clear
//! errors for mismatched shapes between image, operator and model.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

/// Writes a u8 `.npy` of shape `[n, h, w]`.
fn write_u8_npy(path: &Path, n: usize, h: usize, w: usize, f: impl Fn(usize, usize, usize) -> u8) {
    let header = format!("{{'descr': '|u1', 'fortran_order': False, 'shape': ({n}, {h}, {w}), }}");
    let mut h_bytes = header.into_bytes();
    while (10 + h_bytes.len() + 1) % 64 != 0 {
        h_bytes.push(b' ');
    }
    h_bytes.push(b'\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(h_bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(&h_bytes);
    for k in 0..n {
        for i in 0..h {
            for j in 0..w {
                out.push(f(k, i, j));
            }
        }
    }
    std::fs::write(path, out).unwrap();
}

fn ok(c: &mut Command) -> String {
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "command failed: {err}");
    err
}

fn fails(c: &mut Command, needles: &[&str]) {
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "expected failure");
    assert!(!err.contains("panicked"), "panic: {err}");
    for n in needles {
        assert!(err.contains(n), "error should mention `{n}`: {err}");
    }
}

#[test]
fn train_measure_sample_images() {
    let dir = tmpdir("flow");
    // 40 blobs, 8x8.
    write_u8_npy(&dir.join("data.npy"), 40, 8, 8, |k, i, j| {
        let (ci, cj) = ((k % 5) as f64 + 1.5, (k / 8) as f64 + 1.5);
        let r2 = (i as f64 - ci).powi(2) + (j as f64 - cj).powi(2);
        (255.0 * (-r2 / 3.0).exp()) as u8
    });
    std::fs::write(
        dir.join("unet.toml"),
        "[model]\nbase_channels = 8\nchannel_mults = [1, 2]\nattn_resolutions = [4]\ngroups = 4\nemb_dim = 16\nfourier_features = 4\n\
         [train]\nsteps = 4\nbatch_size = 4\ncheckpoint_every = 2\n",
    )
    .unwrap();
    let model = dir.join("model");
    ok(bin()
        .args(["train", "--quiet", "--data"])
        .arg(dir.join("data.npy"))
        .arg("--config")
        .arg(dir.join("unet.toml"))
        .arg("--out")
        .arg(&model));
    for f in [
        "config.json",
        "weights.safetensors",
        "checkpoint.safetensors",
        "loss.txt",
    ] {
        assert!(model.join(f).exists(), "model folder lacks {f}");
    }
    // Resume: asking for more steps continues from the checkpoint.
    std::fs::write(
        dir.join("unet.toml"),
        std::fs::read_to_string(dir.join("unet.toml"))
            .unwrap()
            .replace("steps = 4", "steps = 6"),
    )
    .unwrap();
    let err = ok(bin()
        .args(["train", "--data"])
        .arg(dir.join("data.npy"))
        .arg("--config")
        .arg(dir.join("unet.toml"))
        .arg("--out")
        .arg(&model));
    assert!(err.contains("resuming from step 4"), "{err}");

    let cfg = |sampler: &str, op: &str, out: &str| {
        format!(
            "[prior]\nkind = \"unet\"\npath = \"model\"\n[operator]\n{op}\n[measurement]\ntruth = \"data.npy\"\nindex = 3\neta = 0.1\n\
             [sampler]\n{sampler}\n[run]\nn = 3\nseed = 1\nout = \"{out}\"\n"
        )
    };
    std::fs::write(
        dir.join("dps.toml"),
        cfg(
            "kind = \"dps\"\nsteps = 6",
            "kind = \"superres\"\nfactor = 2",
            "out_dps",
        ),
    )
    .unwrap();
    ok(bin()
        .args(["measure", "--config"])
        .arg(dir.join("dps.toml"))
        .arg("--out")
        .arg(dir.join("meas")));
    assert!(dir.join("meas/y.npy").exists() && dir.join("meas/measurement.png").exists());
    ok(bin()
        .args(["sample", "--quiet", "--config"])
        .arg(dir.join("dps.toml")));
    for f in [
        "samples.npy",
        "summary.json",
        "metrics.json",
        "grid.png",
        "samples.png",
        "mean.png",
        "std.png",
        "pinv.png",
        "truth.png",
    ] {
        assert!(dir.join("out_dps").join(f).exists(), "missing {f}");
    }
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out_dps/metrics.json")).unwrap())
            .unwrap();
    assert!(m["mean"]["quality"]["psnr"].is_number());
    // 8 x 8 is below SSIM's 11 x 11 window: reported as null, not an error.
    assert!(m["mean"]["quality"]["ssim"].is_null());
    assert!(m["pseudo_inverse"]["quality"]["psnr"].is_number());
    assert_eq!(m["samples"].as_array().unwrap().len(), 3);
    assert!(m["samples"][0]["residual"].is_number());

    // Algorithm 2 warm-started from DPS, on MRI.
    std::fs::write(
        dir.join("local.toml"),
        cfg(
            "kind = \"local\"\nwarm_start = \"dps\"\nwarm_steps = 4\nsigma = 0.5\nstages = 3\nsteps_per_stage = 2\ninit_steps = 3",
            "kind = \"mri\"\nacceleration = 2\ncenter_lines = 2",
            "out_local",
        ),
    )
    .unwrap();
    ok(bin()
        .args(["sample", "--quiet", "--config"])
        .arg(dir.join("local.toml")));
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out_local/summary.json")).unwrap())
            .unwrap();
    // DPS warm start (forward + backward per step) + diffusion start + 2 stages of 2 steps.
    assert!(s["score_evals_per_sample"].as_u64().unwrap() > 7, "{s}");

    // Every sampler that needs only D(x, sigma) runs on the network prior unchanged.
    for (i, sampler) in [
        "kind = \"annealed\"\nstages = 3\nsteps_per_stage = 2\ninit_steps = 3\nscore_sigma = 0.05",
        "kind = \"cs\"\nestimator = \"least-squares\"\nstages = 3\nsteps_per_stage = 2\ninit_steps = 3",
        "kind = \"ula\"\nsteps = 3\ninit = \"noise\"\nscore_sigma = 0.05",
        "kind = \"daps\"\nannealing_steps = 3\node_steps = 2\nlangevin_steps = 2",
        "kind = \"ald\"\nlevels = 3\nsteps_per_level = 2",
        "kind = \"prior\"\nsteps = 4\ninit_method = \"heun\"",
        "kind = \"smc\"\nmoves_per_stage = 2\nfinal_moves = 2\ninit_steps = 3\nscore_sigma = 0.05\nfinal_denoise = true",
    ]
    .iter()
    .enumerate()
    {
        let name = format!("s{i}.toml");
        std::fs::write(dir.join(&name), cfg(sampler, "kind = \"inpaint\"\nrate = 0.5", &format!("out_s{i}"))).unwrap();
        ok(bin().args(["sample", "--quiet", "--config"]).arg(dir.join(&name)));
        assert!(dir.join(format!("out_s{i}/metrics.json")).exists(), "{sampler}");
    }
    // Samplers that need an analytic prior say so.
    std::fs::write(
        dir.join("mala.toml"),
        cfg("kind = \"mala\"", "kind = \"inpaint\"\nrate = 0.5", "o"),
    )
    .unwrap();
    fails(
        bin()
            .args(["sample", "--quiet", "--config"])
            .arg(dir.join("mala.toml")),
        &["mala", "analytic"],
    );

    // Mismatched shapes: images of another size than the model's.
    write_u8_npy(&dir.join("small.npy"), 2, 6, 6, |_, _, _| 0);
    std::fs::write(
        dir.join("bad1.toml"),
        cfg("kind = \"dps\"", "kind = \"superres\"\nfactor = 2", "o")
            .replace("data.npy", "small.npy"),
    )
    .unwrap();
    fails(
        bin()
            .args(["sample", "--quiet", "--config"])
            .arg(dir.join("bad1.toml")),
        &["small.npy", "[1, 6, 6]", "[1, 8, 8]"],
    );
    // An operator that does not fit the image (factor 3 does not divide 8).
    std::fs::write(
        dir.join("bad2.toml"),
        cfg("kind = \"dps\"", "kind = \"superres\"\nfactor = 3", "o"),
    )
    .unwrap();
    fails(
        bin()
            .args(["sample", "--quiet", "--config"])
            .arg(dir.join("bad2.toml")),
        &["operator"],
    );
    // Training data that does not match a configured image size.
    std::fs::write(
        dir.join("unet_bad.toml"),
        "[model]\nimage_size = [28, 28]\n",
    )
    .unwrap();
    fails(
        bin()
            .args(["train", "--quiet", "--data"])
            .arg(dir.join("data.npy"))
            .arg("--config")
            .arg(dir.join("unet_bad.toml"))
            .arg("--out")
            .arg(dir.join("m2")),
        &["data.npy", "[1, 8, 8]", "image_size"],
    );
    // An image operator with a vector prior.
    std::fs::write(
        dir.join("bad3.toml"),
        "[prior]\nkind = \"isotropic\"\nd = 64\n[operator]\nkind = \"blur\"\nkernel_size = 3\nstd = 1.0\n[measurement]\ny = \"y.npy\"\neta = 0.1\n",
    )
    .unwrap();
    fails(
        bin()
            .args(["sample", "--quiet", "--config"])
            .arg(dir.join("bad3.toml")),
        &["needs an image prior"],
    );
}

/// The shipped test digits and a tiny model trained on them for 2 steps in `dir/model`.
fn tiny_model(dir: &Path) -> (PathBuf, PathBuf) {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist_test256.npy");
    std::fs::write(
        dir.join("unet.toml"),
        "[model]\nbase_channels = 8\nchannel_mults = [1, 2]\nattn_resolutions = [7]\ngroups = 4\nemb_dim = 16\nfourier_features = 4\n\
         [train]\nsteps = 2\nbatch_size = 4\ncheckpoint_every = 2\n",
    )
    .unwrap();
    let model = dir.join("model");
    ok(bin()
        .args(["train", "--quiet", "--data"])
        .arg(&data)
        .arg("--config")
        .arg(dir.join("unet.toml"))
        .arg("--out")
        .arg(&model));
    (data, model)
}

#[test]
fn demo_images_runs_on_a_tiny_model() {
    let dir = tmpdir("demo");
    let (data, model) = tiny_model(&dir);
    let out = dir.join("demo");
    let o = bin()
        .args([
            "demo",
            "--images",
            "--count",
            "1",
            "--n",
            "2",
            "--dps-steps",
            "3",
            "--model",
        ])
        .arg(&model)
        .arg("--data")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8_lossy(&o.stdout);
    for task in ["inpaint", "superres2x", "deblur", "mri4x"] {
        assert!(table.contains(task), "{table}");
        assert!(out.join(format!("{task}.png")).exists());
    }
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    let t0 = &m["tasks"][0]["results"];
    assert_eq!(t0.as_array().unwrap().len(), 3);
    assert!(t0[1]["psnr_mean"].is_number() && t0[2]["ssim_mean"].is_number());
    // Without a model: a clear error saying how to get one.
    let o = bin()
        .args(["demo", "--images", "--model"])
        .arg(dir.join("nothing"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("diffpost train"));
}

/// `diffpost tradeoff` on a tiny model: the table, plot and JSON are written; the same seed
/// reproduces the run exactly; another sampler seed changes the samples (L2) but not the
/// ground truths' own distance to the held-out digits; a bad step size is a clear error.
#[test]
fn tradeoff_writes_outputs_and_its_seed_is_the_sampler_seed() {
    let dir = tmpdir("tradeoff");
    let (data, model) = tiny_model(&dir);
    let run = |name: &str, seed: &str| -> serde_json::Value {
        let out = dir.join(name);
        ok(bin()
            .args(["tradeoff", "--images", "2", "--dps-steps", "3"])
            .args(["--steps-per-stage", "1,2", "--seed", seed, "--model"])
            .arg(&model)
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(&out));
        for f in ["tradeoff.png", "tradeoff.md"] {
            assert!(out.join(f).exists(), "{f}");
        }
        serde_json::from_str(&std::fs::read_to_string(out.join("tradeoff.json")).unwrap()).unwrap()
    };
    let a = run("a", "0");
    let b = run("b", "0");
    let c = run("c", "1");
    let rows = a["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "DPS plus two annealing times: {a}");
    assert_eq!(rows[0]["steps_per_stage"], 0);
    assert_eq!(a["rows"], b["rows"], "same seed, same run");
    assert_eq!(a["floor_sw2"], c["floor_sw2"]);
    assert_eq!(c["seed"], 1);
    for (ra, rc) in rows.iter().zip(c["rows"].as_array().unwrap()) {
        assert_ne!(ra["mean_l2"], rc["mean_l2"], "another seed, other samples");
    }
    fails(
        bin()
            .args(["tradeoff", "--h-rel", "0", "--out"])
            .arg(dir.join("bad")),
        &["--h-rel"],
    );
}

/// Reads the payload of a little-endian f64 or f32 `.npy` as f64.
fn npy_payload(path: &Path) -> Vec<f64> {
    let b = std::fs::read(path).unwrap();
    let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
    let header = String::from_utf8_lossy(&b[10..10 + hl]).to_string();
    let body = &b[10 + hl..];
    if header.contains("<f8") {
        body.chunks(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    } else {
        assert!(header.contains("<f4"), "{header}");
        body.chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect()
    }
}

/// With a network prior, sample `i` of a seed does not depend on the batch size (the network
/// runs on the whole batch: its convolution tiles and Winograd chunks change with it), for a
/// sampler that differentiates through the network (DPS) and one that only evaluates it (ULA).
#[test]
fn network_prior_samples_do_not_depend_on_batch_size() {
    let dir = tmpdir("batch");
    let (data, _model) = tiny_model(&dir);
    for (name, sampler) in [
        ("dps", "kind = \"dps\"\nsteps = 4"),
        ("ula", "kind = \"ula\"\nsteps = 4"),
    ] {
        let mut outs = Vec::new();
        for batch in [5, 2] {
            let out = format!("out_{name}_{batch}");
            let cfg = dir.join(format!("{name}_{batch}.toml"));
            std::fs::write(
                &cfg,
                format!(
                    "[prior]\nkind = \"unet\"\npath = \"model\"\n[operator]\nkind = \"superres\"\nfactor = 2\n\
                     [measurement]\ntruth = \"{}\"\nindex = 3\neta = 0.1\n[sampler]\n{sampler}\n\
                     [run]\nn = 5\nbatch = {batch}\nseed = 1\nout = \"{out}\"\n",
                    data.display()
                ),
            )
            .unwrap();
            ok(bin().args(["sample", "--quiet", "--config"]).arg(&cfg));
            outs.push(npy_payload(&dir.join(out).join("samples.npy")));
        }
        assert_eq!(outs[0].len(), 5 * 28 * 28, "{name}");
        for (u, v) in outs[0].iter().zip(&outs[1]) {
            assert!(
                (u - v).abs() <= 1e-5 * (1.0 + u.abs()),
                "{name}: {u} vs {v}"
            );
        }
    }
}
