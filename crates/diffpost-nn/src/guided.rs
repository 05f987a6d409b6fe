//! The UNet of OpenAI's guided-diffusion (ADM, Dhariwal & Nichol 2021), as used by DPS
//! (Chung et al. 2023, `ffhq_10m.pt`) and OpenAI's `256x256_diffusion_uncond.pt`.
//!
//! [`GuidedUNetConfig`] ([`super::guided_config`], re-exported here) carries guided-diffusion's
//! `create_model` arguments (same names, so a `model_config.yaml` translates field by field);
//! [`GuidedUNet`] reads its weights through a
//! `VarBuilder` under exactly guided-diffusion's state-dict names (`time_embed.0.weight`,
//! `input_blocks.1.0.in_layers.2.weight`, `middle_block.1.qkv.weight`, `out.2.bias`, ...), so a
//! converted checkpoint (safetensors of the `.pt` state dict, f16 or f32) loads without renaming.
//!
//! Semantics follow guided-diffusion's `UNetModel.forward`: sinusoidal `timestep_embedding`
//! (fractional timesteps allowed) -> `time_embed` MLP; `input_blocks` (conv, then per level
//! `num_res_blocks` `ResBlock`s with optional attention, then a stride-2 conv or a `down`
//! ResBlock); `middle_block` (res, attention, res); `output_blocks` consuming the skips (the last
//! block of a level upsamples: nearest x2 + conv, or an `up` ResBlock); GroupNorm32 -> SiLU ->
//! conv. GroupNorm has 32 groups and eps 1e-5; attention is `QKVAttentionLegacy` (heads split
//! before q/k/v) or, with `use_new_attention_order`, `QKVAttention` (q/k/v split first).
//! Dropout is the identity (inference) and `use_fp16` is ignored: the model runs in the
//! `VarBuilder`'s dtype (f32 for the fused CPU kernels). Class-conditional models are rejected.
//!
//! Convs, GroupNorm (+ SiLU), SiLU and the residual sums run the fused CPU kernels of
//! [`super::kernels`] on f32 CPU tensors (default) and candle's own ops elsewhere or when
//! [`GuidedUNet::with_fused_kernels`] turns them off; everything stays differentiable (DPS
//! backpropagates through the network).

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::{linear, Linear, VarBuilder};

use super::guided_config::GROUPS;
pub use super::guided_config::{GuidedUNetConfig, GUIDED_PRESETS};
use super::kernels;
use super::layers::{
    add_scale, conv1, conv3, fused_kernel_switch, group_norm, silu, softmax_last_dim, Conv, Norm,
};

/// Convolution with kernel size 1 over `[B, C, T]` (guided-diffusion's `conv_nd(1, ...)` of the
/// attention: weight `[Cout, Cin, 1]`), applied to `[B, C, H, W]` as a 1x1 conv2d.
#[derive(Debug, Clone)]
struct Conv1x1 {
    /// `[Cout, Cin, 1, 1]`.
    weight: Tensor,
    bias: Tensor,
}

impl Conv1x1 {
    fn new(cin: usize, cout: usize, vb: VarBuilder) -> Result<Self> {
        let init = candle_nn::init::DEFAULT_KAIMING_NORMAL;
        let weight = vb.get_with_hints((cout, cin, 1), "weight", init)?;
        let bound = 1.0 / (cin as f64).sqrt();
        let bias = vb.get_with_hints(
            cout,
            "bias",
            candle_nn::Init::Uniform {
                lo: -bound,
                up: bound,
            },
        )?;
        Ok(Self {
            weight: weight.reshape((cout, cin, 1, 1))?,
            bias,
        })
    }

    fn forward(&self, x: &Tensor, fused: bool) -> Result<Tensor> {
        if fused && kernels::supported(x) {
            kernels::conv2d(x, &self.weight, &self.bias, 1, 0)
        } else {
            let cout = self.bias.dim(0)?;
            x.conv2d(&self.weight, 0, 1, 1, 1)?
                .broadcast_add(&self.bias.reshape((1, cout, 1, 1))?)
        }
    }
}

/// Nearest-neighbour x2 upsampling of `[B, C, H, W]`.
///
/// Off the fused path this is a broadcast, not candle's `upsample_nearest2d`: the backward of the
/// latter (candle 0.11) overwrites the input's gradient instead of adding to it, which is wrong
/// when the input has other consumers (the `up` ResBlock upsamples `x` and also normalises it).
fn upsample2(x: &Tensor, fused: bool) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if fused && kernels::supported(x) {
        kernels::upsample2_crop(x, 2 * h, 2 * w)
    } else {
        super::layers::upsample2_nearest(x)
    }
}

/// The parameter-free resampling of an `updown` ResBlock (`Upsample`/`Downsample` with
/// `use_conv=False`: nearest x2, or 2x2 average pooling).
#[derive(Debug, Clone, Copy, PartialEq)]
enum UpDown {
    None,
    Up,
    Down,
}

impl UpDown {
    fn apply(self, x: &Tensor, fused: bool) -> Result<Tensor> {
        match self {
            UpDown::None => Ok(x.clone()),
            UpDown::Up => upsample2(x, fused),
            UpDown::Down => x.avg_pool2d(2),
        }
    }
}

/// guided-diffusion's `ResBlock`: `in_layers` (GroupNorm, SiLU, conv3x3), the embedding
/// (`emb_layers`: SiLU, Linear) added or applied as scale-shift, `out_layers` (GroupNorm, SiLU,
/// dropout, conv3x3), and the skip (identity or 1x1 conv).
#[derive(Debug, Clone)]
struct ResBlock {
    in_norm: Norm,
    in_conv: Conv,
    emb: Linear,
    out_norm: Norm,
    out_conv: Conv,
    skip: Option<Conv>,
    updown: UpDown,
    scale_shift: bool,
    cout: usize,
}

impl ResBlock {
    fn new(
        cin: usize,
        cout: usize,
        emb_dim: usize,
        cfg: &GuidedUNetConfig,
        updown: UpDown,
        vb: VarBuilder,
    ) -> Result<Box<Self>> {
        let scale_shift = cfg.use_scale_shift_norm;
        Ok(Box::new(Self {
            in_norm: group_norm(GROUPS, cin, vb.pp("in_layers.0"))?,
            in_conv: conv3(cin, cout, 1, vb.pp("in_layers.2"))?,
            emb: linear(
                emb_dim,
                if scale_shift { 2 * cout } else { cout },
                vb.pp("emb_layers.1"),
            )?,
            out_norm: group_norm(GROUPS, cout, vb.pp("out_layers.0"))?,
            out_conv: conv3(cout, cout, 1, vb.pp("out_layers.3"))?,
            skip: if cin != cout {
                Some(conv1(cin, cout, vb.pp("skip_connection"))?)
            } else {
                None
            },
            updown,
            scale_shift,
            cout,
        }))
    }

    /// `emb_act`: `SiLU(time_embed(...))`, `[B, 4 * model_channels]` (the SiLU of `emb_layers`,
    /// shared by every block).
    fn forward(&self, x: &Tensor, emb_act: &Tensor, fused: bool) -> Result<Tensor> {
        let e = self.emb.forward(emb_act)?;
        let h = self.in_norm.forward(x, true, fused)?;
        let (h, x) = if self.updown == UpDown::None {
            (h, x.clone())
        } else {
            (self.updown.apply(&h, fused)?, self.updown.apply(x, fused)?)
        };
        let h = if self.scale_shift {
            let h = self.in_conv.forward(&h, fused)?;
            let scale = e.narrow(1, 0, self.cout)?;
            let shift = e.narrow(1, self.cout, self.cout)?;
            self.out_norm
                .forward_scale_shift(&h, &scale, &shift, true, fused)?
        } else {
            let h = self.in_conv.forward_add(&h, &e, fused)?;
            self.out_norm.forward(&h, true, fused)?
        };
        let h = self.out_conv.forward(&h, fused)?;
        let skip = match &self.skip {
            Some(s) => s.forward(&x, fused)?,
            None => x,
        };
        add_scale(&skip, &h, 1.0, fused)
    }
}

/// guided-diffusion's `AttentionBlock`: GroupNorm, `qkv` (1x1 conv to `3C`), multi-head
/// attention over the `H*W` positions, `proj_out` (1x1 conv), residual.
#[derive(Debug, Clone)]
struct AttentionBlock {
    norm: Norm,
    qkv: Conv1x1,
    proj_out: Conv1x1,
    heads: usize,
    new_order: bool,
}

impl AttentionBlock {
    fn new(ch: usize, heads: usize, new_order: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm: group_norm(GROUPS, ch, vb.pp("norm"))?,
            qkv: Conv1x1::new(ch, 3 * ch, vb.pp("qkv"))?,
            proj_out: Conv1x1::new(ch, ch, vb.pp("proj_out"))?,
            heads,
            new_order,
        })
    }

    fn forward(&self, x: &Tensor, fused: bool) -> Result<Tensor> {
        let (b, c, hh, ww) = x.dims4()?;
        let t = hh * ww;
        let nh = self.heads;
        let ch = c / nh;
        let qkv = self
            .qkv
            .forward(&self.norm.forward(x, false, fused)?, fused)?
            .reshape((b, 3 * c, t))?;
        // [B * heads, ch, T] each.
        let (q, k, v) = if self.new_order {
            // QKVAttention: q, k, v = qkv.chunk(3, dim=1), then heads.
            let part = |i: usize| -> Result<Tensor> {
                qkv.narrow(1, i * c, c)?
                    .contiguous()?
                    .reshape((b * nh, ch, t))
            };
            (part(0)?, part(1)?, part(2)?)
        } else {
            // QKVAttentionLegacy: heads first, then q, k, v.
            let r = qkv.reshape((b * nh, 3 * ch, t))?;
            (
                r.narrow(1, 0, ch)?,
                r.narrow(1, ch, ch)?,
                r.narrow(1, 2 * ch, ch)?.contiguous()?,
            )
        };
        let scale = 1.0 / (ch as f64).sqrt().sqrt();
        let q = (q * scale)?.t()?.contiguous()?; // [BH, T, ch]
        let k = (k * scale)?.contiguous()?; // [BH, ch, T]
        let w = q.matmul(&k)?; // [BH, T(t), T(s)]
        let w = if w.dtype() == DType::F32 {
            softmax_last_dim(&w)?
        } else {
            softmax_last_dim(&w.to_dtype(DType::F32)?)?.to_dtype(w.dtype())?
        };
        // a[b, c, t] = sum_s w[b, t, s] v[b, c, s]
        let a = v.matmul(&w.t()?)?.reshape((b, c, hh, ww))?;
        let h = self.proj_out.forward(&a, fused)?;
        add_scale(x, &h, 1.0, fused)
    }
}

/// One layer of a `TimestepEmbedSequential`.
#[derive(Debug, Clone)]
enum Layer {
    Conv(Conv),
    Res(Box<ResBlock>),
    Attn(AttentionBlock),
    /// `Downsample` with `use_conv` (`op`: stride-2 conv3x3).
    Down(Conv),
    /// `Upsample` with `use_conv` (nearest x2, then `conv`).
    Up(Conv),
}

impl Layer {
    fn forward(&self, x: &Tensor, emb_act: &Tensor, fused: bool) -> Result<Tensor> {
        match self {
            Layer::Conv(c) | Layer::Down(c) => c.forward(x, fused),
            Layer::Res(r) => r.forward(x, emb_act, fused),
            Layer::Attn(a) => a.forward(x, fused),
            Layer::Up(c) => c.forward(&upsample2(x, fused)?, fused),
        }
    }
}

type Block = Vec<Layer>;

fn run_block(block: &Block, x: &Tensor, emb_act: &Tensor, fused: bool) -> Result<Tensor> {
    let mut h = x.clone();
    for layer in block {
        h = layer.forward(&h, emb_act, fused)?;
    }
    Ok(h)
}

/// guided-diffusion's `UNetModel` (unconditional): `forward(x, t)` returns the raw output
/// `[B, out_channels, H, W]` (eps, then with `learn_sigma` the variance channels).
#[derive(Debug, Clone)]
pub struct GuidedUNet {
    cfg: GuidedUNetConfig,
    /// `exp(-ln(10000) i / half)`, `[1, half]` (f32, as guided-diffusion computes it).
    freqs: Tensor,
    time_fc1: Linear,
    time_fc2: Linear,
    input_blocks: Vec<Block>,
    middle_block: Block,
    output_blocks: Vec<Block>,
    out_norm: Norm,
    out_conv: Conv,
    /// Number of levels (the input size must be divisible by `2^(levels - 1)`).
    levels: usize,
    fused: bool,
}

impl GuidedUNet {
    /// Builds the network, taking its weights from `vb` under guided-diffusion's state-dict names.
    pub fn new(cfg: &GuidedUNetConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(|e| {
            candle_core::Error::Msg(format!("invalid guided-diffusion UNet config: {e}"))
        })?;
        let mult = cfg
            .resolved_channel_mult()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let mc = cfg.num_channels;
        let emb_dim = 4 * mc;
        let attn_ds = cfg.attention_ds();

        let half = mc / 2;
        let neg_ln = -(10000f64.ln()) as f32;
        let freqs: Vec<f32> = (0..half)
            .map(|i| (neg_ln * i as f32 / half as f32).exp())
            .collect();
        let freqs = Tensor::from_vec(freqs, (1, half), vb.device())?;
        let time_fc1 = linear(mc, emb_dim, vb.pp("time_embed.0"))?;
        let time_fc2 = linear(emb_dim, emb_dim, vb.pp("time_embed.2"))?;

        // A plain residual block and an attention block (the heads differ on the way up).
        let res = |cin: usize, cout: usize, vb: VarBuilder| {
            Ok::<_, candle_core::Error>(Layer::Res(ResBlock::new(
                cin,
                cout,
                emb_dim,
                cfg,
                UpDown::None,
                vb,
            )?))
        };
        let attn = |ch: usize, up: bool, vb: VarBuilder| {
            Ok::<_, candle_core::Error>(Layer::Attn(AttentionBlock::new(
                ch,
                cfg.heads(ch, up),
                cfg.use_new_attention_order,
                vb,
            )?))
        };
        let vbi = vb.pp("input_blocks");
        let mut ch = mult[0] * mc;
        let input_ch = ch;
        let mut input_blocks: Vec<Block> = vec![vec![Layer::Conv(conv3(
            cfg.in_channels,
            ch,
            1,
            vbi.pp("0.0"),
        )?)]];
        let mut chans = vec![ch];
        let mut ds = 1;
        for (level, &m) in mult.iter().enumerate() {
            for _ in 0..cfg.num_res_blocks {
                let vbb = vbi.pp(input_blocks.len());
                let cout = m * mc;
                let mut layers = vec![res(ch, cout, vbb.pp("0"))?];
                ch = cout;
                if attn_ds.contains(&ds) {
                    layers.push(attn(ch, false, vbb.pp("1"))?);
                }
                input_blocks.push(layers);
                chans.push(ch);
            }
            if level + 1 != mult.len() {
                let vbb = vbi.pp(input_blocks.len()).pp("0");
                let layer = if cfg.resblock_updown {
                    Layer::Res(ResBlock::new(ch, ch, emb_dim, cfg, UpDown::Down, vbb)?)
                } else {
                    Layer::Down(conv3(ch, ch, 2, vbb.pp("op"))?)
                };
                input_blocks.push(vec![layer]);
                chans.push(ch);
                ds *= 2;
            }
        }

        let vbm = vb.pp("middle_block");
        let middle_block = vec![
            res(ch, ch, vbm.pp("0"))?,
            attn(ch, false, vbm.pp("1"))?,
            res(ch, ch, vbm.pp("2"))?,
        ];

        let vbo = vb.pp("output_blocks");
        let mut output_blocks: Vec<Block> = Vec::new();
        for (level, &m) in mult.iter().enumerate().rev() {
            for i in 0..=cfg.num_res_blocks {
                let vbb = vbo.pp(output_blocks.len());
                let ich = chans.pop().expect("one skip per input block");
                let cout = m * mc;
                let mut layers = vec![res(ch + ich, cout, vbb.pp("0"))?];
                ch = cout;
                if attn_ds.contains(&ds) {
                    layers.push(attn(ch, true, vbb.pp("1"))?);
                }
                if level > 0 && i == cfg.num_res_blocks {
                    let vbl = vbb.pp(layers.len());
                    layers.push(if cfg.resblock_updown {
                        Layer::Res(ResBlock::new(ch, ch, emb_dim, cfg, UpDown::Up, vbl)?)
                    } else {
                        Layer::Up(conv3(ch, ch, 1, vbl.pp("conv"))?)
                    });
                    ds /= 2;
                }
                output_blocks.push(layers);
            }
        }
        debug_assert!(chans.is_empty());
        let out_norm = group_norm(GROUPS, ch, vb.pp("out.0"))?;
        let out_conv = conv3(input_ch, cfg.out_channels(), 1, vb.pp("out.2"))?;
        Ok(Self {
            cfg: cfg.clone(),
            freqs,
            time_fc1,
            time_fc2,
            input_blocks,
            middle_block,
            output_blocks,
            out_norm,
            out_conv,
            levels: mult.len(),
            fused: true,
        })
    }

    fused_kernel_switch!();

    /// The architecture.
    pub fn config(&self) -> &GuidedUNetConfig {
        &self.cfg
    }

    /// guided-diffusion's `timestep_embedding(t, model_channels)`: `[B, model_channels]`,
    /// `cat[cos(t f), sin(t f)]` (a zero column when the width is odd).
    pub fn timestep_embedding(&self, timesteps: &Tensor) -> Result<Tensor> {
        let b = timesteps.dim(0)?;
        let args = timesteps
            .to_dtype(DType::F32)?
            .reshape((b, 1))?
            .broadcast_mul(&self.freqs)?;
        let mut parts = vec![args.cos()?, args.sin()?];
        if self.cfg.num_channels % 2 == 1 {
            parts.push(Tensor::zeros((b, 1), DType::F32, args.device())?);
        }
        Tensor::cat(&parts, 1)
    }

    /// The raw model output `[B, out_channels, H, W]` for `x: [B, in_channels, H, W]` (H and W
    /// divisible by `2^(levels - 1)`) and `timesteps: [B]` (fractional values allowed).
    pub fn forward(&self, x: &Tensor, timesteps: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        if c != self.cfg.in_channels {
            candle_core::bail!(
                "guided UNet expects {} channels, got {c}",
                self.cfg.in_channels
            )
        }
        if timesteps.dims() != [b] {
            candle_core::bail!(
                "timesteps must have shape [{b}], got {:?}",
                timesteps.dims()
            )
        }
        let f = 1usize << (self.levels - 1);
        if h == 0 || w == 0 || !h.is_multiple_of(f) || !w.is_multiple_of(f) {
            candle_core::bail!(
                "guided UNet with {} levels needs H and W divisible by {f}, got {h}x{w}",
                self.levels
            )
        }
        let fused = self.fused;
        let dtype = self.freqs.dtype();
        let temb = self.timestep_embedding(timesteps)?.to_dtype(dtype)?;
        let emb = self
            .time_fc2
            .forward(&silu(&self.time_fc1.forward(&temb)?, fused)?)?;
        let emb_act = silu(&emb, fused)?;

        let mut hs = Vec::with_capacity(self.input_blocks.len());
        let mut h = x.to_dtype(dtype)?;
        for block in &self.input_blocks {
            h = run_block(block, &h, &emb_act, fused)?;
            hs.push(h.clone());
        }
        h = run_block(&self.middle_block, &h, &emb_act, fused)?;
        for block in &self.output_blocks {
            let skip = hs.pop().expect("one skip per output block");
            h = Tensor::cat(&[&h, &skip], 1)?;
            h = run_block(block, &h, &emb_act, fused)?;
        }
        self.out_conv
            .forward(&self.out_norm.forward(&h, true, fused)?, fused)
    }
}
