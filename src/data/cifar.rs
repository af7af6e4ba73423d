//! CIFAR-10 and CIFAR-100 binary batches.
//!
//! A batch is a sequence of fixed-size records: the label byte(s), then 3072 bytes of a
//! 32x32 RGB image stored planar (1024 red, 1024 green, 1024 blue, each row-major), which
//! is already the CHW layout of [`super::Image`]. CIFAR-10 records have one label byte
//! (3073 bytes); CIFAR-100 records have a coarse then a fine label byte (3074 bytes).

use std::path::Path;

use super::DataError;
use super::error::io_error;

/// Pixel bytes of one CIFAR image (3 x 32 x 32).
pub const CIFAR_IMAGE_BYTES: usize = 3 * 32 * 32;

/// Which CIFAR variant a batch belongs to, and for CIFAR-100 which label to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CifarKind {
    /// CIFAR-10: one label byte, 10 classes.
    Cifar10,
    /// CIFAR-100 with its 100 fine labels (the usual choice).
    Cifar100Fine,
    /// CIFAR-100 with its 20 coarse (superclass) labels.
    Cifar100Coarse,
}

impl CifarKind {
    /// Bytes per record: label byte(s) plus the image.
    pub fn record_bytes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 1 + CIFAR_IMAGE_BYTES,
            _ => 2 + CIFAR_IMAGE_BYTES,
        }
    }

    /// Number of classes of the chosen label.
    pub fn num_classes(self) -> usize {
        match self {
            CifarKind::Cifar10 => 10,
            CifarKind::Cifar100Fine => 100,
            CifarKind::Cifar100Coarse => 20,
        }
    }

    /// Offset of the chosen label byte within a record.
    fn label_offset(self) -> usize {
        match self {
            CifarKind::Cifar100Fine => 1,
            _ => 0,
        }
    }
}

/// Parses one batch's bytes, appending pixels (planar CHW) and labels; `path` is used in
/// error messages.
pub fn parse_batch(
    bytes: &[u8],
    kind: CifarKind,
    path: &Path,
    pixels: &mut Vec<u8>,
    labels: &mut Vec<u32>,
) -> Result<(), DataError> {
    let bad = |problem: String| DataError::BadCifar {
        path: path.to_path_buf(),
        problem,
    };
    let rec = kind.record_bytes();
    if bytes.is_empty() {
        return Err(bad("file is empty".into()));
    }
    if !bytes.len().is_multiple_of(rec) {
        let other = if rec == 3073 { 3074 } else { 3073 };
        let hint = if bytes.len().is_multiple_of(other) {
            format!(
                " (it is a multiple of {other}: is this a {} batch?)",
                if other == 3073 {
                    "CIFAR-10"
                } else {
                    "CIFAR-100"
                }
            )
        } else {
            String::new()
        };
        return Err(bad(format!(
            "truncated: {} bytes is not a whole number of {rec}-byte records ({} complete, {} bytes left over){hint}",
            bytes.len(),
            bytes.len() / rec,
            bytes.len() % rec
        )));
    }
    let label_offset = kind.label_offset();
    let label_bytes = rec - CIFAR_IMAGE_BYTES;
    for (r, record) in bytes.chunks_exact(rec).enumerate() {
        let y = record[label_offset] as usize;
        if y >= kind.num_classes() {
            return Err(bad(format!(
                "record {r} has label {y}, but {kind:?} has {} classes",
                kind.num_classes()
            )));
        }
        labels.push(y as u32);
        pixels.extend_from_slice(&record[label_bytes..]);
    }
    Ok(())
}

/// Reads one batch file from disk; see [`parse_batch`].
pub fn read_batch(
    path: &Path,
    kind: CifarKind,
    pixels: &mut Vec<u8>,
    labels: &mut Vec<u32>,
) -> Result<(), DataError> {
    let bytes = std::fs::read(path).map_err(|e| io_error(path, "CIFAR batch", e))?;
    parse_batch(&bytes, kind, path, pixels, labels)
}
