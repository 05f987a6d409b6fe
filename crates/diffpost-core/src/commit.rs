//! Outputs that commit as one: a run (or a training checkpoint, or a generated problem) writes
//! everything into a staging folder beside its output folder `out` and, at the end, swaps it into
//! place in one `rename` (Linux: `renameat2(RENAME_EXCHANGE)`, atomic), so a reader sees either the
//! previous output, untouched, or the new one complete; never a mix.
//!
//! - A lock file `.<name>.lock` beside `out` (created with `O_EXCL`, holding host and pid) makes a
//!   second concurrent writer fail at start with a clear message. A lock left by a dead process
//!   on this host is taken over (and said in [`Staging::notes`]).
//! - Staging folders `.<name>.tmp-<pid>` of dead runs are removed when the next run starts.
//! - `out` is validated before any work: not an existing file, its parent creatable, and, when it
//!   holds something, only entries the writer itself produces (`Replace::Outputs`), so that a
//!   folder a user made is never swapped away (`Replace::Any` for `--force`).
//! - Every write error names the path (disk full included).
//! - A single file (written with [`crate::io::atomic_write`]) gets the same policy before any
//!   work from [`check_out_file`].

use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::{Error, Result};

/// What may be replaced when `out` already holds something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replace<'a> {
    /// Nothing: an existing non-empty `out` is an error (`what` names the flag that allows it).
    Never { allow_with: &'a str },
    /// A previous output of this writer: every entry's name is one of `names` (a trailing `*`
    /// matches a prefix, e.g. `"sample_*"`) or ends in one of `suffixes`.
    Outputs {
        names: &'a [&'a str],
        suffixes: &'a [&'a str],
    },
    /// Anything (the user asked, e.g. `--force`).
    Any,
}

fn ferr(path: &Path, reason: impl Into<String>) -> Error {
    Error::File {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

fn split(out: &Path) -> Result<(PathBuf, String)> {
    let name = out
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .filter(|s| s != "." && s != "..")
        .ok_or_else(|| ferr(out, "an output folder needs a name (not `.`, `..` or `/`)"))?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    Ok((parent, name))
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Whether process `pid` is alive on this machine.
fn alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        if pid == 0 || pid > i32::MAX as u32 {
            return false;
        }
        // SAFETY: signal 0 only checks that the process exists.
        let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// The lock beside `out`, removed on drop.
#[derive(Debug)]
struct Lock {
    path: PathBuf,
}

impl Lock {
    fn take(path: PathBuf, out: &Path, notes: &mut Vec<String>) -> Result<Self> {
        let me = format!("{} {}\n", host(), std::process::id());
        for _ in 0..3 {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(me.as_bytes())
                        .map_err(|e| ferr(&path, format!("cannot write lock file: {e}")))?;
                    return Ok(Self { path });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    let mut it = text.split_whitespace();
                    let (h, pid) = (
                        it.next().unwrap_or(""),
                        it.next().and_then(|p| p.parse::<u32>().ok()),
                    );
                    match pid {
                        Some(pid) if h == host() && !alive(pid) => {
                            notes.push(format!(
                                "removed the lock of a run that died (pid {pid}): {}",
                                path.display()
                            ));
                            let _ = std::fs::remove_file(&path);
                        }
                        // A lock being written this very moment: look again.
                        None if text.is_empty() => {
                            std::thread::sleep(std::time::Duration::from_millis(50))
                        }
                        _ => {
                            return Err(ferr(
                                out,
                                format!(
                                    "another diffpost process ({}) is writing into this folder \
                                     (lock file {}); wait for it to finish, or remove the lock \
                                     file if that process is gone",
                                    text.trim(),
                                    path.display()
                                ),
                            ))
                        }
                    }
                }
                Err(e) => return Err(ferr(&path, format!("cannot create lock file: {e}"))),
            }
        }
        Err(ferr(
            &path,
            "cannot take the lock file (it keeps reappearing)",
        ))
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A staging folder for `out`: write into [`Staging::path`], then [`Staging::commit`]. Dropped
/// without commit, it removes the staging folder and leaves `out` as it was.
#[derive(Debug)]
pub struct Staging {
    out: PathBuf,
    tmp: PathBuf,
    notes: Vec<String>,
    committed: bool,
    _lock: Lock,
}

/// Checks that `out` may receive an output under `replace`, before any work is done.
pub fn check_out(out: &Path, replace: Replace) -> Result<()> {
    split(out)?;
    match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ferr(out, format!("cannot inspect the output folder: {e}"))),
        Ok(m) if !m.is_dir() => Err(ferr(
            out,
            "exists and is not a folder; choose another output folder",
        )),
        Ok(_) => {
            let entries = std::fs::read_dir(out)
                .map_err(|e| ferr(out, format!("cannot list the output folder: {e}")))?;
            for e in entries {
                let e = e.map_err(|e| ferr(out, format!("cannot list the output folder: {e}")))?;
                let name = e.file_name().to_string_lossy().to_string();
                let ok = match replace {
                    Replace::Any => true,
                    Replace::Never { allow_with } => {
                        return Err(ferr(
                            out,
                            format!("already exists and is not empty; {allow_with}"),
                        ))
                    }
                    Replace::Outputs { names, suffixes } => {
                        names.iter().any(|n| match n.strip_suffix('*') {
                            Some(prefix) => name.starts_with(prefix),
                            None => name == *n,
                        }) || suffixes.iter().any(|s| name.ends_with(s))
                    }
                };
                if !ok {
                    return Err(ferr(
                        out,
                        format!(
                            "holds `{name}`, which diffpost did not write there; the folder would \
                             be replaced as a whole, so choose an empty or new output folder"
                        ),
                    ));
                }
            }
            Ok(())
        }
    }
}

/// Checks that the single file `out` (written with [`crate::io::atomic_write`]) may be written
/// under `replace`, before any work is done: `out` is not a folder, its parent is not a file,
/// and an existing `out` is replaced only under `Replace::Any`, or under `Replace::Outputs` when
/// its name is one of them (`Replace::Never` names the flag that allows it).
pub fn check_out_file(out: &Path, replace: Replace) -> Result<()> {
    let name = out
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .ok_or_else(|| ferr(out, "an output file needs a name (not `.`, `..` or `/`)"))?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(m) = std::fs::metadata(parent) {
            if !m.is_dir() {
                return Err(ferr(parent, "is not a folder; choose another output file"));
            }
        }
    }
    match std::fs::symlink_metadata(out) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(ferr(out, format!("cannot inspect the output file: {e}"))),
        Ok(m) if m.is_dir() => Err(ferr(
            out,
            "is a folder; the output is a file: choose a file name",
        )),
        Ok(_) => match replace {
            Replace::Any => Ok(()),
            Replace::Never { allow_with } => {
                Err(ferr(out, format!("already exists; {allow_with}")))
            }
            Replace::Outputs { names, suffixes } => {
                let ok = names.iter().any(|n| match n.strip_suffix('*') {
                    Some(prefix) => name.starts_with(prefix),
                    None => name == *n,
                }) || suffixes.iter().any(|s| name.ends_with(s));
                if ok {
                    Ok(())
                } else {
                    Err(ferr(out, "already exists and diffpost did not write it"))
                }
            }
        },
    }
}

impl Staging {
    /// Validates `out` ([`check_out`]), takes its lock, removes staging folders of dead runs and
    /// creates a fresh staging folder beside it.
    pub fn begin(out: &Path, replace: Replace) -> Result<Self> {
        check_out(out, replace)?;
        let (parent, name) = split(out)?;
        std::fs::create_dir_all(&parent)
            .map_err(|e| ferr(&parent, format!("cannot create folder: {e}")))?;
        let mut notes = Vec::new();
        let lock = Lock::take(parent.join(format!(".{name}.lock")), out, &mut notes)?;
        // Re-check under the lock: another writer may have committed meanwhile.
        check_out(out, replace)?;
        let prefix = format!(".{name}.tmp-");
        if let Ok(rd) = std::fs::read_dir(&parent) {
            for e in rd.flatten() {
                let f = e.file_name().to_string_lossy().to_string();
                if let Some(pid) = f.strip_prefix(&prefix).and_then(|p| p.parse::<u32>().ok()) {
                    if !alive(pid) || pid == std::process::id() {
                        let p = e.path();
                        if std::fs::remove_dir_all(&p).is_ok() {
                            notes.push(format!(
                                "removed the staging folder of a run that died: {}",
                                p.display()
                            ));
                        }
                    }
                }
            }
        }
        let tmp = parent.join(format!("{prefix}{}", std::process::id()));
        std::fs::create_dir(&tmp).map_err(|e| ferr(&tmp, format!("cannot create folder: {e}")))?;
        Ok(Self {
            out: out.to_path_buf(),
            tmp,
            notes,
            committed: false,
            _lock: lock,
        })
    }

    /// The staging folder to write into.
    pub fn path(&self) -> &Path {
        &self.tmp
    }

    /// The final folder.
    pub fn out(&self) -> &Path {
        &self.out
    }

    /// What `begin` cleaned up (stale locks and staging folders of dead runs).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Writes `bytes` to `name` in the staging folder; errors name the file.
    pub fn write_bytes(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let p = self.tmp.join(name);
        std::fs::write(&p, bytes).map_err(|e| ferr(&p, format!("cannot write: {e}")))
    }

    /// Writes `t` as `.npy` to `name` in the staging folder; errors name the file.
    pub fn write_npy(&self, name: &str, t: &Tensor) -> Result<()> {
        let p = self.tmp.join(name);
        t.write_npy(&p)
            .map_err(|e| ferr(&p, format!("cannot write: {e}")))
    }

    /// Flushes the staging folder to disk and swaps it into place of `out`; the previous `out` is
    /// removed only after the swap. Releases the lock.
    pub fn commit(mut self) -> Result<()> {
        self.swap()?;
        self.committed = true;
        Ok(())
    }

    /// Like [`Staging::commit`], for writers that commit again and again (training checkpoints):
    /// swaps the staging folder into place, keeps the lock and opens a new, empty staging folder
    /// for the next commit. A kill at any moment leaves `out` as of the last completed commit.
    pub fn commit_and_continue(&mut self) -> Result<()> {
        self.swap()?;
        std::fs::create_dir(&self.tmp)
            .map_err(|e| ferr(&self.tmp, format!("cannot create folder: {e}")))
    }

    fn swap(&mut self) -> Result<()> {
        sync_tree(&self.tmp)?;
        let exists = std::fs::symlink_metadata(&self.out).is_ok();
        if !exists {
            std::fs::rename(&self.tmp, &self.out).map_err(|e| {
                ferr(
                    &self.out,
                    format!("cannot move the new output in place: {e}"),
                )
            })?;
        } else if exchange(&self.tmp, &self.out).is_ok() {
            // `tmp` now holds the previous output.
            let _ = std::fs::remove_dir_all(&self.tmp);
        } else {
            // No atomic exchange on this file system: two renames, the old one kept aside until
            // the new one is in place.
            let old = self.tmp.with_extension("old");
            std::fs::rename(&self.out, &old)
                .map_err(|e| ferr(&self.out, format!("cannot move the previous output: {e}")))?;
            if let Err(e) = std::fs::rename(&self.tmp, &self.out) {
                let _ = std::fs::rename(&old, &self.out);
                return Err(ferr(
                    &self.out,
                    format!("cannot move the new output in place: {e}"),
                ));
            }
            let _ = std::fs::remove_dir_all(&old);
        }
        if let Some(parent) = self.out.parent() {
            sync_dir(parent);
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

fn sync_dir(p: &Path) {
    let p = if p.as_os_str().is_empty() {
        Path::new(".")
    } else {
        p
    };
    if let Ok(f) = std::fs::File::open(p) {
        let _ = f.sync_all();
    }
}

/// `fsync` of every file (and folder) under `dir`, so a commit never exposes unwritten data.
fn sync_tree(dir: &Path) -> Result<()> {
    let rd = std::fs::read_dir(dir).map_err(|e| ferr(dir, format!("cannot list: {e}")))?;
    for e in rd {
        let e = e.map_err(|e| ferr(dir, format!("cannot list: {e}")))?;
        let p = e.path();
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            sync_tree(&p)?;
        } else {
            std::fs::File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(|e| ferr(&p, format!("cannot flush to disk: {e}")))?;
        }
    }
    sync_dir(dir);
    Ok(())
}

#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let ca = CString::new(a.as_os_str().as_bytes())?;
    let cb = CString::new(b.as_os_str().as_bytes())?;
    // SAFETY: valid NUL-terminated paths; renameat2 only reads them.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("diffpost-commit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const RUN: Replace = Replace::Outputs {
        names: &["a.txt"],
        suffixes: &[".png"],
    };

    #[test]
    fn commit_replaces_and_drop_keeps_previous() {
        let d = tmpdir("swap");
        let out = d.join("out");
        let s = Staging::begin(&out, RUN).unwrap();
        s.write_bytes("a.txt", b"one").unwrap();
        s.commit().unwrap();
        assert_eq!(std::fs::read(out.join("a.txt")).unwrap(), b"one");
        // A second run that fails (dropped) leaves the first intact and no staging folder.
        let s = Staging::begin(&out, RUN).unwrap();
        s.write_bytes("a.txt", b"two").unwrap();
        drop(s);
        assert_eq!(std::fs::read(out.join("a.txt")).unwrap(), b"one");
        let s = Staging::begin(&out, RUN).unwrap();
        s.write_bytes("a.txt", b"three").unwrap();
        s.commit().unwrap();
        assert_eq!(std::fs::read(out.join("a.txt")).unwrap(), b"three");
        let left: Vec<_> = std::fs::read_dir(&d).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "only `out` remains: {left:?}");
    }

    #[test]
    fn second_writer_is_refused_and_foreign_folders_kept() {
        let d = tmpdir("lock");
        let out = d.join("out");
        let s = Staging::begin(&out, RUN).unwrap();
        let e = Staging::begin(&out, RUN).unwrap_err().to_string();
        assert!(e.contains("another diffpost process"), "{e}");
        drop(s);
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("notes.md"), b"mine").unwrap();
        let e = Staging::begin(&out, RUN).unwrap_err().to_string();
        assert!(e.contains("notes.md"), "{e}");
        std::fs::write(d.join("file"), b"x").unwrap();
        let e = Staging::begin(&d.join("file"), Replace::Any)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a folder"), "{e}");
        let e = Staging::begin(
            &out,
            Replace::Never {
                allow_with: "use --force",
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--force"), "{e}");
    }

    #[test]
    fn repeated_commits_keep_the_lock() {
        let d = tmpdir("again");
        let out = d.join("out");
        let mut s = Staging::begin(&out, RUN).unwrap();
        for k in 0..3 {
            s.write_bytes("a.txt", format!("{k}").as_bytes()).unwrap();
            s.commit_and_continue().unwrap();
            assert_eq!(
                std::fs::read(out.join("a.txt")).unwrap(),
                format!("{k}").as_bytes()
            );
            let e = Staging::begin(&out, RUN).unwrap_err().to_string();
            assert!(e.contains("another diffpost process"), "{e}");
            assert_eq!(std::fs::read_dir(s.path()).unwrap().count(), 0);
        }
        drop(s);
        let left: Vec<_> = std::fs::read_dir(&d).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "only `out` remains: {left:?}");
    }

    #[test]
    fn stale_lock_of_a_dead_process_is_taken_over() {
        let d = tmpdir("stale");
        let out = d.join("out");
        // pid 0 is never a live process for kill(0) semantics here: use an impossible pid.
        std::fs::write(d.join(".out.lock"), format!("{} 4294967295\n", host())).unwrap();
        std::fs::create_dir_all(d.join(".out.tmp-4294967294")).unwrap();
        let s = Staging::begin(&out, RUN).unwrap();
        assert_eq!(s.notes().len(), 2, "{:?}", s.notes());
        s.commit().unwrap();
        assert!(out.is_dir());
    }

    #[test]
    fn check_out_file_refuses_an_existing_file_unless_allowed() {
        let d = tmpdir("file");
        let out = d.join("m.npz");
        let never = Replace::Never {
            allow_with: "pass --force to replace it",
        };
        check_out_file(&out, never).unwrap();
        std::fs::write(&out, b"x").unwrap();
        let e = check_out_file(&out, never).unwrap_err().to_string();
        assert!(e.contains("m.npz") && e.contains("--force"), "{e}");
        check_out_file(&out, Replace::Any).unwrap();
        let e = check_out_file(&d, Replace::Any).unwrap_err().to_string();
        assert!(e.contains("is a folder"), "{e}");
        let e = check_out_file(&out.join("x.npz"), Replace::Any)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a folder"), "{e}");
        assert_eq!(std::fs::read(&out).unwrap(), b"x");
    }
}
