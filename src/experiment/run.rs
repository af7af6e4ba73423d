//! `recipe run`: the experiment a recipe describes, from the run directory to the report.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{Value, json};

use super::{
    ExperimentError, RunOutcome, RunRequest, data_err, env_err, files_err, normalization,
    plain_data, recipe_err, recipe_hash, resolved_text, usage_err,
};
use crate::checkpoint;
use crate::data::{self, Dataset, Loader, LoaderConfig};
use crate::dist;
use crate::eval::collapse;
use crate::eval::downstream::{Encoders, EvalData, Task as DTask, run_all};
use crate::eval::features::extract;
use crate::eval::knn::{KnnTask, knn};
use crate::nn::EngineDevice;
use crate::nn::device::OnDevice;
use crate::report::markdown::{ReportInput, write_report};
use crate::report::metrics::MetricsWriter;
use crate::report::tensorboard::{EventWriter, downstream_scalars};
use crate::runtime;
use crate::spec::Recipe;
use crate::train::TrainError;
use crate::train::fit::{LoopConfig, Progress, train_loop};
use crate::train::resume::{self, Change, Invocation};
use crate::train::rundir;
use crate::train::step::Trainer;

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
            run_recorded(self.0, dev, self.1)
        }
    }
    let name = device.name();
    device.dispatch(Run(req, name))
}

/// [`run_on`], with its outcome recorded in the run directory's `status.json` once
/// the invocation has a directory of its own to record it in (see [`rundir::status`]).
fn run_recorded<D: EngineDevice>(
    req: &RunRequest,
    dev: D,
    device_name: &str,
) -> Result<RunOutcome, ExperimentError> {
    // Dropped while a panic unwinds, it records `failed`.
    let mut live = None;
    let out = run_on(req, dev, device_name, &mut live);
    if let Some(live) = live {
        let outcome = match &out {
            Ok(RunOutcome::Finished { results, .. }) => rundir::Outcome::Finished {
                step: results["training"]["steps"].as_u64().unwrap_or(0),
            },
            Ok(RunOutcome::Interrupted { step, .. }) => {
                rundir::Outcome::Interrupted { step: *step }
            }
            Err(e) => rundir::Outcome::Failed {
                error: e.to_string(),
            },
        };
        if let Err(e) = live.end(&outcome) {
            eprintln!("warning: cannot record how the run ended: {e}");
        }
    }
    out
}

/// The run itself; `live` receives the run directory's [`rundir::LiveStatus`] as soon
/// as this invocation owns the directory: at once for a new run, after the checks and
/// `invocations.jsonl` for a resumed one (a refused resume leaves the status alone).
fn run_on<D: EngineDevice>(
    req: &RunRequest,
    dev: D,
    device_name: &str,
    live: &mut Option<rundir::LiveStatus>,
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
    let mut previous: Option<Recipe> = None;
    let dir = match &req.resume {
        Some(dir) => {
            (forced, previous) = check_resume(dir, r, req.force)?;
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
            let dir = match &req.dir {
                Some(at) => rundir::create_at(at, &text),
                None => {
                    let parent = req
                        .out
                        .clone()
                        .unwrap_or_else(|| PathBuf::from(&r.output.dir));
                    rundir::create(&parent, &r.name, &text)
                }
            }
            .map_err(ExperimentError::Files)?;
            *live = Some(rundir::LiveStatus::start(&dir, 0).map_err(ExperimentError::Files)?);
            if world > 1 {
                resume::world_size_note(&dir, world, false, r.train.sync_batch_norm)
                    .map_err(ExperimentError::Files)?;
            }
            dir
        }
        None => PathBuf::new(),
    };
    let loaded = data::load(&crate::build::data::config(&r.data, r.seed)).map_err(data_err)?;
    // Rank 0 evaluates; its transfer datasets are read before training.
    let task_sets = if rank == 0 {
        Some(super::TaskDatasets::load(r)?)
    } else {
        None
    };
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
            // parse; then the warning omits it).
            let old_lr = previous.as_ref().and_then(|old| {
                lr_at(
                    old,
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
        if live.is_none() {
            *live =
                Some(rundir::LiveStatus::start(&dir, start_step).map_err(ExperimentError::Files)?);
        }
    }
    // The collapse indicators' fixed sample (rank 0 alone measures them).
    let watch_set: Option<Dataset> = (writer && r.train.watch_samples > 0).then(|| {
        train.select(&collapse::sample_indices(
            train.len(),
            r.train.watch_samples,
            r.seed,
        ))
    });
    let columns: &[&str] = if watch_set.is_some() {
        &collapse::FIELDS
    } else {
        &[]
    };
    let mut metrics = match &resumed {
        _ if !writer => None,
        Some(m) => Some(MetricsWriter::resume(&dir, columns, m.step)?.0),
        None => Some(MetricsWriter::create(&dir, columns)?),
    };
    // The TensorBoard events file sees every record the metrics files do; a resumed
    // run cuts the earlier files back to its checkpoint and opens a new one.
    if let Some(m) = metrics.as_mut() {
        m.attach_events(match &req.resume {
            Some(_) => EventWriter::resume(&dir, resumed.as_ref().map_or(0, |m| m.step))?,
            None => EventWriter::create(&dir)?,
        });
    }
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
    let epochs = r.train.epochs;
    let mut on_epoch =
        |t: &mut Trainer<D>, epoch: usize| -> Result<Vec<(String, f64)>, TrainError> {
            let mut out = Vec::new();
            if let Some(ws) = &watch_set {
                let clock = Instant::now();
                let model = t.encoder.model().clone();
                let ind = collapse::measure(&model, &mut t.store, ws, &norm, eval_batch)
                    .map_err(|e| TrainError::Other(format!("collapse indicators: {e}")))?;
                out.extend(ind.fields());
                out.push((
                    collapse::FIELDS[3].to_string(),
                    clock.elapsed().as_secs_f64(),
                ));
                // Printed whatever the progress setting: a collapsing run is worth
                // stopping early.
                for w in ind.warnings() {
                    eprintln!("warning: collapse after epoch {epoch}/{epochs}: {w}");
                }
            }
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
    let watch = match &watch_set {
        Some(ws) => Some(watch_summary(
            &collapse::measure(&model, &mut trainer.store, ws, &norm, eval_batch)
                .map_err(|e| recipe_err(format!("collapse indicators: {e}")))?,
            &dir,
        )?),
        None => None,
    };
    let eval_started = Instant::now();
    let untrained = crate::build::model(r, model.input.1).map_err(recipe_err)?;
    let main = EvalData {
        label: None,
        train: &train,
        test: test.as_ref(),
        norm: &norm,
    };
    let task_sets = task_sets.ok_or_else(|| recipe_err("rank 0 has no task data"))?;
    let indices: Vec<usize> = (0..tasks.len()).collect();
    let paired = task_sets.pair(&tasks, &indices, main);
    let mut enc = Encoders::new(
        &model,
        &mut trainer.store,
        &untrained,
        r.seed,
        main,
        &dir,
        eval_batch,
    )?;
    let results = run_all(
        &paired,
        &mut enc,
        &mut metrics,
        r.train.epochs as u64,
        trainer.step,
    )?;
    let eval_secs = eval_started.elapsed().as_secs_f64();
    // Every run draws its training curves, whatever its `visualize` task asks.
    let mut figures = results.figures.clone();
    figures.extend(crate::report::curves::training_curves(&dir)?);
    let mut notes = results.notes.clone();
    let mut timings_watch = Vec::new();
    if let Some(w) = &watch {
        figures.extend(crate::report::curves::collapse_curves(
            &dir,
            w.last.healthy_std(),
            w.last.max_rank(),
        )?);
        notes.push(w.note.clone());
        if let Some(s) = w.seconds_per_epoch {
            timings_watch.push(("collapse indicators (per epoch)".to_string(), s));
        }
    }
    // The downstream results and the pictures, at the final step.
    if let Some(ev) = metrics.events() {
        ev.scalars(trainer.step, &downstream_scalars(&results.json))?;
        for (_, file) in &figures {
            ev.png_file(trainer.step, &dir, file)?;
        }
    }
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
        "watch": watch.as_ref().map(|w| w.json.clone()),
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
            ]
            .into_iter()
            .chain(timings_watch)
            .collect(),
            images_per_s: Some(summary.images_per_s),
            final_loss: Some(summary.last_epoch_loss),
            metrics: results.table.clone(),
            tables: results.tables.clone(),
            notes,
            figures,
        },
    )?;
    dist.wait_for_all();
    Ok(RunOutcome::Finished { dir, results: doc })
}

/// The changes between `dir`'s recipe in force and `r`, refused unless `force`; with
/// the run's previous recipe when it still parses (read once: the warning quotes its
/// last learning rate).
fn check_resume(
    dir: &Path,
    r: &Recipe,
    force: bool,
) -> Result<(Vec<Change>, Option<Recipe>), ExperimentError> {
    let old = resume::read_recipe_value(dir).map_err(files_err)?;
    let new = serde_json::to_value(r).map_err(recipe_err)?;
    let changes = resume::changes(&old, &new);
    if !changes.is_empty() && !force {
        return Err(ExperimentError::Changed {
            dir: dir.to_path_buf(),
            changes,
        });
    }
    Ok((changes, serde_json::from_value(old).ok()))
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

/// What a run reports of its collapse indicators: the `results.json` entry, the report
/// paragraph, the final measurement and the mean time per epoch.
struct Watch {
    json: Value,
    note: String,
    last: collapse::Indicators,
    seconds_per_epoch: Option<f64>,
}

/// The run's collapse indicators from its final measurement `last` and the epoch
/// records in `dir`'s `metrics.jsonl` (so a resumed run reports every epoch).
fn watch_summary(last: &collapse::Indicators, dir: &Path) -> Result<Watch, ExperimentError> {
    use crate::report::metrics::{JSONL_FILE, Kind, read_jsonl};
    let recs = read_jsonl(&dir.join(JSONL_FILE))?;
    let mut times = Vec::new();
    let mut flagged: Vec<(u64, Vec<String>)> = Vec::new();
    for rec in recs.iter().filter(|r| r.kind == Kind::Epoch) {
        if let Some(t) = rec.get(collapse::FIELDS[3]) {
            times.push(t);
        }
        let Some(ind) = collapse::Indicators::from_fields(
            |k| rec.get(k),
            last.samples,
            last.embedding_dim,
            last.feature_dim,
        ) else {
            continue;
        };
        let w = ind.warnings();
        if !w.is_empty() {
            flagged.push((rec.epoch + 1, w));
        }
    }
    let seconds_per_epoch =
        (!times.is_empty()).then(|| times.iter().sum::<f64>() / times.len() as f64);
    let warnings: Vec<String> = last.warnings();
    let mut note = format!(
        "Collapse indicators on {} fixed training images, after the last epoch: \
         L2-normalised projector outputs have a per-dimension std of {:.4} (1/√{} = {:.4} \
         when spread out, 0 when collapsed; SimSiam), the backbone features {:.4}; the \
         backbone features' effective rank (RankMe) is {:.1} of at most {}.",
        last.samples,
        last.embedding_std,
        last.embedding_dim,
        last.healthy_std(),
        last.feature_std,
        last.feature_rank,
        last.max_rank()
    );
    if flagged.is_empty() {
        note.push_str(" No epoch indicated collapse.");
    } else {
        let epochs: Vec<String> = flagged.iter().map(|f| f.0.to_string()).collect();
        note.push_str(&format!(
            " **Warning: collapse indicated after epoch(s) {}.** {}",
            epochs.join(", "),
            flagged
                .last()
                .map(|f| format!("After epoch {}: {}.", f.0, f.1.join("; ")))
                .unwrap_or_default()
        ));
    }
    let json = json!({
        "samples": last.samples,
        "embedding": "projector output (L2-normalised)",
        "embedding_dim": last.embedding_dim,
        "embedding_std": last.embedding_std,
        "healthy_std": last.healthy_std(),
        "feature_dim": last.feature_dim,
        "feature_std": last.feature_std,
        "feature_rank": last.feature_rank,
        "max_rank": last.max_rank(),
        "collapsed": !warnings.is_empty(),
        "warnings": warnings,
        "collapse_epochs": flagged.iter().map(|f| f.0).collect::<Vec<_>>(),
        "seconds_per_epoch": seconds_per_epoch,
    });
    Ok(Watch {
        json,
        note,
        last: last.clone(),
        seconds_per_epoch,
    })
}
