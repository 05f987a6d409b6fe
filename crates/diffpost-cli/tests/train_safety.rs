//! `diffpost train` never loses a trained model and commits checkpoints as one: a model without a
//! checkpoint (like the shipped ones) needs `--resume-from-model` or `--force`; an architecture
//! mismatch is an error; a second concurrent run into the same folder is refused; a SIGKILL at
//! any moment leaves config, weights, optimizer state and loss log of one checkpoint, and the
//! resumed run ends bit-identical to an uninterrupted one. Tiny UNet on the shipped test digits.

mod common;
use common::*;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};

fn data() -> PathBuf {
    repo().join("data/mnist_test256.npy")
}

/// A tiny UNet config for 28x28 digits: `base` channels, `steps` steps, a checkpoint `every`.
fn tiny_config(dir: &Path, name: &str, base: usize, steps: u64, every: u64) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!(
            "[model]\nbase_channels = {base}\nchannel_mults = [1, 2]\nattn_resolutions = [7]\ngroups = 4\nemb_dim = 16\nfourier_features = 4\n\
             [train]\nsteps = {steps}\nbatch_size = 4\ncheckpoint_every = {every}\nwarmup_steps = 2\n"
        ),
    )
    .unwrap();
    p
}

fn train(config: &Path, out: &Path, flags: &[&str]) -> Command {
    let mut c = bin();
    c.args(["train", "--data"])
        .arg(data())
        .arg("--config")
        .arg(config)
        .arg("--out")
        .arg(out)
        .args(flags);
    c
}

fn run(c: &mut Command) -> (Output, String) {
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!err.contains("panicked"), "panic: {err}");
    (o, err)
}

fn ok(c: &mut Command) -> String {
    let (o, err) = run(c);
    assert!(o.status.success(), "command failed: {err}");
    err
}

/// Runs `c`, expects exit code 1 and an error mentioning every needle; returns stderr.
fn fails(c: &mut Command, needles: &[&str]) -> String {
    let (o, err) = run(c);
    assert_eq!(o.status.code(), Some(1), "expected exit code 1: {err}");
    for n in needles {
        assert!(err.contains(n), "error should mention `{n}`: {err}");
    }
    err
}

/// The steps of `loss.txt`, in order.
fn loss_steps(model: &Path) -> Vec<u64> {
    std::fs::read_to_string(model.join("loss.txt"))
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().parse().unwrap())
        .collect()
}

fn config_json(model: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap()
}

fn tensors(p: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(p, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn checkpoint_step(model: &Path) -> i64 {
    let m = tensors(&model.join("checkpoint.safetensors"));
    m["trainer.step"].to_vec1::<i64>().unwrap()[0]
}

/// Copies the files of folder `from` into a new folder `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// The files of a folder and their bytes.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// A tiny model trained for `steps` steps into `dir/name`, its checkpoint removed (a model
/// folder like the shipped ones).
fn model_without_checkpoint(dir: &Path, name: &str, steps: u64) -> PathBuf {
    let cfg = tiny_config(dir, &format!("{name}.toml"), 8, steps, 2);
    let model = dir.join(name);
    ok(&mut train(&cfg, &model, &["--quiet"]));
    std::fs::remove_file(model.join("checkpoint.safetensors")).unwrap();
    model
}

/// (a) A copy of the shipped MNIST model (a model, no checkpoint) is refused without a flag,
/// with `--fresh` alone, and left byte-identical; with `--resume-from-model` at its own step
/// count there is nothing to train and nothing is written.
#[test]
fn model_without_checkpoint_is_refused() {
    let dir = tmpdir("refused");
    let shipped = repo().join("models/mnist");
    let model = dir.join("mnist");
    copy_dir(&shipped, &model);
    let before = snapshot(&model);
    let cfg = repo().join("models/mnist.toml");
    let err = fails(
        &mut train(&cfg, &model, &["--quiet"]),
        &[
            "--resume-from-model",
            "--force",
            "no checkpoint",
            "step 12000",
        ],
    );
    assert!(!err.contains("resuming"), "{err}");
    fails(
        &mut train(&cfg, &model, &["--quiet", "--fresh"]),
        &["--force"],
    );
    // A smaller architecture: the same refusal, before any architecture check.
    let tiny = tiny_config(&dir, "tiny.toml", 8, 4, 2);
    fails(
        &mut train(&tiny, &model, &["--quiet"]),
        &["--resume-from-model", "--force"],
    );
    let err = ok(&mut train(
        &cfg,
        &model,
        &["--quiet", "--resume-from-model"],
    ));
    assert!(err.contains("nothing to train"), "{err}");
    assert_eq!(snapshot(&model), before, "the model folder changed");
    // No lock or staging folder left beside it.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(left.iter().all(|n| !n.starts_with('.')), "{left:?}");
}

/// (b) `--resume-from-model` continues a model without a checkpoint: the step count and the loss
/// log continue (no step twice), a checkpoint exists again and a plain run resumes from it.
#[test]
fn resume_from_model_continues() {
    let dir = tmpdir("resume-model");
    let model = model_without_checkpoint(&dir, "m", 4);
    assert_eq!(loss_steps(&model), [2, 4]);
    let log4 = std::fs::read_to_string(model.join("loss.txt")).unwrap();
    let cfg = tiny_config(&dir, "m6.toml", 8, 6, 2);
    let err = ok(&mut train(&cfg, &model, &["--resume-from-model"]));
    assert!(err.contains("at step 4"), "{err}");
    assert_eq!(loss_steps(&model), [2, 4, 6]);
    let log6 = std::fs::read_to_string(model.join("loss.txt")).unwrap();
    assert!(log6.starts_with(&log4), "{log4} / {log6}");
    assert_eq!(config_json(&model)["step"], 6);
    assert_eq!(checkpoint_step(&model), 6);
    let cfg = tiny_config(&dir, "m8.toml", 8, 8, 2);
    let err = ok(&mut train(&cfg, &model, &[]));
    assert!(err.contains("resuming from step 6"), "{err}");
    assert_eq!(loss_steps(&model), [2, 4, 6, 8]);
    assert_eq!(config_json(&model)["step"], 8);
}

/// (c) `--force` starts over from step 0: on a model without a checkpoint and on one with a
/// checkpoint (which it would otherwise resume); the old loss log is gone.
#[test]
fn force_restarts() {
    let dir = tmpdir("force");
    let model = model_without_checkpoint(&dir, "m", 4);
    let cfg = tiny_config(&dir, "m2.toml", 8, 2, 2);
    ok(&mut train(&cfg, &model, &["--quiet", "--force"]));
    assert_eq!(loss_steps(&model), [2]);
    assert_eq!(config_json(&model)["step"], 2);
    assert_eq!(checkpoint_step(&model), 2);
    // With a checkpoint at step 2 and steps = 4: a plain run would resume; --force restarts
    // with another architecture too.
    let cfg = tiny_config(&dir, "m4.toml", 16, 4, 4);
    ok(&mut train(&cfg, &model, &["--quiet", "--force"]));
    assert_eq!(loss_steps(&model), [4]);
    assert_eq!(config_json(&model)["model"]["base_channels"], 16);
    // --fresh --force is the same as --force.
    let cfg = tiny_config(&dir, "m2.toml", 16, 2, 2);
    ok(&mut train(&cfg, &model, &["--quiet", "--fresh", "--force"]));
    assert_eq!(loss_steps(&model), [2]);
    // A folder holding a file train did not write is refused even with --force.
    std::fs::write(model.join("notes.md"), "mine").unwrap();
    fails(
        &mut train(&cfg, &model, &["--quiet", "--force"]),
        &["notes.md"],
    );
    assert!(model.join("notes.md").exists());
}

/// (d) Another architecture on resume is an error naming the field, with or without a
/// checkpoint; the folder is left as it was.
#[test]
fn architecture_mismatch_on_resume_is_an_error() {
    let dir = tmpdir("mismatch");
    let model = model_without_checkpoint(&dir, "m", 2);
    let before = snapshot(&model);
    let wide = tiny_config(&dir, "wide.toml", 16, 4, 2);
    fails(
        &mut train(&wide, &model, &["--quiet", "--resume-from-model"]),
        &["model.base_channels", "8 in the folder, 16 requested"],
    );
    assert_eq!(snapshot(&model), before);
    // With a checkpoint: the plain resume refuses the same way (never a silent restart).
    let cfg = tiny_config(&dir, "m2.toml", 8, 2, 2);
    ok(&mut train(&cfg, &model, &["--quiet", "--force"]));
    let before = snapshot(&model);
    fails(
        &mut train(&wide, &model, &["--quiet"]),
        &["model.base_channels", "--force"],
    );
    assert_eq!(snapshot(&model), before);
    // --resume-from-model into an empty folder: nothing to resume.
    fails(
        &mut train(
            &cfg,
            &dir.join("empty"),
            &["--quiet", "--resume-from-model"],
        ),
        &["--resume-from-model", "none"],
    );
}

/// Waits up to 60 s for `cond`.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(60), "timed out: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// (e) A second `train` into a folder being trained fails at start with the lock message; the
/// first one finishes with a consistent folder.
#[test]
fn concurrent_train_is_refused() {
    let dir = tmpdir("concurrent");
    let cfg = tiny_config(&dir, "m.toml", 8, 150, 50);
    let model = dir.join("m");
    let first = train(&cfg, &model, &["--quiet"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for("the first run's lock", || dir.join(".m.lock").exists());
    let t0 = Instant::now();
    fails(
        &mut train(&cfg, &model, &["--quiet"]),
        &["another diffpost process", ".m.lock"],
    );
    let refused_after = t0.elapsed();
    let o = first.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(loss_steps(&model), [50, 100, 150]);
    assert_eq!(config_json(&model)["step"], 150);
    assert_eq!(checkpoint_step(&model), 150);
    assert!(!dir.join(".m.lock").exists());
    assert!(
        refused_after < Duration::from_secs(5),
        "refused only after {refused_after:?}"
    );
}

/// (f) SIGKILL after the first checkpoint: the folder holds config, weights, optimizer state
/// and loss log of one checkpoint; the resumed run ends with the same weights and loss log, bit
/// for bit, as an uninterrupted run.
#[test]
fn kill_leaves_one_checkpoint_and_resume_is_exact() {
    let dir = tmpdir("kill");
    let cfg = tiny_config(&dir, "m.toml", 8, 60, 1);
    let reference = dir.join("reference");
    ok(&mut train(&cfg, &reference, &["--quiet"]));
    let model = dir.join("m");
    // Kill at a few different moments after the first commit (mid-step, mid-write, mid-swap).
    for (round, delay_ms) in [0u64, 7, 23].into_iter().enumerate() {
        let mut child = train(&cfg, &model, &["--quiet"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let start = if round == 0 {
            0
        } else {
            *loss_steps(&model).last().unwrap()
        };
        wait_for("a checkpoint", || {
            std::fs::read_to_string(model.join("loss.txt"))
                .ok()
                .and_then(|t| t.lines().last().map(|l| l.to_string()))
                .and_then(|l| l.split_whitespace().next()?.parse::<u64>().ok())
                .is_some_and(|s| s > start)
        });
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        // One checkpoint's state: config step = checkpoint step = last loss step; loss steps
        // 1..=step with the uninterrupted run's values; weights = the checkpoint's EMA.
        let steps = loss_steps(&model);
        let step = *steps.last().unwrap();
        assert!(
            step < 60 || status.success(),
            "round {round}: finished before the kill"
        );
        assert_eq!(steps, (1..=step).collect::<Vec<_>>());
        assert_eq!(config_json(&model)["step"], step);
        assert_eq!(checkpoint_step(&model), step as i64);
        let reference_log = std::fs::read_to_string(reference.join("loss.txt")).unwrap();
        let log = std::fs::read_to_string(model.join("loss.txt")).unwrap();
        assert!(reference_log.starts_with(&log), "{log}");
        let ckpt = tensors(&model.join("checkpoint.safetensors"));
        let weights = tensors(&model.join("weights.safetensors"));
        assert!(!weights.is_empty());
        for (name, w) in &weights {
            assert_eq!(values(w), values(&ckpt[&format!("ema.{name}")]), "{name}");
        }
    }
    let err = ok(&mut train(&cfg, &model, &[]));
    assert!(err.contains("resuming from step"), "{err}");
    assert_eq!(
        std::fs::read(model.join("weights.safetensors")).unwrap(),
        std::fs::read(reference.join("weights.safetensors")).unwrap(),
        "resumed weights differ from the uninterrupted run's"
    );
    assert_eq!(
        std::fs::read_to_string(model.join("loss.txt")).unwrap(),
        std::fs::read_to_string(reference.join("loss.txt")).unwrap()
    );
    // The dead runs' lock and staging folders are gone.
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(left.iter().all(|n| !n.starts_with('.')), "{left:?}");
}
