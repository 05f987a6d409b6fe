//! A small UNet `F(x, c_noise)` for `[B, C, H, W]` f32 images (the raw network inside EDM's
//! preconditioning, [`super::edm`]).
//!
//! Layout (DDPM++-like, Song et al. 2021; Karras et al. 2022, App. F, much smaller): Fourier
//! features of `c_noise` -> MLP -> embedding; `conv_in`; per level `num_res_blocks` residual blocks
//! (GroupNorm -> SiLU -> conv3x3, embedding added after the first conv, twice; 1x1 skip conv when
//! channels change) with self-attention at the listed resolutions, then a stride-2 conv; a middle
//! block (res, attention, res); the mirror path with `num_res_blocks + 1` blocks per level
//! consuming the skips, nearest x2 upsampling + conv3x3 between levels; GroupNorm -> SiLU ->
//! conv3x3 out. Odd sizes: stride-2 convs round up (`7 -> 4`), upsampling doubles then crops to
//! the skip's size (`4 -> 8 -> 7`), which keeps every op differentiable in candle.
//! Weights come through a `VarBuilder`, so this file never knows the file format.

use std::f64::consts::FRAC_1_SQRT_2;

use candle_core::{Device, Module, Result, Tensor, D};
use candle_nn::{linear, Linear, VarBuilder};

use super::kernels;
/// The fused attention block of the UNet's attention layers (f32 CPU), public for tests and
/// benchmarks: see [`attention_block`].
pub use super::kernels::{attention_block, pack_linear};
use super::layers::{
    add_scale, conv1, conv3, fused_kernel_switch, group_norm, positive, silu, Conv, Norm,
};
use serde::{Deserialize, Serialize};

/// Architecture of [`UNet`] (serde-ready: the CLI stores it as `model/config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UNetConfig {
    /// Image channels `C` (1 for MNIST).
    pub in_channels: usize,
    /// Training image size `[H, W]`; the net is convolutional but the denoiser uses this shape.
    pub image_size: [usize; 2],
    /// Channels of the first level.
    pub base_channels: usize,
    /// Channel multiplier per level (level `l` has `base_channels * channel_mults[l]` channels;
    /// the number of levels is its length).
    pub channel_mults: Vec<usize>,
    /// Residual blocks per level on the way down (`+1` on the way up).
    pub num_res_blocks: usize,
    /// Spatial sizes (the smaller side of the level's feature map, computed from `image_size`)
    /// at which residual blocks are followed by self-attention.
    pub attn_resolutions: Vec<usize>,
    /// Self-attention in the middle block.
    pub mid_attention: bool,
    /// Attention heads (must divide the channels of every attention layer).
    pub num_heads: usize,
    /// GroupNorm groups (must divide every channel count).
    pub groups: usize,
    /// Width of the noise embedding MLP.
    pub emb_dim: usize,
    /// Number of Fourier frequencies of `c_noise` (features: cos and sin of each).
    pub fourier_features: usize,
    /// EDM's `sigma_data` of the trained preconditioned model (0.5 for data in [-1, 1]).
    pub sigma_data: f64,
}

impl Default for UNetConfig {
    /// Small MNIST model (28x28x1, about 1.4M parameters): levels 28, 14, 7 with 32, 64, 64
    /// channels, one residual block per level, attention at 7x7.
    fn default() -> Self {
        Self {
            in_channels: 1,
            image_size: [28, 28],
            base_channels: 32,
            channel_mults: vec![1, 2, 2],
            num_res_blocks: 1,
            attn_resolutions: vec![7],
            mid_attention: true,
            num_heads: 1,
            groups: 8,
            emb_dim: 128,
            fourier_features: 32,
            sigma_data: 0.5,
        }
    }
}

impl UNetConfig {
    /// Spatial size `(h, w)` of each level for the configured `image_size` (stride-2 convs round up).
    pub fn level_sizes(&self) -> Vec<(usize, usize)> {
        let (mut h, mut w) = (self.image_size[0], self.image_size[1]);
        let mut out = Vec::with_capacity(self.channel_mults.len());
        for _ in 0..self.channel_mults.len() {
            out.push((h, w));
            h = h.div_ceil(2);
            w = w.div_ceil(2);
        }
        out
    }

    fn level_has_attention(&self, level: usize) -> bool {
        let (h, w) = self.level_sizes()[level];
        self.attn_resolutions.contains(&h.min(w))
    }

    /// Per-sample image shape `[C, H, W]`.
    pub fn image_shape(&self) -> [usize; 3] {
        [self.in_channels, self.image_size[0], self.image_size[1]]
    }

    /// Checks the configuration, naming the offending field.
    pub fn validate(&self) -> diffpost_core::Result<()> {
        use diffpost_core::Error;
        positive(self.in_channels, "in_channels")?;
        positive(self.image_size[0], "image_size")?;
        positive(self.image_size[1], "image_size")?;
        positive(self.base_channels, "base_channels")?;
        positive(self.groups, "groups")?;
        positive(self.num_heads, "num_heads")?;
        positive(self.emb_dim, "emb_dim")?;
        positive(self.fourier_features, "fourier_features")?;
        if self.channel_mults.is_empty() || self.channel_mults.contains(&0) {
            return Err(Error::param(
                "channel_mults",
                "must be non-empty with positive entries",
            ));
        }
        for (l, &m) in self.channel_mults.iter().enumerate() {
            let ch = self.base_channels * m;
            if !ch.is_multiple_of(self.groups) {
                return Err(Error::param(
                    "groups",
                    format!(
                        "{} does not divide the {ch} channels of level {l}",
                        self.groups
                    ),
                ));
            }
            if self.level_has_attention(l) && !ch.is_multiple_of(self.num_heads) {
                return Err(Error::param(
                    "num_heads",
                    format!(
                        "{} does not divide the {ch} channels of level {l}",
                        self.num_heads
                    ),
                ));
            }
        }
        let mid = self.base_channels * self.channel_mults[self.channel_mults.len() - 1];
        if self.mid_attention && !mid.is_multiple_of(self.num_heads) {
            return Err(Error::param(
                "num_heads",
                format!(
                    "{} does not divide the {mid} middle channels",
                    self.num_heads
                ),
            ));
        }
        if !(self.sigma_data.is_finite() && self.sigma_data > 0.0) {
            return Err(Error::param("sigma_data", "must be finite and positive"));
        }
        Ok(())
    }
}

/// GroupNorm -> SiLU -> conv3x3 (+ embedding) -> GroupNorm -> SiLU -> conv3x3, plus the skip.
#[derive(Debug, Clone)]
struct ResBlock {
    norm1: Norm,
    conv1: Conv,
    emb: Linear,
    norm2: Norm,
    conv2: Conv,
    skip: Option<Conv>,
}

impl ResBlock {
    fn new(cin: usize, cout: usize, cfg: &UNetConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: group_norm(cfg.groups, cin, vb.pp("norm1"))?,
            conv1: conv3(cin, cout, 1, vb.pp("conv1"))?,
            emb: linear(cfg.emb_dim, cout, vb.pp("emb"))?,
            norm2: group_norm(cfg.groups, cout, vb.pp("norm2"))?,
            conv2: conv3(cout, cout, 1, vb.pp("conv2"))?,
            skip: if cin != cout {
                Some(conv1(cin, cout, vb.pp("skip"))?)
            } else {
                None
            },
        })
    }

    /// `emb`: the activated noise embedding `[B, emb_dim]`.
    fn forward(&self, x: &Tensor, emb: &Tensor, fused: bool) -> Result<Tensor> {
        let e = self.emb.forward(emb)?;
        let h = self
            .conv1
            .forward_add(&self.norm1.forward(x, true, fused)?, &e, fused)?;
        let h = self
            .conv2
            .forward(&self.norm2.forward(&h, true, fused)?, fused)?;
        let skip = match &self.skip {
            Some(s) => s.forward(x, fused)?,
            None => x.clone(),
        };
        // EDM's skip scaling keeps activations at unit scale through the stack.
        add_scale(&skip, &h, FRAC_1_SQRT_2, fused)
    }
}

/// Multi-head self-attention over the `H*W` positions (matmul + softmax: candle has no CPU sdpa).
#[derive(Debug, Clone)]
struct Attention {
    norm: Norm,
    qkv: Linear,
    proj: Linear,
    heads: usize,
}

impl Attention {
    fn new(ch: usize, cfg: &UNetConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: group_norm(cfg.groups, ch, vb.pp("norm"))?,
            qkv: linear(ch, 3 * ch, vb.pp("qkv"))?,
            proj: linear(ch, ch, vb.pp("proj"))?,
            heads: cfg.num_heads,
        })
    }

    fn forward(&self, x: &Tensor, fused: bool) -> Result<Tensor> {
        if fused && kernels::supported(x) {
            let (wq, bq) = (self.qkv.weight(), self.qkv.bias());
            let (wp, bp) = (self.proj.weight(), self.proj.bias());
            if let (Some(bq), Some(bp)) = (bq, bp) {
                let t = self.norm.forward(x, false, fused)?;
                let o =
                    attention_block(&t, &pack_linear(wq, bq)?, &pack_linear(wp, bp)?, self.heads)?;
                return add_scale(x, &o, FRAC_1_SQRT_2, fused);
            }
        }
        let (b, c, h, w) = x.dims4()?;
        let n = h * w;
        let hd = c / self.heads;
        let t = self
            .norm
            .forward(x, false, fused)?
            .reshape((b, c, n))?
            .transpose(1, 2)?
            .contiguous()?;
        let qkv = self.qkv.forward(&t)?; // [B, N, 3C]
        let split = |i: usize| -> Result<Tensor> {
            qkv.narrow(2, i * c, c)?
                .reshape((b, n, self.heads, hd))?
                .transpose(1, 2)?
                .contiguous()
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?); // [B, heads, N, hd]
        let att = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        let att = candle_nn::ops::softmax(&att, D::Minus1)?;
        let o = att.matmul(&v)?.transpose(1, 2)?.reshape((b, n, c))?;
        let o = self
            .proj
            .forward(&o)?
            .transpose(1, 2)?
            .reshape((b, c, h, w))?;
        add_scale(x, &o, FRAC_1_SQRT_2, fused)
    }
}

#[derive(Debug, Clone)]
struct Level {
    blocks: Vec<(ResBlock, Option<Attention>)>,
    /// Stride-2 conv (down path) or nearest x2 + conv3x3 (up path); absent at the last level.
    resample: Option<Conv>,
}

/// The raw network `F(x, c_noise)`: `x: [B, C, H, W]` f32, `c_noise: [B]` f32 -> `[B, C, H, W]`.
#[derive(Debug, Clone)]
pub struct UNet {
    cfg: UNetConfig,
    /// Fourier frequencies `[1, F]`.
    freqs: Tensor,
    emb_fc1: Linear,
    emb_fc2: Linear,
    conv_in: Conv,
    down: Vec<Level>,
    mid1: ResBlock,
    mid_attn: Option<Attention>,
    mid2: ResBlock,
    /// Up levels, deepest first.
    up: Vec<Level>,
    norm_out: Norm,
    conv_out: Conv,
    /// Use the fused CPU kernels ([`kernels`]) where they apply (default).
    fused: bool,
}

/// Lowest and highest Fourier frequency (radians per unit of `c_noise = ln(sigma)/4`; over the
/// trained range `c_noise` spans about 2.7 units).
const FREQ_MIN: f64 = 0.5;
const FREQ_MAX: f64 = 50.0;

impl UNet {
    /// Builds the network, taking its weights from `vb` (names like `down.0.res.0.conv1.weight`).
    pub fn new(cfg: &UNetConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()
            .map_err(|e| candle_core::Error::Msg(format!("invalid UNet config: {e}")))?;
        let dev = vb.device().clone();
        let nf = cfg.fourier_features;
        let freqs: Vec<f32> = (0..nf)
            .map(|i| {
                let t = if nf > 1 {
                    i as f64 / (nf - 1) as f64
                } else {
                    0.0
                };
                (FREQ_MIN.ln() + t * (FREQ_MAX.ln() - FREQ_MIN.ln())).exp() as f32
            })
            .collect();
        let freqs = Tensor::from_vec(freqs, (1, nf), &dev)?;
        let emb_fc1 = linear(2 * nf, cfg.emb_dim, vb.pp("emb.fc1"))?;
        let emb_fc2 = linear(cfg.emb_dim, cfg.emb_dim, vb.pp("emb.fc2"))?;

        let chans: Vec<usize> = cfg
            .channel_mults
            .iter()
            .map(|m| m * cfg.base_channels)
            .collect();
        let nl = chans.len();
        let conv_in = conv3(cfg.in_channels, cfg.base_channels, 1, vb.pp("conv_in"))?;
        let mut skips = vec![cfg.base_channels];
        let mut ch = cfg.base_channels;
        let mut down = Vec::with_capacity(nl);
        for (l, &cout) in chans.iter().enumerate() {
            let vbl = vb.pp(format!("down.{l}"));
            let mut blocks = Vec::new();
            for r in 0..cfg.num_res_blocks {
                let res = ResBlock::new(ch, cout, cfg, vbl.pp(format!("res.{r}")))?;
                ch = cout;
                let attn = if cfg.level_has_attention(l) {
                    Some(Attention::new(ch, cfg, vbl.pp(format!("attn.{r}")))?)
                } else {
                    None
                };
                blocks.push((res, attn));
                skips.push(ch);
            }
            let resample = if l + 1 < nl {
                skips.push(ch);
                Some(conv3(ch, ch, 2, vbl.pp("downsample"))?)
            } else {
                None
            };
            down.push(Level { blocks, resample });
        }
        let mid1 = ResBlock::new(ch, ch, cfg, vb.pp("mid.res1"))?;
        let mid_attn = if cfg.mid_attention {
            Some(Attention::new(ch, cfg, vb.pp("mid.attn"))?)
        } else {
            None
        };
        let mid2 = ResBlock::new(ch, ch, cfg, vb.pp("mid.res2"))?;
        let mut up = Vec::with_capacity(nl);
        for l in (0..nl).rev() {
            let vbl = vb.pp(format!("up.{l}"));
            let cout = chans[l];
            let mut blocks = Vec::new();
            for r in 0..cfg.num_res_blocks + 1 {
                let skip = skips.pop().expect("one skip per down block");
                let res = ResBlock::new(ch + skip, cout, cfg, vbl.pp(format!("res.{r}")))?;
                ch = cout;
                let attn = if cfg.level_has_attention(l) {
                    Some(Attention::new(ch, cfg, vbl.pp(format!("attn.{r}")))?)
                } else {
                    None
                };
                blocks.push((res, attn));
            }
            let resample = if l > 0 {
                Some(conv3(ch, ch, 1, vbl.pp("upsample"))?)
            } else {
                None
            };
            up.push(Level { blocks, resample });
        }
        debug_assert!(skips.is_empty());
        let norm_out = group_norm(cfg.groups, ch, vb.pp("norm_out"))?;
        let conv_out = conv3(ch, cfg.in_channels, 1, vb.pp("conv_out"))?;
        Ok(Self {
            cfg: cfg.clone(),
            freqs,
            emb_fc1,
            emb_fc2,
            conv_in,
            down,
            mid1,
            mid_attn,
            mid2,
            up,
            norm_out,
            conv_out,
            fused: true,
        })
    }

    fused_kernel_switch!();

    /// The architecture.
    pub fn config(&self) -> &UNetConfig {
        &self.cfg
    }

    /// Activated noise embedding `[B, emb_dim]` from `c_noise: [B]`.
    fn embed(&self, c_noise: &Tensor) -> Result<Tensor> {
        let b = c_noise.dim(0)?;
        let arg = c_noise
            .to_dtype(self.freqs.dtype())?
            .reshape((b, 1))?
            .broadcast_mul(&self.freqs)?;
        let feats = Tensor::cat(&[arg.cos()?, arg.sin()?], 1)?;
        let f = self.fused;
        silu(
            &self
                .emb_fc2
                .forward(&silu(&self.emb_fc1.forward(&feats)?, f)?)?,
            f,
        )
    }

    /// `F(x, c_noise)`: `x: [B, C, H, W]` f32 (any `H, W >= 1`), `c_noise: [B]`.
    pub fn forward(&self, x: &Tensor, c_noise: &Tensor) -> Result<Tensor> {
        let (b, c, _, _) = x.dims4()?;
        if c != self.cfg.in_channels {
            candle_core::bail!("UNet expects {} channels, got {c}", self.cfg.in_channels)
        }
        if c_noise.dims() != [b] {
            candle_core::bail!("c_noise must have shape [{b}], got {:?}", c_noise.dims())
        }
        let f = self.fused;
        let emb = self.embed(c_noise)?;
        let mut h = self.conv_in.forward(x, f)?;
        let mut skips = vec![h.clone()];
        for level in &self.down {
            for (res, attn) in &level.blocks {
                h = res.forward(&h, &emb, f)?;
                if let Some(a) = attn {
                    h = a.forward(&h, f)?;
                }
                skips.push(h.clone());
            }
            if let Some(conv) = &level.resample {
                h = conv.forward(&h, f)?;
                skips.push(h.clone());
            }
        }
        h = self.mid1.forward(&h, &emb, f)?;
        if let Some(a) = &self.mid_attn {
            h = a.forward(&h, f)?;
        }
        h = self.mid2.forward(&h, &emb, f)?;
        for level in &self.up {
            for (res, attn) in &level.blocks {
                let skip = skips.pop().expect("one skip per up block");
                h = res.forward(&Tensor::cat(&[&h, &skip], 1)?, &emb, f)?;
                if let Some(a) = attn {
                    h = a.forward(&h, f)?;
                }
            }
            if let Some(conv) = &level.resample {
                // Nearest x2, then crop to the next skip's size (odd sizes: 4 -> 8 -> 7).
                let (_, _, th, tw) = skips.last().expect("skip for the next level").dims4()?;
                let (_, _, hh, hw) = h.dims4()?;
                if f && kernels::supported(&h) && th <= 2 * hh && tw <= 2 * hw {
                    h = kernels::upsample2_crop(&h, th, tw)?;
                } else {
                    h = super::layers::upsample2_nearest(&h)?;
                    if 2 * hh != th || 2 * hw != tw {
                        h = h.narrow(2, 0, th)?.narrow(3, 0, tw)?;
                    }
                }
                h = conv.forward(&h, f)?;
            }
        }
        self.conv_out
            .forward(&self.norm_out.forward(&h, true, f)?, f)
    }
}

/// Number of parameters of the architecture (builds it once with zero weights on the CPU).
pub fn param_count(cfg: &UNetConfig) -> diffpost_core::Result<usize> {
    let store = super::params::SeededParams::new(0);
    UNet::new(cfg, store.var_builder(&Device::Cpu))?;
    Ok(store.num_params())
}

/// A freshly initialised network (seeded, reproducible) and its trainable variables, sorted by name.
pub fn init_unet(
    cfg: &UNetConfig,
    seed: u64,
    device: &Device,
) -> diffpost_core::Result<(UNet, Vec<(String, candle_core::Var)>)> {
    let store = super::params::SeededParams::new(seed);
    let net = UNet::new(cfg, store.var_builder(device))?;
    Ok((net, store.vars()))
}
