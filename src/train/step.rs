//! One training step of a recipe: the objective's loss on the tape, backward, the
//! optimiser update at the scheduled learning rate — the step `recipe run` takes and
//! `recipe bench` times.

use std::path::Path;
use std::time::Instant;

use dfdx::prelude::*;

use super::TrainError;
use crate::checkpoint::{self, CheckpointMeta, Sections};
use crate::data::Batch;
use crate::dist::{self, Dist};
use crate::nn::model::Model;
use crate::nn::ops::{EngineDevice, timing};
use crate::nn::params::ParamStore;
use crate::objective::{self, Encoder, MethodConfig, Objective, StepBatch};
use crate::optim::Optimizer;
use crate::optim::schedule::Schedule;

/// What one step measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepStats {
    /// The loss before the update.
    pub loss: f32,
    /// The learning rate the update used.
    pub lr: f64,
}

/// Everything that changes while a recipe trains: the encoder's parameters, the
/// optimiser, the schedule's position and the objective's state.
pub struct Trainer<D: EngineDevice> {
    /// The encoder (backbone, head, prototypes), re-planned per view size.
    pub encoder: Encoder,
    /// Its parameters and buffers.
    pub store: ParamStore<D>,
    /// The optimiser with its state.
    pub optimizer: Optimizer<D>,
    /// The learning rate of every step.
    pub schedule: Schedule,
    /// The method and its state.
    pub objective: Box<dyn Objective<D>>,
    /// The method's configuration.
    pub method: MethodConfig,
    /// Optimiser steps taken.
    pub step: u64,
    /// The ranks of a data-parallel job ([`dist::Solo`] by default).
    dist: Dist,
    /// Synchronise batch-norm statistics over the ranks (`train.sync_batch_norm`).
    sync_bn: bool,
}

/// The engine-level description of a training run, free of recipe types (what
/// `build::trainer_parts` makes of a recipe, and what
/// the engine benchmark's presets write directly).
#[derive(Clone, Debug)]
pub struct TrainerParts {
    /// The encoder, planned for the largest view.
    pub model: crate::nn::model::ModelConfig,
    /// Seed of the initial weights and of the objective's state.
    pub seed: u64,
    /// Optimiser.
    pub optimizer: crate::optim::OptimizerConfig,
    /// Which entries get weight decay.
    pub decay: crate::nn::params::DecayPolicy,
    /// Schedule shape.
    pub schedule: crate::optim::schedule::ScheduleConfig,
    /// Peak learning rate (already scaled).
    pub peak_lr: f64,
    /// Epochs of the run.
    pub epochs: u64,
    /// Optimiser steps per epoch.
    pub steps_per_epoch: u64,
    /// The objective.
    pub method: MethodConfig,
    /// Views per image.
    pub views: usize,
    /// Images per step.
    pub batch: usize,
}

impl<D: EngineDevice> Trainer<D> {
    /// Builds a trainer: the model from the seed, the weight-decay policy, the
    /// optimiser, the schedule and the objective.
    pub fn from_parts(dev: D, p: &TrainerParts) -> Result<Self, TrainError> {
        let mut store = ParamStore::new(dev);
        let model = Model::new(&mut store, &p.model, p.seed)?;
        store.apply_decay_policy(p.decay);
        let optimizer = Optimizer::new(p.optimizer)?;
        let schedule = Schedule::new(&p.schedule, p.peak_lr, p.epochs, p.steps_per_epoch)?;
        let encoder = Encoder::new(model);
        let objective = objective::build(
            &p.method,
            &encoder,
            &store,
            p.views,
            p.batch,
            p.seed,
            p.epochs,
            p.steps_per_epoch,
        )?;
        Ok(Trainer {
            encoder,
            store,
            optimizer,
            schedule,
            objective,
            method: p.method.clone(),
            step: 0,
            dist: dist::solo(),
            sync_bn: false,
        })
    }

    /// Makes this trainer one rank of the data-parallel job `dist`: every rank takes rank
    /// 0's parameters and buffers (so they start identical whatever each rank's
    /// initialisation did), then checks that all ranks agree. `sync_bn` synchronises
    /// batch-norm statistics over the ranks in training steps. With one rank only the
    /// flag is stored.
    pub fn set_collective(&mut self, dist: Dist, sync_bn: bool) -> Result<(), TrainError> {
        self.sync_bn = sync_bn;
        if dist.world() > 1 {
            dist::grads::broadcast_store(&*dist, &mut self.store, 0).map_err(TrainError::Other)?;
            if let Some(key) = self.objective.key_encoder_mut() {
                dist::grads::broadcast_store(&*dist, key, 0).map_err(TrainError::Other)?;
            }
            dist::grads::check_same(&*dist, &self.store, "the initial parameters")
                .map_err(TrainError::Other)?;
        }
        self.dist = dist;
        Ok(())
    }

    /// The ranks this trainer trains with.
    pub fn collective(&self) -> &Dist {
        &self.dist
    }

    /// Errors unless every rank holds the same parameters (a digest comparison; cheap
    /// next to a step). A no-op in a single process.
    pub fn check_ranks_agree(&self) -> Result<(), TrainError> {
        dist::grads::check_same(&*self.dist, &self.store, "the parameters")
            .map_err(TrainError::Other)
    }

    /// One step on `batch` in epoch `epoch` (0-based). A non-finite loss is
    /// [`TrainError::Diverged`] and leaves the parameters and the optimiser as they were.
    ///
    /// In a data-parallel job `batch` is this rank's slice of the global batch; the
    /// gradients are averaged over the ranks before the update and the loss returned is
    /// the mean over ranks (the single-process loss).
    pub fn step(&mut self, batch: &Batch, epoch: usize) -> Result<StepStats, TrainError> {
        if self.sync_bn && self.dist.world() > 1 {
            let hook = std::rc::Rc::new(dist::SyncBatchNorm(self.dist.clone()));
            return crate::nn::ops::bn_sync::with_bn_sync(hook, || self.step_inner(batch, epoch));
        }
        self.step_inner(batch, epoch)
    }

    fn step_inner(&mut self, batch: &Batch, epoch: usize) -> Result<StepStats, TrainError> {
        let lr = self.schedule.lr(self.step);
        self.objective
            .prepare(&self.encoder, &mut self.store, self.step, epoch)?;
        let sb = StepBatch {
            views: &batch.views,
            indices: &batch.indices,
            labels: batch.labels.as_deref(),
            epoch,
            step: self.step,
            dist: &*self.dist,
        };
        let loss = match self.objective.loss(&mut self.encoder, &mut self.store, &sb) {
            Ok(l) => l,
            // NaN or infinite embeddings: the parameters have already diverged.
            Err(crate::objective::ObjectiveError::NonFinite(_)) => {
                return Err(TrainError::Diverged {
                    step: self.step,
                    epoch,
                    loss: f32::NAN,
                });
            }
            Err(e) => return Err(e.into()),
        };
        let mut value = loss.as_vec()[0];
        if self.dist.world() > 1 {
            // Every rank decides on the same (mean) loss, so all stop together.
            let mut v = [value as f64];
            dist::timed("comm.allreduce", || self.dist.all_reduce_sum_f64(&mut v));
            value = (v[0] / self.dist.world() as f64) as f32;
        }
        if !value.is_finite() {
            return Err(TrainError::Diverged {
                step: self.step,
                epoch,
                loss: value,
            });
        }
        let mut grads = loss.backward();
        if self.dist.world() > 1 {
            dist::grads::average(&*self.dist, &self.store, &mut grads)
                .map_err(TrainError::Other)?;
        }
        let t = Instant::now();
        self.optimizer.step(&mut self.store, &mut grads, lr)?;
        timing::record("optimizer", t.elapsed());
        self.step += 1;
        Ok(StepStats { loss: value, lr })
    }

    /// Writes a checkpoint of everything that changes while training (model, key
    /// encoder, optimiser, objective state) with `meta`'s epoch and RNG state; the step
    /// is this trainer's.
    pub fn save(&mut self, path: &Path, meta: &CheckpointMeta) -> Result<(), TrainError> {
        self.objective.sync_flags(&mut self.store, self.step);
        let opt = self.optimizer.state(&self.store);
        let state = self.objective.state();
        let meta = CheckpointMeta {
            step: self.step,
            ..meta.clone()
        };
        checkpoint::save_training(
            path,
            &Sections {
                model: &self.store,
                key_encoder: self.objective.key_encoder(),
                optimizer: Some(&opt),
                objective: &state,
            },
            &meta,
        )?;
        Ok(())
    }

    /// Restores a checkpoint written by [`save`](Self::save); nothing changes on a
    /// mismatch. Returns its metadata.
    pub fn load(&mut self, path: &Path) -> Result<CheckpointMeta, TrainError> {
        let saved = checkpoint::read_meta(path)?;
        self.objective.sync_flags(&mut self.store, saved.step);
        let layout = self.objective.state_layout();
        let (meta, state) = checkpoint::load_training(
            path,
            &mut self.store,
            Some(&mut self.optimizer),
            self.objective.key_encoder_mut(),
            Some(&layout),
        )?;
        self.objective.load_state(&state)?;
        self.step = meta.step;
        Ok(meta)
    }
}
