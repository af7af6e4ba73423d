//! The error type of the augment module.

use std::fmt;
use std::path::PathBuf;

/// Why an augmentation op, chain or preview could not be built or written.
#[derive(Debug)]
pub enum AugmentError {
    /// A parameter of an op is out of its allowed range.
    InvalidParameter {
        /// The op, in the recipe's spelling (`random_resized_crop`, `color_jitter`, ...).
        op: &'static str,
        /// The parameter name (`scale`, `p`, ...).
        param: &'static str,
        /// What is wrong and what is allowed.
        message: String,
    },
    /// The chain as a whole is inconsistent (e.g. no views, a crop inside a multi-crop
    /// pipeline, a normalisation with the wrong number of channels).
    InvalidChain(String),
    /// An image has a channel count other than 1 or 3, or does not match what an op expects.
    Channels {
        /// The channel count that was expected.
        expected: usize,
        /// The channel count that was found.
        found: usize,
    },
    /// A problem located at a recipe path (`augment.pipeline.2`, `data.normalize`, ...).
    At {
        /// Dotted recipe path of the offending value.
        path: String,
        /// The problem.
        source: Box<AugmentError>,
    },
    /// The preview was asked for something it cannot draw (e.g. no images).
    Preview(String),
    /// The preview PNG could not be encoded or written.
    Write {
        /// The file being written.
        path: PathBuf,
        /// The underlying error.
        source: image::ImageError,
    },
}

impl fmt::Display for AugmentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AugmentError::InvalidParameter { op, param, message } => {
                write!(f, "augment op `{op}`: parameter `{param}` {message}")
            }
            AugmentError::InvalidChain(message) => write!(f, "augment chain: {message}"),
            AugmentError::Channels { expected, found } => write!(
                f,
                "image has {found} channel(s) where {expected} were expected (only 1 or 3 are supported)"
            ),
            AugmentError::At { path, source } => write!(f, "{path}: {source}"),
            AugmentError::Preview(message) => write!(f, "preview: {message}"),
            AugmentError::Write { path, source } => {
                write!(f, "cannot write preview `{}`: {source}", path.display())
            }
        }
    }
}

impl std::error::Error for AugmentError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AugmentError::Write { source, .. } => Some(source),
            AugmentError::At { source, .. } => Some(source.as_ref()),
            _ => None,
        }
    }
}

/// Shorthand for an [`AugmentError::InvalidParameter`].
pub(crate) fn invalid(op: &'static str, param: &'static str, message: String) -> AugmentError {
    AugmentError::InvalidParameter { op, param, message }
}

/// Checks that `p` is a probability.
pub(crate) fn check_probability(op: &'static str, p: f64) -> Result<(), AugmentError> {
    if (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(invalid(op, "p", format!("must be in [0, 1], got {p}")))
    }
}

/// Checks that `(lo, hi)` is a finite range with `lo <= hi`.
pub(crate) fn check_range(
    op: &'static str,
    param: &'static str,
    (lo, hi): (f64, f64),
) -> Result<(), AugmentError> {
    if !lo.is_finite() || !hi.is_finite() {
        return Err(invalid(
            op,
            param,
            format!("must be finite, got [{lo}, {hi}]"),
        ));
    }
    if lo > hi {
        return Err(invalid(
            op,
            param,
            format!("must be [min, max] with min <= max, got [{lo}, {hi}]"),
        ));
    }
    Ok(())
}
