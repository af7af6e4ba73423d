//! The sweep's summary: one row per combination with its swept values, the chosen
//! metric and the other headline metrics from its `results.json`, sorted by the metric;
//! written as Markdown, CSV and JSON, and one plot of the metric per swept path.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::report::ReportError;
use crate::report::plots::{self, Series};
use crate::spec::Recipe;

/// The summary files in the sweep directory.
pub const MARKDOWN_FILE: &str = "summary.md";
/// See [`MARKDOWN_FILE`].
pub const CSV_FILE: &str = "summary.csv";
/// See [`MARKDOWN_FILE`].
pub const JSON_FILE: &str = "summary.json";

/// The metric a sweep sorts by: `TASK.top1` or `TASK.top5`, the trained encoder's row
/// of the first `TASK` entry measured on the pretraining data (a task on its own data,
/// which carries `"data"` in `results.json`, is not it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metric {
    /// `knn`, `linear_probe` or `fine_tune`.
    pub task: String,
    /// `top1` or `top5`.
    pub field: String,
}

/// Tasks that measure a top-1 / top-5.
const MEASURING: [&str; 3] = ["knn", "linear_probe", "fine_tune"];

impl Metric {
    /// Parses `knn.top1`; the error says what is accepted.
    pub fn parse(s: &str) -> Result<Self, String> {
        let accepted = "`TASK.top1` or `TASK.top5` with TASK one of `knn`, `linear_probe`, \
                        `fine_tune` (e.g. `--metric linear_probe.top1`)";
        let Some((task, field)) = s.split_once('.') else {
            return Err(format!("`--metric {s}` is not a metric: use {accepted}"));
        };
        if !MEASURING.contains(&task) {
            let hint = crate::diag::did_you_mean(task, MEASURING)
                .map(|t| format!(" (did you mean `{t}`?)"))
                .unwrap_or_default();
            return Err(format!(
                "`--metric {s}`: `{task}` is not a task that measures accuracy{hint}; use {accepted}"
            ));
        }
        if !matches!(field, "top1" | "top5") {
            return Err(format!(
                "`--metric {s}`: `{field}` is not a measured field; use {accepted}"
            ));
        }
        Ok(Metric {
            task: task.into(),
            field: field.into(),
        })
    }

    /// `knn.top1`.
    pub fn name(&self) -> String {
        format!("{}.{}", self.task, self.field)
    }

    /// Whether `r` has the task on its pretraining data (else the metric is never
    /// measured for it).
    pub fn measured_by(&self, r: &Recipe) -> bool {
        r.downstream
            .iter()
            .any(|t| t.name() == self.task && t.data().is_none())
    }

    /// The metric in a run's `results.json`, if it was measured.
    pub fn value(&self, results: &Value) -> Option<f64> {
        results["downstream"]
            .as_array()?
            .iter()
            .find(|t| t["task"] == self.task.as_str() && t.get("data").is_none())?
            .get("trained")?
            .get(&self.field)?
            .as_f64()
    }
}

/// Every headline number of a run's `results.json`: each task's trained top-1
/// (`knn.top1`, `linear_probe.top1`, a task on its own data `knn[mnist].top1`) and
/// the final epoch's loss.
pub fn headline(results: &Value) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for t in results["downstream"].as_array().into_iter().flatten() {
        let Some(top1) = t["trained"]["top1"].as_f64() else {
            continue;
        };
        let task = t["task"].as_str().unwrap_or("?");
        let name = match t.get("data").and_then(Value::as_str) {
            Some(d) => format!("{task}[{d}].top1"),
            None => format!("{task}.top1"),
        };
        if !out.iter().any(|(n, _)| n == &name) {
            out.push((name, top1));
        }
    }
    if let Some(l) = results["training"]["final_epoch_loss"].as_f64() {
        out.push(("final_loss".into(), l));
    }
    out
}

/// Where a combination stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowStatus {
    /// `results.json` is written.
    Finished,
    /// Stopped with its state saved; the next run of the sweep resumes it.
    Interrupted,
    /// It stopped with an error.
    Failed,
    /// Not started.
    Pending,
}

impl RowStatus {
    /// The word in the table.
    pub fn word(self) -> &'static str {
        match self {
            RowStatus::Finished => "finished",
            RowStatus::Interrupted => "interrupted",
            RowStatus::Failed => "failed",
            RowStatus::Pending => "not run",
        }
    }
}

/// One combination in the summary.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// 1-based combination number.
    pub number: usize,
    /// The swept values as typed, one per axis.
    pub values: Vec<String>,
    /// Its status.
    pub status: RowStatus,
    /// The run directory, relative to the sweep directory.
    pub dir: String,
    /// The chosen metric, when measured.
    pub metric: Option<f64>,
    /// The headline numbers ([`headline`]).
    pub others: Vec<(String, f64)>,
    /// The error, for a failed combination.
    pub error: Option<String>,
}

/// Sorts rows by the metric, highest first; rows without it last, in number order.
pub fn sort(rows: &mut [Row]) {
    rows.sort_by(|a, b| match (a.metric, b.metric) {
        (Some(x), Some(y)) => y.total_cmp(&x).then(a.number.cmp(&b.number)),
        (Some(_), None) => std::cmp::Ordering::Less,
        (None, Some(_)) => std::cmp::Ordering::Greater,
        (None, None) => a.number.cmp(&b.number),
    });
}

/// The headline columns of `rows`, in first-seen order, without the metric itself.
fn other_columns(rows: &[Row], metric: &Metric) -> Vec<String> {
    let mut cols: Vec<String> = Vec::new();
    for r in rows {
        for (n, _) in &r.others {
            if *n != metric.name() && !cols.contains(n) {
                cols.push(n.clone());
            }
        }
    }
    cols
}

fn num(v: Option<f64>) -> String {
    v.map_or_else(String::new, |x| {
        let s = format!("{x:.4}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    })
}

fn other(r: &Row, col: &str) -> Option<f64> {
    r.others.iter().find(|(n, _)| n == col).map(|(_, v)| *v)
}

/// The Markdown table (rows in the order given): `#`, each swept path, the metric,
/// the other headline numbers, status and run directory.
pub fn markdown(paths: &[String], metric: &Metric, rows: &[Row]) -> String {
    let cols = other_columns(rows, metric);
    let mut head: Vec<String> = vec!["#".into()];
    head.extend(paths.iter().map(|p| format!("`{p}`")));
    head.push(format!("**{}**", metric.name()));
    head.extend(cols.iter().cloned());
    head.extend(["status".into(), "run directory".into()]);
    let esc = |s: &str| s.replace('|', "\\|");
    let mut out = format!("| {} |\n", head.join(" | "));
    out.push_str(&format!("|{}\n", "---|".repeat(head.len())));
    for r in rows {
        let mut cells: Vec<String> = vec![r.number.to_string()];
        cells.extend(r.values.iter().map(|v| format!("`{}`", esc(v))));
        cells.push(num(r.metric));
        cells.extend(cols.iter().map(|c| num(other(r, c))));
        cells.push(r.status.word().into());
        cells.push(format!("`{}`", esc(&r.dir)));
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The CSV table (same columns as [`markdown`], plain names, RFC 4180 quoting).
pub fn csv(paths: &[String], metric: &Metric, rows: &[Row]) -> String {
    let cols = other_columns(rows, metric);
    let mut head: Vec<String> = vec!["number".into()];
    head.extend(paths.iter().cloned());
    head.push(metric.name());
    head.extend(cols.iter().cloned());
    head.extend(["status".into(), "run_dir".into()]);
    let mut out = head
        .iter()
        .map(|h| csv_field(h))
        .collect::<Vec<_>>()
        .join(",")
        + "\n";
    for r in rows {
        let mut cells: Vec<String> = vec![r.number.to_string()];
        cells.extend(r.values.iter().map(|v| csv_field(v)));
        cells.push(num(r.metric));
        cells.extend(cols.iter().map(|c| num(other(r, c))));
        cells.push(r.status.word().into());
        cells.push(csv_field(&r.dir));
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

/// The JSON summary: the metric, the swept paths and one object per row.
pub fn json(paths: &[String], metric: &Metric, rows: &[Row]) -> Value {
    let rows: Vec<Value> = rows
        .iter()
        .map(|r| {
            let values: serde_json::Map<String, Value> = paths
                .iter()
                .zip(&r.values)
                .map(|(p, v)| (p.clone(), Value::String(v.clone())))
                .collect();
            let others: serde_json::Map<String, Value> = r
                .others
                .iter()
                .map(|(n, v)| (n.clone(), json!(v)))
                .collect();
            json!({
                "number": r.number,
                "values": values,
                "metric": r.metric,
                "metrics": others,
                "status": r.status.word(),
                "run_dir": r.dir,
                "error": r.error,
            })
        })
        .collect();
    json!({"metric": metric.name(), "paths": paths, "rows": rows})
}

/// Writes `summary.md`, `summary.csv` and `summary.json` into `dir` (rows sorted as
/// given) and returns the Markdown table.
pub fn write(
    dir: &Path,
    title: &str,
    paths: &[String],
    metric: &Metric,
    rows: &[Row],
) -> Result<String, ReportError> {
    let table = markdown(paths, metric, rows);
    let io = |path: PathBuf| {
        move |e: String| ReportError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        }
    };
    let mut md = format!(
        "# {title}\n\nSorted by {}, highest first.\n\n{table}",
        metric.name()
    );
    let failed: Vec<&Row> = rows.iter().filter(|r| r.error.is_some()).collect();
    if !failed.is_empty() {
        md.push_str("\n## Failed\n\n");
        for r in failed {
            md.push_str(&format!(
                "- {} (`{}`): {}\n",
                r.number,
                r.dir,
                r.error.as_deref().unwrap_or_default()
            ));
        }
    }
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        crate::train::rundir::write_text(&p, text).map_err(io(p))
    };
    write(MARKDOWN_FILE, &md)?;
    write(CSV_FILE, &csv(paths, metric, rows))?;
    write(
        JSON_FILE,
        &(serde_json::to_string_pretty(&json(paths, metric, rows)).unwrap_or_default() + "\n"),
    )?;
    Ok(table)
}

/// The numeric value of a value text, if it is a plain number.
fn number(text: &str) -> Option<f64> {
    match crate::spec::yaml::parse(text, crate::diag::FileId(0))
        .ok()?
        .kind
    {
        crate::spec::yaml::NodeKind::Int(i) => Some(i as f64),
        crate::spec::yaml::NodeKind::Float(f) if f.is_finite() => Some(f),
        _ => None,
    }
}

/// The plot file of a swept path: `metric_<path>.png`.
pub fn plot_name(path: &str) -> String {
    format!("metric_{}.png", super::grid::sanitize_to(path, 200))
}

/// One PNG per swept path of the metric against its values: a numeric axis when
/// every value is a number, else the values' positions in the order given; with
/// several swept paths, one line per setting of the others. Returns the files.
pub fn plots(
    dir: &Path,
    paths: &[String],
    values: &[Vec<String>],
    metric: &Metric,
    rows: &[Row],
) -> Result<Vec<PathBuf>, ReportError> {
    let mut files = Vec::new();
    for (k, path) in paths.iter().enumerate() {
        let numeric: Option<Vec<f64>> = values[k].iter().map(|v| number(v)).collect();
        let x_of = |v: &str| -> f64 {
            match &numeric {
                Some(_) => number(v).unwrap_or(f64::NAN),
                None => values[k]
                    .iter()
                    .position(|u| u == v)
                    .map_or(f64::NAN, |i| i as f64),
            }
        };
        // One series per setting of the other paths.
        let mut series: Vec<Series> = Vec::new();
        let mut ordered: Vec<&Row> = rows.iter().collect();
        ordered.sort_by(|a, b| x_of(&a.values[k]).total_cmp(&x_of(&b.values[k])));
        for r in ordered {
            let Some(m) = r.metric else { continue };
            let rest: Vec<String> = paths
                .iter()
                .zip(&r.values)
                .enumerate()
                .filter(|(j, _)| *j != k)
                .map(|(_, (p, v))| format!("{p}={v}"))
                .collect();
            let name = if rest.is_empty() {
                metric.name()
            } else {
                rest.join(", ")
            };
            let point = (x_of(&r.values[k]), m);
            match series.iter_mut().find(|s| s.name == name) {
                Some(s) => s.points.push(point),
                None => series.push(Series {
                    name,
                    points: vec![point],
                }),
            }
        }
        let file = dir.join(plot_name(path));
        let title = format!("{} against {path}", metric.name());
        let labels = values[k].clone();
        let categorical = numeric.is_none();
        let tick = move |v: &f64| -> String {
            if categorical {
                let i = v.round();
                if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
                    labels[i as usize].clone()
                } else {
                    String::new()
                }
            } else {
                plots::tick_label(v)
            }
        };
        plots::marked_line_chart(&file, &title, path, &series, &tick)?;
        files.push(file);
    }
    Ok(files)
}
