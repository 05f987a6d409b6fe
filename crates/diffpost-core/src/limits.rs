//! Memory limits: refuse an allocation the machine cannot hold with a clear error instead of
//! letting the allocator abort the process ("memory allocation failed") or the OS kill it.
//!
//! Use [`check_alloc`] before allocating a buffer whose size comes from user input (a file's
//! header, `n`, `d`, the number of stages ...).

use crate::{Error, Result};

/// Bytes of memory available for new allocations (`MemAvailable` of `/proc/meminfo`), or `None`
/// where that is unreadable (not Linux, no /proc): then only the address-space limit is checked.
pub fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

/// `MemAvailable:  123456 kB` -> bytes.
fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let mut it = line["MemAvailable:".len()..].split_whitespace();
    let n: u64 = it.next()?.parse().ok()?;
    let unit = match it.next() {
        None => 1,
        Some(u) if u.eq_ignore_ascii_case("kb") => 1024,
        Some(u) if u.eq_ignore_ascii_case("mb") => 1024 * 1024,
        Some(_) => return None,
    };
    n.checked_mul(unit)
}

/// `bytes` in a readable unit (`1.5 GiB`), with the exact count.
pub fn human_bytes(bytes: u128) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut v = bytes as f64;
    let mut unit = "bytes";
    for u in UNITS {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit} ({bytes} bytes)")
}

/// Why an allocation of `bytes` cannot succeed, or `None` when it may: more than the address
/// space allows (`isize::MAX`), or more than the memory available now (when known).
pub fn alloc_problem(bytes: u128) -> Option<String> {
    if bytes > isize::MAX as u128 {
        return Some(format!(
            "would need {}, more than this machine can address",
            human_bytes(bytes)
        ));
    }
    match mem_available() {
        Some(avail) if bytes > avail as u128 => Some(format!(
            "would need {}, more than the {} of memory available (MemAvailable)",
            human_bytes(bytes),
            human_bytes(avail as u128)
        )),
        _ => None,
    }
}

/// Checks that `bytes` can be allocated (see [`alloc_problem`]); `what` names the buffer in the
/// error (`"samples [n, d] f64"`).
pub fn check_alloc(what: &str, bytes: u128) -> Result<()> {
    match alloc_problem(bytes) {
        None => Ok(()),
        Some(reason) => Err(Error::Memory {
            what: what.to_string(),
            reason,
        }),
    }
}

/// `a * b * ...` in `u128`, saturating (sizes from user input cannot overflow the check).
pub fn product(factors: &[u128]) -> u128 {
    factors.iter().fold(1u128, |acc, &f| acc.saturating_mul(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_parsing() {
        let t = "MemTotal:       16318480 kB\nMemFree:         1234 kB\nMemAvailable:    8000 kB\n";
        assert_eq!(parse_mem_available(t), Some(8000 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 5 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: x kB\n"), None);
    }

    #[test]
    fn impossible_allocations_are_refused() {
        assert!(check_alloc("small", 1024).is_ok());
        let e = check_alloc("huge", 1u128 << 70).unwrap_err().to_string();
        assert!(e.contains("huge") && e.contains("bytes"), "{e}");
        if let Some(avail) = mem_available() {
            let e = check_alloc("more than RAM", avail as u128 + (1 << 30))
                .unwrap_err()
                .to_string();
            assert!(e.contains("MemAvailable"), "{e}");
        }
    }
}
