//! `diffpost fit-gmm`: fits and reports (log-likelihood per iteration, held-out, file size),
//! refuses to replace an existing `--out` without `--force`, writes the same bytes for the same
//! seed, and answers bad input with an error naming the file or the option, without a panic.

mod common;
use common::*;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

/// 60 images [60, 4, 4] u8 in two groups (bright top half or bright left half) with
/// pseudo-random noise (a fixed LCG), written as `dir/images.npy`.
fn images(dir: &Path) -> PathBuf {
    let mut state: u64 = 12345;
    let mut noise = move || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) % 60) as u8
    };
    let mut v = Vec::with_capacity(60 * 16);
    for i in 0..60 {
        for p in 0..16 {
            let (row, col) = (p / 4, p % 4);
            let bright = if i % 2 == 0 { row < 2 } else { col < 2 };
            v.push(if bright { 180 } else { 20 } + noise());
        }
    }
    let path = dir.join("images.npy");
    diffpost::io::write_npy(
        &path,
        &Tensor::from_vec(v, (60, 4, 4), &Device::Cpu).unwrap(),
    )
    .unwrap();
    path
}

/// `fit-gmm` with K = 2, 4 iterations and `extra`, which gives `--rank` unless it is 3.
fn fit(data: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let rank: &[&str] = if extra.contains(&"--rank") {
        &[]
    } else {
        &["--rank", "3"]
    };
    run(bin()
        .args(["fit-gmm", "--components", "2", "--iters", "4"])
        .args(rank)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .args(extra))
}

#[test]
fn fit_gmm_reports_refuses_to_overwrite_and_is_reproducible() {
    let dir = tmpdir("fit");
    let data = images(&dir);
    let out = dir.join("m.npz");
    let o = fit(&data, &out, &["--test", data.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    for want in [
        "k-means init: log-likelihood",
        "iteration 4: log-likelihood",
        "held-out: log-likelihood",
        "nats/image",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let bytes = std::fs::read(&out).unwrap();
    assert!(
        text.contains(&format!("{}: {} bytes", out.display(), bytes.len())),
        "{text}"
    );
    // An existing --out is kept unless --force.
    let o = fit(&data, &out, &["--seed", "3"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("m.npz") && e.contains("already exists") && e.contains("--force"),
        "{e}"
    );
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
    // The same settings give the same bytes; --force replaces.
    let again = dir.join("again.npz");
    let o = fit(&data, &again, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read(&again).unwrap(), bytes);
    let o = fit(&data, &out, &["--seed", "3", "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn fit_gmm_bad_input_is_a_clear_error() {
    let dir = tmpdir("fit_bad");
    let data = images(&dir);
    let out = dir.join("m.npz");
    // rank must be below d = 16.
    let o = fit(&data, &out, &["--rank", "16"]);
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("`rank`") && e.contains("d = 16"),
        "{e}"
    );
    assert!(!e.contains("panicked"), "{e}");
    // One axis only: not images.
    let flat = dir.join("flat.npy");
    diffpost::io::write_npy(
        &flat,
        &Tensor::from_vec(vec![0f32; 16], 16, &Device::Cpu).unwrap(),
    )
    .unwrap();
    let o = fit(&flat, &out, &[]);
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("flat.npy") && e.contains("[16]"),
        "{e}"
    );
    assert!(!e.contains("panicked"), "{e}");
    // Held-out images of another size.
    let other = dir.join("other.npy");
    diffpost::io::write_npy(
        &other,
        &Tensor::from_vec(vec![0u8; 18], (2, 3, 3), &Device::Cpu).unwrap(),
    )
    .unwrap();
    let o = fit(&data, &out, &["--test", other.to_str().unwrap()]);
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("--test") && e.contains("d = 9"),
        "{e}"
    );
    assert!(!e.contains("panicked"), "{e}");
    // Checked before fitting: nothing was written.
    assert!(!out.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
