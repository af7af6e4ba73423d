//! DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision
//! Transformers"; facebookresearch/dino `main_dino.py`, `utils.py`): self-distillation
//! from an EMA teacher, with the teacher's outputs centred and sharpened.

use dfdx::prelude::*;

use super::{
    BuildArgs, CommFacts, Encoder, Loss, Method, MethodPlan, ModelFacts, Objective, ObjectiveError,
    StateTensor, StepBatch, check_finite, check_rows, check_state, check_temperature,
    moco::ema_update, state_tensors,
};
use crate::nn::model::{DinoLastLayer, Model};
use crate::nn::ops::{EngineDevice, T2};
use crate::nn::params::ParamStore;

/// The teacher temperature of epoch `epoch` (0-based): `DINOLoss`'s schedule,
/// `linspace(warmup, target, warmup_epochs)[epoch]` during the warmup, `target` after.
/// A warmup of one epoch uses `warmup` for it (`linspace` of one point).
pub fn teacher_temperature(epoch: usize, warmup: f64, target: f64, warmup_epochs: usize) -> f64 {
    if epoch >= warmup_epochs {
        return target;
    }
    if warmup_epochs == 1 {
        return warmup;
    }
    warmup + (target - warmup) * epoch as f64 / (warmup_epochs - 1) as f64
}

/// The teacher's EMA momentum at optimiser step `step` of `total` (`utils.cosine_scheduler`
/// from `base` to 1 without warmup): `1 − (1 − base)·(1 + cos(π·step/total))/2`; 1 from
/// `total` on.
pub fn teacher_momentum(step: u64, base: f64, total: u64) -> f64 {
    if total == 0 || step >= total {
        return 1.0;
    }
    let c = (std::f64::consts::PI * step as f64 / total as f64).cos();
    1.0 - (1.0 - base) * 0.5 * (1.0 + c)
}

/// The teacher's targets: `softmax((t − c) / τ_t)` per row of `teacher` (`rows × k`,
/// row-major) with the centre `center` (`k`), in `f64`.
pub fn teacher_targets(teacher: &[f32], center: &[f32], temperature: f64) -> Vec<f64> {
    let k = center.len();
    let mut out = Vec::with_capacity(teacher.len());
    for row in teacher.chunks(k) {
        let logits: Vec<f64> = row
            .iter()
            .zip(center)
            .map(|(&t, &c)| (t as f64 - c as f64) / temperature)
            .collect();
        let max = logits.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
        let e: Vec<f64> = logits.iter().map(|&l| (l - max).exp()).collect();
        let s: f64 = e.iter().sum();
        out.extend(e.iter().map(|x| x / s));
    }
    out
}

/// DINO's loss (`DINOLoss.forward`): `student` is `(V·N, K)` last-layer outputs of the
/// student, view-major (row `v·N + i`: crop `v` of image `i`, the global crops first);
/// `teacher` holds the teacher's outputs for the first `G` crops (`G·N × K`,
/// row-major, no gradient) and `center` the centre (`K`). With the teacher's targets
/// `q_g = softmax((t_g − c)/τ_t)` and the student's `log p_v = log_softmax(s_v/τ_s)`,
/// the loss is the mean over the `G·(V − 1)` pairs `(g, v ≠ g)` of
/// `mean_i Σ_k −q_g[i,k]·log p_v[i,k]`. The centre is read as it is (updating it is the
/// caller's next step, [`center_update`]).
pub fn loss<D: EngineDevice, T: Tape<f32, D>>(
    student: T2<D, T>,
    teacher: &[f32],
    center: &[f32],
    n: usize,
    student_temp: f32,
    teacher_temp: f64,
) -> Result<Tensor<(), f32, D, T>, ObjectiveError> {
    check_temperature(student_temp, "DINO student temperature")?;
    check_temperature(teacher_temp as f32, "DINO teacher temperature")?;
    let (m, k) = *student.shape();
    if n == 0 || !m.is_multiple_of(n) || m / n < 2 {
        return Err(ObjectiveError::Shape(format!(
            "DINO: {m} student rows are not at least 2 crops of {n} images"
        )));
    }
    let crops = m / n;
    if center.len() != k || teacher.is_empty() || !teacher.len().is_multiple_of(n * k) {
        return Err(ObjectiveError::Shape(format!(
            "DINO: a centre of {} and {} teacher values for {n} images × {k} outputs",
            center.len(),
            teacher.len()
        )));
    }
    let global = teacher.len() / (n * k);
    if global > crops {
        return Err(ObjectiveError::Shape(format!(
            "DINO: teacher outputs for {global} crops, the student has {crops}"
        )));
    }
    check_rows(&student, "DINO student outputs", m)?;
    check_finite(teacher, "DINO teacher outputs")?;
    let q = teacher_targets(teacher, center, teacher_temp);
    let terms = global * (crops - 1);
    let scale = 1.0 / (n as f64 * terms as f64);
    let mut w = vec![0.0f64; m * k];
    for g in 0..global {
        let qg = &q[g * n * k..(g + 1) * n * k];
        for v in (0..crops).filter(|&v| v != g) {
            for (d, s) in w[v * n * k..(v + 1) * n * k].iter_mut().zip(qg) {
                *d += s * scale;
            }
        }
    }
    let dev = student.device().clone();
    let w: Vec<f32> = w.into_iter().map(|x| x as f32).collect();
    let lsm = (student * (1.0 / student_temp)).log_softmax::<Axis<1>>();
    Ok((lsm * dev.tensor_from_vec(w, (m, k)))
        .sum::<(), _>()
        .negate())
}

/// `DINOLoss.update_center`: `c ← m·c + (1 − m)·sum / rows`, where `sum` is the sum of
/// the teacher's output rows (over every rank) and `rows` their number.
pub fn center_update(center: &mut [f32], sum: &[f64], rows: usize, momentum: f64) {
    for (c, s) in center.iter_mut().zip(sum) {
        *c = (*c as f64 * momentum + s / rows as f64 * (1.0 - momentum)) as f32;
    }
}

/// Column sums of `rows × k` values, in `f64`.
fn column_sums(values: &[f32], k: usize) -> Vec<f64> {
    let mut sum = vec![0.0f64; k];
    for row in values.chunks(k) {
        for (s, &x) in sum.iter_mut().zip(row) {
            *s += x as f64;
        }
    }
    sum
}

/// DINO's hyper-parameters (defaults: the reference's).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DinoConfig {
    /// Outputs of the last layer (the centre's size).
    pub out_dim: usize,
    /// Student temperature τ_s.
    pub student_temp: f32,
    /// Teacher temperature after the warmup.
    pub teacher_temp: f64,
    /// Teacher temperature at epoch 0.
    pub warmup_teacher_temp: f64,
    /// Epochs of the teacher temperature's warmup.
    pub warmup_teacher_temp_epochs: usize,
    /// Base EMA momentum of the teacher (cosine to 1).
    pub teacher_momentum: f64,
    /// Momentum of the centre.
    pub center_momentum: f64,
    /// Epochs during which the last layer is frozen.
    pub freeze_last_layer_epochs: u64,
    /// The first views, which the teacher sees (the global crops).
    pub global_views: usize,
}

impl Default for DinoConfig {
    /// `main_dino.py`'s defaults (2 global crops).
    fn default() -> Self {
        DinoConfig {
            out_dim: 65536,
            student_temp: 0.1,
            teacher_temp: 0.04,
            warmup_teacher_temp: 0.04,
            warmup_teacher_temp_epochs: 0,
            teacher_momentum: 0.996,
            center_momentum: 0.9,
            freeze_last_layer_epochs: 1,
            global_views: 2,
        }
    }
}

impl Method for DinoConfig {
    fn name(&self) -> &'static str {
        "dino"
    }

    fn state_layout(&self, _dim: usize) -> Vec<(String, Vec<usize>)> {
        vec![("center".into(), vec![1, self.out_dim])]
    }

    fn plan(&self, model: &ModelFacts) -> MethodPlan {
        let mut p = MethodPlan::from_layout(&self.state_layout(model.dim));
        // The teacher: a copy of the whole student (last layer included), forward only,
        // on the global crops.
        p.parts.insert(
            0,
            format!(
                "teacher (EMA of the student) of {} values, forward on {} global crops",
                model.encoder_floats, self.global_views
            ),
        );
        p.parts.insert(
            1,
            format!(
                "weight-normalised last layer {}→{} (parameters)",
                model.dim, self.out_dim
            ),
        );
        p.state_bytes += 4 * model.encoder_floats;
        p.extra_step_flops = model.view_forward_flops * self.global_views as f64;
        p
    }

    fn comm(&self, step: &CommFacts) -> (f64, usize) {
        // The sum of the teacher's outputs for the centre, all-reduced in f64.
        (self.out_dim as f64 * 8.0 * step.ring, 1)
    }

    fn build<D: EngineDevice>(
        &self,
        on: &BuildArgs<'_, D>,
    ) -> Result<Box<dyn Objective<D>>, ObjectiveError> {
        Ok(Box::new(Dino::new(
            on.encoder.model(),
            on.store,
            *self,
            on.views,
            on.epochs * on.steps_per_epoch,
            on.steps_per_epoch,
        )?))
    }
}

/// DINO as an [`Objective`]: the teacher (a copy of the student's store, never trained),
/// its EMA, the centre, and the last layer's freezing.
///
/// Per step, as `train_one_epoch` and `DINOLoss`: the teacher's EMA toward the student
/// with the momentum of the previous step (the reference updates the teacher right
/// after the optimiser step; here the next step's loss does it, before anything reads
/// the teacher, so the numbers are the same and a checkpoint — written between the two
/// — resumes bit-identically); the teacher's outputs for the global crops (training
/// mode: its own batch-norm statistics, as the reference's teacher); the student's for
/// every crop (consecutive same-size crops as one batch); the loss with the current
/// centre; then the centre update with the teacher's outputs of the whole global batch.
/// The last layer is not trainable (no update, momentum or decay) for the first
/// `freeze_last_layer_epochs` epochs, as `cancel_gradients_last_layer`.
#[derive(Clone, Debug)]
pub struct Dino<D: Device<f32>> {
    cfg: DinoConfig,
    teacher: ParamStore<D>,
    last: DinoLastLayer,
    center: Vec<f32>,
    views: usize,
    total_steps: u64,
    freeze_steps: u64,
}

impl<D: EngineDevice> Dino<D> {
    /// DINO for `model` (which must have DINO's last layer of `cfg.out_dim`) with its
    /// parameters in `store`, `views` crops per image of which the first
    /// `cfg.global_views` are global, over a run of `total_steps` optimiser steps of
    /// `steps_per_epoch` per epoch.
    pub fn new(
        model: &Model,
        store: &ParamStore<D>,
        cfg: DinoConfig,
        views: usize,
        total_steps: u64,
        steps_per_epoch: u64,
    ) -> Result<Self, ObjectiveError> {
        check_temperature(cfg.student_temp, "DINO student temperature")?;
        check_temperature(cfg.teacher_temp as f32, "DINO teacher temperature")?;
        check_temperature(
            cfg.warmup_teacher_temp as f32,
            "DINO warmup teacher temperature",
        )?;
        if !(0.0..1.0).contains(&cfg.teacher_momentum) {
            return Err(ObjectiveError::Config(format!(
                "DINO teacher momentum must be in [0, 1), got {}",
                cfg.teacher_momentum
            )));
        }
        if !(0.0..=1.0).contains(&cfg.center_momentum) {
            return Err(ObjectiveError::Config(format!(
                "DINO centre momentum must be in [0, 1], got {}",
                cfg.center_momentum
            )));
        }
        if cfg.global_views < 2 || cfg.global_views > views {
            return Err(ObjectiveError::Config(format!(
                "DINO needs at least 2 global crops among the {views} views, got {}",
                cfg.global_views
            )));
        }
        let Some(last) = model.last_layer.clone() else {
            return Err(ObjectiveError::Config(
                "DINO needs a model with its weight-normalised last layer".into(),
            ));
        };
        if last.out_dim != cfg.out_dim {
            return Err(ObjectiveError::Config(format!(
                "DINO's centre has {} outputs, the model's last layer {}",
                cfg.out_dim, last.out_dim
            )));
        }
        if total_steps == 0 {
            return Err(ObjectiveError::Config(
                "DINO's momentum schedule needs the run's length (epochs × steps per epoch > 0)"
                    .into(),
            ));
        }
        let mut teacher = store.clone();
        for e in teacher.entries_mut() {
            e.trainable = false;
        }
        Ok(Dino {
            cfg,
            teacher,
            last,
            center: vec![0.0; cfg.out_dim],
            views,
            total_steps,
            freeze_steps: cfg.freeze_last_layer_epochs * steps_per_epoch,
        })
    }

    /// The centre of the teacher's outputs.
    pub fn center(&self) -> &[f32] {
        &self.center
    }

    /// The teacher's outputs (last layer, before centring) for `views`, in training
    /// mode as the step runs it (its batch-norm statistics move).
    pub fn teacher_outputs(
        &mut self,
        encoder: &mut Encoder,
        views: &[crate::data::ViewBatch],
    ) -> Result<T2<D, NoneTape>, ObjectiveError> {
        let t = encoder.embed_no_grad(&mut self.teacher, views, true)?;
        Ok(self.last.forward(&self.teacher, t)?)
    }
}

impl<D: EngineDevice> Objective<D> for Dino<D> {
    fn prepare(
        &mut self,
        _encoder: &Encoder,
        store: &mut ParamStore<D>,
        step: u64,
        _epoch: usize,
    ) -> Result<(), ObjectiveError> {
        Objective::<D>::sync_flags(self, store, step);
        Ok(())
    }

    fn sync_flags(&self, store: &mut ParamStore<D>, step: u64) {
        for id in self.last.param_ids() {
            store.get_mut(id).trainable = step >= self.freeze_steps;
        }
    }

    fn loss(
        &mut self,
        encoder: &mut Encoder,
        store: &mut ParamStore<D>,
        batch: &StepBatch<'_>,
    ) -> Result<Loss<D>, ObjectiveError> {
        super::check_views("DINO", self.views, batch)?;
        let n = batch.indices.len();
        let g = self.cfg.global_views;
        // The EMA the reference makes after the previous step's optimiser update.
        if batch.step > 0 {
            let m = teacher_momentum(batch.step - 1, self.cfg.teacher_momentum, self.total_steps);
            super::timed("objective.state", || {
                ema_update(&mut self.teacher, store, m)
            })?;
        }
        let teacher = self.teacher_outputs(encoder, &batch.views[..g])?.as_vec();
        let z = encoder.embed(store, batch.views, true)?;
        if z.shape().0 != self.views * n || teacher.len() != g * n * self.cfg.out_dim {
            return Err(ObjectiveError::Shape(format!(
                "DINO: student embeddings {:?} and {} teacher values for {} views of {n} images",
                z.shape(),
                teacher.len(),
                self.views
            )));
        }
        let temp = teacher_temperature(
            batch.epoch,
            self.cfg.warmup_teacher_temp,
            self.cfg.teacher_temp,
            self.cfg.warmup_teacher_temp_epochs,
        );
        super::timed_loss(z, |z| {
            let started = std::time::Instant::now();
            let s = self.last.forward(store, z)?;
            let l = loss(s, &teacher, &self.center, n, self.cfg.student_temp, temp)?;
            crate::nn::ops::timing::record("objective.loss.fwd", started.elapsed());
            super::timed("objective.state", || {
                let mut sum = column_sums(&teacher, self.cfg.out_dim);
                let mut rows = g * n;
                if batch.dist.world() > 1 {
                    // The reference all-reduces the sum and divides by every rank's rows.
                    crate::dist::timed("comm.allreduce", || {
                        batch.dist.all_reduce_sum_f64(&mut sum)
                    });
                    rows *= batch.dist.world();
                }
                center_update(&mut self.center, &sum, rows, self.cfg.center_momentum);
            });
            Ok(l)
        })
    }

    fn state_layout(&self) -> Vec<(String, Vec<usize>)> {
        self.cfg.state_layout(0)
    }

    fn state(&self) -> Vec<StateTensor> {
        state_tensors(
            Objective::<D>::state_layout(self),
            vec![self.center.clone()],
        )
    }

    fn load_state(&mut self, tensors: &[StateTensor]) -> Result<(), ObjectiveError> {
        check_state(&Objective::<D>::state_layout(self), tensors)?;
        let c = &tensors
            .iter()
            .find(|t| t.name == "center")
            .expect("checked")
            .data;
        check_finite(c, "the DINO centre")?;
        self.center = c.clone();
        Ok(())
    }

    fn key_encoder(&self) -> Option<&ParamStore<D>> {
        Some(&self.teacher)
    }

    fn key_encoder_mut(&mut self) -> Option<&mut ParamStore<D>> {
        Some(&mut self.teacher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_follow_the_reference_formulas() {
        // np.linspace(0.04, 0.07, 3) = [0.04, 0.055, 0.07], then 0.07.
        let t: Vec<f64> = (0..5)
            .map(|e| teacher_temperature(e, 0.04, 0.07, 3))
            .collect();
        for (a, b) in t.iter().zip([0.04, 0.055, 0.07, 0.07, 0.07]) {
            assert!((a - b).abs() < 1e-15, "{t:?}");
        }
        assert_eq!(teacher_temperature(0, 0.04, 0.07, 1), 0.04);
        assert_eq!(teacher_temperature(0, 0.04, 0.07, 0), 0.07);
        assert!((teacher_momentum(0, 0.996, 100) - 0.996).abs() < 1e-15);
        assert!((teacher_momentum(50, 0.996, 100) - 0.998).abs() < 1e-15);
        assert_eq!(teacher_momentum(100, 0.996, 100), 1.0);
        let mut c = vec![1.0f32, 0.0];
        center_update(&mut c, &[4.0, 2.0], 2, 0.9);
        assert!(
            (c[0] - 1.1).abs() < 1e-6 && (c[1] - 0.1).abs() < 1e-6,
            "{c:?}"
        );
    }
}
