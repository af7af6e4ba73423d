//! What a run leaves for people to read: metrics files, charts, image grids and the
//! `report.md` that ties them together.
//!
//! - [`metrics`](mod@crate::report::metrics): `metrics.jsonl` and `metrics.csv` side by
//!   side, one record per line, flushed as written, and read back to rebuild curves on
//!   resume.
//! - [`plots`](mod@crate::report::plots): line charts (training curves) and class-coloured
//!   scatter plots (the embedding PCA), drawn with `plotters`. Text uses DejaVu Sans
//!   compiled into the binary, so charts render the same on machines without system fonts.
//! - [`curves`](mod@crate::report::curves): `loss.png`, `lr.png` and `knn.png` (drawn
//!   for every run) and the collapse curves, from a run's metrics file.
//! - [`grid`](mod@crate::report::grid): PNG grids of images: first-layer filters,
//!   activation maps, nearest neighbours with green/red frames, augmented views.
//! - [`tensorboard`](mod@crate::report::tensorboard): the TensorBoard events file of
//!   every run (scalars and the pictures), written by hand (records with masked
//!   CRC-32C around a few protobuf fields).
//! - [`markdown`](mod@crate::report::markdown): `report.md`, with the run's facts, the
//!   downstream table against its baselines, and links to the pictures.
//!
//! Invariants: nothing here reads a model, a recipe or a dataset (callers hand over
//! numbers and images); images are planar CHW `f32` in `[0, 1]` with 1 or 3 channels
//! (values outside are clamped); every PNG is 8-bit RGB; a failure to write is a
//! [`ReportError`](crate::report::ReportError) naming the file, never a panic.

use std::fmt;
use std::path::PathBuf;

pub mod curves;
pub mod grid;
pub mod markdown;
pub mod metrics;
pub mod plots;
pub mod tensorboard;

pub use grid::{feature_maps_png, filters_png, neighbors_png, views_png};
pub use markdown::{MetricsTable, ReportInput, render_report, write_report};
pub use metrics::{Kind, MetricsWriter, Record, read_jsonl};
pub use plots::{Series, line_chart, scatter};

/// Why a report file could not be written or read.
#[derive(Debug)]
pub enum ReportError {
    /// Reading or writing a file failed.
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Encoding a PNG failed.
    Image {
        /// The file.
        path: PathBuf,
        /// The encoder's error.
        source: image::ImageError,
    },
    /// Drawing a chart failed.
    Plot {
        /// The file.
        path: PathBuf,
        /// What the drawing library said.
        message: String,
    },
    /// The input cannot be drawn or written (sizes that do not match, no images, …).
    Input(String),
    /// A metrics file has a line that is not a record.
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

impl fmt::Display for ReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReportError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            ReportError::Image { path, source } => {
                write!(f, "{}: cannot write the PNG: {source}", path.display())
            }
            ReportError::Plot { path, message } => {
                write!(f, "{}: cannot draw the chart: {message}", path.display())
            }
            ReportError::Input(m) => write!(f, "cannot draw the report: {m}"),
            ReportError::Parse {
                path,
                line,
                message,
            } => write!(f, "{}:{line}: {message}", path.display()),
        }
    }
}

impl std::error::Error for ReportError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReportError::Io { source, .. } => Some(source),
            ReportError::Image { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Wraps an I/O error with its path.
pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ReportError + '_ {
    move |source| ReportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `rgb` (`width × height`, interleaved 8-bit RGB) to `path` as a PNG.
pub(crate) fn save_rgb(
    path: &std::path::Path,
    width: usize,
    height: usize,
    rgb: Vec<u8>,
) -> Result<(), ReportError> {
    let too_big = || ReportError::Input(format!("a {width}x{height} picture is too large"));
    let w = u32::try_from(width).map_err(|_| too_big())?;
    let h = u32::try_from(height).map_err(|_| too_big())?;
    let img = image::RgbImage::from_raw(w, h, rgb).ok_or_else(too_big)?;
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|source| ReportError::Image {
            path: path.to_path_buf(),
            source,
        })
}

/// A duration as people read it, the one format of the log lines (the ETA) and of
/// `report.md`: `42.0 s` under a minute, `3 min 7 s`, `1 h 2 min`; `—` when unknown.
pub fn duration(secs: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        return "—".into();
    }
    let s = secs.round() as u64;
    match s {
        _ if secs < 60.0 => format!("{secs:.1} s"),
        _ if s < 3600 => format!("{} min {} s", s / 60, s % 60),
        _ => format!("{} h {} min", s / 3600, (s % 3600) / 60),
    }
}
