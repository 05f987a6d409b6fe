//! diffusers' `UNet2DModel` in candle ([`diffpost::nn::diffusers_unet`]) against diffusers itself:
//! fixtures written by `tools/parity_diffusers.py` (diffusers 0.42.1, torch 2.15.0, f32 CPU) hold
//! the model's own `config.json`, its random weights and `(x, t, out)`; no Python needed here.

mod parity_common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use diffpost::nn::diffusers_unet::{rename_deprecated_attention, UNet2DConfig, UNet2DModel};
use diffpost::Error;
use parity_common::{fixture_dir, load_io, rel_err};

const FIXTURES: [&str; 3] = ["ddpm_flags", "flip_heads", "fourier_scaleshift"];

fn load_config(name: &str) -> UNet2DConfig {
    let text =
        std::fs::read_to_string(fixture_dir(&format!("diffusers_{name}")).join("config.json"))
            .unwrap();
    let cfg: UNet2DConfig = serde_json::from_str(&text).unwrap();
    cfg.validate().unwrap();
    cfg
}

fn load_model(name: &str) -> UNet2DModel {
    let cfg = load_config(name);
    let weights = candle_core::safetensors::load(
        fixture_dir(&format!("diffusers_{name}")).join("weights.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
    UNet2DModel::new(&cfg, vb).unwrap()
}

fn check_parity(name: &str, fused: bool) -> f32 {
    let model = load_model(name).with_fused_kernels(fused);
    let (x, t, want) = load_io(&format!("diffusers_{name}"));
    let got = model.forward(&x, &t).unwrap();
    let err = rel_err(&got, &want);
    println!("diffusers parity {name} (fused {fused}): max|ours - ref| / max|ref| = {err:.3e}");
    assert!(
        err <= 1e-4,
        "{name} (fused {fused}): relative error {err:e} > 1e-4"
    );
    err
}

#[test]
fn parity_ddpm_flags() {
    check_parity("ddpm_flags", true);
    check_parity("ddpm_flags", false);
}

#[test]
fn parity_flip_heads() {
    check_parity("flip_heads", true);
    check_parity("flip_heads", false);
}

#[test]
fn parity_fourier_scaleshift() {
    check_parity("fourier_scaleshift", true);
    check_parity("fourier_scaleshift", false);
}

#[test]
fn parity_fused_matches_candle_ops() {
    for name in FIXTURES {
        let model = load_model(name);
        let (x, t, _) = load_io(&format!("diffusers_{name}"));
        let fused = model
            .clone()
            .with_fused_kernels(true)
            .forward(&x, &t)
            .unwrap();
        let plain = model.with_fused_kernels(false).forward(&x, &t).unwrap();
        let err = rel_err(&fused, &plain);
        println!("fused vs candle ops {name}: {err:.3e}");
        assert!(err <= 1e-5, "{name}: fused vs candle ops {err:e} > 1e-5");
    }
}

#[test]
fn parity_config_json_fields() {
    let cfg = load_config("fourier_scaleshift");
    assert_eq!(cfg.sample_size, Some([8, 16]));
    assert_eq!(cfg.time_embedding_type, "fourier");
    assert_eq!(cfg.time_embed_dim(), 48);
    assert_eq!(cfg.resnet_time_scale_shift, "scale_shift");
    assert!((cfg.mid_block_scale_factor - 2f64.sqrt()).abs() < 1e-12);
    let cfg = load_config("ddpm_flags");
    assert_eq!(cfg.sample_size, Some([16, 16]));
    assert_eq!(cfg.attention_head_dim, None);
    assert_eq!(cfg.freq_shift, 1.0);
    assert!(!cfg.flip_sin_to_cos);
    assert_eq!(cfg.downsample_padding, 0);
    assert_eq!(cfg.norm_eps, 1e-6);
    let cfg = load_config("flip_heads");
    assert_eq!(cfg.attention_head_dim, Some(8));
    assert!(cfg.center_input_sample);
    // Missing keys take diffusers' defaults (attention_head_dim 8, not null).
    let cfg: UNet2DConfig = serde_json::from_str(r#"{"_class_name": "UNet2DModel"}"#).unwrap();
    assert_eq!(cfg, UNet2DConfig::default());
    assert_eq!(cfg.attention_head_dim, Some(8));
    cfg.validate().unwrap();
}

/// Old checkpoints name the attention parameters `query`, `key`, `value`, `proj_attn`: renamed,
/// they load and give the same output.
#[test]
fn parity_deprecated_attention_names() {
    let name = "flip_heads";
    let cfg = load_config(name);
    let weights = candle_core::safetensors::load(
        fixture_dir(&format!("diffusers_{name}")).join("weights.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let old: HashMap<String, Tensor> = weights
        .into_iter()
        .map(|(k, v)| {
            let k = k
                .replace(".to_q.", ".query.")
                .replace(".to_k.", ".key.")
                .replace(".to_v.", ".value.")
                .replace(".to_out.0.", ".proj_attn.");
            (k, v)
        })
        .collect();
    assert!(old
        .keys()
        .any(|k| k.ends_with("attentions.0.proj_attn.weight")));
    // Under the old names the model does not load...
    let vb = VarBuilder::from_tensors(old.clone(), DType::F32, &Device::Cpu);
    assert!(UNet2DModel::new(&cfg, vb).is_err());
    // ... renamed, it does, and matches diffusers.
    let renamed = rename_deprecated_attention(old);
    assert!(renamed.keys().all(|k| !k.contains("proj_attn")
        && !k.contains(".query.")
        && !k.contains(".key.")
        && !k.contains(".value.")));
    assert!(renamed.contains_key("mid_block.attentions.0.to_out.0.bias"));
    assert!(renamed.contains_key("mid_block.attentions.0.group_norm.weight"));
    let vb = VarBuilder::from_tensors(renamed, DType::F32, &Device::Cpu);
    let model = UNet2DModel::new(&cfg, vb).unwrap();
    let (x, t, want) = load_io(&format!("diffusers_{name}"));
    let err = rel_err(&model.forward(&x, &t).unwrap(), &want);
    assert!(err <= 1e-4, "renamed weights: {err:e}");
}

/// Only `attentions.N.{query,key,value,proj_attn}.{weight,bias}` are renamed.
#[test]
fn parity_deprecated_rename_scope() {
    let t = Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
    let names = [
        (
            "mid_block.attentions.0.query.weight",
            "mid_block.attentions.0.to_q.weight",
        ),
        (
            "mid_block.attentions.0.key.bias",
            "mid_block.attentions.0.to_k.bias",
        ),
        (
            "up_blocks.1.attentions.2.value.weight",
            "up_blocks.1.attentions.2.to_v.weight",
        ),
        (
            "mid_block.attentions.0.proj_attn.bias",
            "mid_block.attentions.0.to_out.0.bias",
        ),
        (
            "down_blocks.1.attentions.1.group_norm.weight",
            "down_blocks.1.attentions.1.group_norm.weight",
        ),
        (
            "down_blocks.1.resnets.0.conv1.weight",
            "down_blocks.1.resnets.0.conv1.weight",
        ),
        ("key.weight", "key.weight"),
        ("foo.query.weight", "foo.query.weight"),
    ];
    let m: HashMap<String, Tensor> = names
        .iter()
        .map(|(k, _)| (k.to_string(), t.clone()))
        .collect();
    let r = rename_deprecated_attention(m);
    let mut got: Vec<&str> = r.keys().map(|k| k.as_str()).collect();
    got.sort();
    let mut want: Vec<&str> = names.iter().map(|(_, v)| *v).collect();
    want.sort();
    assert_eq!(got, want);
}

/// The fixtures tell the flags apart: a wrong embedding order, frequency shift or downsampling
/// padding (same weight shapes) is far off.
#[test]
fn parity_fixtures_are_sensitive() {
    let name = "ddpm_flags";
    let (x, t, want) = load_io(&format!("diffusers_{name}"));
    type Perturb = (&'static str, fn(&mut UNet2DConfig));
    let perturbations: [Perturb; 3] = [
        ("flip_sin_to_cos", |c| {
            c.flip_sin_to_cos = !c.flip_sin_to_cos
        }),
        ("freq_shift", |c| c.freq_shift = 0.0),
        ("downsample_padding", |c| c.downsample_padding = 1),
    ];
    for (what, f) in perturbations {
        let mut cfg = load_config(name);
        f(&mut cfg);
        let weights = candle_core::safetensors::load(
            fixture_dir(&format!("diffusers_{name}")).join("weights.safetensors"),
            &Device::Cpu,
        )
        .unwrap();
        let vb = VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu);
        let got = UNet2DModel::new(&cfg, vb).unwrap().forward(&x, &t).unwrap();
        let err = rel_err(&got, &want);
        println!("perturbed {what}: {err:.3e}");
        assert!(err > 1e-3, "{what}: perturbed model still within {err:e}");
    }
}

#[test]
fn parity_presets_validate() {
    let c = UNet2DConfig::ddpm_cifar10_32();
    c.validate().unwrap();
    assert_eq!(c.block_out_channels, [128, 256, 256, 256]);
    assert_eq!(c.time_embed_dim(), 512);
    assert_eq!(UNet2DConfig::preset("ddpm-cifar10-32").unwrap(), c);
    let c = UNet2DConfig::ddpm_celebahq_256();
    c.validate().unwrap();
    assert_eq!(c.sample_size, Some([256, 256]));
    assert_eq!(c.block_out_channels, [128, 128, 256, 256, 512, 512]);
    assert_eq!(UNet2DConfig::preset("ddpm-celebahq-256").unwrap(), c);
    let e = UNet2DConfig::preset("ddpm-lsun-church").unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, Error::InvalidParam { .. }));
    assert!(
        msg.contains("ddpm-cifar10-32") && msg.contains("ddpm-celebahq-256"),
        "{msg}"
    );
    // The presets build with the parameter counts of diffusers' UNet2DModel for these configs
    // (35,746,307 and 113,673,219: the 35.7M and 113.7M of the google/ddpm-* models).
    for (cfg, want) in [
        (UNet2DConfig::ddpm_cifar10_32(), 35_746_307usize),
        (UNet2DConfig::ddpm_celebahq_256(), 113_673_219),
    ] {
        let map = candle_nn::VarMap::new();
        UNet2DModel::new(
            &cfg,
            VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu),
        )
        .unwrap();
        let n: usize = map.all_vars().iter().map(|v| v.elem_count()).sum();
        assert_eq!(n, want);
    }
}

#[test]
fn parity_unsupported_config_errors() {
    let mut c = UNet2DConfig::ddpm_cifar10_32();
    c.down_block_types[1] = "CrossAttnDownBlock2D".into();
    let msg = c.validate().unwrap_err().to_string();
    assert!(
        msg.contains("CrossAttnDownBlock2D") && msg.contains("down_block_types"),
        "{msg}"
    );
    let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
    let e = UNet2DModel::new(&c, vb).unwrap_err().to_string();
    assert!(e.contains("CrossAttnDownBlock2D"), "{e}");

    let mut c = UNet2DConfig::ddpm_cifar10_32();
    c.up_block_types[0] = "SkipUpBlock2D".into();
    let msg = c.validate().unwrap_err().to_string();
    assert!(
        msg.contains("SkipUpBlock2D") && msg.contains("up_block_types"),
        "{msg}"
    );

    let bad = |f: &dyn Fn(&mut UNet2DConfig), field: &str| {
        let mut c = UNet2DConfig::ddpm_cifar10_32();
        f(&mut c);
        match c.validate() {
            Err(Error::InvalidParam { field: got, .. }) => assert_eq!(got, field),
            other => panic!("{field}: expected InvalidParam, got {other:?}"),
        }
    };
    bad(
        &|c| c.time_embedding_type = "learned".into(),
        "time_embedding_type",
    );
    bad(
        &|c| c.class_embed_type = Some("timestep".into()),
        "class_embed_type",
    );
    bad(&|c| c.num_class_embeds = Some(10), "num_class_embeds");
    bad(&|c| c.act_fn = "gelu".into(), "act_fn");
    bad(
        &|c| c.resnet_time_scale_shift = "spatial".into(),
        "resnet_time_scale_shift",
    );
    bad(&|c| c.downsample_type = "resnet".into(), "downsample_type");
    bad(&|c| c.upsample_type = "resnet".into(), "upsample_type");
    bad(&|c| c.norm_num_groups = 24, "norm_num_groups");
    bad(&|c| c.attention_head_dim = Some(512), "attention_head_dim");
    bad(
        &|c| c.block_out_channels.pop().map(|_| ()).unwrap(),
        "down_block_types",
    );
    bad(
        &|c| c.mid_block_type = Some("UNetMidBlock2DCrossAttn".into()),
        "mid_block_type",
    );

    // Unsupported names in a config.json are reported too.
    let json = r#"{"down_block_types": ["DownBlock2D", "KDownBlock2D"],
                   "up_block_types": ["UpBlock2D", "UpBlock2D"],
                   "block_out_channels": [32, 64]}"#;
    let c: UNet2DConfig = serde_json::from_str(json).unwrap();
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("KDownBlock2D"));
}

#[test]
fn parity_input_checks() {
    let model = load_model("ddpm_flags");
    let t = Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap();
    // H, W must halve exactly.
    let x = Tensor::zeros((2, 3, 14, 16), DType::F32, &Device::Cpu).unwrap();
    assert!(model.forward(&x, &t).is_ok());
    let x = Tensor::zeros((2, 3, 15, 16), DType::F32, &Device::Cpu).unwrap();
    assert!(model.forward(&x, &t).is_err());
    let x = Tensor::zeros((2, 4, 16, 16), DType::F32, &Device::Cpu).unwrap();
    assert!(model.forward(&x, &t).is_err());
    let x = Tensor::zeros((2, 3, 16, 16), DType::F32, &Device::Cpu).unwrap();
    let t3 = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).unwrap();
    assert!(model.forward(&x, &t3).is_err());
    assert_eq!(model.config().block_out_channels, [16, 24]);
}
