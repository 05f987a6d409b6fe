//! guided-diffusion's UNet in candle ([`diffpost::nn::guided`]) against the Python reference
//! (deepinv 0.5.0's `DiffUNet` port of guided-diffusion, torch 2.15.0, f32 CPU): fixtures written
//! by `tools/parity_guided.py` hold the `GuidedUNetConfig` as `config.json`, random weights
//! (float16 values, every parameter non-trivial) under guided-diffusion's state-dict names, and
//! `(x, t, out)`; no Python needed here.

mod parity_common;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use diffpost::nn::guided::{GuidedUNet, GuidedUNetConfig, GUIDED_PRESETS};
use diffpost::nn::pretrained::load_guided;
use diffpost::Error;
use parity_common::{fixture_dir, load_io, max_abs, rel_err};

const FIXTURES: [&str; 3] = ["plain", "dps", "neworder"];

fn load_config(name: &str) -> GuidedUNetConfig {
    let text = std::fs::read_to_string(fixture_dir(&format!("guided_{name}")).join("config.json"))
        .unwrap();
    let cfg: GuidedUNetConfig = serde_json::from_str(&text).unwrap();
    cfg.validate().unwrap();
    cfg
}

/// Loads through the checked loader, which fails on any missing, unexpected (never read) or
/// mis-shaped tensor: a checkpoint must load with nothing left over and nothing renamed.
fn load_model(name: &str) -> GuidedUNet {
    let cfg = load_config(name);
    let weights = fixture_dir(&format!("guided_{name}")).join("weights.safetensors");
    let model = load_guided(&weights, &cfg, None, &Device::Cpu).unwrap();
    assert_eq!(model.config(), &cfg);
    model
}

/// The same model through the plain `VarBuilder::from_tensors` path.
fn load_model_plain(name: &str) -> GuidedUNet {
    let cfg = load_config(name);
    let weights = candle_core::safetensors::load(
        fixture_dir(&format!("guided_{name}")).join("weights.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    GuidedUNet::new(&cfg, vb).unwrap()
}

fn check_parity(name: &str) {
    let model = load_model(name);
    assert!(model.fused_kernels());
    let (x, t, want) = load_io(&format!("guided_{name}"));
    assert_eq!(want.dim(1).unwrap(), model.config().out_channels());
    let got = model.forward(&x, &t).unwrap();
    let err = rel_err(&got, &want);
    println!(
        "guided parity {name}: max|ours - ref| / max|ref| = {err:.3e} (max|ref| = {:.3})",
        max_abs(&want)
    );
    assert!(err <= 1e-4, "{name}: relative error {err:e} > 1e-4");
}

#[test]
fn guided_parity_plain() {
    check_parity("plain");
}

#[test]
fn guided_parity_dps_scale_shift_updown_learn_sigma() {
    check_parity("dps");
}

#[test]
fn guided_parity_new_attention_order() {
    check_parity("neworder");
}

#[test]
fn guided_parity_fused_kernels_match_candle_ops() {
    for name in FIXTURES {
        let model = load_model_plain(name);
        let (x, t, want) = load_io(&format!("guided_{name}"));
        let fused = model.forward(&x, &t).unwrap();
        let plain = model.clone().with_fused_kernels(false);
        let unfused = plain.forward(&x, &t).unwrap();
        let err = rel_err(&fused, &unfused);
        println!("guided {name}: fused vs candle ops {err:.3e}");
        assert!(err <= 1e-5, "{name}: fused vs candle ops {err:e} > 1e-5");
        let err_ref = rel_err(&unfused, &want);
        assert!(
            err_ref <= 1e-4,
            "{name}: candle ops vs reference {err_ref:e}"
        );
    }
}

/// A deterministic pseudo-random tensor (`sin` of a scrambled index) of `x`'s shape.
fn wiggle(like: &Tensor, k: f64) -> Tensor {
    let n = like.elem_count();
    let v: Vec<f32> = (0..n)
        .map(|i| ((i as f64 * k).sin() * 1e4).fract() as f32)
        .collect();
    Tensor::from_vec(v, like.shape(), like.device()).unwrap()
}

/// DPS backpropagates through the network: input gradients agree between the two paths and
/// with a central finite difference (f32 forward passes, step 1e-2: agreement to about 2e-3;
/// this caught candle-nn's `softmax_last_dim`, which has no backward and cuts the gradient, and
/// `upsample_nearest2d`'s backward, which overwrites instead of accumulating).
#[test]
fn guided_parity_gradients_fused_match_candle_ops() {
    for name in ["plain", "neworder", "dps"] {
        let model = load_model_plain(name);
        let (x, t, want) = load_io(&format!("guided_{name}"));
        let r = wiggle(&want, 0.731);
        let loss = |m: &GuidedUNet, x: &Tensor| {
            m.forward(x, &t)
                .unwrap()
                .mul(&r)
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let grad = |fused: bool| {
            let m = model.clone().with_fused_kernels(fused);
            let xv = Var::from_tensor(&x).unwrap();
            let l = loss(&m, xv.as_tensor());
            l.backward().unwrap().get(&xv).unwrap().clone()
        };
        let (gf, gp) = (grad(true), grad(false));
        let err = rel_err(&gf, &gp);
        println!("guided {name}: input gradient fused vs candle ops {err:.3e}");
        assert!(max_abs(&gp) > 0.0);
        assert!(err <= 1e-4, "{name}: gradient mismatch {err:e}");

        // Directional derivative along d against (L(x + e d) - L(x - e d)) / 2e.
        let d = wiggle(&x, 0.377);
        let eps = 1e-2;
        let lp = loss(&model, &(&x + (&d * eps).unwrap()).unwrap());
        let lm = loss(&model, &(&x - (&d * eps).unwrap()).unwrap());
        let fd = (lp - lm).unwrap().to_scalar::<f64>().unwrap() / (2.0 * eps);
        let an = gf
            .mul(&d)
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        println!("guided {name}: directional derivative {an:.6} vs finite difference {fd:.6}");
        assert!(
            (an - fd).abs() <= 1e-2 * an.abs().max(fd.abs()),
            "{name}: gradient {an} vs finite difference {fd}"
        );
    }
}

#[test]
fn guided_timestep_embedding_matches_formula() {
    let model = load_model_plain("plain");
    let t = Tensor::new(&[0f32, 3.5, 999.0], &Device::Cpu).unwrap();
    let e = model.timestep_embedding(&t).unwrap();
    let dim = model.config().num_channels;
    assert_eq!(e.dims(), &[3, dim]);
    let e = e.to_vec2::<f32>().unwrap();
    let half = dim / 2;
    for (b, &tv) in [0f64, 3.5, 999.0].iter().enumerate() {
        for i in 0..half {
            let f = (-(10000f64.ln()) * i as f64 / half as f64).exp();
            let (c, s) = ((tv * f).cos(), (tv * f).sin());
            assert!((e[b][i] as f64 - c).abs() < 2e-4, "cos {b} {i}");
            assert!((e[b][half + i] as f64 - s).abs() < 2e-4, "sin {b} {i}");
        }
    }
}

#[test]
fn guided_forward_rejects_bad_shapes() {
    let model = load_model_plain("plain");
    let dev = Device::Cpu;
    let t = Tensor::new(&[1f32], &dev).unwrap();
    // Two levels: sizes must be even.
    let x = Tensor::zeros((1, 3, 31, 32), DType::F32, &dev).unwrap();
    assert!(model.forward(&x, &t).is_err());
    let x = Tensor::zeros((1, 1, 32, 32), DType::F32, &dev).unwrap();
    assert!(model.forward(&x, &t).is_err());
    let x = Tensor::zeros((1, 3, 16, 16), DType::F32, &dev).unwrap();
    let t2 = Tensor::new(&[1f32, 2.0], &dev).unwrap();
    assert!(model.forward(&x, &t2).is_err());
    assert_eq!(model.forward(&x, &t).unwrap().dims(), &[1, 3, 16, 16]);
}

#[test]
fn guided_presets_validate() {
    let ffhq = GuidedUNetConfig::dps_ffhq256();
    ffhq.validate().unwrap();
    assert_eq!(ffhq.out_channels(), 6);
    assert_eq!(
        ffhq.resolved_channel_mult().unwrap(),
        vec![1, 1, 2, 2, 4, 4]
    );
    assert_eq!(ffhq.attention_ds(), vec![16]);
    assert_eq!(GuidedUNetConfig::preset("dps-ffhq256").unwrap(), ffhq);
    let adm = GuidedUNetConfig::preset("adm-imagenet256-uncond").unwrap();
    adm.validate().unwrap();
    assert_eq!(adm, GuidedUNetConfig::adm_imagenet256_uncond());
    assert_eq!(adm.out_channels(), 6);
    assert_eq!(adm.attention_ds(), vec![8, 16, 32]);
    match GuidedUNetConfig::preset("ffhq") {
        Err(Error::InvalidParam { field, reason }) => {
            assert_eq!(field, "preset");
            for known in GUIDED_PRESETS {
                assert!(reason.contains(known), "{reason}");
            }
        }
        other => panic!("expected an InvalidParam error, got {other:?}"),
    }
    GuidedUNetConfig::default().validate().unwrap();
    // Serde: defaults fill missing fields; the preset round-trips.
    let json = serde_json::to_string(&ffhq).unwrap();
    assert_eq!(
        serde_json::from_str::<GuidedUNetConfig>(&json).unwrap(),
        ffhq
    );
    let partial: GuidedUNetConfig =
        serde_json::from_str(r#"{"image_size": 128, "learn_sigma": true}"#).unwrap();
    assert_eq!(
        partial.resolved_channel_mult().unwrap(),
        vec![1, 1, 2, 3, 4]
    );
    assert_eq!(partial.out_channels(), 6);
}

#[test]
fn guided_config_errors_name_the_field() {
    let field_of = |c: GuidedUNetConfig| match c.validate() {
        Err(Error::InvalidParam { field, .. }) => field,
        other => panic!("expected an InvalidParam error, got {other:?}"),
    };
    let base = GuidedUNetConfig::dps_ffhq256();
    assert_eq!(
        field_of(GuidedUNetConfig {
            class_cond: true,
            ..base.clone()
        }),
        "class_cond"
    );
    assert_eq!(
        field_of(GuidedUNetConfig {
            image_size: 96,
            ..base.clone()
        }),
        "channel_mult"
    );
    assert_eq!(
        field_of(GuidedUNetConfig {
            image_size: 512,
            ..base.clone()
        }),
        "channel_mult"
    );
    assert_eq!(
        field_of(GuidedUNetConfig {
            num_channels: 48,
            ..base.clone()
        }),
        "num_channels"
    );
    assert_eq!(
        field_of(GuidedUNetConfig {
            num_head_channels: 48,
            ..base.clone()
        }),
        "num_head_channels"
    );
    assert_eq!(
        field_of(GuidedUNetConfig {
            num_head_channels: -1,
            num_heads: 3,
            ..base.clone()
        }),
        "num_heads"
    );
    assert_eq!(
        field_of(GuidedUNetConfig {
            num_head_channels: -1,
            num_heads_upsample: 3,
            ..base.clone()
        }),
        "num_heads_upsample"
    );
    assert_eq!(
        field_of(GuidedUNetConfig {
            attention_resolutions: vec![0],
            ..base.clone()
        }),
        "attention_resolutions"
    );
    assert_eq!(
        field_of(GuidedUNetConfig {
            dropout: 1.0,
            ..base.clone()
        }),
        "dropout"
    );
    assert_eq!(
        field_of(GuidedUNetConfig {
            in_channels: 0,
            ..base
        }),
        "in_channels"
    );
}
