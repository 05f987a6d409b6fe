//! Loading checkpoints as users have them: PyTorch zip `.pt` files (plain and nested state dicts,
//! f16 weights) give the same tensors and the same network output as the safetensors fixture;
//! the VP adapter around the loaded network keeps shapes and refuses out-of-range sigmas.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use diffpost::nn::checkpoint::{detect_format, load_state_dict, WeightFormat};
use diffpost::nn::guided::GuidedUNetConfig;
use diffpost::nn::pretrained::load_guided;
use diffpost::nn::vp::{Prediction, VpDenoiser, VpSchedule};
use diffpost::prior::Denoiser;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn guided_cfg() -> GuidedUNetConfig {
    let text = std::fs::read_to_string(fixtures().join("parity/guided_dps/config.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn max_rel(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    let r = b
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap();
    d / r.max(1e-12)
}

#[test]
fn pt_and_safetensors_hold_the_same_tensors() {
    let st = fixtures().join("parity/guided_dps/weights.safetensors");
    assert_eq!(detect_format(&st).unwrap(), WeightFormat::Safetensors);
    let a = load_state_dict(&st, None).unwrap();
    for pt in ["guided_small.pt", "guided_small_nested.pt"] {
        let p = fixtures().join("pt").join(pt);
        assert_eq!(detect_format(&p).unwrap(), WeightFormat::TorchZip);
        let b = load_state_dict(&p, None).unwrap();
        assert_eq!(a.len(), b.len(), "{pt}");
        for (k, ta) in &a {
            let tb = b.get(k).unwrap_or_else(|| panic!("{pt}: {k} missing"));
            assert_eq!(ta.dims(), tb.dims(), "{k}");
            assert_eq!(ta.dtype(), tb.dtype(), "{k}");
            assert_eq!(
                max_rel(
                    &ta.to_dtype(DType::F32).unwrap(),
                    &tb.to_dtype(DType::F32).unwrap()
                ),
                0.0,
                "{k}"
            );
        }
    }
    // An explicit key that is not there is an error naming the file.
    let err = load_state_dict(&fixtures().join("pt/guided_small_nested.pt"), Some("ema"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("guided_small_nested.pt"), "{err}");
}

#[test]
fn pt_checkpoint_parity_with_the_reference_output() {
    let io = candle_core::safetensors::load(
        fixtures().join("parity/guided_dps/io.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let net = load_guided(
        &fixtures().join("pt/guided_small.pt"),
        &guided_cfg(),
        None,
        &Device::Cpu,
    )
    .unwrap();
    let out = net.forward(&io["x"], &io["t"]).unwrap();
    let err = max_rel(&out, &io["out"]);
    assert!(err < 1e-4, "relative error {err}");
}

#[test]
fn vp_denoiser_on_a_loaded_network() {
    let net = load_guided(
        &fixtures().join("parity/guided_dps/weights.safetensors"),
        &guided_cfg(),
        None,
        &Device::Cpu,
    )
    .unwrap();
    let den = VpDenoiser::new(
        Box::new(net),
        VpSchedule::ddpm_linear_1000(),
        Prediction::Epsilon,
        Device::Cpu,
    );
    assert_eq!(den.dim(), 3 * 32 * 32);
    let (lo, hi) = den.sigma_range();
    assert!((lo - 0.0100005).abs() < 1e-6 && hi > 150.0, "{lo} {hi}");
    let x = Tensor::randn(0f64, 1.0, (2, 3 * 32 * 32), &Device::Cpu).unwrap();
    let d = den.denoise(&x, 0.5).unwrap();
    assert_eq!(d.dims(), &[2, 3072]);
    assert_eq!(d.dtype(), DType::F64);
    // Image-shaped batches keep their shape.
    let xi = x.reshape((2, 3, 32, 32)).unwrap();
    let di = den.denoise(&xi, 0.5).unwrap();
    assert_eq!(di.dims(), &[2, 3, 32, 32]);
    assert!(max_rel(&di.reshape((2, 3072)).unwrap(), &d) < 1e-12);
    // Row independence: a row's result does not depend on the batch it is in.
    let d0 = den.denoise(&x.narrow(0, 0, 1).unwrap(), 0.5).unwrap();
    assert!(max_rel(&d0, &d.narrow(0, 0, 1).unwrap()) < 1e-5);
    let err = den.denoise(&x, 1e-3).unwrap_err().to_string();
    assert!(err.contains("outside the model's range"), "{err}");
    let err = den
        .denoise(
            &Tensor::zeros((1, 5), DType::F64, &Device::Cpu).unwrap(),
            0.5,
        )
        .unwrap_err();
    assert!(err.to_string().contains("guided-diffusion"), "{err}");
}

#[test]
fn diffusers_repository_layouts_and_scheduler_configs() {
    use diffpost::nn::pretrained::{diffusers_files, diffusers_scheduler, load_diffusers};
    let src = fixtures().join("parity/diffusers_ddpm_flags");
    let root = std::env::temp_dir().join(format!("diffpost-diffusers-repo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    // A hub-style repository: unet/ (config + safetensors) and scheduler/ (v-prediction, cosine).
    std::fs::create_dir_all(root.join("unet")).unwrap();
    std::fs::create_dir_all(root.join("scheduler")).unwrap();
    std::fs::copy(src.join("config.json"), root.join("unet/config.json")).unwrap();
    std::fs::copy(
        src.join("weights.safetensors"),
        root.join("unet/diffusion_pytorch_model.safetensors"),
    )
    .unwrap();
    std::fs::write(
        root.join("scheduler/scheduler_config.json"),
        r#"{"_class_name": "DDPMScheduler", "num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "v_prediction", "variance_type": "fixed_small"}"#,
    )
    .unwrap();
    for p in [root.clone(), root.join("unet")] {
        let f = diffusers_files(&p).unwrap();
        assert_eq!(
            f.weights,
            root.join("unet/diffusion_pytorch_model.safetensors")
        );
        assert_eq!(
            f.scheduler,
            Some(root.join("scheduler/scheduler_config.json"))
        );
        let (schedule, pred) = diffusers_scheduler(&f).unwrap().to_vp().unwrap();
        assert_eq!(pred, Prediction::VPrediction);
        // The cosine schedule's first abar, in closed form.
        let g = |u: f64| {
            ((u + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
                .cos()
                .powi(2)
        };
        assert!((schedule.alphas_cumprod()[0] - g(0.001) / g(0.0)).abs() < 1e-12);
    }
    let (net, _) = load_diffusers(&root, None, None, &Device::Cpu).unwrap();
    let io = candle_core::safetensors::load(src.join("io.safetensors"), &Device::Cpu).unwrap();
    let err = max_rel(&net.forward(&io["x"], &io["t"]).unwrap(), &io["out"]);
    assert!(err < 1e-4, "parity through the repository layout: {err}");
    // An unsupported scheduler is named; a folder without weights is an error naming it.
    std::fs::write(
        root.join("scheduler/scheduler_config.json"),
        r#"{"beta_schedule": "sigmoid"}"#,
    )
    .unwrap();
    let f = diffusers_files(&root).unwrap();
    let e = diffusers_scheduler(&f)
        .unwrap()
        .to_vp()
        .unwrap_err()
        .to_string();
    assert!(e.contains("sigmoid"), "{e}");
    std::fs::remove_file(root.join("unet/diffusion_pytorch_model.safetensors")).unwrap();
    let e = diffusers_files(&root).unwrap_err().to_string();
    assert!(e.contains("diffusion_pytorch_model"), "{e}");
    // Without a scheduler config: DDPM defaults (linear betas, epsilon).
    std::fs::remove_dir_all(root.join("scheduler")).unwrap();
    let f = diffusers_files(&src.join("weights.safetensors")).unwrap();
    assert_eq!(f.scheduler, None);
    let (s, pred) = diffusers_scheduler(&f).unwrap().to_vp().unwrap();
    assert_eq!(pred, Prediction::Epsilon);
    assert_eq!(s, VpSchedule::ddpm_linear_1000());
    let _ = std::fs::remove_dir_all(&root);
}
