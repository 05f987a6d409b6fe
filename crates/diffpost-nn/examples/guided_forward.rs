//! Times one forward pass of DPS's FFHQ 256 guided-diffusion UNet ([`GuidedUNetConfig::dps_ffhq256`],
//! about 94M parameters) at batch 1, 256x256, on the CPU.
//!
//!     python tools/parity_guided.py --bench   # torch timing + shared weights
//!     cargo run --release -p diffpost-nn --example guided_forward [weights.safetensors] [io.safetensors]
//!
//! With the files written by `tools/parity_guided.py --bench` (default paths under /tmp) the model
//! loads the same random weights as torch and the output is compared with torch's; without them
//! it uses a seeded random initialisation. `--unfused` also times candle's own ops.

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use diffpost_nn::guided::{GuidedUNet, GuidedUNetConfig};
use diffpost_nn::SeededParams;

fn main() -> anyhow_free::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // As the `diffpost` binary does (`--default-malloc` to measure glibc's defaults instead).
    let tuned = !args.iter().any(|a| a == "--default-malloc")
        && diffpost_core::sysalloc::tune_for_large_arrays();
    eprintln!("allocator tuned for large arrays: {tuned}");
    let unfused = args.iter().any(|a| a == "--unfused");
    let paths: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let weights = paths
        .first()
        .map(|s| s.as_str())
        .unwrap_or("/tmp/guided_ffhq256_bench.safetensors");
    let io_path = paths
        .get(1)
        .map(|s| s.as_str())
        .unwrap_or("/tmp/guided_ffhq256_bench_io.safetensors");
    let dev = Device::Cpu;
    let cfg = GuidedUNetConfig::dps_ffhq256();
    println!(
        "CANDLE_NUM_THREADS={:?}, rayon threads {}",
        std::env::var("CANDLE_NUM_THREADS").ok(),
        rayon::current_num_threads()
    );

    let t0 = Instant::now();
    let (model, nparams) = if Path::new(weights).exists() {
        let ts = candle_core::safetensors::load(weights, &dev)?;
        let n: usize = ts.values().map(|t| t.elem_count()).sum();
        let vb = VarBuilder::from_tensors(ts, DType::F32, &dev);
        println!("weights: {weights}");
        (GuidedUNet::new(&cfg, vb)?, n)
    } else {
        let store = SeededParams::new(0);
        let m = GuidedUNet::new(&cfg, store.var_builder(&dev))?;
        println!("weights: seeded random initialisation ({weights} not found)");
        (m, store.num_params())
    };
    println!(
        "built dps-ffhq256: {nparams} parameters in {:.2} s",
        t0.elapsed().as_secs_f64()
    );

    let (x, t, want) = if Path::new(io_path).exists() {
        let mut io = candle_core::safetensors::load(io_path, &dev)?;
        (
            io.remove("x").expect("x"),
            io.remove("t").expect("t"),
            io.remove("out"),
        )
    } else {
        (
            Tensor::randn(0f32, 1.0, (1, 3, 256, 256), &dev)?,
            Tensor::new(&[500f32], &dev)?,
            None,
        )
    };

    let mut variants = vec![(true, model.clone())];
    if unfused {
        variants.push((false, model.with_fused_kernels(false)));
    }
    for (fused, m) in &variants {
        let mut times = Vec::new();
        let mut out = None;
        for _ in 0..3 {
            let t0 = Instant::now();
            let o = m.forward(&x, &t)?;
            times.push(t0.elapsed().as_secs_f64());
            out = Some(o);
        }
        let out = out.expect("three runs");
        let min = times.iter().copied().fold(f64::INFINITY, f64::min);
        println!(
            "fused {fused}: forward [1, 3, 256, 256] -> {:?}: times {:?} s, min {min:.3} s",
            out.dims(),
            times
                .iter()
                .map(|s| (s * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>()
        );
        if let Some(w) = &want {
            let diff = (&out - w)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f32>()?;
            let scale = w.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            println!(
                "  vs torch: max|ours - ref| / max|ref| = {:.3e} (max|ref| = {scale:.3})",
                diff / scale.max(1e-12)
            );
        }
    }
    Ok(())
}

/// `Box<dyn Error>` result (the library crate has no anyhow dependency).
mod anyhow_free {
    pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;
}
