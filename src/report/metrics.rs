//! `metrics.jsonl` and `metrics.csv`: every number a run logs, one record per line.
//!
//! A [`Record`] is a kind (`step`, `epoch` or `eval`), the epoch and global step it
//! belongs to, and named `f64` fields. The JSONL file is the complete log: each line is
//! one flat object `{"kind": "step", "epoch": 0, "step": 10, "loss": 4.1, "lr": 0.3}`
//! with the fields in the order they were added (a non-finite value is written as
//! `null` and read back as NaN). The CSV file is the same log for spreadsheets: its
//! header is fixed when the file is created (`kind,epoch,step`, then
//! [`DEFAULT_FIELDS`], then the caller's extra fields), a record's missing fields are
//! empty cells, and a field that is not in the header goes to the JSONL file only, so
//! adding a field later never breaks the CSV. Both files are written a whole line at a
//! time and flushed after every record, so a crash loses at most the line being
//! written; [`read_jsonl`] ignores such a torn last line.
//!
//! On resume, [`MetricsWriter::resume`] keeps the records up to the checkpoint's step,
//! rewrites both files from them (the CSV header grows to cover every field those
//! records use) and hands them back to rebuild the curves.
//!
//! A writer can also carry the run's TensorBoard [`EventWriter`]
//! ([`attach_events`](MetricsWriter::attach_events)): every record then goes to the
//! events file too, under the tags [`record_tags`](super::tensorboard::record_tags)
//! gives it.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::tensorboard::EventWriter;
use super::{ReportError, io_err};

/// Name of the JSONL file in a run directory.
pub const JSONL_FILE: &str = "metrics.jsonl";
/// Name of the CSV file in a run directory.
pub const CSV_FILE: &str = "metrics.csv";

/// CSV columns every metrics file has after `kind,epoch,step`.
pub const DEFAULT_FIELDS: &[&str] = &[
    "loss",
    "lr",
    "images_per_s",
    "time_s",
    "knn_top1",
    "knn_top5",
    "linear_top1",
    "linear_top5",
    "fine_tune_top1",
    "fine_tune_top5",
];

const RESERVED: [&str; 3] = ["kind", "epoch", "step"];

/// What a record is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// One optimiser step (or a logging interval of steps).
    Step,
    /// The end of an epoch.
    Epoch,
    /// A downstream evaluation.
    Eval,
}

impl Kind {
    /// The name written in the files (`step`, `epoch`, `eval`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Step => "step",
            Kind::Epoch => "epoch",
            Kind::Eval => "eval",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        match s {
            "step" => Some(Kind::Step),
            "epoch" => Some(Kind::Epoch),
            "eval" => Some(Kind::Eval),
            _ => None,
        }
    }
}

/// One line of the metrics files.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// What the record is about.
    pub kind: Kind,
    /// Epoch (0-based).
    pub epoch: u64,
    /// Global optimiser step (0-based; for an epoch or eval record, the steps done).
    pub step: u64,
    /// Named values, in the order they were added.
    pub fields: Vec<(String, f64)>,
}

impl Record {
    /// A record without fields.
    pub fn new(kind: Kind, epoch: u64, step: u64) -> Self {
        Record {
            kind,
            epoch,
            step,
            fields: Vec::new(),
        }
    }

    /// Adds (or replaces) field `name`.
    pub fn with(mut self, name: &str, value: f64) -> Self {
        match self.fields.iter_mut().find(|(n, _)| n == name) {
            Some(f) => f.1 = value,
            None => self.fields.push((name.to_string(), value)),
        }
        self
    }

    /// The value of field `name`.
    pub fn get(&self, name: &str) -> Option<f64> {
        self.fields.iter().find(|(n, _)| n == name).map(|f| f.1)
    }

    fn to_json(&self) -> String {
        let mut m = Map::new();
        m.insert("kind".into(), Value::from(self.kind.as_str()));
        m.insert("epoch".into(), Value::from(self.epoch));
        m.insert("step".into(), Value::from(self.step));
        for (n, v) in &self.fields {
            // serde_json writes non-finite floats as null.
            m.insert(n.clone(), Value::from(*v));
        }
        Value::Object(m).to_string()
    }

    fn to_csv(&self, columns: &[String]) -> String {
        let mut line = format!("{},{},{}", self.kind.as_str(), self.epoch, self.step);
        for c in &columns[RESERVED.len()..] {
            line.push(',');
            if let Some(v) = self.get(c) {
                line.push_str(&v.to_string());
            }
        }
        line
    }
}

fn check_name(name: &str) -> Result<(), ReportError> {
    let ok = !name.is_empty()
        && !RESERVED.contains(&name)
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'));
    if ok {
        Ok(())
    } else {
        Err(ReportError::Input(format!(
            "`{name}` cannot name a metric (letters, digits, `_-./`; not kind, epoch or step)"
        )))
    }
}

/// Writes records to `metrics.jsonl` and `metrics.csv` in one directory.
#[derive(Debug)]
pub struct MetricsWriter {
    jsonl: File,
    csv: File,
    jsonl_path: PathBuf,
    csv_path: PathBuf,
    columns: Vec<String>,
    events: Option<EventWriter>,
}

fn header(extra: &[&str], seen: &[Record]) -> Result<Vec<String>, ReportError> {
    let mut cols: Vec<String> = RESERVED.iter().map(|s| s.to_string()).collect();
    let names = DEFAULT_FIELDS
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .chain(
            seen.iter()
                .flat_map(|r| r.fields.iter().map(|f| f.0.clone())),
        );
    for n in names {
        check_name(&n)?;
        if !cols.contains(&n) {
            cols.push(n);
        }
    }
    Ok(cols)
}

impl MetricsWriter {
    /// Creates (or truncates) both files in `dir`; the CSV header is `kind,epoch,step`,
    /// [`DEFAULT_FIELDS`], then `extra_fields` (duplicates dropped).
    pub fn create(dir: &Path, extra_fields: &[&str]) -> Result<Self, ReportError> {
        Self::start(dir, extra_fields, &[])
    }

    /// Reopens the files of an interrupted run: keeps the records whose `step` is at
    /// most `last_step` (what the checkpoint saw), rewrites both files from them, and
    /// returns the writer (appending) and the kept records. A missing JSONL file means
    /// no records.
    pub fn resume(
        dir: &Path,
        extra_fields: &[&str],
        last_step: u64,
    ) -> Result<(Self, Vec<Record>), ReportError> {
        let path = dir.join(JSONL_FILE);
        let records = if path.exists() {
            read_jsonl(&path)?
        } else {
            Vec::new()
        };
        let kept: Vec<Record> = records
            .into_iter()
            .filter(|r| r.step <= last_step)
            .collect();
        let writer = Self::start(dir, extra_fields, &kept)?;
        Ok((writer, kept))
    }

    fn start(dir: &Path, extra: &[&str], records: &[Record]) -> Result<Self, ReportError> {
        let columns = header(extra, records)?;
        let jsonl_path = dir.join(JSONL_FILE);
        let csv_path = dir.join(CSV_FILE);
        // Rewritten through temporary files, so an interrupted resume leaves the old
        // files whole.
        let tmp = |p: &Path| {
            let mut name = p.as_os_str().to_owned();
            name.push(".tmp");
            PathBuf::from(name)
        };
        let mut j = String::new();
        let mut c = columns.join(",") + "\n";
        for r in records {
            j.push_str(&r.to_json());
            j.push('\n');
            c.push_str(&r.to_csv(&columns));
            c.push('\n');
        }
        for (path, text) in [(&jsonl_path, j), (&csv_path, c)] {
            let t = tmp(path);
            std::fs::write(&t, text).map_err(io_err(&t))?;
            std::fs::rename(&t, path).map_err(io_err(path))?;
        }
        let append = |p: &Path| OpenOptions::new().append(true).open(p).map_err(io_err(p));
        Ok(MetricsWriter {
            jsonl: append(&jsonl_path)?,
            csv: append(&csv_path)?,
            jsonl_path,
            csv_path,
            columns,
            events: None,
        })
    }

    /// The CSV columns.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Sends every record written from now on to `events` as well.
    pub fn attach_events(&mut self, events: EventWriter) {
        self.events = Some(events);
    }

    /// The attached events file, if any (for the run's outputs after training).
    pub fn events(&mut self) -> Option<&mut EventWriter> {
        self.events.as_mut()
    }

    /// Appends `record` to both files and flushes them (and to the attached events
    /// file, if any).
    pub fn write(&mut self, record: &Record) -> Result<(), ReportError> {
        for (n, _) in &record.fields {
            check_name(n)?;
        }
        let j = record.to_json() + "\n";
        let c = record.to_csv(&self.columns) + "\n";
        self.jsonl
            .write_all(j.as_bytes())
            .and_then(|_| self.jsonl.flush())
            .map_err(io_err(&self.jsonl_path))?;
        self.csv
            .write_all(c.as_bytes())
            .and_then(|_| self.csv.flush())
            .map_err(io_err(&self.csv_path))?;
        match &mut self.events {
            Some(e) => e.record(record),
            None => Ok(()),
        }
    }
}

fn parse_line(line: &str) -> Result<Record, String> {
    let v: Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let Value::Object(m) = v else {
        return Err("a record must be a JSON object".into());
    };
    let kind = m
        .get("kind")
        .and_then(Value::as_str)
        .and_then(Kind::parse)
        .ok_or("`kind` must be \"step\", \"epoch\" or \"eval\"")?;
    let int = |k: &str| {
        m.get(k)
            .and_then(Value::as_u64)
            .ok_or_else(|| format!("`{k}` must be a non-negative integer"))
    };
    let mut r = Record::new(kind, int("epoch")?, int("step")?);
    for (k, v) in &m {
        if RESERVED.contains(&k.as_str()) {
            continue;
        }
        let x = match v {
            Value::Null => f64::NAN,
            Value::Number(n) => n.as_f64().ok_or_else(|| format!("`{k}` is not a number"))?,
            _ => return Err(format!("`{k}` must be a number or null")),
        };
        r.fields.push((k.clone(), x));
    }
    Ok(r)
}

/// Reads a `metrics.jsonl` file back. Blank lines are skipped; a last line without its
/// newline that does not parse (a write torn by a crash) is ignored; any other bad line
/// is an error with its line number.
pub fn read_jsonl(path: &Path) -> Result<Vec<Record>, ReportError> {
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    let lines: Vec<&str> = text.split('\n').collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let torn = i + 1 == lines.len(); // no newline after it
        match parse_line(line) {
            Ok(r) => out.push(r),
            Err(_) if torn => {}
            Err(message) => {
                return Err(ReportError::Parse {
                    path: path.to_path_buf(),
                    line: i + 1,
                    message,
                });
            }
        }
    }
    Ok(out)
}
