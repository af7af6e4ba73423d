//! What `recipe run --resume DIR` continues with, and how the run directory records
//! every invocation and every change.
//!
//! The policy (README, *Resuming and changing a run*):
//! - `DIR/recipe.yaml` is always the recipe in force. `recipe run --resume DIR` alone
//!   reads it, so it continues the run exactly as started.
//! - A recipe that differs from it is refused, with every differing key's old and new
//!   value, unless `--force` is given.
//! - With `--force` the changes take effect at the checkpoint's step: the previous
//!   `recipe.yaml` and the outputs of the previous finish (results, report, pictures,
//!   exported backbone, `eval.json`) move to `history/step-NNNNNN/`, the new recipe
//!   becomes `recipe.yaml`, the checkpoint is re-stamped with the new recipe's hash (so
//!   a later plain `--resume` works), and `invocations.jsonl` records the change with
//!   its step. The schedule is a function of the global step and the run's length, so
//!   a longer run continues as if the longer run had been planned from the start.
//!
//! It also derives a run's [`Provenance`] (recipe file, overrides, one line per
//! invocation and change) for `results.json` and the report, and keeps the world-size
//! note of data-parallel runs ([`world_size_note`]).
//!
//! Invariants: nothing here touches a file before the caller has decided to go on; an
//! archived file is moved, never deleted; `invocations.jsonl` is only appended to.

use std::fmt;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use super::rundir;

/// Name of the per-run log of every `recipe run` that worked on the directory.
pub const INVOCATIONS: &str = "invocations.jsonl";
/// Folder of earlier recipes and outputs replaced by forced changes.
pub const HISTORY: &str = "history";

/// Top-level files of a finished run that a forced change moves into `history/`.
const OUTPUTS: [&str; 4] = [
    "results.json",
    "report.md",
    "eval.json",
    "backbone.safetensors",
];

/// One recipe key that differs between the run's recipe and the one given.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// Dotted path (`train.epochs`, `augment.pipeline.1`).
    pub key: String,
    /// The value in the run's `recipe.yaml` (`None`: absent).
    pub old: Option<Value>,
    /// The value in the recipe given now (`None`: absent).
    pub new: Option<Value>,
}

fn show(v: &Option<Value>) -> String {
    match v {
        None => "(absent)".into(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} → {}", self.key, show(&self.old), show(&self.new))
    }
}

impl Change {
    /// The change as `{"key", "old", "new"}` (absent values are `null`).
    pub fn to_json(&self) -> Value {
        json!({"key": self.key, "old": self.old, "new": self.new})
    }
}

/// Every key at which `old` and `new` differ, with both values, in key order. Lists of
/// equal length are compared item by item; anything else that differs is one change.
pub fn changes(old: &Value, new: &Value) -> Vec<Change> {
    fn walk(a: Option<&Value>, b: Option<&Value>, path: &str, out: &mut Vec<Change>) {
        let join = |k: &str| {
            if path.is_empty() {
                k.to_string()
            } else {
                format!("{path}.{k}")
            }
        };
        match (a, b) {
            (Some(Value::Object(x)), Some(Value::Object(y))) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    walk(x.get(k), y.get(k), &join(k), out);
                }
            }
            (Some(Value::Array(x)), Some(Value::Array(y))) if x.len() == y.len() => {
                for (i, (u, v)) in x.iter().zip(y).enumerate() {
                    walk(Some(u), Some(v), &join(&i.to_string()), out);
                }
            }
            _ if a != b => out.push(Change {
                key: if path.is_empty() {
                    "(root)".into()
                } else {
                    path.into()
                },
                old: a.cloned(),
                new: b.cloned(),
            }),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(Some(old), Some(new), "", &mut out);
    out
}

/// The run directory's `recipe.yaml` as a JSON value (the form [`changes`] compares).
pub fn read_recipe_value(dir: &Path) -> Result<Value, String> {
    let path = dir.join(rundir::RECIPE_FILE);
    let text = fs::read_to_string(&path).map_err(|e| {
        format!(
            "`{}` is not a run directory (cannot read {}: {e})",
            dir.display(),
            rundir::RECIPE_FILE
        )
    })?;
    serde_yaml::from_str(&text).map_err(|e| format!("`{}` is unreadable: {e}", path.display()))
}

/// Moves the outputs of the run's previous finish (and a copy of its `recipe.yaml`)
/// to `history/step-NNNNNN/` (`-2`, `-3`, … if that exists). Returns that folder,
/// relative to `dir`.
pub fn archive(dir: &Path, step: u64) -> Result<PathBuf, String> {
    let base = format!("step-{step:06}");
    let mut rel = Path::new(HISTORY).join(&base);
    let mut n = 1;
    while dir.join(&rel).exists() {
        n += 1;
        rel = Path::new(HISTORY).join(format!("{base}-{n}"));
    }
    let to = dir.join(&rel);
    fs::create_dir_all(&to).map_err(|e| format!("cannot create `{}`: {e}", to.display()))?;
    fs::copy(dir.join(rundir::RECIPE_FILE), to.join(rundir::RECIPE_FILE))
        .map_err(|e| format!("cannot keep the previous recipe in `{}`: {e}", to.display()))?;
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot list `{}`: {e}", dir.display()))?;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let is_output = OUTPUTS.contains(&name.as_str()) || name.ends_with(".png");
        if is_output && e.path().is_file() {
            fs::rename(e.path(), to.join(&name))
                .map_err(|err| format!("cannot move `{name}` into `{}`: {err}", to.display()))?;
        }
    }
    Ok(rel)
}

/// One `recipe run` on a run directory, as `invocations.jsonl` records it.
#[derive(Clone, Debug, Default)]
pub struct Invocation {
    /// The command line, shell-quoted.
    pub command: String,
    /// The recipe file named on the command line (`None`: the run's own recipe).
    pub recipe_file: Option<String>,
    /// The `--set` overrides, in order.
    pub overrides: Vec<String>,
    /// The step the invocation started from (0 for a new run).
    pub start_step: u64,
    /// Recipe changes forced at `start_step`.
    pub changes: Vec<Change>,
    /// Where the previous recipe and outputs went, relative to the run directory.
    pub archived: Option<PathBuf>,
}

/// Appends `inv` (with the UTC time) to `dir/invocations.jsonl`.
pub fn record(dir: &Path, inv: &Invocation) -> Result<(), String> {
    let line = json!({
        "time": rundir::timestamp(std::time::SystemTime::now()),
        "command": inv.command,
        "recipe_file": inv.recipe_file,
        "overrides": inv.overrides,
        "start_step": inv.start_step,
        "changes": inv.changes.iter().map(Change::to_json).collect::<Vec<_>>(),
        "archived": inv.archived.as_ref().map(|p| p.display().to_string()),
    });
    let path = dir.join(INVOCATIONS);
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| writeln!(f, "{line}"))
        .map_err(|e| format!("cannot write `{}`: {e}", path.display()))
}

/// Every invocation recorded in `dir` (none if the file is missing; unreadable lines
/// are skipped, since the log is informational).
pub fn read(dir: &Path) -> Vec<Value> {
    fs::read_to_string(dir.join(INVOCATIONS))
        .map(|t| {
            t.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// `args` as one shell command line: arguments with spaces or shell characters are
/// single-quoted, so the line can be pasted back into a shell.
pub fn shell_line(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How a run was made, from its `invocations.jsonl`.
pub struct Provenance {
    /// The recipe file the run started from.
    pub recipe_file: Option<String>,
    /// Every `--set` of every invocation, in order.
    pub overrides: Vec<String>,
    /// One line per invocation (its step and command) and per forced change.
    pub lines: Vec<String>,
}

/// The run's [`Provenance`] from the entries of its `invocations.jsonl` ([`read`]).
pub fn provenance(invocations: &[Value]) -> Provenance {
    let mut p = Provenance {
        recipe_file: None,
        overrides: Vec::new(),
        lines: Vec::new(),
    };
    for (i, inv) in invocations.iter().enumerate() {
        if i == 0 {
            p.recipe_file = inv["recipe_file"].as_str().map(str::to_string);
        }
        // A later `--set` of the same key replaces the earlier one (the recipe in force
        // holds the later value).
        for set in inv["overrides"].as_array().into_iter().flatten() {
            let Some(set) = set.as_str() else { continue };
            let key = |s: &str| s.split_once('=').map_or(s, |(k, _)| k).trim().to_string();
            p.overrides.retain(|o| key(o) != key(set));
            p.overrides.push(set.to_string());
        }
        let step = inv["start_step"].as_u64().unwrap_or(0);
        p.lines.push(format!(
            "{} at step {step}: `{}`",
            inv["time"].as_str().unwrap_or("?"),
            inv["command"].as_str().unwrap_or("?").replace('`', "'")
        ));
        for c in inv["changes"].as_array().into_iter().flatten() {
            let v = |k: &str| match &c[k] {
                Value::Null => "(absent)".to_string(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            p.lines.push(format!(
                "  changed from step {step}: `{}`: {} → {}",
                c["key"].as_str().unwrap_or("?"),
                v("old").replace('`', "'"),
                v("new").replace('`', "'")
            ));
        }
    }
    p
}

/// Name of the file in a data-parallel run directory that records the world size.
pub const DIST_FILE: &str = "world_size.txt";

/// Records the world size in `dir`; on a resume with another, says what changes.
pub fn world_size_note(
    dir: &Path,
    world: usize,
    resume: bool,
    sync_bn: bool,
) -> Result<(), String> {
    let path = dir.join(DIST_FILE);
    let before = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse::<usize>().ok())
        .unwrap_or(1);
    if resume && before != world {
        let bn = if sync_bn {
            "batch norm is synchronised, so nothing changes but float rounding".to_string()
        } else {
            format!(
                "only batch norm changes: it normalises over per-rank batches of {} images \
                 instead of {} (set train.sync_batch_norm: true to make K irrelevant)",
                "B/".to_string() + &world.to_string(),
                "B/".to_string() + &before.to_string()
            )
        };
        eprintln!(
            "note: this run was trained on {before} rank(s) and resumes on {world}: the global \
             batch, the data order, the augmentations, the optimiser and the method state carry \
             over unchanged; {bn}"
        );
    }
    if world > 1 || path.exists() {
        rundir::write_text(&path, &format!("{world}\n"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_name_the_key_and_both_values() {
        let a = json!({"train": {"epochs": 60, "batch_size": 8}, "d": [1, 2], "x": 1});
        let b = json!({"train": {"epochs": 80, "batch_size": 8}, "d": [1, 2, 3], "y": 2});
        let c = changes(&a, &b);
        let shown: Vec<String> = c.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                "d: [1,2] → [1,2,3]",
                "train.epochs: 60 → 80",
                "x: 1 → (absent)",
                "y: (absent) → 2"
            ]
        );
        assert!(changes(&a, &a).is_empty());
    }

    #[test]
    fn archive_moves_outputs_and_keeps_the_recipe() {
        let tmp = tempfile::tempdir().unwrap();
        let d = tmp.path();
        fs::write(d.join("recipe.yaml"), "a: 1\n").unwrap();
        fs::write(d.join("results.json"), "{}").unwrap();
        fs::write(d.join("knn.png"), "png").unwrap();
        fs::write(d.join("metrics.jsonl"), "").unwrap();
        let rel = archive(d, 660).unwrap();
        assert_eq!(rel, Path::new("history/step-000660"));
        assert!(d.join(&rel).join("results.json").is_file());
        assert!(d.join(&rel).join("knn.png").is_file());
        assert!(d.join(&rel).join("recipe.yaml").is_file());
        assert!(
            d.join("recipe.yaml").is_file(),
            "the recipe is copied, not moved"
        );
        assert!(d.join("metrics.jsonl").is_file(), "metrics stay");
        assert!(!d.join("results.json").exists());
        assert_eq!(archive(d, 660).unwrap(), Path::new("history/step-000660-2"));
    }

    #[test]
    fn provenance_keeps_the_last_value_of_each_override_and_lists_changes() {
        let inv = [
            json!({"time": "t0", "command": "recipe run a.yaml --set train.epochs=3",
                "recipe_file": "a.yaml", "overrides": ["train.epochs=3", "seed=1"],
                "start_step": 0, "changes": []}),
            json!({"time": "t1", "command": "recipe run --resume d --set train.epochs=5 --force",
                "recipe_file": null, "overrides": ["train.epochs=5"], "start_step": 18,
                "changes": [{"key": "train.epochs", "old": 3, "new": 5}]}),
        ];
        let p = provenance(&inv);
        assert_eq!(p.recipe_file.as_deref(), Some("a.yaml"));
        assert_eq!(p.overrides, ["seed=1", "train.epochs=5"]);
        assert_eq!(
            p.lines,
            [
                "t0 at step 0: `recipe run a.yaml --set train.epochs=3`",
                "t1 at step 18: `recipe run --resume d --set train.epochs=5 --force`",
                "  changed from step 18: `train.epochs`: 3 → 5",
            ]
        );
    }

    #[test]
    fn shell_lines_quote_what_a_shell_would_split() {
        let args: Vec<String> = ["recipe", "run", "--set", "loss={method: moco}", "it's"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            shell_line(&args),
            r"recipe run --set 'loss={method: moco}' 'it'\''s'"
        );
    }
}
