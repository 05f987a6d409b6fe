//! The neural prior: UNet shapes, EDM preconditioning, the Denoiser contract, autograd through
//! `denoise`, training (loss decreases; checkpoint/resume is exact) and weight round trips.
//! Tiny configurations so the whole file runs in seconds.

use candle_core::{DType, Device, Tensor, Var};
use diffpost::nn::{
    edm_coefficients, held_out_loss_per_sigma, init_unet, load_images_npy, param_count,
    EdmDenoiser, TrainConfig, Trainer, UNetConfig,
};
use diffpost::prior::Denoiser;
use diffpost::rng::SampleStreams;
use diffpost::Error;
use rand::Rng;

fn tiny_cfg(size: usize) -> UNetConfig {
    UNetConfig {
        in_channels: 1,
        image_size: [size, size],
        base_channels: 8,
        channel_mults: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![size / 2],
        mid_attention: true,
        num_heads: 2,
        groups: 4,
        emb_dim: 16,
        fourier_features: 8,
        sigma_data: 0.5,
    }
}

fn tmpdir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("diffpost-nn-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Random blobs: one or two Gaussian bumps per image, in [-1, 1].
fn blobs(n: usize, size: usize, seed: u64) -> Tensor {
    let mut s = SampleStreams::range(seed, n);
    let mut v = Vec::with_capacity(n * size * size);
    for b in 0..n {
        let r = s.stream(b);
        let cx = r.random::<f64>() * size as f64;
        let cy = r.random::<f64>() * size as f64;
        let w = 1.0 + r.random::<f64>() * size as f64 / 4.0;
        for i in 0..size {
            for j in 0..size {
                let d2 = (i as f64 - cy).powi(2) + (j as f64 - cx).powi(2);
                v.push((2.0 * (-d2 / (2.0 * w * w)).exp() - 1.0) as f32);
            }
        }
    }
    Tensor::from_vec(v, (n, 1, size, size), &Device::Cpu).unwrap()
}

#[test]
fn unet_output_shapes() {
    let dev = Device::Cpu;
    for (cfg, b) in [
        (tiny_cfg(16), 3),
        (
            UNetConfig {
                base_channels: 8,
                groups: 4,
                emb_dim: 16,
                ..UNetConfig::default()
            },
            2,
        ),
        // Three levels on 28x28: 28 -> 14 -> 7 -> 4 and back (odd sizes).
        (
            UNetConfig {
                image_size: [28, 28],
                channel_mults: vec![1, 1, 2, 2],
                attn_resolutions: vec![4, 7],
                ..tiny_cfg(28)
            },
            2,
        ),
    ] {
        let (net, _) = init_unet(&cfg, 0, &dev).unwrap();
        let [c, h, w] = cfg.image_shape();
        let x = Tensor::randn(0f32, 1.0, (b, c, h, w), &dev).unwrap();
        let cn = Tensor::zeros(b, DType::F32, &dev).unwrap();
        let y = net.forward(&x, &cn).unwrap();
        assert_eq!(y.dims(), &[b, c, h, w]);
        let v: Vec<f32> = y.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|x| x.is_finite()));
    }
    let n = param_count(&UNetConfig::default()).unwrap();
    assert!(
        (500_000..2_000_000).contains(&n),
        "default has {n} parameters"
    );
}

#[test]
fn config_validation_and_serde_defaults() {
    let bad = UNetConfig {
        groups: 3,
        ..tiny_cfg(8)
    };
    assert!(
        matches!(bad.validate(), Err(Error::InvalidParam { ref field, .. }) if field == "groups")
    );
    assert!(init_unet(&bad, 0, &Device::Cpu).is_err());
    assert_eq!(
        UNetConfig::default().level_sizes(),
        vec![(28, 28), (14, 14), (7, 7)]
    );
    assert!(TrainConfig {
        batch_size: 0,
        ..Default::default()
    }
    .validate()
    .is_err());
}

#[test]
fn edm_coefficients_spot_values_and_small_sigma_limit() {
    let sd = 0.5;
    let c = edm_coefficients(0.5, sd);
    assert!((c.c_skip - 0.5).abs() < 1e-15);
    assert!((c.c_out - 0.25 / 0.5f64.sqrt()).abs() < 1e-15);
    assert!((c.c_in - 1.0 / 0.5f64.sqrt()).abs() < 1e-15);
    assert!((c.c_noise - 0.5f64.ln() / 4.0).abs() < 1e-15);
    let c = edm_coefficients(80.0, sd);
    assert!((c.c_skip - 0.25 / 6400.25).abs() < 1e-15);
    assert!((c.c_out - 40.0 / 6400.25f64.sqrt()).abs() < 1e-12);
    // D(x, sigma) -> x as sigma -> 0: c_skip -> 1, c_out -> 0 (linearly in sigma).
    let c = edm_coefficients(1e-6, sd);
    assert!((c.c_skip - 1.0).abs() < 1e-11);
    assert!((c.c_out - 1e-6).abs() < 1e-11);
    // And structurally on the network: at sigma_min the denoiser is within c_out * |F| of x.
    let cfg = tiny_cfg(8);
    let (net, _) = init_unet(&cfg, 1, &Device::Cpu).unwrap();
    let den = EdmDenoiser::new(net, Device::Cpu)
        .unwrap()
        .with_sigma_range(1e-6, 80.0)
        .unwrap();
    let x = SampleStreams::range(3, 4)
        .randn(&[64], &Device::Cpu)
        .unwrap();
    let dx = den.denoise(&x, 1e-6).unwrap();
    let err: f64 = (dx - &x)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(err < 1e-4, "max |D(x, 1e-6) - x| = {err}");
}

#[test]
fn denoiser_contract() {
    let cfg = tiny_cfg(8);
    let (net, _) = init_unet(&cfg, 2, &Device::Cpu).unwrap();
    let den = EdmDenoiser::new(net, Device::Cpu).unwrap();
    assert_eq!(den.dim(), 64);
    assert_eq!(den.sample_shape(), vec![64]);
    assert_eq!(den.image_shape(), [1, 8, 8]);
    assert_eq!(den.sigma_range(), (0.002, 80.0));
    assert_eq!(den.sigma_max_hint(), 80.0);
    assert!(den.lipschitz().is_none());
    let x = SampleStreams::range(5, 70)
        .randn(&[64], &Device::Cpu)
        .unwrap();
    for s in [0.001, 81.0, f64::NAN] {
        assert!(matches!(
            den.denoise(&x, s),
            Err(Error::SigmaOutOfRange { .. })
        ));
    }
    assert!(matches!(
        den.denoise(&x.reshape((70, 1, 8, 8)).unwrap(), 1.0),
        Err(Error::Shape { .. })
    ));
    let y = den.denoise(&x, 1.0).unwrap();
    assert_eq!(y.dims(), &[70, 64]);
    assert_eq!(y.dtype(), DType::F64);
    // Chunking (64 + 6 rows vs one chunk) changes nothing beyond float rounding; rows are independent.
    let y1 = den.clone().with_chunk_size(1000).denoise(&x, 1.0).unwrap();
    let diff: f64 = (&y - &y1)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(diff < 1e-5, "chunking changed the result by {diff}");
    let y5 = den.denoise(&x.narrow(0, 5, 3).unwrap(), 1.0).unwrap();
    let diff: f64 = (y.narrow(0, 5, 3).unwrap() - y5)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(diff < 1e-5, "rows not independent: {diff}");
    // Score is Tweedie's formula.
    let s = den.score(&x, 1.0).unwrap();
    let t = ((&y - &x).unwrap() / 1.0).unwrap();
    let diff: f64 = (s - t)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!(diff < 1e-12);
}

#[test]
fn autograd_through_denoise_matches_finite_differences() {
    let cfg = tiny_cfg(8);
    let (net, _) = init_unet(&cfg, 4, &Device::Cpu).unwrap();
    let den = EdmDenoiser::new(net, Device::Cpu).unwrap();
    let x0 = SampleStreams::range(6, 2)
        .randn(&[64], &Device::Cpu)
        .unwrap();
    let w = SampleStreams::range(7, 2)
        .randn(&[64], &Device::Cpu)
        .unwrap();
    let sigma = 0.7;
    let f = |x: &Tensor| -> f64 {
        (den.denoise(x, sigma).unwrap() * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    let xv = Var::from_tensor(&x0).unwrap();
    let out = (den.denoise(xv.as_tensor(), sigma).unwrap() * &w)
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = out.backward().unwrap();
    let g: Vec<f64> = grads
        .get(&xv)
        .expect("gradient w.r.t. x")
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let base: Vec<f64> = x0.flatten_all().unwrap().to_vec1().unwrap();
    let h = 1e-2;
    for k in [0usize, 9, 27, 63, 64, 100, 127] {
        let mut p = base.clone();
        p[k] += h;
        let mut m = base.clone();
        m[k] -= h;
        let t = |v: Vec<f64>| Tensor::from_vec(v, (2, 64), &Device::Cpu).unwrap();
        let fd = (f(&t(p)) - f(&t(m))) / (2.0 * h);
        assert!(
            (fd - g[k]).abs() < 2e-3 * (1.0 + g[k].abs()),
            "coordinate {k}: autograd {} vs finite differences {fd}",
            g[k]
        );
    }
}

fn train_cfg(seed: u64) -> TrainConfig {
    TrainConfig {
        steps: 100,
        batch_size: 16,
        lr: 2e-3,
        warmup_steps: 10,
        ema_decay: 0.99,
        checkpoint_every: 0,
        seed,
        ..Default::default()
    }
}

#[test]
fn training_loss_decreases() {
    let data = blobs(200, 8, 11);
    let mut tr = Trainer::new(tiny_cfg(8), train_cfg(1), &data, &Device::Cpu).unwrap();
    let mut losses = Vec::new();
    tr.train(None, &mut |step, loss| {
        assert_eq!(step as usize, losses.len() + 1);
        losses.push(loss);
    })
    .unwrap();
    assert_eq!(losses.len(), 100);
    let first: f64 = losses[..20].iter().sum::<f64>() / 20.0;
    let last: f64 = losses[80..].iter().sum::<f64>() / 20.0;
    assert!(
        last < 0.7 * first,
        "loss did not decrease: {first} -> {last}"
    );
    // The held-out loss of the EMA model is finite and the curve has one entry per sigma.
    let held = blobs(40, 8, 99);
    let den = tr.ema_denoiser().unwrap();
    let l = held_out_loss_per_sigma(&den, &held, &[0.01, 0.1, 1.0, 10.0], 3).unwrap();
    assert_eq!(l.len(), 4);
    assert!(l.iter().all(|v| v.is_finite() && *v >= 0.0), "{l:?}");
}

fn max_param_diff(a: &Trainer, b: &Trainer) -> f64 {
    let mut m = 0.0f64;
    for ((na, ta), (nb, tb)) in a
        .parameters()
        .into_iter()
        .chain(a.ema_parameters())
        .zip(b.parameters().into_iter().chain(b.ema_parameters()))
    {
        assert_eq!(na, nb);
        let d: f32 = (ta - tb)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        m = m.max(d as f64);
    }
    m
}

#[test]
fn checkpoint_resume_is_exact() {
    let data = blobs(64, 8, 12);
    let mut cfg = train_cfg(5);
    cfg.steps = 10;
    let mut straight = Trainer::new(tiny_cfg(8), cfg.clone(), &data, &Device::Cpu).unwrap();
    let mut ls = Vec::new();
    straight.train(None, &mut |_, l| ls.push(l)).unwrap();

    let dir = tmpdir("resume");
    let mut first = Trainer::new(
        tiny_cfg(8),
        TrainConfig {
            steps: 5,
            ..cfg.clone()
        },
        &data,
        &Device::Cpu,
    )
    .unwrap();
    let mut lr = Vec::new();
    first.train(Some(&dir), &mut |_, l| lr.push(l)).unwrap();
    assert!(dir.join("checkpoint.safetensors").exists());
    drop(first);
    let mut second = Trainer::new(tiny_cfg(8), cfg.clone(), &data, &Device::Cpu).unwrap();
    second.resume(&dir).unwrap();
    assert_eq!(second.step_count(), 5);
    second.train(None, &mut |_, l| lr.push(l)).unwrap();
    assert_eq!(second.step_count(), 10);
    let d = max_param_diff(&straight, &second);
    assert!(d < 1e-6, "resumed run differs by {d}");
    for (a, b) in ls.iter().zip(&lr) {
        assert!((a - b).abs() < 1e-6 * (1.0 + a.abs()));
    }
    // A different seed or batch size is refused.
    let mut other = Trainer::new(tiny_cfg(8), train_cfg(6), &data, &Device::Cpu).unwrap();
    assert!(matches!(
        other.resume(&dir),
        Err(Error::InvalidParam { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn exported_weights_reload_identically() {
    let data = blobs(32, 8, 13);
    let mut cfg = train_cfg(7);
    cfg.steps = 3;
    let mut tr = Trainer::new(tiny_cfg(8), cfg, &data, &Device::Cpu).unwrap();
    tr.train(None, &mut |_, _| {}).unwrap();
    let dir = tmpdir("export");
    tr.export(&dir).unwrap();
    let loaded = EdmDenoiser::load(&dir, tiny_cfg(8), &Device::Cpu).unwrap();
    let direct = tr.ema_denoiser().unwrap();
    let x = SampleStreams::range(8, 5)
        .randn(&[64], &Device::Cpu)
        .unwrap();
    for s in [0.01, 1.0, 30.0] {
        let a: Vec<f64> = loaded
            .denoise(&x, s)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f64> = direct
            .denoise(&x, s)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(a, b);
    }
    // Wrong architecture or a missing file: clear errors.
    assert!(matches!(
        EdmDenoiser::load(&dir, tiny_cfg(16).clone_with_base(16), &Device::Cpu),
        Err(Error::File { .. })
    ));
    assert!(matches!(
        EdmDenoiser::load(&dir.join("nope"), tiny_cfg(8), &Device::Cpu),
        Err(Error::File { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
}

trait CloneWithBase {
    fn clone_with_base(self, base: usize) -> UNetConfig;
}
impl CloneWithBase for UNetConfig {
    fn clone_with_base(self, base: usize) -> UNetConfig {
        UNetConfig {
            base_channels: base,
            ..self
        }
    }
}

#[test]
fn npy_images_are_scaled_to_unit_range() {
    let dir = tmpdir("npy");
    let p = dir.join("u8.npy");
    Tensor::from_vec(vec![0u8, 255, 51, 102], (1, 2, 2), &Device::Cpu)
        .unwrap()
        .write_npy(&p)
        .unwrap();
    let t = load_images_npy(&p).unwrap();
    assert_eq!(t.dims(), &[1, 1, 2, 2]);
    assert_eq!(t.dtype(), DType::F32);
    let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(v, vec![-1.0, 1.0, -0.6, -0.2]);
    let p = dir.join("unit.npy");
    Tensor::from_vec(vec![0f32, 1.0, 0.5, 0.25], (1, 1, 2, 2), &Device::Cpu)
        .unwrap()
        .write_npy(&p)
        .unwrap();
    let v: Vec<f32> = load_images_npy(&p)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert_eq!(v, vec![-1.0, 1.0, 0.0, -0.5]);
    let p = dir.join("bad.npy");
    Tensor::from_vec(vec![0f32, 3.5], (1, 1, 2), &Device::Cpu)
        .unwrap()
        .write_npy(&p)
        .unwrap();
    assert!(load_images_npy(&p).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Timings for the report: `cargo test --release -p diffpost --test nn -- --ignored --nocapture`.
/// The fused CPU kernels and candle's own ops are timed interleaved in the same run (the
/// machine is shared and noisy: compare the two medians, not absolute times across runs).
#[test]
#[ignore]
fn timing_default_config() {
    fn median(mut ts: Vec<f64>) -> f64 {
        ts.sort_by(|a, b| a.partial_cmp(b).unwrap());
        ts[ts.len() / 2] * 1e3
    }
    fn time(f: &mut dyn FnMut()) -> f64 {
        let t0 = std::time::Instant::now();
        f();
        t0.elapsed().as_secs_f64()
    }
    let cfg = UNetConfig::default();
    println!("default UNet parameters: {}", param_count(&cfg).unwrap());
    let dev = Device::Cpu;
    let (net, _) = init_unet(&cfg, 0, &dev).unwrap();
    let dens = [true, false]
        .map(|on| EdmDenoiser::new(net.clone().with_fused_kernels(on), dev.clone()).unwrap());
    let x = SampleStreams::range(1, 16).randn(&[784], &dev).unwrap();
    let xv = Var::from_tensor(&x).unwrap();
    let data = blobs(256, 28, 1);
    let mut trs = [true, false].map(|on| {
        let mut tr = Trainer::new(
            cfg.clone(),
            TrainConfig {
                batch_size: 32,
                ..Default::default()
            },
            &data,
            &dev,
        )
        .unwrap();
        tr.set_fused_kernels(on);
        tr.step().unwrap();
        tr
    });
    let (mut fwd, mut bwd, mut step) = ([vec![], vec![]], [vec![], vec![]], [vec![], vec![]]);
    for _ in 0..7 {
        for (i, den) in dens.iter().enumerate() {
            fwd[i].push(time(&mut || {
                den.denoise(&x, 1.0).unwrap();
            }));
            bwd[i].push(time(&mut || {
                let g = den
                    .denoise(xv.as_tensor(), 1.0)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .backward()
                    .unwrap();
                assert!(g.get(&xv).is_some());
            }));
        }
        for (i, tr) in trs.iter_mut().enumerate() {
            step[i].push(time(&mut || {
                tr.step().unwrap();
            }));
        }
    }
    for (name, ts) in [
        ("forward batch 16, 28x28", fwd),
        ("forward+backward wrt x, batch 16", bwd),
        ("training step batch 32, 28x28", step),
    ] {
        let [a, b] = ts.map(median);
        println!(
            "{name}: median fused {a:.1} ms, candle ops {b:.1} ms ({:.2}x)",
            b / a
        );
    }
}
