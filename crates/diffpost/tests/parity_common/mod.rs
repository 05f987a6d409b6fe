//! Shared by the parity tests: the fixtures written by `tools/parity_*.py` and the error measure.
#![allow(dead_code)]

use std::path::PathBuf;

use candle_core::{Device, Tensor};

/// `tests/fixtures/parity/<name>` (e.g. `guided_dps`, `diffusers_ddpm_flags`).
pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/parity")
        .join(name)
}

/// The reference input `x`, timesteps `t` and output `out` of a fixture.
pub fn load_io(name: &str) -> (Tensor, Tensor, Tensor) {
    let mut io =
        candle_core::safetensors::load(fixture_dir(name).join("io.safetensors"), &Device::Cpu)
            .unwrap();
    (
        io.remove("x").unwrap(),
        io.remove("t").unwrap(),
        io.remove("out").unwrap(),
    )
}

pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// `max|a - b| / max(max|b|, 1e-12)`.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    max_abs(&(a - b).unwrap()) / max_abs(b).max(1e-12)
}
