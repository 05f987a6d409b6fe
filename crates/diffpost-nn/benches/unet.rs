//! Criterion benches of the default MNIST UNet (28x28, about 1.1M parameters) with the fused CPU
//! kernels (`diffpost_nn::kernels`) against candle's own ops, side by side in one run: forward
//! (batch 16), denoise + gradient w.r.t. the input (batch 16, what DPS does per step) and one
//! training step (batch 32). Run: `cargo bench -p diffpost-nn --bench unet`.

use candle_core::{Device, Var};
use criterion::{criterion_group, criterion_main, Criterion};
use diffpost_core::rng::SampleStreams;
use diffpost_nn::{init_unet, EdmDenoiser, TrainConfig, Trainer, UNetConfig};

const PATHS: [(&str, bool); 2] = [("fused", true), ("candle_ops", false)];

fn denoisers() -> Vec<(&'static str, EdmDenoiser)> {
    let dev = Device::Cpu;
    let (net, _) = init_unet(&UNetConfig::default(), 0, &dev).unwrap();
    PATHS
        .iter()
        .map(|&(name, on)| {
            let den = EdmDenoiser::new(net.clone().with_fused_kernels(on), dev.clone()).unwrap();
            (name, den)
        })
        .collect()
}

fn forward(c: &mut Criterion) {
    let x = SampleStreams::range(1, 16)
        .randn(&[784], &Device::Cpu)
        .unwrap();
    let mut g = c.benchmark_group("unet_forward_b16_28x28");
    g.sample_size(10);
    for (name, den) in denoisers() {
        g.bench_function(name, |b| b.iter(|| den.denoise(&x, 1.0).unwrap()));
    }
    g.finish();
}

fn denoise_grad(c: &mut Criterion) {
    let x = SampleStreams::range(1, 16)
        .randn(&[784], &Device::Cpu)
        .unwrap();
    let xv = Var::from_tensor(&x).unwrap();
    let mut g = c.benchmark_group("unet_denoise_input_grad_b16_28x28");
    g.sample_size(10);
    for (name, den) in denoisers() {
        g.bench_function(name, |b| {
            b.iter(|| {
                let grads = den
                    .denoise(xv.as_tensor(), 1.0)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                assert!(grads.get(&xv).is_some());
            })
        });
    }
    g.finish();
}

fn train_step(c: &mut Criterion) {
    let dev = Device::Cpu;
    let data = SampleStreams::range(2, 256)
        .randn(&[784], &dev)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .clamp(-1f32, 1f32)
        .unwrap()
        .reshape((256, 1, 28, 28))
        .unwrap();
    let mut g = c.benchmark_group("unet_train_step_b32_28x28");
    g.sample_size(10);
    for &(name, on) in &PATHS {
        let cfg = TrainConfig {
            batch_size: 32,
            ..Default::default()
        };
        let mut tr = Trainer::new(UNetConfig::default(), cfg, &data, &dev).unwrap();
        tr.set_fused_kernels(on);
        g.bench_function(name, |b| b.iter(|| tr.step().unwrap()));
    }
    g.finish();
}

criterion_group!(benches, forward, denoise_grad, train_step);
criterion_main!(benches);
