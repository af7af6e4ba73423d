//! TensorBoard event files: the run's numbers and pictures for `tensorboard --logdir`.
//!
//! A run directory holds one `events.out.tfevents.<unix seconds>.<host>` file per
//! invocation of `recipe run` (TensorBoard reads every file of a directory, in name
//! order, as one run). A file is a sequence of records, each
//!
//! ```text
//! u64 length (little-endian) · u32 masked CRC-32C of those 8 bytes
//! data (length bytes)        · u32 masked CRC-32C of the data
//! ```
//!
//! where the data is a protobuf `Event` (TensorFlow's `event.proto` and
//! `summary.proto`); only the fields written here are encoded:
//!
//! ```text
//! Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
//! Summary { repeated Value value = 1; }
//! Value   { string tag = 1; float simple_value = 2; Image image = 4; }
//! Image   { int32 height = 1; int32 width = 2; int32 colorspace = 3; bytes encoded_image_string = 4; }
//! ```
//!
//! The first record of a file is an `Event` with `file_version` `brain.Event:2`.
//! [`EventWriter`] writes a whole record at a time and flushes it, like the metrics
//! files, so a crash loses at most the record being written; [`read_events`] ignores
//! such a torn last record.
//!
//! On resume, [`EventWriter::resume`] cuts the earlier files back as
//! [`MetricsWriter::resume`](crate::report::MetricsWriter::resume) cuts the metrics
//! files: events after the checkpoint's step are dropped (so no step is logged twice),
//! and so are the run's outputs (downstream results and pictures), which the resumed
//! run writes again; then it opens a new file.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use super::metrics::{Kind, Record};
use super::{ReportError, io_err};

/// The part of a file name that makes TensorBoard read the file as events.
pub const FILE_PREFIX: &str = "events.out.tfevents.";

/// The `file_version` of the first event of every file.
pub const FILE_VERSION: &str = "brain.Event:2";

/// Tag prefix of the downstream results ([`downstream_scalars`]).
pub const DOWNSTREAM_PREFIX: &str = "downstream/";

/// The CRC-32C (Castagnoli) lookup table, reflected polynomial `0x82F63B78`.
const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32C (Castagnoli) of `data`: `crc32c(b"123456789") == 0xE306_9283`.
pub fn crc32c(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c = CRC_TABLE[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

/// The masked CRC-32C TFRecord files store: the CRC rotated right by 15 bits plus
/// `0xA282EAD8` (wrapping).
pub fn masked_crc32c(data: &[u8]) -> u32 {
    let c = crc32c(data);
    c.rotate_right(15).wrapping_add(0xA282_EAD8)
}

/// One record as stored: length, its masked CRC, the data, its masked CRC.
fn frame(data: &[u8]) -> Vec<u8> {
    let len = (data.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(data.len() + 16);
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    out
}

// --- protobuf encoding (wire types 0 varint, 1 64-bit, 2 length-delimited, 5 32-bit)

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7F) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_key(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn put_int(out: &mut Vec<u8>, field: u32, v: i64) {
    put_key(out, field, 0);
    // Protobuf's int32/int64: two's complement as a 64-bit varint.
    put_varint(out, v as u64);
}

/// An `Event` with `wall_time`, `step` and either a file version or a summary.
fn event(wall_time: f64, step: i64, what: What<'_>) -> Vec<u8> {
    let mut e = Vec::new();
    put_key(&mut e, 1, 1);
    e.extend_from_slice(&wall_time.to_le_bytes());
    put_int(&mut e, 2, step);
    match what {
        What::Version(v) => put_bytes(&mut e, 3, v.as_bytes()),
        What::Summary(values) => put_bytes(&mut e, 5, &values),
    }
    e
}

enum What<'a> {
    Version(&'a str),
    /// Encoded `Summary.value` entries.
    Summary(Vec<u8>),
}

fn scalar_value(out: &mut Vec<u8>, tag: &str, v: f32) {
    let mut val = Vec::new();
    put_bytes(&mut val, 1, tag.as_bytes());
    put_key(&mut val, 2, 5);
    val.extend_from_slice(&v.to_le_bytes());
    put_bytes(out, 1, &val);
}

fn image_value(out: &mut Vec<u8>, tag: &str, png: &Png<'_>) {
    let mut img = Vec::new();
    put_int(&mut img, 1, png.height.into());
    put_int(&mut img, 2, png.width.into());
    put_int(&mut img, 3, png.colorspace.into());
    put_bytes(&mut img, 4, png.bytes);
    let mut val = Vec::new();
    put_bytes(&mut val, 1, tag.as_bytes());
    put_bytes(&mut val, 4, &img);
    put_bytes(out, 1, &val);
}

/// A PNG's size and TensorBoard colorspace (1 grey, 2 grey + alpha, 3 RGB, 4 RGBA),
/// read from its `IHDR` chunk.
struct Png<'a> {
    width: i32,
    height: i32,
    colorspace: i32,
    bytes: &'a [u8],
}

fn png_header(bytes: &[u8]) -> Option<Png<'_>> {
    const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
    if bytes.len() < 29 || bytes[..8] != SIGNATURE || &bytes[12..16] != b"IHDR" {
        return None;
    }
    let be =
        |at: usize| u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let colorspace = match bytes[25] {
        0 => 1,
        4 => 2,
        2 | 3 => 3,
        6 => 4,
        _ => return None,
    };
    Some(Png {
        width: i32::try_from(be(16)).ok()?,
        height: i32::try_from(be(20)).ok()?,
        colorspace,
        bytes,
    })
}

// --- protobuf decoding, for reading files back

/// One field of a message: number and payload.
enum Field<'a> {
    Varint(u64),
    Fixed64([u8; 8]),
    Bytes(&'a [u8]),
    Fixed32([u8; 4]),
}

fn get_varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7F) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The fields of an encoded message, in order; `None` when it is malformed.
fn fields(buf: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let key = get_varint(buf, &mut at)?;
        let f = match key & 7 {
            0 => Field::Varint(get_varint(buf, &mut at)?),
            1 => {
                let b = buf.get(at..at + 8)?;
                at += 8;
                Field::Fixed64(b.try_into().ok()?)
            }
            2 => {
                let n = usize::try_from(get_varint(buf, &mut at)?).ok()?;
                let b = buf.get(at..at.checked_add(n)?)?;
                at += n;
                Field::Bytes(b)
            }
            5 => {
                let b = buf.get(at..at + 4)?;
                at += 4;
                Field::Fixed32(b.try_into().ok()?)
            }
            _ => return None,
        };
        out.push((key >> 3, f));
    }
    Some(out)
}

/// What one summary value holds.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    /// `simple_value`.
    Scalar(f32),
    /// An image summary.
    Image {
        /// Pixels across.
        width: i32,
        /// Pixels down.
        height: i32,
        /// 1 grey, 2 grey + alpha, 3 RGB, 4 RGBA.
        colorspace: i32,
        /// The encoded image (PNG).
        encoded: Vec<u8>,
    },
    /// Any other kind of value (not written here).
    Other,
}

/// One `Summary.Value`: a tag and its data.
#[derive(Clone, Debug, PartialEq)]
pub struct SummaryValue {
    /// The tag (`train/loss`).
    pub tag: String,
    /// What it holds.
    pub data: Data,
}

/// One event read back from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Seconds since the Unix epoch when it was written.
    pub wall_time: f64,
    /// Global step.
    pub step: i64,
    /// The file version (the first event of a file).
    pub file_version: Option<String>,
    /// The summary values (empty for a file-version event).
    pub values: Vec<SummaryValue>,
}

impl Event {
    /// Whether the event holds the run's outputs (downstream results or pictures),
    /// which a resumed run writes again.
    fn is_output(&self) -> bool {
        self.values
            .iter()
            .any(|v| v.tag.starts_with(DOWNSTREAM_PREFIX) || matches!(v.data, Data::Image { .. }))
    }
}

fn decode_value(buf: &[u8]) -> Option<SummaryValue> {
    let mut tag = String::new();
    let mut data = Data::Other;
    for (n, f) in fields(buf)? {
        match (n, f) {
            (1, Field::Bytes(b)) => tag = String::from_utf8(b.to_vec()).ok()?,
            (2, Field::Fixed32(b)) => data = Data::Scalar(f32::from_le_bytes(b)),
            (4, Field::Bytes(b)) => {
                let (mut width, mut height, mut colorspace) = (0, 0, 0);
                let mut encoded = Vec::new();
                for (m, g) in fields(b)? {
                    match (m, g) {
                        (1, Field::Varint(v)) => height = v as i32,
                        (2, Field::Varint(v)) => width = v as i32,
                        (3, Field::Varint(v)) => colorspace = v as i32,
                        (4, Field::Bytes(e)) => encoded = e.to_vec(),
                        _ => {}
                    }
                }
                data = Data::Image {
                    width,
                    height,
                    colorspace,
                    encoded,
                };
            }
            _ => {}
        }
    }
    Some(SummaryValue { tag, data })
}

fn decode_event(buf: &[u8]) -> Option<Event> {
    let mut e = Event {
        wall_time: 0.0,
        step: 0,
        file_version: None,
        values: Vec::new(),
    };
    for (n, f) in fields(buf)? {
        match (n, f) {
            (1, Field::Fixed64(b)) => e.wall_time = f64::from_le_bytes(b),
            (2, Field::Varint(v)) => e.step = v as i64,
            (3, Field::Bytes(b)) => e.file_version = Some(String::from_utf8(b.to_vec()).ok()?),
            (5, Field::Bytes(b)) => {
                for (m, g) in fields(b)? {
                    if let (1, Field::Bytes(v)) = (m, g) {
                        e.values.push(decode_value(v)?);
                    }
                }
            }
            _ => {}
        }
    }
    Some(e)
}

/// The records' data of a file's bytes, each checked against its CRCs. A last record
/// cut short (a write torn by a crash) is ignored; anything else that does not check
/// is an error naming the record (1-based).
fn records<'a>(path: &Path, bytes: &'a [u8]) -> Result<Vec<&'a [u8]>, ReportError> {
    let bad = |n: usize, message: &str| ReportError::Parse {
        path: path.to_path_buf(),
        line: n,
        message: format!("event record {n}: {message}"),
    };
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let n = out.len() + 1;
        let Some(head) = bytes.get(at..at + 12) else {
            break; // torn
        };
        let len_bytes = &head[..8];
        let crc = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
        if crc != masked_crc32c(len_bytes) {
            return Err(bad(n, "the length's CRC does not match"));
        }
        let len = u64::from_le_bytes(len_bytes.try_into().unwrap_or_default());
        let Some(end) = usize::try_from(len)
            .ok()
            .and_then(|l| (at + 12).checked_add(l))
        else {
            return Err(bad(n, "the length is too large"));
        };
        let (Some(data), Some(tail)) = (bytes.get(at + 12..end), bytes.get(end..end + 4)) else {
            break; // torn
        };
        if u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]) != masked_crc32c(data) {
            return Err(bad(n, "the data's CRC does not match"));
        }
        out.push(data);
        at = end + 4;
    }
    Ok(out)
}

/// Reads an events file back: every complete record, decoded. A torn last record is
/// ignored; a CRC that does not match or an `Event` that does not decode is an error.
pub fn read_events(path: &Path) -> Result<Vec<Event>, ReportError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    records(path, &bytes)?
        .into_iter()
        .enumerate()
        .map(|(i, data)| {
            decode_event(data).ok_or_else(|| ReportError::Parse {
                path: path.to_path_buf(),
                line: i + 1,
                message: format!("event record {}: not an Event", i + 1),
            })
        })
        .collect()
}

/// The events files in `dir`, in the order TensorBoard reads them (by name).
pub fn event_files(dir: &Path) -> Result<Vec<PathBuf>, ReportError> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .flatten()
        .filter(|e| {
            e.file_name().to_string_lossy().starts_with(FILE_PREFIX)
                && !e.file_name().to_string_lossy().ends_with(".tmp")
        })
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    out.sort();
    Ok(out)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The tags a metrics record is logged under (none for `eval` records: the downstream
/// results go in whole through [`downstream_scalars`]):
/// - a `step` record's fields as `train/<field>` (`train/loss`, `train/lr`,
///   `train/images_per_s`);
/// - an `epoch` record's `knn_top1`/`knn_top5` as `knn/top1`/`knn/top5`, the collapse
///   indicators as `watch/embedding_std`, `watch/feature_std`, `watch/feature_rank`
///   and `watch/seconds`, and its other fields as `epoch/<field>` (`epoch/loss`, the
///   epoch's mean).
pub fn record_tags(rec: &Record) -> Vec<(String, f64)> {
    let tag = |name: &str| match rec.kind {
        Kind::Step => Some(format!("train/{name}")),
        Kind::Epoch => Some(match name {
            "embedding_std" | "feature_std" | "feature_rank" => format!("watch/{name}"),
            "watch_seconds" => "watch/seconds".into(),
            _ => match name.strip_prefix("knn_") {
                Some(rest) => format!("knn/{rest}"),
                None => format!("epoch/{name}"),
            },
        }),
        Kind::Eval => None,
    };
    rec.fields
        .iter()
        .filter_map(|(n, v)| tag(n).map(|t| (t, *v)))
        .collect()
}

/// The downstream results of `results.json`'s `downstream` list as scalars:
/// `downstream/<task>/<row>/top1` and `…/top5` for every row the task measured
/// (`trained`, `untrained_network`, `raw_pixels`, `supervised`). A task on its own
/// data (transfer) is `<task>_<data>`; a name seen before gets `_2` the second time,
/// and so on.
pub fn downstream_scalars(entries: &[Value]) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for e in entries {
        let Some(task) = e.get("task").and_then(Value::as_str) else {
            continue;
        };
        let task = match e.get("data").and_then(Value::as_str) {
            Some(d) => format!("{task}_{d}"),
            None => task.to_string(),
        };
        let task = task.as_str();
        let n = seen.iter().filter(|s| *s == task).count();
        seen.push(task.to_string());
        let name = match n {
            0 => task.to_string(),
            _ => format!("{task}_{}", n + 1),
        };
        let Some(obj) = e.as_object() else { continue };
        for (row, v) in obj {
            for metric in ["top1", "top5"] {
                if let Some(x) = v.get(metric).and_then(Value::as_f64) {
                    out.push((format!("{DOWNSTREAM_PREFIX}{name}/{row}/{metric}"), x));
                }
            }
        }
    }
    out
}

/// Writes one events file of a run directory.
#[derive(Debug)]
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

impl EventWriter {
    /// Creates a new events file in `dir` (`events.out.tfevents.<secs>.<host>`, with
    /// `.2`, `.3`, … added when that name exists) and writes its file-version event.
    pub fn create(dir: &Path) -> Result<Self, ReportError> {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let base = format!("{FILE_PREFIX}{secs}.{}", crate::runtime::hostname());
        let mut path = dir.join(&base);
        let mut n = 1;
        while path.exists() {
            n += 1;
            path = dir.join(format!("{base}.{n}"));
        }
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut w = EventWriter { file, path };
        w.put(&event(now(), 0, What::Version(FILE_VERSION)))?;
        Ok(w)
    }

    /// Cuts the events files already in `dir` back to what a checkpoint at `last_step`
    /// saw (events after it, and the run's outputs, are dropped; each file is rewritten
    /// through a temporary file, so an interrupted resume leaves it whole), then
    /// creates a new file as [`create`](Self::create) does.
    pub fn resume(dir: &Path, last_step: u64) -> Result<Self, ReportError> {
        for path in event_files(dir)? {
            let bytes = std::fs::read(&path).map_err(io_err(&path))?;
            let recs = records(&path, &bytes)?;
            let mut kept = Vec::with_capacity(bytes.len());
            let mut dropped = false;
            for (i, data) in recs.iter().enumerate() {
                let e = decode_event(data).ok_or_else(|| ReportError::Parse {
                    path: path.clone(),
                    line: i + 1,
                    message: format!("event record {}: not an Event", i + 1),
                })?;
                let after = u64::try_from(e.step).is_ok_and(|s| s > last_step);
                if e.file_version.is_none() && (after || e.is_output()) {
                    dropped = true;
                } else {
                    kept.extend_from_slice(&frame(data));
                }
            }
            if dropped || kept.len() != bytes.len() {
                let mut tmp = path.as_os_str().to_owned();
                tmp.push(".tmp");
                let tmp = PathBuf::from(tmp);
                std::fs::write(&tmp, &kept).map_err(io_err(&tmp))?;
                std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
            }
        }
        Self::create(dir)
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn put(&mut self, event: &[u8]) -> Result<(), ReportError> {
        self.file
            .write_all(&frame(event))
            .and_then(|_| self.file.flush())
            .map_err(io_err(&self.path))
    }

    /// Writes `values` as one event at `step` (as `f32`, TensorBoard's scalar type).
    /// Nothing is written when `values` is empty.
    pub fn scalars(&mut self, step: u64, values: &[(String, f64)]) -> Result<(), ReportError> {
        if values.is_empty() {
            return Ok(());
        }
        let mut summary = Vec::new();
        for (tag, v) in values {
            scalar_value(&mut summary, tag, *v as f32);
        }
        self.put(&event(now(), step as i64, What::Summary(summary)))
    }

    /// Writes the PNG `png` as image summary `tag` at `step`; bytes that are not a
    /// PNG are an [`Input`](ReportError::Input) error.
    pub fn png(&mut self, step: u64, tag: &str, png: &[u8]) -> Result<(), ReportError> {
        let p = png_header(png)
            .ok_or_else(|| ReportError::Input(format!("`{tag}` is not a PNG image")))?;
        let mut summary = Vec::new();
        image_value(&mut summary, tag, &p);
        self.put(&event(now(), step as i64, What::Summary(summary)))
    }

    /// Writes the PNG file `dir/file` as image summary `<file stem>` at `step`.
    pub fn png_file(&mut self, step: u64, dir: &Path, file: &str) -> Result<(), ReportError> {
        let path = dir.join(file);
        let bytes = std::fs::read(&path).map_err(io_err(&path))?;
        let tag = Path::new(file)
            .file_stem()
            .map_or_else(|| file.to_string(), |s| s.to_string_lossy().into_owned());
        self.png(step, &tag, &bytes)
    }

    /// Writes a metrics record's fields under the tags [`record_tags`] gives them.
    pub fn record(&mut self, rec: &Record) -> Result<(), ReportError> {
        self.scalars(rec.step, &record_tags(rec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            let mut at = 0;
            assert_eq!(get_varint(&b, &mut at), Some(v));
            assert_eq!(at, b.len());
        }
    }

    #[test]
    fn png_header_reads_size_and_colour() {
        let mut png = Vec::new();
        image::RgbImage::new(3, 2)
            .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
            .unwrap();
        let p = png_header(&png).unwrap();
        assert_eq!((p.width, p.height, p.colorspace), (3, 2, 3));
        assert!(png_header(b"not a png at all, not at all, no").is_none());
    }
}
