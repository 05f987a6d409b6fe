//! The candle side of the PyTorch comparison (`tools/bench_unet_torch.py`): loads a model directory
//! (`config.json` + `weights.safetensors`), writes a fixed input and its outputs to
//! `/tmp/unet_parity.safetensors` for the Python parity check, then times (median of `--repeats`
//! after warm-up, fused kernels on) the raw network `F(x, c_noise)` at batch 16, the preconditioned
//! `D(x, sigma)` at batch 16 and one `Trainer::step` at the config's batch size (starting from the
//! shipped weights), and prints one JSON line. `--profile` adds a per-op breakdown of the forward
//! (the network re-run op by op on the public kernels) and of the training step (forward + loss,
//! backward, and Adam + EMA written with candle ops: `Trainer::step` updates in place, faster).
//! Threads: rayon's (`RAYON_NUM_THREADS`); `CANDLE_NUM_THREADS=1` unless set, as in the binary.
//! `DIFFPOST_CONV=im2col` times the convolutions without the Winograd path.
//!
//! `cargo run --release -p diffpost-nn --example bench_unet -- models/mnist [--repeats 25] [--profile]
//! [--train-only]` (`--train-only`: skips the forward timings, e.g. under `perf record`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Module, Tensor, Var, D};
use candle_nn::{Linear, VarBuilder};
use diffpost_core::rng::SampleStreams;
use diffpost_nn::pretrained::read_json;
use diffpost_nn::{
    edm_loss_weight, kernels, load_images_npy, precond_forward, TrainConfig, Trainer, UNet,
    UNetConfig,
};

type Res<T> = std::result::Result<T, Box<dyn std::error::Error>>;

// ---------------------------------------------------------------------------------------------
// The model folder's `config.json`, as `diffpost train` writes it.

#[derive(serde::Deserialize)]
struct ModelFile {
    model: UNetConfig,
    #[serde(default)]
    train: TrainConfig,
}

fn read_config(dir: &Path) -> Res<(UNetConfig, TrainConfig)> {
    let f: ModelFile = read_json(&dir.join("config.json"), "model config")?;
    Ok((f.model, f.train))
}

// ---------------------------------------------------------------------------------------------
// Timing helpers.

fn median_ms(repeats: usize, warmup: usize, mut f: impl FnMut() -> Res<()>) -> Res<(f64, f64)> {
    for _ in 0..warmup {
        f()?;
    }
    let mut ts = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let t0 = Instant::now();
        f()?;
        ts.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    ts.sort_by(f64::total_cmp);
    let n = ts.len();
    if n == 0 {
        return Ok((f64::NAN, f64::NAN));
    }
    let med = if n % 2 == 1 {
        ts[n / 2]
    } else {
        0.5 * (ts[n / 2 - 1] + ts[n / 2])
    };
    Ok((med, ts[0]))
}

/// Accumulated time per op category.
#[derive(Default)]
struct Prof {
    ms: BTreeMap<&'static str, (f64, usize)>,
    /// Every convolution run: input shape, weight name, stride.
    convs: Vec<(Vec<usize>, String, usize)>,
}

impl Prof {
    fn t<T>(&mut self, k: &'static str, f: impl FnOnce() -> candle_core::Result<T>) -> Res<T> {
        let t0 = Instant::now();
        let out = f()?;
        let e = self.ms.entry(k).or_default();
        e.0 += t0.elapsed().as_secs_f64() * 1e3;
        e.1 += 1;
        Ok(out)
    }
}

// ---------------------------------------------------------------------------------------------
// The forward pass again, op by op on the public kernels (same ops as `UNet::forward` with the
// fused kernels), timed per category. Checked against `UNet::forward`.

struct OpByOp<'a> {
    w: &'a HashMap<String, Tensor>,
    cfg: &'a UNetConfig,
}

impl OpByOp<'_> {
    fn p(&self, name: &str) -> candle_core::Result<&Tensor> {
        self.w
            .get(name)
            .ok_or_else(|| candle_core::Error::Msg(format!("no weight {name}")))
    }

    fn conv(&self, pr: &mut Prof, name: &str, x: &Tensor, stride: usize) -> Res<Tensor> {
        let w = self.p(&format!("{name}.weight"))?;
        let b = self.p(&format!("{name}.bias"))?;
        let k = w.dim(3)?;
        let cat = match (k, stride) {
            (1, _) => "conv1x1 (skip)",
            (_, 2) => "conv3x3 stride 2",
            _ => "conv3x3",
        };
        pr.convs.push((x.dims().to_vec(), name.to_string(), stride));
        pr.t(cat, || kernels::conv2d(x, w, b, stride, k / 2))
    }

    fn gn(&self, pr: &mut Prof, name: &str, x: &Tensor, silu: bool) -> Res<Tensor> {
        let w = self.p(&format!("{name}.weight"))?;
        let b = self.p(&format!("{name}.bias"))?;
        let g = self.cfg.groups;
        pr.t(
            if silu {
                "group_norm+silu"
            } else {
                "group_norm (attn)"
            },
            || kernels::group_norm(x, w, b, g, 1e-5, silu),
        )
    }

    fn lin(&self, name: &str) -> candle_core::Result<Linear> {
        Ok(Linear::new(
            self.p(&format!("{name}.weight"))?.clone(),
            Some(self.p(&format!("{name}.bias"))?.clone()),
        ))
    }

    fn res(&self, pr: &mut Prof, name: &str, x: &Tensor, emb: &Tensor) -> Res<Tensor> {
        let lin = self.lin(&format!("{name}.emb"))?;
        let e = pr.t("embedding (linear, per block)", || lin.forward(emb))?;
        let h = self.gn(pr, &format!("{name}.norm1"), x, true)?;
        pr.convs
            .push((h.dims().to_vec(), format!("{name}.conv1"), 1));
        let w = self.p(&format!("{name}.conv1.weight"))?;
        let b = self.p(&format!("{name}.conv1.bias"))?;
        let h = pr.t("conv3x3", || {
            let bias = e.broadcast_add(&b.unsqueeze(0)?)?;
            kernels::conv2d(&h, w, &bias, 1, 1)
        })?;
        let h = self.gn(pr, &format!("{name}.norm2"), &h, true)?;
        let h = self.conv(pr, &format!("{name}.conv2"), &h, 1)?;
        let skip = if self.w.contains_key(&format!("{name}.skip.weight")) {
            self.conv(pr, &format!("{name}.skip"), x, 1)?
        } else {
            x.clone()
        };
        pr.t("add_scale (residual)", || {
            kernels::add_scale(&skip, &h, std::f64::consts::FRAC_1_SQRT_2)
        })
    }

    fn attn(&self, pr: &mut Prof, name: &str, x: &Tensor) -> Res<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let n = h * w;
        let heads = self.cfg.num_heads;
        let hd = c / heads;
        let t = self.gn(pr, &format!("{name}.norm"), x, false)?;
        let t = pr.t("attention: layout copies", || {
            t.reshape((b, c, n))?.transpose(1, 2)?.contiguous()
        })?;
        let qkv_l = self.lin(&format!("{name}.qkv"))?;
        let qkv = pr.t("attention: qkv/proj linear", || qkv_l.forward(&t))?;
        let (q, k, v) = pr.t("attention: layout copies", || {
            let split = |i: usize| {
                qkv.narrow(2, i * c, c)?
                    .reshape((b, n, heads, hd))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            Ok((split(0)?, split(1)?, split(2)?))
        })?;
        let att = pr.t("attention: matmuls + softmax", || {
            let att = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
            candle_nn::ops::softmax(&att, D::Minus1)?.matmul(&v)
        })?;
        let o = pr.t("attention: layout copies", || {
            att.transpose(1, 2)?.reshape((b, n, c))
        })?;
        let proj = self.lin(&format!("{name}.proj"))?;
        let o = pr.t("attention: qkv/proj linear", || proj.forward(&o))?;
        let o = pr.t("attention: layout copies", || {
            o.transpose(1, 2)?.reshape((b, c, h, w))
        })?;
        pr.t("add_scale (residual)", || {
            kernels::add_scale(x, &o, std::f64::consts::FRAC_1_SQRT_2)
        })
    }

    fn forward(&self, pr: &mut Prof, x: &Tensor, c_noise: &Tensor) -> Res<Tensor> {
        let cfg = self.cfg;
        let nf = cfg.fourier_features;
        let emb = pr.t("noise embedding (Fourier + MLP)", || {
            let freqs: Vec<f32> = (0..nf)
                .map(|i| {
                    let t = if nf > 1 {
                        i as f64 / (nf - 1) as f64
                    } else {
                        0.0
                    };
                    (0.5f64.ln() + t * (50f64.ln() - 0.5f64.ln())).exp() as f32
                })
                .collect();
            let freqs = Tensor::from_vec(freqs, (1, nf), x.device())?;
            let arg = c_noise
                .reshape((c_noise.dim(0)?, 1))?
                .broadcast_mul(&freqs)?;
            let feats = Tensor::cat(&[arg.cos()?, arg.sin()?], 1)?;
            let h = kernels::silu(&self.lin("emb.fc1")?.forward(&feats)?)?;
            kernels::silu(&self.lin("emb.fc2")?.forward(&h)?)
        })?;
        let nl = cfg.channel_mults.len();
        let sizes = cfg.level_sizes();
        let has_attn = |l: usize| cfg.attn_resolutions.contains(&sizes[l].0.min(sizes[l].1));
        let mut h = self.conv(pr, "conv_in", x, 1)?;
        let mut skips = vec![h.clone()];
        for l in 0..nl {
            for r in 0..cfg.num_res_blocks {
                h = self.res(pr, &format!("down.{l}.res.{r}"), &h, &emb)?;
                if has_attn(l) {
                    h = self.attn(pr, &format!("down.{l}.attn.{r}"), &h)?;
                }
                skips.push(h.clone());
            }
            if l + 1 < nl {
                h = self.conv(pr, &format!("down.{l}.downsample"), &h, 2)?;
                skips.push(h.clone());
            }
        }
        h = self.res(pr, "mid.res1", &h, &emb)?;
        if cfg.mid_attention {
            h = self.attn(pr, "mid.attn", &h)?;
        }
        h = self.res(pr, "mid.res2", &h, &emb)?;
        for l in (0..nl).rev() {
            for r in 0..cfg.num_res_blocks + 1 {
                let skip = skips.pop().ok_or("skips")?;
                let hc = pr.t("cat (skip connections)", || Tensor::cat(&[&h, &skip], 1))?;
                h = self.res(pr, &format!("up.{l}.res.{r}"), &hc, &emb)?;
                if has_attn(l) {
                    h = self.attn(pr, &format!("up.{l}.attn.{r}"), &h)?;
                }
            }
            if l > 0 {
                let (_, _, th, tw) = skips.last().ok_or("skips")?.dims4()?;
                h = pr.t("upsample2+crop", || kernels::upsample2_crop(&h, th, tw))?;
                h = self.conv(pr, &format!("up.{l}.upsample"), &h, 1)?;
            }
        }
        let h = self.gn(pr, "norm_out", &h, true)?;
        self.conv(pr, "conv_out", &h, 1)
    }
}

// ---------------------------------------------------------------------------------------------

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Res<f64> {
    Ok((a - b)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_dtype(DType::F64)?
        .to_scalar::<f64>()?)
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // As the `diffpost` binary does: candle's spinning elementwise pool off, unless set.
    diffpost_core::sysalloc::quiet_candle_pool();
    // As the `diffpost` binary does (`--default-malloc` to measure glibc's defaults instead).
    let tuned = !args.iter().any(|a| a == "--default-malloc")
        && diffpost_core::sysalloc::tune_for_large_arrays();
    eprintln!("allocator tuned for large arrays: {tuned}");
    let mut dir = PathBuf::from("models/mnist");
    let mut repeats = 25usize;
    let mut warmup = 5usize;
    let mut profile = false;
    let mut train_only = false;
    let mut data_path = PathBuf::from("data/mnist_test256.npy");
    let mut parity_path = PathBuf::from("/tmp/unet_parity.safetensors");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--repeats" => repeats = it.next().ok_or("--repeats N")?.parse()?,
            "--warmup" => warmup = it.next().ok_or("--warmup N")?.parse()?,
            "--profile" => profile = true,
            "--train-only" => train_only = true,
            "--default-malloc" => {}
            "--data" => data_path = it.next().ok_or("--data FILE")?.into(),
            "--parity" => parity_path = it.next().ok_or("--parity FILE")?.into(),
            s if !s.starts_with("--") => dir = PathBuf::from(s),
            s => return Err(format!("unknown option {s}").into()),
        }
    }
    let dev = Device::Cpu;
    let (cfg, tcfg) = read_config(&dir)?;
    let weights = candle_core::safetensors::load(dir.join("weights.safetensors"), &dev)?;
    let vb = VarBuilder::from_tensors(weights.clone(), DType::F32, &dev);
    let unet = UNet::new(&cfg, vb)?; // fused kernels on (the default)
    let sd = cfg.sigma_data;
    let [c, h, w] = cfg.image_shape();

    // Fixed input: x ~ N(0, I) (sample streams 0..16 of seed 1), sigmas log-spaced 0.01..50.
    let bsz = 16;
    let x = SampleStreams::range(1, bsz)
        .randn(&[c, h, w], &dev)?
        .to_dtype(DType::F32)?;
    let sigmas: Vec<f64> = (0..bsz)
        .map(|i| (0.01f64.ln() + (i as f64 / (bsz - 1) as f64) * (50f64.ln() - 0.01f64.ln())).exp())
        .collect();
    let c_noise = Tensor::from_vec(
        sigmas
            .iter()
            .map(|s| (s.ln() / 4.0) as f32)
            .collect::<Vec<_>>(),
        bsz,
        &dev,
    )?;
    let raw = unet.forward(&x, &c_noise)?;
    let den = precond_forward(&unet, &x, &sigmas, sd)?;
    let parity: HashMap<String, Tensor> = [
        ("x", x.clone()),
        ("sigmas", Tensor::from_vec(sigmas.clone(), bsz, &dev)?),
        ("c_noise", c_noise.clone()),
        ("raw", raw.clone()),
        ("denoised", den.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    candle_core::safetensors::save(&parity, &parity_path)?;
    eprintln!("wrote {}", parity_path.display());

    // `--train-only` (for `perf record`): the training step alone.
    let fwd_repeats = if train_only { 0 } else { repeats };
    let fwd_warmup = if train_only { 0 } else { warmup };
    let (fwd, fwd_min) = median_ms(fwd_repeats, fwd_warmup, || {
        unet.forward(&x, &c_noise)?;
        Ok(())
    })?;
    let (dn, dn_min) = median_ms(fwd_repeats, fwd_warmup, || {
        precond_forward(&unet, &x, &sigmas, sd)?;
        Ok(())
    })?;

    // Training: `Trainer::step` from the shipped weights (a checkpoint with them, Adam state zero).
    let data = load_images_npy(&data_path)?;
    let mut tr = Trainer::new(cfg.clone(), tcfg.clone(), &data, &dev)?;
    let ck = std::env::temp_dir().join(format!("bench_unet_ck_{}", std::process::id()));
    tr.save_checkpoint(&ck)?;
    let ck_file = ck.join(diffpost_nn::train::CHECKPOINT_FILE);
    let mut map = candle_core::safetensors::load(&ck_file, &dev)?;
    for (name, t) in &weights {
        for prefix in ["model", "ema"] {
            let key = format!("{prefix}.{name}");
            if !map.contains_key(&key) {
                return Err(format!("trainer has no parameter {name}").into());
            }
            map.insert(key, t.clone());
        }
    }
    candle_core::safetensors::save(&map, &ck_file)?;
    tr.resume(&ck)?;
    std::fs::remove_dir_all(&ck)?;
    let (ts, ts_min) = median_ms(repeats, warmup, || {
        tr.step()?;
        Ok(())
    })?;

    // JSON has no NaN: timings not taken (`--train-only`) are null.
    let ms = |v: f64| {
        if v.is_finite() {
            format!("{v:.3}")
        } else {
            "null".into()
        }
    };
    let (fwd, fwd_min, dn, dn_min) = (ms(fwd), ms(fwd_min), ms(dn), ms(dn_min));
    println!(
        "{{\"impl\": \"candle\", \"threads\": {}, \"params\": {}, \"repeats\": {repeats}, \
         \"forward_b16_ms\": {fwd}, \"forward_b16_min_ms\": {fwd_min}, \
         \"denoise_b16_ms\": {dn}, \"denoise_b16_min_ms\": {dn_min}, \
         \"train_step_b{}_ms\": {ts:.3}, \"train_step_min_ms\": {ts_min:.3}}}",
        rayon::current_num_threads(),
        tr.num_params(),
        tcfg.batch_size
    );

    if profile {
        // Forward, op by op.
        let ops = OpByOp {
            w: &weights,
            cfg: &cfg,
        };
        let mut pr = Prof::default();
        let y = ops.forward(&mut pr, &x, &c_noise)?;
        let diff = max_abs_diff(&y, &raw)?;
        if diff > 1e-4 {
            return Err(format!("op-by-op forward differs from UNet::forward by {diff}").into());
        }
        let mut pr = Prof::default();
        let n = repeats;
        let t0 = Instant::now();
        for _ in 0..n {
            ops.forward(&mut pr, &x, &c_noise)?;
        }
        let total = t0.elapsed().as_secs_f64() * 1e3 / n as f64;
        println!(
            "== candle forward b16, op by op ({n} runs; matches UNet::forward to {diff:.1e}) =="
        );
        let mut rows: Vec<_> = pr.ms.iter().collect();
        rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
        for (k, (ms, cnt)) in rows {
            println!(
                "{k:<34} {:8.2} ms/forward {:5.1}%  ({} calls/forward)",
                ms / n as f64,
                100.0 * ms / n as f64 / total,
                cnt / n
            );
        }
        println!("{:<34} {total:8.2} ms/forward", "total");

        // Training step, by phase (the same computation as `Trainer::step`, composed here).
        let vars: Vec<(String, Var)> = {
            let mut v: Vec<_> = weights
                .iter()
                .map(|(k, t)| Ok((k.clone(), Var::from_tensor(t)?)))
                .collect::<candle_core::Result<_>>()?;
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let vmap: HashMap<String, Tensor> = vars
            .iter()
            .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
            .collect();
        let model = UNet::new(&cfg, VarBuilder::from_tensors(vmap, DType::F32, &dev))?;
        let bs = tcfg.batch_size;
        let mut adam_m: Vec<Tensor> = vars
            .iter()
            .map(|(_, v)| v.as_tensor().zeros_like())
            .collect::<candle_core::Result<_>>()?;
        let mut adam_v = adam_m.clone();
        let mut ema: Vec<Tensor> = vars
            .iter()
            .map(|(_, v)| v.as_tensor().copy())
            .collect::<candle_core::Result<_>>()?;
        let mut phases: BTreeMap<&str, f64> = BTreeMap::new();
        let nd = data.dim(0)?;
        for step in 0..(warmup + n) {
            let mut tick = Instant::now();
            let mut lap = |phases: &mut BTreeMap<&str, f64>, k: &'static str| {
                if step >= warmup {
                    *phases.entry(k).or_default() += tick.elapsed().as_secs_f64() * 1e3;
                }
                tick = Instant::now();
            };
            let first = (step * bs) as u64;
            let mut streams = SampleStreams::new(99, first..first + bs as u64);
            let idx: Vec<u32> = streams
                .uniform_vec()
                .iter()
                .map(|u| ((u * nd as f64) as usize).min(nd - 1) as u32)
                .collect();
            let draws = streams.normal_vec(1 + c * h * w);
            let mut sig = Vec::with_capacity(bs);
            let mut noise = Vec::with_capacity(bs * c * h * w);
            for row in draws.chunks(1 + c * h * w) {
                sig.push((tcfg.p_mean + tcfg.p_std * row[0]).exp());
                noise.extend(row[1..].iter().map(|&z| z as f32));
            }
            let y = data.index_select(&Tensor::from_vec(idx, bs, &dev)?, 0)?;
            let noise = Tensor::from_vec(noise, (bs, c, h, w), &dev)?;
            lap(&mut phases, "1 batch draw");
            let sg = Tensor::from_vec(
                sig.iter().map(|&s| s as f32).collect::<Vec<_>>(),
                (bs, 1, 1, 1),
                &dev,
            )?;
            let xb = (&y + noise.broadcast_mul(&sg)?)?;
            let d = precond_forward(&model, &xb, &sig, sd)?;
            let per = (d - &y)?.sqr()?.flatten_from(1)?.mean(1)?;
            let lw = Tensor::from_vec(
                sig.iter()
                    .map(|&s| edm_loss_weight(s, sd) as f32)
                    .collect::<Vec<_>>(),
                bs,
                &dev,
            )?;
            let loss = (per * lw)?.mean_all()?;
            let _ = loss.to_scalar::<f32>()?;
            lap(&mut phases, "2 forward + loss");
            let grads = loss.backward()?;
            lap(&mut phases, "3 backward");
            let t = (step + 1) as f64;
            let (bc1, bc2) = (1.0 - tcfg.beta1.powf(t), 1.0 - tcfg.beta2.powf(t));
            let ed = tcfg.ema_decay.min((1.0 + t) / (10.0 + t));
            for (i, (_, var)) in vars.iter().enumerate() {
                let g = grads.get(var).ok_or("missing gradient")?.detach();
                let m = ((&adam_m[i] * tcfg.beta1)? + (&g * (1.0 - tcfg.beta1))?)?;
                let v = ((&adam_v[i] * tcfg.beta2)? + (g.sqr()? * (1.0 - tcfg.beta2))?)?;
                let upd = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + tcfg.eps)?)?;
                let p = (var.as_tensor().detach() - (upd * 1e-6)?)?;
                var.set(&p)?;
                ema[i] = ((&ema[i] * ed)? + (&p * (1.0 - ed))?)?;
                adam_m[i] = m;
                adam_v[i] = v;
            }
            drop(grads);
            lap(&mut phases, "4 Adam + EMA (candle ops)");
        }
        let tot: f64 = phases.values().sum::<f64>() / n as f64;
        println!("== candle training step b{bs}, by phase ({n} runs) ==");
        for (k, ms) in &phases {
            println!(
                "{k:<34} {:8.2} ms/step {:5.1}%",
                ms / n as f64,
                100.0 * ms / n as f64 / tot
            );
        }
        println!("{:<34} {tot:8.2} ms/step", "total");

        // The fused conv kernel alone at the training batch: every conv of the network, forward
        // and backward (gradients w.r.t. input, weight and bias), median per conv summed.
        let xb = data.narrow(0, 0, bs)?;
        let cn = Tensor::zeros(bs, DType::F32, &dev)?;
        let mut shapes = Prof::default();
        ops.forward(&mut shapes, &xb, &cn)?;
        let (mut fw_tot, mut bw_tot) = (0.0, 0.0);
        for (dims, name, stride) in &shapes.convs {
            let xv = Var::from_tensor(&Tensor::randn(0f32, 1f32, dims.as_slice(), &dev)?)?;
            let wv = Var::from_tensor(&weights[&format!("{name}.weight")])?;
            let bv = Var::from_tensor(&weights[&format!("{name}.bias")])?;
            let k = wv.dim(3)?;
            let (mut fw, mut bw) = (Vec::new(), Vec::new());
            for rep in 0..warmup + n {
                let t0 = Instant::now();
                let y = kernels::conv2d(
                    xv.as_tensor(),
                    wv.as_tensor(),
                    bv.as_tensor(),
                    *stride,
                    k / 2,
                )?;
                let t1 = Instant::now();
                let g = y.sum_all()?.backward()?;
                let t2 = Instant::now();
                if g.get(&wv).is_none() {
                    return Err("conv: no weight gradient".into());
                }
                if rep >= warmup {
                    fw.push((t1 - t0).as_secs_f64() * 1e3);
                    bw.push((t2 - t1).as_secs_f64() * 1e3);
                }
            }
            fw.sort_by(f64::total_cmp);
            bw.sort_by(f64::total_cmp);
            fw_tot += fw[fw.len() / 2];
            bw_tot += bw[bw.len() / 2];
        }
        println!(
            "== candle fused conv kernel alone, all {} convs at batch {bs} ==",
            shapes.convs.len()
        );
        println!("{:<34} {fw_tot:8.2} ms/step", "conv forward");
        println!("{:<34} {bw_tot:8.2} ms/step", "conv backward (x, w, b)");
    }
    Ok(())
}
