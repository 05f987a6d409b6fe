//! Denoising score matching with EDM's loss (Karras et al. 2022, Sec. 5 and Table 1):
//! `ln sigma ~ N(P_mean, P_std^2)`, `n ~ N(0, sigma^2 I)`,
//! `loss = lambda(sigma) |D(y + n; sigma) - y|^2` with `lambda = (sigma^2 + sd^2)/(sigma sd)^2`,
//! averaged over the batch and the pixels. Adam (Kingma & Ba 2015, Alg. 1) and an EMA of the
//! weights are written here so that their whole state can be checkpointed and a resumed run
//! continues exactly.
//!
//! Reproducibility: step `t` draws its batch from the per-sample streams of
//! `(seed, t * batch_size + b)` (data index, `ln sigma`, noise), so no random state needs saving.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use diffpost_core::rng::SampleStreams;
use diffpost_core::{Error, Result};
use serde::{Deserialize, Serialize};

use super::adapter::sampler_device;
use super::edm::{edm_loss_weight, precond_forward, EdmDenoiser, DEFAULT_SIGMA_DATA};
use super::kernels::{adam_ema_in_place, AdamCoefs};
use super::unet::{init_unet, UNet, UNetConfig};

/// File names inside a checkpoint / export directory.
pub const CHECKPOINT_FILE: &str = "checkpoint.safetensors";
pub const WEIGHTS_FILE: &str = "weights.safetensors";

/// Training settings (serde-ready).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainConfig {
    /// Total optimisation steps.
    pub steps: u64,
    pub batch_size: usize,
    /// Adam learning rate (after warm-up).
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Linear learning-rate warm-up over this many steps (0: none).
    pub warmup_steps: u64,
    /// EMA decay per step; the effective decay is `min(ema_decay, (1 + t)/(10 + t))` so the
    /// average forgets the random initialisation early on.
    pub ema_decay: f64,
    /// Write a checkpoint every this many steps (0: only at the end of `train`).
    pub checkpoint_every: u64,
    /// Seeds the initial weights and every batch.
    pub seed: u64,
    /// EDM's log-normal noise-level distribution: `ln sigma ~ N(p_mean, p_std^2)`.
    pub p_mean: f64,
    pub p_std: f64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 10_000,
            batch_size: 32,
            lr: 5e-4,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            warmup_steps: 200,
            ema_decay: 0.999,
            checkpoint_every: 1000,
            seed: 0,
            p_mean: -1.2,
            p_std: 1.2,
        }
    }
}

impl TrainConfig {
    /// Checks the settings, naming the offending field.
    pub fn validate(&self) -> Result<()> {
        if self.batch_size == 0 {
            return Err(Error::param("batch_size", "must be positive"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::param("lr", "must be finite and positive"));
        }
        for (f, v) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                return Err(Error::param(f, "must be in [0, 1)"));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(Error::param("eps", "must be finite and positive"));
        }
        if !(0.0..=1.0).contains(&self.ema_decay) {
            return Err(Error::param("ema_decay", "must be in [0, 1]"));
        }
        if !self.p_mean.is_finite() {
            return Err(Error::param("p_mean", "must be finite"));
        }
        if !(self.p_std.is_finite() && self.p_std >= 0.0) {
            return Err(Error::param("p_std", "must be finite and non-negative"));
        }
        Ok(())
    }
}

/// Stream-seed offset separating batch draws from weight initialisation.
const BATCH_SEED_KEY: u64 = 0x5eed_ba7c_0000_0001;

/// Trains a [`UNet`] under EDM preconditioning on images `[N, C, H, W]` in [-1, 1].
pub struct Trainer {
    unet_cfg: UNetConfig,
    cfg: TrainConfig,
    device: Device,
    model: UNet,
    /// Trainable variables sorted by name; `ema`, `adam_m`, `adam_v` are aligned with it. The
    /// three state vectors own their storage (never shared with a tensor handed out): on f32
    /// CPU tensors `step` updates them in place.
    params: Vec<(String, Var)>,
    ema: Vec<Tensor>,
    adam_m: Vec<Tensor>,
    adam_v: Vec<Tensor>,
    step: u64,
    /// The step at which the Adam state started from zero (0, or the step of a model resumed
    /// without its optimizer state): bias correction and learning-rate warm-up count from it.
    adam_start: u64,
    data: Tensor,
}

impl Trainer {
    /// A fresh run: weights initialised from `cfg.seed`. `data`: `[N, C, H, W]` with `C, H, W`
    /// matching the architecture (any float dtype; kept as f32 on `device`).
    pub fn new(
        unet_cfg: UNetConfig,
        cfg: TrainConfig,
        data: &Tensor,
        device: &Device,
    ) -> Result<Self> {
        unet_cfg.validate()?;
        cfg.validate()?;
        let [c, h, w] = unet_cfg.image_shape();
        let dims = data.dims();
        if dims.len() != 4 || dims[1..] != [c, h, w] || dims[0] == 0 {
            return Err(Error::shape(
                "training data",
                format!("[N >= 1, {c}, {h}, {w}]"),
                dims,
            ));
        }
        let data = data.to_dtype(DType::F32)?.to_device(device)?;
        let (model, params) = init_unet(&unet_cfg, cfg.seed, device)?;
        let ema = params
            .iter()
            .map(|(_, v)| v.as_tensor().detach().copy())
            .collect::<candle_core::Result<Vec<_>>>()?;
        // Separate buffers (the fused update writes them in place).
        let zeros = || {
            params
                .iter()
                .map(|(_, v)| v.as_tensor().zeros_like())
                .collect::<candle_core::Result<Vec<_>>>()
        };
        let (adam_m, adam_v) = (zeros()?, zeros()?);
        Ok(Self {
            unet_cfg,
            cfg,
            device: device.clone(),
            model,
            params,
            ema,
            adam_m,
            adam_v,
            step: 0,
            adam_start: 0,
            data,
        })
    }

    /// Whether the model uses the fused CPU kernels (default: yes); see
    /// [`UNet::set_fused_kernels`]. Results differ only by float rounding.
    pub fn set_fused_kernels(&mut self, on: bool) {
        self.model.set_fused_kernels(on);
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    pub fn unet_config(&self) -> &UNetConfig {
        &self.unet_cfg
    }

    /// Number of trainable scalars.
    pub fn num_params(&self) -> usize {
        self.params.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Current (raw, not averaged) weights, sorted by name.
    pub fn parameters(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect()
    }

    /// EMA weights, sorted by name.
    pub fn ema_parameters(&self) -> Vec<(String, Tensor)> {
        self.params
            .iter()
            .zip(&self.ema)
            .map(|((n, _), e)| Ok((n.clone(), e.copy()?)))
            .collect::<candle_core::Result<Vec<_>>>()
            // A copy of an existing tensor on its own device (fails only if memory runs out).
            .expect("copying the EMA weights")
    }

    /// The batch of step `t`: clean images `[B, C, H, W]`, noise levels, unit noise `[B, C, H, W]`.
    fn batch(&self, t: u64) -> Result<(Tensor, Vec<f64>, Tensor)> {
        let bs = self.cfg.batch_size;
        let [c, h, w] = self.unet_cfg.image_shape();
        let d = c * h * w;
        let n_data = self.data.dim(0)?;
        let first = t * bs as u64;
        let mut streams =
            SampleStreams::new(self.cfg.seed ^ BATCH_SEED_KEY, first..first + bs as u64);
        let idx: Vec<u32> = streams
            .uniform_vec()
            .iter()
            .map(|u| ((u * n_data as f64) as usize).min(n_data - 1) as u32)
            .collect();
        let draws = streams.normal_vec(1 + d);
        let mut sigmas = Vec::with_capacity(bs);
        let mut noise = Vec::with_capacity(bs * d);
        for row in draws.chunks(1 + d) {
            sigmas.push((self.cfg.p_mean + self.cfg.p_std * row[0]).exp());
            noise.extend(row[1..].iter().map(|&z| z as f32));
        }
        let idx = Tensor::from_vec(idx, bs, &self.device)?;
        let y = self.data.index_select(&idx, 0)?;
        let noise = Tensor::from_vec(noise, (bs, c, h, w), &self.device)?;
        Ok((y, sigmas, noise))
    }

    /// EDM loss of `model` on the batch of step `t` (a scalar f32 tensor on the autograd graph).
    fn loss(&self, t: u64) -> Result<Tensor> {
        let (y, sigmas, noise) = self.batch(t)?;
        let bs = sigmas.len();
        let sd = self.unet_cfg.sigma_data;
        let sig = Tensor::from_vec(
            sigmas.iter().map(|&s| s as f32).collect::<Vec<f32>>(),
            (bs, 1, 1, 1),
            &self.device,
        )?;
        let x = (&y + noise.broadcast_mul(&sig)?)?;
        let den = precond_forward(&self.model, &x, &sigmas, sd)?;
        let per_sample = (den - &y)?.sqr()?.flatten_from(1)?.mean(1)?; // [B]
        let weights = Tensor::from_vec(
            sigmas
                .iter()
                .map(|&s| edm_loss_weight(s, sd) as f32)
                .collect::<Vec<f32>>(),
            bs,
            &self.device,
        )?;
        Ok((per_sample * weights)?.mean_all()?)
    }

    /// One optimisation step (batch, loss, gradient, Adam, EMA); returns the batch loss.
    pub fn step(&mut self) -> Result<f64> {
        let loss = self.loss(self.step)?;
        let loss_value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if !loss_value.is_finite() {
            return Err(Error::Numerical(format!(
                "non-finite training loss at step {}",
                self.step + 1
            )));
        }
        let grads = loss.backward()?;
        let t = self.step + 1;
        // Steps of the current Adam state (equals `t` unless resumed from bare weights).
        let ta = t - self.adam_start;
        let c = &self.cfg;
        let lr = if c.warmup_steps > 0 {
            c.lr * (ta as f64 / c.warmup_steps as f64).min(1.0)
        } else {
            c.lr
        };
        let bc1 = 1.0 - c.beta1.powf(ta as f64);
        let bc2 = 1.0 - c.beta2.powf(ta as f64);
        let ema_decay = c.ema_decay.min((1.0 + t as f64) / (10.0 + t as f64));
        let mut gs = Vec::with_capacity(self.params.len());
        for (name, var) in &self.params {
            match grads.get(var) {
                // Contiguous for the fused update (a gradient may be a broadcast or narrowed
                // view of another tensor's gradient; no copy when it is not).
                Some(g) => gs.push(g.detach().contiguous()?),
                // A parameter the loss does not reach (cannot happen for this UNet).
                None => {
                    return Err(Error::Numerical(format!(
                        "no gradient for parameter {name}"
                    )))
                }
            }
        }
        drop(grads);
        let co = AdamCoefs {
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            inv_bc1: 1.0 / bc1,
            inv_bc2: 1.0 / bc2,
            lr,
            ema_decay,
        };
        if self.fused_update_ok(&gs) {
            use rayon::prelude::*;
            let items: Vec<_> = self
                .params
                .iter()
                .zip(&gs)
                .zip(self.adam_m.iter().zip(&self.adam_v).zip(&self.ema))
                .collect();
            items
                .into_par_iter()
                .try_for_each(|(((_, var), g), ((m, v), e))| {
                    adam_ema_in_place(var, g, m, v, e, &co)
                })?;
        } else {
            for (i, (_, var)) in self.params.iter().enumerate() {
                let g = &gs[i];
                let m = ((&self.adam_m[i] * c.beta1)? + (g * (1.0 - c.beta1))?)?;
                let v = ((&self.adam_v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                let denom = ((&v / bc2)?.sqrt()? + c.eps)?;
                let update = ((&m / bc1)? / denom)?;
                // Detached: the optimiser state must not keep autograd graphs alive across steps.
                let p = (var.as_tensor().detach() - (update * lr)?)?;
                var.set(&p)?;
                self.ema[i] = ((&self.ema[i] * ema_decay)? + (&p * (1.0 - ema_decay))?)?;
                self.adam_m[i] = m;
                self.adam_v[i] = v;
            }
        }
        self.step = t;
        Ok(loss_value)
    }

    /// Whether the fused in-place Adam + EMA update applies: f32 CPU tensors throughout, state
    /// tensors contiguous (they are created by this type and never handed out).
    fn fused_update_ok(&self, gs: &[Tensor]) -> bool {
        let ok = |t: &Tensor| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous();
        self.params.iter().all(|(_, v)| ok(v.as_tensor()))
            && gs.iter().all(ok)
            && self.adam_m.iter().all(ok)
            && self.adam_v.iter().all(ok)
            && self.ema.iter().all(ok)
    }

    /// Runs until `config().steps`, calling `progress(step, loss)` after each step and writing a
    /// checkpoint to `checkpoint_dir` (when given) every `checkpoint_every` steps and at the end.
    pub fn train(
        &mut self,
        checkpoint_dir: Option<&Path>,
        progress: &mut dyn FnMut(u64, f64),
    ) -> Result<()> {
        let mut saved_at = None;
        while self.step < self.cfg.steps {
            let loss = self.step()?;
            progress(self.step, loss);
            if let Some(dir) = checkpoint_dir {
                if self.cfg.checkpoint_every > 0
                    && self.step.is_multiple_of(self.cfg.checkpoint_every)
                {
                    self.save_checkpoint(dir)?;
                    saved_at = Some(self.step);
                }
            }
        }
        if let Some(dir) = checkpoint_dir {
            if saved_at != Some(self.step) {
                self.save_checkpoint(dir)?;
            }
        }
        Ok(())
    }

    /// Writes `dir/checkpoint.safetensors` atomically: weights (`model.*`), EMA (`ema.*`), Adam
    /// moments (`adam_m.*`, `adam_v.*`) and `trainer.step`, `trainer.seed`, `trainer.batch_size`,
    /// `trainer.adam_start` (i64 scalars in `[1]` tensors; the seed's bits).
    pub fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        let mut map: HashMap<String, Tensor> = HashMap::new();
        for (i, (name, var)) in self.params.iter().enumerate() {
            map.insert(format!("model.{name}"), var.as_tensor().detach());
            map.insert(format!("ema.{name}"), self.ema[i].clone());
            map.insert(format!("adam_m.{name}"), self.adam_m[i].clone());
            map.insert(format!("adam_v.{name}"), self.adam_v[i].clone());
        }
        let scalar = |v: i64| Tensor::from_vec(vec![v], 1, &Device::Cpu);
        map.insert("trainer.step".into(), scalar(self.step as i64)?);
        map.insert("trainer.seed".into(), scalar(self.cfg.seed as i64)?);
        map.insert(
            "trainer.batch_size".into(),
            scalar(self.cfg.batch_size as i64)?,
        );
        map.insert("trainer.adam_start".into(), scalar(self.adam_start as i64)?);
        std::fs::create_dir_all(dir)?;
        diffpost_core::io::atomic_write(&dir.join(CHECKPOINT_FILE), |tmp| {
            Ok(candle_core::safetensors::save(&map, tmp)?)
        })
    }

    /// Restores weights, EMA, Adam state and step count from `dir/checkpoint.safetensors`. The
    /// checkpoint must come from the same architecture, seed and batch size (the batch streams
    /// depend on them); `steps`, `lr` etc. may change.
    pub fn resume(&mut self, dir: &Path) -> Result<()> {
        let path = dir.join(CHECKPOINT_FILE);
        let ferr = |reason: String| Error::File {
            path: path.clone(),
            reason,
        };
        diffpost_core::io::file_len(&path).map_err(|r| ferr(format!("checkpoint: {r}")))?;
        let map = candle_core::safetensors::load(&path, &self.device)
            .map_err(|e| ferr(format!("cannot read checkpoint: {e}")))?;
        let get = |key: &str, like: Option<&Tensor>| -> Result<Tensor> {
            let t = map
                .get(key)
                .ok_or_else(|| ferr(format!("checkpoint has no tensor `{key}`")))?;
            if let Some(like) = like {
                if t.dims() != like.dims() {
                    return Err(ferr(format!(
                        "`{key}` has shape {:?}, the model needs {:?}",
                        t.dims(),
                        like.dims()
                    )));
                }
                return Ok(t.to_dtype(like.dtype())?);
            }
            Ok(t.clone())
        };
        let scalar = |key: &str| -> Result<i64> {
            let v: Vec<i64> = get(key, None)?.to_dtype(DType::I64)?.to_vec1()?;
            v.first()
                .copied()
                .ok_or_else(|| ferr(format!("`{key}` is empty")))
        };
        if scalar("trainer.seed")? != self.cfg.seed as i64 {
            return Err(Error::param(
                "seed",
                "differs from the checkpoint's; a resumed run must keep its seed",
            ));
        }
        if scalar("trainer.batch_size")? != self.cfg.batch_size as i64 {
            return Err(Error::param(
                "batch_size",
                "differs from the checkpoint's; a resumed run must keep its batch size",
            ));
        }
        let step = scalar("trainer.step")?;
        if step < 0 {
            return Err(ferr("negative `trainer.step`".into()));
        }
        // Absent in checkpoints written before it existed: the Adam state started at step 0.
        let adam_start = if map.contains_key("trainer.adam_start") {
            scalar("trainer.adam_start")?
        } else {
            0
        };
        if !(0..=step).contains(&adam_start) {
            return Err(ferr(format!(
                "`trainer.adam_start` = {adam_start} is not in [0, trainer.step = {step}]"
            )));
        }
        // Read everything before modifying anything, so a bad file leaves the trainer intact.
        let mut loaded = Vec::with_capacity(self.params.len());
        for (name, var) in &self.params {
            let like = var.as_tensor();
            loaded.push((
                get(&format!("model.{name}"), Some(like))?,
                get(&format!("ema.{name}"), Some(like))?,
                get(&format!("adam_m.{name}"), Some(like))?,
                get(&format!("adam_v.{name}"), Some(like))?,
            ));
        }
        for (i, (p, e, m, v)) in loaded.into_iter().enumerate() {
            self.params[i].1.set(&p)?;
            // Own, contiguous copies (updated in place by `step`).
            self.ema[i] = e.contiguous()?.copy()?;
            self.adam_m[i] = m.contiguous()?.copy()?;
            self.adam_v[i] = v.contiguous()?.copy()?;
        }
        self.step = step as u64;
        self.adam_start = adam_start as u64;
        Ok(())
    }

    /// Continues from bare weights (a model folder's `weights.safetensors`, as written by
    /// [`Trainer::export`]) at step `step`: the weights and their EMA both start from the file,
    /// the Adam state from zero (bias correction and learning-rate warm-up restart, counted from
    /// `step`); the EMA decay and the batch stream continue from `step`. Every tensor must be
    /// present with the architecture's shape; on error the trainer is left unchanged.
    pub fn start_from_weights(&mut self, path: &Path, step: u64) -> Result<()> {
        let ferr = |reason: String| Error::File {
            path: path.to_path_buf(),
            reason,
        };
        let map = candle_core::safetensors::load(path, &self.device)
            .map_err(|e| ferr(format!("cannot read weights: {e}")))?;
        let mut loaded = Vec::with_capacity(self.params.len());
        for (name, var) in &self.params {
            let like = var.as_tensor();
            let t = map
                .get(name)
                .ok_or_else(|| ferr(format!("no tensor `{name}`: not this architecture")))?;
            if t.dims() != like.dims() {
                return Err(ferr(format!(
                    "`{name}` has shape {:?}, the model needs {:?}",
                    t.dims(),
                    like.dims()
                )));
            }
            loaded.push(t.to_dtype(like.dtype())?.contiguous()?);
        }
        if map.len() != self.params.len() {
            return Err(ferr(format!(
                "{} tensors, the model has {}: not this architecture",
                map.len(),
                self.params.len()
            )));
        }
        for (i, w) in loaded.into_iter().enumerate() {
            self.params[i].1.set(&w)?;
            self.ema[i] = w.copy()?;
            self.adam_m[i] = self.adam_m[i].zeros_like()?;
            self.adam_v[i] = self.adam_v[i].zeros_like()?;
        }
        self.step = step;
        self.adam_start = step;
        Ok(())
    }

    /// Writes the EMA weights as `dir/weights.safetensors` (atomically), loadable with
    /// [`EdmDenoiser::load`] / [`EdmDenoiser::from_safetensors`] and the same `UNetConfig`.
    pub fn export(&self, dir: &Path) -> Result<()> {
        let map: HashMap<String, Tensor> = self.ema_parameters().into_iter().collect();
        std::fs::create_dir_all(dir)?;
        diffpost_core::io::atomic_write(&dir.join(WEIGHTS_FILE), |tmp| {
            Ok(candle_core::safetensors::save(&map, tmp)?)
        })
    }

    /// The EMA model as a denoiser (default trained range), without going through a file.
    pub fn ema_denoiser(&self) -> Result<EdmDenoiser> {
        let map: HashMap<String, Tensor> = self.ema_parameters().into_iter().collect();
        EdmDenoiser::from_tensors(&self.unet_cfg, map, &self.device)
    }
}

/// Held-out EDM loss at fixed noise levels: for each `sigma`,
/// `mean_i lambda(sigma) mean_pixels (D(y_i + sigma n_i; sigma) - y_i)^2` with
/// `lambda = (sigma^2 + sd^2)/(sigma sd)^2`, `sd = 0.5` (EDM's data in [-1, 1]). `data`:
/// `[N, ...]` with `denoiser.dim()` entries per row; `n_i` comes from stream `(seed, i)` and is
/// shared across sigmas (so the curve is smooth in sigma).
pub fn held_out_loss_per_sigma(
    denoiser: &EdmDenoiser,
    data: &Tensor,
    sigmas: &[f64],
    seed: u64,
) -> Result<Vec<f64>> {
    let d = denoiser.dim();
    let n = data.dim(0)?;
    if n == 0 || data.elem_count() != n * d {
        return Err(Error::shape(
            "held-out data",
            format!("[N >= 1, ...] with {d} entries per row"),
            data.dims(),
        ));
    }
    let dev = sampler_device();
    let y_all = data
        .reshape((n, d))?
        .to_dtype(DType::F64)?
        .to_device(&dev)?;
    let mut sums = vec![0.0; sigmas.len()];
    const CHUNK: usize = 64;
    let mut start = 0;
    while start < n {
        let b = CHUNK.min(n - start);
        let y = y_all.narrow(0, start, b)?;
        let z = SampleStreams::new(seed, start as u64..(start + b) as u64).randn(&[d], &dev)?;
        for (k, &s) in sigmas.iter().enumerate() {
            let den = denoiser.denoise(&(&y + (&z * s)?)?, s)?;
            let se = (den - &y)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
            sums[k] += edm_loss_weight(s, DEFAULT_SIGMA_DATA) * se / d as f64;
        }
        start += b;
    }
    Ok(sums.into_iter().map(|s| s / n as f64).collect())
}

/// Reads training images from `.npy`: `[N, H, W]` or `[N, C, H, W]`, returned as `[N, C, H, W]`
/// f32 in [-1, 1]. Value ranges: integers in 0..=255 with a maximum above 1 (u8 images) map by
/// `x / 127.5 - 1`; values in [0, 1] map by `2x - 1`; values already in [-1, 1] with a negative
/// minimum are kept; anything else is an error.
pub fn load_images_npy(path: &Path) -> Result<Tensor> {
    let t = diffpost_core::io::read_array(path, "training images")?;
    let t = match t.rank() {
        3 => t.unsqueeze(1)?,
        4 => t,
        _ => {
            return Err(Error::shape(
                "training images",
                "[N, H, W] or [N, C, H, W]",
                t.dims(),
            ))
        }
    };
    let v: Vec<f64> = t.flatten_all()?.to_vec1()?;
    if v.is_empty() {
        return Err(Error::shape(
            "training images",
            "at least one image",
            t.dims(),
        ));
    }
    let (lo, hi) = v
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        });
    let integral = v.iter().all(|x| x.fract() == 0.0);
    let t = if hi > 1.0 && integral && lo >= 0.0 && hi <= 255.0 {
        t.affine(1.0 / 127.5, -1.0)?
    } else if lo >= 0.0 && hi <= 1.0 {
        t.affine(2.0, -1.0)?
    } else if lo >= -1.0 && hi <= 1.0 {
        t
    } else {
        return Err(Error::File {
            path: path.to_path_buf(),
            reason: format!(
                "training images: values in [{lo}, {hi}]; expected u8 0..255, [0, 1] or [-1, 1]"
            ),
        });
    };
    Ok(t.to_dtype(DType::F32)?)
}
