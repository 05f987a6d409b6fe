//! The configuration of guided-diffusion's UNet ([`super::guided::GuidedUNet`]): its
//! `create_model` arguments ([`GuidedUNetConfig`], same names, so a `model_config.yaml`
//! translates field by field), the presets of the pretrained checkpoints and the validation.

use serde::{Deserialize, Serialize};

use super::layers::positive;

/// GroupNorm32 of guided-diffusion (`normalization(channels)`).
pub(super) const GROUPS: usize = 32;

/// Architecture of [`GuidedUNet`](super::guided::GuidedUNet): guided-diffusion's `create_model` arguments.
///
/// The default is guided-diffusion's `model_and_diffusion_defaults()` (a 64x64 model, with
/// `in_channels` 3); see [`Self::dps_ffhq256`] and [`Self::adm_imagenet256_uncond`] for the
/// pretrained checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuidedUNetConfig {
    /// Training image size (square). Sets the default `channel_mult` and converts
    /// `attention_resolutions` to downsampling factors; the network itself takes any size
    /// divisible by `2^(levels - 1)`.
    pub image_size: usize,
    /// Image channels (3).
    pub in_channels: usize,
    /// Model channels (`model_channels` of `UNetModel`).
    pub num_channels: usize,
    /// Residual blocks per level on the way down (`+1` on the way up).
    pub num_res_blocks: usize,
    /// Channel multiplier per level; empty: guided-diffusion's default for `image_size`
    /// (256: `[1, 1, 2, 2, 4, 4]`, 128: `[1, 1, 2, 3, 4]`, 64: `[1, 2, 3, 4]`).
    pub channel_mult: Vec<usize>,
    /// The output has `2 * in_channels` channels (eps, then the variance interpolation).
    pub learn_sigma: bool,
    /// Class-conditional model (not supported: must be false).
    pub class_cond: bool,
    /// Resolutions (e.g. `[16]`) at which residual blocks are followed by attention;
    /// `create_model` turns each into the factor `image_size / res`.
    pub attention_resolutions: Vec<usize>,
    /// Attention heads (used when `num_head_channels` is -1).
    pub num_heads: usize,
    /// Channels per attention head; -1: use `num_heads` heads.
    pub num_head_channels: i64,
    /// Heads of the output blocks' attention when `num_head_channels` is -1; -1: `num_heads`.
    pub num_heads_upsample: i64,
    /// FiLM-like conditioning: `norm(h) * (1 + scale) + shift` from the embedding.
    pub use_scale_shift_norm: bool,
    /// Residual blocks do the down/upsampling (instead of a stride-2 conv / nearest + conv).
    pub resblock_updown: bool,
    /// `QKVAttention` (split q/k/v before heads) instead of `QKVAttentionLegacy`.
    pub use_new_attention_order: bool,
    /// Training dropout (the identity here).
    pub dropout: f64,
    /// Half-precision flag of the checkpoint (ignored: the weights are converted on load).
    pub use_fp16: bool,
}

impl Default for GuidedUNetConfig {
    /// guided-diffusion's `model_and_diffusion_defaults()`.
    fn default() -> Self {
        Self {
            image_size: 64,
            in_channels: 3,
            num_channels: 128,
            num_res_blocks: 2,
            channel_mult: Vec::new(),
            learn_sigma: false,
            class_cond: false,
            attention_resolutions: vec![16, 8],
            num_heads: 4,
            num_head_channels: -1,
            num_heads_upsample: -1,
            use_scale_shift_norm: true,
            resblock_updown: false,
            use_new_attention_order: false,
            dropout: 0.0,
            use_fp16: false,
        }
    }
}

/// Names accepted by [`GuidedUNetConfig::preset`].
pub const GUIDED_PRESETS: [&str; 2] = ["dps-ffhq256", "adm-imagenet256-uncond"];

impl GuidedUNetConfig {
    /// DPS's FFHQ 256x256 model (`ffhq_10m.pt`, `configs/model_config.yaml`), about 94M parameters.
    pub fn dps_ffhq256() -> Self {
        Self {
            image_size: 256,
            in_channels: 3,
            num_channels: 128,
            num_res_blocks: 1,
            channel_mult: Vec::new(),
            learn_sigma: true,
            class_cond: false,
            attention_resolutions: vec![16],
            num_heads: 4,
            num_head_channels: 64,
            num_heads_upsample: -1,
            use_scale_shift_norm: true,
            resblock_updown: true,
            use_new_attention_order: false,
            dropout: 0.0,
            use_fp16: false,
        }
    }

    /// OpenAI's unconditional ImageNet 256x256 model (`256x256_diffusion_uncond.pt`), about 550M
    /// parameters.
    pub fn adm_imagenet256_uncond() -> Self {
        Self {
            image_size: 256,
            in_channels: 3,
            num_channels: 256,
            num_res_blocks: 2,
            channel_mult: Vec::new(),
            learn_sigma: true,
            class_cond: false,
            attention_resolutions: vec![32, 16, 8],
            num_heads: 4,
            num_head_channels: 64,
            num_heads_upsample: -1,
            use_scale_shift_norm: true,
            resblock_updown: true,
            use_new_attention_order: false,
            dropout: 0.0,
            use_fp16: true,
        }
    }

    /// A preset by name: one of [`GUIDED_PRESETS`].
    pub fn preset(name: &str) -> diffpost_core::Result<Self> {
        match name {
            "dps-ffhq256" => Ok(Self::dps_ffhq256()),
            "adm-imagenet256-uncond" => Ok(Self::adm_imagenet256_uncond()),
            _ => Err(diffpost_core::Error::param(
                "preset",
                format!(
                    "unknown guided-diffusion preset `{name}` (known: {})",
                    GUIDED_PRESETS.join(", ")
                ),
            )),
        }
    }

    /// Output channels: `2 * in_channels` with `learn_sigma`, else `in_channels`.
    pub fn out_channels(&self) -> usize {
        if self.learn_sigma {
            2 * self.in_channels
        } else {
            self.in_channels
        }
    }

    /// The channel multipliers, `channel_mult` or guided-diffusion's default for `image_size`.
    pub fn resolved_channel_mult(&self) -> diffpost_core::Result<Vec<usize>> {
        if !self.channel_mult.is_empty() {
            return Ok(self.channel_mult.clone());
        }
        match self.image_size {
            256 => Ok(vec![1, 1, 2, 2, 4, 4]),
            128 => Ok(vec![1, 1, 2, 3, 4]),
            64 => Ok(vec![1, 2, 3, 4]),
            512 => Err(diffpost_core::Error::param(
                "channel_mult",
                "guided-diffusion's default for image_size 512 is (0.5, 1, 1, 2, 2, 4, 4), which \
                 is not integer: not supported",
            )),
            s => Err(diffpost_core::Error::param(
                "channel_mult",
                format!(
                    "empty, and guided-diffusion has no default for image_size {s} \
                     (only 64, 128, 256): give it explicitly"
                ),
            )),
        }
    }

    /// Downsampling factors with attention (`image_size / res` for each attention resolution).
    pub fn attention_ds(&self) -> Vec<usize> {
        self.attention_resolutions
            .iter()
            .filter(|&&r| r > 0)
            .map(|&r| self.image_size / r)
            .collect()
    }

    /// Heads of an attention layer with `ch` channels (`upsample`: in the output blocks).
    pub(super) fn heads(&self, ch: usize, upsample: bool) -> usize {
        if self.num_head_channels > 0 {
            ch / self.num_head_channels as usize
        } else if upsample && self.num_heads_upsample > 0 {
            self.num_heads_upsample as usize
        } else {
            self.num_heads
        }
    }

    /// Checks the configuration, naming the offending field.
    pub fn validate(&self) -> diffpost_core::Result<()> {
        use diffpost_core::Error;
        positive(self.image_size, "image_size")?;
        positive(self.in_channels, "in_channels")?;
        positive(self.num_channels, "num_channels")?;
        positive(self.num_heads, "num_heads")?;
        if self.class_cond {
            return Err(Error::param(
                "class_cond",
                "class-conditional guided-diffusion models are not supported",
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::param("dropout", "must be in [0, 1)"));
        }
        if self.num_head_channels == 0 || self.num_head_channels < -1 {
            return Err(Error::param(
                "num_head_channels",
                "must be positive or -1 (use num_heads)",
            ));
        }
        if self.num_heads_upsample == 0 || self.num_heads_upsample < -1 {
            return Err(Error::param(
                "num_heads_upsample",
                "must be positive or -1 (use num_heads)",
            ));
        }
        for &r in &self.attention_resolutions {
            if r == 0 || !self.image_size.is_multiple_of(r) {
                return Err(Error::param(
                    "attention_resolutions",
                    format!(
                        "{r} does not divide image_size {} (create_model uses image_size / res)",
                        self.image_size
                    ),
                ));
            }
        }
        let mult = self.resolved_channel_mult()?;
        if mult.contains(&0) {
            return Err(Error::param("channel_mult", "entries must be positive"));
        }
        let ds_attn = self.attention_ds();
        let check_ch = |ch: usize, where_: &str, attn: bool, upsample: bool| {
            if !ch.is_multiple_of(GROUPS) {
                return Err(Error::param(
                    "num_channels",
                    format!(
                        "the {ch} channels of {where_} are not a multiple of GroupNorm's 32 groups"
                    ),
                ));
            }
            if attn {
                if self.num_head_channels > 0 {
                    if !ch.is_multiple_of(self.num_head_channels as usize) {
                        return Err(Error::param(
                            "num_head_channels",
                            format!(
                                "{} does not divide the {ch} channels of the attention in {where_}",
                                self.num_head_channels
                            ),
                        ));
                    }
                } else {
                    let heads = self.heads(ch, upsample);
                    if !ch.is_multiple_of(heads) {
                        let field = if upsample && self.num_heads_upsample > 0 {
                            "num_heads_upsample"
                        } else {
                            "num_heads"
                        };
                        return Err(Error::param(
                            field,
                            format!(
                                "{heads} heads do not divide the {ch} channels of the attention \
                                 in {where_}"
                            ),
                        ));
                    }
                }
            }
            Ok(())
        };
        let mut ds = 1;
        for (l, &m) in mult.iter().enumerate() {
            let ch = m * self.num_channels;
            let attn = ds_attn.contains(&ds);
            check_ch(ch, &format!("level {l}"), attn, false)?;
            check_ch(ch, &format!("level {l} (output blocks)"), attn, true)?;
            if l + 1 < mult.len() {
                ds *= 2;
            }
        }
        let mid = mult[mult.len() - 1] * self.num_channels;
        check_ch(mid, "the middle block", true, false)?;
        Ok(())
    }
}
