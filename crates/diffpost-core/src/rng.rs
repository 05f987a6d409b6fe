//! Per-sample random streams.
//!
//! Sample `i` of a run with seed `s` draws all of its randomness from one ChaCha8 stream
//! keyed by `(s, i)` (seed = `s`, stream = `i`). A sample's result therefore does not depend
//! on the batch it ran in, on the number of samples, on sharding or on thread count.

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rayon::prelude::*;

use crate::Result;

/// The random streams of a batch of samples (one stream per sample).
pub struct SampleStreams {
    rngs: Vec<ChaCha8Rng>,
    indices: Vec<u64>,
}

impl SampleStreams {
    /// Memory of one stream (a ChaCha8 generator and its index), for limits before allocation.
    pub const BYTES_PER_STREAM: usize =
        std::mem::size_of::<ChaCha8Rng>() + std::mem::size_of::<u64>();

    /// Streams for samples `indices` of a run with `seed`.
    pub fn new(seed: u64, indices: impl IntoIterator<Item = u64>) -> Self {
        let indices: Vec<u64> = indices.into_iter().collect();
        let rngs = indices
            .iter()
            .map(|&i| {
                let mut r = ChaCha8Rng::seed_from_u64(seed);
                r.set_stream(i);
                r
            })
            .collect();
        Self { rngs, indices }
    }

    /// Streams for samples `0..n`.
    pub fn range(seed: u64, n: usize) -> Self {
        Self::new(seed, 0..n as u64)
    }

    /// Number of samples (the batch size).
    pub fn len(&self) -> usize {
        self.rngs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rngs.is_empty()
    }

    /// Global sample indices of this batch.
    pub fn indices(&self) -> &[u64] {
        &self.indices
    }

    /// Standard normal draws, `per_sample` values per sample, row-major `[B, per_sample]`.
    pub fn normal_vec(&mut self, per_sample: usize) -> Vec<f64> {
        let mut out = vec![0.0f64; self.rngs.len() * per_sample];
        if per_sample == 0 {
            return out;
        }
        let fill = |(r, row): (&mut ChaCha8Rng, &mut [f64])| {
            for v in row.iter_mut() {
                *v = r.sample(StandardNormal);
            }
        };
        if out.len() >= 1 << 15 {
            self.rngs
                .par_iter_mut()
                .zip(out.par_chunks_mut(per_sample))
                .for_each(fill);
        } else {
            self.rngs
                .iter_mut()
                .zip(out.chunks_mut(per_sample))
                .for_each(fill);
        }
        out
    }

    /// Standard normal tensor of shape `[B, ...shape]` (f64), one row per sample stream.
    pub fn randn(&mut self, shape: &[usize], device: &Device) -> Result<Tensor> {
        let per: usize = shape.iter().product();
        let v = self.normal_vec(per);
        let mut full = vec![self.rngs.len()];
        full.extend_from_slice(shape);
        Ok(Tensor::from_vec(v, full, &Device::Cpu)?.to_device(device)?)
    }

    /// One uniform draw in [0, 1) per sample.
    pub fn uniform_vec(&mut self) -> Vec<f64> {
        self.rngs.iter_mut().map(|r| r.random::<f64>()).collect()
    }

    /// `n` uniform draws in [0, 1) from each stream, row-major `[B, n]`.
    pub fn uniform_vec_n(&mut self, n: usize) -> Vec<f64> {
        let mut out = Vec::with_capacity(self.rngs.len() * n);
        for r in self.rngs.iter_mut() {
            for _ in 0..n {
                out.push(r.random::<f64>());
            }
        }
        out
    }

    /// Mutable access to the stream of the `b`-th sample of the batch (for analytic kernels).
    pub fn stream(&mut self, b: usize) -> &mut ChaCha8Rng {
        &mut self.rngs[b]
    }

    /// Joins consecutive parts back into one batch (the inverse of [`Self::into_chunks`]).
    pub fn join(parts: Vec<SampleStreams>) -> SampleStreams {
        let mut rngs = Vec::new();
        let mut indices = Vec::new();
        for p in parts {
            rngs.extend(p.rngs);
            indices.extend(p.indices);
        }
        SampleStreams { rngs, indices }
    }

    /// Split into consecutive chunks of at most `chunk` samples (streams move, not copied).
    pub fn into_chunks(self, chunk: usize) -> Vec<SampleStreams> {
        let chunk = chunk.max(1);
        let mut out = Vec::new();
        let mut rngs = self.rngs.into_iter();
        let mut idx = self.indices.into_iter();
        loop {
            let r: Vec<_> = rngs.by_ref().take(chunk).collect();
            if r.is_empty() {
                break;
            }
            let i: Vec<_> = idx.by_ref().take(r.len()).collect();
            out.push(SampleStreams {
                rngs: r,
                indices: i,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_do_not_depend_on_batch() {
        let mut all = SampleStreams::range(7, 10);
        let a = all.normal_vec(5);
        let mut part = SampleStreams::new(7, 3..6);
        let b = part.normal_vec(5);
        assert_eq!(&a[15..30], &b[..]);
        let mut other_seed = SampleStreams::new(8, 3..6);
        assert_ne!(other_seed.normal_vec(5), b);
    }
}
