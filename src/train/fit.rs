//! The training loop of `recipe run`: epochs of [`Trainer::step`] over the loader, with
//! progress, metrics, periodic evaluation, checkpoints, interruption and resume.
//!
//! Invariants:
//! - `checkpoints/last.safetensors` is rewritten (atomically) at the end of every epoch
//!   and when a stop is requested, and never after a diverged step, so it is always a
//!   valid point to resume from; `epoch-NNNN.safetensors` are kept every
//!   `checkpoint_every` epochs.
//! - Resuming replays nothing the checkpoint already holds: the loader is stateless
//!   (order and augmentation are functions of `(seed, epoch, image)`), so skipping the
//!   epoch's first batches reproduces the interrupted run; with the same thread count
//!   the parameters, method state and logged losses are bit-identical to an
//!   uninterrupted run.
//! - Step records are numbered by steps done, so the metrics files can be cut back to
//!   a checkpoint's step on resume.

use std::io::IsTerminal;
use std::path::Path;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use super::step::Trainer;
use super::{TrainError, rundir, signal};
use crate::checkpoint::CheckpointMeta;
use crate::data::Loader;
use crate::nn::ops::EngineDevice;
use crate::report::metrics::{Kind, MetricsWriter, Record};

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// A bar per epoch on a terminal, plain lines otherwise.
    Auto,
    /// Plain log lines on stderr.
    Lines,
    /// Nothing.
    Quiet,
}

/// Work after every epoch: `(trainer, epochs done)` → metrics for the epoch record.
pub type EpochHook<'a, D> =
    dyn FnMut(&mut Trainer<D>, usize) -> Result<Vec<(String, f64)>, TrainError> + 'a;

/// Where the loop starts and what it must do besides training.
pub struct LoopConfig<'a, D: EngineDevice> {
    /// Epochs to train in total.
    pub epochs: usize,
    /// Log a step record every this many steps.
    pub log_every: usize,
    /// Keep `epoch-NNNN` checkpoints every this many epochs (0: none besides `last`).
    pub checkpoint_every: usize,
    /// Hash of the resolved recipe, stored in every checkpoint.
    pub recipe_hash: String,
    /// Progress display.
    pub progress: Progress,
    /// Stop as if interrupted once this many steps are done (tests, time limits).
    pub stop_after_steps: Option<u64>,
    /// Called after every epoch with the trainer and the 1-based count of epochs
    /// done; returns metrics to record for that epoch (periodic kNN).
    pub on_epoch: &'a mut EpochHook<'a, D>,
}

/// What the loop did. Totals count every invocation of the run (a resumed run adds
/// the time and images its checkpoint recorded); `session_*` only this process.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainSummary {
    /// Optimiser steps done in total.
    pub steps: u64,
    /// Epochs completed.
    pub epochs_done: usize,
    /// Training wall time over every invocation, seconds (without evaluation and
    /// checkpoints).
    pub train_seconds: f64,
    /// Training images over every invocation (each view one image).
    pub images: u64,
    /// Training images per second over every invocation.
    pub images_per_s: f64,
    /// Steps this process took.
    pub session_steps: u64,
    /// Training wall time of this process, seconds.
    pub session_seconds: f64,
    /// Training images per second in this process.
    pub session_images_per_s: f64,
    /// Mean loss of the last completed (or current) epoch.
    pub last_epoch_loss: f64,
    /// Stopped by a signal or `stop_after_steps` before the end.
    pub interrupted: bool,
}

/// Where a resumed loop starts: the checkpoint's meta (`epoch`: epochs completed;
/// `step`: steps done; `rng_state`: `[bits of the epoch's loss sum so far, its steps]`).
fn start_point(meta: &CheckpointMeta) -> (usize, u64, f64, u64) {
    let sum = meta.rng_state.first().map_or(0.0, |b| f64::from_bits(*b));
    let n = meta.rng_state.get(1).copied().unwrap_or(0);
    (meta.epoch as usize, meta.step, sum, n)
}

/// Checkpoint metadata for `epoch` with the epoch's loss so far and the run's totals.
fn meta(
    epoch: usize,
    (sum, n): (f64, u64),
    (secs, images): (f64, u64),
    hash: &str,
) -> CheckpointMeta {
    CheckpointMeta {
        epoch: epoch as u64,
        step: 0,
        rng_state: vec![sum.to_bits(), n],
        recipe_hash: hash.to_string(),
        train_millis: (secs * 1000.0).round() as u64,
        images,
    }
}

/// Whether any rank wants to stop (every rank gets the same answer).
fn agree<D: EngineDevice>(trainer: &Trainer<D>, stop: bool) -> bool {
    let dist = trainer.collective();
    if dist.world() == 1 {
        return stop;
    }
    let mut v = [f64::from(u8::from(stop))];
    dist.all_reduce_max_f64(&mut v);
    v[0] > 0.0
}

/// Trains `trainer` on `loader` from `resume` (or the start), writing checkpoints under
/// `dir/checkpoints` and records to `metrics`.
///
/// In a data-parallel job only rank 0 writes (checkpoints, and records when `metrics`
/// is given); the ranks agree on every stop (a signal seen by one rank stops all at the
/// same step).
pub fn train_loop<D: EngineDevice>(
    trainer: &mut Trainer<D>,
    loader: &Loader,
    dir: &Path,
    mut metrics: Option<&mut MetricsWriter>,
    resume: Option<&CheckpointMeta>,
    cfg: &mut LoopConfig<'_, D>,
) -> Result<TrainSummary, TrainError> {
    let spe = loader.batches_per_epoch() as u64;
    let (mut epoch, _, mut loss_sum, mut loss_n) = resume.map_or((0, 0, 0.0, 0), start_point);
    let ckpt_dir = dir.join(rundir::CHECKPOINTS);
    let last = ckpt_dir.join(rundir::LAST);
    let bar_wanted = match cfg.progress {
        Progress::Auto => std::io::stderr().is_terminal(),
        _ => false,
    };
    let lines =
        matches!(cfg.progress, Progress::Lines) || (cfg.progress == Progress::Auto && !bar_wanted);
    // This process's training time and images; the run's totals add the checkpoint's.
    let (prior_secs, prior_images) =
        resume.map_or((0.0, 0), |m| (m.train_millis as f64 / 1000.0, m.images));
    let first_step = trainer.step;
    let total_steps = spe * cfg.epochs as u64;
    let mut train_secs = 0.0f64;
    let mut images = 0u64;
    let mut interrupted = false;
    let mut last_epoch_loss = if loss_n > 0 {
        loss_sum / loss_n as f64
    } else {
        f64::NAN
    };
    let writer = trainer.collective().rank() == 0;
    let save = |trainer: &mut Trainer<D>,
                e: usize,
                loss: (f64, u64),
                (secs, imgs): (f64, u64),
                path: &Path| {
        if !writer {
            return Ok(());
        }
        let totals = (prior_secs + secs, prior_images + imgs);
        trainer.save(path, &meta(e, loss, totals, &cfg.recipe_hash))
    };
    let mut write = |rec: &Record| -> Result<(), TrainError> {
        match metrics.as_mut() {
            Some(m) => m.write(rec).map_err(|e| TrainError::Other(e.to_string())),
            None => Ok(()),
        }
    };
    'epochs: while epoch < cfg.epochs {
        let skip = trainer.step.saturating_sub(epoch as u64 * spe);
        let bar = bar_wanted.then(|| {
            let b = ProgressBar::new(spe);
            b.set_style(
                ProgressStyle::with_template("{prefix} [{bar:28}] {pos}/{len} {msg} ETA {eta}")
                    .expect("a valid template")
                    .progress_chars("=> "),
            );
            b.set_prefix(format!("epoch {}/{}", epoch + 1, cfg.epochs));
            b.set_position(skip);
            b
        });
        let mut window = Instant::now();
        let mut window_images = 0u64;
        let epoch_clock = Instant::now();
        for (i, b) in loader.epoch(epoch as u64).enumerate() {
            if (i as u64) < skip {
                // Batches the checkpoint already trained on (resume mid-epoch).
                continue;
            }
            let b = b?;
            let st = trainer.step(&b, epoch)?;
            // The job's images: every rank trains an equal slice.
            let n_img = (b.indices.len() * b.views.len() * trainer.collective().world()) as u64;
            images += n_img;
            window_images += n_img;
            loss_sum += st.loss as f64;
            loss_n += 1;
            let done = trainer.step;
            if done.is_multiple_of(cfg.log_every as u64) {
                let secs = window.elapsed().as_secs_f64().max(1e-9);
                let ips = window_images as f64 / secs;
                write(
                    &Record::new(Kind::Step, epoch as u64, done)
                        .with("loss", st.loss as f64)
                        .with("lr", st.lr)
                        .with("images_per_s", ips),
                )?;
                if lines {
                    // The ETA extrapolates this process's own rate (a resumed run's
                    // earlier speed may have been another machine's).
                    let secs_so_far = train_secs + epoch_clock.elapsed().as_secs_f64();
                    let per_step = secs_so_far / (done - first_step).max(1) as f64;
                    let eta = per_step * total_steps.saturating_sub(done) as f64;
                    eprintln!(
                        "epoch {}/{} batch {}/{} (step {}/{}) loss {:.4} lr {:.4} {:.0} images/s ETA {}",
                        epoch + 1,
                        cfg.epochs,
                        done - epoch as u64 * spe,
                        spe,
                        done,
                        total_steps,
                        st.loss,
                        st.lr,
                        ips,
                        crate::report::duration(eta)
                    );
                }
                if let Some(bar) = &bar {
                    bar.set_message(format!(
                        "loss {:.4} lr {:.4} {:.0} img/s",
                        st.loss, st.lr, ips
                    ));
                }
                window = Instant::now();
                window_images = 0;
            }
            if let Some(bar) = &bar {
                bar.inc(1);
            }
            let stop = agree(
                trainer,
                signal::requested() || cfg.stop_after_steps.is_some_and(|s| done >= s),
            );
            if stop && (i as u64 + 1) < spe {
                train_secs += epoch_clock.elapsed().as_secs_f64();
                if let Some(bar) = &bar {
                    bar.abandon();
                }
                save(
                    trainer,
                    epoch,
                    (loss_sum, loss_n),
                    (train_secs, images),
                    &last,
                )?;
                interrupted = true;
                last_epoch_loss = loss_sum / loss_n.max(1) as f64;
                break 'epochs;
            }
        }
        train_secs += epoch_clock.elapsed().as_secs_f64();
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        last_epoch_loss = loss_sum / loss_n.max(1) as f64;
        epoch += 1;
        let extra = (cfg.on_epoch)(trainer, epoch)?;
        let mut rec = Record::new(Kind::Epoch, (epoch - 1) as u64, trainer.step)
            .with("loss", last_epoch_loss)
            .with("lr", trainer.schedule.lr(trainer.step.saturating_sub(1)))
            .with("images_per_s", images as f64 / train_secs.max(1e-9));
        for (k, v) in &extra {
            rec = rec.with(k, *v);
        }
        write(&rec)?;
        if lines || bar_wanted {
            // Small values (the collapse indicators) keep four decimals.
            let extra: Vec<String> = extra
                .iter()
                .map(|(k, v)| match v.abs() < 1.0 {
                    true => format!("{k} {v:.4}"),
                    false => format!("{k} {v:.2}"),
                })
                .collect();
            eprintln!(
                "epoch {}/{} done: loss {:.4}, {:.0} images/s{}{}",
                epoch,
                cfg.epochs,
                last_epoch_loss,
                images as f64 / train_secs.max(1e-9),
                if extra.is_empty() { "" } else { ", " },
                extra.join(", ")
            );
        }
        loss_sum = 0.0;
        loss_n = 0;
        save(trainer, epoch, (0.0, 0), (train_secs, images), &last)?;
        if cfg.checkpoint_every > 0 && epoch % cfg.checkpoint_every == 0 {
            save(
                trainer,
                epoch,
                (0.0, 0),
                (train_secs, images),
                &ckpt_dir.join(format!("epoch-{epoch:04}.safetensors")),
            )?;
        }
        if agree(
            trainer,
            signal::requested() || cfg.stop_after_steps.is_some_and(|s| trainer.step >= s),
        ) {
            interrupted = epoch < cfg.epochs;
            break;
        }
    }
    let (total_secs, total_images) = (prior_secs + train_secs, prior_images + images);
    Ok(TrainSummary {
        steps: trainer.step,
        epochs_done: epoch,
        train_seconds: total_secs,
        images: total_images,
        images_per_s: total_images as f64 / total_secs.max(1e-9),
        session_steps: trainer.step - first_step,
        session_seconds: train_secs,
        session_images_per_s: images as f64 / train_secs.max(1e-9),
        last_epoch_loss,
        interrupted,
    })
}
