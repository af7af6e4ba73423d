//! Running a sweep's combinations, one ordinary run directory each, and writing its
//! summary.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::grid::Axis;
use super::summary::{self, Metric, Row, RowStatus};
use super::{Combination, DEFINITION_FILE};
use crate::experiment::{self, ExperimentError, RunOutcome, RunRequest};
use crate::spec::Recipe;
use crate::train::fit::Progress;
use crate::train::{rundir, signal};

/// A validated sweep, ready to run.
#[derive(Clone, Debug)]
pub struct SweepRequest {
    /// The recipe file as the user named it.
    pub recipe_path: PathBuf,
    /// The sweep directory ([`super::sweep_dir`]).
    pub dir: PathBuf,
    /// The swept keys.
    pub axes: Vec<Axis>,
    /// The `--set`s every combination gets, as typed.
    pub sets: Vec<String>,
    /// `--random N --seed S`, if the combinations are a sample.
    pub random: Option<(usize, u64)>,
    /// Every combination with its valid recipe, in order.
    pub combinations: Vec<(Combination, Recipe)>,
    /// What the summary is sorted by.
    pub metric: Metric,
    /// The command line as typed (each run's `invocations.jsonl`, `sweep.json`).
    pub command: String,
    /// Progress display of each run.
    pub progress: Progress,
    /// Stop as if interrupted once this invocation's runs have trained this many steps
    /// in all (tests).
    pub stop_after_steps: Option<u64>,
}

/// How a sweep ended.
#[derive(Clone, Debug)]
pub struct SweepOutcome {
    /// Every combination, sorted by the metric ([`summary::sort`]).
    pub rows: Vec<Row>,
    /// The Markdown table of `rows`.
    pub table: String,
    /// The plots written.
    pub plots: Vec<PathBuf>,
    /// Combinations finished by this invocation.
    pub ran: usize,
    /// Combinations found finished and skipped.
    pub skipped: usize,
    /// Whether a stop was requested (Ctrl-C, SIGTERM or the step budget): the
    /// remaining combinations did not start.
    pub interrupted: bool,
}

impl SweepOutcome {
    /// Combinations finished, by this invocation or earlier.
    pub fn finished(&self) -> usize {
        self.rows
            .iter()
            .filter(|r| r.status == RowStatus::Finished)
            .count()
    }

    /// Combinations that failed in this invocation.
    pub fn failed(&self) -> Vec<&Row> {
        self.rows
            .iter()
            .filter(|r| r.status == RowStatus::Failed)
            .collect()
    }
}

/// What a combination's run directory holds.
#[derive(Clone, Debug, PartialEq, Eq)]
enum DirStatus {
    /// `results.json` is written: skip it.
    Finished,
    /// A checkpoint without results: resume it.
    Interrupted,
    /// Another live process is running it: leave it alone.
    Running(String),
    /// Nothing to continue from: start it.
    Fresh,
}

/// [`rundir::status`], as the sweep acts on it: a run that stopped with a checkpoint
/// (interrupted, or failed after one) is resumed; one that failed before any is
/// started again.
fn status(dir: &Path) -> DirStatus {
    let checkpoint = dir.join(rundir::CHECKPOINTS).join(rundir::LAST).is_file();
    if !dir.exists() {
        return DirStatus::Fresh;
    }
    match rundir::status(dir) {
        rundir::RunStatus::Finished => DirStatus::Finished,
        rundir::RunStatus::Running { pid, host } => {
            DirStatus::Running(format!("process {pid} on {host} is running it"))
        }
        rundir::RunStatus::Interrupted { .. } | rundir::RunStatus::Failed { .. } if checkpoint => {
            DirStatus::Interrupted
        }
        rundir::RunStatus::Interrupted { .. } | rundir::RunStatus::Failed { .. } => {
            DirStatus::Fresh
        }
    }
}

fn read_results(dir: &Path) -> Option<Value> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).ok()?).ok()
}

/// Runs every combination of `req` not finished yet, in order, through
/// [`experiment::run`]: a finished one is skipped, an interrupted one resumed, any
/// other started in its own directory (a leftover without a checkpoint is kept aside
/// as `<dir>.stale-<timestamp>`). A failed combination is reported and the next one
/// runs. A stop request (Ctrl-C) ends the sweep once the current run has saved its
/// state. Writes `sweep.json` first and the summary and plots last, also after a stop.
/// Errors only when the sweep directory or its summary cannot be written.
pub fn run(req: &SweepRequest) -> Result<SweepOutcome, ExperimentError> {
    let files = |e: String| ExperimentError::Files(e);
    std::fs::create_dir_all(&req.dir).map_err(|e| {
        files(format!(
            "cannot create the sweep directory `{}`: {e}",
            req.dir.display()
        ))
    })?;
    rundir::write_text(
        &req.dir.join(DEFINITION_FILE),
        &(serde_json::to_string_pretty(&super::definition(req)).unwrap_or_default() + "\n"),
    )
    .map_err(files)?;
    let total = req.combinations.len();
    let mut errors: Vec<Option<String>> = vec![None; total];
    let (mut ran, mut skipped, mut interrupted) = (0, 0, false);
    let mut budget = req.stop_after_steps;
    for (i, (c, recipe)) in req.combinations.iter().enumerate() {
        if signal::requested() || budget == Some(0) {
            interrupted = true;
            break;
        }
        let dir = req.dir.join(&c.dir_name);
        let head = format!("combination {}/{total} ({})", c.number, c.label);
        let (resume, base) = match status(&dir) {
            DirStatus::Finished => {
                eprintln!("{head}: finished earlier, skipped ({})", dir.display());
                skipped += 1;
                continue;
            }
            DirStatus::Running(why) => {
                eprintln!("{head}: not started: {why} ({})", dir.display());
                errors[i] = Some(why);
                continue;
            }
            DirStatus::Interrupted => {
                let ckpt = dir.join(rundir::CHECKPOINTS).join(rundir::LAST);
                let step = crate::checkpoint::read_meta(&ckpt).map_or(0, |m| m.step);
                eprintln!("{head}: resuming from step {step} in {}", dir.display());
                (Some(dir.clone()), step)
            }
            DirStatus::Fresh => {
                if dir.exists() {
                    let aside = req.dir.join(format!(
                        "{}.stale-{}",
                        c.dir_name,
                        rundir::timestamp(std::time::SystemTime::now())
                    ));
                    std::fs::rename(&dir, &aside).map_err(|e| {
                        files(format!("cannot move `{}` aside: {e}", dir.display()))
                    })?;
                    eprintln!(
                        "{head}: `{}` had no checkpoint; kept as `{}`",
                        dir.display(),
                        aside.display()
                    );
                }
                eprintln!("{head}: starting in {}", dir.display());
                (None, 0)
            }
        };
        let run_req = RunRequest {
            recipe: recipe.clone(),
            recipe_path: Some(req.recipe_path.clone()),
            overrides: c.overrides.iter().map(|o| o.as_set()).collect(),
            command: req.command.clone(),
            out: None,
            dir: resume.is_none().then(|| dir.clone()),
            resume,
            force: false,
            progress: req.progress,
            stop_after_steps: budget.map(|b| base + b),
            dist: crate::dist::solo(),
        };
        match experiment::run(&run_req) {
            Ok(RunOutcome::Finished { results, .. }) => {
                ran += 1;
                let steps = results["training"]["this_invocation"]["steps"]
                    .as_u64()
                    .unwrap_or(0);
                budget = budget.map(|b| b.saturating_sub(steps));
                let m = req
                    .metric
                    .value(&results)
                    .map_or_else(|| "not measured".into(), |v| format!("{v:.2}"));
                eprintln!("{head}: finished, {} {m}", req.metric.name());
            }
            Ok(RunOutcome::Interrupted { step, .. }) => {
                eprintln!("{head}: stopped at step {step}, its state saved");
                interrupted = true;
                break;
            }
            Err(e) => {
                eprintln!("{head}: failed: {e}");
                errors[i] = Some(e.to_string());
            }
        }
    }
    let mut rows: Vec<Row> = req
        .combinations
        .iter()
        .zip(errors)
        .map(|((c, _), error)| {
            let dir = req.dir.join(&c.dir_name);
            let results = read_results(&dir);
            let status = match (&results, &error, status(&dir)) {
                (Some(_), _, _) => RowStatus::Finished,
                (None, Some(_), _) => RowStatus::Failed,
                (None, None, DirStatus::Interrupted) => RowStatus::Interrupted,
                (None, None, _) => RowStatus::Pending,
            };
            Row {
                number: c.number,
                values: req
                    .axes
                    .iter()
                    .zip(&c.choice)
                    .map(|(a, &v)| a.values[v].value.1.clone())
                    .collect(),
                status,
                dir: c.dir_name.clone(),
                metric: results.as_ref().and_then(|r| req.metric.value(r)),
                others: results.as_ref().map(summary::headline).unwrap_or_default(),
                error,
            }
        })
        .collect();
    summary::sort(&mut rows);
    let paths: Vec<String> = req.axes.iter().map(|a| a.path.clone()).collect();
    let values: Vec<Vec<String>> = req
        .axes
        .iter()
        .map(|a| a.texts().into_iter().map(str::to_string).collect())
        .collect();
    let name = req
        .dir
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let table = summary::write(
        &req.dir,
        &format!("Sweep `{name}`"),
        &paths,
        &req.metric,
        &rows,
    )?;
    let plots = summary::plots(&req.dir, &paths, &values, &req.metric, &rows)?;
    Ok(SweepOutcome {
        rows,
        table,
        plots,
        ran,
        skipped,
        interrupted,
    })
}
