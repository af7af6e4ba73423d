//! `report.md`: one page a person reads after a run.
//!
//! Sections, in order: the title (run name), a facts list (method, recipe, timings,
//! throughput, final loss), the downstream table (one row per encoder — the trained
//! network and its baselines — and one column per metric, in percent), the notes, and
//! the figures (each a heading and an image link relative to the report). Numbers are
//! printed with two decimals; a missing value is an em dash.

use std::fmt::Write;
use std::path::Path;

use super::{ReportError, io_err};

/// The downstream results: `rows` of `(encoder, values)` under `columns`.
///
/// Typical rows: `trained`, `untrained network`, `raw pixels`; typical columns:
/// `kNN top-1`, `kNN top-5`, `linear top-1`. `None` marks a metric not measured for a
/// row (e.g. fine-tuning for raw pixels).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetricsTable {
    /// Column headings (metric names).
    pub columns: Vec<String>,
    /// Row heading and one value per column (percent).
    pub rows: Vec<(String, Vec<Option<f64>>)>,
}

/// Everything `report.md` shows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReportInput {
    /// The run's name (the title).
    pub run_name: String,
    /// The method (`SimCLR`, `MoCo`, …).
    pub method: String,
    /// The recipe file the run came from, as the user should see it.
    pub recipe_path: Option<String>,
    /// The `--set` overrides applied to it (shown in the title, so a run made by
    /// overrides is not mistaken for the recipe as written).
    pub overrides: Vec<String>,
    /// How the run was made: one line per invocation and per forced change.
    pub history: Vec<String>,
    /// Named durations in seconds (`training`, `evaluation`, …), in display order.
    pub timings: Vec<(String, f64)>,
    /// Training throughput in images per second.
    pub images_per_s: Option<f64>,
    /// The last training loss.
    pub final_loss: Option<f64>,
    /// The downstream table.
    pub metrics: MetricsTable,
    /// Further tables under the downstream one, `(heading, table)`: the label-efficiency
    /// tables (labelled fractions as rows, encoders as columns).
    pub tables: Vec<(String, MetricsTable)>,
    /// Free-form remarks, one paragraph each (e.g. what a baseline is).
    pub notes: Vec<String>,
    /// `(title, path)` of each picture, the path relative to the report.
    pub figures: Vec<(String, String)>,
}

/// `|` would end a table cell and a newline the row.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace(['\n', '\r'], " ")
}

fn number(v: Option<f64>) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.2}"),
        Some(v) => format!("{v}"),
        None => "—".into(),
    }
}

/// A link target that survives spaces and parentheses in the path.
fn link_target(path: &str) -> String {
    if path.contains([' ', '(', ')', '<', '>']) {
        format!("<{}>", path.replace('<', "%3C").replace('>', "%3E"))
    } else {
        path.to_string()
    }
}

/// The report as Markdown text.
pub fn render_report(input: &ReportInput) -> String {
    let mut out = String::new();
    let title = input.run_name.replace(['\n', '\r'], " ");
    if input.overrides.is_empty() {
        let _ = writeln!(out, "# {title}\n");
    } else {
        let sets: Vec<String> = input
            .overrides
            .iter()
            .map(|s| s.replace(['\n', '\r'], " "))
            .collect();
        let _ = writeln!(out, "# {title} (with {})\n", sets.join(", "));
    }
    let _ = writeln!(out, "- Method: {}", input.method);
    if let Some(p) = &input.recipe_path {
        let _ = writeln!(out, "- Recipe: `{}`", p.replace('`', "'"));
    }
    for o in &input.overrides {
        let _ = writeln!(out, "- Override: `--set {}`", o.replace('`', "'"));
    }
    for (name, secs) in &input.timings {
        let _ = writeln!(out, "- {}: {}", name, super::duration(*secs));
    }
    if let Some(v) = input.images_per_s {
        let _ = writeln!(out, "- Throughput: {v:.1} images/s");
    }
    if let Some(v) = input.final_loss {
        let _ = writeln!(out, "- Final training loss: {v:.4}");
    }
    if !input.metrics.rows.is_empty() {
        let _ = writeln!(out, "\n## Downstream results (%)\n");
        table(&mut out, &input.metrics);
    }
    for (heading, t) in &input.tables {
        let _ = writeln!(out, "\n### {}\n", heading.replace(['\n', '\r'], " "));
        table(&mut out, t);
    }
    if !input.notes.is_empty() {
        out.push('\n');
        for n in &input.notes {
            let _ = writeln!(out, "{n}\n");
        }
    }
    if !input.history.is_empty() {
        let _ = writeln!(out, "\n## How this run was made\n");
        for line in &input.history {
            let indent = line.len() - line.trim_start().len();
            let _ = writeln!(out, "{}- {}", " ".repeat(indent), line.trim_start());
        }
    }
    if !input.figures.is_empty() {
        let _ = writeln!(out, "\n## Figures");
        for (title, path) in &input.figures {
            let title = title.replace(['\n', '\r'], " ");
            let alt = title.replace(['[', ']'], "");
            let _ = writeln!(out, "\n### {title}\n\n![{alt}]({})", link_target(path));
        }
    }
    out
}

/// One `recipe eval` of a finished run, as a section appended to its `report.md`:
/// the heading, one line per fact (checkpoint, step, overrides), the downstream table,
/// the label-efficiency tables, the notes and the figures it drew.
pub fn render_evaluation(
    heading: &str,
    facts: &[String],
    metrics: &MetricsTable,
    tables: &[(String, MetricsTable)],
    notes: &[String],
    figures: &[(String, String)],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\n## {}\n", heading.replace(['\n', '\r'], " "));
    for f in facts {
        let _ = writeln!(out, "- {}", f.replace(['\n', '\r'], " "));
    }
    if !metrics.rows.is_empty() {
        out.push('\n');
        table(&mut out, metrics);
    }
    for (h, t) in tables {
        let _ = writeln!(out, "\n### {}\n", h.replace(['\n', '\r'], " "));
        table(&mut out, t);
    }
    for n in notes {
        let _ = writeln!(out, "\n{n}");
    }
    for (title, path) in figures {
        let title = title.replace(['\n', '\r'], " ");
        let alt = title.replace(['[', ']'], "");
        let _ = writeln!(out, "\n### {title}\n\n![{alt}]({})", link_target(path));
    }
    out
}

/// `t` as a Markdown table with an empty corner cell.
fn table(out: &mut String, t: &MetricsTable) {
    let _ = write!(out, "| |");
    for c in &t.columns {
        let _ = write!(out, " {} |", cell(c));
    }
    let _ = write!(out, "\n|---|");
    for _ in &t.columns {
        let _ = write!(out, "---:|");
    }
    out.push('\n');
    for (name, values) in &t.rows {
        let _ = write!(out, "| {} |", cell(name));
        for i in 0..t.columns.len() {
            let _ = write!(out, " {} |", number(values.get(i).copied().flatten()));
        }
        out.push('\n');
    }
}

/// Writes [`render_report`] to `path`.
pub fn write_report(path: &Path, input: &ReportInput) -> Result<(), ReportError> {
    std::fs::write(path, render_report(input)).map_err(io_err(path))
}
