//! Limits before allocation: a size read from a file, flag or config is checked against what the
//! machine can hold before any buffer of that size is made, so an impossible request is a clear
//! error naming the setting instead of an allocation abort.

use crate::{Error, Result};

/// Bytes of memory available now (`MemAvailable` of `/proc/meminfo`), if the system says.
pub fn available_memory() -> Option<u128> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u128 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// `bytes` as a short human-readable size.
pub fn human(bytes: u128) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Checks that a buffer of `bytes` for `what` (the setting or file that asks for it) can exist:
/// at most `isize::MAX` and at most the memory available now (when known).
pub fn check_alloc(what: &str, bytes: u128) -> Result<()> {
    let fail = |limit: String| {
        Err(Error::param(
            what,
            format!("would need {} of memory, {limit}", human(bytes)),
        ))
    };
    if bytes > isize::MAX as u128 {
        return fail("more than any machine can address".into());
    }
    if let Some(avail) = available_memory() {
        if bytes > avail {
            return fail(format!("more than the {} available", human(avail)));
        }
    }
    Ok(())
}

/// `a * b * ...` in `u128`, saturating (sizes from user input cannot overflow the check).
pub fn product(factors: &[u128]) -> u128 {
    factors.iter().fold(1u128, |acc, &f| acc.saturating_mul(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_sizes_are_errors_naming_the_setting() {
        let e = check_alloc("run.n", product(&[1 << 40, 1 << 40, 8]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("run.n") && e.contains("memory"), "{e}");
        assert!(check_alloc("small", 1024).is_ok());
        if let Some(avail) = available_memory() {
            assert!(check_alloc("x", avail + (1 << 30)).is_err());
        }
    }
}
