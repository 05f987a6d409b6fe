//! A Python callable as the library's [`Denoiser`]: `fn(x, sigma) -> D(x, sigma)` on float64
//! numpy batches, with an optional `vjp(x, sigma, g) -> J_D(x)^T g` for samplers that
//! differentiate through the denoiser (DPS). The call is a candle custom op, so candle's
//! autograd sees `vjp` as the op's backward pass.
//!
//! Errors: the first exception a callback raises is kept (with its traceback) in the run's
//! [`RunState`]; the call returns a library error, and every later call of the run fails at once,
//! so the run stops at its next denoiser call and the caller re-raises the kept exception.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use diffpost::prior::Denoiser;
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::convert::shape_str;

/// The user's callables and what the library needs to know about the prior they define.
pub struct Callable {
    pub f: Py<PyAny>,
    pub vjp: Option<Py<PyAny>>,
    pub dim: usize,
    /// How `fn` sees one sample (`[d]`, or e.g. `[C, H, W]`).
    pub shape: Vec<usize>,
    pub sigma_min: f64,
    pub sigma_max: f64,
    pub lipschitz: Option<f64>,
    pub scale: Option<f64>,
}

/// Per-run state shared by the calls of a run: the first exception, the stop flag, and the
/// time spent inside the callables.
#[derive(Default)]
pub struct RunState {
    pub error: Mutex<Option<PyErr>>,
    /// Set on the first exception, and by the caller (Ctrl-C): later calls fail at once.
    pub cancel: Arc<AtomicBool>,
    pub calls: AtomicU64,
    /// Time inside the callables summed over calls (calls on several threads overlap when the
    /// callable releases the GIL, e.g. in numpy or torch kernels).
    pub nanos: AtomicU64,
    /// Wall-clock time during which at least one callable ran: the number running and since when.
    active: Mutex<(u32, Option<Instant>)>,
    busy_nanos: AtomicU64,
}

impl RunState {
    fn fail(&self, e: PyErr) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.is_none() {
            *slot = Some(e);
        }
        self.cancel.store(true, Ordering::SeqCst);
    }

    /// The kept exception, if a callback raised.
    pub fn take_error(&self) -> Option<PyErr> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Seconds inside the Python callables, summed over calls.
    pub fn seconds(&self) -> f64 {
        self.nanos.load(Ordering::Relaxed) as f64 * 1e-9
    }

    /// Wall-clock seconds during which at least one Python callable ran.
    pub fn busy_seconds(&self) -> f64 {
        self.busy_nanos.load(Ordering::Relaxed) as f64 * 1e-9
    }

    fn enter(&self) {
        let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if a.0 == 0 {
            a.1 = Some(Instant::now());
        }
        a.0 += 1;
    }

    fn leave(&self) {
        let mut a = self.active.lock().unwrap_or_else(|p| p.into_inner());
        a.0 = a.0.saturating_sub(1);
        if a.0 == 0 {
            if let Some(t) = a.1.take() {
                self.busy_nanos
                    .fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
        }
    }
}

/// [`Callable`] seen by one run.
pub struct CallbackDenoiser {
    pub f: Arc<Callable>,
    pub state: Arc<RunState>,
}

impl Callable {
    /// Calls `func(x, sigma, *extra)` on rows `x` (`[b, dim]`, viewed as `[b, *shape]`) and returns
    /// its result as `[b * dim]` f64 values; `what` names the callable in errors.
    #[allow(clippy::too_many_arguments)]
    fn call(
        &self,
        py: Python<'_>,
        func: &Py<PyAny>,
        what: &str,
        x: &[f64],
        sigma: f64,
        extra: Option<&[f64]>,
        state: &RunState,
    ) -> PyResult<Vec<f64>> {
        let b = x.len() / self.dim.max(1);
        let mut shape = vec![b];
        shape.extend_from_slice(&self.shape);
        let xa = PyArray1::from_slice(py, x).reshape(shape.clone())?;
        let ga = match extra {
            Some(g) => Some(PyArray1::from_slice(py, g).reshape(shape.clone())?),
            None => None,
        };
        state.enter();
        let t0 = Instant::now();
        let out = match ga {
            None => func.call1(py, (xa, sigma)),
            Some(ga) => func.call1(py, (xa, sigma, ga)),
        };
        state.leave();
        state
            .nanos
            .fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
        state.calls.fetch_add(1, Ordering::Relaxed);
        let out = out?;
        let np = py.import("numpy")?;
        let kw = PyDict::new(py);
        kw.set_item("dtype", np.getattr("float64")?)?;
        let arr = np
            .call_method("asarray", (out.bind(py),), Some(&kw))
            .map_err(|e| {
                let msg = format!(
                    "{what} returned {} which is not convertible to a float64 array ({e})",
                    out.bind(py)
                        .get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                );
                PyTypeError::new_err(msg)
            })?;
        let arr: PyReadonlyArrayDyn<'_, f64> = arr.extract()?;
        if arr.shape() != shape.as_slice() {
            return Err(PyValueError::new_err(format!(
                "{what} returned shape {}, expected {} (the shape of x) at sigma = {sigma}",
                shape_str(arr.shape()),
                shape_str(&shape)
            )));
        }
        let v = crate::convert::c_order_values(&arr);
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(PyValueError::new_err(format!(
                "{what} returned a non-finite value ({}) at flat index {i} for sigma = {sigma}",
                v[i]
            )));
        }
        Ok(v)
    }
}

/// One call of `fn` (forward) or `vjp` (backward) as a candle op on `[B, d]` f64 rows.
struct CallOp {
    f: Arc<Callable>,
    state: Arc<RunState>,
    sigma: f64,
}

impl CallOp {
    fn run(&self, x: &[f64], g: Option<&[f64]>) -> candle_core::Result<Vec<f64>> {
        if self.state.cancel.load(Ordering::SeqCst) {
            candle_core::bail!("stopped: a Python callback raised or the run was interrupted");
        }
        let (func, what) = match g {
            None => (&self.f.f, "CallableDenoiser fn"),
            Some(_) => match &self.f.vjp {
                Some(v) => (v, "CallableDenoiser vjp"),
                None => {
                    // Checked before the run; kept as a clear error for other paths.
                    let e = PyValueError::new_err(
                        "this sampler differentiates through the denoiser: pass \
                         CallableDenoiser(..., vjp=...)",
                    );
                    self.state.fail(e);
                    candle_core::bail!("CallableDenoiser has no vjp");
                }
            },
        };
        let r = Python::with_gil(|py| self.f.call(py, func, what, x, self.sigma, g, &self.state));
        r.map_err(|e| {
            self.state.fail(e);
            candle_core::Error::Msg(format!("{what} raised a Python exception"))
        })
    }
}

fn host_rows(t: &Tensor) -> candle_core::Result<Vec<f64>> {
    t.to_dtype(candle_core::DType::F64)?
        .to_device(&candle_core::Device::Cpu)?
        .flatten_all()?
        .to_vec1()
}

impl CustomOp1 for CallOp {
    fn name(&self) -> &'static str {
        "python-denoiser"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (b, d) = layout.shape().dims2()?;
        let CpuStorage::F64(data) = storage else {
            candle_core::bail!("python-denoiser: expected f64 storage");
        };
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("python-denoiser: expected a contiguous input");
        };
        let out = self.run(&data[start..end], None)?;
        Ok((CpuStorage::F64(out), Shape::from((b, d))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let x = host_rows(arg)?;
        let g = host_rows(grad_res)?;
        let out = self.run(&x, Some(&g))?;
        Ok(Some(Tensor::from_vec(out, arg.dims(), arg.device())?))
    }
}

impl Denoiser for CallbackDenoiser {
    fn dim(&self) -> usize {
        self.f.dim
    }

    fn denoise(&self, x: &Tensor, sigma: f64) -> diffpost::Result<Tensor> {
        let d = self.f.dim;
        if x.rank() != 2 || x.dims()[1] != d {
            return Err(diffpost::Error::shape("x", format!("[B, {d}]"), x.dims()));
        }
        let x = x.to_dtype(candle_core::DType::F64)?.contiguous()?;
        let op = CallOp {
            f: self.f.clone(),
            state: self.state.clone(),
            sigma,
        };
        Ok(x.apply_op1(op)?)
    }

    fn sigma_range(&self) -> (f64, f64) {
        (self.f.sigma_min, self.f.sigma_max)
    }

    fn sigma_max_hint(&self) -> f64 {
        self.f.sigma_max
    }

    fn lipschitz(&self) -> Option<f64> {
        self.f.lipschitz
    }

    fn scale(&self) -> f64 {
        self.f.scale.unwrap_or(self.f.sigma_max / 50.0)
    }

    /// Gradients flow through the callable only by its `vjp`.
    fn differentiable(&self) -> bool {
        self.f.vjp.is_some()
    }
}
