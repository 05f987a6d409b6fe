//! Reliability (issue 11): each way a careless or hostile user broke diffpost, through the binary.
//! Every case must end in a clear error (exit code 1, naming the setting, file or path), never a
//! panic (101) or an abort (134), and never lose an earlier output. Training's cases are in
//! `train_safety.rs`, the readers' fuzz tests in `crates/diffpost/tests/readers.rs`.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

/// Exit code 1 (not a panic, not an abort) and every `needles` in stderr.
fn assert_clear_error(o: &Output, needles: &[&str]) {
    let e = stderr(o);
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected exit 1, got {:?}: {e}",
        o.status
    );
    assert!(!e.contains("panicked"), "panic: {e}");
    for n in needles {
        assert!(e.contains(n), "stderr lacks `{n}`: {e}");
    }
}

/// The instance: `problem gmm --d 10 --m 5 --k 2 --eta 0.1 --seed 0`.
fn instance(name: &str) -> PathBuf {
    let dir = tmpdir(name);
    let o = run(bin()
        .args([
            "problem", "gmm", "--d", "10", "--m", "5", "--k", "2", "--eta", "0.1", "--seed", "0",
            "--out",
        ])
        .arg(dir.join("p")));
    assert!(o.status.success(), "{}", stderr(&o));
    dir.join("p")
}

fn config(dir: &Path, name: &str, sampler: &str, n: u64) -> PathBuf {
    config_out(dir, name, name, sampler, n)
}

/// A config `name.toml` writing into `out_{out}`.
fn config_out(dir: &Path, name: &str, out: &str, sampler: &str, n: u64) -> PathBuf {
    let toml = format!(
        "[prior]\nkind = \"gmm\"\npath = \"prior.npz\"\n[operator]\nkind = \"matrix\"\npath = \"A.npy\"\n\
         [measurement]\ny = \"y.npy\"\neta = 0.1\n[sampler]\n{sampler}\n[run]\nn = {n}\nseed = 0\nout = \"out_{out}\"\n"
    );
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(&p, toml).unwrap();
    p
}

fn sample(cfg: &Path) -> Output {
    run(bin().args(["sample", "--quiet", "--config"]).arg(cfg))
}

/// Names in `dir` starting with `.` (staging folders, locks).
fn hidden(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect()
}

/// A `.npy` v1 header for `descr` and `shape` followed by `payload`.
fn npy(descr: &str, shape: &str, payload: &[u8]) -> Vec<u8> {
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend_from_slice(&(h.len() as u16).to_le_bytes());
    b.extend_from_slice(h.as_bytes());
    b.extend_from_slice(payload);
    b
}

#[test]
fn diverged_runs_fail_with_stage_and_step_and_write_nothing() {
    let dir = instance("diverge");
    for (name, s) in [
        ("annealed", "kind = \"annealed\"\nh_rel = 2.1"),
        ("ula", "kind = \"ula\"\nh = 1.0"),
        ("ald", "kind = \"ald\"\nh_rel = 50"),
        ("dps", "kind = \"dps\"\nzeta = 1e6"),
        ("daps", "kind = \"daps\"\nh_rel = 50"),
    ] {
        let o = sample(&config(&dir, name, s, 50));
        assert_clear_error(
            &o,
            &["diverged at stage", "step", "left the problem's scale"],
        );
        assert!(
            !dir.join(format!("out_{name}")).exists(),
            "{name} wrote output"
        );
        assert!(hidden(&dir).is_empty(), "{name} left {:?}", hidden(&dir));
    }
    // The same problem at the defaults is healthy: no error, no health warning.
    for name in ["annealed", "ula", "mala", "smc"] {
        let o = sample(&config(
            &dir,
            &format!("ok_{name}"),
            &format!("kind = \"{name}\""),
            200,
        ));
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let s = std::fs::read_to_string(dir.join(format!("out_ok_{name}/summary.json"))).unwrap();
        assert!(!s.contains("health_warnings"), "{name}: {s}");
        let j: serde_json::Value = serde_json::from_str(&s).unwrap();
        let r = j["diagnostics"]["residual"]["mean"].as_f64().unwrap();
        assert!((0.5..2.0).contains(&r), "{name}: residual {r}");
    }
    // Milder signs are warnings in summary.json: MALA with a far too large step.
    let o = sample(&config(&dir, "mala_big", "kind = \"mala\"\nh_rel = 3", 100));
    assert!(o.status.success(), "{}", stderr(&o));
    let s = std::fs::read_to_string(dir.join("out_mala_big/summary.json")).unwrap();
    assert!(
        s.contains("health_warnings") && s.contains("MALA acceptance"),
        "{s}"
    );
}

#[test]
fn invalid_and_impossible_settings_are_refused_up_front() {
    let dir = instance("settings");
    for (s, needle) in [
        ("kind = \"cs\"\nlambda = -1", "sampler.lambda"),
        ("kind = \"ula\"\nsteps = 0", "sampler.steps"),
        ("kind = \"mala\"\nsteps = 0", "sampler.steps"),
        ("kind = \"annealed\"\nstages = 0", "sampler.stages"),
        (
            "kind = \"annealed\"\nsteps_per_stage = 0",
            "steps_per_stage",
        ),
        ("kind = \"daps\"\nsteps_per_stage = 0", "steps_per_stage"),
        (
            "kind = \"annealed\"\nsteps_per_stage = 1000000000000",
            "sampler.steps_per_stage",
        ),
        ("kind = \"annealed\"\nstages = 1000000000", "sampler.stages"),
        ("kind = \"prior\"\nsteps = 0", "sampler.steps"),
    ] {
        let t = Instant::now();
        let o = sample(&config(&dir, "bad", s, 20));
        assert_clear_error(&o, &[needle]);
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{s}: refused only after running"
        );
    }
    // n far beyond memory: an error naming run.n, not an allocation abort.
    let p = config(&dir, "huge_n", "kind = \"exact\"", 10_000_000_000);
    assert_clear_error(&sample(&p), &["run.n", "would need"]);
    // eval --reference far beyond memory.
    let p = config(&dir, "ok", "kind = \"exact\"", 20);
    assert!(sample(&p).status.success());
    let o = run(bin()
        .args(["eval", "--reference", "1000000000000", "--config"])
        .arg(&p)
        .arg("--samples")
        .arg(dir.join("out_ok/samples.npy")));
    assert_clear_error(&o, &["--reference", "would need"]);
}

#[test]
fn hostile_sizes_are_errors_not_aborts() {
    let dir = tmpdir("sizes");
    // problem gmm with absurd sizes.
    for d in ["18446744073709551615", "100000"] {
        let o = run(bin()
            .args(["problem", "gmm", "--d", d, "--out"])
            .arg(dir.join("g")));
        assert_clear_error(&o, &["--d", "would need"]);
        assert!(!dir.join("g").exists());
    }
    // Isotropic prior of 1e11 dimensions.
    let iso = |d: &str, extra: &str| {
        format!(
            "[prior]\nkind = \"isotropic\"\nd = {d}\nvar = 1.0\n{extra}[operator]\nkind = \"identity\"\n\
             [measurement]\ny = \"y.npy\"\neta = 0.1\n[sampler]\nkind = \"exact\"\n[run]\nn = 4\nseed = 0\nout = \"out\"\n"
        )
    };
    std::fs::write(dir.join("iso.toml"), iso("100000000000", "")).unwrap();
    std::fs::write(dir.join("y.npy"), npy("<f8", "(3,)", &[0u8; 24])).unwrap();
    let o = run(bin()
        .args(["sample", "--quiet", "--config"])
        .arg(dir.join("iso.toml")));
    assert_clear_error(&o, &["prior.d", "would need"]);
    // A NaN mean is blamed on the mean.
    std::fs::write(dir.join("nan.toml"), iso("3", "mean = nan\n")).unwrap();
    let o = run(bin()
        .args(["sample", "--quiet", "--config"])
        .arg(dir.join("nan.toml")));
    assert_clear_error(&o, &["prior.mean"]);
    // .npy headers that claim far more than the file holds.
    std::fs::write(dir.join("ok.toml"), iso("3", "")).unwrap();
    for shape in ["(4294967296, 4294967296)", "(5000000000, 10)"] {
        std::fs::write(dir.join("y.npy"), npy("<f8", shape, &[0u8; 400])).unwrap();
        let o = run(bin()
            .args(["sample", "--quiet", "--config"])
            .arg(dir.join("ok.toml")));
        assert_clear_error(&o, &["y.npy"]);
    }
    // A y in float32 and int32 is converted, and the conversion is named in summary.json.
    let f32s: Vec<u8> = [0.5f32, -0.25, 1.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    std::fs::write(dir.join("y.npy"), npy("<f4", "(3,)", &f32s)).unwrap();
    let o = run(bin()
        .args(["sample", "--quiet", "--config"])
        .arg(dir.join("ok.toml")));
    assert!(o.status.success(), "{}", stderr(&o));
    let s = std::fs::read_to_string(dir.join("out/summary.json")).unwrap();
    assert!(s.contains("conversions") && s.contains("float32"), "{s}");
    let i32s: Vec<u8> = [1i32, -2, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(dir.join("y.npy"), npy("<i4", "(3,)", &i32s)).unwrap();
    let o = run(bin()
        .args(["sample", "--quiet", "--config"])
        .arg(dir.join("ok.toml")));
    assert!(o.status.success(), "{}", stderr(&o));
    // Complex is refused, naming the dtype.
    std::fs::write(dir.join("y.npy"), npy("<c16", "(3,)", &[0u8; 48])).unwrap();
    let o = run(bin()
        .args(["sample", "--quiet", "--config"])
        .arg(dir.join("ok.toml")));
    assert_clear_error(&o, &["y.npy", "complex"]);
    // A symbolic-link loop is not reported as a missing file.
    #[cfg(unix)]
    {
        std::fs::remove_file(dir.join("y.npy")).unwrap();
        std::os::unix::fs::symlink("loop_b", dir.join("loop_a")).unwrap();
        std::os::unix::fs::symlink("loop_a", dir.join("loop_b")).unwrap();
        std::os::unix::fs::symlink("loop_a", dir.join("y.npy")).unwrap();
        let o = run(bin()
            .args(["sample", "--quiet", "--config"])
            .arg(dir.join("ok.toml")));
        assert_clear_error(&o, &["link"]);
        assert!(!stderr(&o).contains("not found"), "{}", stderr(&o));
    }
}

#[test]
fn image_sizes_are_checked() {
    let dir = tmpdir("blur");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let model = root.join("models/mnist");
    let truth = root.join("data/mnist_test256.npy");
    let toml = format!(
        "[prior]\nkind = \"unet\"\npath = \"{}\"\n[operator]\nkind = \"blur\"\nkernel_size = 1000001\nstd = 3.0\n\
         [measurement]\ntruth = \"{}\"\neta = 0.05\n[sampler]\nkind = \"prior\"\n[run]\nn = 1\nseed = 0\nout = \"out\"\n",
        model.display(),
        truth.display()
    );
    std::fs::write(dir.join("b.toml"), toml).unwrap();
    let o = run(bin()
        .args(["sample", "--quiet", "--config"])
        .arg(dir.join("b.toml")));
    assert_clear_error(&o, &["kernel_size"]);
}

#[test]
fn a_d0_prior_and_a_closed_stdout_do_not_panic() {
    let dir = instance("d0");
    // A mixture archive with d = 0.
    let w = npy("<f8", "(1,)", &1.0f64.to_le_bytes());
    let m = npy("<f8", "(1, 0)", &[]);
    let c = npy("<f8", "(1, 0, 0)", &[]);
    let path = dir.join("prior0.npz");
    write_stored_zip(
        &path,
        &[("weights.npy", &w), ("means.npy", &m), ("covs.npy", &c)],
    );
    let p = config(&dir, "d0", "kind = \"exact\"", 4);
    std::fs::write(
        &p,
        std::fs::read_to_string(&p)
            .unwrap()
            .replace("prior.npz", "prior0.npz"),
    )
    .unwrap();
    let o = sample(&p);
    assert_clear_error(&o, &["prior"]);

    // `eval ... | head`: stdout closed before the report is printed.
    let p = config(&dir, "ok", "kind = \"exact\"", 50);
    assert!(sample(&p).status.success());
    let mut child = bin()
        .args(["eval", "--reference", "2000", "--config"])
        .arg(&p)
        .arg("--samples")
        .arg(dir.join("out_ok/samples.npy"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_ne!(o.status.code(), Some(101), "panic: {}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

/// A zip archive of stored (uncompressed) entries, as `np.savez` writes.
fn write_stored_zip(path: &Path, entries: &[(&str, &[u8])]) {
    fn crc32(b: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &x in b {
            c ^= x as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    (c >> 1) ^ 0xEDB8_8320
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data) in entries {
        let off = out.len() as u32;
        let crc = crc32(data);
        let local = |sig: u32, central: bool| {
            let mut h = Vec::new();
            h.extend_from_slice(&sig.to_le_bytes());
            if central {
                h.extend_from_slice(&20u16.to_le_bytes());
            }
            h.extend_from_slice(&20u16.to_le_bytes()); // version needed
            h.extend_from_slice(&0u16.to_le_bytes()); // flags
            h.extend_from_slice(&0u16.to_le_bytes()); // stored
            h.extend_from_slice(&0u32.to_le_bytes()); // time, date
            h.extend_from_slice(&crc.to_le_bytes());
            h.extend_from_slice(&(data.len() as u32).to_le_bytes());
            h.extend_from_slice(&(data.len() as u32).to_le_bytes());
            h.extend_from_slice(&(name.len() as u16).to_le_bytes());
            h.extend_from_slice(&0u16.to_le_bytes()); // extra
            if central {
                h.extend_from_slice(&[0u8; 8]); // comment, disk, internal attrs
                h.extend_from_slice(&0u32.to_le_bytes()); // external attrs
                h.extend_from_slice(&off.to_le_bytes());
            }
            h.extend_from_slice(name.as_bytes());
            h
        };
        out.extend(local(0x0403_4b50, false));
        out.extend_from_slice(data);
        central.extend(local(0x0201_4b50, true));
    }
    let cd_off = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    out.extend_from_slice(&[0u8; 4]);
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_off.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    std::fs::write(path, out).unwrap();
}

#[test]
fn output_folders_are_checked_before_any_work() {
    let dir = instance("outdir");
    // An existing file as `--out`: refused at once, not after sampling.
    std::fs::write(dir.join("a_file"), b"mine").unwrap();
    let p = config(
        &dir,
        "long",
        "kind = \"annealed\"\nstages = 40\nsteps_per_stage = 500",
        2000,
    );
    let t = Instant::now();
    let o = run(bin()
        .args(["sample", "--quiet", "--config"])
        .arg(&p)
        .arg("--out")
        .arg(dir.join("a_file")));
    assert_clear_error(&o, &["a_file", "not a folder"]);
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(std::fs::read(dir.join("a_file")).unwrap(), b"mine");
    // A folder with something diffpost did not write: refused, untouched.
    std::fs::create_dir_all(dir.join("mine")).unwrap();
    std::fs::write(dir.join("mine/notes.md"), b"mine").unwrap();
    let o = run(bin()
        .args(["sample", "--quiet", "--config"])
        .arg(&p)
        .arg("--out")
        .arg(dir.join("mine")));
    assert_clear_error(&o, &["notes.md"]);
    assert_eq!(std::fs::read(dir.join("mine/notes.md")).unwrap(), b"mine");
    // `problem` does not replace a problem folder (and the runs inside) unless --force.
    let args = ["problem", "gmm", "--d", "4", "--m", "2", "--out"];
    let before = std::fs::read(dir.join("A.npy")).unwrap();
    let o = run(bin().args(args).arg(&dir));
    assert_clear_error(&o, &["--force"]);
    assert_eq!(std::fs::read(dir.join("A.npy")).unwrap(), before);
    let o = run(bin().args(args).arg(&dir).arg("--force"));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        !dir.join("a_file").exists(),
        "--force replaces the whole folder"
    );
}

/// A run that takes a few seconds, into `out`.
fn slow_config(dir: &Path, out: &str) -> PathBuf {
    config_out(
        dir,
        &format!("slow_{out}"),
        out,
        "kind = \"annealed\"\nstages = 30\nsteps_per_stage = 400",
        400,
    )
}

fn wait_for(cond: impl Fn() -> bool, what: &str) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_killed_run_leaves_the_previous_output_and_the_next_run_cleans_up() {
    let dir = instance("kill");
    let fast = config(&dir, "k", "kind = \"exact\"", 100);
    assert!(sample(&fast).status.success());
    let before = std::fs::read(dir.join("out_k/samples.npy")).unwrap();
    let summary_before = std::fs::read(dir.join("out_k/summary.json")).unwrap();
    let slow = slow_config(&dir, "k");
    let mut child = bin()
        .args(["sample", "--quiet", "--config"])
        .arg(&slow)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(|| dir.join(".out_k.lock").exists(), "the lock");
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(
        std::fs::read(dir.join("out_k/samples.npy")).unwrap(),
        before
    );
    assert_eq!(
        std::fs::read(dir.join("out_k/summary.json")).unwrap(),
        summary_before
    );
    assert!(!hidden(&dir).is_empty(), "the killed run left its lock");
    // The next run takes over the dead run's lock, removes its staging folder and commits.
    let o = sample(&fast);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("died"), "{}", stderr(&o));
    assert!(hidden(&dir).is_empty(), "left {:?}", hidden(&dir));
    assert_eq!(
        std::fs::read(dir.join("out_k/samples.npy")).unwrap(),
        before
    );
}

#[test]
fn a_second_concurrent_run_into_one_folder_fails_at_start() {
    let dir = instance("concurrent");
    let slow = slow_config(&dir, "c");
    let first = bin()
        .args(["sample", "--quiet", "--config"])
        .arg(&slow)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(|| dir.join(".out_c.lock").exists(), "the lock");
    let o = sample(&config(&dir, "c", "kind = \"exact\"", 100));
    assert_clear_error(&o, &["another diffpost process", "out_c"]);
    let o = first.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // The folder holds the first run, samples and summary of one run.
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("out_c/summary.json")).unwrap())
            .unwrap();
    assert_eq!(s["sampler"], "annealed");
    assert_eq!(s["n"], 400);
    let len = std::fs::metadata(dir.join("out_c/samples.npy"))
        .unwrap()
        .len();
    assert!(len >= 400 * 10 * 8, "{len}");
    assert!(hidden(&dir).is_empty(), "left {:?}", hidden(&dir));
}

#[cfg(target_os = "linux")]
#[test]
fn a_full_disk_names_the_file_and_keeps_the_previous_output() {
    use std::os::unix::process::CommandExt;
    let dir = instance("full");
    let small = config(&dir, "f", "kind = \"exact\"", 10);
    assert!(sample(&small).status.success());
    let before = std::fs::read(dir.join("out_f/samples.npy")).unwrap();
    // 20,000 samples of d = 10 (1.6 MB) into a process allowed files of 64 KiB: the write
    // fails as on a full disk (EFBIG instead of ENOSPC, the same path through the writer).
    let big = config(&dir, "f", "kind = \"exact\"", 20_000);
    let mut c = bin();
    c.args(["sample", "--quiet", "--config"]).arg(&big);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(|| {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit {
                rlim_cur: 64 << 10,
                rlim_max: 64 << 10,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let o = run(&mut c);
    assert_clear_error(&o, &["samples.npy"]);
    assert_eq!(
        std::fs::read(dir.join("out_f/samples.npy")).unwrap(),
        before
    );
    assert!(hidden(&dir).is_empty(), "left {:?}", hidden(&dir));
}
