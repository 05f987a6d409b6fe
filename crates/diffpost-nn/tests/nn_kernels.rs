//! The fused CPU kernels (`diffpost_nn::kernels`) against candle's own ops: forward values and
//! gradients of every argument, and the whole UNet with and without them.

use candle_core::{Device, Tensor, Var};
use diffpost_nn::{init_unet, kernels, UNetConfig};

/// Deterministic pseudo-random values in about [-scale, scale] (+ offset).
fn rnd(shape: &[usize], seed: u64, scale: f32, offset: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            offset + scale * (2.0 * ((s >> 40) as f32 / (1u64 << 24) as f32) - 1.0)
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// `max |a - b| / max |b|` (relative to the reference's scale).
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let d = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let m = b
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    d / m.max(1e-12)
}

fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f32) {
    let e = rel_err(a, b);
    assert!(e <= tol, "{what}: relative error {e:e} > {tol:e}");
}

/// Value and gradients (w.r.t. `vars`) of `sum(f(vars) * r)` for a fixed random `r`.
fn value_and_grads(
    vars: &[Var],
    f: impl Fn(&[Tensor]) -> Tensor,
    seed: u64,
) -> (Tensor, Vec<Tensor>) {
    let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = f(&ts);
    let r = rnd(out.dims(), seed, 1.0, 0.0);
    let g = (&out * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let grads = vars
        .iter()
        .map(|v| g.get(v).expect("gradient").clone())
        .collect();
    (out.detach(), grads)
}

fn vars(ts: &[Tensor]) -> Vec<Var> {
    ts.iter().map(|t| Var::from_tensor(t).unwrap()).collect()
}

fn check_pair(
    what: &str,
    inputs: &[Tensor],
    fused: impl Fn(&[Tensor]) -> Tensor,
    reference: impl Fn(&[Tensor]) -> Tensor,
    tol: f32,
) {
    let (a, ga) = value_and_grads(&vars(inputs), fused, 99);
    let (b, gb) = value_and_grads(&vars(inputs), reference, 99);
    assert_close(&format!("{what} forward"), &a, &b, tol);
    for (i, (x, y)) in ga.iter().zip(&gb).enumerate() {
        assert_close(&format!("{what} gradient of argument {i}"), x, y, tol);
    }
}

#[test]
fn group_norm_matches_candle() {
    for &(b, c, h, w, groups) in &[
        (2, 16, 7, 9, 4),
        (3, 32, 28, 28, 8),
        (1, 8, 1, 1, 8),
        (2, 6, 5, 3, 1),
    ] {
        for silu in [false, true] {
            let x = rnd(&[b, c, h, w], 1 + c as u64, 2.0, 0.7);
            let g = rnd(&[c], 2, 0.5, 1.0);
            let be = rnd(&[c], 3, 0.5, 0.0);
            check_pair(
                &format!("group_norm {b}x{c}x{h}x{w}/{groups} silu={silu}"),
                &[x, g, be],
                |t| kernels::group_norm(&t[0], &t[1], &t[2], groups, 1e-5, silu).unwrap(),
                |t| {
                    let gn = candle_nn::GroupNorm::new(t[1].clone(), t[2].clone(), c, groups, 1e-5)
                        .unwrap();
                    let y = candle_core::Module::forward(&gn, &t[0]).unwrap();
                    if silu {
                        y.silu().unwrap()
                    } else {
                        y
                    }
                },
                1e-4,
            );
        }
    }
}

#[test]
fn silu_matches_candle_including_extremes() {
    let mut x = rnd(&[5, 1000], 7, 10.0, 0.0);
    let ext = Tensor::new(
        &[[
            -200f32, -90.0, -87.5, -30.0, 0.0, 1e-8, 30.0, 87.5, 90.0, 200.0,
        ]],
        &Device::Cpu,
    )
    .unwrap();
    x = Tensor::cat(&[x.flatten_all().unwrap(), ext.flatten_all().unwrap()], 0).unwrap();
    check_pair(
        "silu",
        &[x],
        |t| kernels::silu(&t[0]).unwrap(),
        |t| t[0].silu().unwrap(),
        1e-5,
    );
}

#[test]
fn add_scale_matches_candle() {
    let a = rnd(&[3, 4, 5, 6], 11, 1.0, 0.0);
    let b = rnd(&[3, 4, 5, 6], 12, 1.0, 0.5);
    check_pair(
        "add_scale",
        &[a, b],
        |t| kernels::add_scale(&t[0], &t[1], 0.7).unwrap(),
        |t| ((&t[0] + &t[1]).unwrap() * 0.7).unwrap(),
        1e-6,
    );
}

fn reference_conv(t: &[Tensor], stride: usize, pad: usize) -> Tensor {
    let y = t[0].conv2d(&t[1], pad, stride, 1, 1).unwrap();
    let (b, c, _, _) = y.dims4().unwrap();
    let bias = if t[2].rank() == 1 {
        t[2].reshape((1, c, 1, 1)).unwrap()
    } else {
        t[2].reshape((b, c, 1, 1)).unwrap()
    };
    y.broadcast_add(&bias).unwrap()
}

/// `(batch, cin, cout, h, w, k, stride, pad, per-sample bias)`
type ConvCase = (usize, usize, usize, usize, usize, usize, usize, usize, bool);

/// Forward and every gradient of `kernels::conv2d` against candle's conv for each case (random
/// inputs from seeds `seed + i`, `seed + 20 + i`, `seed + 40 + i`).
fn check_conv_cases(label: &str, seed: u64, cases: &[ConvCase]) {
    for (i, &(b, cin, cout, h, w, k, stride, pad, per_sample)) in cases.iter().enumerate() {
        let x = rnd(&[b, cin, h, w], seed + i as u64, 1.0, 0.1);
        let wt = rnd(&[cout, cin, k, k], seed + 20 + i as u64, 0.3, 0.0);
        let bias = if per_sample {
            rnd(&[b, cout], seed + 40 + i as u64, 0.5, 0.0)
        } else {
            rnd(&[cout], seed + 40 + i as u64, 0.5, 0.0)
        };
        check_pair(
            &format!("{label} case {i}"),
            &[x, wt, bias],
            |t| kernels::conv2d(&t[0], &t[1], &t[2], stride, pad).unwrap(),
            |t| reference_conv(t, stride, pad),
            1e-4,
        );
    }
}

#[test]
fn conv2d_matches_candle() {
    // (batch, cin, cout, h, w, k, stride, pad, per-sample bias)
    let cases = [
        (2, 3, 5, 8, 8, 3, 1, 1, false),
        (3, 4, 6, 7, 7, 3, 2, 1, false), // odd size: 7 -> 4
        (1, 4, 6, 14, 14, 3, 2, 1, true),
        (4, 8, 4, 5, 6, 1, 1, 0, false), // pointwise
        (1, 8, 4, 5, 6, 1, 1, 0, true),
        (2, 2, 3, 1, 1, 3, 1, 1, true), // 1x1 image
        (3, 32, 32, 28, 28, 3, 1, 1, true),
        (2, 3, 2, 9, 7, 5, 2, 2, false),
        (2, 3, 2, 9, 7, 3, 1, 0, false), // no padding: 9x7 -> 7x5
    ];
    check_conv_cases("conv2d", 20, &cases);
}

#[test]
fn upsample2_crop_matches_candle() {
    for &(h, w, th, tw) in &[(3, 3, 6, 6), (4, 4, 7, 7), (3, 5, 5, 9), (1, 1, 1, 2)] {
        let x = rnd(&[2, 3, h, w], 5, 1.0, 0.0);
        check_pair(
            &format!("upsample2_crop {h}x{w} -> {th}x{tw}"),
            &[x],
            |t| kernels::upsample2_crop(&t[0], th, tw).unwrap(),
            // The crop as a gather: candle's own narrow backward is exercised by the UNet test.
            |t| {
                let up = t[0].upsample_nearest2d(2 * h, 2 * w).unwrap();
                let rows = Tensor::arange(0u32, th as u32, &Device::Cpu).unwrap();
                let cols = Tensor::arange(0u32, tw as u32, &Device::Cpu).unwrap();
                up.index_select(&rows, 2)
                    .unwrap()
                    .index_select(&cols, 3)
                    .unwrap()
            },
            1e-6,
        );
    }
}

/// Non-square odd sizes (11x9 -> 6x5 -> 3x3 and back): both paths differentiate (candle 0.11's
/// `upsample_nearest2d` failed here in backward; the candle path now upsamples by a broadcast)
/// and agree in value and input gradient.
#[test]
fn unet_handles_non_square_odd_sizes_on_both_paths() {
    let (net, params) = init_unet(&small_cfg(), 5, &Device::Cpu).unwrap();
    let c_noise = Tensor::new(&[-0.8f32, 0.3], &Device::Cpu).unwrap();
    let mut outs = Vec::new();
    for fused in [true, false] {
        let net = net.clone().with_fused_kernels(fused);
        let x = Var::from_tensor(&rnd(&[2, 1, 11, 9], 8, 1.5, 0.0)).unwrap();
        let y = net.forward(x.as_tensor(), &c_noise).unwrap();
        assert_eq!(y.dims(), [2, 1, 11, 9]);
        let g = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        for (name, v) in &params {
            assert!(g.get(v).is_some(), "fused {fused}: no gradient for {name}");
        }
        outs.push((y, g.get(&x).unwrap().clone()));
    }
    assert_close("non-square forward", &outs[0].0, &outs[1].0, 1e-4);
    assert_close("non-square input gradient", &outs[0].1, &outs[1].1, 1e-3);
}

#[test]
fn conv2d_skips_input_gradient_of_constants() {
    // Data without a graph (as in training's first conv): only weight and bias get gradients.
    let x = rnd(&[2, 1, 6, 6], 1, 1.0, 0.0);
    let w = Var::from_tensor(&rnd(&[4, 1, 3, 3], 2, 0.3, 0.0)).unwrap();
    let b = Var::from_tensor(&rnd(&[4], 3, 0.3, 0.0)).unwrap();
    let g = kernels::conv2d(&x, w.as_tensor(), b.as_tensor(), 1, 1)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(g.get(&w).is_some() && g.get(&b).is_some());
}

fn small_cfg() -> UNetConfig {
    UNetConfig {
        in_channels: 1,
        image_size: [12, 12],
        base_channels: 8,
        channel_mults: vec![1, 2, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![3],
        mid_attention: true,
        num_heads: 2,
        groups: 4,
        emb_dim: 16,
        fourier_features: 4,
        sigma_data: 0.5,
    }
}

#[test]
fn unet_fused_matches_candle_path() {
    let cfg = small_cfg();
    let dev = Device::Cpu;
    let (net, params) = init_unet(&cfg, 5, &dev).unwrap();
    assert!(net.fused_kernels());
    let reference = net.clone().with_fused_kernels(false);
    // Odd size too: exercises the stride-2 rounding and the upsample crop.
    for (b, h, w) in [(3, 12, 12), (2, 11, 11)] {
        let x = Var::from_tensor(&rnd(&[b, 1, h, w], 8, 1.5, 0.0)).unwrap();
        let c_noise = Tensor::new(&[-0.8f32, 0.3, 1.1][..b], &dev).unwrap();
        let r = rnd(&[b, 1, h, w], 9, 1.0, 0.0);
        let run = |n: &diffpost_nn::UNet| {
            let y = n.forward(x.as_tensor(), &c_noise).unwrap();
            let g = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
            let gx = g.get(&x).unwrap().clone();
            let gp: Vec<Tensor> = params
                .iter()
                .map(|(name, v)| {
                    g.get(v)
                        .unwrap_or_else(|| panic!("no gradient for {name}"))
                        .clone()
                })
                .collect();
            (y.detach(), gx, gp)
        };
        let (ya, gxa, gpa) = run(&net);
        let (yb, gxb, gpb) = run(&reference);
        assert_close("unet forward", &ya, &yb, 1e-4);
        assert_close("unet input gradient", &gxa, &gxb, 2e-4);
        for ((name, _), (a, b)) in params.iter().zip(gpa.iter().zip(&gpb)) {
            assert_close(&format!("unet gradient of {name}"), a, b, 5e-4);
        }
    }
}

/// The UNet's attention block as candle ops (the unfused path of `unet.rs`).
fn reference_attention(
    t: &Tensor,
    wq: &Tensor,
    bq: &Tensor,
    wp: &Tensor,
    bp: &Tensor,
    heads: usize,
) -> Tensor {
    let (b, c, h, w) = t.dims4().unwrap();
    let n = h * w;
    let hd = c / heads;
    let x = t
        .reshape((b, c, n))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap();
    let qkv = x
        .broadcast_matmul(&wq.t().unwrap())
        .unwrap()
        .broadcast_add(bq)
        .unwrap();
    let split = |i: usize| {
        qkv.narrow(2, i * c, c)
            .unwrap()
            .reshape((b, n, heads, hd))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let (q, k, v) = (split(0), split(1), split(2));
    let att = (q.matmul(&k.t().unwrap()).unwrap() * (1.0 / (hd as f64).sqrt())).unwrap();
    let att = candle_nn::ops::softmax(&att, candle_core::D::Minus1).unwrap();
    let o = att
        .matmul(&v)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((b, n, c))
        .unwrap();
    o.broadcast_matmul(&wp.t().unwrap())
        .unwrap()
        .broadcast_add(bp)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .reshape((b, c, h, w))
        .unwrap()
}

#[test]
fn attention_block_matches_candle() {
    use diffpost_nn::unet::{attention_block, pack_linear};
    for &(b, c, h, w, heads) in &[
        (2, 8, 3, 3, 1),
        (3, 16, 7, 7, 2),
        (1, 12, 2, 5, 3),
        (2, 4, 1, 1, 1),
    ] {
        let t = rnd(&[b, c, h, w], 30 + c as u64, 1.5, 0.2);
        let wq = rnd(&[3 * c, c], 31, 0.4, 0.0);
        let bq = rnd(&[3 * c], 32, 0.3, 0.0);
        let wp = rnd(&[c, c], 33, 0.4, 0.0);
        let bp = rnd(&[c], 34, 0.3, 0.0);
        check_pair(
            &format!("attention {b}x{c}x{h}x{w}, {heads} heads"),
            &[t, wq, bq, wp, bp],
            |a| {
                attention_block(
                    &a[0],
                    &pack_linear(&a[1], &a[2]).unwrap(),
                    &pack_linear(&a[3], &a[4]).unwrap(),
                    heads,
                )
                .unwrap()
            },
            |a| reference_attention(&a[0], &a[1], &a[2], &a[3], &a[4], heads),
            1e-4,
        );
    }
}

/// Per-sample affine GroupNorm (the folded scale-shift of guided-diffusion) against candle's
/// GroupNorm followed by the per-sample affine map.
#[test]
fn group_norm_per_sample_affine_matches_candle() {
    for &(b, c, h, w, groups) in &[(3, 16, 5, 4, 4), (2, 8, 1, 1, 2)] {
        for silu in [false, true] {
            let x = rnd(&[b, c, h, w], 50 + c as u64, 2.0, -0.4);
            let g = rnd(&[b, c], 51, 0.5, 1.0);
            let be = rnd(&[b, c], 52, 0.5, 0.0);
            check_pair(
                &format!("group_norm per-sample affine {b}x{c}x{h}x{w}/{groups} silu={silu}"),
                &[x, g, be],
                |t| kernels::group_norm(&t[0], &t[1], &t[2], groups, 1e-5, silu).unwrap(),
                |t| {
                    let one = Tensor::ones(c, candle_core::DType::F32, &Device::Cpu).unwrap();
                    let zero = Tensor::zeros(c, candle_core::DType::F32, &Device::Cpu).unwrap();
                    let gn = candle_nn::GroupNorm::new(one, zero, c, groups, 1e-5).unwrap();
                    let y = candle_core::Module::forward(&gn, &t[0])
                        .unwrap()
                        .broadcast_mul(&t[1].reshape((b, c, 1, 1)).unwrap())
                        .unwrap()
                        .broadcast_add(&t[2].reshape((b, c, 1, 1)).unwrap())
                        .unwrap();
                    if silu {
                        y.silu().unwrap()
                    } else {
                        y
                    }
                },
                1e-4,
            );
        }
    }
}

/// The conv kernel's tiling paths: several whole samples per GEMM (small images, large batch,
/// uneven last tile), images cut into pixel ranges (larger than one tile's im2col budget, odd
/// sizes, stride 1 and 2), 1x1 per sample; forward and all gradients against candle.
#[test]
fn conv2d_tiled_paths_match_candle() {
    // (batch, cin, cout, h, w, k, stride, pad, per-sample bias)
    let cases = [
        (8, 5, 3, 7, 7, 3, 1, 1, true),      // batched tiles
        (9, 4, 6, 9, 9, 3, 2, 1, false),     // batched, stride 2, uneven tiles
        (9, 12, 7, 5, 3, 3, 1, 1, true),     // batched, gather input gradient
        (2, 16, 3, 101, 97, 3, 1, 1, true),  // pixel-range tiles, odd size
        (1, 64, 2, 101, 97, 3, 2, 1, false), // pixel ranges, stride 2 (col2im by range)
        (2, 24, 5, 67, 61, 1, 1, 0, true),   // 1x1 per sample
    ];
    check_conv_cases("conv2d tiled", 120, &cases);
}

/// The fused stride-1 backward (one im2col of the output gradient gives both the input and the
/// weight gradient) at other geometries: no padding, 5x5 with padding 2 and 1, non-square,
/// batched and pixel-range tiles, a tile count that does not divide the batch evenly.
#[test]
fn conv2d_fused_backward_geometries_match_candle() {
    // (batch, cin, cout, h, w, k, stride, pad, per-sample bias)
    let cases = [
        (5, 8, 6, 9, 7, 3, 1, 0, false),    // valid conv: 9x7 -> 7x5
        (3, 9, 4, 8, 11, 5, 1, 2, true),    // 5x5 "same"
        (2, 10, 3, 12, 9, 5, 1, 1, false),  // 5x5, output smaller than the input
        (7, 16, 9, 14, 14, 3, 1, 1, true),  // batched tiles, odd batch
        (1, 40, 2, 120, 90, 3, 1, 1, true), // pixel ranges of one sample
    ];
    check_conv_cases("conv2d fused backward", 220, &cases);
}

/// The Winograd F(2x2, 3x3) path (3x3, stride 1, padding 1, at least 8 channels in and out,
/// images of at least 10x10; the backward too from 64 output channels): forward, input gradient
/// (the same transforms on the flipped kernel) and weight gradient against candle, at even, odd
/// and non-square sizes, several samples per chunk, images cut into tile-row chunks, and both
/// bias kinds.
#[test]
fn conv2d_winograd_paths_match_candle() {
    // (batch, cin, cout, h, w, 3x3, stride 1, padding 1, per-sample bias)
    let cases = [
        (5, 8, 8, 11, 11, 3, 1, 1, false), // odd size, several samples per chunk
        (3, 16, 24, 13, 10, 3, 1, 1, true), // odd height, non-square
        (2, 12, 16, 28, 28, 3, 1, 1, false), // even size, one sample per chunk
        (4, 8, 64, 14, 14, 3, 1, 1, true), // Winograd backward
        (3, 24, 64, 11, 17, 3, 1, 1, false), // Winograd backward, odd, non-square
        (1, 32, 64, 75, 61, 3, 1, 1, true), // tile-row chunks of one image, both passes
    ];
    check_conv_cases("conv2d winograd", 320, &cases);
}

/// The Winograd weight gradient alone (an input without a graph, so no input gradient).
#[test]
fn conv2d_winograd_weight_gradient_of_constant_input() {
    let x = rnd(&[3, 16, 11, 10], 400, 1.0, 0.0);
    let ws = rnd(&[64, 16, 3, 3], 401, 0.3, 0.0);
    let bs = rnd(&[64], 402, 0.3, 0.0);
    let r = rnd(&[3, 64, 11, 10], 403, 1.0, 0.0);
    let grads = |f: &dyn Fn(&Tensor, &Tensor) -> Tensor| {
        let (w, b) = (
            Var::from_tensor(&ws).unwrap(),
            Var::from_tensor(&bs).unwrap(),
        );
        let g = (f(w.as_tensor(), b.as_tensor()) * &r)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        (g.get(&w).unwrap().clone(), g.get(&b).unwrap().clone())
    };
    let (gw, gb) = grads(&|w, b| kernels::conv2d(&x, w, b, 1, 1).unwrap());
    let (rw, rb) = grads(&|w, b| reference_conv(&[x.clone(), w.clone(), b.clone()], 1, 1));
    assert_close("winograd weight gradient", &gw, &rw, 1e-4);
    assert_close("winograd bias gradient", &gb, &rb, 1e-4);
}
