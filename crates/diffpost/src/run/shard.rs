//! Sharded runs: shard `K` of `N` holds a contiguous block of the run's populations
//! ([`super::summary::merge`] puts the shards back together).

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Shard `index` (0-based) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Self::WHOLE
    }
}

impl Shard {
    /// The whole run.
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    pub fn new(index: usize, count: usize) -> Result<Self> {
        if count == 0 || index >= count {
            return Err(Error::param(
                "shard",
                format!("expected K/N with 0 <= K < N, got {index}/{count}"),
            ));
        }
        Ok(Self { index, count })
    }

    /// Parses `K/N`.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || Error::param("shard", format!("expected K/N (e.g. 0/4), got `{s}`"));
        let (k, n) = s.split_once('/').ok_or_else(bad)?;
        let k: usize = k.trim().parse().map_err(|_| bad())?;
        let n: usize = n.trim().parse().map_err(|_| bad())?;
        Self::new(k, n)
    }

    /// This shard's populations out of `populations`: contiguous, sizes differ by at most one
    /// (the first `populations % count` shards take one more).
    pub fn range(&self, populations: usize) -> Result<Range<usize>> {
        Self::new(self.index, self.count)?;
        if self.count > populations {
            return Err(Error::param(
                "shard",
                format!(
                    "{} shards for {populations} populations: every shard needs at least one",
                    self.count
                ),
            ));
        }
        let base = populations / self.count;
        let extra = populations % self.count;
        let start = self.index * base + self.index.min(extra);
        let len = base + usize::from(self.index < extra);
        Ok(start..start + len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_populations_once() {
        for pops in [1usize, 2, 7, 10, 64] {
            for count in 1..=pops.min(9) {
                let mut next = 0;
                for k in 0..count {
                    let r = Shard::new(k, count).unwrap().range(pops).unwrap();
                    assert_eq!(r.start, next);
                    assert!(!r.is_empty());
                    next = r.end;
                }
                assert_eq!(next, pops);
            }
        }
        assert!(Shard::parse("3/3").is_err());
        assert!(Shard::parse("1/0").is_err());
        assert!(Shard::parse("x").is_err());
        assert_eq!(Shard::parse("2/5").unwrap(), Shard { index: 2, count: 5 });
        assert!(Shard::new(0, 5).unwrap().range(4).is_err());
    }
}
