//! diffusers' `UNet2DModel` (the unconditional DDPM UNet of `google/ddpm-cifar10-32`,
//! `google/ddpm-celebahq-256` and most `DDPMPipeline` checkpoints) in candle, with diffusers'
//! state-dict names, so a `diffusion_pytorch_model.safetensors` loads as is.
//!
//! Follows diffusers 0.42 (`models/unets/unet_2d.py`, `unet_2d_blocks.py`, `resnet.py`,
//! `downsampling.py`, `upsampling.py`, `embeddings.py`, `attention_processor.py`):
//! - timestep embedding: `Timesteps` (`get_timestep_embedding`, sinusoidal on float timesteps,
//!   `exponent = -ln(10000) i / (half - freq_shift)`, `[sin | cos]`, swapped by
//!   `flip_sin_to_cos`) or `GaussianFourierProjection` (`"fourier"`: `log t`, `[sin | cos]` of
//!   `2 pi W log t`, output divided by `t`), then `TimestepEmbedding`
//!   (`linear_1 -> SiLU -> linear_2`);
//! - `ResnetBlock2D`: GroupNorm -> SiLU -> conv3x3 (+ `time_emb_proj(SiLU(emb))`, or GroupNorm
//!   then `* (1 + scale) + shift` with `"scale_shift"`) -> GroupNorm -> SiLU -> conv3x3, plus the
//!   input (1x1 `conv_shortcut` when channels change), divided by `output_scale_factor`
//!   (`mid_block_scale_factor` in the middle block, 1 elsewhere);
//! - `Attention` (the blocks converted from the deprecated `AttentionBlock`): GroupNorm, `to_q`,
//!   `to_k`, `to_v`, scaled dot-product attention with `channels / attention_head_dim` heads,
//!   `to_out.0`, plus the input, divided by `rescale_output_factor`;
//! - `Downsample2D`: conv3x3 stride 2 with `downsample_padding` (padding 0: zero pad right and
//!   bottom by one first); `Upsample2D`: nearest x2 then conv3x3;
//! - up blocks concatenate `[h, skip]` along channels, skips popped last-in first-out.
//!
//! Dropout is ignored (inference). Weights come through a `VarBuilder`; old checkpoints with the
//! deprecated attention names go through [`rename_deprecated_attention`] first.

use std::collections::HashMap;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::kernels;
use super::layers::{
    add_scale, conv1, conv3, conv_k, fused_kernel_switch, group_norm_eps, positive, silu, Conv,
    Norm,
};

/// `sample_size` of a diffusers config: an int (square) or `[h, w]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum SampleSizeRepr {
    Square(usize),
    Rect([usize; 2]),
}

fn de_sample_size<'de, D2: Deserializer<'de>>(
    d: D2,
) -> std::result::Result<Option<[usize; 2]>, D2::Error> {
    Ok(Option::<SampleSizeRepr>::deserialize(d)?.map(|s| match s {
        SampleSizeRepr::Square(n) => [n, n],
        SampleSizeRepr::Rect(hw) => hw,
    }))
}

fn ser_sample_size<S: Serializer>(
    v: &Option<[usize; 2]>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match v {
        Some([h, w]) if h == w => s.serialize_some(h),
        Some(hw) => s.serialize_some(hw),
        None => s.serialize_none(),
    }
}

/// Configuration of diffusers' `UNet2DModel`, deserialisable from its `config.json` (unknown keys
/// such as `_class_name` are ignored; missing keys take diffusers' defaults, see [`Default`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UNet2DConfig {
    /// Training image size `[h, w]` (diffusers: an int or a pair; `null` allowed).
    #[serde(
        deserialize_with = "de_sample_size",
        serialize_with = "ser_sample_size"
    )]
    pub sample_size: Option<[usize; 2]>,
    pub in_channels: usize,
    pub out_channels: usize,
    /// Maps the input `x` to `2 x - 1` first.
    pub center_input_sample: bool,
    /// `"positional"` (sinusoidal) or `"fourier"` (Gaussian Fourier features of `log t`, output
    /// divided by `t`). `"learned"` is not supported.
    pub time_embedding_type: String,
    /// Width of the time embedding MLP (`None`: `4 * block_out_channels[0]`).
    pub time_embedding_dim: Option<usize>,
    /// Only a `UNet2DConditionModel` option; diffusers' `UNet2DModel` does not take it, so a
    /// non-null value is rejected by [`Self::validate`] (the config is likely for another class).
    pub time_embedding_act_fn: Option<String>,
    /// `downscale_freq_shift` of the sinusoidal embedding.
    pub freq_shift: f64,
    /// `[cos | sin]` instead of `[sin | cos]`.
    pub flip_sin_to_cos: bool,
    pub down_block_types: Vec<String>,
    /// `"UNetMidBlock2D"` or `None` (no middle block).
    pub mid_block_type: Option<String>,
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    /// `output_scale_factor` of the middle block's resnets and `rescale_output_factor` of its
    /// attention (every other block uses 1).
    pub mid_block_scale_factor: f64,
    pub downsample_padding: usize,
    pub downsample_type: String,
    pub upsample_type: String,
    /// Ignored (inference only).
    pub dropout: f64,
    /// `"silu"` (or its alias `"swish"`).
    pub act_fn: String,
    /// Channels per attention head; `None`: one head over all channels.
    pub attention_head_dim: Option<usize>,
    pub norm_num_groups: usize,
    /// GroupNorm groups of the middle block's attention; `None`: `norm_num_groups` with
    /// `resnet_time_scale_shift == "default"`, no GroupNorm otherwise.
    pub attn_norm_num_groups: Option<usize>,
    pub norm_eps: f64,
    /// `"default"` (embedding added after `conv1`) or `"scale_shift"`.
    pub resnet_time_scale_shift: String,
    /// Attention in the middle block.
    pub add_attention: bool,
    /// Must be `None` (class conditioning is not supported).
    pub class_embed_type: Option<String>,
    /// Must be `None` (class conditioning is not supported).
    pub num_class_embeds: Option<usize>,
    /// Only for `time_embedding_type == "learned"` (not supported); ignored otherwise.
    pub num_train_timesteps: Option<usize>,
}

impl Default for UNet2DConfig {
    /// diffusers' defaults of `UNet2DModel.__init__` (0.42).
    fn default() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        Self {
            sample_size: None,
            in_channels: 3,
            out_channels: 3,
            center_input_sample: false,
            time_embedding_type: "positional".into(),
            time_embedding_dim: None,
            time_embedding_act_fn: None,
            freq_shift: 0.0,
            flip_sin_to_cos: true,
            down_block_types: s(&[
                "DownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
                "AttnDownBlock2D",
            ]),
            mid_block_type: Some("UNetMidBlock2D".into()),
            up_block_types: s(&[
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "AttnUpBlock2D",
                "UpBlock2D",
            ]),
            block_out_channels: vec![224, 448, 672, 896],
            layers_per_block: 2,
            mid_block_scale_factor: 1.0,
            downsample_padding: 1,
            downsample_type: "conv".into(),
            upsample_type: "conv".into(),
            dropout: 0.0,
            act_fn: "silu".into(),
            attention_head_dim: Some(8),
            norm_num_groups: 32,
            attn_norm_num_groups: None,
            norm_eps: 1e-5,
            resnet_time_scale_shift: "default".into(),
            add_attention: true,
            class_embed_type: None,
            num_class_embeds: None,
            num_train_timesteps: None,
        }
    }
}

/// diffusers strips a `UNetRes` prefix from block type names.
fn block_name(t: &str) -> &str {
    t.strip_prefix("UNetRes").unwrap_or(t)
}

const DOWN_TYPES: [&str; 2] = ["DownBlock2D", "AttnDownBlock2D"];
const UP_TYPES: [&str; 2] = ["UpBlock2D", "AttnUpBlock2D"];

/// Names accepted by [`UNet2DConfig::preset`].
pub const PRESETS: [&str; 2] = ["ddpm-cifar10-32", "ddpm-celebahq-256"];

impl UNet2DConfig {
    /// `google/ddpm-cifar10-32` (Ho et al. 2020's CIFAR-10 model converted to diffusers; 35.7M
    /// parameters). Source: the `unet/config.json` of that hub repository as we know it
    /// (diffusers-format keys: `block_out_channels [128, 256, 256, 256]`, `layers_per_block 2`,
    /// attention at 16x16, `attention_head_dim null`, `downsample_padding 0`, `freq_shift 1`,
    /// `flip_sin_to_cos false`, `norm_eps 1e-6`, `norm_num_groups 32`); not re-downloaded here,
    /// so check it against the file when loading the real weights.
    pub fn ddpm_cifar10_32() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        Self {
            sample_size: Some([32, 32]),
            in_channels: 3,
            out_channels: 3,
            center_input_sample: false,
            time_embedding_type: "positional".into(),
            freq_shift: 1.0,
            flip_sin_to_cos: false,
            down_block_types: s(&[
                "DownBlock2D",
                "AttnDownBlock2D",
                "DownBlock2D",
                "DownBlock2D",
            ]),
            up_block_types: s(&["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]),
            block_out_channels: vec![128, 256, 256, 256],
            layers_per_block: 2,
            mid_block_scale_factor: 1.0,
            downsample_padding: 0,
            act_fn: "silu".into(),
            attention_head_dim: None,
            norm_num_groups: 32,
            norm_eps: 1e-6,
            ..Self::default()
        }
    }

    /// `google/ddpm-celebahq-256` (Ho et al. 2020's CelebA-HQ 256x256 model converted to
    /// diffusers; 113.7M parameters). Source: the `unet/config.json` of that hub repository as
    /// we know it (`block_out_channels [128, 128, 256, 256, 512, 512]`, attention at 16x16 only,
    /// `layers_per_block 2`, `attention_head_dim null`, `downsample_padding 0`, `freq_shift 1`,
    /// `flip_sin_to_cos false`, `norm_eps 1e-6`); not re-downloaded here, so check it against
    /// the file when loading the real weights.
    pub fn ddpm_celebahq_256() -> Self {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        Self {
            sample_size: Some([256, 256]),
            down_block_types: s(&[
                "DownBlock2D",
                "DownBlock2D",
                "DownBlock2D",
                "DownBlock2D",
                "AttnDownBlock2D",
                "DownBlock2D",
            ]),
            up_block_types: s(&[
                "UpBlock2D",
                "AttnUpBlock2D",
                "UpBlock2D",
                "UpBlock2D",
                "UpBlock2D",
                "UpBlock2D",
            ]),
            block_out_channels: vec![128, 128, 256, 256, 512, 512],
            ..Self::ddpm_cifar10_32()
        }
    }

    /// A preset by name: one of [`PRESETS`].
    pub fn preset(name: &str) -> crate::Result<Self> {
        match name {
            "ddpm-cifar10-32" | "google/ddpm-cifar10-32" => Ok(Self::ddpm_cifar10_32()),
            "ddpm-celebahq-256" | "google/ddpm-celebahq-256" => Ok(Self::ddpm_celebahq_256()),
            _ => Err(crate::Error::param(
                "preset",
                format!("unknown preset `{name}` (known: {})", PRESETS.join(", ")),
            )),
        }
    }

    /// Width of the timestep embedding MLP.
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(4 * self.block_out_channels.first().copied().unwrap_or(0))
    }

    /// `(heads, head_dim)` of an attention layer over `ch` channels.
    fn heads(&self, ch: usize) -> (usize, usize) {
        let hd = self.attention_head_dim.unwrap_or(ch);
        (ch.checked_div(hd).unwrap_or(0), hd)
    }

    fn scale_shift(&self) -> bool {
        self.resnet_time_scale_shift == "scale_shift"
    }

    /// GroupNorm groups of the middle block's attention (`None`: no GroupNorm).
    fn mid_attn_groups(&self) -> Option<usize> {
        self.attn_norm_num_groups.or(if self.scale_shift() {
            None
        } else {
            Some(self.norm_num_groups)
        })
    }

    /// Checks the configuration, naming the offending field.
    pub fn validate(&self) -> crate::Result<()> {
        use crate::Error;
        positive(self.in_channels, "in_channels")?;
        positive(self.out_channels, "out_channels")?;
        positive(self.layers_per_block, "layers_per_block")?;
        positive(self.norm_num_groups, "norm_num_groups")?;
        if let Some([h, w]) = self.sample_size {
            if h == 0 || w == 0 {
                return Err(Error::param("sample_size", "must be positive"));
            }
        }
        let n = self.block_out_channels.len();
        if n == 0 || self.block_out_channels.contains(&0) {
            return Err(Error::param(
                "block_out_channels",
                "must be non-empty with positive entries",
            ));
        }
        if self.down_block_types.len() != n {
            return Err(Error::param(
                "down_block_types",
                format!(
                    "{} block types for {n} block_out_channels",
                    self.down_block_types.len()
                ),
            ));
        }
        if self.up_block_types.len() != n {
            return Err(Error::param(
                "up_block_types",
                format!(
                    "{} block types for {n} block_out_channels",
                    self.up_block_types.len()
                ),
            ));
        }
        for t in &self.down_block_types {
            if !DOWN_TYPES.contains(&block_name(t)) {
                return Err(Error::param(
                    "down_block_types",
                    format!(
                        "block type `{t}` is not supported (supported: {})",
                        DOWN_TYPES.join(", ")
                    ),
                ));
            }
        }
        for t in &self.up_block_types {
            if !UP_TYPES.contains(&block_name(t)) {
                return Err(Error::param(
                    "up_block_types",
                    format!(
                        "block type `{t}` is not supported (supported: {})",
                        UP_TYPES.join(", ")
                    ),
                ));
            }
        }
        match self.mid_block_type.as_deref() {
            None | Some("UNetMidBlock2D") => {}
            Some(t) => {
                return Err(Error::param(
                    "mid_block_type",
                    format!("block type `{t}` is not supported (supported: UNetMidBlock2D, null)"),
                ))
            }
        }
        match self.time_embedding_type.as_str() {
            "positional" | "fourier" => {}
            t => {
                return Err(Error::param(
                    "time_embedding_type",
                    format!("`{t}` is not supported (supported: positional, fourier)"),
                ))
            }
        }
        if let Some(d) = self.time_embedding_dim {
            positive(d, "time_embedding_dim")?;
        }
        if let Some(a) = &self.time_embedding_act_fn {
            return Err(Error::param(
                "time_embedding_act_fn",
                format!(
                    "`{a}`: not an option of diffusers' UNet2DModel (UNet2DConditionModel's); \
                     this config is probably for another model class"
                ),
            ));
        }
        if self.time_embedding_type == "positional" {
            let half = self.block_out_channels[0] / 2;
            if !self.freq_shift.is_finite() || half as f64 - self.freq_shift == 0.0 {
                return Err(Error::param(
                    "freq_shift",
                    format!("must be finite and differ from half the embedding width ({half})"),
                ));
            }
        }
        if !matches!(self.act_fn.as_str(), "silu" | "swish") {
            return Err(Error::param(
                "act_fn",
                format!("`{}` is not supported (supported: silu)", self.act_fn),
            ));
        }
        if self.downsample_type != "conv" {
            return Err(Error::param(
                "downsample_type",
                format!(
                    "`{}` is not supported (supported: conv)",
                    self.downsample_type
                ),
            ));
        }
        if self.upsample_type != "conv" {
            return Err(Error::param(
                "upsample_type",
                format!(
                    "`{}` is not supported (supported: conv)",
                    self.upsample_type
                ),
            ));
        }
        if !matches!(
            self.resnet_time_scale_shift.as_str(),
            "default" | "scale_shift"
        ) {
            return Err(Error::param(
                "resnet_time_scale_shift",
                format!(
                    "`{}` is not supported (supported: default, scale_shift)",
                    self.resnet_time_scale_shift
                ),
            ));
        }
        if let Some(c) = &self.class_embed_type {
            return Err(Error::param(
                "class_embed_type",
                format!("`{c}`: class conditioning is not supported (must be null)"),
            ));
        }
        if let Some(c) = self.num_class_embeds {
            return Err(Error::param(
                "num_class_embeds",
                format!("{c}: class conditioning is not supported (must be null)"),
            ));
        }
        if !(self.norm_eps.is_finite() && self.norm_eps > 0.0) {
            return Err(Error::param("norm_eps", "must be finite and positive"));
        }
        if !(self.mid_block_scale_factor.is_finite() && self.mid_block_scale_factor != 0.0) {
            return Err(Error::param(
                "mid_block_scale_factor",
                "must be finite and non-zero",
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::param("dropout", "must be in [0, 1)"));
        }
        if self.downsample_padding > 1 {
            return Err(Error::param(
                "downsample_padding",
                "must be 0 or 1 (other paddings change the level sizes)",
            ));
        }
        // Every GroupNorm sees a block_out_channels entry or the sum of two of them.
        for (i, &ch) in self.block_out_channels.iter().enumerate() {
            if !ch.is_multiple_of(self.norm_num_groups) {
                return Err(Error::param(
                    "norm_num_groups",
                    format!(
                        "{} does not divide the {ch} channels of block {i}",
                        self.norm_num_groups
                    ),
                ));
            }
        }
        let check_heads = |ch: usize, what: &str| -> crate::Result<()> {
            let (heads, hd) = self.heads(ch);
            if hd == 0 || heads == 0 {
                return Err(Error::param(
                    "attention_head_dim",
                    format!("{hd} channels per head do not fit the {ch} channels of {what}"),
                ));
            }
            Ok(())
        };
        for (i, t) in self.down_block_types.iter().enumerate() {
            if block_name(t) == "AttnDownBlock2D" {
                check_heads(self.block_out_channels[i], &format!("down block {i}"))?;
            }
        }
        for (i, t) in self.up_block_types.iter().enumerate() {
            if block_name(t) == "AttnUpBlock2D" {
                check_heads(self.block_out_channels[n - 1 - i], &format!("up block {i}"))?;
            }
        }
        let mid = self.block_out_channels[n - 1];
        if self.mid_block_type.is_some() && self.add_attention {
            check_heads(mid, "the middle block")?;
            if let Some(g) = self.mid_attn_groups() {
                if g == 0 || !mid.is_multiple_of(g) {
                    return Err(Error::param(
                        "attn_norm_num_groups",
                        format!("{g} does not divide the {mid} middle channels"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Maps the deprecated attention parameter names of old diffusers checkpoints (the hub's
/// `google/ddpm-*` `.bin` files: `AttentionBlock` with `query`, `key`, `value`, `proj_attn`) to
/// the current ones (`to_q`, `to_k`, `to_v`, `to_out.0`), as diffusers does on load
/// (`ModelMixin._fix_state_dict_keys_on_load`). Only keys inside `attentions.N` modules are
/// renamed; `group_norm` keeps its name; other keys pass through unchanged.
pub fn rename_deprecated_attention(weights: HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    const MAP: [(&str, &str); 4] = [
        ("query", "to_q"),
        ("key", "to_k"),
        ("value", "to_v"),
        ("proj_attn", "to_out.0"),
    ];
    weights
        .into_iter()
        .map(|(name, t)| {
            let parts: Vec<&str> = name.split('.').collect();
            let n = parts.len();
            let in_attention =
                n >= 4 && parts[n - 4] == "attentions" && parts[n - 3].parse::<usize>().is_ok();
            if in_attention && matches!(parts[n - 1], "weight" | "bias") {
                if let Some((_, new)) = MAP.iter().find(|(old, _)| *old == parts[n - 2]) {
                    let prefix = parts[..n - 2].join(".");
                    return (format!("{prefix}.{new}.{}", parts[n - 1]), t);
                }
            }
            (name, t)
        })
        .collect()
}

/// diffusers' `ResnetBlock2D` (pre-norm, SiLU, no up/down sampling).
#[derive(Debug, Clone)]
struct ResnetBlock {
    norm1: Norm,
    conv1: Conv,
    time_emb_proj: Linear,
    norm2: Norm,
    conv2: Conv,
    conv_shortcut: Option<Conv>,
    scale_shift: bool,
    /// `1 / output_scale_factor`.
    inv_scale: f64,
}

impl ResnetBlock {
    fn new(
        cin: usize,
        cout: usize,
        out_scale: f64,
        cfg: &UNet2DConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (g, eps) = (cfg.norm_num_groups, cfg.norm_eps);
        let scale_shift = cfg.scale_shift();
        let temb_out = if scale_shift { 2 * cout } else { cout };
        Ok(Self {
            norm1: group_norm_eps(g, cin, eps, vb.pp("norm1"))?,
            conv1: conv3(cin, cout, 1, vb.pp("conv1"))?,
            time_emb_proj: linear(cfg.time_embed_dim(), temb_out, vb.pp("time_emb_proj"))?,
            norm2: group_norm_eps(g, cout, eps, vb.pp("norm2"))?,
            conv2: conv3(cout, cout, 1, vb.pp("conv2"))?,
            conv_shortcut: if cin != cout {
                Some(conv1(cin, cout, vb.pp("conv_shortcut"))?)
            } else {
                None
            },
            scale_shift,
            inv_scale: 1.0 / out_scale,
        })
    }

    /// `temb`: the embedding after SiLU, `[B, time_embed_dim]`.
    fn forward(&self, x: &Tensor, temb: &Tensor, fused: bool) -> Result<Tensor> {
        let e = self.time_emb_proj.forward(temb)?;
        let h = self.norm1.forward(x, true, fused)?;
        let h = if self.scale_shift {
            let h = self.conv1.forward(&h, fused)?;
            let h = self.norm2.forward(&h, false, fused)?;
            let (b, c, _, _) = h.dims4()?;
            let scale = (e.narrow(1, 0, c)? + 1.0)?.reshape((b, c, 1, 1))?;
            let shift = e.narrow(1, c, c)?.reshape((b, c, 1, 1))?;
            let h = h.broadcast_mul(&scale)?.broadcast_add(&shift)?;
            silu(&h, fused)?
        } else {
            let h = self.conv1.forward_add(&h, &e, fused)?;
            self.norm2.forward(&h, true, fused)?
        };
        let h = self.conv2.forward(&h, fused)?;
        let skip = match &self.conv_shortcut {
            Some(s) => s.forward(x, fused)?,
            None => x.clone(),
        };
        add_scale(&skip, &h, self.inv_scale, fused)
    }
}

/// diffusers' `Attention` as built for `UNet2DModel` (self-attention over the `H*W` positions,
/// residual connection, optional GroupNorm). `to_q`, `to_k`, `to_v` run as one matmul.
#[derive(Debug, Clone)]
struct Attention {
    group_norm: Option<Norm>,
    /// `[to_q; to_k; to_v]`: `C -> 3 * inner`.
    qkv: Linear,
    to_out: Linear,
    heads: usize,
    head_dim: usize,
    /// `1 / rescale_output_factor`.
    inv_scale: f64,
}

impl Attention {
    fn new(
        ch: usize,
        groups: Option<usize>,
        out_scale: f64,
        cfg: &UNet2DConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (heads, head_dim) = cfg.heads(ch);
        let inner = heads * head_dim;
        let group_norm = match groups {
            Some(g) => Some(group_norm_eps(g, ch, cfg.norm_eps, vb.pp("group_norm"))?),
            None => None,
        };
        let mut ws = Vec::with_capacity(3);
        let mut bs = Vec::with_capacity(3);
        for name in ["to_q", "to_k", "to_v"] {
            let l = linear(ch, inner, vb.pp(name))?;
            ws.push(l.weight().clone());
            bs.push(
                l.bias()
                    .cloned()
                    .ok_or_else(|| candle_core::Error::Msg(format!("{name} has a bias")))?,
            );
        }
        let qkv = Linear::new(Tensor::cat(&ws, 0)?, Some(Tensor::cat(&bs, 0)?));
        Ok(Self {
            group_norm,
            qkv,
            to_out: linear(inner, ch, vb.pp("to_out").pp("0"))?,
            heads,
            head_dim,
            inv_scale: 1.0 / out_scale,
        })
    }

    fn forward(&self, x: &Tensor, fused: bool) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let n = h * w;
        let (heads, hd) = (self.heads, self.head_dim);
        let inner = heads * hd;
        let t = match &self.group_norm {
            Some(norm) => norm.forward(x, false, fused)?,
            None => x.clone(),
        };
        let t = t.reshape((b, c, n))?.transpose(1, 2)?.contiguous()?;
        let qkv = self.qkv.forward(&t)?; // [B, N, 3 inner]
        let split = |i: usize| -> Result<Tensor> {
            qkv.narrow(2, i * inner, inner)?
                .reshape((b, n, heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = (split(0)? * (1.0 / (hd as f64).sqrt()))?;
        let (k, v) = (split(1)?, split(2)?); // [B, heads, N, hd]
        let att = q.matmul(&k.t()?)?;
        let att = super::layers::softmax_last_dim(&att)?;
        let o = att
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, n, inner))?;
        let o = self
            .to_out
            .forward(&o)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, c, h, w))?;
        add_scale(&o, x, self.inv_scale, fused)
    }
}

/// `Downsample2D` (conv, stride 2).
#[derive(Debug, Clone)]
struct Downsample {
    conv: Conv,
    /// `downsample_padding == 0`: pad right and bottom by one zero first.
    pad_br: bool,
}

impl Downsample {
    fn forward(&self, x: &Tensor, fused: bool) -> Result<Tensor> {
        if self.pad_br {
            let x = x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?;
            self.conv.forward(&x, fused)
        } else {
            self.conv.forward(x, fused)
        }
    }
}

#[derive(Debug, Clone)]
struct Block {
    /// Residual blocks, each optionally followed by attention.
    layers: Vec<(ResnetBlock, Option<Attention>)>,
    down: Option<Downsample>,
    /// `Upsample2D`'s conv (after nearest x2).
    up: Option<Conv>,
}

#[derive(Debug, Clone)]
enum TimeProj {
    /// Sinusoidal: frequencies `[1, half]` (f32, computed as diffusers does) and whether the
    /// width is odd (a zero column is appended).
    Positional {
        freqs: Tensor,
        flip: bool,
        odd: bool,
    },
    /// `GaussianFourierProjection` weights `[1, C]`.
    Fourier { weight: Tensor },
}

/// diffusers' `UNet2DModel`: `forward(x, t)` returns the `sample` output.
#[derive(Debug, Clone)]
pub struct UNet2DModel {
    cfg: UNet2DConfig,
    time_proj: TimeProj,
    linear_1: Linear,
    linear_2: Linear,
    conv_in: Conv,
    down: Vec<Block>,
    /// `(resnets[0], attentions[0], resnets[1])`.
    mid: Option<(ResnetBlock, Option<Attention>, ResnetBlock)>,
    up: Vec<Block>,
    conv_norm_out: Norm,
    conv_out: Conv,
    fused: bool,
}

impl UNet2DModel {
    /// Builds the model, taking its weights from `vb` under diffusers' state-dict names
    /// (`conv_in.weight`, `down_blocks.1.attentions.0.to_q.weight`, ...).
    pub fn new(cfg: &UNet2DConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()
            .map_err(|e| candle_core::Error::Msg(format!("invalid UNet2DModel config: {e}")))?;
        let dev = vb.device().clone();
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let c0 = ch[0];
        let ted = cfg.time_embed_dim();
        let (time_proj, t_in) = if cfg.time_embedding_type == "fourier" {
            let weight = vb
                .pp("time_proj")
                .get(c0, "weight")?
                .to_dtype(DType::F32)?
                .reshape((1, c0))?;
            (TimeProj::Fourier { weight }, 2 * c0)
        } else {
            // get_timestep_embedding, in f32 like torch: exponent = -ln(10000) * i / (half - shift).
            let half = c0 / 2;
            let ln = 10000f64.ln() as f32;
            let denom = (half as f64 - cfg.freq_shift) as f32;
            let freqs: Vec<f32> = (0..half)
                .map(|i| (((-ln * i as f32) / denom) as f64).exp() as f32)
                .collect();
            let freqs = Tensor::from_vec(freqs, (1, half), &dev)?;
            (
                TimeProj::Positional {
                    freqs,
                    flip: cfg.flip_sin_to_cos,
                    odd: c0 % 2 == 1,
                },
                c0,
            )
        };
        let linear_1 = linear(t_in, ted, vb.pp("time_embedding.linear_1"))?;
        let linear_2 = linear(ted, ted, vb.pp("time_embedding.linear_2"))?;
        let conv_in = conv3(cfg.in_channels, c0, 1, vb.pp("conv_in"))?;

        // The attention layer `j` of a down or up block (`Attn*Block2D` only).
        let block_attention = |attn: bool, c: usize, vbb: &VarBuilder, j: usize| {
            attn.then(|| {
                Attention::new(
                    c,
                    Some(cfg.norm_num_groups),
                    1.0,
                    cfg,
                    vbb.pp(format!("attentions.{j}")),
                )
            })
            .transpose()
        };
        let mut down = Vec::with_capacity(n);
        let mut out_ch = c0;
        for (i, t) in cfg.down_block_types.iter().enumerate() {
            let vbb = vb.pp(format!("down_blocks.{i}"));
            let attn = block_name(t) == "AttnDownBlock2D";
            let in_ch = out_ch;
            out_ch = ch[i];
            let mut layers = Vec::with_capacity(cfg.layers_per_block);
            for j in 0..cfg.layers_per_block {
                let cin = if j == 0 { in_ch } else { out_ch };
                let res = ResnetBlock::new(cin, out_ch, 1.0, cfg, vbb.pp(format!("resnets.{j}")))?;
                layers.push((res, block_attention(attn, out_ch, &vbb, j)?));
            }
            let ds = if i + 1 < n {
                let pad = cfg.downsample_padding;
                Some(Downsample {
                    conv: conv_k(out_ch, out_ch, 3, 2, pad, vbb.pp("downsamplers.0.conv"))?,
                    pad_br: pad == 0,
                })
            } else {
                None
            };
            down.push(Block {
                layers,
                down: ds,
                up: None,
            });
        }

        let mid = if cfg.mid_block_type.is_some() {
            let c = ch[n - 1];
            let s = cfg.mid_block_scale_factor;
            let vbm = vb.pp("mid_block");
            let r0 = ResnetBlock::new(c, c, s, cfg, vbm.pp("resnets.0"))?;
            let a = if cfg.add_attention {
                Some(Attention::new(
                    c,
                    cfg.mid_attn_groups(),
                    s,
                    cfg,
                    vbm.pp("attentions.0"),
                )?)
            } else {
                None
            };
            let r1 = ResnetBlock::new(c, c, s, cfg, vbm.pp("resnets.1"))?;
            Some((r0, a, r1))
        } else {
            None
        };

        let rev: Vec<usize> = ch.iter().rev().copied().collect();
        let mut up = Vec::with_capacity(n);
        let mut out_ch = rev[0];
        for (i, t) in cfg.up_block_types.iter().enumerate() {
            let vbb = vb.pp(format!("up_blocks.{i}"));
            let attn = block_name(t) == "AttnUpBlock2D";
            let prev_out = out_ch;
            out_ch = rev[i];
            let in_ch = rev[(i + 1).min(n - 1)];
            let nl = cfg.layers_per_block + 1;
            let mut layers = Vec::with_capacity(nl);
            for j in 0..nl {
                let skip = if j == nl - 1 { in_ch } else { out_ch };
                let rin = if j == 0 { prev_out } else { out_ch };
                let res =
                    ResnetBlock::new(rin + skip, out_ch, 1.0, cfg, vbb.pp(format!("resnets.{j}")))?;
                layers.push((res, block_attention(attn, out_ch, &vbb, j)?));
            }
            let us = if i + 1 < n {
                Some(conv3(out_ch, out_ch, 1, vbb.pp("upsamplers.0.conv"))?)
            } else {
                None
            };
            up.push(Block {
                layers,
                down: None,
                up: us,
            });
        }
        let conv_norm_out = group_norm_eps(
            cfg.norm_num_groups,
            c0,
            cfg.norm_eps,
            vb.pp("conv_norm_out"),
        )?;
        let conv_out = conv3(c0, cfg.out_channels, 1, vb.pp("conv_out"))?;
        Ok(Self {
            cfg: cfg.clone(),
            time_proj,
            linear_1,
            linear_2,
            conv_in,
            down,
            mid,
            up,
            conv_norm_out,
            conv_out,
            fused: true,
        })
    }

    fused_kernel_switch!();

    /// The architecture.
    pub fn config(&self) -> &UNet2DConfig {
        &self.cfg
    }

    /// Spatial sizes must halve exactly at every downsampling (diffusers' up blocks concatenate
    /// the upsampled map with the skip of the same level).
    pub fn size_multiple(&self) -> usize {
        1 << (self.cfg.block_out_channels.len() - 1)
    }

    /// `TimestepEmbedding(time_proj(t))`, `[B, time_embed_dim]` (before the resnets' SiLU).
    fn embed(&self, t: &Tensor) -> Result<Tensor> {
        let b = t.dim(0)?;
        let feats = match &self.time_proj {
            TimeProj::Positional { freqs, flip, odd } => {
                let arg = t
                    .to_dtype(DType::F32)?
                    .reshape((b, 1))?
                    .broadcast_mul(freqs)?;
                let (s, c) = (arg.sin()?, arg.cos()?);
                let e = if *flip {
                    Tensor::cat(&[c, s], 1)?
                } else {
                    Tensor::cat(&[s, c], 1)?
                };
                if *odd {
                    e.pad_with_zeros(1, 0, 1)?
                } else {
                    e
                }
            }
            TimeProj::Fourier { weight } => {
                let arg = (t
                    .to_dtype(DType::F32)?
                    .log()?
                    .reshape((b, 1))?
                    .broadcast_mul(weight)?
                    * (2.0 * std::f64::consts::PI))?;
                Tensor::cat(&[arg.sin()?, arg.cos()?], 1)?
            }
        };
        let h = silu(&self.linear_1.forward(&feats)?, self.fused)?;
        self.linear_2.forward(&h)
    }

    /// `x: [B, in_channels, H, W]` (f32; `H`, `W` multiples of [`Self::size_multiple`]),
    /// `timesteps: [B]` (float, fractional allowed; positive for `"fourier"`) ->
    /// `[B, out_channels, H, W]`, diffusers' `UNet2DModel(x, t).sample`.
    pub fn forward(&self, x: &Tensor, timesteps: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        if c != self.cfg.in_channels {
            candle_core::bail!(
                "UNet2DModel expects {} channels, got {c}",
                self.cfg.in_channels
            )
        }
        if timesteps.dims() != [b] {
            candle_core::bail!(
                "timesteps must have shape [{b}], got {:?}",
                timesteps.dims()
            )
        }
        let m = self.size_multiple();
        if h % m != 0 || w % m != 0 {
            candle_core::bail!(
                "UNet2DModel with {} levels needs H and W divisible by {m}, got {h}x{w}",
                self.cfg.block_out_channels.len()
            )
        }
        let f = self.fused;
        let x = if self.cfg.center_input_sample {
            x.affine(2.0, -1.0)?
        } else {
            x.clone()
        };
        let temb = silu(&self.embed(timesteps)?, f)?;
        let mut h = self.conv_in.forward(&x, f)?;
        let mut skips = vec![h.clone()];
        for block in &self.down {
            for (res, attn) in &block.layers {
                h = res.forward(&h, &temb, f)?;
                if let Some(a) = attn {
                    h = a.forward(&h, f)?;
                }
                skips.push(h.clone());
            }
            if let Some(ds) = &block.down {
                h = ds.forward(&h, f)?;
                skips.push(h.clone());
            }
        }
        if let Some((r0, attn, r1)) = &self.mid {
            h = r0.forward(&h, &temb, f)?;
            if let Some(a) = attn {
                h = a.forward(&h, f)?;
            }
            h = r1.forward(&h, &temb, f)?;
        }
        for block in &self.up {
            for (res, attn) in &block.layers {
                let skip = skips
                    .pop()
                    .ok_or_else(|| candle_core::Error::Msg("UNet2DModel: skip underflow".into()))?;
                h = res.forward(&Tensor::cat(&[&h, &skip], 1)?, &temb, f)?;
                if let Some(a) = attn {
                    h = a.forward(&h, f)?;
                }
            }
            if let Some(conv) = &block.up {
                let (_, _, hh, hw) = h.dims4()?;
                h = if f && kernels::supported(&h) {
                    kernels::upsample2_crop(&h, 2 * hh, 2 * hw)?
                } else {
                    super::layers::upsample2_nearest(&h)?
                };
                h = conv.forward(&h, f)?;
            }
        }
        let out = self
            .conv_out
            .forward(&self.conv_norm_out.forward(&h, true, f)?, f)?;
        if self.cfg.time_embedding_type == "fourier" {
            let t = timesteps.to_dtype(out.dtype())?.reshape((b, 1, 1, 1))?;
            out.broadcast_div(&t)
        } else {
            Ok(out)
        }
    }
}
