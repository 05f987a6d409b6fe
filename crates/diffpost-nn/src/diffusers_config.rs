//! The configuration of diffusers' `UNet2DModel` ([`super::diffusers_unet::UNet2DModel`]):
//! [`UNet2DConfig`], deserialisable from a diffusers `config.json`, the presets of the
//! `google/ddpm-*` checkpoints and the validation.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::layers::positive;

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

/// Configuration of diffusers' `UNet2DModel` ([`UNet2DModel`](super::diffusers_unet::UNet2DModel)), deserialisable from its `config.json` (unknown keys
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
pub(super) fn block_name(t: &str) -> &str {
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
    pub fn preset(name: &str) -> diffpost_core::Result<Self> {
        match name {
            "ddpm-cifar10-32" | "google/ddpm-cifar10-32" => Ok(Self::ddpm_cifar10_32()),
            "ddpm-celebahq-256" | "google/ddpm-celebahq-256" => Ok(Self::ddpm_celebahq_256()),
            _ => Err(diffpost_core::Error::param(
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
    pub(super) fn heads(&self, ch: usize) -> (usize, usize) {
        let hd = self.attention_head_dim.unwrap_or(ch);
        (ch.checked_div(hd).unwrap_or(0), hd)
    }

    /// Whether the resnets apply the embedding as scale-shift (`"scale_shift"`).
    pub(super) fn scale_shift(&self) -> bool {
        self.resnet_time_scale_shift == "scale_shift"
    }

    /// GroupNorm groups of the middle block's attention (`None`: no GroupNorm).
    pub(super) fn mid_attn_groups(&self) -> Option<usize> {
        self.attn_norm_num_groups.or(if self.scale_shift() {
            None
        } else {
            Some(self.norm_num_groups)
        })
    }

    /// Checks the configuration, naming the offending field.
    pub fn validate(&self) -> diffpost_core::Result<()> {
        use diffpost_core::Error;
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
        let check_heads = |ch: usize, what: &str| -> diffpost_core::Result<()> {
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
