//! `recipe sweep`: one recipe run over a grid of values of some of its keys.
//!
//! - [`grid`] parses `--grid PATH=[v1, v2, …]` into [`grid::Axis`]es (each value an
//!   [`Override`] whose diagnostics point into the argument) and expands them into
//!   combinations: the whole Cartesian product, or `--random N --seed S` distinct ones.
//! - [`validate`] loads every combination with the [`Loader`] before anything runs and
//!   gathers every diagnostic, each labelled with the combinations it concerns (the
//!   data check runs once per distinct data section, so once when the data does not
//!   vary).
//! - [`run`] (in `run.rs`) runs the combinations one after the other, each an ordinary
//!   run directory inside one sweep directory, through [`crate::experiment::run`] —
//!   the call `recipe run` makes. A rerun of the same sweep finds the same directory
//!   ([`sweep_dir`] is derived from the resolved recipes), skips finished combinations
//!   and resumes an interrupted one. Ctrl-C stops after the current combination saved
//!   its state.
//! - [`summary`] writes the table sorted by the chosen metric (Markdown, CSV, JSON)
//!   and one plot of the metric per swept path.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::diag::{Diagnostic, render_human};
use crate::spec::load::{LoadError, Override};
use crate::spec::{Loader, Recipe};

pub mod grid;
mod run;
pub mod summary;

pub use run::{SweepOutcome, SweepRequest, run};

/// The sweep's definition file in the sweep directory.
pub const DEFINITION_FILE: &str = "sweep.json";

/// One combination of the sweep.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Combination {
    /// 1-based, in the order the sweep runs them.
    pub number: usize,
    /// The index of its value on each axis.
    pub choice: Vec<usize>,
    /// `loss.temperature=0.1, optimizer.lr=0.3`.
    pub label: String,
    /// Its run directory's name inside the sweep directory ([`grid::dir_name`]).
    pub dir_name: String,
    /// What is applied to the recipe: the `--set`s, then one value per axis.
    pub overrides: Vec<Override>,
}

/// The combinations of `choices` (from [`grid::expand`]), each with the common `sets`
/// first and its grid values after them.
pub fn combinations(
    axes: &[grid::Axis],
    choices: &[Vec<usize>],
    sets: &[Override],
) -> Vec<Combination> {
    choices
        .iter()
        .enumerate()
        .map(|(i, choice)| {
            let mut overrides = sets.to_vec();
            overrides.extend(axes.iter().zip(choice).map(|(a, &v)| a.values[v].clone()));
            Combination {
                number: i + 1,
                choice: choice.clone(),
                label: grid::label(axes, choice),
                dir_name: grid::dir_name(i + 1, axes, choice),
                overrides,
            }
        })
        .collect()
}

/// The outcome of [`validate`].
#[derive(Debug)]
pub struct Validation {
    /// Every combination's valid recipe, in order, when there are no errors.
    pub recipes: Option<Vec<Recipe>>,
    /// Every diagnostic, rendered and labelled with its combinations (empty if none).
    pub report: String,
    /// How many distinct errors.
    pub errors: usize,
    /// How many of them came from the data check (the recipes are right; the data
    /// cannot be read).
    pub data_errors: usize,
}

/// Loads the recipe `file` with each combination's overrides and collects every
/// problem before anything runs: recipe diagnostics, the data check (with
/// `data_check`; once per distinct data section), a `metric` the combination never
/// measures, and thread counts that differ between combinations (one process has one
/// thread pool). A diagnostic that several combinations share is printed once, under
/// the list of them (`every combination:`, `combinations 1, 3:`,
/// `combination 2 (loss.temperature=0):`).
pub fn validate(
    loader: &Loader,
    file: &Path,
    combos: &[Combination],
    metric: &summary::Metric,
    data_check: bool,
) -> Result<Validation, LoadError> {
    // Rendered diagnostic → (is error, from the data check, combinations).
    let mut groups: Vec<(String, bool, bool, Vec<usize>)> = Vec::new();
    let mut add = |text: String, error: bool, data: bool, n: usize| match groups
        .iter_mut()
        .find(|g| g.0 == text)
    {
        Some(g) => g.3.push(n),
        None => groups.push((text, error, data, vec![n])),
    };
    let mut recipes = Vec::with_capacity(combos.len());
    // Each distinct data section, with what its check found (rendered, is error).
    let mut data_seen: Vec<(Value, Vec<(String, bool)>)> = Vec::new();
    let mut threads: Option<(usize, usize)> = None;
    for c in combos {
        let mut loaded = loader.load_file_with(file, &c.overrides)?;
        let before = loaded.diagnostics.len();
        let mut data_key = None;
        if data_check && let Some(r) = &loaded.recipe {
            let key = json!([
                r.data,
                r.downstream.iter().map(|t| t.data()).collect::<Vec<_>>()
            ]);
            match data_seen.iter().find(|(k, _)| *k == key) {
                // Checked once: its findings hold for this combination too.
                Some((_, found)) => {
                    for (text, error) in found {
                        add(text.clone(), *error, true, c.number);
                    }
                }
                None => {
                    crate::build::check_data_paths(&mut loaded);
                    data_key = Some(key);
                }
            }
        }
        let mut found = Vec::new();
        for (i, d) in loaded.diagnostics.iter().enumerate() {
            let text = render_human(std::slice::from_ref(d), &loaded.sources);
            if i >= before {
                found.push((text.clone(), d.is_error()));
            }
            add(text, d.is_error(), i >= before, c.number);
        }
        if let Some(key) = data_key {
            data_seen.push((key, found));
        }
        let mut extra = Vec::new();
        if let Some(r) = &loaded.recipe {
            if !metric.measured_by(r) {
                extra.push(
                    Diagnostic::error(
                        "downstream",
                        format!(
                            "the sweep sorts by `{}`, but the recipe has no `{}` task on its \
                             own data",
                            metric.name(),
                            metric.task
                        ),
                    )
                    .with_help(format!(
                        "add `{{task: {}}}` to `downstream`, or choose another `--metric`",
                        metric.task
                    )),
                );
            }
            let t = crate::runtime::threads(r.train.threads, 1);
            match threads {
                None => threads = Some((t, c.number)),
                Some((t0, n0)) if t0 != t => extra.push(
                    Diagnostic::error(
                        "train.threads",
                        format!(
                            "this combination trains on {t} threads and combination {n0} on \
                             {t0}; a sweep runs every combination in one process, with one \
                             thread pool"
                        ),
                    )
                    .with_help("sweep `train.threads` with separate `recipe sweep` commands"),
                ),
                Some(_) => {}
            }
        }
        for d in &extra {
            add(
                render_human(std::slice::from_ref(d), &loaded.sources),
                true,
                false,
                c.number,
            );
        }
        if extra.is_empty()
            && let Some(r) = loaded.valid_recipe()
        {
            recipes.push(r.clone());
        }
    }
    let all = combos.len();
    let mut report = String::new();
    for (text, _, _, ns) in &groups {
        let head = if ns.len() == all && all > 1 {
            "every combination:".to_string()
        } else if let [n] = ns.as_slice() {
            let label = combos
                .iter()
                .find(|c| c.number == *n)
                .map_or("", |c| c.label.as_str());
            format!("combination {n} of {all} ({label}):")
        } else {
            let list: Vec<String> = ns.iter().map(usize::to_string).collect();
            format!("combinations {} of {all}:", list.join(", "))
        };
        report.push_str(&head);
        report.push('\n');
        report.push_str(text);
    }
    let errors = groups.iter().filter(|g| g.1).count();
    let data_errors = groups.iter().filter(|g| g.1 && g.2).count();
    Ok(Validation {
        recipes: (errors == 0 && recipes.len() == combos.len()).then_some(recipes),
        report,
        errors,
        data_errors,
    })
}

/// The sweep directory: `<parent>/<name>-sweep-<8 hex digits>`, the digits from the
/// grid (paths and values as typed) and the resolved recipes of every combination in
/// order, so the same sweep (same recipe, `--set`s, grid and sample) finds the same
/// directory and any change makes a new one.
pub fn sweep_dir(parent: &Path, name: &str, axes: &[grid::Axis], recipes: &[Recipe]) -> PathBuf {
    let mut h = Sha256::new();
    // The grid as typed names the run directories, so it is part of the identity.
    for a in axes {
        h.update(a.path.as_bytes());
        for t in a.texts() {
            h.update(b"\0");
            h.update(t.as_bytes());
        }
        h.update(b"\n");
    }
    for r in recipes {
        h.update(crate::experiment::recipe_hash(r).as_bytes());
        h.update(b"\n");
    }
    let digest = h.finalize();
    let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    parent.join(format!("{name}-sweep-{hex}"))
}

/// `sweep.json`: the recipe, the `--set`s, the grid, the sample, the metric and each
/// combination with its values, overrides and run directory.
pub fn definition(req: &SweepRequest) -> Value {
    json!({
        "recipe": req.recipe_path.display().to_string(),
        "sets": req.sets,
        "grid": req.axes.iter().map(|a| json!({"path": a.path, "values": a.texts()})).collect::<Vec<_>>(),
        "random": req.random.map(|(n, seed)| json!({"n": n, "seed": seed})),
        "metric": req.metric.name(),
        "command": req.command,
        "combinations": req.combinations.iter().map(|(c, _)| {
            let values: serde_json::Map<String, Value> = req.axes.iter().zip(&c.choice)
                .map(|(a, &v)| (a.path.clone(), Value::String(a.values[v].value.1.clone())))
                .collect();
            json!({
                "number": c.number,
                "values": values,
                "overrides": c.overrides.iter().map(Override::as_set).collect::<Vec<_>>(),
                "dir": c.dir_name,
            })
        }).collect::<Vec<_>>(),
    })
}
