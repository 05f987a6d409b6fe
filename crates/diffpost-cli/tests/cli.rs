//! End-to-end tests of the `diffpost` binary: the documented flow works, and bad input gets a
//! clear error naming the file/field/shape, without a panic and without touching earlier outputs.

mod common;
use common::*;

use std::path::{Path, PathBuf};

/// Makes a d = 8, m = 4 instance and returns its folder.
fn instance(name: &str) -> PathBuf {
    let dir = tmpdir(name);
    let o = run(bin()
        .args([
            "problem", "gmm", "--d", "8", "--m", "4", "--k", "2", "--eta", "0.2", "--seed", "1",
            "--out",
        ])
        .arg(&dir));
    assert!(o.status.success(), "{}", stderr(&o));
    dir
}

fn write_config(dir: &Path, name: &str, sampler: &str, extra: &str) -> PathBuf {
    let toml = format!(
        "[prior]\nkind = \"gmm\"\npath = \"prior.npz\"\n[operator]\nkind = \"matrix\"\npath = \"A.npy\"\n\
         [measurement]\ny = \"y.npy\"\neta = 0.2\n{extra}\n[sampler]\n{sampler}\n[run]\nn = 64\nseed = 3\nout = \"out_{name}\"\n"
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, toml).unwrap();
    p
}

fn npy_f64_payload(path: &Path) -> Vec<f64> {
    // Minimal .npy reader for the test: header length at bytes 8..10 (v1).
    let b = std::fs::read(path).unwrap();
    let hl = u16::from_le_bytes([b[8], b[9]]) as usize;
    b[10 + hl..]
        .chunks(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

#[test]
fn sample_and_eval_flow_and_reproducibility() {
    let dir = instance("flow");
    let o = run(bin()
        .args(["sample", "--quiet", "--config"])
        .arg(dir.join("problem.toml")));
    assert!(o.status.success(), "{}", stderr(&o));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out/summary.json")).unwrap())
            .unwrap();
    for key in [
        "sampler",
        "params",
        "n",
        "d",
        "seed",
        "score_evals_per_sample",
        "wall_s",
    ] {
        assert!(summary.get(key).is_some(), "summary lacks {key}: {summary}");
    }
    assert_eq!(summary["score_evals_per_sample"], 8100);
    assert!(summary["params"]["eta_max"].as_f64().unwrap() > 0.2);
    let e = run(bin()
        .args(["eval", "--reference", "4000", "--config"])
        .arg(dir.join("problem.toml"))
        .arg("--samples")
        .arg(dir.join("out/samples.npy")));
    assert!(e.status.success(), "{}", stderr(&e));
    let m: serde_json::Value = serde_json::from_slice(&e.stdout).unwrap();
    for key in ["sw2", "mmd2", "mean_err", "cov_err"] {
        for f in ["value", "floor_mean", "floor_sd"] {
            assert!(m[key][f].is_number(), "{key}.{f} missing: {m}");
        }
    }

    // The same seed gives the same sample i whatever n and batch: run n = 64 with batch 7 and
    // n = 10 with batch 3; the first 10 rows agree.
    let a = write_config(
        &dir,
        "a",
        "kind = \"ula\"\nsteps = 50\ninit = \"noise\"",
        "",
    );
    let a_txt = std::fs::read_to_string(&a)
        .unwrap()
        .replace("n = 64", "n = 64\nbatch = 7");
    std::fs::write(&a, a_txt).unwrap();
    let b = write_config(
        &dir,
        "b",
        "kind = \"ula\"\nsteps = 50\ninit = \"noise\"",
        "",
    );
    let b_txt = std::fs::read_to_string(&b)
        .unwrap()
        .replace("n = 64", "n = 10\nbatch = 3");
    std::fs::write(&b, b_txt).unwrap();
    for c in [&a, &b] {
        let o = run(bin().args(["sample", "--quiet", "--config"]).arg(c));
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let xa = npy_f64_payload(&dir.join("out_a/samples.npy"));
    let xb = npy_f64_payload(&dir.join("out_b/samples.npy"));
    assert_eq!(xb.len(), 80);
    for (u, v) in xa[..80].iter().zip(&xb) {
        assert!((u - v).abs() <= 1e-9 * (1.0 + u.abs()), "{u} vs {v}");
    }
}

/// Runs `sample` on a config and asserts a clean failure whose message contains every `needle`.
fn fails_with(cfg: &Path, needles: &[&str]) {
    let o = run(bin().args(["sample", "--quiet", "--config"]).arg(cfg));
    let err = stderr(&o);
    assert!(
        !o.status.success(),
        "expected failure for {}",
        cfg.display()
    );
    assert!(!err.contains("panicked"), "panic: {err}");
    for n in needles {
        assert!(
            err.contains(n),
            "error for {} should mention `{n}`: {err}",
            cfg.display()
        );
    }
}

#[test]
fn bad_input_gets_clear_errors() {
    let dir = instance("bad");
    // A good run first: its outputs must survive the failing runs below.
    let good = write_config(&dir, "good", "kind = \"exact\"", "");
    let o = run(bin().args(["sample", "--quiet", "--config"]).arg(&good));
    assert!(o.status.success(), "{}", stderr(&o));
    let before = std::fs::read(dir.join("out_good/samples.npy")).unwrap();

    // Unknown sampler.
    fails_with(
        &write_config(&dir, "s1", "kind = \"magic\"", ""),
        &["unknown sampler kind `magic`"],
    );
    // A key that does not apply to the sampler; an unknown top-level key.
    fails_with(
        &write_config(&dir, "s2", "kind = \"dps\"\nsteps_per_stage = 3", ""),
        &["steps_per_stage", "dps"],
    );
    let p = write_config(&dir, "s3", "kind = \"exact\"", "[extra]\nfoo = 1");
    fails_with(&p, &["s3.toml", "extra"]);
    // eta <= 0.
    let p = write_config(&dir, "s4", "kind = \"exact\"", "");
    std::fs::write(
        &p,
        std::fs::read_to_string(&p)
            .unwrap()
            .replace("eta = 0.2", "eta = 0.0"),
    )
    .unwrap();
    fails_with(&p, &["measurement.eta", "> 0"]);
    // Missing file.
    let p = write_config(&dir, "s5", "kind = \"exact\"", "");
    std::fs::write(
        &p,
        std::fs::read_to_string(&p)
            .unwrap()
            .replace("A.npy", "nope.npy"),
    )
    .unwrap();
    fails_with(&p, &["nope.npy", "not found", "operator.path"]);
    // Wrong shape: y of the wrong length (use x_true, length d = 8, where m = 4 is expected).
    let p = write_config(&dir, "s6", "kind = \"exact\"", "");
    std::fs::write(
        &p,
        std::fs::read_to_string(&p)
            .unwrap()
            .replace("y = \"y.npy\"", "y = \"x_true.npy\""),
    )
    .unwrap();
    fails_with(&p, &["measurement.y", "[8]", "[4]"]);
    // Non-finite values in y.
    let y = std::fs::read(dir.join("y.npy")).unwrap();
    let mut bad = y.clone();
    let n = bad.len();
    bad[n - 8..].copy_from_slice(&f64::NAN.to_le_bytes());
    std::fs::write(dir.join("y_nan.npy"), bad).unwrap();
    let p = write_config(&dir, "s7", "kind = \"exact\"", "");
    std::fs::write(
        &p,
        std::fs::read_to_string(&p)
            .unwrap()
            .replace("y = \"y.npy\"", "y = \"y_nan.npy\""),
    )
    .unwrap();
    fails_with(&p, &["y_nan.npy", "non-finite"]);
    // Operator of the wrong width.
    let p = write_config(&dir, "s8", "kind = \"exact\"", "");
    std::fs::write(
        &p,
        std::fs::read_to_string(&p).unwrap().replace(
            "kind = \"matrix\"\npath = \"A.npy\"",
            "kind = \"mask\"\npath = \"x_true.npy\"",
        ),
    )
    .unwrap();
    fails_with(&p, &["mask"]);
    // Geometric schedule too steep.
    fails_with(
        &write_config(
            &dir,
            "s9",
            "kind = \"annealed\"\nstages = 3\neta_max = 100.0",
            "",
        ),
        &["stages"],
    );

    // The earlier output is untouched.
    assert_eq!(
        before,
        std::fs::read(dir.join("out_good/samples.npy")).unwrap()
    );
}

#[test]
fn demo_runs() {
    let o = run(bin().args(["demo", "--n", "200"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let s = String::from_utf8_lossy(&o.stdout);
    for name in ["exact", "annealed", "ula", "mala", "dps", "daps", "ald"] {
        assert!(s.contains(name), "demo output lacks {name}: {s}");
    }
}
