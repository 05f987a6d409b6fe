//! Conversions between numpy arrays, Python values and the library's types, and the mapping of
//! library errors to Python exceptions. Validation here names the Python argument.

use candle_core::{Device, Tensor};
use numpy::{PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::exceptions::{
    PyKeyboardInterrupt, PyMemoryError, PyOSError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

pyo3::create_exception!(
    _diffpost,
    DivergedError,
    PyRuntimeError,
    "A sampler left the problem's scale or produced NaN/inf (lower h_rel, h or zeta)."
);

/// A library error as the Python exception that fits it.
pub fn to_py(e: diffpost::Error) -> PyErr {
    use diffpost::Error as E;
    let msg = e.to_string();
    match e {
        E::Shape { .. }
        | E::InvalidParam { .. }
        | E::NonFinite { .. }
        | E::Config { .. }
        | E::SigmaOutOfRange { .. }
        | E::Unsupported(_)
        | E::File { .. } => PyValueError::new_err(msg),
        E::Diverged { .. } => DivergedError::new_err(msg),
        E::Memory { .. } => PyMemoryError::new_err(msg),
        E::Io(_) => PyOSError::new_err(msg),
        E::Cancelled(_) => PyKeyboardInterrupt::new_err(msg),
        E::Numerical(_) | E::Candle(_) => PyRuntimeError::new_err(msg),
    }
}

/// `Result` of the library as a Python result.
pub trait IntoPy<T> {
    fn py_err(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for diffpost::Result<T> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

impl<T> IntoPy<T> for candle_core::Result<T> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(|e| to_py(e.into()))
    }
}

/// The values of `a` in C (row-major) order, whatever its memory layout: one copy, straight
/// from memory when `a` is C-contiguous (numpy's `as_slice` also accepts Fortran order, whose
/// memory order is not the logical one).
pub fn c_order_values(a: &PyReadonlyArrayDyn<'_, f64>) -> Vec<f64> {
    match a.as_slice() {
        Ok(s) if a.is_c_contiguous() => s.to_vec(),
        _ => a.as_array().iter().copied().collect(),
    }
}

/// The values of `a` (C order), checked finite; `name` names the argument in errors.
pub fn finite_values(a: &PyReadonlyArrayDyn<'_, f64>, name: &str) -> PyResult<Vec<f64>> {
    let v = c_order_values(a);
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(PyValueError::new_err(format!(
            "{name}: non-finite value {} at flat index {i} (shape {})",
            v[i],
            shape_str(a.shape())
        )));
    }
    Ok(v)
}

/// A `[rows, cols]` tensor from a `[cols]` (one row, `rows = None`) or `[B, cols]` array.
/// Returns the tensor and whether the input was one vector.
pub fn rows_tensor(
    a: &PyReadonlyArrayDyn<'_, f64>,
    cols: usize,
    name: &str,
) -> PyResult<(Tensor, bool)> {
    let shape = a.shape().to_vec();
    let (b, single) = match shape.as_slice() {
        [c] if *c == cols => (1, true),
        [b, c] if *c == cols => (*b, false),
        _ => {
            return Err(PyValueError::new_err(format!(
                "{name}: expected shape ({cols},) or (B, {cols}), got {}",
                shape_str(&shape)
            )))
        }
    };
    let v = finite_values(a, name)?;
    Ok((
        Tensor::from_vec(v, (b, cols), &Device::Cpu).py_err()?,
        single,
    ))
}

/// `(3, 4)`-style shape text, as numpy prints it.
pub fn shape_str(shape: &[usize]) -> String {
    match shape {
        [one] => format!("({one},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A `[B, n]` f64 tensor as a numpy array of shape `shape` (the tensor's elements in C order;
/// one copy out of candle's storage, none into numpy).
pub fn tensor_to_numpy<'py>(
    py: Python<'py>,
    t: &Tensor,
    shape: &[usize],
) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
    let v: Vec<f64> = t
        .to_dtype(candle_core::DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .py_err()?;
    vec_to_numpy(py, v, shape)
}

/// A vector as a numpy array of shape `shape` (moved, not copied).
pub fn vec_to_numpy<'py>(
    py: Python<'py>,
    v: Vec<f64>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyArrayDyn<f64>>> {
    let a = numpy::PyArray1::from_vec(py, v);
    a.reshape(shape.to_vec())
}

/// A Python value of a settings dict as JSON: bool, int, float, str, None and lists of them.
pub fn to_json(v: &Bound<'_, PyAny>, name: &str) -> PyResult<serde_json::Value> {
    use serde_json::Value;
    if v.is_none() {
        return Ok(Value::Null);
    }
    if v.is_instance_of::<PyBool>() {
        return Ok(Value::Bool(v.extract()?));
    }
    if v.is_instance_of::<PyInt>() {
        if let Ok(u) = v.extract::<u64>() {
            return Ok(Value::from(u));
        }
        return Ok(Value::from(v.extract::<i64>().map_err(|_| {
            PyValueError::new_err(format!("{name}: integer out of range"))
        })?));
    }
    if v.is_instance_of::<PyFloat>() {
        let f: f64 = v.extract()?;
        return serde_json::Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| PyValueError::new_err(format!("{name}: must be finite, got {f}")));
    }
    if v.is_instance_of::<PyString>() {
        return Ok(Value::String(v.extract()?));
    }
    if v.is_instance_of::<PyList>() || v.is_instance_of::<PyTuple>() {
        let mut out = Vec::new();
        for (i, item) in v.try_iter()?.enumerate() {
            out.push(to_json(&item?, &format!("{name}[{i}]"))?);
        }
        return Ok(Value::Array(out));
    }
    // numpy scalars and other numbers.
    if let Ok(f) = v.extract::<f64>() {
        if v.hasattr("is_integer").unwrap_or(false) || v.hasattr("dtype").unwrap_or(false) {
            if let Ok(i) = v.extract::<i64>() {
                return Ok(Value::from(i));
            }
            return serde_json::Number::from_f64(f)
                .map(Value::Number)
                .ok_or_else(|| PyValueError::new_err(format!("{name}: must be finite, got {f}")));
        }
    }
    Err(PyTypeError::new_err(format!(
        "{name}: expected a bool, int, float, str or list, got {}",
        v.get_type().name()?
    )))
}

/// A JSON value as Python objects (through the `json` module).
pub fn from_json<'py>(py: Python<'py>, v: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    let text = serde_json::to_string(v).map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
    py.import("json")?.call_method1("loads", (text,))
}

/// A settings dict as a JSON map (keys must be strings).
pub fn dict_to_map(d: &Bound<'_, PyDict>) -> PyResult<serde_json::Map<String, serde_json::Value>> {
    let mut map = serde_json::Map::new();
    for (k, v) in d.iter() {
        let key: String = k
            .extract()
            .map_err(|_| PyTypeError::new_err("setting names must be strings"))?;
        let val = to_json(&v, &key)?;
        map.insert(key, val);
    }
    Ok(map)
}

/// `obj` as a float64 numpy array: float64 arrays as they are (no copy), other real numeric
/// arrays, lists and scalars converted; complex, object, string and other dtypes refused with a
/// `TypeError` naming the argument.
pub fn f64_array<'py>(
    obj: &Bound<'py, PyAny>,
    name: &str,
) -> PyResult<PyReadonlyArrayDyn<'py, f64>> {
    if let Ok(a) = obj.extract::<PyReadonlyArrayDyn<'py, f64>>() {
        return Ok(a);
    }
    let py = obj.py();
    let np = py.import("numpy")?;
    let arr = np.call_method1("asarray", (obj,)).map_err(|e| {
        PyTypeError::new_err(format!("{name}: expected a real numeric array ({e})"))
    })?;
    let kind: String = arr.getattr("dtype")?.getattr("kind")?.extract()?;
    if !["b", "i", "u", "f"].contains(&kind.as_str()) {
        return Err(PyTypeError::new_err(format!(
            "{name}: expected a real numeric array, got dtype {}",
            arr.getattr("dtype")?.str()?
        )));
    }
    let f = arr.call_method1("astype", (np.getattr("float64")?,))?;
    f.extract::<PyReadonlyArrayDyn<'py, f64>>()
}
