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
use crate::eval::downstream::{Encoders, Task as DTask, run_all};
use crate::eval::features::extract;
use crate::eval::knn::{KnnTask, knn};
use crate::nn::EngineDevice;
use crate::nn::device::OnDevice;
use crate::report::markdown::{ReportInput, write_report};
use crate::report::metrics::MetricsWriter;
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
            tables: results.tables.clone(),
            notes: results.notes.clone(),
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
