//! Python bindings of diffpost (`diffpost._diffpost`; the public API is the `diffpost` package
//! beside it). A thin layer: arrays and settings are converted and checked here, everything
//! algorithmic runs in the `diffpost` library, exactly as `diffpost sample` and `diffpost eval`
//! run it.

// `!(x > 0.0)` is deliberate throughout (as in the library): it also rejects NaN.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

mod callback;
mod convert;
mod operator;
mod prior;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use diffpost::calibrate::{CalibrateOptions, CalibrationResult, Model};
use diffpost::operator::LinearOperator;
use diffpost::prior::{Denoiser, GaussianMixture};
use diffpost::run::summary::{fingerprint, RunInputs, RunSummary};
use diffpost::run::{ProblemParts, Progress, RunContext, RunPlan};
use diffpost::sampler::spec::SamplerSpec;
use diffpost::sampler::table::deprecated_keys;
use numpy::{PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use callback::RunState;
use convert::{
    dict_to_map, f64_array, finite_values, from_json, shape_str, tensor_to_numpy, IntoPy,
};
use operator::PyOperator;
use prior::PyPrior;

/// The measurement `y` as `[m]` values, checked against the operator, and `eta > 0`.
fn measurement(
    op: &dyn LinearOperator,
    y: &PyReadonlyArrayDyn<'_, f64>,
    eta: f64,
) -> PyResult<Vec<f64>> {
    let m = op.out_dim();
    if y.shape() != [m] {
        return Err(PyValueError::new_err(format!(
            "y: expected shape ({m},) (m of operator {}), got {}",
            op.name(),
            shape_str(y.shape())
        )));
    }
    if !(eta > 0.0) || !eta.is_finite() {
        return Err(PyValueError::new_err(format!(
            "eta: the noise standard deviation must be finite and > 0 (units of x), got {eta}"
        )));
    }
    finite_values(y, "y")
}

/// Prior and operator dimensions agree.
fn check_dims(prior: &PyPrior, op: &dyn LinearOperator) -> PyResult<()> {
    let d: usize = prior.shape().iter().product();
    if op.in_dim() != d {
        return Err(PyValueError::new_err(format!(
            "operator: {} takes vectors of length {} but the prior has dim {d}",
            op.name(),
            op.in_dim()
        )));
    }
    Ok(())
}

/// A problem with an exact posterior: the mixture prior, the operator and `y`.
pub(crate) type AnalyticProblem = (Arc<GaussianMixture>, Arc<dyn LinearOperator>, Vec<f64>);

/// The mixture, operator and `y` of a problem with an exact posterior; `what` names the caller.
pub(crate) fn analytic_problem(
    prior: &Bound<'_, PyPrior>,
    operator: &Bound<'_, PyOperator>,
    y: &PyReadonlyArrayDyn<'_, f64>,
    eta: f64,
    what: &str,
) -> PyResult<AnalyticProblem> {
    let p = prior.get();
    let g = p.analytic.clone().ok_or_else(|| {
        PyTypeError::new_err(format!(
            "prior: {what} needs a GaussianMixture prior (an exact posterior exists only for \
             mixtures), got {}",
            prior
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default()
        ))
    })?;
    let op = operator.get().op.clone();
    check_dims(p, op.as_ref())?;
    let yv = measurement(op.as_ref(), y, eta)?;
    Ok((g, op, yv))
}

/// Progress counters the main thread reads while the run works.
#[derive(Default)]
struct Counters {
    total: AtomicU64,
    done: AtomicU64,
}

impl Progress for Counters {
    fn start(&self, total: u64) {
        self.total.store(total, Ordering::Relaxed);
    }
    fn advance(&self, delta: u64) {
        self.done.fetch_add(delta, Ordering::Relaxed);
    }
}

/// Runs `work` on its own thread with the GIL released; this (main) thread wakes every 100 ms
/// to check for Ctrl-C (Python handles signals only here; it sets the run's cancel flag) and to
/// report `counters` to `progress`. A callable's exception, Ctrl-C and a failing progress callback
/// come back as the Python error; otherwise `work`'s result.
fn run_worker<T: Send>(
    py: Python<'_>,
    state: &Arc<RunState>,
    counters: &Counters,
    progress: Option<&Bound<'_, PyAny>>,
    work: impl FnOnce() -> diffpost::Result<T> + Send,
) -> PyResult<diffpost::Result<T>> {
    let slot: (Mutex<Option<diffpost::Result<T>>>, Condvar) = (Mutex::new(None), Condvar::new());
    let cancel = state.cancel.clone();
    let mut interrupt: Option<PyErr> = None;
    let mut callback_err: Option<PyErr> = None;
    let joined = std::thread::scope(|s| {
        let worker = s.spawn(|| {
            let outcome = work();
            let (lock, cv) = &slot;
            *lock.lock().unwrap_or_else(|e| e.into_inner()) = Some(outcome);
            cv.notify_all();
        });
        let mut last_done = u64::MAX;
        loop {
            let finished = py.allow_threads(|| {
                let (lock, cv) = &slot;
                let g = lock.lock().unwrap_or_else(|e| e.into_inner());
                let (g, _) = cv
                    .wait_timeout_while(g, Duration::from_millis(100), |v| v.is_none())
                    .unwrap_or_else(|e| e.into_inner());
                g.is_some()
            });
            if finished || worker.is_finished() {
                break;
            }
            if interrupt.is_none() {
                if let Err(e) = py.check_signals() {
                    cancel.store(true, Ordering::SeqCst);
                    interrupt = Some(e);
                }
            }
            if let (Some(cb), None) = (progress, &callback_err) {
                let done = counters.done.load(Ordering::Relaxed);
                let total = counters.total.load(Ordering::Relaxed);
                if done != last_done && total > 0 {
                    last_done = done;
                    if let Err(e) = cb.call1((done, total)) {
                        // A failing progress callback stops the run like a failing denoiser.
                        cancel.store(true, Ordering::SeqCst);
                        callback_err = Some(e);
                    }
                }
            }
        }
        worker.join()
    });
    if joined.is_err() {
        return Err(PyRuntimeError::new_err(
            "internal error: the sampling thread panicked (please report this)",
        ));
    }
    if let Some(e) = state.take_error() {
        return Err(e);
    }
    if let Some(e) = interrupt {
        return Err(e);
    }
    if let Some(e) = callback_err {
        return Err(e);
    }
    let outcome = slot
        .0
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .ok_or_else(|| PyRuntimeError::new_err("internal error: the run left no result"))?;
    Ok(outcome)
}

/// The result of [`sample`].
#[pyclass(frozen, module = "diffpost._diffpost", name = "Result")]
pub struct PyRunResult {
    /// `(n, d)` float64 samples, row `i` sample `i` (images flattened).
    #[pyo3(get)]
    samples: PyObject,
    /// The run's `summary.json` as a dict.
    #[pyo3(get)]
    summary: PyObject,
    /// SMC: the weighted particles at `lambda = 1`, `(n, d)`, else `None`.
    #[pyo3(get)]
    particles: Option<PyObject>,
    /// SMC: their weights `(n,)`, normalised within each population, else `None`.
    #[pyo3(get)]
    weights: Option<PyObject>,
    /// SMC: the estimate of `log p(y)` (nats), else `None`.
    #[pyo3(get)]
    log_evidence: Option<f64>,
}

#[pymethods]
impl PyRunResult {
    fn __repr__(&self, py: Python<'_>) -> String {
        let s = self.summary.bind(py);
        let get = |k: &str| {
            s.get_item(k)
                .map(|v| v.to_string())
                .unwrap_or_else(|_| "?".into())
        };
        format!(
            "<diffpost Result: {} samples of {} (d = {}), {} score evaluations per sample, {} s>",
            get("n"),
            get("sampler"),
            get("d"),
            get("score_evals_per_sample"),
            get("wall_s")
        )
    }
}

/// Runs `method` on the problem; see `diffpost.sample` for the arguments.
#[pyfunction]
#[pyo3(signature = (prior, operator, y, eta, method, n, seed, batch, settings, warm_start, progress))]
#[allow(clippy::too_many_arguments)]
fn sample(
    py: Python<'_>,
    prior: &Bound<'_, PyPrior>,
    operator: &Bound<'_, PyOperator>,
    y: &Bound<'_, PyAny>,
    eta: f64,
    method: String,
    n: usize,
    seed: u64,
    batch: Option<usize>,
    settings: &Bound<'_, PyDict>,
    warm_start: Option<&Bound<'_, PyAny>>,
    progress: Option<Bound<'_, PyAny>>,
) -> PyResult<PyRunResult> {
    let y = f64_array(y, "y")?;
    let warm_start = warm_start.map(|v| f64_array(v, "warm_start")).transpose()?;
    // The settings, exactly as a `[sampler]` table: names, defaults and checks of the library.
    let mut map = dict_to_map(settings)?;
    if map.contains_key("kind") {
        return Err(PyValueError::new_err(
            "kind: give the sampler as method=... (the [sampler] table's kind)",
        ));
    }
    let warnings: Vec<String> = deprecated_keys(&method, map.keys().map(|k| k.as_str()))
        .into_iter()
        .map(|(old, new)| format!("setting `{old}` is deprecated: use `{new}` (same meaning)"))
        .collect();
    if warm_start.is_some() {
        if method != "local" {
            return Err(PyValueError::new_err(
                "warm_start: an array warm start applies to method=\"local\" only",
            ));
        }
        // Replaced by the array below; least squares is the cheapest placeholder.
        map.insert("warm_start".into(), "least-squares".into());
    }
    map.insert("kind".into(), serde_json::Value::String(method));
    let spec = SamplerSpec::from_map(map).py_err()?;
    if !warnings.is_empty() {
        let w = py.import("warnings")?;
        let cat = py.get_type::<pyo3::exceptions::PyDeprecationWarning>();
        for msg in &warnings {
            w.call_method1("warn", (msg.as_str(), &cat, 2))?;
        }
    }
    if n == 0 {
        return Err(PyValueError::new_err("n: must be >= 1"));
    }
    if batch == Some(0) {
        return Err(PyValueError::new_err("batch: must be >= 1"));
    }
    let p = prior.get();
    let op_handle = operator.get();
    let op = op_handle.op.clone();
    check_dims(p, op.as_ref())?;
    let yv = measurement(op.as_ref(), &y, eta)?;
    let warm = match &warm_start {
        Some(a) => Some(prior::warm_tensor(a, op.in_dim())?),
        None => None,
    };
    let plan = RunPlan {
        n,
        seed,
        batch,
        shard: diffpost::run::Shard::WHOLE,
    };
    plan.layout(&spec).py_err()?;
    let y_t = Tensor::from_vec(yv.clone(), yv.len(), &Device::Cpu).py_err()?;

    let state = Arc::new(RunState::default());
    let den = p.denoiser(&state);
    let parts = ProblemParts {
        prior: den.as_ref(),
        op: op.as_ref(),
        y: &y_t,
        eta,
    };
    let counters = Counters::default();
    let cancel = state.cancel.clone();
    let outcome = run_worker(py, &state, &counters, progress.as_ref(), || {
        let t = Instant::now();
        let mut ctx = RunContext::new(parts, &spec)?.with_cancel(cancel.clone());
        if let Some(w) = warm.clone() {
            ctx = ctx.with_warm_start(w)?;
        }
        let build_s = t.elapsed().as_secs_f64();
        let t0 = Instant::now();
        let out = ctx.run(&plan, &counters)?;
        Ok((out, build_s, t0.elapsed().as_secs_f64()))
    })?;
    let (out, build_s, wall) = outcome.py_err()?;
    if let Some(cb) = &progress {
        let total = counters.total.load(Ordering::Relaxed);
        cb.call1((total, total))?;
    }

    // summary.json, as `diffpost sample` writes it.
    let d = op.in_dim();
    let prior_entry = p.summary_entry();
    let fp = fingerprint(
        &prior_entry,
        &op_handle.description,
        eta,
        &spec,
        n,
        seed,
        &yv,
    );
    let inputs = RunInputs {
        spec: &spec,
        prior: prior_entry,
        operator: op.name(),
        eta,
        n,
        d,
        seed,
        fingerprint: fp,
        warnings,
    };
    let mut summary = RunSummary::new(inputs, &out, wall);
    summary.extra.insert(
        "timing_s".into(),
        serde_json::json!({ "build_run": build_s, "sample": wall }),
    );
    if warm.is_some() {
        if let Some(o) = summary.params.as_object_mut() {
            o.insert("warm_start".into(), serde_json::json!("array"));
        }
    }
    if p.callable().is_some() {
        // Wall-clock split of the sampling: some callable running, or none (Rust, conversions,
        // waiting for the GIL); and the callables' own time summed over threads.
        let busy = state.busy_seconds();
        summary.extra.insert(
            "callback".into(),
            serde_json::json!({
                "calls": state.calls.load(Ordering::Relaxed),
                "seconds_inside": busy,
                "seconds_outside": (wall - busy).max(0.0),
                "seconds_inside_summed_over_threads": state.seconds(),
            }),
        );
    }
    let summary_json =
        serde_json::to_value(&summary).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    let rows = (out.layout.sample_range[1] - out.layout.sample_range[0]) as usize;
    let samples = tensor_to_numpy(py, &out.samples, &[rows, d])?;
    let (particles, weights) = match &out.weighted {
        Some(w) => {
            let pr = w.particles.dims()[0];
            (
                Some(
                    tensor_to_numpy(py, &w.particles, &[pr, d])?
                        .into_any()
                        .unbind(),
                ),
                Some(tensor_to_numpy(py, &w.weights, &[pr])?.into_any().unbind()),
            )
        }
        None => (None, None),
    };
    Ok(PyRunResult {
        samples: samples.into_any().unbind(),
        summary: from_json(py, &summary_json)?.unbind(),
        particles,
        weights,
        log_evidence: summary.log_evidence,
    })
}

/// What `diffpost eval` prints, as a dict; see `diffpost.evaluate`.
#[pyfunction]
#[pyo3(signature = (samples, prior, operator, y, eta, n_ref = 20000, log_evidence = None))]
#[allow(clippy::too_many_arguments)]
fn evaluate<'py>(
    py: Python<'py>,
    samples: &Bound<'py, PyAny>,
    prior: &Bound<'py, PyPrior>,
    operator: &Bound<'py, PyOperator>,
    y: &Bound<'py, PyAny>,
    eta: f64,
    n_ref: usize,
    log_evidence: Option<f64>,
) -> PyResult<Bound<'py, PyAny>> {
    let samples = f64_array(samples, "samples")?;
    let y = f64_array(y, "y")?;
    let (g, op, yv) = analytic_problem(prior, operator, &y, eta, "evaluate")?;
    let d = g.dim();
    let shape = samples.shape().to_vec();
    let n = match shape.as_slice() {
        [n, dd] if *dd == d && *n >= 2 => *n,
        _ => {
            return Err(PyValueError::new_err(format!(
                "samples: expected shape (n, {d}) with n >= 2, got {}",
                shape_str(&shape)
            )))
        }
    };
    if n_ref < 2 {
        return Err(PyValueError::new_err("n_ref: must be >= 2"));
    }
    if let Some(l) = log_evidence {
        if !l.is_finite() {
            return Err(PyValueError::new_err(format!(
                "log_evidence: must be finite, got {l}"
            )));
        }
    }
    let v = finite_values(&samples, "samples")?;
    let x = Tensor::from_vec(v, (n, d), &Device::Cpu).py_err()?;
    let report = py
        .allow_threads(|| {
            diffpost::metrics::evaluate_posterior(
                &g,
                op.as_ref(),
                &yv,
                eta,
                &x,
                n_ref,
                log_evidence,
            )
        })
        .py_err()?;
    let j = serde_json::to_value(report).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    from_json(py, &j)
}

/// The `[sampler]` spec of `method` with `settings` (a Python dict), as `sample` parses it.
fn sampler_spec(method: &str, settings: &Bound<'_, PyDict>) -> PyResult<SamplerSpec> {
    let mut map = dict_to_map(settings)?;
    if map.contains_key("kind") {
        return Err(PyValueError::new_err(
            "kind: give the sampler as method=... (the [sampler] table's kind)",
        ));
    }
    map.insert("kind".into(), serde_json::Value::String(method.into()));
    SamplerSpec::from_map(map).py_err()
}

/// Simulation-based calibration; see `diffpost.calibrate`.
#[pyfunction]
#[pyo3(signature = (prior, operator, eta, method, options, settings, progress))]
#[allow(clippy::too_many_arguments)]
fn calibrate<'py>(
    py: Python<'py>,
    prior: &Bound<'py, PyPrior>,
    operator: &Bound<'py, PyOperator>,
    eta: f64,
    method: String,
    options: &Bound<'py, PyDict>,
    settings: &Bound<'py, PyDict>,
    progress: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let spec = sampler_spec(&method, settings)?;
    let opts: CalibrateOptions = serde_json::from_str(&json_text(options.as_any(), "options")?)
        .map_err(|e| PyValueError::new_err(format!("calibrate options: {e}")))?;
    opts.validate().py_err()?;
    diffpost::calibrate::check_sampler(&spec).py_err()?;
    if !(eta > 0.0) || !eta.is_finite() {
        return Err(PyValueError::new_err(format!(
            "eta: the noise standard deviation must be finite and > 0 (units of x), got {eta}"
        )));
    }
    let p = prior.get();
    let op_handle = operator.get();
    let op = op_handle.op.clone();
    check_dims(p, op.as_ref())?;
    let state = Arc::new(RunState::default());
    let den = p.denoiser(&state);
    let model = Model {
        prior: den.as_ref(),
        op: op.as_ref(),
        eta,
        description: serde_json::json!({
            "prior": p.description,
            "operator": op_handle.description,
        }),
        cancel: Some(state.cancel.clone()),
    };
    let counters = Counters::default();
    let res = run_worker(py, &state, &counters, progress.as_ref(), || {
        diffpost::calibrate::calibrate(&model, &spec, &opts, &counters)
    })?
    .py_err()?;
    if let Some(cb) = &progress {
        let total = counters.total.load(Ordering::Relaxed);
        cb.call1((total, total))?;
    }
    let j = serde_json::to_value(&res).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    from_json(py, &j)
}

/// A Python value (dicts, lists, numbers, strings) as JSON text, through the `json` module.
fn json_text(v: &Bound<'_, PyAny>, name: &str) -> PyResult<String> {
    let json = v.py().import("json")?;
    json.call_method1("dumps", (v,))
        .and_then(|t| t.extract())
        .map_err(|e| PyTypeError::new_err(format!("{name}: not JSON-like data: {e}")))
}

/// A calibration result (a dict as `calibrate` returns it) back as the library's type; `name`
/// names it in errors.
fn calibration_from(v: &Bound<'_, PyAny>, name: &str) -> PyResult<CalibrationResult> {
    serde_json::from_str(&json_text(v, name)?).map_err(|e| {
        PyValueError::new_err(format!(
            "{name}: not a calibration result (a dict as diffpost.calibrate returns it): {e}"
        ))
    })
}

/// The parts of one calibration put back together; see `diffpost.merge_calibrations`.
#[pyfunction]
fn merge_calibrations<'py>(
    py: Python<'py>,
    results: Vec<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let parts = results
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let name = format!("results[{i}]");
            Ok((calibration_from(r, &name)?, name))
        })
        .collect::<PyResult<Vec<_>>>()?;
    let res = diffpost::calibrate::merge(parts).py_err()?;
    let j = serde_json::to_value(&res).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    from_json(py, &j)
}

/// Draws a calibration's figure (`calibration.png` of the CLI) to `path`.
#[pyfunction]
fn plot_calibration(result: &Bound<'_, PyAny>, path: std::path::PathBuf) -> PyResult<()> {
    let res = calibration_from(result, "result")?;
    diffpost::calibrate::write_plot(&path, &res).py_err()
}

#[pymodule]
fn _diffpost(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyPrior>()?;
    m.add_class::<prior::PyGaussianMixture>()?;
    m.add_class::<prior::PyCallableDenoiser>()?;
    m.add_class::<PyOperator>()?;
    m.add_class::<operator::PyMatrix>()?;
    m.add_class::<operator::PyMask>()?;
    m.add_class::<operator::PyIdentity>()?;
    m.add_class::<operator::PyInpaint>()?;
    m.add_class::<operator::PyBox>()?;
    m.add_class::<operator::PySuperRes>()?;
    m.add_class::<operator::PyBlur>()?;
    m.add_class::<operator::PyMri>()?;
    m.add_class::<PyRunResult>()?;
    m.add_function(wrap_pyfunction!(sample, m)?)?;
    m.add_function(wrap_pyfunction!(evaluate, m)?)?;
    m.add_function(wrap_pyfunction!(calibrate, m)?)?;
    m.add_function(wrap_pyfunction!(merge_calibrations, m)?)?;
    m.add_function(wrap_pyfunction!(plot_calibration, m)?)?;
    m.add_function(wrap_pyfunction!(prior::load_prior, m)?)?;
    m.add_function(wrap_pyfunction!(prior::exact_posterior, m)?)?;
    m.add("DivergedError", m.py().get_type::<convert::DivergedError>())?;
    m.add("KINDS", diffpost::sampler::spec::KINDS.to_vec())?;
    Ok(())
}
