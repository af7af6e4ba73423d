//! `recipe run` and `recipe eval` as library calls: the whole experiment a recipe
//! describes — run directory, data, training loop, downstream tasks with their
//! baselines, pictures, `results.json` and `report.md`.
//!
//! This module sits above [`train`](crate::train), [`eval`](crate::eval) and
//! [`report`](crate::report) and is the only one that knows all three; the CLI is a
//! thin adapter over [`run`] and [`evaluate`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::augment::Normalize;
use crate::checkpoint::{self, CheckpointError};
use crate::data::{self, DataError, Dataset, Loader, LoaderConfig};
use crate::dist::{self, Dist};
use crate::eval::downstream::{DownstreamError, Encoders, Task as DTask, run_all};
use crate::eval::features::extract;
use crate::eval::knn::{KnnTask, knn};
use crate::nn::EngineDevice;
use crate::nn::device::OnDevice;
use crate::nn::model::Model;
use crate::nn::params::ParamStore;
use crate::report::ReportError;
use crate::report::markdown::{ReportInput, write_report};
use crate::report::metrics::MetricsWriter;
use crate::runtime;
use crate::spec::Recipe;
use crate::spec::downstream::Task;
use crate::train::TrainError;
use crate::train::resume::{self, Change, Invocation};
use crate::train::run::{LoopConfig, Progress, train_loop};
use crate::train::rundir;
use crate::train::step::Trainer;

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

fn recipe_err(e: impl std::fmt::Display) -> ExperimentError {
    ExperimentError::Recipe(e.to_string())
}

fn files_err(e: impl std::fmt::Display) -> ExperimentError {
    ExperimentError::Files(e.to_string())
}

fn usage_err(e: impl std::fmt::Display) -> ExperimentError {
    ExperimentError::Usage(e.to_string())
}

fn env_err(e: impl std::fmt::Display) -> ExperimentError {
    ExperimentError::Environment(e.to_string())
}

fn plain_data(source: DataError) -> ExperimentError {
    ExperimentError::Data {
        context: "",
        source,
    }
}

fn data_err(source: DataError) -> ExperimentError {
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
        Some(n) => Normalize {
            mean: n.mean.iter().map(|&x| x as f32).collect(),
            std: n.std.iter().map(|&x| x as f32).collect(),
        },
        None => Normalize {
            mean: vec![0.0; r.data.channels],
            std: vec![1.0; r.data.channels],
        },
    }
}

/// Runs the experiment `req` describes, on the device its `train.device` resolves to.
pub fn run(req: &RunRequest) -> Result<RunOutcome, ExperimentError> {
    let (device, note) =
        crate::build::device(req.recipe.train.device, req.recipe.seed).map_err(env_err)?;
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    struct Run<'a>(&'a RunRequest, &'static str);
    impl OnDevice for Run<'_> {
        type Output = Result<RunOutcome, ExperimentError>;
        fn run<D: EngineDevice>(self, dev: D) -> Self::Output {
            run_on(self.0, dev, self.1)
        }
    }
    let name = device.name();
    device.dispatch(Run(req, name))
}

fn run_on<D: EngineDevice>(
    req: &RunRequest,
    dev: D,
    device_name: &str,
) -> Result<RunOutcome, ExperimentError> {
    let r = &req.recipe;
    let started = Instant::now();
    let dist = req.dist.clone();
    let (rank, world) = (dist.rank(), dist.world());
    let writer = rank == 0;
    if world > 1 {
        dist::shard_range(r.train.batch_size, rank, world).map_err(recipe_err)?;
    }
    let threads =
        runtime::configure_threads(runtime::threads(r.train.threads, world)).map_err(env_err)?;
    let text = resolved_text(r);
    let hash = recipe_hash(r);
    // Changes `--force` lets through; applied once the checkpoint has loaded.
    let mut forced: Vec<Change> = Vec::new();
    let dir = match &req.resume {
        Some(dir) => {
            forced = check_resume(dir, r, req.force)?;
            if forced.is_empty() && dir.join("results.json").is_file() {
                return Err(usage_err(format!(
                    "`{d}` has finished ({} epochs) and its results are written. To train \
                     longer: `recipe run --resume {d} --set train.epochs=N --force`; to rerun \
                     its downstream tasks: `recipe eval {d}`",
                    r.train.epochs,
                    d = dir.display()
                )));
            }
            if writer {
                resume::world_size_note(dir, world, true, r.train.sync_batch_norm)
                    .map_err(ExperimentError::Files)?;
            }
            dir.clone()
        }
        // Only rank 0 creates (and names) the run directory; the others never write.
        None if writer => {
            let parent = req
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from(&r.output.dir));
            let dir = rundir::create(&parent, &r.name, &text).map_err(ExperimentError::Files)?;
            if world > 1 {
                resume::world_size_note(&dir, world, false, r.train.sync_batch_norm)
                    .map_err(ExperimentError::Files)?;
            }
            dir
        }
        None => PathBuf::new(),
    };
    let loaded = data::load(&crate::build::data::config(&r.data, r.seed)).map_err(data_err)?;
    let train = Arc::new(loaded.train);
    let test = loaded.test;
    if train.len() < r.train.batch_size {
        return Err(recipe_err(format!(
            "the training set has {} images, fewer than one batch of {} (train.batch_size)",
            train.len(),
            r.train.batch_size
        )));
    }
    let chain = crate::build::augment::chain(&r.augment, &r.data).map_err(recipe_err)?;
    let loader = Loader::new(
        train.clone(),
        Arc::new(chain),
        LoaderConfig {
            batch_size: r.train.batch_size,
            shuffle: true,
            // Every step sees a full batch (MoCo's queue and the BN statistics want it).
            drop_last: true,
            seed: r.seed,
            threads,
            prefetch: r.train.prefetch,
        },
    )
    .map_err(plain_data)?
    .sharded(rank, world)
    .map_err(plain_data)?;
    let parts = crate::build::trainer_parts(r, train.len(), loader.batches_per_epoch() as u64)?;
    let mut trainer = Trainer::from_parts(dev, &parts)?;
    trainer.set_collective(dist.clone(), r.train.sync_batch_norm)?;
    if world > 1 && writer && req.progress != Progress::Quiet {
        eprintln!(
            "data-parallel over {} ({} images per rank per step, {} threads each{})",
            dist.describe(),
            r.train.batch_size / world,
            threads,
            if r.train.sync_batch_norm {
                ", synchronised batch norm"
            } else {
                ""
            }
        );
    }
    let ckpt = dir.join(rundir::CHECKPOINTS).join(rundir::LAST);
    let resumed = match &req.resume {
        Some(_) if ckpt.exists() => {
            // Every rank reads the same checkpoint (the run directory must be on a
            // file system they share), then the digests confirm they agree.
            let meta = trainer.load(&ckpt)?;
            trainer.check_ranks_agree()?;
            if meta.recipe_hash != hash && forced.is_empty() && !req.force {
                return Err(usage_err(format!(
                    "`{}` was written by a recipe other than the run's {} (an earlier \
                     change may have been cut short); pass --force to continue with {} as \
                     it is",
                    ckpt.display(),
                    rundir::RECIPE_FILE,
                    rundir::RECIPE_FILE
                )));
            }
            Some(meta)
        }
        Some(_) => None,
        None => None,
    };
    // Where a forced change put the previous recipe (for the hint if training fails).
    let mut archived_at: Option<PathBuf> = None;
    if writer {
        let start_step = resumed.as_ref().map_or(0, |m| m.step);
        let mut archived = None;
        if !forced.is_empty() {
            // The old recipe's last learning rate, for the warning (it may no longer
            // load; then the warning omits it).
            let old_lr = crate::spec::Loader::new()
                .load_file(&dir.join(rundir::RECIPE_FILE), &[])
                .ok()
                .and_then(|l| l.valid_recipe().cloned())
                .and_then(|old| {
                    lr_at(
                        &old,
                        train.len(),
                        loader.batches_per_epoch() as u64,
                        start_step.checked_sub(1)?,
                    )
                });
            let rel = resume::archive(&dir, start_step).map_err(files_err)?;
            rundir::write_text(&dir.join(rundir::RECIPE_FILE), &text)
                .map_err(ExperimentError::Files)?;
            if let Some(m) = &resumed {
                // Stamped with the recipe now in force, so a plain `--resume` works.
                trainer.save(
                    &ckpt,
                    &checkpoint::CheckpointMeta {
                        recipe_hash: hash.clone(),
                        ..m.clone()
                    },
                )?;
            }
            let mut msg = format!(
                "warning: `{}` continues from step {start_step} (epoch {}) with a changed recipe \
                 (--force):",
                dir.display(),
                resumed.as_ref().map_or(0, |m| m.epoch)
            );
            for c in &forced {
                msg.push_str(&format!("\n  {c}"));
            }
            let new_lr = trainer.schedule.lr(start_step);
            msg.push_str(&match old_lr {
                Some(o) => format!(
                    "\n  learning rate: {o:.6} at step {start_step} under the old recipe, \
                     {new_lr:.6} at step {} under the new one (the schedule is a function of \
                     the step and the run's length, so it continues as if this recipe had been \
                     planned from the start; warmup is not repeated)",
                    start_step + 1
                ),
                None => format!(
                    "\n  learning rate at step {}: {new_lr:.6} (the new recipe's schedule at \
                     this step)",
                    start_step + 1
                ),
            });
            msg.push_str(&format!(
                "\n  the previous recipe and outputs are kept in {}; the change is recorded in {}",
                dir.join(&rel).display(),
                resume::INVOCATIONS
            ));
            eprintln!("{msg}");
            archived_at = Some(dir.join(&rel));
            archived = Some(rel);
        }
        resume::record(
            &dir,
            &Invocation {
                command: req.command.clone(),
                recipe_file: req.recipe_path.as_ref().map(|p| p.display().to_string()),
                overrides: req.overrides.clone(),
                start_step,
                changes: forced.clone(),
                archived,
            },
        )
        .map_err(ExperimentError::Files)?;
    }
    let mut metrics = match &resumed {
        _ if !writer => None,
        Some(m) => Some(MetricsWriter::resume(&dir, &[], m.step)?.0),
        None => Some(MetricsWriter::create(&dir, &[])?),
    };
    let norm = normalization(r);
    // kNN during training, every `every_epochs` epochs, on the test split.
    let tasks = crate::build::downstream(r).map_err(recipe_err)?;
    // kNN during training, every `every_epochs` epochs, on the test split.
    let periodic: Vec<&KnnTask> = tasks
        .iter()
        .filter_map(|t| match t {
            DTask::Knn(k) if k.every_epochs > 0 => Some(k),
            DTask::Knn(_) | DTask::LinearProbe(_) | DTask::FineTune(_) | DTask::Visualize(_) => {
                None
            }
        })
        .collect();
    let eval_batch = r.train.batch_size.max(64);
    let test_ref = test.as_ref();
    let train_ref: &Dataset = &train;
    let mut on_epoch =
        |t: &mut Trainer<D>, epoch: usize| -> Result<Vec<(String, f64)>, TrainError> {
            let mut out = Vec::new();
            // Evaluation runs once, on rank 0.
            let (true, Some(test)) = (writer, test_ref) else {
                return Ok(out);
            };
            for task in &periodic {
                if !epoch.is_multiple_of(task.every_epochs) {
                    continue;
                }
                let model = t.encoder.model().clone();
                let other = |e: crate::eval::EvalError| TrainError::Other(e.to_string());
                let w = task.features;
                let a = extract(&model, &mut t.store, train_ref, &norm, w, eval_batch)
                    .map_err(other)?;
                let b = extract(&model, &mut t.store, test, &norm, w, eval_batch).map_err(other)?;
                let res = knn(&a, &b, &task.cfg).map_err(other)?;
                out.push(("knn_top1".to_string(), res.top1));
                out.push(("knn_top5".to_string(), res.top5));
            }
            Ok(out)
        };
    let mut cfg = LoopConfig {
        epochs: r.train.epochs,
        log_every: r.train.log_every,
        checkpoint_every: r.train.checkpoint_every,
        recipe_hash: hash.clone(),
        progress: if writer {
            req.progress
        } else {
            Progress::Quiet
        },
        stop_after_steps: req.stop_after_steps,
        on_epoch: &mut on_epoch,
    };
    let summary = match train_loop(
        &mut trainer,
        &loader,
        &dir,
        metrics.as_mut(),
        resumed.as_ref(),
        &mut cfg,
    ) {
        Ok(s) => s,
        // The changed recipe is in force now; say how to return to the previous one.
        Err(e @ TrainError::Diverged { .. }) if archived_at.is_some() => {
            let prev = archived_at
                .as_ref()
                .map(|p| p.join(rundir::RECIPE_FILE))
                .unwrap_or_default();
            return Err(recipe_err(format!(
                "{e}\nhelp: the run's recipe.yaml is the changed recipe now; to continue with \
                 the previous one: recipe run {} --resume {} --force",
                resume::shell_line(&[prev.display().to_string()]),
                resume::shell_line(&[dir.display().to_string()])
            )));
        }
        Err(e) => return Err(e.into()),
    };
    if summary.interrupted {
        return Ok(RunOutcome::Interrupted {
            dir,
            step: summary.steps,
        });
    }
    if !writer {
        // The downstream tasks run once, on rank 0; wait for it without spinning.
        dist.wait_for_all();
        return Ok(RunOutcome::Finished {
            dir,
            results: Value::Null,
        });
    }
    let Some(mut metrics) = metrics else {
        return Err(recipe_err("rank 0 has no metrics writer"));
    };
    let model = trainer.encoder.model().clone();
    // torchvision's names and shapes minus `fc` (for ResNets; the small CNN's follow
    // an `nn.Sequential` named `features`).
    let names = model.backbone_entry_names(&trainer.store);
    checkpoint::export_named(&dir.join("backbone.safetensors"), &trainer.store, &names)?;
    let eval_started = Instant::now();
    let untrained = crate::build::model(r, model.input.1).map_err(recipe_err)?;
    let mut enc = Encoders::new(
        &model,
        &mut trainer.store,
        &untrained,
        r.seed,
        &train,
        test.as_ref(),
        &norm,
        &dir,
        eval_batch,
    )?;
    let results = run_all(
        &tasks,
        &mut enc,
        &mut metrics,
        r.train.epochs as u64,
        trainer.step,
    )?;
    let eval_secs = eval_started.elapsed().as_secs_f64();
    let curves = if crate::build::wants_curves(r) {
        crate::report::curves::training_curves(&dir)?
    } else {
        Vec::new()
    };
    let mut figures = results.figures.clone();
    figures.extend(curves);
    let total = started.elapsed().as_secs_f64();
    let invocations = resume::read(&dir);
    let made = resume::provenance(&invocations);
    let doc = json!({
        "name": r.name,
        "method": r.loss.method(),
        "recipe": made.recipe_file,
        "overrides": made.overrides,
        "run_dir": dir.display().to_string(),
        "training": {
            "epochs": summary.epochs_done,
            "steps": summary.steps,
            "seconds": summary.train_seconds,
            "images": summary.images,
            "images_per_s": summary.images_per_s,
            "final_epoch_loss": summary.last_epoch_loss,
            "threads": threads,
            "device": device_name,
            "resumed": resumed.is_some(),
            "this_invocation": {
                "steps": summary.session_steps,
                "seconds": summary.session_seconds,
                "images_per_s": summary.session_images_per_s,
            },
        },
        "downstream": results.json,
        "seconds": {"training": summary.train_seconds, "evaluation": eval_secs,
            "this_invocation": total},
        "peak_rss_mib": runtime::peak_rss_mib(),
        "invocations": invocations,
    });
    rundir::write_text(
        &dir.join("results.json"),
        &(serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"),
    )
    .map_err(ExperimentError::Files)?;
    write_report(
        &dir.join("report.md"),
        &ReportInput {
            run_name: r.name.clone(),
            method: r.loss.method().to_string(),
            recipe_path: made.recipe_file.clone(),
            overrides: made.overrides.clone(),
            history: made.lines.clone(),
            timings: vec![
                (
                    format!(
                        "training ({} epochs, {} steps{})",
                        summary.epochs_done,
                        summary.steps,
                        if invocations.len() > 1 {
                            format!(", over {} invocations", invocations.len())
                        } else {
                            String::new()
                        }
                    ),
                    summary.train_seconds,
                ),
                ("downstream tasks".into(), eval_secs),
                ("this invocation in all".into(), total),
            ],
            images_per_s: Some(summary.images_per_s),
            final_loss: Some(summary.last_epoch_loss),
            metrics: results.table.clone(),
            notes: results.notes.clone(),
            figures,
        },
    )?;
    dist.wait_for_all();
    Ok(RunOutcome::Finished { dir, results: doc })
}

/// The changes between `dir`'s recipe in force and `r`: refused unless `force`.
fn check_resume(dir: &Path, r: &Recipe, force: bool) -> Result<Vec<Change>, ExperimentError> {
    let old = resume::read_recipe_value(dir).map_err(files_err)?;
    let new = serde_json::to_value(r).map_err(recipe_err)?;
    let changes = resume::changes(&old, &new);
    if !changes.is_empty() && !force {
        return Err(ExperimentError::Changed {
            dir: dir.to_path_buf(),
            changes,
        });
    }
    Ok(changes)
}

/// The learning rate `r`'s schedule gives step `step` of a run with `dataset_len`
/// images and `steps_per_epoch` steps per epoch.
fn lr_at(r: &Recipe, dataset_len: usize, steps_per_epoch: u64, step: u64) -> Option<f64> {
    let p = crate::build::trainer_parts(r, dataset_len, steps_per_epoch).ok()?;
    let s =
        crate::optim::schedule::Schedule::new(&p.schedule, p.peak_lr, p.epochs, steps_per_epoch)
            .ok()?;
    Some(s.lr(step))
}

/// `recipe eval`: the downstream tasks (all, or those in `only`) on a saved model —
/// a run directory (its `checkpoints/last.safetensors`) or a checkpoint file inside
/// one — writing pictures and `eval.json` into the run directory.
///
/// `sets` are `--set` overrides of the run's recipe; only `downstream` may change
/// (training is over). Task names are checked before anything runs: an unknown name
/// is an error with a suggestion, a task the recipe lacks an error that says how to
/// add it. `eval.json` keeps earlier results: an entry is replaced only by a new
/// result for the same task configuration.
pub fn evaluate(
    target: &Path,
    only: Option<&[String]>,
    sets: &[String],
) -> Result<Value, ExperimentError> {
    for name in only.unwrap_or_default() {
        if !Task::NAMES.contains(&name.as_str()) {
            let hint = crate::diag::did_you_mean(name, Task::NAMES)
                .map(|m| format!("did you mean `{m}`? "))
                .unwrap_or_default();
            return Err(usage_err(format!(
                "unknown task `{name}`\nhelp: {hint}the tasks are {}",
                Task::NAMES.join(", ")
            )));
        }
    }
    for set in sets {
        let path = set.split_once('=').map_or(set.as_str(), |(p, _)| p).trim();
        if path != "downstream" && !path.starts_with("downstream.") {
            return Err(usage_err(format!(
                "`--set {set}`: `recipe eval` can change only `downstream` (the model is \
                 trained); to change training, continue the run with `recipe run --resume`"
            )));
        }
    }
    let (dir, ckpt) = if target.is_dir() {
        (
            target.to_path_buf(),
            target.join(rundir::CHECKPOINTS).join(rundir::LAST),
        )
    } else {
        let dir = target.parent().and_then(Path::parent).ok_or_else(|| {
            usage_err(format!(
                "`{}` is not inside a run directory",
                target.display()
            ))
        })?;
        (dir.to_path_buf(), target.to_path_buf())
    };
    if !dir.join(rundir::RECIPE_FILE).is_file() {
        return Err(usage_err(format!(
            "`{}` is not a run directory (it has no {})",
            dir.display(),
            rundir::RECIPE_FILE
        )));
    }
    let loaded = crate::spec::Loader::new()
        .load_file(&dir.join(rundir::RECIPE_FILE), sets)
        .map_err(files_err)?;
    let Some(r) = loaded.valid_recipe().cloned() else {
        return Err(recipe_err(format!(
            "the run's recipe{} is not valid:\n{}",
            if sets.is_empty() {
                ""
            } else {
                " with these overrides"
            },
            crate::diag::render_human(&loaded.diagnostics, &loaded.sources).trim_end()
        )));
    };
    let present: Vec<&str> = r.downstream.iter().map(Task::name).collect();
    for name in only.unwrap_or_default() {
        if !present.contains(&name.as_str()) {
            let d = resume::shell_line(&[dir.display().to_string()]);
            return Err(usage_err(format!(
                "this run's recipe has no `{name}` task (it has: {})\nhelp: to evaluate it \
                 with the task's defaults (`recipe render` shows them): recipe eval {d} --task \
                 {name} --set 'downstream=[{{task: {name}}}]'",
                if present.is_empty() {
                    "none".to_string()
                } else {
                    present.join(", ")
                }
            )));
        }
    }
    if r.downstream.is_empty() {
        return Err(usage_err(format!(
            "this run's recipe has no downstream tasks; add some with --set, e.g. \
             recipe eval {} --set 'downstream=[{{task: knn}}]'",
            resume::shell_line(&[dir.display().to_string()])
        )));
    }
    runtime::configure_threads(runtime::threads(r.train.threads, runtime::launcher_ranks()))
        .map_err(env_err)?;
    let size = crate::build::view_sizes(&r)
        .first()
        .map_or(r.data.image_size, |(s, _)| *s);
    let (device, note) = crate::build::device(r.train.device, r.seed).map_err(env_err)?;
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    struct Evaluate<'a>(
        &'a Recipe,
        usize,
        &'a Path,
        &'a Path,
        Option<&'a [String]>,
        &'a [String],
    );
    impl OnDevice for Evaluate<'_> {
        type Output = Result<Value, ExperimentError>;
        fn run<D: EngineDevice>(self, dev: D) -> Self::Output {
            let Evaluate(r, size, dir, ckpt, only, sets) = self;
            evaluate_on(dev, r, size, dir, ckpt, only, sets)
        }
    }
    device.dispatch(Evaluate(&r, size, &dir, &ckpt, only, sets))
}

fn evaluate_on<D: EngineDevice>(
    dev: D,
    r: &Recipe,
    size: usize,
    dir: &Path,
    ckpt: &Path,
    only: Option<&[String]>,
    sets: &[String],
) -> Result<Value, ExperimentError> {
    let data = data::load(&crate::build::data::config(&r.data, r.seed)).map_err(data_err)?;
    let mut store = ParamStore::new(dev);
    let model = Model::new(
        &mut store,
        &crate::build::model(r, size).map_err(recipe_err)?,
        r.seed,
    )
    .map_err(recipe_err)?;
    checkpoint::load_training(ckpt, &mut store, None, None, None)?;
    let norm = normalization(r);
    let mut metrics = MetricsWriter::resume(dir, &[], u64::MAX)?.0;
    let meta = checkpoint::read_meta(ckpt)?;
    // The recipe's tasks (or the named ones), with the recipe form of each for the
    // merge key of `eval.json`.
    let keep = |name: &str| only.is_none_or(|names| names.iter().any(|n| n == name));
    let ran: Vec<&Task> = r.downstream.iter().filter(|t| keep(t.name())).collect();
    let tasks: Vec<DTask> = crate::build::downstream(r)
        .map_err(recipe_err)?
        .into_iter()
        .filter(|t| keep(t.name()))
        .collect();
    let untrained = crate::build::model(r, model.input.1).map_err(recipe_err)?;
    let mut enc = Encoders::new(
        &model,
        &mut store,
        &untrained,
        r.seed,
        &data.train,
        data.test.as_ref(),
        &norm,
        dir,
        r.train.batch_size.max(64),
    )?;
    let res = run_all(
        &tasks,
        &mut enc,
        &mut metrics,
        r.train.epochs as u64,
        meta.step,
    )?;
    let when = rundir::timestamp(std::time::SystemTime::now());
    let fresh: Vec<Value> = res
        .json
        .iter()
        .zip(&ran)
        .map(|(entry, task)| {
            let mut e = entry.clone();
            e["config"] = serde_json::to_value(task).unwrap_or(Value::Null);
            e["checkpoint"] = json!(ckpt.display().to_string());
            e["step"] = json!(meta.step);
            e["time"] = json!(when);
            if !sets.is_empty() {
                e["overrides"] = json!(sets);
            }
            e
        })
        .collect();
    let path = dir.join("eval.json");
    let earlier: Vec<Value> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v.get("downstream").and_then(Value::as_array).cloned())
        .unwrap_or_default();
    let merged = merge_evaluations(earlier, &fresh);
    let doc = json!({"downstream": merged});
    rundir::write_text(
        &path,
        &(serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"),
    )
    .map_err(ExperimentError::Files)?;
    Ok(
        json!({"checkpoint": ckpt.display().to_string(), "step": meta.step,
        "downstream": fresh}),
    )
}

/// `earlier` entries of `eval.json` with `fresh` ones merged in: a fresh entry
/// replaces an earlier one with the same task configuration and checkpoint, and is
/// appended otherwise. Earlier entries without a configuration (older files) are kept.
pub fn merge_evaluations(mut earlier: Vec<Value>, fresh: &[Value]) -> Vec<Value> {
    for f in fresh {
        let same = |e: &Value| {
            e.get("config").is_some()
                && e.get("config") == f.get("config")
                && e.get("checkpoint") == f.get("checkpoint")
        };
        match earlier.iter().position(same) {
            Some(i) => earlier[i] = f.clone(),
            None => earlier.push(f.clone()),
        }
    }
    earlier
}
