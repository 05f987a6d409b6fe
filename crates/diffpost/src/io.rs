//! Array I/O: `.npy` reading with clear errors, atomic writes (temp file then rename).

use std::path::Path;

use candle_core::{DType, Tensor};

use crate::{Error, Result};

/// Reads a numeric `.npy` as an f64 tensor, checking it exists, parses and is finite.
/// `what` names the array in error messages.
pub fn read_array(path: &Path, what: &str) -> Result<Tensor> {
    let ferr = |reason: String| Error::File {
        path: path.to_path_buf(),
        reason,
    };
    if !path.exists() {
        return Err(ferr(format!("{what}: file not found")));
    }
    let t = Tensor::read_npy(path).map_err(|e| ferr(format!("{what}: cannot read .npy: {e}")))?;
    let t = match t.dtype() {
        DType::F64 => t,
        DType::F32 | DType::U8 | DType::U32 | DType::I64 | DType::F16 | DType::BF16 => {
            t.to_dtype(DType::F64)?
        }
        other => return Err(ferr(format!("{what}: unsupported dtype {other:?}"))),
    };
    let v: Vec<f64> = t.flatten_all()?.to_vec1()?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(ferr(format!(
            "{what}: non-finite value at flat index {i} (shape {:?})",
            t.dims()
        )));
    }
    Ok(t)
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
