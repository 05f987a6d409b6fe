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
//! The configuration, [`UNet2DConfig`], lives in [`super::diffusers_config`] (re-exported here).
//! Dropout is ignored (inference). Weights come through a `VarBuilder`; old checkpoints with the
//! deprecated attention names go through [`rename_deprecated_attention`] first.

use std::collections::HashMap;

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};

use super::diffusers_config::block_name;
pub use super::diffusers_config::{UNet2DConfig, PRESETS};
use super::kernels;
use super::layers::{
    add_scale, conv1, conv3, conv_k, fused_kernel_switch, group_norm_eps, silu, Conv, Norm,
};

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
