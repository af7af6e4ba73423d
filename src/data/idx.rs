//! IDX files (the MNIST / Fashion-MNIST format), raw or gzip-compressed.
//!
//! An IDX file is a 4-byte magic number `00 00 TT DD` (TT = element type, DD = rank),
//! DD big-endian `u32` dimensions, then the elements. Only unsigned bytes (TT = 0x08)
//! are used by image datasets and supported here: images have rank 3
//! (`N x rows x cols`), labels rank 1. Compression is detected from the gzip magic
//! bytes, not from the file name.

use std::io::Read;
use std::path::Path;

use super::DataError;
use super::error::io_error;

/// A decoded IDX array of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// The dimensions from the header, outermost first.
    pub dims: Vec<usize>,
    /// The elements, row-major.
    pub data: Vec<u8>,
}

/// Gunzips `bytes` if they start with the gzip magic, else returns them as they are.
pub fn maybe_gunzip(bytes: Vec<u8>, path: &Path) -> Result<Vec<u8>, DataError> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_end(&mut out)
            .map_err(|e| DataError::BadIdx {
                path: path.to_path_buf(),
                problem: format!("gzip stream is corrupt or truncated ({e})"),
            })?;
        Ok(out)
    } else {
        Ok(bytes)
    }
}

/// Parses an IDX byte array (already decompressed) of rank `rank`; `path` is only used
/// in error messages.
pub fn parse_idx(bytes: &[u8], rank: usize, path: &Path) -> Result<IdxArray, DataError> {
    let bad = |problem: String| DataError::BadIdx {
        path: path.to_path_buf(),
        problem,
    };
    if bytes.len() < 4 {
        return Err(bad(format!(
            "only {} bytes, too short for an IDX header",
            bytes.len()
        )));
    }
    let expected_magic = [0u8, 0, 0x08, rank as u8];
    if bytes[..4] != expected_magic {
        let kind = if rank == 3 { "images" } else { "labels" };
        return Err(bad(format!(
            "wrong magic number 0x{:02x}{:02x}{:02x}{:02x}, expected 0x{:08x} (unsigned-byte {kind}, rank {rank})",
            bytes[0],
            bytes[1],
            bytes[2],
            bytes[3],
            u32::from_be_bytes(expected_magic)
        )));
    }
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(bad(format!(
            "truncated header: {} bytes, need {header}",
            bytes.len()
        )));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|d| {
            let o = 4 + 4 * d;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    let body: usize = dims.iter().product();
    if bytes.len() != header + body {
        let dims_s = dims
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("x");
        let what = if bytes.len() < header + body {
            "truncated"
        } else {
            "trailing bytes"
        };
        return Err(bad(format!(
            "size mismatch ({what}): header says {dims_s} = {body} bytes of data, file has {}",
            bytes.len() - header
        )));
    }
    if rank == 3 && (dims[1] == 0 || dims[2] == 0) {
        return Err(bad(format!(
            "images of size {}x{} are empty",
            dims[1], dims[2]
        )));
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// Reads an IDX file (raw or `.gz`) of rank `rank` from disk.
pub fn read_idx(path: &Path, rank: usize) -> Result<IdxArray, DataError> {
    let what = if rank == 3 {
        "IDX images file"
    } else {
        "IDX labels file"
    };
    let bytes = std::fs::read(path).map_err(|e| io_error(path, what, e))?;
    let bytes = maybe_gunzip(bytes, path)?;
    parse_idx(&bytes, rank, path)
}

/// Decodes images (rank-3 IDX) and optional labels (rank-1 IDX), raw or gzipped, and
/// checks that their item counts agree.
pub(crate) fn images_and_labels(
    images: (&[u8], &Path),
    labels: Option<(&[u8], &Path)>,
) -> Result<(IdxArray, Option<IdxArray>), DataError> {
    let img = parse_idx(&maybe_gunzip(images.0.to_vec(), images.1)?, 3, images.1)?;
    let lab = match labels {
        Some((bytes, path)) => {
            let lab = parse_idx(&maybe_gunzip(bytes.to_vec(), path)?, 1, path)?;
            if lab.dims[0] != img.dims[0] {
                return Err(DataError::IdxCountMismatch {
                    images: images.1.to_path_buf(),
                    labels: path.to_path_buf(),
                    n_images: img.dims[0],
                    n_labels: lab.dims[0],
                });
            }
            Some(lab)
        }
        None => None,
    };
    Ok((img, lab))
}
