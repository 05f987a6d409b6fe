//! What the network adapters ([`super::edm::EdmDenoiser`], [`super::vp::VpDenoiser`]) share:
//! the device convention and the chunked image loop of their `denoise` (the library's
//! `diffpost::prior::Denoiser::denoise`).
//!
//! Device convention: the network runs on its own device (CPU or CUDA); sampler state stays on
//! the CPU in f64, so both adapters report [`Device::Cpu`] as the `diffpost::prior::Denoiser`
//! device, and each chunk crosses over to the network's device and back once per evaluation
//! (a no-op when the network is on the CPU; differentiable either way).

use candle_core::{Device, Tensor};
use diffpost_core::{Error, Result};

/// The device of the network adapters' inputs and outputs (the library's
/// `diffpost::prior::Denoiser::device`): the CPU, whatever device the network runs on (sampler
/// state in f64; see the module documentation).
pub fn sampler_device() -> Device {
    Device::Cpu
}

/// Runs `f` over a flattened batch `x: [B, ...]` (each row `C*H*W` entries) in chunks of at most
/// `chunk` rows: each chunk is reshaped to images `[n, C, H, W]`, moved to `net_device`, passed
/// to `f` (images in, images out, same shape), moved back to `x`'s device and flattened; the
/// result has `x`'s shape. `B = 0` returns `x`. `what` names the network in shape errors.
pub(super) fn denoise_chunked(
    x: &Tensor,
    shape: [usize; 3],
    chunk: usize,
    net_device: &Device,
    what: impl FnOnce() -> String,
    mut f: impl FnMut(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let [c, h, w] = shape;
    let d = c * h * w;
    let dims = x.dims();
    let rest: usize = dims.iter().skip(1).product();
    if dims.len() < 2 || rest != d {
        return Err(Error::shape(
            format!("input of {}", what()),
            format!("[B, {d}] (images {shape:?})"),
            dims,
        ));
    }
    let b = dims[0];
    if b == 0 {
        return Ok(x.clone());
    }
    let chunk = chunk.max(1);
    let mut outs = Vec::with_capacity(b.div_ceil(chunk));
    let mut start = 0;
    while start < b {
        let n = chunk.min(b - start);
        let xc = x
            .narrow(0, start, n)?
            .reshape((n, c, h, w))?
            .to_device(net_device)?;
        let out = f(&xc)?.to_device(x.device())?;
        outs.push(out.reshape((n, d))?);
        start += n;
    }
    let out = if outs.len() == 1 {
        outs.pop().expect("one chunk")
    } else {
        Tensor::cat(&outs, 0)?
    };
    Ok(out.reshape(dims)?)
}
