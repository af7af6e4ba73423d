//! `recipe run` and `recipe eval` as library calls: the whole experiment a recipe
//! describes — run directory, data, training loop, downstream tasks with their
//! baselines, pictures, `results.json` and `report.md`.
//!
//! This module sits above [`train`](crate::train), [`eval`](crate::eval) and
//! [`report`](crate::report) and is the only one that knows all three; the CLI is a
//! thin adapter over [`run`] and [`evaluate`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::augment::{self, Normalize};
use crate::checkpoint;
use crate::data::{self, Dataset, Loader, LoaderConfig};
use crate::dist::{self, Dist};
use crate::eval::features::{FeatureMatrix, Which, extract, raw_pixels};
use crate::eval::fine_tune::{FineTuneConfig, fine_tune};
use crate::eval::knn::{KnnConfig, Metric, knn, nearest};
use crate::eval::linear_probe::{ProbeConfig, linear_probe_select};
use crate::eval::pca::pca_2d;
use crate::nn::EngineDevice;
use crate::nn::device::OnDevice;
use crate::nn::model::Model;
use crate::nn::params::ParamStore;
use crate::report::markdown::{MetricsTable, ReportInput, write_report};
use crate::report::metrics::{Kind, MetricsWriter, Record, read_jsonl};
use crate::report::{grid, plots};
use crate::runtime;
use crate::spec::Recipe;
use crate::spec::downstream::{Features, Metric as SpecMetric, Plot, Task};
use crate::train::TrainError;
use crate::train::resume::{self, Change, Invocation};
use crate::train::run::{LoopConfig, Progress, train_loop};
use crate::train::rundir;
use crate::train::step::Trainer;

/// What went wrong, sorted by who can fix it.
#[derive(Debug)]
pub enum ExperimentError {
    /// Files, folders, data: exit code 2.
    Setup(String),
    /// The recipe cannot run as written (shapes, sizes, a diverging loss): exit code 1.
    Run(String),
    /// `--resume` with a recipe that differs from the run's, without `--force`:
    /// exit code 1.
    Changed {
        /// The run directory.
        dir: PathBuf,
        /// Every differing key with its old and new value.
        changes: Vec<Change>,
    },
}

impl std::fmt::Display for ExperimentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExperimentError::Setup(m) | ExperimentError::Run(m) => f.write_str(m),
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
            TrainError::Data(d) => ExperimentError::Setup(d.to_string()),
            TrainError::Checkpoint(c) => ExperimentError::Setup(c.to_string()),
            other => ExperimentError::Run(other.to_string()),
        }
    }
}

fn run_err(e: impl std::fmt::Display) -> ExperimentError {
    ExperimentError::Run(e.to_string())
}

fn setup_err(e: impl std::fmt::Display) -> ExperimentError {
    ExperimentError::Setup(e.to_string())
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
        crate::build::device(req.recipe.train.device, req.recipe.seed).map_err(setup_err)?;
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
        dist::shard_range(r.train.batch_size, rank, world).map_err(run_err)?;
    }
    let threads =
        runtime::configure_threads(runtime::threads(r.train.threads, world)).map_err(setup_err)?;
    let text = resolved_text(r);
    let hash = recipe_hash(r);
    // Changes `--force` lets through; applied once the checkpoint has loaded.
    let mut forced: Vec<Change> = Vec::new();
    let dir = match &req.resume {
        Some(dir) => {
            forced = check_resume(dir, r, req.force)?;
            if forced.is_empty() && dir.join("results.json").is_file() {
                return Err(setup_err(format!(
                    "`{d}` has finished ({} epochs) and its results are written. To train \
                     longer: `recipe run --resume {d} --set train.epochs=N --force`; to rerun \
                     its downstream tasks: `recipe eval {d}`",
                    r.train.epochs,
                    d = dir.display()
                )));
            }
            if writer {
                dist_note(dir, world, true, r.train.sync_batch_norm)?;
            }
            dir.clone()
        }
        // Only rank 0 creates (and names) the run directory; the others never write.
        None if writer => {
            let parent = req
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from(&r.output.dir));
            let dir = rundir::create(&parent, &r.name, &text).map_err(ExperimentError::Setup)?;
            if world > 1 {
                dist_note(&dir, world, false, r.train.sync_batch_norm)?;
            }
            dir
        }
        None => PathBuf::new(),
    };
    let loaded = data::load(&data::DataConfig::from_spec(&r.data, r.seed))
        .map_err(|e| setup_err(format!("cannot read the data: {e}")))?;
    let train = Arc::new(loaded.train);
    let test = loaded.test;
    if train.len() < r.train.batch_size {
        return Err(run_err(format!(
            "the training set has {} images, fewer than one batch of {} (train.batch_size)",
            train.len(),
            r.train.batch_size
        )));
    }
    let chain = augment::Chain::from_spec(&r.augment, &r.data).map_err(run_err)?;
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
    .map_err(setup_err)?
    .sharded(rank, world)
    .map_err(setup_err)?;
    let mut trainer = Trainer::new(r, dev, train.len(), loader.batches_per_epoch() as u64)?;
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
                return Err(setup_err(format!(
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
            let rel = resume::archive(&dir, start_step).map_err(setup_err)?;
            rundir::write_text(&dir.join(rundir::RECIPE_FILE), &text)
                .map_err(ExperimentError::Setup)?;
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
        .map_err(ExperimentError::Setup)?;
    }
    let mut metrics = match &resumed {
        _ if !writer => None,
        Some(m) => Some(
            MetricsWriter::resume(&dir, &[], m.step)
                .map_err(setup_err)?
                .0,
        ),
        None => Some(MetricsWriter::create(&dir, &[]).map_err(setup_err)?),
    };
    let norm = normalization(r);
    // kNN during training, every `every_epochs` epochs, on the test split.
    let periodic: Vec<(usize, KnnConfig, Which)> = r
        .downstream
        .iter()
        .filter_map(|t| match t {
            Task::Knn {
                k,
                temperature,
                metric,
                features,
                every_epochs,
                ..
            } if *every_epochs > 0 => Some((
                *every_epochs,
                KnnConfig {
                    k: *k,
                    temperature: *temperature,
                    metric: metric_of(*metric),
                },
                which(*features),
            )),
            _ => None,
        })
        .collect();
    let eval_batch = r.train.batch_size.max(64);
    let test_ref = test.as_ref();
    let train_ref: &Dataset = &train;
    let mut on_epoch = |t: &mut Trainer<D>,
                        epoch: usize|
     -> Result<Vec<(String, f64)>, TrainError> {
        let mut out = Vec::new();
        // Evaluation runs once, on rank 0.
        let (true, Some(test)) = (writer, test_ref) else {
            return Ok(out);
        };
        for (every, cfg, w) in &periodic {
            if !epoch.is_multiple_of(*every) {
                continue;
            }
            let model = t.encoder.model().clone();
            let (a, b) = features_of(&model, &mut t.store, train_ref, test, &norm, *w, eval_batch)
                .map_err(|e| TrainError::Other(e.to_string()))?;
            let res = knn(&a, &b, cfg).map_err(|e| TrainError::Other(e.to_string()))?;
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
            return Err(run_err(format!(
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
        return Err(run_err("rank 0 has no metrics writer"));
    };
    let model = trainer.encoder.model().clone();
    // torchvision's names and shapes minus `fc` (for ResNets; the small CNN's follow
    // an `nn.Sequential` named `features`).
    let names = model.backbone_entry_names(&trainer.store);
    checkpoint::export_named(&dir.join("backbone.safetensors"), &trainer.store, &names)
        .map_err(setup_err)?;
    let eval_started = Instant::now();
    let downstream = Downstream {
        r,
        train: &train,
        test: test.as_ref(),
        norm: &norm,
        dir: &dir,
        batch: eval_batch,
    };
    let results =
        downstream.run_all(&model, &mut trainer.store, None, &mut metrics, trainer.step)?;
    let eval_secs = eval_started.elapsed().as_secs_f64();
    let curves = training_curves(&dir, r)?;
    let mut figures = results.figures.clone();
    figures.extend(curves);
    let total = started.elapsed().as_secs_f64();
    let invocations = resume::read(&dir);
    let made = provenance(&invocations);
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
    .map_err(ExperimentError::Setup)?;
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
    )
    .map_err(setup_err)?;
    dist.wait_for_all();
    Ok(RunOutcome::Finished { dir, results: doc })
}

/// How a run was made, from its `invocations.jsonl`.
struct Provenance {
    /// The recipe file the run started from.
    recipe_file: Option<String>,
    /// Every `--set` of every invocation, in order.
    overrides: Vec<String>,
    /// One line per invocation (its step and command) and per forced change.
    lines: Vec<String>,
}

fn provenance(invocations: &[Value]) -> Provenance {
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
fn dist_note(dir: &Path, world: usize, resume: bool, sync_bn: bool) -> Result<(), ExperimentError> {
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
        rundir::write_text(&path, &format!("{world}\n")).map_err(ExperimentError::Setup)?;
    }
    Ok(())
}

/// The changes between `dir`'s recipe in force and `r`: refused unless `force`.
fn check_resume(dir: &Path, r: &Recipe, force: bool) -> Result<Vec<Change>, ExperimentError> {
    let old = resume::read_recipe_value(dir).map_err(setup_err)?;
    let new = serde_json::to_value(r).map_err(run_err)?;
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

fn metric_of(m: SpecMetric) -> Metric {
    match m {
        SpecMetric::Cosine => Metric::Cosine,
        SpecMetric::Euclidean => Metric::Euclidean,
    }
}

fn which(f: Features) -> Which {
    match f {
        Features::Backbone => Which::Backbone,
        Features::Head => Which::Head,
    }
}

fn features_of<D: EngineDevice>(
    model: &Model,
    store: &mut ParamStore<D>,
    train: &Dataset,
    test: &Dataset,
    norm: &Normalize,
    w: Which,
    batch: usize,
) -> Result<(FeatureMatrix, FeatureMatrix), ExperimentError> {
    let a = extract(model, store, train, norm, w, batch).map_err(run_err)?;
    let b = extract(model, store, test, norm, w, batch).map_err(run_err)?;
    Ok((a, b))
}

/// What the downstream tasks produced.
#[derive(Clone, Debug, Default)]
pub struct DownstreamResults {
    /// One entry per task (results.json's `downstream`).
    pub json: Vec<Value>,
    /// The report's table.
    pub table: MetricsTable,
    /// The report's remarks.
    pub notes: Vec<String>,
    /// `(title, file name)` of the pictures written.
    pub figures: Vec<(String, String)>,
}

/// The downstream tasks of a recipe over its data.
pub struct Downstream<'a> {
    /// The recipe.
    pub r: &'a Recipe,
    /// Training split (kNN memory, probe training set).
    pub train: &'a Dataset,
    /// Test split.
    pub test: Option<&'a Dataset>,
    /// Normalisation for every image.
    pub norm: &'a Normalize,
    /// Where pictures go.
    pub dir: &'a Path,
    /// Images per forward pass.
    pub batch: usize,
}

const ROWS: [&str; 3] = ["trained", "untrained network", "raw pixels"];

impl Downstream<'_> {
    /// Runs the recipe's tasks (or only those named in `only`) on `model` in `store`,
    /// with the baselines the tasks ask for, writing eval records to `metrics`.
    pub fn run_all<D: EngineDevice>(
        &self,
        model: &Model,
        store: &mut ParamStore<D>,
        only: Option<&[String]>,
        metrics: &mut MetricsWriter,
        step: u64,
    ) -> Result<DownstreamResults, ExperimentError> {
        let mut out = DownstreamResults {
            table: MetricsTable {
                columns: Vec::new(),
                rows: ROWS.iter().map(|r| (r.to_string(), Vec::new())).collect(),
            },
            ..Default::default()
        };
        // The untrained network: the same config and seed, before any step.
        let mut untrained = ParamStore::new(store.device().clone());
        let plain = Model::new(
            &mut untrained,
            &crate::build::model(self.r, model.input.1).map_err(run_err)?,
            self.r.seed,
        )
        .map_err(run_err)?;
        let mut cache: BTreeMap<(usize, u8), (FeatureMatrix, FeatureMatrix)> = BTreeMap::new();
        let mut raw: Option<(FeatureMatrix, FeatureMatrix)> = None;
        for task in &self.r.downstream {
            if let Some(names) = only
                && !names.iter().any(|n| n == task.name())
            {
                continue;
            }
            if task.needs_labels() && self.test.is_none() {
                return Err(setup_err(format!(
                    "the `{}` task needs a labelled test split; set data.test_fraction",
                    task.name()
                )));
            }
            let t0 = Instant::now();
            match task {
                Task::Knn {
                    k,
                    temperature,
                    metric,
                    features,
                    baselines,
                    ..
                } => {
                    let cfg = KnnConfig {
                        k: *k,
                        temperature: *temperature,
                        metric: metric_of(*metric),
                    };
                    let w = which(*features);
                    let mut entry = json!({"task": "knn", "k": k, "temperature": temperature,
                        "features": format!("{features:?}").to_lowercase()});
                    let mut vals = [None, None, None];
                    let mut vals5 = [None, None, None];
                    for (row, name) in ROWS.iter().enumerate() {
                        if row > 0 && !baselines {
                            continue;
                        }
                        let (a, b) = self.features(
                            row,
                            w,
                            model,
                            store,
                            &plain,
                            &mut untrained,
                            &mut cache,
                            &mut raw,
                        )?;
                        let res = knn(a, b, &cfg).map_err(run_err)?;
                        entry[key(name)] = json!({"top1": res.top1, "top5": res.top5});
                        vals[row] = Some(res.top1);
                        vals5[row] = Some(res.top5);
                    }
                    self.add_column(&mut out.table, &format!("kNN top-1 (k={k})"), vals);
                    self.add_column(&mut out.table, &format!("kNN top-5 (k={k})"), vals5);
                    metrics
                        .write(
                            &Record::new(Kind::Eval, self.r.train.epochs as u64, step)
                                .with("knn_top1", vals[0].unwrap_or(f64::NAN))
                                .with("knn_top5", vals5[0].unwrap_or(f64::NAN)),
                        )
                        .map_err(setup_err)?;
                    entry["seconds"] = json!(t0.elapsed().as_secs_f64());
                    out.json.push(entry);
                }
                Task::LinearProbe {
                    epochs,
                    batch_size,
                    lr,
                    weight_decay,
                    features,
                    standardize,
                    baselines,
                } => {
                    let cfg = ProbeConfig {
                        epochs: *epochs,
                        batch_size: *batch_size,
                        lr: *lr,
                        weight_decay: 0.0,
                        standardize: *standardize,
                        seed: self.r.seed,
                    };
                    let wds = weight_decay.candidates();
                    let w = which(*features);
                    let mut entry = json!({"task": "linear_probe", "epochs": epochs, "lr": lr,
                        "weight_decay": wds,
                        "standardize": standardize,
                        "features": format!("{features:?}").to_lowercase()});
                    let mut vals = [None, None, None];
                    let mut vals5 = [None, None, None];
                    for (row, name) in ROWS.iter().enumerate() {
                        if row > 0 && !baselines {
                            continue;
                        }
                        let (a, b) = self.features(
                            row,
                            w,
                            model,
                            store,
                            &plain,
                            &mut untrained,
                            &mut cache,
                            &mut raw,
                        )?;
                        let (res, wd, held_out) =
                            linear_probe_select(a, b, &cfg, &wds).map_err(run_err)?;
                        entry[key(name)] = json!({"top1": res.top1, "top5": res.top5,
                            "train_top1": res.train_top1, "weight_decay": wd,
                            "held_out_top1": held_out});
                        vals[row] = Some(res.top1);
                        vals5[row] = Some(res.top5);
                    }
                    if wds.len() > 1 {
                        let chosen: Vec<String> = ROWS
                            .iter()
                            .filter_map(|name| {
                                entry[key(name)]["weight_decay"]
                                    .as_f64()
                                    .map(|wd| format!("{name} {wd}"))
                            })
                            .collect();
                        out.notes.push(format!(
                            "Linear probe: weight decay chosen from {wds:?} on a held-out 10% \
                             of the training split, per feature set: {}.",
                            chosen.join(", ")
                        ));
                    }
                    self.add_column(&mut out.table, "linear top-1", vals);
                    self.add_column(&mut out.table, "linear top-5", vals5);
                    metrics
                        .write(
                            &Record::new(Kind::Eval, self.r.train.epochs as u64, step)
                                .with("linear_top1", vals[0].unwrap_or(f64::NAN))
                                .with("linear_top5", vals5[0].unwrap_or(f64::NAN)),
                        )
                        .map_err(setup_err)?;
                    entry["seconds"] = json!(t0.elapsed().as_secs_f64());
                    out.json.push(entry);
                }
                Task::FineTune {
                    epochs,
                    batch_size,
                    lr,
                    backbone_lr_scale,
                    weight_decay,
                } => {
                    let test = self.test.expect("checked above");
                    let cfg = FineTuneConfig {
                        epochs: *epochs,
                        batch_size: *batch_size,
                        lr: *lr,
                        backbone_lr_scale: *backbone_lr_scale,
                        weight_decay: *weight_decay,
                        seed: self.r.seed,
                    };
                    let m = model.with_input(test_hw(test)).map_err(run_err)?;
                    let res =
                        fine_tune(&m, store, self.train, test, self.norm, &cfg).map_err(run_err)?;
                    let m0 = plain.with_input(test_hw(test)).map_err(run_err)?;
                    let base = fine_tune(&m0, &untrained, self.train, test, self.norm, &cfg)
                        .map_err(run_err)?;
                    self.add_column(
                        &mut out.table,
                        "fine-tune top-1",
                        [Some(res.top1), Some(base.top1), None],
                    );
                    metrics
                        .write(
                            &Record::new(Kind::Eval, self.r.train.epochs as u64, step)
                                .with("fine_tune_top1", res.top1)
                                .with("fine_tune_top5", res.top5),
                        )
                        .map_err(setup_err)?;
                    out.json.push(json!({"task": "fine_tune", "epochs": epochs,
                        "trained": {"top1": res.top1, "top5": res.top5},
                        "untrained_network": {"top1": base.top1, "top5": base.top5},
                        "seconds": t0.elapsed().as_secs_f64()}));
                }
                Task::Visualize {
                    plots,
                    samples,
                    queries,
                    neighbors,
                } => {
                    let figs = self.visualize(
                        plots, *samples, *queries, *neighbors, model, store, &mut cache,
                    )?;
                    out.json.push(json!({"task": "visualize",
                        "files": figs.iter().map(|f| f.1.clone()).collect::<Vec<_>>(),
                        "seconds": t0.elapsed().as_secs_f64()}));
                    out.figures.extend(figs);
                }
            }
        }
        out.notes.push(
            "Baselines: *untrained network* is the same architecture with the recipe's seed \
             before any training step; *raw pixels* classifies the normalised pixels directly. \
             Linear probes standardise every feature with training-set statistics unless the \
             recipe turns that off."
                .into(),
        );
        out.table
            .rows
            .retain(|(_, v)| v.iter().any(Option::is_some));
        Ok(out)
    }

    fn add_column(&self, t: &mut MetricsTable, name: &str, vals: [Option<f64>; 3]) {
        t.columns.push(name.to_string());
        for (row, v) in t.rows.iter_mut().zip(vals) {
            row.1.push(v);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn features<'c, D: EngineDevice>(
        &self,
        row: usize,
        w: Which,
        model: &Model,
        store: &mut ParamStore<D>,
        plain: &Model,
        untrained: &mut ParamStore<D>,
        cache: &'c mut BTreeMap<(usize, u8), (FeatureMatrix, FeatureMatrix)>,
        raw: &'c mut Option<(FeatureMatrix, FeatureMatrix)>,
    ) -> Result<(&'c FeatureMatrix, &'c FeatureMatrix), ExperimentError> {
        let test = self.test.expect("labelled tasks checked the test split");
        if row == 2 {
            if raw.is_none() {
                *raw = Some((
                    raw_pixels(self.train, self.norm).map_err(run_err)?,
                    raw_pixels(test, self.norm).map_err(run_err)?,
                ));
            }
            let (a, b) = raw.as_ref().expect("just filled");
            return Ok((a, b));
        }
        let k = (row, w as u8);
        if let std::collections::btree_map::Entry::Vacant(slot) = cache.entry(k) {
            let (m, s) = if row == 0 {
                (model, store)
            } else {
                (plain, untrained)
            };
            slot.insert(features_of(
                m, s, self.train, test, self.norm, w, self.batch,
            )?);
        }
        let (a, b) = &cache[&k];
        Ok((a, b))
    }

    #[allow(clippy::too_many_arguments)]
    fn visualize<D: EngineDevice>(
        &self,
        plots: &[Plot],
        samples: usize,
        queries: usize,
        neighbors: usize,
        model: &Model,
        store: &mut ParamStore<D>,
        cache: &mut BTreeMap<(usize, u8), (FeatureMatrix, FeatureMatrix)>,
    ) -> Result<Vec<(String, String)>, ExperimentError> {
        let mut figs = Vec::new();
        let eval_set = self.test.unwrap_or(self.train);
        for plot in plots {
            match plot {
                Plot::Filters => {
                    let name = model.backbone.first_conv_weight_name();
                    let id = store
                        .id(&name)
                        .ok_or_else(|| run_err(format!("no `{name}` in the model")))?;
                    let shape = &store.get(id).shape;
                    let shape = [shape[0], shape[1], shape[2], shape[3]];
                    grid::filters_png(&self.dir.join("filters.png"), &store.data(id), shape)
                        .map_err(setup_err)?;
                    figs.push(("First-layer filters".into(), "filters.png".into()));
                }
                Plot::FeatureMaps => {
                    let n = queries.min(eval_set.len()).max(1);
                    let idx = spread(eval_set.len(), n);
                    let imgs: Vec<_> = idx.iter().map(|&i| eval_set.image(i)).collect();
                    let (c, h, w) = eval_set.shape();
                    let mut x = Vec::with_capacity(n * c * h * w);
                    for im in &imgs {
                        let im = self.norm.apply(im.clone()).map_err(run_err)?;
                        x.extend_from_slice(&im.data);
                    }
                    let dev = store.device().clone();
                    let t = dfdx::prelude::TensorFromVec::tensor_from_vec(&dev, x, (n, c, h, w));
                    let stages = model.backbone.stage_outputs(store, t).map_err(run_err)?;
                    let stages: Vec<(String, Vec<f32>, [usize; 4])> = stages
                        .into_iter()
                        .map(|(name, t)| {
                            let s = *dfdx::prelude::HasShape::shape(&t);
                            (name, t.as_vec(), [s.0, s.1, s.2, s.3])
                        })
                        .collect();
                    grid::feature_maps_png(&self.dir.join("feature_maps.png"), &imgs, &stages, 8)
                        .map_err(setup_err)?;
                    figs.push((
                        "Activation maps per stage".into(),
                        "feature_maps.png".into(),
                    ));
                }
                Plot::NearestNeighbors => {
                    let Some(test) = self.test else { continue };
                    let k = (0, Which::Backbone as u8);
                    if let std::collections::btree_map::Entry::Vacant(slot) = cache.entry(k) {
                        let v = features_of(
                            model,
                            store,
                            self.train,
                            test,
                            self.norm,
                            Which::Backbone,
                            self.batch,
                        )?;
                        slot.insert(v);
                    }
                    let (a, b) = &cache[&k];
                    let q = spread(b.n, queries.min(b.n).max(1));
                    let qm = b.select(&q);
                    let nn = nearest(a, &qm, neighbors, Metric::Cosine).map_err(run_err)?;
                    let qimgs: Vec<_> = q.iter().map(|&i| test.image(i)).collect();
                    let nimgs: Vec<Vec<_>> = nn
                        .iter()
                        .map(|row| row.iter().map(|(j, _)| self.train.image(*j)).collect())
                        .collect();
                    let correct: Vec<Vec<bool>> = nn
                        .iter()
                        .zip(&q)
                        .map(|(row, &qi)| {
                            row.iter()
                                .map(|(j, _)| self.train.label(*j) == test.label(qi))
                                .collect()
                        })
                        .collect();
                    grid::neighbors_png(
                        &self.dir.join("nearest_neighbors.png"),
                        &qimgs,
                        &nimgs,
                        &correct,
                    )
                    .map_err(setup_err)?;
                    figs.push((
                        "Test images and their nearest training images (green: same class)".into(),
                        "nearest_neighbors.png".into(),
                    ));
                }
                Plot::EmbeddingPca => {
                    let n = samples.min(eval_set.len()).max(2);
                    let idx = spread(eval_set.len(), n);
                    let sub = eval_set.select(&idx);
                    let f = extract(model, store, &sub, self.norm, Which::Backbone, self.batch)
                        .map_err(run_err)?;
                    let p = pca_2d(&f).map_err(run_err)?;
                    let classes: Vec<u32> =
                        (0..sub.len()).map(|i| sub.label(i).unwrap_or(0)).collect();
                    plots::scatter(
                        &self.dir.join("embedding_pca.png"),
                        &format!(
                            "PCA of {} test embeddings ({:.0}% + {:.0}% of the variance)",
                            n,
                            100.0 * p.variance_ratio[0],
                            100.0 * p.variance_ratio[1]
                        ),
                        &p.coords,
                        &classes,
                        sub.classes(),
                    )
                    .map_err(setup_err)?;
                    figs.push(("Embedding PCA".into(), "embedding_pca.png".into()));
                }
                Plot::TrainingCurves => {
                    // Drawn after the run from metrics.jsonl (see `training_curves`).
                }
                Plot::AugmentationViews => {
                    let chain = augment::Chain::from_spec(&self.r.augment, &self.r.data)
                        .map_err(run_err)?;
                    let idx = spread(self.train.len(), queries.min(self.train.len()).max(1));
                    let imgs: Vec<_> = idx.iter().map(|&i| self.train.image(i)).collect();
                    augment::write_preview(
                        &chain,
                        &imgs,
                        self.r.seed,
                        augment::Scale::Auto,
                        &self.dir.join("augmentation_views.png"),
                    )
                    .map_err(setup_err)?;
                    figs.push((
                        "Training images and their augmented views".into(),
                        "augmentation_views.png".into(),
                    ));
                }
            }
        }
        Ok(figs)
    }
}

fn key(row: &str) -> String {
    row.replace(' ', "_")
}

fn test_hw(d: &Dataset) -> (usize, usize) {
    let (_, h, w) = d.shape();
    (h, w)
}

/// `n` indices spread evenly over `0..len`.
fn spread(len: usize, n: usize) -> Vec<usize> {
    let n = n.min(len);
    (0..n).map(|i| i * len / n.max(1)).collect()
}

/// Loss, learning rate and kNN accuracy over training, from `metrics.jsonl`, when the
/// recipe asks for `training_curves`.
fn training_curves(dir: &Path, r: &Recipe) -> Result<Vec<(String, String)>, ExperimentError> {
    let wanted = r.downstream.iter().any(
        |t| matches!(t, Task::Visualize { plots, .. } if plots.contains(&Plot::TrainingCurves)),
    );
    if !wanted {
        return Ok(Vec::new());
    }
    let recs = read_jsonl(&dir.join("metrics.jsonl")).map_err(setup_err)?;
    let series = |kind: Kind, field: &str, name: &str| plots::Series {
        name: name.to_string(),
        points: recs
            .iter()
            .filter(|r| r.kind == kind)
            .filter_map(|r| r.get(field).map(|v| (r.step as f64, v)))
            .collect(),
    };
    let mut figs = Vec::new();
    plots::line_chart(
        &dir.join("loss.png"),
        "Training loss",
        "step",
        &[
            series(Kind::Step, "loss", "loss (logged steps)"),
            series(Kind::Epoch, "loss", "epoch mean"),
        ],
    )
    .map_err(setup_err)?;
    figs.push(("Training loss".into(), "loss.png".into()));
    plots::line_chart(
        &dir.join("lr.png"),
        "Learning rate",
        "step",
        &[series(Kind::Step, "lr", "learning rate")],
    )
    .map_err(setup_err)?;
    figs.push(("Learning rate".into(), "lr.png".into()));
    let knn_pts = series(Kind::Epoch, "knn_top1", "kNN top-1 (%)");
    if !knn_pts.points.is_empty() {
        plots::line_chart(
            &dir.join("knn.png"),
            "kNN accuracy during training",
            "step",
            &[knn_pts],
        )
        .map_err(setup_err)?;
        figs.push(("kNN top-1 over training".into(), "knn.png".into()));
    }
    Ok(figs)
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
            return Err(setup_err(format!(
                "unknown task `{name}`\nhelp: {hint}the tasks are {}",
                Task::NAMES.join(", ")
            )));
        }
    }
    for set in sets {
        let path = set.split_once('=').map_or(set.as_str(), |(p, _)| p).trim();
        if path != "downstream" && !path.starts_with("downstream.") {
            return Err(setup_err(format!(
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
            setup_err(format!(
                "`{}` is not inside a run directory",
                target.display()
            ))
        })?;
        (dir.to_path_buf(), target.to_path_buf())
    };
    if !dir.join(rundir::RECIPE_FILE).is_file() {
        return Err(setup_err(format!(
            "`{}` is not a run directory (it has no {})",
            dir.display(),
            rundir::RECIPE_FILE
        )));
    }
    let loaded = crate::spec::Loader::new()
        .load_file(&dir.join(rundir::RECIPE_FILE), sets)
        .map_err(setup_err)?;
    let Some(r) = loaded.valid_recipe().cloned() else {
        return Err(run_err(format!(
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
            return Err(setup_err(format!(
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
        return Err(setup_err(format!(
            "this run's recipe has no downstream tasks; add some with --set, e.g. \
             recipe eval {} --set 'downstream=[{{task: knn}}]'",
            resume::shell_line(&[dir.display().to_string()])
        )));
    }
    runtime::configure_threads(runtime::threads(r.train.threads, runtime::launcher_ranks()))
        .map_err(setup_err)?;
    let size = crate::build::view_sizes(&r)
        .first()
        .map_or(r.data.image_size, |(s, _)| *s);
    let (device, note) = crate::build::device(r.train.device, r.seed).map_err(setup_err)?;
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
    let data = data::load(&data::DataConfig::from_spec(&r.data, r.seed))
        .map_err(|e| setup_err(format!("cannot read the data: {e}")))?;
    let mut store = ParamStore::new(dev);
    let model = Model::new(
        &mut store,
        &crate::build::model(r, size).map_err(run_err)?,
        r.seed,
    )
    .map_err(run_err)?;
    checkpoint::load_training(ckpt, &mut store, None, None, None).map_err(setup_err)?;
    let norm = normalization(r);
    let mut metrics = MetricsWriter::resume(dir, &[], u64::MAX)
        .map_err(setup_err)?
        .0;
    let ds = Downstream {
        r,
        train: &data.train,
        test: data.test.as_ref(),
        norm: &norm,
        dir,
        batch: r.train.batch_size.max(64),
    };
    let meta = checkpoint::read_meta(ckpt).map_err(setup_err)?;
    let res = ds.run_all(&model, &mut store, only, &mut metrics, meta.step)?;
    // The entries of this evaluation, each with the task's recipe form (the merge key),
    // the checkpoint, its step, the time and the overrides.
    let when = rundir::timestamp(std::time::SystemTime::now());
    let ran: Vec<&Task> = r
        .downstream
        .iter()
        .filter(|t| only.is_none_or(|names| names.iter().any(|n| n == t.name())))
        .collect();
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
    .map_err(ExperimentError::Setup)?;
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
