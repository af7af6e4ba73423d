//! Run directories read side by side: `recipe runs` lists the runs under a folder
//! ([`list`]) and `recipe compare` puts several next to each other ([`compare`]).
//!
//! Everything here reads what a run directory already holds — `recipe.yaml`,
//! `results.json`, `metrics.jsonl`, `invocations.jsonl` and the status that
//! [`rundir::status`] derives — and never writes into a run directory. A file that is
//! missing or unreadable makes a cell empty or a note, never a panic; only what the
//! user named (a folder that does not exist, a directory that is not a run) is an
//! error ([`RunsError`]).

pub mod compare;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{Value, json};

use crate::report::ReportError;
use crate::report::metrics::{JSONL_FILE, Kind, read_jsonl};
use crate::train::resume;
use crate::train::rundir::{self, RunStatus};

pub use compare::{Comparison, compare};

/// How deep [`find`] looks below the folder it is given (a sweep's runs are one level
/// below the sweep's folder, so `runs/<sweep>/<run>` is depth 2).
pub const MAX_DEPTH: usize = 3;

/// Why runs cannot be listed or compared.
#[derive(Debug)]
pub enum RunsError {
    /// A path the user named does not exist or cannot be read.
    Missing {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A path the user named is not a run directory.
    NotRunDir(PathBuf),
    /// The folder to list is a file.
    NotAFolder(PathBuf),
    /// `recipe compare` got fewer than two run directories.
    TooFew(usize),
    /// The same run directory was named twice: the second name, then the first.
    Duplicate(PathBuf, PathBuf),
    /// The comparison's files cannot be written.
    Write(String),
    /// A picture cannot be drawn or written.
    Report(ReportError),
}

impl fmt::Display for RunsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunsError::Missing { path, source }
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                write!(f, "`{}` does not exist", path.display())
            }
            RunsError::Missing { path, source } => {
                write!(f, "`{}` cannot be read: {source}", path.display())
            }
            RunsError::NotAFolder(p) => {
                write!(
                    f,
                    "`{}` is a file, not a folder of run directories",
                    p.display()
                )
            }
            RunsError::NotRunDir(p) => write!(
                f,
                "`{}` is not a run directory (a run directory holds the {} and {}/ that \
                 `recipe run` writes)",
                p.display(),
                rundir::RECIPE_FILE,
                rundir::CHECKPOINTS
            ),
            RunsError::TooFew(n) => write!(
                f,
                "`recipe compare` needs at least two run directories, got {n} (to see one \
                 run, read its report.md)"
            ),
            RunsError::Duplicate(p, first) => write!(
                f,
                "`{}` and `{}` are the same run directory",
                first.display(),
                p.display()
            ),
            RunsError::Write(m) => f.write_str(m),
            RunsError::Report(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for RunsError {}

impl From<ReportError> for RunsError {
    fn from(e: ReportError) -> Self {
        RunsError::Report(e)
    }
}

/// What `recipe runs` shows of one run directory (every field optional but the path
/// and the status: a run directory may be cut short or damaged).
#[derive(Clone, Debug)]
pub struct RunInfo {
    /// The run directory.
    pub dir: PathBuf,
    /// Its name in listings: the path below the listed folder (`sweep/run`).
    pub name: String,
    /// The recipe's `name`.
    pub recipe_name: Option<String>,
    /// The recipe's `loss.method`.
    pub method: Option<String>,
    /// When the run started, `YYYYMMDD-HHMMSS` UTC: its first invocation, else the
    /// timestamp in the directory's name, else `recipe.yaml`'s modification time.
    pub started: Option<String>,
    /// [`rundir::status`].
    pub status: RunStatus,
    /// Epochs with an epoch record in `metrics.jsonl` (or `results.json`'s count).
    pub epochs_done: Option<u64>,
    /// The recipe's `train.epochs`.
    pub epochs_total: Option<u64>,
    /// Optimiser steps done: the last record's step in `metrics.jsonl`.
    pub steps: Option<u64>,
    /// The last epoch's mean loss.
    pub final_loss: Option<f64>,
    /// kNN top-1 (%) of the trained encoder on the pretraining data, from `results.json`.
    pub knn_top1: Option<f64>,
    /// Linear-probe top-1 (%) of the trained encoder on the pretraining data.
    pub linear_top1: Option<f64>,
    /// The resolved recipe (`recipe.yaml` as JSON), when it parses.
    pub recipe: Option<Value>,
    /// `results.json`, when it parses.
    pub results: Option<Value>,
    /// What could not be read, in words.
    pub notes: Vec<String>,
}

/// `YYYYMMDD-HHMMSS` as `YYYY-MM-DD HH:MM:SS` (other text unchanged).
pub fn show_stamp(s: &str) -> String {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    if b.len() == 15 && digits(0..8) && b[8] == b'-' && digits(9..15) {
        format!(
            "{}-{}-{} {}:{}:{}",
            &s[0..4],
            &s[4..6],
            &s[6..8],
            &s[9..11],
            &s[11..13],
            &s[13..15]
        )
    } else {
        s.to_string()
    }
}

/// The `YYYYMMDD-HHMMSS` stamp in a run directory's name (`<name>-<stamp>[-n]`).
fn stamp_in_name(name: &str) -> Option<String> {
    let parts: Vec<&str> = name.split('-').collect();
    parts.windows(2).rev().find_map(|w| {
        let ok = w[0].len() == 8
            && w[1].len() == 6
            && w[0].bytes().chain(w[1].bytes()).all(|c| c.is_ascii_digit());
        ok.then(|| format!("{}-{}", w[0], w[1]))
    })
}

/// The trained encoder's top-1 of the first `task` entry on the pretraining data.
fn headline(results: &Value, task: &str) -> Option<f64> {
    results["downstream"]
        .as_array()?
        .iter()
        .find(|t| t["task"] == task && t.get("data").is_none())?["trained"]["top1"]
        .as_f64()
}

/// Reads what [`RunInfo`] shows of the run directory `dir`, named `name`.
pub fn read(dir: &Path, name: &str) -> RunInfo {
    let mut notes = Vec::new();
    let recipe = match resume::read_recipe_value(dir) {
        Ok(v) => Some(v),
        Err(e) => {
            notes.push(e);
            None
        }
    };
    let status = rundir::status(dir);
    let results: Option<Value> = fs::read_to_string(dir.join(rundir::RESULTS_FILE))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .filter(Value::is_object);
    let records = match read_jsonl(&dir.join(JSONL_FILE)) {
        Ok(r) => r,
        Err(ReportError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Vec::new()
        }
        Err(e) => {
            notes.push(e.to_string());
            Vec::new()
        }
    };
    let epochs: Vec<_> = records.iter().filter(|r| r.kind == Kind::Epoch).collect();
    let epochs_done = epochs
        .iter()
        .map(|r| r.epoch + 1)
        .max()
        .or_else(|| results.as_ref()?["training"]["epochs"].as_u64())
        .or(Some(0).filter(|_| dir.join(JSONL_FILE).is_file()));
    let started = resume::read(dir)
        .first()
        .and_then(|i| i["time"].as_str().map(str::to_string))
        .or_else(|| stamp_in_name(&dir.file_name()?.to_string_lossy()))
        .or_else(|| {
            let t = fs::metadata(dir.join(rundir::RECIPE_FILE))
                .and_then(|m| m.modified())
                .ok()?;
            Some(rundir::timestamp(t.max(SystemTime::UNIX_EPOCH)))
        });
    RunInfo {
        dir: dir.to_path_buf(),
        name: name.to_string(),
        recipe_name: recipe
            .as_ref()
            .and_then(|r| r["name"].as_str().map(str::to_string)),
        method: recipe
            .as_ref()
            .and_then(|r| r["loss"]["method"].as_str().map(str::to_string)),
        started,
        status,
        epochs_done,
        epochs_total: recipe.as_ref().and_then(|r| r["train"]["epochs"].as_u64()),
        steps: records.iter().map(|r| r.step).max(),
        final_loss: epochs.last().and_then(|r| r.get("loss")),
        knn_top1: results.as_ref().and_then(|r| headline(r, "knn")),
        linear_top1: results.as_ref().and_then(|r| headline(r, "linear_probe")),
        recipe,
        results,
        notes,
    }
}

impl RunInfo {
    /// `done/total` epochs (`?` for what is unknown).
    pub fn epochs(&self) -> String {
        let s = |v: Option<u64>| v.map_or("?".to_string(), |v| v.to_string());
        format!("{}/{}", s(self.epochs_done), s(self.epochs_total))
    }

    /// The status with its detail: `running (pid 12)`, `interrupted (step 8)`.
    pub fn status_text(&self) -> String {
        match &self.status {
            RunStatus::Running { pid, host } if *host == crate::runtime::hostname() => {
                format!("running (pid {pid})")
            }
            RunStatus::Running { pid, host } => format!("running (pid {pid} on {host})"),
            RunStatus::Interrupted { step: Some(step) } => format!("interrupted (step {step})"),
            s => s.name().to_string(),
        }
    }

    /// What `recipe runs --format json` prints of the run.
    pub fn to_json(&self) -> Value {
        let (step, error) = match &self.status {
            RunStatus::Interrupted { step } => (*step, None),
            RunStatus::Failed { error } => (None, Some(error.clone())),
            _ => (None, None),
        };
        json!({
            "name": self.name,
            "dir": self.dir.display().to_string(),
            "recipe_name": self.recipe_name,
            "method": self.method,
            "started": self.started,
            "status": self.status.name(),
            "status_step": step,
            "error": error,
            "epochs_done": self.epochs_done,
            "epochs_total": self.epochs_total,
            "steps": self.steps,
            "final_loss": self.final_loss,
            "knn_top1": self.knn_top1,
            "linear_top1": self.linear_top1,
            "notes": self.notes,
        })
    }
}

/// The run directories at or below `root`, `depth` levels deep at most (the root is
/// depth 0), in path order. A run directory's own subfolders are not searched;
/// folders that cannot be read are skipped.
pub fn find(root: &Path, depth: usize) -> Vec<PathBuf> {
    if rundir::is_run_dir(root) {
        return vec![root.to_path_buf()];
    }
    let mut out = Vec::new();
    if depth == 0 {
        return out;
    }
    let Ok(entries) = fs::read_dir(root) else {
        return out;
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for d in dirs {
        out.extend(find(&d, depth - 1));
    }
    out
}

/// Every run directory under `root` ([`find`] to [`MAX_DEPTH`]), read, sorted by start
/// time (then name). `root` must be a readable folder.
pub fn list(root: &Path) -> Result<Vec<RunInfo>, RunsError> {
    let meta = fs::metadata(root).map_err(|source| RunsError::Missing {
        path: root.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(RunsError::NotAFolder(root.to_path_buf()));
    }
    let mut runs: Vec<RunInfo> = find(root, MAX_DEPTH)
        .into_iter()
        .map(|d| {
            let name = match d.strip_prefix(root) {
                Ok(rel) if !rel.as_os_str().is_empty() => rel.display().to_string(),
                _ => d
                    .file_name()
                    .map_or_else(|| d.display().to_string(), |n| n.to_string_lossy().into()),
            };
            read(&d, &name)
        })
        .collect();
    runs.sort_by(|a, b| (&a.started, &a.name).cmp(&(&b.started, &b.name)));
    Ok(runs)
}

/// A top-1 value as a table shows it (`–` when absent).
pub fn pct(v: Option<f64>) -> String {
    v.filter(|v| v.is_finite())
        .map_or("–".to_string(), |v| format!("{v:.2}"))
}

/// `rows` under `header` as aligned plain text, two spaces apart: the first `left`
/// columns left-aligned, the others right-aligned.
pub fn text_table(header: &[String], rows: &[Vec<String>], left: usize) -> String {
    let n = header.len();
    let width = |s: &str| s.chars().count();
    let mut w: Vec<usize> = header.iter().map(|h| width(h)).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(n) {
            w[i] = w[i].max(width(c));
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate().take(n) {
            let pad = " ".repeat(w[i] - width(c));
            if i > 0 {
                s.push_str("  ");
            }
            if i < left {
                s.push_str(c);
                s.push_str(&pad);
            } else {
                s.push_str(&pad);
                s.push_str(c);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header);
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

/// `recipe runs`'s table: one line per run (name, method, start, status, epochs,
/// kNN and linear top-1 of the trained encoder), then the failed runs' errors.
pub fn runs_table(runs: &[RunInfo]) -> String {
    let header: Vec<String> = [
        "run", "method", "started", "status", "epochs", "kNN", "linear",
    ]
    .map(String::from)
    .to_vec();
    let rows: Vec<Vec<String>> = runs
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.method.clone().unwrap_or_else(|| "?".into()),
                r.started.as_deref().map_or("?".into(), show_stamp),
                r.status_text(),
                r.epochs(),
                pct(r.knn_top1),
                pct(r.linear_top1),
            ]
        })
        .collect();
    let mut out = text_table(&header, &rows, 4);
    for r in runs {
        if let RunStatus::Failed { error } = &r.status {
            let first = error.lines().next().unwrap_or_default();
            out.push_str(&format!("{}: failed: {first}\n", r.name));
        }
        for n in &r.notes {
            out.push_str(&format!("{}: {n}\n", r.name));
        }
    }
    out
}
