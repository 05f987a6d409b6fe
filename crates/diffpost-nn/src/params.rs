//! A parameter store for training whose random initialisation is reproducible.
//!
//! candle's `VarMap` initialises from the device's implicit random state (STYLE.md: no hidden
//! global random state). Here every parameter draws from its own ChaCha8 stream keyed by
//! `(seed, hash(name))`, so a model's initial weights depend only on the seed and the
//! parameter names, not on construction order or thread count.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// Named trainable variables, created on first request with a seeded initialisation.
#[derive(Clone)]
pub struct SeededParams {
    vars: Arc<Mutex<BTreeMap<String, Var>>>,
    seed: u64,
}

/// FNV-1a: a stable (platform- and version-independent) hash of a parameter name.
fn fnv1a(name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Values of `init` for a tensor of `shape`, drawn from the stream of `(seed, name)`.
fn init_values(init: Init, shape: &Shape, seed: u64, name: &str) -> Vec<f64> {
    let n = shape.elem_count();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(fnv1a(name));
    let uniform = |rng: &mut ChaCha8Rng, lo: f64, up: f64| -> Vec<f64> {
        (0..n)
            .map(|_| lo + (up - lo) * rng.random::<f64>())
            .collect()
    };
    let normal = |rng: &mut ChaCha8Rng, mean: f64, std: f64| -> Vec<f64> {
        (0..n)
            .map(|_| mean + std * rng.sample::<f64, _>(StandardNormal))
            .collect()
    };
    match init {
        Init::Const(c) => vec![c; n],
        Init::Uniform { lo, up } => uniform(&mut rng, lo, up),
        Init::Randn { mean, stdev } => normal(&mut rng, mean, stdev),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            // Same scale as candle's `Init::var`.
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                candle_nn::init::NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    uniform(&mut rng, -bound, bound)
                }
                candle_nn::init::NormalOrUniform::Normal => normal(&mut rng, 0.0, std),
            }
        }
    }
}

impl SeededParams {
    /// An empty store; parameters are created by the model's constructor through [`Self::var_builder`].
    pub fn new(seed: u64) -> Self {
        Self {
            vars: Arc::new(Mutex::new(BTreeMap::new())),
            seed,
        }
    }

    /// A `VarBuilder` (f32) that creates missing parameters in this store.
    pub fn var_builder(&self, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), DType::F32, device.clone())
    }

    /// All parameters, sorted by name.
    pub fn vars(&self) -> Vec<(String, Var)> {
        let g = self.vars.lock().expect("parameter store lock poisoned");
        g.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Total number of scalar parameters.
    pub fn num_params(&self) -> usize {
        let g = self.vars.lock().expect("parameter store lock poisoned");
        g.values().map(|v| v.elem_count()).sum()
    }
}

impl SimpleBackend for SeededParams {
    fn get(
        &self,
        s: Shape,
        name: &str,
        h: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut g = self.vars.lock().expect("parameter store lock poisoned");
        if let Some(v) = g.get(name) {
            if v.shape() != &s {
                candle_core::bail!("shape mismatch on {name}: {s:?} <> {:?}", v.shape())
            }
            return Ok(v.as_tensor().clone());
        }
        let values = init_values(h, &s, self.seed, name);
        let t = Tensor::from_vec(values, s, &Device::Cpu)?
            .to_dtype(dtype)?
            .to_device(dev)?;
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        g.insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let g = self.vars.lock().expect("parameter store lock poisoned");
        match g.get(name) {
            Some(v) => v.as_tensor().to_dtype(dtype)?.to_device(dev),
            None => candle_core::bail!("cannot find tensor {name}"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        let g = self.vars.lock().expect("parameter store lock poisoned");
        g.contains_key(name)
    }
}
