//! Errors from building a model or checking its shapes.

use std::fmt;

use super::params::ParamError;

/// Why a model cannot be built or run on an input.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelError {
    /// A parameter could not be registered.
    Param(ParamError),
    /// A configuration value is out of range.
    Config(String),
    /// A layer got a different number of channels than it was built for.
    Channels {
        /// Layer name.
        layer: String,
        /// Channels it was built for.
        expected: usize,
        /// Channels it got.
        found: usize,
    },
    /// The spatial size shrank below a layer's window (too many stride-2 stages).
    InputTooSmall {
        /// Layer name.
        layer: String,
        /// Height reaching the layer.
        height: usize,
        /// Width reaching the layer.
        width: usize,
        /// The layer's kernel side.
        kernel: usize,
        /// The layer's stride.
        stride: usize,
    },
    /// A head's input size does not match what feeds it.
    DimMismatch {
        /// The part that does not fit (`head`, `prototypes`).
        part: String,
        /// Size it expects.
        expected: usize,
        /// Size it is given.
        found: usize,
    },
    /// The input tensor's shape differs from the one the model was planned for.
    InputShape {
        /// Planned `(c, h, w)`.
        expected: (usize, usize, usize),
        /// Given `(c, h, w)`.
        found: (usize, usize, usize),
    },
}

impl ModelError {
    /// `Ok` when a part is given the size it expects, else [`ModelError::DimMismatch`].
    pub fn check_dim(part: &str, expected: usize, found: usize) -> Result<(), ModelError> {
        if expected == found {
            return Ok(());
        }
        Err(ModelError::DimMismatch {
            part: part.into(),
            expected,
            found,
        })
    }
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::Param(e) => write!(f, "{e}"),
            ModelError::Config(m) => write!(f, "invalid model configuration: {m}"),
            ModelError::Channels {
                layer,
                expected,
                found,
            } => write!(
                f,
                "layer `{layer}` expects {expected} input channels but gets {found}"
            ),
            ModelError::InputTooSmall {
                layer,
                height,
                width,
                kernel,
                stride,
            } => write!(
                f,
                "input too small: layer `{layer}` ({kernel}x{kernel} window, stride {stride}) \
                 gets a {height}x{width} map; use a larger input or fewer stride-2 stages"
            ),
            ModelError::DimMismatch {
                part,
                expected,
                found,
            } => write!(
                f,
                "{part} expects {expected} input features but the layer before gives {found}"
            ),
            ModelError::InputShape { expected, found } => write!(
                f,
                "input is {}x{}x{} but the model was built for {}x{}x{}",
                found.0, found.1, found.2, expected.0, expected.1, expected.2
            ),
        }
    }
}

impl std::error::Error for ModelError {}

impl From<ParamError> for ModelError {
    fn from(e: ParamError) -> Self {
        ModelError::Param(e)
    }
}
