//! `.npz` reading: a zip archive of `.npy` entries, stored (`np.savez`) or deflated
//! (`np.savez_compressed`). Entries are read through [`super::npy`]; the sizes claimed by the
//! zip directory are checked against the archive's length and the machine's memory before
//! anything is read, and reading stops at the byte count the entry's `.npy` header implies.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use zip::{CompressionMethod, ZipArchive};

use super::{array_from_npy, file_len, prefixed, ReadArray};
use crate::{Error, Result};

/// Deflate cannot expand data by more than about 1032:1; a claimed uncompressed size beyond
/// this ratio (plus slack for tiny entries) is a lie.
const MAX_DEFLATE_RATIO: u64 = 1032;

/// An open `.npz` archive.
pub struct NpzReader {
    path: PathBuf,
    what: String,
    file_len: u64,
    zip: ZipArchive<BufReader<File>>,
}

impl std::fmt::Debug for NpzReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NpzReader")
            .field("path", &self.path)
            .field("entries", &self.zip.len())
            .finish()
    }
}

impl NpzReader {
    /// Opens `path`; `what` names the archive in errors (`""` for none).
    pub fn open(path: &Path, what: &str) -> Result<Self> {
        let ferr = |reason: String| Error::File {
            path: path.to_path_buf(),
            reason: prefixed(what, &reason),
        };
        let len = file_len(path).map_err(ferr)?;
        let f = File::open(path).map_err(|e| ferr(super::describe_io_error(&e)))?;
        let zip = ZipArchive::new(BufReader::new(f))
            .map_err(|e| ferr(format!("cannot read npz: not a valid zip archive ({e})")))?;
        Ok(NpzReader {
            path: path.to_path_buf(),
            what: what.to_string(),
            file_len: len,
            zip,
        })
    }

    /// The archive's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Entry names without their `.npy` suffix, in archive order (entries whose names are not
    /// valid text are left out).
    pub fn names(&self) -> Vec<String> {
        self.zip
            .file_names()
            .filter_map(|n| n.ok())
            .map(|n| n.strip_suffix(".npy").unwrap_or(&n).to_string())
            .collect()
    }

    /// The index of entry `name` (`name` or `name.npy`).
    fn index_of(&self, name: &str) -> Option<usize> {
        self.zip
            .index_for_name(name)
            .or_else(|| self.zip.index_for_name(&format!("{name}.npy")))
    }

    /// Whether the archive holds entry `name` (with or without `.npy`).
    pub fn contains(&self, name: &str) -> bool {
        self.index_of(name).is_some()
    }

    /// Reads entry `name` (with or without `.npy`) as f64, with a note of any conversion.
    pub fn read(&mut self, name: &str) -> Result<ReadArray> {
        let label = name.strip_suffix(".npy").unwrap_or(name).to_string();
        let ferr = |reason: String| Error::File {
            path: self.path.clone(),
            reason: prefixed(&self.what, &format!("array `{label}`: {reason}")),
        };
        let Some(i) = self.index_of(name) else {
            let found = self.names().join(", ");
            return Err(Error::File {
                path: self.path.clone(),
                reason: prefixed(
                    &self.what,
                    &format!("missing array `{label}` (found: {found})"),
                ),
            });
        };
        let (size, packed, method, encrypted) = {
            let e = self
                .zip
                .by_index_data(i)
                .map_err(|e| ferr(format!("bad zip entry: {e}")))?;
            (
                e.size(),
                e.compressed_size(),
                e.compression(),
                e.encrypted(),
            )
        };
        if let Some(p) = entry_problem(size, packed, method, encrypted, self.file_len) {
            return Err(ferr(p));
        }
        let mut entry = self
            .zip
            .by_index(i)
            .map_err(|e| ferr(format!("bad zip entry: {e}")))?;
        // `size` is now a bound the .npy header's byte count must match exactly, and reading
        // stops there (plus one byte to see the end, which also makes zip check the CRC).
        let arr = super::npy::read_npy(&mut entry, size).map_err(&ferr)?;
        let file = self
            .path
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        array_from_npy(arr, &format!("{file}/{label}")).map_err(ferr)
    }
}

/// Why the sizes a zip directory claims for an entry cannot be trusted, if they cannot:
/// encryption or a compression other than stored/deflate, a stored entry whose sizes differ, a
/// deflated one beyond deflate's maximum ratio, or more packed bytes than the archive holds.
pub fn entry_problem(
    size: u64,
    packed: u64,
    method: CompressionMethod,
    encrypted: bool,
    archive_len: u64,
) -> Option<String> {
    if encrypted {
        return Some("the zip entry is encrypted".into());
    }
    match method {
        CompressionMethod::Stored if size != packed => {
            return Some(format!(
                "stored zip entry claims {size} bytes but occupies {packed}"
            ))
        }
        CompressionMethod::Stored => {}
        CompressionMethod::Deflated => {
            let max = packed
                .saturating_mul(MAX_DEFLATE_RATIO)
                .saturating_add(1024);
            if size > max {
                return Some(format!(
                    "zip entry claims {size} uncompressed bytes from {packed} compressed ones, \
                     more than deflate can produce"
                ));
            }
        }
        other => {
            return Some(format!(
                "zip compression {other} is not read (only stored and deflate)"
            ))
        }
    }
    if packed > archive_len {
        return Some(format!(
            "zip entry claims {packed} bytes, more than the whole archive ({archive_len} bytes)"
        ));
    }
    None
}

/// Entry names (without `.npy`) of the archive at `path`.
pub fn npz_names(path: &Path, what: &str) -> Result<Vec<String>> {
    Ok(NpzReader::open(path, what)?.names())
}

/// Reads one entry (`name`, with or without `.npy`) of the archive at `path`.
pub fn read_npz_array(path: &Path, name: &str, what: &str) -> Result<ReadArray> {
    NpzReader::open(path, what)?.read(name)
}
