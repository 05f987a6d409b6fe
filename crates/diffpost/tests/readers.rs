//! Readers against hostile input: the `.npy` parser and `.npz` archives (every dtype of the
//! policy, byte orders, format versions, savez / savez_compressed archives, lying headers and
//! zip directories, missing or looping paths), then property tests feeding random, truncated
//! and corrupted files to every reader a user's file reaches: `.npy`, `.npz`, safetensors (the
//! model-folder weights), PyTorch `.pt` (the checkpoint reader), PNG (`--truth` images) and the
//! TOML problem config. Each property test fails if a reader panics (proptest reports the
//! panic as a failure); none may abort either (an abort kills the test binary).
//!
//! All files are written by hand here (no Python, no numpy).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{DType, Device, Tensor};
use diffpost::io::{read_array, read_array_with_note, NpzReader};
use proptest::prelude::*;
use proptest::sample::Index;

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("diffpost-readers-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A fresh file name in `dir` (proptest cases run one after another, but tests in parallel).
fn fresh(dir: &Path, ext: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    dir.join(format!("f{}.{ext}", N.fetch_add(1, Ordering::Relaxed)))
}

/// A `.npy` by hand: magic, version, little-endian header length (2 bytes in 1.0, 4 in 2.0 and
/// 3.0), the header padded with spaces to a multiple of 64 bytes and ending in `\n`, the data.
fn npy(version: u8, header: &str, data: &[u8]) -> Vec<u8> {
    let pre = if version == 1 { 10 } else { 12 };
    let mut h = header.to_string();
    while !(pre + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY".to_vec();
    out.extend([version, 0]);
    if version == 1 {
        out.extend((h.len() as u16).to_le_bytes());
    } else {
        out.extend((h.len() as u32).to_le_bytes());
    }
    out.extend(h.as_bytes());
    out.extend(data);
    out
}

fn hdr(descr: &str, shape: &str) -> String {
    format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}")
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn err_of<T: std::fmt::Debug>(r: diffpost::Result<T>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn every_dtype_converts_with_correct_values() {
    let dir = tmpdir("dtypes");
    // (descr, element bytes little-endian, expected values); big-endian variants are derived
    // by reversing each element's bytes.
    type Case = (&'static str, Vec<Vec<u8>>, Vec<f64>);
    let cases: Vec<Case> = vec![
        (
            "b1",
            vec![vec![0], vec![1], vec![1], vec![0]],
            vec![0.0, 1.0, 1.0, 0.0],
        ),
        (
            "i1",
            [-128i8, -1, 0, 127]
                .iter()
                .map(|v| v.to_le_bytes().to_vec())
                .collect(),
            vec![-128.0, -1.0, 0.0, 127.0],
        ),
        (
            "u1",
            [0u8, 1, 200, 255].iter().map(|v| vec![*v]).collect(),
            vec![0.0, 1.0, 200.0, 255.0],
        ),
        (
            "i2",
            [i16::MIN, -2, 3, i16::MAX]
                .iter()
                .map(|v| v.to_le_bytes().to_vec())
                .collect(),
            vec![-32768.0, -2.0, 3.0, 32767.0],
        ),
        (
            "u2",
            [0u16, 1, 40000, u16::MAX]
                .iter()
                .map(|v| v.to_le_bytes().to_vec())
                .collect(),
            vec![0.0, 1.0, 40000.0, 65535.0],
        ),
        (
            "i4",
            [i32::MIN, -5, 7, i32::MAX]
                .iter()
                .map(|v| v.to_le_bytes().to_vec())
                .collect(),
            vec![-2147483648.0, -5.0, 7.0, 2147483647.0],
        ),
        (
            "u4",
            [0u32, 1, 3_000_000_000, u32::MAX]
                .iter()
                .map(|v| v.to_le_bytes().to_vec())
                .collect(),
            vec![0.0, 1.0, 3e9, 4294967295.0],
        ),
        (
            "i8",
            [-(1i64 << 53), -1, 0, 1 << 53]
                .iter()
                .map(|v| v.to_le_bytes().to_vec())
                .collect(),
            vec![-(2f64.powi(53)), -1.0, 0.0, 2f64.powi(53)],
        ),
        (
            "u8",
            [0u64, 1, 1 << 53, 1 << 60]
                .iter()
                .map(|v| v.to_le_bytes().to_vec())
                .collect(),
            vec![0.0, 1.0, 2f64.powi(53), 2f64.powi(60)],
        ),
        (
            "f2",
            // 1.0, -2.0, the half nearest 1/3, the largest half, the smallest subnormal.
            [0x3c00u16, 0xc000, 0x3555, 0x7bff, 0x0001]
                .iter()
                .map(|v| v.to_le_bytes().to_vec())
                .collect(),
            vec![1.0, -2.0, 0.333251953125, 65504.0, 2f64.powi(-24)],
        ),
        (
            "f4",
            [1.5f32, -0.1, 3.4e38, 1e-40]
                .iter()
                .map(|v| v.to_le_bytes().to_vec())
                .collect(),
            vec![1.5, -0.1f32 as f64, 3.4e38f32 as f64, 1e-40f32 as f64],
        ),
        (
            "f8",
            [1.5f64, -0.1, 1e300, 5e-324]
                .iter()
                .map(|v| v.to_le_bytes().to_vec())
                .collect(),
            vec![1.5, -0.1, 1e300, 5e-324],
        ),
    ];
    let names = [
        ("b1", "bool"),
        ("i1", "int8"),
        ("u1", "uint8"),
        ("i2", "int16"),
        ("u2", "uint16"),
        ("i4", "int32"),
        ("u4", "uint32"),
        ("i8", "int64"),
        ("u8", "uint64"),
        ("f2", "float16"),
        ("f4", "float32"),
        ("f8", "float64"),
    ];
    for (code, elems, want) in cases {
        let n = want.len();
        let name = names.iter().find(|(c, _)| *c == code).unwrap().1;
        let orders: &[char] = if elems[0].len() == 1 {
            &['|', '<', '>', '=']
        } else {
            &['<', '>', '=', '|']
        };
        for &order in orders {
            let big = order == '>' || (cfg!(target_endian = "big") && matches!(order, '=' | '|'));
            let data: Vec<u8> = elems
                .iter()
                .flat_map(|e| {
                    let mut e = e.clone();
                    if big {
                        e.reverse();
                    }
                    e
                })
                .collect();
            let descr = format!("{order}{code}");
            let fname = format!("{code}_{}.npy", order as u32);
            let p = write(
                &dir,
                &fname,
                &npy(1, &hdr(&descr, &format!("({n},)")), &data),
            );
            let r =
                read_array_with_note(&p, "test array").unwrap_or_else(|e| panic!("{descr}: {e}"));
            assert_eq!(r.tensor.dtype(), DType::F64);
            assert_eq!(r.tensor.dims(), &[n]);
            assert_eq!(values(&r.tensor), want, "{descr}");
            let note = (code != "f8").then(|| format!("{fname}: {name} converted to float64"));
            assert_eq!(r.conversion, note, "{descr}");
        }
    }
    // The same dtypes inside an .npz (f16 was refused there before).
    let f2 = npy(1, &hdr("<f2", "(2,)"), &[0x00, 0x3c, 0x00, 0xc0]);
    let p = write(&dir, "half.npz", &zip_bytes(&[("x.npy", &f2)], true, false));
    let r = NpzReader::open(&p, "").unwrap().read("x").unwrap();
    assert_eq!(values(&r.tensor), vec![1.0, -2.0]);
    assert_eq!(
        r.conversion.as_deref(),
        Some("half.npz/x: float16 converted to float64")
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn shapes_versions_and_fortran_order() {
    let dir = tmpdir("versions");
    let d: Vec<u8> = (0..6).flat_map(|v| (v as f64).to_le_bytes()).collect();
    for v in [1u8, 2, 3] {
        let p = write(
            &dir,
            &format!("v{v}.npy"),
            &npy(v, &hdr("<f8", "(2, 3)"), &d),
        );
        let t = read_array(&p, "x").unwrap();
        assert_eq!(t.dims(), &[2, 3], "version {v}");
        assert_eq!(values(&t), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    }
    // 3.0 headers are UTF-8; 1.0/2.0 latin-1. Invalid UTF-8 in a 3.0 header is refused.
    let mut bad = npy(3, &hdr("<f8", "(6,)"), &d);
    let at = bad.iter().rposition(|&b| b == b' ').unwrap();
    bad[at] = 0xff;
    let e = err_of(read_array(&write(&dir, "v3bad.npy", &bad), "x"));
    assert!(e.contains("UTF-8"), "{e}");
    let mut v9 = npy(1, &hdr("<f8", "(6,)"), &d);
    v9[6] = 9;
    let e = err_of(read_array(&write(&dir, "v9.npy", &v9), "x"));
    assert!(e.contains("version 9.0"), "{e}");
    // Fortran order: numpy stores np.asfortranarray(np.arange(6).reshape(2, 3)) as 0 3 1 4 2 5;
    // the reader transposes it back to C order.
    let f: Vec<u8> = [0.0f64, 3.0, 1.0, 4.0, 2.0, 5.0]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let h = "{'descr': '<f8', 'fortran_order': True, 'shape': (2, 3), }";
    let t = read_array(&write(&dir, "fortran.npy", &npy(1, h, &f)), "x").unwrap();
    assert_eq!(values(&t), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
    // A scalar (shape ()) and an empty array.
    let t = read_array(
        &write(&dir, "scalar.npy", &npy(1, &hdr("<f8", "()"), &d[..8])),
        "x",
    )
    .unwrap();
    assert_eq!((t.dims().len(), values(&t)), (0, vec![0.0]));
    let t = read_array(
        &write(&dir, "empty.npy", &npy(1, &hdr("<i4", "(0, 3)"), &[])),
        "x",
    )
    .unwrap();
    assert_eq!(t.dims(), &[0, 3]);
    // Python 2 headers wrote longs as `3L`; double-quoted keys are accepted too.
    let h = "{\"descr\": \"<f8\", \"fortran_order\": False, \"shape\": (6L,)}";
    assert!(read_array(&write(&dir, "py2.npy", &npy(1, h, &d)), "x").is_ok());
    let _ = std::fs::remove_dir_all(&dir);
}

// The old reader (candle's `Tensor::read_npy`) allocated `vec![0; shape.elem_count()]` from the
// header before looking at the file's length. For 2^32 x 2^32 the element count overflows: it
// wraps to 0 in release builds (checked: `Ok` with an empty buffer behind a 2^64-element shape,
// which later indexing panics on) and panics outright where overflow checks are on; for 5e9 x 10
// it asks for 400 GB and aborts with "memory allocation failed". Both must now be plain errors
// naming the file, so these assertions fail against the old reader.
#[test]
fn hostile_shapes_are_errors_before_any_allocation() {
    let dir = tmpdir("hostile");
    let data = vec![0u8; 400];
    let p = write(
        &dir,
        "wrap.npy",
        &npy(1, &hdr("<f8", "(4294967296, 4294967296)"), &data),
    );
    let e = err_of(read_array(&p, "operator matrix"));
    assert!(
        e.contains("wrap.npy") && e.contains("operator matrix") && e.contains("overflows"),
        "{e}"
    );
    let p = write(
        &dir,
        "big.npy",
        &npy(1, &hdr("<f8", "(5000000000, 10)"), &data),
    );
    let e = err_of(read_array(&p, "operator matrix"));
    assert!(
        e.contains("big.npy") && e.contains("needs 400000000000 data bytes, 400 are present"),
        "{e}"
    );
    // The same lie inside an .npz entry.
    let entry = npy(1, &hdr("<f8", "(5000000000, 10)"), &data);
    for deflate in [false, true] {
        let p = write(
            &dir,
            "big.npz",
            &zip_bytes(&[("m.npy", &entry)], deflate, false),
        );
        let e = err_of(NpzReader::open(&p, "prior").unwrap().read("m"));
        assert!(
            e.contains("array `m`") && e.contains("needs 400000000000"),
            "{e}"
        );
    }
    // Dimension beyond u64, negative dimension, header length beyond the file.
    let p = write(
        &dir,
        "d.npy",
        &npy(1, &hdr("<f8", "(99999999999999999999999,)"), &data),
    );
    assert!(err_of(read_array(&p, "x")).contains("too large"));
    let p = write(&dir, "n.npy", &npy(1, &hdr("<f8", "(-1,)"), &data));
    assert!(err_of(read_array(&p, "x")).contains("dimension"));
    let mut long = npy(2, &hdr("<f8", "(1,)"), &[0; 8]);
    long[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    let e = err_of(read_array(&write(&dir, "long.npy", &long), "x"));
    assert!(e.contains("header length"), "{e}");
    // The memory check itself.
    let e = diffpost::limits::check_alloc("samples [n, d]", 1u128 << 80)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("samples [n, d]") && e.contains("1208925819614629174706176 bytes"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn truncated_or_padded_data_and_bad_dtypes_are_refused() {
    let dir = tmpdir("truncated");
    let d: Vec<u8> = (0..4).flat_map(|v| (v as f64).to_le_bytes()).collect();
    let full = npy(1, &hdr("<f8", "(4,)"), &d);
    let e = err_of(read_array(
        &write(&dir, "t.npy", &full[..full.len() - 3]),
        "y",
    ));
    assert!(
        e.contains("truncated") && e.contains("32 data bytes, 29 are present"),
        "{e}"
    );
    let mut padded = full.clone();
    padded.push(0);
    let e = err_of(read_array(&write(&dir, "p.npy", &padded), "y"));
    assert!(e.contains("extra bytes"), "{e}");
    assert!(err_of(read_array(&write(&dir, "h.npy", &full[..20]), "y")).contains("header"));
    assert!(err_of(read_array(
        &write(&dir, "m.npy", b"PK\x03\x04 not npy"),
        "y"
    ))
    .contains("magic"));
    // Refused dtypes name the file, the array and the dtype.
    for (descr, needle) in [
        ("<c16", "complex128"),
        ("<c8", "complex64"),
        ("|O", "object"),
        ("<U5", "unicode string"),
        ("|S5", "byte string"),
        ("|V8", "void"),
        ("<M8[ns]", "datetime64"),
        ("<f16", "float128"),
        ("<f3", "'<f3'"),
        ("<i3", "'<i3'"),
    ] {
        let p = write(&dir, "c.npy", &npy(1, &hdr(descr, "(1,)"), &[0; 16]));
        let e = err_of(read_array(&p, "measurement y"));
        assert!(
            e.contains("c.npy") && e.contains("measurement y") && e.contains(needle),
            "{descr}: {e}"
        );
    }
    let h = "{'descr': [('a', '<f8'), ('b', '<i4')], 'fortran_order': False, 'shape': (1,), }";
    let e = err_of(read_array(&write(&dir, "s.npy", &npy(1, h, &[0; 12])), "x"));
    assert!(e.contains("structured"), "{e}");
    // Non-finite values are still refused by read_array.
    let nan = npy(
        1,
        &hdr("<f4", "(2,)"),
        &[0, 0, 0x80, 0x3f, 0, 0, 0xc0, 0x7f],
    );
    let e = err_of(read_array(&write(&dir, "nan.npy", &nan), "y"));
    assert!(e.contains("non-finite value at flat index 1"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_looping_and_odd_paths_say_what_is_wrong() {
    let dir = tmpdir("paths");
    let e = err_of(read_array(&dir.join("nope.npy"), "mask"));
    assert!(
        e.contains("nope.npy") && e.contains("mask: file not found"),
        "{e}"
    );
    // A symlink loop used to be reported as "file not found" (Path::exists is false for it).
    #[cfg(unix)]
    {
        let (a, b) = (dir.join("a.npy"), dir.join("b.npy"));
        std::os::unix::fs::symlink(&b, &a).unwrap();
        std::os::unix::fs::symlink(&a, &b).unwrap();
        for e in [
            err_of(read_array(&a, "mask")),
            err_of(NpzReader::open(&a, "prior")),
            err_of(diffpost::nn::checkpoint::load_state_dict(&a, None)),
        ] {
            assert!(
                e.contains("symbolic link loop") && !e.contains("not found"),
                "{e}"
            );
        }
        let dangling = dir.join("dangling.npy");
        std::os::unix::fs::symlink(dir.join("gone.npy"), &dangling).unwrap();
        let e = err_of(read_array(&dangling, "mask"));
        assert!(
            e.contains("broken symbolic link") && e.contains("gone.npy"),
            "{e}"
        );
    }
    let e = err_of(read_array(&dir, "mask"));
    assert!(e.contains("is a directory"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A zip archive like `np.savez` (stored) or `np.savez_compressed` (deflate) writes; `zip64`
/// adds the ZIP64 extra fields numpy writes (it opens entries with `force_zip64=True`).
fn zip_bytes(entries: &[(&str, &[u8])], deflate: bool, zip64: bool) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let method = if deflate {
        zip::CompressionMethod::Deflated
    } else {
        zip::CompressionMethod::Stored
    };
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(method)
        .large_file(zip64);
    for (name, bytes) in entries {
        w.start_file(*name, opts).unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn f64_npy(shape: &str, v: &[f64]) -> Vec<u8> {
    let d: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    npy(1, &hdr("<f8", shape), &d)
}

/// A two-component mixture in d = 2 as `prior.npz` entries; means stored as float32.
fn gmm_entries() -> Vec<(&'static str, Vec<u8>)> {
    let means: Vec<u8> = [1.0f32, 2.0, -1.0, 0.5]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    vec![
        ("weights.npy", f64_npy("(2,)", &[0.25, 0.75])),
        ("means.npy", npy(1, &hdr("<f4", "(2, 2)"), &means)),
        (
            "covs.npy",
            f64_npy("(2, 2, 2)", &[1.0, 0.0, 0.0, 1.0, 2.0, 0.5, 0.5, 1.0]),
        ),
    ]
}

#[test]
fn savez_and_savez_compressed_archives() {
    let dir = tmpdir("npz");
    let entries = gmm_entries();
    let refs: Vec<(&str, &[u8])> = entries.iter().map(|(n, b)| (*n, b.as_slice())).collect();
    for (deflate, zip64) in [(false, false), (false, true), (true, false), (true, true)] {
        let p = write(&dir, "prior.npz", &zip_bytes(&refs, deflate, zip64));
        let mut z = NpzReader::open(&p, "prior").unwrap();
        assert_eq!(z.names(), vec!["weights", "means", "covs"]);
        assert!(z.contains("means") && z.contains("means.npy") && !z.contains("x"));
        let a = z.read("means").unwrap();
        let b = z.read("means.npy").unwrap();
        assert_eq!(values(&a.tensor), vec![1.0, 2.0, -1.0, 0.5]);
        assert_eq!(values(&a.tensor), values(&b.tensor));
        assert_eq!(
            a.conversion.as_deref(),
            Some("prior.npz/means: float32 converted to float64")
        );
        assert_eq!(z.read("weights").unwrap().conversion, None);
        let e = err_of(z.read("nope"));
        assert!(
            e.contains("missing array `nope` (found: weights, means, covs)"),
            "{e}"
        );
        assert_eq!(diffpost::io::npz_names(&p, "").unwrap().len(), 3);
        let covs = diffpost::io::read_npz_array(&p, "covs", "").unwrap();
        assert_eq!(covs.tensor.dims(), &[2, 2, 2]);
        // The GMM prior reads both kinds (compressed archives were refused before).
        let g = diffpost::prior::GaussianMixture::from_npz(&p)
            .unwrap_or_else(|e| panic!("deflate={deflate}: {e}"));
        assert_eq!(g.weights(), &[0.25, 0.75]);
        assert_eq!(g.means()[1].as_slice(), &[-1.0, 0.5]);
    }
    let e = err_of(NpzReader::open(
        &write(&dir, "bad.npz", b"not a zip at all"),
        "prior",
    ));
    assert!(e.contains("prior: cannot read npz"), "{e}");
    let e = err_of(diffpost::prior::GaussianMixture::from_npz(
        dir.join("missing.npz"),
    ));
    assert!(e.contains("missing.npz: file not found"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sets the uncompressed size of every central-directory record of a (non-zip64) archive.
fn patch_claimed_size(zip: &mut [u8], size: u32) {
    let mut i = 0;
    while i + 46 <= zip.len() {
        if zip[i..i + 4] == *b"PK\x01\x02" {
            zip[i + 24..i + 28].copy_from_slice(&size.to_le_bytes());
            i += 46;
        } else {
            i += 1;
        }
    }
}

#[test]
fn lying_zip_directories_are_caught() {
    let dir = tmpdir("ziplies");
    let x = f64_npy("(3,)", &[1.0, 2.0, 3.0]);
    for (deflate, claim, needle) in [
        (false, 1000u32, "stored zip entry claims 1000 bytes"),
        (true, 4_000_000_000, "more than deflate can produce"),
        (true, 1000, "needs 24 data bytes"),
    ] {
        let mut z = zip_bytes(&[("x.npy", &x)], deflate, false);
        patch_claimed_size(&mut z, claim);
        let p = write(&dir, "lie.npz", &z);
        let r = NpzReader::open(&p, "prior").and_then(|mut z| z.read("x"));
        let e = err_of(r);
        assert!(e.contains(needle), "{needle}: {e}");
    }
    // A flipped data byte: the CRC check (run because the reader reads to the entry's end).
    for deflate in [false, true] {
        let mut z = zip_bytes(&[("x.npy", &x)], deflate, false);
        if !deflate {
            let at = z
                .windows(8)
                .position(|w| w == 3.0f64.to_le_bytes())
                .unwrap();
            z[at + 7] ^= 0x01;
        } else {
            // The stored (uncompressed) CRC in the local and central headers.
            for sig in [&b"PK\x03\x04"[..], b"PK\x01\x02"] {
                let at = z.windows(4).position(|w| w == sig).unwrap();
                let off = if sig[2] == 3 { 14 } else { 16 };
                z[at + off] ^= 0xff;
            }
        }
        let p = write(&dir, "crc.npz", &z);
        let r = NpzReader::open(&p, "prior").and_then(|mut z| z.read("x"));
        assert!(r.is_err(), "deflate={deflate}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Property tests: every reader returns Ok or Err on random, truncated and corrupted input.

const CASES: u32 = 256;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// How a valid file is damaged.
#[derive(Debug, Clone)]
enum Damage {
    /// Replaced by random bytes.
    Random(Vec<u8>),
    /// Cut at a random point.
    Truncate(Index),
    /// Random bytes XORed anywhere.
    Flip(Vec<(Index, u8)>),
    /// Random bytes XORed in the first 256 bytes (headers, where parsing decisions are made).
    FlipHead(Vec<(u8, u8)>),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..600).prop_map(Damage::Random),
        any::<Index>().prop_map(Damage::Truncate),
        prop::collection::vec((any::<Index>(), 1u8..), 1..8).prop_map(Damage::Flip),
        prop::collection::vec((any::<u8>(), 1u8..), 1..8).prop_map(Damage::FlipHead),
    ]
}

fn apply(valid: &[u8], d: &Damage) -> Vec<u8> {
    match d {
        Damage::Random(b) => b.clone(),
        Damage::Truncate(i) => valid[..i.index(valid.len() + 1)].to_vec(),
        Damage::Flip(f) => {
            let mut v = valid.to_vec();
            for (i, x) in f {
                let at = i.index(v.len());
                v[at] ^= x;
            }
            v
        }
        Damage::FlipHead(f) => {
            let mut v = valid.to_vec();
            let n = v.len().min(256);
            for (i, x) in f {
                v[*i as usize % n] ^= x;
            }
            v
        }
    }
}

fn fuzz_dir(name: &str) -> PathBuf {
    static DIRS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    let d = std::env::temp_dir().join(format!("diffpost-fuzz-{name}-{}", std::process::id()));
    let mut dirs = DIRS.lock().unwrap();
    if !dirs.contains(&d) {
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        dirs.push(d.clone());
    }
    d
}

/// Writes `bytes` to a fresh file, runs `read` on it, removes it.
fn on_file<T>(name: &str, ext: &str, bytes: &[u8], read: impl FnOnce(&Path) -> T) -> T {
    let p = fresh(&fuzz_dir(name), ext);
    std::fs::write(&p, bytes).unwrap();
    let r = read(&p);
    let _ = std::fs::remove_file(&p);
    r
}

fn valid_npy() -> Vec<u8> {
    let d: Vec<u8> = (0..12)
        .flat_map(|v| (v as f32 * 0.5).to_le_bytes())
        .collect();
    npy(1, &hdr("<f4", "(3, 4)"), &d)
}

/// Header text drawn from the characters of real headers, so the parser sees near misses.
fn header_text() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "{",
        "}",
        "(",
        ")",
        "[",
        "]",
        "'",
        "\"",
        ",",
        ":",
        " ",
        "\n",
        "0",
        "1",
        "7",
        "4294967296",
        "-",
        "L",
        "'descr'",
        "'fortran_order'",
        "'shape'",
        "True",
        "False",
        "None",
        "'<f8'",
        "'>i4'",
        "'|b1'",
        "'<c16'",
        "'<f2'",
        "'|u1'",
        "\\",
        "é",
    ]);
    prop::collection::vec(atoms, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_npy(d in damage()) {
        let bytes = apply(&valid_npy(), &d);
        let r = on_file("npy", "npy", &bytes, |p| read_array_with_note(p, "x").map(|_| ()));
        if bytes == valid_npy() {
            prop_assert!(r.is_ok());
        }
    }

    #[test]
    fn fuzz_npy_header(text in header_text(), version in 1u8..4, n in 0usize..64) {
        let bytes = npy(version, &text, &vec![0x3f; n]);
        let _ = on_file("npyh", "npy", &bytes, |p| read_array(p, "x").map(|_| ()));
    }

    #[test]
    fn fuzz_npz(d in damage(), deflate in any::<bool>(), inner in any::<bool>()) {
        let entries = gmm_entries();
        let bytes = if inner {
            // Damage the .npy inside a well-formed archive (its CRC matches the damage).
            let means = apply(&entries[1].1, &d);
            zip_bytes(&[("weights.npy", &entries[0].1), ("means.npy", &means)], deflate, false)
        } else {
            let refs: Vec<(&str, &[u8])> = entries.iter().map(|(n, b)| (*n, b.as_slice())).collect();
            apply(&zip_bytes(&refs, deflate, false), &d)
        };
        let _ = on_file("npz", "npz", &bytes, |p| {
            let mut z = NpzReader::open(p, "prior")?;
            for n in z.names() {
                let _ = z.read(&n);
            }
            diffpost::prior::GaussianMixture::from_npz(p).map(|_| ())
        });
    }
}

// --- safetensors: the model folder's weights.safetensors ---------------------------------------

fn tiny_unet() -> diffpost::nn::UNetConfig {
    diffpost::nn::UNetConfig {
        in_channels: 1,
        image_size: [8, 8],
        base_channels: 4,
        channel_mults: vec![1],
        num_res_blocks: 1,
        attn_resolutions: vec![],
        mid_attention: false,
        num_heads: 1,
        groups: 2,
        emb_dim: 8,
        fourier_features: 4,
        sigma_data: 0.5,
    }
}

fn valid_safetensors() -> Vec<u8> {
    static BYTES: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    BYTES
        .get_or_init(|| {
            let (_, vars) = diffpost::nn::init_unet(&tiny_unet(), 0, &Device::Cpu).unwrap();
            let map: std::collections::HashMap<String, Tensor> = vars
                .into_iter()
                .map(|(n, v)| (n, v.as_tensor().clone()))
                .collect();
            let p = fresh(&fuzz_dir("st-valid"), "safetensors");
            candle_core::safetensors::save(&map, &p).unwrap();
            std::fs::read(&p).unwrap()
        })
        .clone()
}

#[test]
fn valid_fuzz_seeds_load() {
    // The seeds of the property tests are valid, so damage is what makes readers fail.
    on_file("seeds", "safetensors", &valid_safetensors(), |p| {
        diffpost::nn::EdmDenoiser::from_safetensors(tiny_unet(), p, &Device::Cpu, 0.002, 80.0)
            .unwrap();
        diffpost::nn::checkpoint::load_state_dict(p, None).unwrap();
    });
    on_file("seeds", "pt", &valid_pt(&tiny_pickle()), |p| {
        let m = diffpost::nn::checkpoint::load_state_dict(p, None).unwrap();
        assert_eq!(values(&m["w"]), vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(m["w"].dims(), &[2, 3]);
    });
    on_file("seeds", "png", &valid_png(), |p| {
        diffpost::imaging::load_png(p, 1, 5, 4).unwrap();
    });
    for text in TOML_SEEDS {
        diffpost::config::ProblemConfig::parse(text, Path::new("x.toml")).unwrap();
    }
}

/// A safetensors header by hand: 8-byte length, JSON, data.
fn safetensors_by_hand(json: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend(json.as_bytes());
    out.extend(data);
    out
}

#[test]
fn safetensors_with_odd_dtypes_and_shapes_are_errors() {
    // Dtypes candle keeps as raw bytes (F4, F6, F8_E8M0), ones it refuses (BOOL), and huge
    // shapes whose offsets lie: each must be an error through both weight readers.
    for (dtype, shape, end) in [
        ("F4", "[8]", 4),
        ("F8_E8M0", "[4]", 4),
        ("F6_E2M3", "[4]", 3),
        ("BOOL", "[4]", 4),
        ("F32", "[4294967296, 4294967296]", 4),
        ("F32", "[1]", 4_000_000_000u64),
    ] {
        let json = format!(
            "{{\"w\":{{\"dtype\":\"{dtype}\",\"shape\":{shape},\"data_offsets\":[0,{end}]}}}}"
        );
        let bytes = safetensors_by_hand(&json, &[0u8; 4]);
        on_file("st-odd", "safetensors", &bytes, |p| {
            let r = diffpost::nn::EdmDenoiser::from_safetensors(
                tiny_unet(),
                p,
                &Device::Cpu,
                0.002,
                80.0,
            );
            assert!(r.is_err(), "{dtype} {shape}");
            if let Ok(m) = diffpost::nn::checkpoint::load_state_dict(p, None) {
                // Loaded as raw bytes: building a network from them must fail cleanly.
                let r = diffpost::nn::checkpoint::build_checked(m, &Device::Cpu, p, |vb| {
                    vb.get(8, "w")
                });
                let _ = r.map(|t| t.to_dtype(DType::F32));
            }
        });
    }
}

// --- PyTorch .pt (zip + pickle) ----------------------------------------------------------------

/// A minimal `torch.save({'w': torch.arange(6.).reshape(2, 3)})` pickle (protocol 2), by hand.
fn tiny_pickle() -> Vec<u8> {
    fn s(out: &mut Vec<u8>, t: &str) {
        out.push(b'X');
        out.extend((t.len() as u32).to_le_bytes());
        out.extend(t.as_bytes());
    }
    let mut p = vec![0x80, 2, b'}', b'('];
    s(&mut p, "w");
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    p.push(b'(');
    s(&mut p, "storage");
    p.extend(b"ctorch\nFloatStorage\n");
    s(&mut p, "0");
    s(&mut p, "cpu");
    p.extend([b'K', 6, b't', b'Q']); // numel 6, TUPLE, BINPERSID
    p.extend([b'K', 0]); // storage offset
    p.extend([b'K', 2, b'K', 3, 0x86]); // size (2, 3)
    p.extend([b'K', 3, b'K', 1, 0x86]); // stride (3, 1)
    p.push(0x89); // requires_grad False
    p.extend(b"ccollections\nOrderedDict\n)R"); // backward hooks
    p.extend(b"tR"); // args tuple, REDUCE
    p.extend(b"u."); // SETITEMS, STOP
    p
}

fn valid_pt(pickle: &[u8]) -> Vec<u8> {
    let data: Vec<u8> = (0..6).flat_map(|v| (v as f32).to_le_bytes()).collect();
    zip_bytes(
        &[
            ("archive/data.pkl", pickle),
            ("archive/data/0", &data),
            ("archive/version", b"3\n"),
        ],
        false,
        false,
    )
}

// Candle's pickle reader, used before, panicked on the first three (checked: "removal index (is
// 3) should be < len (is 1)", "(is 4) ...", "capacity overflow"), would overflow the stack
// dropping the deep one, exhaust memory on the memo bomb and allocate 4 GiB for the long string.
#[test]
fn hostile_pickles_are_errors() {
    let dir = tmpdir("pickles");
    let base = tiny_pickle();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // _rebuild_tensor_v2 with too few arguments (candle's reader indexed them blindly).
        ("short args", {
            let mut p = vec![0x80, 2, b'}', b'('];
            p.extend(b"X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n(K\x00tRu.");
            p
        }),
        // A storage tuple with too few fields.
        ("short storage", {
            let mut p = vec![0x80, 2, b'}', b'('];
            p.extend(b"X\x01\x00\x00\x00wctorch._utils\n_rebuild_tensor_v2\n(");
            p.extend(b"(X\x07\x00\x00\x00storagetQK\x00K\x02\x85K\x01\x85\x89N\x85tRu.");
            p
        }),
        // A size claiming 2^31-1 x 2^31-1 elements from a 24-byte storage.
        (
            "huge size",
            replace(
                &base,
                &[b'K', 2, b'K', 3, 0x86],
                b"J\xff\xff\xff\x7fJ\xff\xff\xff\x7f\x86",
            ),
        ),
        // Storage numel larger than the storage entry.
        (
            "numel lie",
            replace(&base, &[b'K', 6, b't'], b"J\x00\x00\x00\x40t"),
        ),
        // Offset past the storage.
        (
            "offset",
            replace(&base, &[b'K', 0, b'K', 2], &[b'K', 200, b'K', 2]),
        ),
        // Strides reaching past the storage (element 3 + 2 * 3 = 9 of 6).
        (
            "stride",
            replace(&base, &[b'K', 3, b'K', 1, 0x86], &[b'K', 3, b'K', 3, 0x86]),
        ),
        // Shape and stride of different ranks.
        (
            "ranks",
            replace(&base, &[b'K', 3, b'K', 1, 0x86], &[b'K', 1, 0x85]),
        ),
        // Deep nesting (a stack overflow when dropped, in a recursive reader).
        ("deep", {
            let mut p = vec![0x80, 2, b']'];
            p.extend(std::iter::repeat_n(0x85u8, 1_000_000));
            p.push(b'.');
            p
        }),
        // Exponential growth through the memo: 64 doublings of a list.
        ("memo bomb", {
            let mut p = vec![0x80, 2, b']'];
            for _ in 0..64 {
                p.extend([b'q', 0, b'h', 0, 0x86]); // BINPUT 0, BINGET 0, TUPLE2
            }
            p.push(b'.');
            p
        }),
        // A 4 GB string length from a tiny file.
        (
            "long string",
            vec![0x80, 2, b'X', 0xff, 0xff, 0xff, 0xff, b'a'],
        ),
        // Unknown opcodes and an empty stream.
        ("opcode", vec![0x80, 2, 0xfe]),
        ("empty", vec![]),
    ];
    for (name, pickle) in cases {
        let p = write(&dir, "h.pt", &valid_pt(&pickle));
        let r = diffpost::nn::checkpoint::load_state_dict(&p, None);
        assert!(r.is_err(), "{name}: loaded {:?}", r.map(|m| m.len()));
    }
    // Any strides inside the storage are read (torch saves views with their storage): a 2x3
    // window with strides (1, 1) overlaps itself.
    let p = write(
        &dir,
        "view.pt",
        &valid_pt(&replace(
            &base,
            &[b'K', 3, b'K', 1, 0x86],
            &[b'K', 1, b'K', 1, 0x86],
        )),
    );
    let m = diffpost::nn::checkpoint::load_state_dict(&p, None).unwrap();
    assert_eq!(values(&m["w"]), vec![0.0, 1.0, 2.0, 1.0, 2.0, 3.0]);
    // Transposed (Fortran-order) storage: strides (1, 2).
    let p = write(
        &dir,
        "t.pt",
        &valid_pt(&replace(
            &base,
            &[b'K', 3, b'K', 1, 0x86],
            &[b'K', 1, b'K', 2, 0x86],
        )),
    );
    let m = diffpost::nn::checkpoint::load_state_dict(&p, None).unwrap();
    assert_eq!(values(&m["w"]), vec![0.0, 2.0, 4.0, 1.0, 3.0, 5.0]);
    let _ = std::fs::remove_dir_all(&dir);
}

fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = haystack
        .windows(from.len())
        .position(|w| w == from)
        .expect("pattern in the pickle");
    let mut v = haystack[..at].to_vec();
    v.extend(to);
    v.extend(&haystack[at + from.len()..]);
    v
}

// --- PNG ---------------------------------------------------------------------------------------

fn valid_png() -> Vec<u8> {
    let p = fresh(&fuzz_dir("png-valid"), "png");
    let img: Vec<f64> = (0..20).map(|i| i as f64 / 10.0 - 1.0).collect();
    // A 4x5 grid of one image with a 1-pixel border: 6x7 (W x H) would be the grid; use
    // image directly for an exact 4 x 5.
    let buf = image::GrayImage::from_fn(4, 5, |x, y| {
        image::Luma([diffpost::imaging::to_u8(
            img[(y * 4 + x) as usize],
            -1.0,
            1.0,
        )])
    });
    buf.save_with_format(&p, image::ImageFormat::Png).unwrap();
    let b = std::fs::read(&p).unwrap();
    let _ = std::fs::remove_file(&p);
    b
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xedb8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// Recomputes every chunk's CRC, so damage reaches the decoder instead of the CRC check.
fn fix_png_crcs(v: &mut [u8]) {
    let mut i = 8;
    while i + 12 <= v.len() {
        let len = u32::from_be_bytes(v[i..i + 4].try_into().unwrap()) as usize;
        let end = i + 8 + len;
        if end + 4 > v.len() {
            break;
        }
        let c = crc32(&v[i + 4..end]);
        v[end..end + 4].copy_from_slice(&c.to_be_bytes());
        i = end + 4;
    }
}

// --- TOML problem configs --------------------------------------------------------------------

const TOML_SEEDS: [&str; 4] = [
    include_str!("../../../examples/ffhq/deblur.toml"),
    include_str!("../../../examples/robustness/annealed.toml"),
    include_str!("../../../examples/robustness/ula.toml"),
    "[prior]\nkind = \"gmm\"\npath = \"prior.npz\"\n[operator]\nkind = \"matrix\"\npath = \"A.npy\"\n\
     [measurement]\ny = \"y.npy\"\neta = 0.2\n[sampler]\nkind = \"smc\"\n[run]\nn = 64\nseed = 3\n",
];

/// Text damage on char boundaries: random text, a cut, or characters replaced.
#[derive(Debug, Clone)]
enum TextDamage {
    Random(String),
    Truncate(Index),
    Replace(Vec<(Index, char)>),
    Digits(Vec<(Index, String)>),
}

fn text_damage() -> impl Strategy<Value = TextDamage> {
    prop_oneof![
        "\\PC{0,300}".prop_map(TextDamage::Random),
        any::<Index>().prop_map(TextDamage::Truncate),
        prop::collection::vec((any::<Index>(), any::<char>()), 1..6).prop_map(TextDamage::Replace),
        // Numbers where numbers were: zero, negative, huge, NaN, inf.
        prop::collection::vec(
            (
                any::<Index>(),
                prop::sample::select(vec![
                    "0",
                    "-1",
                    "1e308",
                    "nan",
                    "inf",
                    "-inf",
                    "18446744073709551615",
                    "9223372036854775807",
                    "0.0",
                    "1e-320",
                    "4294967296",
                ])
                .prop_map(String::from),
            ),
            1..4,
        )
        .prop_map(TextDamage::Digits),
    ]
}

fn apply_text(seed: &str, d: &TextDamage) -> String {
    let chars: Vec<char> = seed.chars().collect();
    match d {
        TextDamage::Random(s) => s.clone(),
        TextDamage::Truncate(i) => chars[..i.index(chars.len() + 1)].iter().collect(),
        TextDamage::Replace(r) => {
            let mut c = chars;
            for (i, ch) in r {
                let at = i.index(c.len());
                c[at] = *ch;
            }
            c.into_iter().collect()
        }
        TextDamage::Digits(r) => {
            // Replace the number starting at the i-th digit run.
            let mut s = seed.to_string();
            for (i, v) in r {
                let runs: Vec<(usize, usize)> = {
                    let b = s.as_bytes();
                    let mut out = Vec::new();
                    let mut k = 0;
                    while k < b.len() {
                        if b[k].is_ascii_digit() {
                            let st = k;
                            while k < b.len() && (b[k].is_ascii_digit() || b[k] == b'.') {
                                k += 1;
                            }
                            out.push((st, k));
                        } else {
                            k += 1;
                        }
                    }
                    out
                };
                if runs.is_empty() {
                    break;
                }
                let (a, b) = runs[i.index(runs.len())];
                s.replace_range(a..b, v);
            }
            s
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn fuzz_safetensors(d in damage()) {
        let bytes = apply(&valid_safetensors(), &d);
        let _ = on_file("st", "safetensors", &bytes, |p| {
            let a = diffpost::nn::EdmDenoiser::from_safetensors(tiny_unet(), p, &Device::Cpu, 0.002, 80.0)
                .map(|_| ());
            let b = diffpost::nn::checkpoint::load_state_dict(p, None).map(|_| ());
            (a.is_ok(), b.is_ok())
        });
    }

    #[test]
    fn fuzz_pt(d in damage(), inner in any::<bool>()) {
        let bytes = if inner {
            // Damage the pickle inside a well-formed archive.
            valid_pt(&apply(&tiny_pickle(), &d))
        } else {
            apply(&valid_pt(&tiny_pickle()), &d)
        };
        let _ = on_file("pt", "pt", &bytes, |p| {
            diffpost::nn::checkpoint::load_state_dict(p, None).map(|_| ())
        });
    }

    #[test]
    fn fuzz_png(d in damage(), fix_crc in any::<bool>()) {
        let mut bytes = apply(&valid_png(), &d);
        if fix_crc {
            fix_png_crcs(&mut bytes);
        }
        let _ = on_file("png", "png", &bytes, |p| {
            let a = diffpost::imaging::load_png(p, 1, 5, 4).map(|_| ());
            let b = diffpost::imaging::load_png(p, 3, 5, 4).map(|_| ());
            (a.is_ok(), b.is_ok())
        });
    }

    #[test]
    fn fuzz_toml(seed in 0usize..TOML_SEEDS.len(), d in text_damage()) {
        let text = apply_text(TOML_SEEDS[seed], &d);
        let _ = diffpost::config::ProblemConfig::parse(&text, Path::new("problem.toml"));
    }
}
