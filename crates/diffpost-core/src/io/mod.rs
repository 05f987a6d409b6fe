//! Array I/O: `.npy`/`.npz` reading with clear errors (our own parser: [`npy`], [`npz`]),
//! atomic writes (temp file then rename).
//!
//! One dtype policy for every array diffpost reads: bool, signed and unsigned integers of 1, 2, 4
//! and 8 bytes and float16/32/64, in either byte order, are converted to f64 (the conversion is
//! reported in [`ReadArray::conversion`]); complex, object, string and structured dtypes are
//! refused. Fortran-ordered arrays are transposed to C order. Sizes read from a file are checked
//! against the file's length and the machine's memory before anything is allocated.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::{Error, Result};

pub mod npy;
pub mod npz;

pub use npz::{npz_names, read_npz_array, NpzReader};

/// An array read from a file, as an f64 tensor on the CPU.
#[derive(Debug, Clone)]
pub struct ReadArray {
    pub tensor: Tensor,
    /// What reading converted, e.g. `"A.npy: int32 converted to float64"`; `None` for float64.
    pub conversion: Option<String>,
}

/// `"{what}: {reason}"`, or `reason` alone when `what` is empty.
pub(crate) fn prefixed(what: &str, reason: &str) -> String {
    if what.is_empty() {
        reason.to_string()
    } else {
        format!("{what}: {reason}")
    }
}

/// An I/O error in words; "file not found" only when nothing is there.
pub fn describe_io_error(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::ELOOP) => {
            return "symbolic link loop (too many levels of symbolic links)".into()
        }
        Some(libc::ENOTDIR) => return "a component of the path is not a directory".into(),
        Some(libc::ENAMETOOLONG) => return "file name too long".into(),
        _ => {}
    }
    match e.kind() {
        std::io::ErrorKind::NotFound => "file not found".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => format!("cannot access: {e}"),
    }
}

/// The length of the regular file at `path`, or why it cannot be read (see [`describe_io_error`];
/// a symbolic link to nothing is reported as such).
pub fn file_len(path: &Path) -> std::result::Result<u64, String> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Err("is a directory, not a file".into()),
        Ok(m) if !m.is_file() => Err("not a regular file".into()),
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match std::fs::symlink_metadata(path) {
                Ok(m) if m.file_type().is_symlink() => {
                    let target = std::fs::read_link(path)
                        .map(|t| t.display().to_string())
                        .unwrap_or_default();
                    Err(format!(
                        "broken symbolic link (to {target:?}, which does not exist): file not found"
                    ))
                }
                _ => Err(describe_io_error(&e)),
            }
        }
        Err(e) => Err(describe_io_error(&e)),
    }
}

/// Turns a decoded `.npy` into a [`ReadArray`]; `label` names it in the conversion note.
pub(crate) fn array_from_npy(
    arr: npy::NpyArray,
    label: &str,
) -> std::result::Result<ReadArray, String> {
    let h = arr.header;
    let conversion =
        (!h.dtype.is_f64()).then(|| format!("{label}: {} converted to float64", h.dtype.name()));
    let tensor = Tensor::from_vec(arr.data, h.shape, &Device::Cpu).map_err(|e| e.to_string())?;
    Ok(ReadArray { tensor, conversion })
}

/// Reads a numeric `.npy` as an f64 tensor, checking it exists, parses and is finite, and notes
/// any dtype conversion. `what` names the array in error messages.
pub fn read_array_with_note(path: &Path, what: &str) -> Result<ReadArray> {
    let ferr = |reason: String| Error::File {
        path: path.to_path_buf(),
        reason: prefixed(what, &reason),
    };
    let len = file_len(path).map_err(ferr)?;
    let f = File::open(path).map_err(|e| ferr(describe_io_error(&e)))?;
    let arr = npy::read_npy(&mut BufReader::new(f), len).map_err(ferr)?;
    if let Some(i) = arr.data.iter().position(|x| !x.is_finite()) {
        return Err(ferr(format!(
            "non-finite value at flat index {i} (shape {:?})",
            arr.header.shape
        )));
    }
    let label = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    array_from_npy(arr, &label).map_err(ferr)
}

/// Reads a numeric `.npy` as an f64 tensor, checking it exists, parses and is finite.
/// `what` names the array in error messages. A dtype conversion is recorded in this thread's
/// conversion log ([`take_conversion_notes`]).
pub fn read_array(path: &Path, what: &str) -> Result<Tensor> {
    let r = read_array_with_note(path, what)?;
    if let Some(n) = r.conversion {
        note_conversion(n);
    }
    Ok(r.tensor)
}

thread_local! {
    static CONVERSIONS: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Records a conversion made while reading an input (a dtype, an image's channels), for the
/// run's `summary.json`.
pub fn note_conversion(note: String) {
    CONVERSIONS.with(|c| c.borrow_mut().push(note));
}

/// The conversions recorded on this thread since the last call (and clears them). Loading a
/// problem takes them into `diffpost::config::LoadedProblem::conversions`.
pub fn take_conversion_notes() -> Vec<String> {
    CONVERSIONS.with(|c| std::mem::take(&mut *c.borrow_mut()))
}

/// Writes through `write(tmp_path)` then renames onto `path`, so readers never see a partial file
/// and an earlier output is replaced only by a complete one.
pub fn atomic_write(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    // Keep the extension last: candle's npy/npz writers do not care, but users' tools might.
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let res = write(&tmp);
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::File {
        path: path.to_path_buf(),
        reason: format!("rename failed: {e}"),
    })?;
    Ok(())
}

/// Writes a tensor as `.npy` atomically.
pub fn write_npy(path: &Path, t: &Tensor) -> Result<()> {
    atomic_write(path, |tmp| Ok(t.write_npy(tmp)?))
}

/// Writes bytes atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_write(path, |tmp| Ok(std::fs::write(tmp, bytes)?))
}

/// `dir/p` unless `p` is absolute (config paths are relative to the config's folder).
pub fn resolve(dir: &Path, p: &Path) -> std::path::PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.join(p)
    }
}
