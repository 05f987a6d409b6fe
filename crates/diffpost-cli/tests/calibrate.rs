//! `diffpost calibrate` through the binary: a config whose [measurement] holds eta alone, the
//! whole calibration against two shards merged (same ranks), the outputs, and the refusals (bad
//! counts, an existing calibration without --force, a missing shard, `merge` given calibration
//! folders, a warm start from a file).

mod common;
use common::*;

use std::path::{Path, PathBuf};

fn ok(o: std::process::Output) -> std::process::Output {
    assert!(o.status.success(), "command failed: {}", stderr(&o));
    o
}

fn fails(o: std::process::Output) -> String {
    assert_eq!(o.status.code(), Some(1), "expected exit 1: {}", stderr(&o));
    let e = stderr(&o);
    assert!(e.starts_with("error: "), "{e}");
    e
}

fn result(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("calibration.json")).unwrap()).unwrap()
}

fn ranks(v: &serde_json::Value) -> Vec<serde_json::Value> {
    v["replicates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ranks"].clone())
        .collect()
}

/// A d = 6 mixture instance and a config with `sampler`; `[measurement]` has eta only.
fn setup(name: &str, sampler: &str) -> (PathBuf, PathBuf) {
    let dir = tmpdir(name);
    ok(run(bin()
        .args([
            "problem", "gmm", "--d", "6", "--m", "3", "--k", "2", "--eta", "0.3", "--seed", "2",
            "--out",
        ])
        .arg(dir.join("p"))));
    let cfg = dir.join("p/cal.toml");
    std::fs::write(
        &cfg,
        format!(
            "[prior]\nkind = \"gmm\"\npath = \"prior.npz\"\n[operator]\nkind = \"matrix\"\npath = \"A.npy\"\n\
             [measurement]\neta = 0.3\n[sampler]\n{sampler}\n"
        ),
    )
    .unwrap();
    (dir, cfg)
}

#[test]
fn calibrate_shards_merge_and_refusals() {
    let (dir, cfg) = setup("flow", "kind = \"exact\"");
    // R = 40, L = 15, seed 5 unless `extra` gives them.
    let cal = |extra: &[&str], out: &str| {
        let defaults: Vec<&str> = [("--replicates", "40"), ("--samples", "15"), ("--seed", "5")]
            .iter()
            .filter(|(k, _)| !extra.contains(k))
            .flat_map(|(k, v)| [*k, *v])
            .collect();
        run(bin()
            .arg("calibrate")
            .arg(&cfg)
            .arg("--quiet")
            .args(defaults)
            .args(extra)
            .arg("--out")
            .arg(dir.join(out)))
    };
    let o = ok(cal(&[], "whole"));
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        text.contains("calibration of exact (x* exact): 40 replicates"),
        "{text}"
    );
    assert!(
        text.contains("misfit") && text.contains("verdict:"),
        "{text}"
    );
    let whole = result(&dir.join("whole"));
    assert!(dir.join("whole/calibration.png").exists());
    assert_eq!(whole["summary"]["replicates"], 40);
    assert_eq!(whole["options"]["samples"], 15);
    assert_eq!(whole["truth_sampler"], "exact");
    let names = whole["statistics"].as_array().unwrap();
    assert_eq!(names.len(), 14, "{names:?}");

    ok(cal(&["--shard", "1/2"], "s1"));
    ok(cal(&["--shard", "0/2"], "s0"));
    let o = ok(run(bin()
        .args(["calibrate", "merge"])
        .arg(dir.join("s1"))
        .arg(dir.join("s0"))
        .arg("--out")
        .arg(dir.join("merged"))));
    assert!(String::from_utf8_lossy(&o.stdout).contains("merged 2 parts"));
    let merged = result(&dir.join("merged"));
    assert_eq!(ranks(&merged), ranks(&whole));
    assert_eq!(merged["summary"]["passed"], whole["summary"]["passed"]);
    assert_eq!(merged["fingerprint"], whole["fingerprint"]);
    assert_eq!(merged["merged_from"], 2);

    // An existing calibration is not replaced without --force; with it, it is.
    let before = std::fs::read(dir.join("whole/calibration.json")).unwrap();
    let e = fails(cal(&["--seed", "6"], "whole"));
    assert!(e.contains("--force"), "{e}");
    assert_eq!(
        std::fs::read(dir.join("whole/calibration.json")).unwrap(),
        before
    );
    ok(cal(&["--seed", "6", "--force"], "whole"));
    assert_eq!(result(&dir.join("whole"))["options"]["seed"], 6);

    // Bad counts and shards name the flag; nothing is written.
    let e = fails(cal(&["--replicates", "0"], "bad"));
    assert!(e.contains("--replicates: must be >= 1"), "{e}");
    let e = fails(cal(&["--samples", "0"], "bad"));
    assert!(e.contains("--samples: must be >= 1"), "{e}");
    let e = fails(cal(&["--shard", "2/2"], "bad"));
    assert!(e.contains("2/2"), "{e}");
    assert!(!dir.join("bad").exists());

    // Merging: a missing shard, shards of another seed, and `diffpost merge` on calibrations.
    let e = fails(run(bin()
        .args(["calibrate", "merge"])
        .arg(dir.join("s1"))
        .arg("--out")
        .arg(dir.join("m2"))));
    assert!(e.contains("missing 20 of 40 replicates: 0-19"), "{e}");
    let e = fails(run(bin()
        .args(["calibrate", "merge"])
        .arg(dir.join("s1"))
        .arg(dir.join("whole"))
        .arg("--out")
        .arg(dir.join("m2"))));
    assert!(e.contains("its seed differs"), "{e}");
    let e = fails(run(bin()
        .arg("merge")
        .arg(dir.join("s0"))
        .arg(dir.join("s1"))
        .arg("--out")
        .arg(dir.join("m2"))));
    assert!(e.contains("diffpost calibrate merge"), "{e}");
    assert!(!dir.join("m2").exists());
}

#[test]
fn calibrate_refuses_a_file_warm_start() {
    let (dir, cfg) = setup(
        "warm",
        "kind = \"local\"\nsigma = 0.1\nwarm_start = \"x0.npy\"",
    );
    let e = fails(run(bin()
        .arg("calibrate")
        .arg(&cfg)
        .args(["--replicates", "4", "--samples", "3", "--quiet", "--out"])
        .arg(dir.join("c"))));
    assert!(
        e.contains("sampler.warm_start") && e.contains("x0.npy"),
        "{e}"
    );
    assert!(!dir.join("c").exists());
}
