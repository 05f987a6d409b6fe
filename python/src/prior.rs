//! Priors from Python: Gaussian mixtures from arrays, trained and pretrained networks through the
//! library's `[prior]` loader, and Python callables (`CallableDenoiser`).

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use diffpost::config::PriorSpec;
use diffpost::prior::{Denoiser, ExactSample, GaussianMixture};
use diffpost::rng::SampleStreams;
use nalgebra::DMatrix;
use numpy::{PyArrayDyn, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::callback::{Callable, CallbackDenoiser, RunState};
use crate::convert::{
    dict_to_map, f64_array, finite_values, from_json, rows_tensor, shape_str, tensor_to_numpy,
    vec_to_numpy, IntoPy,
};

/// How a prior computes `D(x, sigma)`.
pub enum Den {
    /// In Rust (mixtures, networks).
    Native(Arc<dyn Denoiser>),
    /// A Python callable; wrapped per run in a [`CallbackDenoiser`].
    Callable(Arc<Callable>),
}

/// A diffusion prior seen through its denoiser `D(x, sigma)` (the base class of every prior).
#[pyclass(frozen, subclass, module = "diffpost._diffpost", name = "Prior")]
pub struct PyPrior {
    pub den: Den,
    /// The analytic prior (exact posteriors, MALA, exact prior draws).
    pub analytic: Option<Arc<GaussianMixture>>,
    /// `den` is `analytic` with an error added to its score.
    pub perturbed: bool,
    pub image_shape: Option<[usize; 3]>,
    /// The prior as configured, for `summary.json`.
    pub description: serde_json::Value,
}

impl PyPrior {
    /// The denoiser a run sees, with the run's state for callables.
    pub fn denoiser(&self, state: &Arc<RunState>) -> Arc<dyn Denoiser> {
        match &self.den {
            Den::Native(d) => d.clone(),
            Den::Callable(c) => Arc::new(CallbackDenoiser {
                f: c.clone(),
                state: state.clone(),
            }),
        }
    }

    pub fn callable(&self) -> Option<&Arc<Callable>> {
        match &self.den {
            Den::Callable(c) => Some(c),
            Den::Native(_) => None,
        }
    }

    fn probe(&self) -> Arc<dyn Denoiser> {
        self.denoiser(&Arc::new(RunState::default()))
    }

    /// The per-sample shape as the user sees it.
    pub fn shape(&self) -> Vec<usize> {
        match (&self.den, self.image_shape) {
            (Den::Callable(c), _) => c.shape.clone(),
            (_, Some(s)) => s.to_vec(),
            (Den::Native(d), None) => vec![d.dim()],
        }
    }

    /// The `summary.json` `prior` entry: the description with the sigma range and image shape.
    pub fn summary_entry(&self) -> serde_json::Value {
        let mut v = self.description.clone();
        if let Some(o) = v.as_object_mut() {
            o.insert(
                "sigma_range".into(),
                serde_json::json!(self.probe().sigma_range()),
            );
            o.insert("image_shape".into(), serde_json::json!(self.image_shape));
            o.insert("device".into(), serde_json::json!("Cpu"));
        }
        v
    }

    fn from_mixture(g: GaussianMixture, description: serde_json::Value) -> Self {
        let g = Arc::new(g);
        PyPrior {
            den: Den::Native(g.clone()),
            analytic: Some(g),
            perturbed: false,
            image_shape: None,
            description,
        }
    }
}

#[pymethods]
impl PyPrior {
    /// Dimension `d` of one sample (images flattened).
    #[getter]
    fn dim(&self) -> usize {
        self.probe().dim()
    }

    /// The shape of one sample: `(d,)`, or `(C, H, W)` for image priors.
    #[getter(shape)]
    fn py_shape(&self) -> Vec<usize> {
        self.shape()
    }

    /// `(sigma_min, sigma_max)` where the denoiser is valid (`sigma_min = 0` for mixtures).
    #[getter]
    fn sigma_range(&self) -> (f64, f64) {
        self.probe().sigma_range()
    }

    /// The `sigma_max` diffusion starts from by default.
    #[getter]
    fn sigma_max_hint(&self) -> f64 {
        self.probe().sigma_max_hint()
    }

    /// Lipschitz constant of the unsmoothed score when known (sets Langevin steps), else `None`.
    #[getter]
    fn lipschitz(&self) -> Option<f64> {
        self.probe().lipschitz()
    }

    /// The prior's scale per coordinate, `sqrt(E|x|^2 / d)` (the divergence check's unit).
    #[getter]
    fn scale(&self) -> f64 {
        self.probe().scale()
    }

    /// The prior as configured (the `prior` entry of `summary.json`).
    #[getter]
    fn description<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        from_json(py, &self.summary_entry())
    }

    /// The Tweedie denoiser `D(x, sigma)` for `x` of shape `(d,)` or `(B, d)`.
    fn denoise<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
        sigma: f64,
    ) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
        let x = f64_array(x, "x")?;
        let state = Arc::new(RunState::default());
        let den = self.denoiser(&state);
        let (t, single) = rows_tensor(&x, den.dim(), "x")?;
        if !(sigma >= 0.0) || !sigma.is_finite() {
            return Err(PyValueError::new_err(format!(
                "sigma: must be finite and >= 0, got {sigma}"
            )));
        }
        let r = py.allow_threads(|| den.denoise(&t, sigma));
        if let Some(e) = state.take_error() {
            return Err(e);
        }
        let out = r.py_err()?;
        let b = out.dims()[0];
        let d = den.dim();
        tensor_to_numpy(py, &out, &(if single { vec![d] } else { vec![b, d] }))
    }

    fn __repr__(&self) -> String {
        let kind = self
            .description
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("prior");
        format!("<diffpost prior {kind}: d = {}>", self.probe().dim())
    }
}

fn dense_covs(
    covs: &PyReadonlyArrayDyn<'_, f64>,
    k: usize,
    d: usize,
) -> PyResult<Vec<DMatrix<f64>>> {
    if covs.shape() != [k, d, d] {
        return Err(PyValueError::new_err(format!(
            "covs: expected shape ({k}, {d}, {d}) (K components of d x d), got {}",
            shape_str(covs.shape())
        )));
    }
    let v = finite_values(covs, "covs")?;
    Ok(v.chunks(d * d)
        .map(|c| DMatrix::from_row_slice(d, d, c))
        .collect())
}

/// A Gaussian-mixture prior `sum_k w_k N(mu_k, S_k)`: exact denoiser, score and posterior.
#[pyclass(frozen, extends = PyPrior, module = "diffpost._diffpost", name = "GaussianMixture")]
pub struct PyGaussianMixture {
    pub g: Arc<GaussianMixture>,
}

impl PyGaussianMixture {
    pub fn init(g: GaussianMixture, description: serde_json::Value) -> PyClassInitializer<Self> {
        let base = PyPrior::from_mixture(g, description);
        let g = base.analytic.clone().expect("a mixture");
        PyClassInitializer::from(base).add_subclass(PyGaussianMixture { g })
    }
}

#[pymethods]
impl PyGaussianMixture {
    /// `weights (K,)` (normalised), `means (K, d)`, `covs (K, d, d)` symmetric positive
    /// semi-definite.
    #[new]
    fn new(
        weights: &Bound<'_, PyAny>,
        means: &Bound<'_, PyAny>,
        covs: &Bound<'_, PyAny>,
    ) -> PyResult<PyClassInitializer<Self>> {
        let weights = f64_array(weights, "weights")?;
        let means = f64_array(means, "means")?;
        let covs = f64_array(covs, "covs")?;
        let k = match weights.shape() {
            [k] if *k > 0 => *k,
            other => {
                return Err(PyValueError::new_err(format!(
                    "weights: expected shape (K,) with K >= 1, got {}",
                    shape_str(other)
                )))
            }
        };
        let w = finite_values(&weights, "weights")?;
        if w.iter().any(|v| *v < 0.0) || w.iter().sum::<f64>() <= 0.0 {
            return Err(PyValueError::new_err(
                "weights: must be >= 0 with a positive sum",
            ));
        }
        let d = match means.shape() {
            [kk, d] if *kk == k && *d > 0 => *d,
            other => {
                return Err(PyValueError::new_err(format!(
                    "means: expected shape ({k}, d) (K = {k} from weights), got {}",
                    shape_str(other)
                )))
            }
        };
        let m = finite_values(&means, "means")?;
        let means_v: Vec<Vec<f64>> = m.chunks(d).map(|c| c.to_vec()).collect();
        let covs_v = dense_covs(&covs, k, d)?;
        let g = GaussianMixture::new(w, means_v, covs_v).py_err()?;
        let desc = serde_json::json!({ "kind": "gmm", "k": k, "d": d });
        Ok(Self::init(g, desc))
    }

    /// Component weights `(K,)`.
    #[getter]
    fn weights<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
        vec_to_numpy(py, self.g.weights().to_vec(), &[self.g.k()])
    }

    /// Component means `(K, d)`.
    #[getter]
    fn means<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
        let d = self.g.dim();
        let v: Vec<f64> = self
            .g
            .means()
            .iter()
            .flat_map(|m| m.iter().copied())
            .collect();
        vec_to_numpy(py, v, &[self.g.k(), d])
    }

    /// Component covariances `(K, d, d)`.
    #[getter]
    fn covs<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
        let d = self.g.dim();
        let mut v = Vec::with_capacity(self.g.k() * d * d);
        for i in 0..self.g.k() {
            let c = self.g.cov(i);
            for r in 0..d {
                for col in 0..d {
                    v.push(c[(r, col)]);
                }
            }
        }
        vec_to_numpy(py, v, &[self.g.k(), d, d])
    }

    /// Number of components `K`.
    #[getter]
    fn k(&self) -> usize {
        self.g.k()
    }

    /// `n` exact draws `(n, d)`; sample `i` from stream `(seed, i)`, as the `exact` sampler draws
    /// them (so `exact_posterior(...).sample(n, seed)` equals `sample(..., method="exact")`).
    #[pyo3(signature = (n, seed = 0))]
    fn sample<'py>(
        &self,
        py: Python<'py>,
        n: usize,
        seed: u64,
    ) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
        if n == 0 {
            return Err(PyValueError::new_err("n: must be >= 1"));
        }
        let g = self.g.clone();
        let d = g.dim();
        diffpost::limits::check_alloc("n", (n as u128) * (3 * 8 * d as u128 + 256)).py_err()?;
        let t = py
            .allow_threads(move || g.sample_exact(&mut SampleStreams::new(seed, 0..n as u64)))
            .py_err()?;
        tensor_to_numpy(py, &t, &[n, d])
    }
}

/// A prior given by a Python callable `fn(x, sigma) -> D(x, sigma)`.
#[pyclass(frozen, extends = PyPrior, module = "diffpost._diffpost", name = "CallableDenoiser")]
pub struct PyCallableDenoiser;

#[pymethods]
impl PyCallableDenoiser {
    #[new]
    #[pyo3(signature = (r#fn, dim, sigma_min, sigma_max, shape = None, *, vjp = None, lipschitz = None, scale = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        r#fn: Bound<'_, PyAny>,
        dim: usize,
        sigma_min: f64,
        sigma_max: f64,
        shape: Option<Vec<usize>>,
        vjp: Option<Bound<'_, PyAny>>,
        lipschitz: Option<f64>,
        scale: Option<f64>,
    ) -> PyResult<PyClassInitializer<Self>> {
        if !r#fn.is_callable() {
            return Err(PyTypeError::new_err(format!(
                "fn: must be callable as fn(x, sigma), got {}",
                r#fn.get_type().name()?
            )));
        }
        if let Some(v) = &vjp {
            if !v.is_callable() {
                return Err(PyTypeError::new_err(format!(
                    "vjp: must be callable as vjp(x, sigma, g) or None, got {}",
                    v.get_type().name()?
                )));
            }
        }
        if dim == 0 {
            return Err(PyValueError::new_err("dim: must be >= 1"));
        }
        if !(sigma_min > 0.0) || !(sigma_max > sigma_min) || !sigma_max.is_finite() {
            return Err(PyValueError::new_err(format!(
                "sigma_min, sigma_max: need 0 < sigma_min < sigma_max < inf (a network's trained \
                 range; the score is (D(x, sigma) - x) / sigma^2), got {sigma_min}, {sigma_max}"
            )));
        }
        let shape = shape.unwrap_or_else(|| vec![dim]);
        if shape.iter().product::<usize>() != dim || shape.is_empty() {
            return Err(PyValueError::new_err(format!(
                "shape: {} has {} entries, dim is {dim}",
                shape_str(&shape),
                shape.iter().product::<usize>()
            )));
        }
        for (name, v) in [("lipschitz", lipschitz), ("scale", scale)] {
            if let Some(v) = v {
                if !(v > 0.0) || !v.is_finite() {
                    return Err(PyValueError::new_err(format!(
                        "{name}: must be finite and > 0, got {v}"
                    )));
                }
            }
        }
        let has_vjp = vjp.is_some();
        let image_shape = match shape.as_slice() {
            [c, h, w] => Some([*c, *h, *w]),
            _ => None,
        };
        let c = Callable {
            f: r#fn.unbind(),
            vjp: vjp.map(|v| v.unbind()),
            dim,
            shape: shape.clone(),
            sigma_min,
            sigma_max,
            lipschitz,
            scale,
        };
        let base = PyPrior {
            den: Den::Callable(Arc::new(c)),
            analytic: None,
            perturbed: false,
            image_shape,
            description: serde_json::json!({
                "kind": "callable", "dim": dim, "shape": shape, "vjp": has_vjp,
            }),
        };
        Ok(PyClassInitializer::from(base).add_subclass(PyCallableDenoiser))
    }

    /// Whether a `vjp` was given (DPS needs one).
    #[getter]
    fn has_vjp(slf: PyRef<'_, Self>) -> bool {
        slf.as_super().callable().is_some_and(|c| c.vjp.is_some())
    }
}

/// Loads a prior the way `[prior]` does: `kind` is `"unet"` (a folder written by
/// `diffpost train`, like `models/mnist`), `"guided-diffusion"`, `"diffusers-unet"`, `"gmm"`
/// (an `.npz`) or `"isotropic"`; the other keyword arguments are that kind's keys.
#[pyfunction]
#[pyo3(signature = (path = None, kind = None, **settings))]
pub fn load_prior(
    py: Python<'_>,
    path: Option<std::path::PathBuf>,
    kind: Option<String>,
    settings: Option<&Bound<'_, PyDict>>,
) -> PyResult<PyObject> {
    let mut map = match settings {
        Some(d) => dict_to_map(d)?,
        None => Default::default(),
    };
    let kind = match (kind, &path) {
        (Some(k), _) => k,
        (None, Some(p)) if p.extension().is_some_and(|e| e == "npz") => "gmm".into(),
        (None, Some(p))
            if p.join("weights.safetensors").is_file() && p.join("config.json").is_file() =>
        {
            "unet".into()
        }
        (None, Some(p)) => {
            return Err(PyValueError::new_err(format!(
                "kind: cannot tell the kind of prior of {} (a diffpost model folder holds \
                 weights.safetensors and config.json; an .npz is a gmm): pass kind=\"unet\" | \
                 \"guided-diffusion\" | \"diffusers-unet\" | \"gmm\" | \"isotropic\"",
                p.display()
            )))
        }
        (None, None) => {
            return Err(PyValueError::new_err(
                "path: required (or kind=\"isotropic\" with d=...)",
            ))
        }
    };
    map.insert("kind".into(), serde_json::Value::String(kind.clone()));
    if let Some(p) = &path {
        map.insert(
            "path".into(),
            serde_json::Value::String(p.to_string_lossy().into_owned()),
        );
    }
    let spec: PriorSpec = serde_json::from_value(serde_json::Value::Object(map))
        .map_err(|e| PyValueError::new_err(format!("load_prior(kind = \"{kind}\"): {e}")))?;
    spec.validate().py_err()?;
    let description = serde_json::to_value(&spec).unwrap_or_default();
    let loaded = py
        .allow_threads(|| spec.load(Path::new("."), &Device::Cpu))
        .py_err()?;
    match (loaded.analytic, loaded.perturbed) {
        (Some(g), false) => Ok(Py::new(py, PyGaussianMixture::init(g, description))?.into_any()),
        (analytic, perturbed) => {
            let base = PyPrior {
                den: Den::Native(Arc::from(loaded.denoiser)),
                analytic: analytic.map(Arc::new),
                perturbed,
                image_shape: loaded.image_shape,
                description,
            };
            Ok(Py::new(py, base)?.into_any())
        }
    }
}

/// The exact posterior `p(x | y)` of a mixture prior under `y = A x + eta xi`, again a mixture.
#[pyfunction]
pub fn exact_posterior(
    py: Python<'_>,
    prior: &Bound<'_, PyPrior>,
    operator: &Bound<'_, crate::operator::PyOperator>,
    y: &Bound<'_, PyAny>,
    eta: f64,
) -> PyResult<Py<PyGaussianMixture>> {
    let y = f64_array(y, "y")?;
    let (g, op, yv) = crate::analytic_problem(prior, operator, &y, eta, "exact_posterior")?;
    let post = py
        .allow_threads(|| g.posterior(op.as_ref(), &yv, eta))
        .py_err()?;
    let desc = serde_json::json!({ "kind": "gmm", "k": post.k(), "d": post.dim(), "posterior_of": operator.get().op.name() });
    Py::new(py, PyGaussianMixture::init(post, desc))
}

/// A `[1, d]`-or-`[d]` tensor as f64 rows (for warm starts).
pub fn warm_tensor(a: &PyReadonlyArrayDyn<'_, f64>, d: usize) -> PyResult<Tensor> {
    let shape = a.shape().to_vec();
    let rows = match shape.as_slice() {
        [dd] if *dd == d => 1,
        [n, dd] if *dd == d => *n,
        _ => {
            return Err(PyValueError::new_err(format!(
                "warm_start: expected shape ({d},) or (n, {d}), got {}",
                shape_str(&shape)
            )))
        }
    };
    let v = finite_values(a, "warm_start")?;
    Tensor::from_vec(v, (rows, d), &Device::Cpu)
        .and_then(|t| t.to_dtype(DType::F64))
        .py_err()
}
