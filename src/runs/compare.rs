//! `recipe compare`: several run directories side by side — every downstream result,
//! the recipe keys that differ, and the loss and kNN curves overlaid.
//!
//! Results are matched across runs by a row label made of the task, the dataset it
//! measured when it is not the pretraining data, the labelled fraction when below
//! 100%, and the row (`knn · trained`, `knn @1% · raw_pixels`,
//! `linear_probe · mnist · trained`); a second entry of the same task on the same data
//! is `knn#2`. A label one run lacks is `–` in its column, so an unfinished run (no
//! `results.json`) still shows its recipe and curves.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::{RunInfo, RunsError, pct, read, show_stamp, text_table};
use crate::report::metrics::{JSONL_FILE, Kind, read_jsonl};
use crate::report::plots::{Series, line_chart};
use crate::train::rundir::{self, RunStatus};

/// The markdown file `recipe compare` writes.
pub const MARKDOWN_FILE: &str = "compare.md";
/// The overlaid per-epoch mean losses.
pub const LOSS_FILE: &str = "compare_loss.png";
/// The overlaid kNN top-1 during training (when a run has any).
pub const KNN_FILE: &str = "compare_knn.png";

/// The rows of a run's downstream results, in the run's order: the trained, untrained
/// network, raw pixels and supervised rows of every task entry and labelled fraction.
const ROWS: [&str; 4] = ["trained", "untrained_network", "raw_pixels", "supervised"];

/// One line of a side-by-side table: a label and one cell per run.
#[derive(Clone, Debug, PartialEq)]
pub struct Line<T> {
    /// The row label (a result's, or a recipe key's dotted path).
    pub label: String,
    /// One value per run, in the comparison's column order (`None`: absent).
    pub cells: Vec<Option<T>>,
}

/// Runs side by side, as [`compare`] reads them.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// The runs, in the order given.
    pub runs: Vec<RunInfo>,
    /// Their column names: directory names, with the parent folder added where two
    /// runs share a name.
    pub columns: Vec<String>,
    /// Every downstream top-1 (%) of every run.
    pub results: Vec<Line<f64>>,
    /// The recipe keys (dotted paths; lists of scalars are one value) whose values are
    /// not the same in every run, with each run's value.
    pub recipe_diff: Vec<Line<Value>>,
    /// Per-epoch mean loss of each run, by epoch (1-based).
    pub loss: Vec<Series>,
    /// kNN top-1 (%) during training of each run, by epoch.
    pub knn: Vec<Series>,
    /// What is missing or unreadable, in words.
    pub notes: Vec<String>,
}

/// The label of `task` entry `t`'s measurement at `fraction`, row `row`; `nth` counts
/// earlier entries of the same task on the same data in the same run.
fn label(t: &Value, nth: usize, fraction: f64, row: &str) -> String {
    let mut s = t["task"].as_str().unwrap_or("?").to_string();
    if nth > 1 {
        s.push_str(&format!("#{nth}"));
    }
    if let Some(d) = t.get("data").and_then(Value::as_str) {
        s.push_str(&format!(" · {d}"));
    }
    if fraction < 1.0 {
        s.push_str(&format!(" @{}", crate::eval::subsets::percent(fraction)));
    }
    format!("{s} · {row}")
}

/// Every `(label, top-1)` of a `results.json`, in its order.
pub fn result_cells(results: &Value) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    for t in results["downstream"].as_array().into_iter().flatten() {
        let has_rows = |p: &Value| ROWS.iter().any(|r| p[r]["top1"].is_number());
        let points: Vec<(f64, &Value)> = match t.get("by_fraction").and_then(Value::as_array) {
            Some(b) => b
                .iter()
                .map(|p| (p["fraction"].as_f64().unwrap_or(1.0), p))
                .collect(),
            None => vec![(t["label_fraction"].as_f64().unwrap_or(1.0), t)],
        };
        if !points.iter().any(|(_, p)| has_rows(p)) {
            continue; // visualize, or a task without accuracies
        }
        let key = (
            t["task"].as_str().unwrap_or("?").to_string(),
            t["data"].as_str().unwrap_or_default().to_string(),
        );
        let nth = seen.entry(key).or_insert(0);
        *nth += 1;
        for (f, p) in points {
            for row in ROWS {
                if let Some(v) = p[row]["top1"].as_f64() {
                    out.push((label(t, *nth, f, row), v));
                }
            }
        }
    }
    out
}

/// `v` flattened to dotted paths in document order; objects are walked, lists of
/// objects or lists by index, and scalars and lists of scalars are values.
pub fn flatten(v: &Value) -> Vec<(String, Value)> {
    fn walk(v: &Value, path: &str, out: &mut Vec<(String, Value)>) {
        let join = |k: &str| {
            if path.is_empty() {
                k.to_string()
            } else {
                format!("{path}.{k}")
            }
        };
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, x) in m {
                    walk(x, &join(k), out);
                }
            }
            Value::Array(a) if a.iter().any(|x| x.is_object() || x.is_array()) => {
                for (i, x) in a.iter().enumerate() {
                    walk(x, &join(&i.to_string()), out);
                }
            }
            _ => out.push((path.to_string(), v.clone())),
        }
    }
    let mut out = Vec::new();
    walk(v, "", &mut out);
    out
}

/// Lines of `per_run` (one list of `(label, value)` per run) merged by label, labels in
/// first-seen order.
fn merge<T: Clone>(per_run: &[Vec<(String, T)>]) -> Vec<Line<T>> {
    let mut lines: Vec<Line<T>> = Vec::new();
    let mut at: HashMap<String, usize> = HashMap::new();
    for (j, cells) in per_run.iter().enumerate() {
        for (label, v) in cells {
            let i = *at.entry(label.clone()).or_insert_with(|| {
                lines.push(Line {
                    label: label.clone(),
                    cells: vec![None; per_run.len()],
                });
                lines.len() - 1
            });
            lines[i].cells[j] = Some(v.clone());
        }
    }
    lines
}

/// Column names: each directory's name, with parent folders added until they differ
/// (a name still shared gets ` (2)`, ` (3)`, …).
fn column_names(dirs: &[PathBuf]) -> Vec<String> {
    let tail = |d: &Path, n: usize| {
        let parts: Vec<String> = d
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .filter(|c| c != "." && !c.is_empty())
            .collect();
        let from = parts.len().saturating_sub(n);
        let s = parts[from..].join("/");
        if s.is_empty() {
            d.display().to_string()
        } else {
            s
        }
    };
    let mut names: Vec<String> = dirs.iter().map(|d| tail(d, 1)).collect();
    for n in 2..=3 {
        let dup = |names: &[String], i: usize| names.iter().filter(|x| **x == names[i]).count() > 1;
        let redo: Vec<usize> = (0..names.len()).filter(|&i| dup(&names, i)).collect();
        for i in redo {
            names[i] = tail(&dirs[i], n);
        }
    }
    let mut out: Vec<String> = Vec::new();
    for name in names {
        let mut candidate = name.clone();
        let mut k = 1;
        while out.contains(&candidate) {
            k += 1;
            candidate = format!("{name} ({k})");
        }
        out.push(candidate);
    }
    out
}

/// Reads the run directories `dirs` (at least two, each a run directory, none twice)
/// and lines them up. Unfinished or damaged runs are compared on what they have; the
/// comparison's `notes` say what is missing.
pub fn compare(dirs: &[PathBuf]) -> Result<Comparison, RunsError> {
    if dirs.len() < 2 {
        return Err(RunsError::TooFew(dirs.len()));
    }
    let mut seen: Vec<PathBuf> = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let canon = fs::canonicalize(d).map_err(|source| RunsError::Missing {
            path: d.clone(),
            source,
        })?;
        if !rundir::is_run_dir(d) {
            return Err(RunsError::NotRunDir(d.clone()));
        }
        if let Some(j) = seen.iter().position(|s| *s == canon) {
            return Err(RunsError::Duplicate(dirs[i].clone(), dirs[j].clone()));
        }
        seen.push(canon);
    }
    let columns = column_names(dirs);
    let runs: Vec<RunInfo> = dirs.iter().zip(&columns).map(|(d, c)| read(d, c)).collect();
    let mut notes = Vec::new();
    for r in &runs {
        match (&r.status, &r.results) {
            (RunStatus::Finished, Some(_)) => {}
            (s, None) => notes.push(format!(
                "`{}` is {} and has no readable {}: its results are –",
                r.name,
                s.name(),
                rundir::RESULTS_FILE
            )),
            (s, Some(_)) => notes.push(format!("`{}` is {}", r.name, s.name())),
        }
        if let RunStatus::Failed { error } = &r.status {
            notes.push(format!(
                "`{}` failed: {}",
                r.name,
                error.lines().next().unwrap_or_default()
            ));
        }
        notes.extend(r.notes.iter().map(|n| format!("`{}`: {n}", r.name)));
    }
    let results = merge(
        &runs
            .iter()
            .map(|r| r.results.as_ref().map(result_cells).unwrap_or_default())
            .collect::<Vec<_>>(),
    );
    let mut recipe_diff = merge(
        &runs
            .iter()
            .map(|r| r.recipe.as_ref().map(flatten).unwrap_or_default())
            .collect::<Vec<_>>(),
    );
    recipe_diff.retain(|l| l.cells.iter().any(|c| *c != l.cells[0]));
    // Keys of one section together (a key only one run has comes after the keys the
    // first run has, in first-seen order of its section).
    let section = |k: &str| k.split('.').next().unwrap_or_default().to_string();
    let mut sections: Vec<String> = Vec::new();
    for r in &runs {
        for (k, _) in r.recipe.as_ref().map(flatten).unwrap_or_default() {
            if !sections.contains(&section(&k)) {
                sections.push(section(&k));
            }
        }
    }
    recipe_diff.sort_by_key(|l| sections.iter().position(|s| *s == section(&l.label)));
    let curve = |r: &RunInfo, field: &str| -> Series {
        let recs = read_jsonl(&r.dir.join(JSONL_FILE)).unwrap_or_default();
        Series {
            name: r.name.clone(),
            points: recs
                .iter()
                .filter(|x| x.kind == Kind::Epoch)
                .filter_map(|x| Some(((x.epoch + 1) as f64, x.get(field)?)))
                .collect(),
        }
    };
    let loss = runs.iter().map(|r| curve(r, "loss")).collect();
    let knn = runs
        .iter()
        .map(|r| {
            let mut s = curve(r, "knn_top1");
            if s.points.is_empty() {
                s.name.push_str(" (no kNN during training)");
            }
            s
        })
        .collect();
    Ok(Comparison {
        runs,
        columns,
        results,
        recipe_diff,
        loss,
        knn,
        notes,
    })
}

/// A recipe value as a cell: strings bare, everything else as compact JSON, absent `–`.
fn show_value(v: &Option<Value>) -> String {
    match v {
        None => "–".into(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// The widest recipe value `recipe compare` prints (`compare.md` has them whole).
const TEXT_CELL: usize = 40;

/// `s` cut to `max` characters, the last one `…`.
fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
    t.push('…');
    t
}

/// `s` safe inside a markdown table cell.
fn md_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

/// A markdown table; the columns after the first are right-aligned when `numbers`.
fn md_table(header: &[String], rows: &[Vec<String>], numbers: bool) -> String {
    let mut s = format!(
        "| {} |\n",
        header
            .iter()
            .map(|h| md_cell(h))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let align = if numbers { "---:|" } else { "---|" };
    s.push_str(&format!(
        "|---|{}\n",
        align.repeat(header.len().saturating_sub(1))
    ));
    for r in rows {
        s.push_str(&format!("| {} |\n", r.join(" | ")));
    }
    s
}

impl Comparison {
    /// The facts of each run: directory, status, method, start, epochs, steps, the last
    /// epoch's mean loss, training time and images/s.
    pub fn facts(&self) -> Vec<Line<String>> {
        let training = |r: &RunInfo, k: &str| r.results.as_ref().map(|x| x["training"][k].clone());
        type Fact<'a> = Box<dyn Fn(&RunInfo) -> Option<String> + 'a>;
        let rows: Vec<(&str, Fact)> = vec![
            (
                "run directory",
                Box::new(|r| Some(r.dir.display().to_string())),
            ),
            ("status", Box::new(|r| Some(r.status_text()))),
            ("method", Box::new(|r| r.method.clone())),
            (
                "started",
                Box::new(|r| r.started.as_deref().map(show_stamp)),
            ),
            ("epochs", Box::new(|r| Some(r.epochs()))),
            ("steps", Box::new(|r| r.steps.map(|s| s.to_string()))),
            (
                "final epoch loss",
                Box::new(|r| r.final_loss.map(|l| format!("{l:.4}"))),
            ),
            (
                "training time (s)",
                Box::new(move |r| training(r, "seconds")?.as_f64().map(|s| format!("{s:.0}"))),
            ),
            (
                "images/s",
                Box::new(move |r| {
                    training(r, "images_per_s")?
                        .as_f64()
                        .map(|s| format!("{s:.0}"))
                }),
            ),
        ];
        rows.into_iter()
            .map(|(label, f)| Line {
                label: label.to_string(),
                cells: self.runs.iter().map(&f).collect(),
            })
            .collect()
    }

    fn header(&self, first: &str) -> Vec<String> {
        std::iter::once(first.to_string())
            .chain(self.columns.iter().cloned())
            .collect()
    }

    fn result_rows(&self, bold_best: bool) -> Vec<Vec<String>> {
        self.results
            .iter()
            .map(|l| {
                let best = l
                    .cells
                    .iter()
                    .flatten()
                    .copied()
                    .filter(|v| v.is_finite())
                    .fold(f64::NEG_INFINITY, f64::max);
                // Bold only where the runs differ.
                let differ = l.cells.iter().any(|c| *c != l.cells[0]);
                std::iter::once(l.label.clone())
                    .chain(l.cells.iter().map(|c| {
                        let s = pct(*c);
                        match c {
                            Some(v) if bold_best && differ && *v == best => format!("**{s}**"),
                            _ => s,
                        }
                    }))
                    .collect()
            })
            .collect()
    }

    fn diff_rows(&self, md: bool) -> Vec<Vec<String>> {
        self.recipe_diff
            .iter()
            .map(|l| {
                std::iter::once(l.label.clone())
                    .chain(l.cells.iter().map(|c| {
                        let s = show_value(c);
                        if md {
                            md_cell(&s)
                        } else {
                            shorten(&s, TEXT_CELL)
                        }
                    }))
                    .collect()
            })
            .collect()
    }

    fn fact_rows(&self) -> Vec<Vec<String>> {
        self.facts()
            .into_iter()
            .map(|l| {
                std::iter::once(l.label)
                    .chain(l.cells.into_iter().map(|c| c.unwrap_or_else(|| "–".into())))
                    .collect()
            })
            .collect()
    }

    /// What `recipe compare` prints: the downstream table (top-1 %), then the recipe
    /// keys that differ (values over 40 characters shortened with `…`).
    pub fn text(&self) -> String {
        let mut s = String::new();
        if self.results.is_empty() {
            s.push_str("No downstream results in these runs.\n");
        } else {
            s.push_str(&text_table(
                &self.header("top-1 %"),
                &self.result_rows(false),
                1,
            ));
        }
        s.push('\n');
        if self.recipe_diff.is_empty() {
            s.push_str("The recipes are the same.\n");
        } else {
            s.push_str(&text_table(
                &self.header("recipe key"),
                &self.diff_rows(false),
                usize::MAX,
            ));
        }
        s
    }

    /// `compare.md`: the runs' facts, the downstream table with each line's best value
    /// in bold, the recipe keys that differ, the notes, and the `figures` (title, file).
    pub fn markdown(&self, figures: &[(String, String)]) -> String {
        let mut s = format!("# Comparison of {} runs\n\n", self.runs.len());
        s.push_str(&md_table(&self.header(""), &self.fact_rows(), false));
        s.push_str("\n## Downstream results (top-1 %)\n\n");
        if self.results.is_empty() {
            s.push_str("No downstream results in these runs.\n");
        } else {
            s.push_str(&md_table(&self.header(""), &self.result_rows(true), true));
            s.push_str(
                "\nRows: task [· dataset, when not the pretraining data] [@ labelled \
                 fraction, when below 100%] · encoder (trained, untrained_network, \
                 raw_pixels, supervised); the best of each row in bold where the runs differ; – where a run \
                 has no such result.\n",
            );
        }
        s.push_str("\n## Recipe keys that differ\n\n");
        if self.recipe_diff.is_empty() {
            s.push_str("The recipes are the same.\n");
        } else {
            s.push_str(&md_table(&self.header("key"), &self.diff_rows(true), false));
        }
        if !self.notes.is_empty() {
            s.push_str("\n## Notes\n\n");
            for n in &self.notes {
                s.push_str(&format!("- {n}\n"));
            }
        }
        if !figures.is_empty() {
            s.push_str("\n## Curves\n");
            for (title, file) in figures {
                s.push_str(&format!("\n### {title}\n\n![{title}]({file})\n"));
            }
        }
        s
    }

    /// Draws the curves into `out` ([`LOSS_FILE`] when any run has epoch records,
    /// [`KNN_FILE`] when any has periodic kNN); returns `(title, file name)` of each.
    pub fn draw(&self, out: &Path) -> Result<Vec<(String, String)>, RunsError> {
        let mut figs = Vec::new();
        for (series, file, title) in [
            (&self.loss, LOSS_FILE, "Training loss (epoch mean)"),
            (&self.knn, KNN_FILE, "kNN top-1 during training (%)"),
        ] {
            if series.iter().all(|s| s.points.is_empty()) {
                continue;
            }
            line_chart(&out.join(file), title, "epoch", series)?;
            figs.push((title.to_string(), file.to_string()));
        }
        Ok(figs)
    }

    /// Writes `compare.md` and the curves into `out` (created if needed); returns the
    /// files written.
    pub fn write(&self, out: &Path) -> Result<Vec<PathBuf>, RunsError> {
        fs::create_dir_all(out)
            .map_err(|e| RunsError::Write(format!("cannot create `{}`: {e}", out.display())))?;
        let figs = self.draw(out)?;
        let md = out.join(MARKDOWN_FILE);
        rundir::write_text(&md, &self.markdown(&figs)).map_err(RunsError::Write)?;
        Ok(std::iter::once(md)
            .chain(figs.iter().map(|(_, f)| out.join(f)))
            .collect())
    }

    /// The comparison as JSON (`recipe compare --format json`).
    pub fn to_json(&self) -> Value {
        let lines = |ls: &[Line<Value>]| -> Vec<Value> {
            ls.iter()
                .map(|l| json!({"key": l.label, "values": l.cells}))
                .collect()
        };
        json!({
            "runs": self.runs.iter().zip(&self.columns).map(|(r, c)| {
                let mut v = r.to_json();
                v["column"] = json!(c);
                v
            }).collect::<Vec<_>>(),
            "results": self.results.iter()
                .map(|l| json!({"row": l.label, "top1": l.cells}))
                .collect::<Vec<_>>(),
            "recipe_diff": lines(&self.recipe_diff),
            "notes": self.notes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_labels_name_task_data_fraction_and_row() {
        let r = json!({"downstream": [
            {"task": "knn", "trained": {"top1": 80.0}, "raw_pixels": {"top1": 82.0},
             "by_fraction": [
                {"fraction": 0.01, "trained": {"top1": 60.0}},
                {"fraction": 1.0, "trained": {"top1": 80.0}}]},
            {"task": "knn", "data": "mnist", "trained": {"top1": 90.0}},
            {"task": "knn", "trained": {"top1": 70.0}},
            {"task": "visualize", "files": []},
            {"task": "linear_probe", "label_fraction": 0.1, "trained": {"top1": 50.0},
             "by_fraction": [{"fraction": 0.1, "trained": {"top1": 50.0}}]},
        ]});
        let labels: Vec<String> = result_cells(&r).into_iter().map(|c| c.0).collect();
        assert_eq!(
            labels,
            [
                "knn @1% · trained",
                "knn · trained",
                "knn · mnist · trained",
                "knn#2 · trained",
                "linear_probe @10% · trained",
            ]
        );
    }

    #[test]
    fn flatten_keeps_scalar_lists_whole() {
        let v = json!({"a": {"b": 1, "c": [1, 2]}, "d": [{"e": 3}], "f": {}});
        let keys: Vec<String> = flatten(&v).into_iter().map(|c| c.0).collect();
        assert_eq!(keys, ["a.b", "a.c", "d.0.e", "f"]);
    }

    #[test]
    fn columns_disambiguate_shared_names() {
        let dirs = ["a/x", "b/x", "c"].map(PathBuf::from);
        assert_eq!(column_names(&dirs), ["a/x", "b/x", "c"]);
        let dirs = ["x", "./x"].map(PathBuf::from);
        assert_eq!(column_names(&dirs), ["x", "x (2)"]);
        let dirs = ["q/a/x", "r/a/x"].map(PathBuf::from);
        assert_eq!(column_names(&dirs), ["q/a/x", "r/a/x"]);
    }
}
