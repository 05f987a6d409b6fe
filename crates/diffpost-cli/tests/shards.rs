//! Sharded runs through the binary: a config run whole and as 3 shards (through the Slurm and the
//! Kubernetes example scripts, the index set as those schedulers set it) gives the same samples
//! after `merge`; `merge` refuses a missing or repeated shard and shards of another seed or
//! config, writing nothing; `summary.json` aggregates over batches.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn ok(o: Output) -> Output {
    assert!(
        o.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn summary(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

/// An instance with a config running `sampler`, n = 13 (shards of 5, 4, 4).
fn setup(name: &str, sampler: &str, seed: u64) -> (PathBuf, PathBuf) {
    let dir = tmpdir(name);
    ok(bin()
        .args([
            "problem", "gmm", "--d", "6", "--m", "3", "--k", "2", "--eta", "0.3", "--seed", "2",
            "--out",
        ])
        .arg(&dir)
        .output()
        .unwrap());
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[prior]\nkind = \"gmm\"\npath = \"prior.npz\"\n[operator]\nkind = \"matrix\"\npath = \"A.npy\"\n\
             [measurement]\ny = \"y.npy\"\neta = 0.3\n[sampler]\n{sampler}\n[run]\nn = 13\nseed = {seed}\nbatch = 3\nout = \"whole\"\n"
        ),
    )
    .unwrap();
    (dir, cfg)
}

#[test]
fn three_shards_merge_to_the_unsharded_run() {
    let sampler = "kind = \"mala\"\nsteps = 30\ninit = \"exact-prior\"\nh_rel = 1.0";
    let (dir, cfg) = setup("merge", sampler, 4);
    ok(bin()
        .args(["sample", "--quiet", "--config"])
        .arg(&cfg)
        .output()
        .unwrap());
    let whole = std::fs::read(dir.join("whole/samples.npy")).unwrap();

    // Shards 0 and 1 through the Slurm script, shard 2 through the Kubernetes one.
    for k in 0..3 {
        let (script, var) = if k < 2 {
            ("slurm_sample.sh", "SLURM_ARRAY_TASK_ID")
        } else {
            ("k8s_shard.sh", "JOB_COMPLETION_INDEX")
        };
        ok(Command::new("bash")
            .arg(repo().join("examples/cluster").join(script))
            .env(var, k.to_string())
            .env("SHARDS", "3")
            .env("CONFIG", &cfg)
            .env("OUT", dir.join("shards"))
            .env("DIFFPOST", env!("CARGO_BIN_EXE_diffpost"))
            .output()
            .unwrap());
    }
    let s1 = summary(&dir.join("shards/1"));
    assert_eq!(s1["run"]["shard"]["index"], 1);
    assert_eq!(s1["run"]["sample_range"], serde_json::json!([5, 9]));
    let shards: Vec<PathBuf> = [2, 0, 1]
        .iter()
        .map(|k| dir.join(format!("shards/{k}")))
        .collect();
    ok(bin()
        .arg("merge")
        .args(&shards)
        .arg("--out")
        .arg(dir.join("merged"))
        .output()
        .unwrap());
    assert_eq!(
        whole,
        std::fs::read(dir.join("merged/samples.npy")).unwrap()
    );
    let (w, m) = (summary(&dir.join("whole")), summary(&dir.join("merged")));
    assert_eq!(w["fingerprint"], m["fingerprint"]);
    assert_eq!(w["diagnostics"]["samples"], 13);
    // MALA's acceptance over 5 batches of 3, 3, 3, 3, 1 samples equals the merged shards' (whose
    // batches differ), as a sample-weighted mean.
    let (a, b) = (
        w["diagnostics"]["acceptance"]["mean"].as_f64().unwrap(),
        m["diagnostics"]["acceptance"]["mean"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-12, "{a} vs {b}");
    assert_eq!(m["diagnostics"]["acceptance"]["samples"], 13);

    let refuses = |dirs: &[PathBuf], needle: &str, name: &str| {
        let out = dir.join(name);
        let o = bin()
            .arg("merge")
            .args(dirs)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success(), "merge should fail ({needle})");
        assert!(
            err.contains(needle),
            "error should mention `{needle}`: {err}"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(!out.exists(), "nothing may be written on failure");
    };
    refuses(&shards[..2], "missing shard(s) 1/3", "m1");
    refuses(
        &[
            shards[0].clone(),
            shards[1].clone(),
            shards[2].clone(),
            shards[1].clone(),
        ],
        "twice",
        "m2",
    );

    // A shard of the same config with another seed, and of another config.
    let other_seed = cfg.with_file_name("seed.toml");
    std::fs::write(
        &other_seed,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("seed = 4", "seed = 5"),
    )
    .unwrap();
    ok(bin()
        .args(["sample", "--quiet", "--shard", "1/3", "--config"])
        .arg(&other_seed)
        .arg("--out")
        .arg(dir.join("seed1"))
        .output()
        .unwrap());
    refuses(
        &[shards[1].clone(), shards[2].clone(), dir.join("seed1")],
        "seed",
        "m3",
    );
    let other_cfg = cfg.with_file_name("steps.toml");
    std::fs::write(
        &other_cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("steps = 30", "steps = 31"),
    )
    .unwrap();
    ok(bin()
        .args(["sample", "--quiet", "--shard", "1/3", "--config"])
        .arg(&other_cfg)
        .arg("--out")
        .arg(dir.join("cfg1"))
        .output()
        .unwrap());
    refuses(
        &[shards[1].clone(), shards[2].clone(), dir.join("cfg1")],
        "fingerprint",
        "m4",
    );
}

#[test]
fn bad_shard_arguments_are_refused_before_sampling() {
    let (dir, cfg) = setup("badshard", "kind = \"exact\"", 0);
    for (arg, needle) in [
        ("3/3", "K/N"),
        ("x", "K/N"),
        ("0/20", "shards for 13 populations"),
    ] {
        let o = bin()
            .args(["sample", "--quiet", "--shard", arg, "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(!o.status.success() && err.contains(needle), "{arg}: {err}");
        assert!(!dir.join("whole").exists());
    }
}

#[test]
fn old_key_names_still_work_with_a_warning() {
    let (dir, cfg) = setup(
        "alias",
        "kind = \"ald\"\nlevels = 3\nsteps_per_level = 2",
        0,
    );
    let o = ok(bin()
        .args(["sample", "--config"])
        .arg(&cfg)
        .output()
        .unwrap());
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        err.contains("`levels` is deprecated: use `stages`"),
        "{err}"
    );
    let s = summary(&dir.join("whole"));
    assert_eq!(s["params"]["stages"], 3);
    assert_eq!(s["params"]["steps_per_stage"], 2);
    assert_eq!(s["score_evals_per_sample"], 6);
    assert!(s["warnings"][0].as_str().unwrap().contains("levels"));
}

#[test]
fn smc_writes_weights_evidence_and_eval_reports_mode_weights() {
    let (dir, cfg) = setup(
        "smc",
        "kind = \"smc\"\nmoves_per_stage = 20\nfinal_moves = 20",
        0,
    );
    ok(bin()
        .args(["sample", "--quiet", "--config"])
        .arg(&cfg)
        .output()
        .unwrap());
    let out = dir.join("whole");
    for f in ["samples.npy", "particles.npy", "weights.npy"] {
        assert!(out.join(f).exists(), "{f}");
    }
    let s = summary(&out);
    let lz = s["log_evidence"].as_f64().unwrap();
    assert!(lz.is_finite());
    let trace = &s["info"]["smc"][0];
    assert_eq!(trace["lambdas"].as_array().unwrap().last().unwrap(), 1.0);
    let e = ok(bin()
        .args(["eval", "--reference", "4000", "--config"])
        .arg(&cfg)
        .arg("--samples")
        .arg(out.join("samples.npy"))
        .output()
        .unwrap());
    let m: serde_json::Value = serde_json::from_slice(&e.stdout).unwrap();
    assert!(
        m["mode_tv"]["value"].is_number() && m["mode_tv"]["floor_sd"].is_number(),
        "{m}"
    );
    assert_eq!(m["log_evidence"]["estimate"].as_f64().unwrap(), lz);
    let err = m["log_evidence"]["error"].as_f64().unwrap();
    assert!(err.abs() < 1.0, "{err}");
}

#[test]
fn bench_posterior_quick_runs() {
    let dir = tmpdir("bench");
    let o = ok(bin()
        .args(["bench", "posterior", "--quick", "--n", "100", "--data"])
        .arg(repo().join("data"))
        .arg("--out")
        .arg(&dir)
        .output()
        .unwrap());
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    for name in [
        "gaussian-cs",
        "separated-d10",
        "digits-inpaint",
        "smc",
        "smc-gibbs",
        "annealed",
    ] {
        assert!(table.contains(name), "{table}");
    }
    for f in ["bench.md", "bench.json", "bench.png"] {
        assert!(dir.join(f).exists(), "{f}");
    }
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("bench.json")).unwrap()).unwrap();
    assert_eq!(j["rows"].as_array().unwrap().len(), 3 * 9);
}

#[test]
fn bench_integrator_quick_runs() {
    let dir = tmpdir("bench_integrator");
    ok(bin()
        .args(["bench", "integrator", "--quick", "--out"])
        .arg(&dir)
        .output()
        .unwrap());
    for f in ["integrator.md", "integrator.json", "integrator.png"] {
        assert!(dir.join(f).exists(), "{f}");
    }
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("integrator.json")).unwrap())
            .unwrap();
    let rows = j.as_array().unwrap();
    assert_eq!(rows.len(), 4);
    // Per sampler: Euler then exact-likelihood; the latter meets the target with at most a
    // quarter of Euler's evaluations (or Euler never does).
    for pair in rows.chunks(2) {
        let new = pair[1]["evals_to_target"]
            .as_u64()
            .expect("exact-likelihood meets 1.2x");
        if let Some(old) = pair[0]["evals_to_target"].as_u64() {
            assert!(old >= 4 * new, "{old} vs {new}");
        }
    }
}

#[test]
fn the_whole_config_is_validated_before_anything_is_loaded() {
    // A missing prior file and a typo in [sampler]: the typo is reported (nothing was read yet).
    let (dir, cfg) = setup("order", "kind = \"annealed\"\nstagez = 3", 0);
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("prior.npz", "missing.npz");
    std::fs::write(&cfg, text).unwrap();
    let o = bin()
        .args(["sample", "--quiet", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success());
    assert!(
        err.contains("stagez") && !err.contains("missing.npz"),
        "{err}"
    );
    // With the typo fixed, the missing file is what fails.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("stagez", "stages");
    std::fs::write(&cfg, text).unwrap();
    let o = bin()
        .args(["sample", "--quiet", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success() && err.contains("missing.npz"), "{err}");
    assert!(!dir.join("whole").exists());
}
