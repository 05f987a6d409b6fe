//! One error type for the library (candle style: structured fields, no panics on user input).

use std::path::PathBuf;

/// Errors returned by the `diffpost` library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor or array had the wrong shape.
    #[error("shape mismatch for {what}: expected {expected}, got {actual:?}")]
    Shape {
        what: String,
        expected: String,
        actual: Vec<usize>,
    },
    /// A parameter was out of its valid range (named after the config field).
    #[error("invalid value for `{field}`: {reason}")]
    InvalidParam { field: String, reason: String },
    /// Non-finite values in user input.
    #[error("non-finite values in {what}")]
    NonFinite { what: String },
    /// A file could not be read or had bad content.
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    /// A config file's field is missing, unknown or out of range.
    #[error("{}: [{field}] {reason}", file.display())]
    Config {
        file: PathBuf,
        field: String,
        reason: String,
    },
    /// A sampler diverged (NaN or blow-up).
    #[error("{sampler} diverged at stage {stage}, step {step}: {reason}")]
    Diverged {
        sampler: String,
        stage: usize,
        step: usize,
        reason: String,
    },
    /// A noise level outside a model's trained range.
    #[error("sigma = {sigma} is outside the model's range [{min}, {max}]")]
    SigmaOutOfRange { sigma: f64, min: f64, max: f64 },
    /// Numerical failure (e.g. a covariance that is not positive definite).
    #[error("numerical error: {0}")]
    Numerical(String),
    /// An operation is not supported by this prior/operator.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A buffer larger than the machine can hold (see [`crate::limits::check_alloc`]).
    #[error("{what}: {reason}")]
    Memory { what: String, reason: String },
    /// The run was stopped by its caller (a cancel flag, see
    /// `diffpost::run::RunContext::with_cancel`) or by a failed callback.
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// Error from candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// I/O error.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Library result type.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn param(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidParam {
            field: field.into(),
            reason: reason.into(),
        }
    }
    pub fn shape(what: impl Into<String>, expected: impl Into<String>, actual: &[usize]) -> Self {
        Error::Shape {
            what: what.into(),
            expected: expected.into(),
            actual: actual.to_vec(),
        }
    }
}
