//! `recipe run` and `recipe eval` as library calls: the whole experiment a recipe
//! describes — run directory, data, training loop, downstream tasks with their
//! baselines, pictures, `results.json` and `report.md`.
//!
//! This module sits above [`train`](crate::train), [`eval`](crate::eval) and
//! [`report`](crate::report) and is the only one that knows all three; the CLI is a
//! thin adapter over [`run`] and [`evaluate`]. `run.rs` holds `recipe run`, `eval.rs`
//! `recipe eval`; this file the request and outcome types, the typed error and the
//! recipe helpers both use.

use std::path::PathBuf;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::augment::Normalize;
use crate::checkpoint::CheckpointError;
use crate::data::DataError;
use crate::dist::Dist;
use crate::eval::downstream::DownstreamError;
use crate::report::ReportError;
use crate::spec::Recipe;
use crate::train::TrainError;
use crate::train::fit::Progress;
use crate::train::resume::Change;
use crate::train::rundir;

mod eval;
mod run;

pub use eval::{evaluate, merge_evaluations};
pub use run::run;

/// What went wrong, by layer and cause; [`ExperimentError::exit_code`] derives the
/// CLI's exit code from the variant (2: usage, files, data, device; 1: the recipe or
/// the run).
#[derive(Debug)]
pub enum ExperimentError {
    /// The data cannot be read or batched.
    Data {
        /// What was being done (`"cannot read the data: "`, or empty).
        context: &'static str,
        /// The data layer's error.
        source: DataError,
    },
    /// A file or folder of the run directory cannot be read or written.
    Files(String),
    /// The metrics files, a picture or the report cannot be written.
    Report(ReportError),
    /// A checkpoint cannot be read, written or applied.
    Checkpoint(CheckpointError),
    /// The device or the thread pool cannot be set up.
    Environment(String),
    /// The command does not apply as given (a finished run, an unknown task, …).
    Usage(String),
    /// The recipe cannot run as written: shapes, sizes, a model that does not build.
    Recipe(String),
    /// Training stopped: a diverging loss, a step that failed.
    Train(TrainError),
    /// A downstream task failed.
    Downstream(DownstreamError),
    /// `--resume` with a recipe that differs from the run's, without `--force`.
    Changed {
        /// The run directory.
        dir: PathBuf,
        /// Every differing key with its old and new value.
        changes: Vec<Change>,
    },
}

impl ExperimentError {
    /// The exit code the README promises: 2 for usage, I/O, data and device problems,
    /// 1 for a recipe that cannot run or a run that failed.
    pub fn exit_code(&self) -> u8 {
        match self {
            ExperimentError::Data { .. }
            | ExperimentError::Files(_)
            | ExperimentError::Report(_)
            | ExperimentError::Checkpoint(_)
            | ExperimentError::Environment(_)
            | ExperimentError::Usage(_) => 2,
            ExperimentError::Recipe(_)
            | ExperimentError::Train(_)
            | ExperimentError::Changed { .. } => 1,
            ExperimentError::Downstream(d) => match d {
                DownstreamError::NoTestSplit(_)
                | DownstreamError::Report(_)
                | DownstreamError::Views(_) => 2,
                DownstreamError::Eval(_) => 1,
            },
        }
    }
}

impl std::fmt::Display for ExperimentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExperimentError::Data { context, source } => write!(f, "{context}{source}"),
            ExperimentError::Files(m)
            | ExperimentError::Environment(m)
            | ExperimentError::Usage(m)
            | ExperimentError::Recipe(m) => f.write_str(m),
            ExperimentError::Report(e) => write!(f, "{e}"),
            ExperimentError::Checkpoint(e) => write!(f, "{e}"),
            ExperimentError::Train(e) => write!(f, "{e}"),
            ExperimentError::Downstream(e) => write!(f, "{e}"),
            ExperimentError::Changed { dir, changes } => {
                write!(
                    f,
                    "the recipe differs from the one in force in `{}` ({}):",
                    dir.display(),
                    rundir::RECIPE_FILE
                )?;
                for c in changes {
                    write!(f, "\n  {c}")?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ExperimentError {}

impl From<TrainError> for ExperimentError {
    fn from(e: TrainError) -> Self {
        match e {
            TrainError::Data(source) => ExperimentError::Data {
                context: "",
                source,
            },
            TrainError::Checkpoint(c) => ExperimentError::Checkpoint(c),
            other => ExperimentError::Train(other),
        }
    }
}

impl From<DownstreamError> for ExperimentError {
    fn from(e: DownstreamError) -> Self {
        ExperimentError::Downstream(e)
    }
}

impl From<ReportError> for ExperimentError {
    fn from(e: ReportError) -> Self {
        ExperimentError::Report(e)
    }
}

impl From<CheckpointError> for ExperimentError {
    fn from(e: CheckpointError) -> Self {
        ExperimentError::Checkpoint(e)
    }
}

pub(super) fn recipe_err(e: impl std::fmt::Display) -> ExperimentError {
    ExperimentError::Recipe(e.to_string())
}

pub(super) fn files_err(e: impl std::fmt::Display) -> ExperimentError {
    ExperimentError::Files(e.to_string())
}

pub(super) fn usage_err(e: impl std::fmt::Display) -> ExperimentError {
    ExperimentError::Usage(e.to_string())
}

pub(super) fn env_err(e: impl std::fmt::Display) -> ExperimentError {
    ExperimentError::Environment(e.to_string())
}

pub(super) fn plain_data(source: DataError) -> ExperimentError {
    ExperimentError::Data {
        context: "",
        source,
    }
}

pub(super) fn data_err(source: DataError) -> ExperimentError {
    ExperimentError::Data {
        context: "cannot read the data: ",
        source,
    }
}

/// A `recipe run` request.
#[derive(Clone, Debug)]
pub struct RunRequest {
    /// The valid, resolved recipe.
    pub recipe: Recipe,
    /// The recipe file, as the user named it (for the report; `None` when a resumed
    /// run reads its own `recipe.yaml`).
    pub recipe_path: Option<PathBuf>,
    /// The `--set` overrides applied to it, in order (for the report).
    pub overrides: Vec<String>,
    /// The command line as typed (for `invocations.jsonl`).
    pub command: String,
    /// Parent of the run directory instead of `output.dir`.
    pub out: Option<PathBuf>,
    /// Create the run directory at exactly this path (which must not exist) instead of
    /// `<out>/<name>-<timestamp>`: `recipe sweep` names its combinations' directories.
    /// Ignored with `resume`.
    pub dir: Option<PathBuf>,
    /// Continue this run directory from its last checkpoint.
    pub resume: Option<PathBuf>,
    /// Resume even if the recipe changed.
    pub force: bool,
    /// Progress display.
    pub progress: Progress,
    /// Stop (as if interrupted) after this many steps.
    pub stop_after_steps: Option<u64>,
    /// The ranks of a data-parallel job ([`dist::solo`] for one process): rank 0 alone
    /// writes the run directory, metrics, checkpoints and runs the downstream tasks.
    pub dist: Dist,
}

/// How a run ended.
#[derive(Clone, Debug)]
pub enum RunOutcome {
    /// Training and the downstream tasks are done.
    Finished {
        /// The run directory.
        dir: PathBuf,
        /// `results.json`'s content.
        results: Value,
    },
    /// Stopped early; `last.safetensors` holds the state.
    Interrupted {
        /// The run directory.
        dir: PathBuf,
        /// Steps done.
        step: u64,
    },
}

/// The recipe as the run directory stores it: YAML of its JSON form (op lists as
/// plain one-key mappings), every default filled.
pub fn resolved_text(r: &Recipe) -> String {
    serde_json::to_value(r)
        .ok()
        .and_then(|v| serde_yaml::to_string(&v).ok())
        .unwrap_or_default()
}

/// SHA-256 of the recipe's canonical JSON.
pub fn recipe_hash(r: &Recipe) -> String {
    let text = serde_json::to_string(r).unwrap_or_default();
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The recipe's normalisation (identity when it has none).
pub fn normalization(r: &Recipe) -> Normalize {
    match &r.data.normalize {
        Some(n) => to_normalize(n),
        None => Normalize {
            mean: vec![0.0; r.data.channels],
            std: vec![1.0; r.data.channels],
        },
    }
}

/// A recipe's `normalize` section as the engine's [`Normalize`].
fn to_normalize(n: &crate::spec::data::Normalize) -> Normalize {
    Normalize {
        mean: n.mean.iter().map(|&x| x as f32).collect(),
        std: n.std.iter().map(|&x| x as f32).collect(),
    }
}

/// The downstream tasks' own datasets (transfer), loaded before any work so a missing
/// or broken file stops the run before training, not after it.
pub(crate) struct TaskDatasets {
    /// Per distinct `data` section: its label, its splits and its normalisation.
    sets: Vec<(
        String,
        crate::data::Dataset,
        Option<crate::data::Dataset>,
        Normalize,
    )>,
    /// Per task (recipe order): its section's index, `None` for the pretraining data.
    of_task: Vec<Option<usize>>,
}

impl TaskDatasets {
    /// Loads each distinct task `data` section of `r` ([`crate::build::task_data`]),
    /// at the section's shape, which `validate` requires to be the encoder's.
    /// Without its own `normalize`, a section uses the pretraining data's (the
    /// statistics the encoder was trained on).
    pub(crate) fn load(r: &Recipe) -> Result<Self, ExperimentError> {
        let (sections, of_task) = crate::build::task_data(r);
        let mut sets = Vec::with_capacity(sections.len());
        for (label, d) in sections {
            let loaded =
                crate::data::load(&crate::build::data::config(&d, r.seed)).map_err(|source| {
                    ExperimentError::Data {
                        context: "cannot read a downstream task's own data: ",
                        source,
                    }
                })?;
            let norm = d
                .normalize
                .as_ref()
                .map_or_else(|| normalization(r), to_normalize);
            sets.push((label, loaded.train, loaded.test, norm));
        }
        Ok(TaskDatasets { sets, of_task })
    }

    /// Each of `tasks` paired with the data it measures: its own, or `main`;
    /// `indices` are the tasks' positions in the recipe's `downstream`.
    pub(crate) fn pair<'a, 't, T>(
        &'a self,
        tasks: &'t [T],
        indices: &[usize],
        main: crate::eval::downstream::EvalData<'a>,
    ) -> Vec<(&'t T, crate::eval::downstream::EvalData<'a>)> {
        tasks
            .iter()
            .zip(indices)
            .map(|(t, &i)| {
                let data = match self.of_task.get(i).copied().flatten() {
                    Some(k) => {
                        let (label, train, test, norm) = &self.sets[k];
                        crate::eval::downstream::EvalData {
                            label: Some(label.as_str()),
                            train,
                            test: test.as_ref(),
                            norm,
                        }
                    }
                    None => main,
                };
                (t, data)
            })
            .collect()
    }
}
