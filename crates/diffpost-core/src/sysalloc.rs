//! Process-wide settings for numerical work: the allocator (large, short-lived buffers) and
//! candle's elementwise thread pool ([`quiet_candle_pool`]).
//!
//! glibc's malloc returns every allocation above its mmap threshold to the OS on free, so a
//! network evaluation that allocates (and frees) activations and im2col scratch of tens to
//! hundreds of MB pays page faults on every call: measured here, 35-40% of a 256x256
//! guided-diffusion forward pass and a 10x slower GroupNorm backward at batch 16. Raising the mmap
//! and trim thresholds keeps freed memory in the heap for reuse (what PyTorch's caching
//! allocators achieve). The binary calls [`tune_for_large_arrays`] once at start-up; a library
//! user decides for their own process.

/// Keeps large freed buffers for reuse (glibc: `M_MMAP_THRESHOLD` and `M_TRIM_THRESHOLD` 1 GiB,
/// `M_TOP_PAD` 64 MiB). Returns whether the settings were applied (false on other C libraries).
pub fn tune_for_large_arrays() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const GIB: libc::c_int = 1 << 30;
        // SAFETY: mallopt only changes allocator parameters; called before heavy allocation.
        unsafe {
            let a = libc::mallopt(libc::M_MMAP_THRESHOLD, GIB);
            let b = libc::mallopt(libc::M_TRIM_THRESHOLD, GIB);
            let c = libc::mallopt(libc::M_TOP_PAD, 64 << 20);
            a == 1 && b == 1 && c == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Turns candle's spin-waiting elementwise thread pool off (`CANDLE_NUM_THREADS=1`) unless the
/// environment already sets it: diffpost parallelises over samples and inside its own kernels
/// (rayon), and on a busy machine the spinning pool cost 15-20x (`.cargo/config.toml`). GEMMs
/// keep every core. Call at start-up, before candle's first op.
pub fn quiet_candle_pool() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}
