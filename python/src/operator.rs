//! Linear operators `A: R^d -> R^m` from Python: the kinds of the CLI's `[operator]` table, each
//! built by the library. Vectors are `[d]` or batches `[B, d]` (images flattened, C-order).

use std::sync::Arc;

use diffpost::operator::image::ImageOperatorSpec;
use diffpost::operator::{Dense, Identity, LinearOperator, Mask};
use nalgebra::DMatrix;
use numpy::{PyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::convert::{f64_array, finite_values, rows_tensor, shape_str, tensor_to_numpy, IntoPy};

/// A linear operator `A: R^d -> R^m` with its adjoint (the base class of every operator).
#[pyclass(frozen, subclass, module = "diffpost._diffpost", name = "Operator")]
pub struct PyOperator {
    pub op: Arc<dyn LinearOperator>,
    /// What the operator is, for `summary.json` (the CLI's `[operator]` table where there is one).
    pub description: serde_json::Value,
}

impl PyOperator {
    fn new(op: Box<dyn LinearOperator>, description: serde_json::Value) -> Self {
        Self {
            op: Arc::from(op),
            description,
        }
    }
}

#[pymethods]
impl PyOperator {
    /// `A x` for `x` of shape `(d,)` or `(B, d)`; returns `(m,)` or `(B, m)`.
    fn apply<'py>(
        &self,
        py: Python<'py>,
        x: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
        let x = f64_array(x, "x")?;
        let (t, single) = rows_tensor(&x, self.op.in_dim(), "x")?;
        let op = self.op.clone();
        let out = py.allow_threads(move || op.apply(&t)).py_err()?;
        let b = out.dims()[0];
        let m = self.op.out_dim();
        tensor_to_numpy(py, &out, &(if single { vec![m] } else { vec![b, m] }))
    }

    /// `A^T y` for `y` of shape `(m,)` or `(B, m)`; returns `(d,)` or `(B, d)`.
    fn adjoint<'py>(
        &self,
        py: Python<'py>,
        y: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
        let y = f64_array(y, "y")?;
        let (t, single) = rows_tensor(&y, self.op.out_dim(), "y")?;
        let op = self.op.clone();
        let out = py.allow_threads(move || op.adjoint(&t)).py_err()?;
        let b = out.dims()[0];
        let d = self.op.in_dim();
        tensor_to_numpy(py, &out, &(if single { vec![d] } else { vec![b, d] }))
    }

    /// Input dimension `d`.
    #[getter]
    fn in_dim(&self) -> usize {
        self.op.in_dim()
    }

    /// Output dimension `m` (real measurements).
    #[getter]
    fn out_dim(&self) -> usize {
        self.op.out_dim()
    }

    /// The image shape `(C, H, W)` of image operators, else `None`.
    #[getter]
    fn image_shape(&self) -> Option<(usize, usize, usize)> {
        self.op.image_shape().map(|[c, h, w]| (c, h, w))
    }

    /// Spectral norm `||A||` (power iteration, as the samplers compute it).
    fn norm(&self, py: Python<'_>) -> PyResult<f64> {
        let op = self.op.clone();
        py.allow_threads(move || diffpost::operator::op_norm(op.as_ref(), 500, 0))
            .py_err()
    }

    #[getter]
    fn name(&self) -> String {
        self.op.name()
    }

    fn __repr__(&self) -> String {
        format!(
            "<diffpost operator {}: R^{} -> R^{}>",
            self.op.name(),
            self.op.in_dim(),
            self.op.out_dim()
        )
    }
}

/// A dense matrix `A` of shape `(m, d)` (the CLI's `kind = "matrix"`).
#[pyclass(frozen, extends = PyOperator, module = "diffpost._diffpost", name = "Matrix")]
pub struct PyMatrix;

#[pymethods]
impl PyMatrix {
    #[new]
    fn new(a: &Bound<'_, PyAny>) -> PyResult<(Self, PyOperator)> {
        let a = f64_array(a, "a")?;
        let (m, d) = match a.shape() {
            [m, d] if *m > 0 && *d > 0 => (*m, *d),
            other => {
                return Err(PyValueError::new_err(format!(
                    "A: expected a matrix of shape (m, d) with m, d >= 1, got {}",
                    shape_str(other)
                )))
            }
        };
        let v = finite_values(&a, "A")?;
        let op = Dense::new(DMatrix::from_row_slice(m, d, &v)).py_err()?;
        let desc = serde_json::json!({ "kind": "matrix", "m": m, "d": d });
        Ok((PyMatrix, PyOperator::new(Box::new(op), desc)))
    }
}

/// A 0/1 mask of shape `(d,)`: `y` holds the observed coordinates (mask 1), in order
/// (`kind = "mask"`).
#[pyclass(frozen, extends = PyOperator, module = "diffpost._diffpost", name = "Mask")]
pub struct PyMask;

#[pymethods]
impl PyMask {
    #[new]
    fn new(mask: &Bound<'_, PyAny>) -> PyResult<(Self, PyOperator)> {
        let mask = f64_array(mask, "mask")?;
        if mask.ndim() != 1 || mask.len() == 0 {
            return Err(PyValueError::new_err(format!(
                "mask: expected shape (d,) with d >= 1, got {}",
                shape_str(mask.shape())
            )));
        }
        let v = finite_values(&mask, "mask")?;
        let op = Mask::from_indicator(&v).py_err()?;
        let desc = serde_json::json!({ "kind": "mask", "d": v.len() });
        Ok((PyMask, PyOperator::new(Box::new(op), desc)))
    }
}

/// The identity on `R^d` (denoising; `kind = "identity"`).
#[pyclass(frozen, extends = PyOperator, module = "diffpost._diffpost", name = "Identity")]
pub struct PyIdentity;

#[pymethods]
impl PyIdentity {
    #[new]
    fn new(d: usize) -> PyResult<(Self, PyOperator)> {
        if d == 0 {
            return Err(PyValueError::new_err("d: must be >= 1"));
        }
        let desc = serde_json::json!({ "kind": "identity", "d": d });
        Ok((
            PyIdentity,
            PyOperator::new(Box::new(Identity::new(d)), desc),
        ))
    }
}

/// An image operator from its `[operator]` table, for images of shape `(C, H, W)`.
fn image(shape: (usize, usize, usize), spec: ImageOperatorSpec) -> PyResult<PyOperator> {
    let s = [shape.0, shape.1, shape.2];
    let op = spec.build(s).py_err()?;
    let mut desc = serde_json::to_value(&spec).unwrap_or_default();
    if let Some(o) = desc.as_object_mut() {
        o.insert("shape".into(), serde_json::json!(s));
    }
    Ok(PyOperator::new(op, desc))
}

/// Pixels missing at random: `rate` the missing fraction in [0, 1), drawn from `seed`, the same
/// for every channel (`kind = "inpaint"`).
#[pyclass(frozen, extends = PyOperator, module = "diffpost._diffpost", name = "Inpaint")]
pub struct PyInpaint;

#[pymethods]
impl PyInpaint {
    #[new]
    #[pyo3(signature = (shape, rate, seed = 0))]
    fn new(shape: (usize, usize, usize), rate: f64, seed: u64) -> PyResult<(Self, PyOperator)> {
        Ok((
            PyInpaint,
            image(shape, ImageOperatorSpec::Inpaint { rate, seed })?,
        ))
    }
}

/// A missing box of `height x width` pixels at (`top`, `left`), all channels (`kind = "box"`).
#[pyclass(frozen, extends = PyOperator, module = "diffpost._diffpost", name = "Box")]
pub struct PyBox;

#[pymethods]
impl PyBox {
    #[new]
    fn new(
        shape: (usize, usize, usize),
        top: usize,
        left: usize,
        height: usize,
        width: usize,
    ) -> PyResult<(Self, PyOperator)> {
        let spec = ImageOperatorSpec::Box {
            top,
            left,
            height,
            width,
        };
        Ok((PyBox, image(shape, spec)?))
    }
}

/// `factor x factor` average pooling (`kind = "superres"`).
#[pyclass(frozen, extends = PyOperator, module = "diffpost._diffpost", name = "SuperRes")]
pub struct PySuperRes;

#[pymethods]
impl PySuperRes {
    #[new]
    fn new(shape: (usize, usize, usize), factor: usize) -> PyResult<(Self, PyOperator)> {
        Ok((
            PySuperRes,
            image(shape, ImageOperatorSpec::Superres { factor })?,
        ))
    }
}

/// Gaussian blur with an odd `kernel_size` and standard deviation `std` in pixels, circular
/// boundary (`kind = "blur"`).
#[pyclass(frozen, extends = PyOperator, module = "diffpost._diffpost", name = "Blur")]
pub struct PyBlur;

#[pymethods]
impl PyBlur {
    #[new]
    fn new(
        shape: (usize, usize, usize),
        kernel_size: usize,
        std: f64,
    ) -> PyResult<(Self, PyOperator)> {
        Ok((
            PyBlur,
            image(shape, ImageOperatorSpec::Blur { kernel_size, std })?,
        ))
    }
}

/// Single-coil Cartesian MRI on `(1, H, W)`: about `H / acceleration` phase-encode rows kept,
/// the `center_lines` central ones always, the others drawn from `seed` (`kind = "mri"`).
#[pyclass(frozen, extends = PyOperator, module = "diffpost._diffpost", name = "MRI")]
pub struct PyMri;

#[pymethods]
impl PyMri {
    #[new]
    #[pyo3(signature = (shape, acceleration, center_lines, seed = 0))]
    fn new(
        shape: (usize, usize, usize),
        acceleration: f64,
        center_lines: usize,
        seed: u64,
    ) -> PyResult<(Self, PyOperator)> {
        let spec = ImageOperatorSpec::Mri {
            acceleration,
            center_lines,
            seed,
        };
        Ok((PyMri, image(shape, spec)?))
    }
}
