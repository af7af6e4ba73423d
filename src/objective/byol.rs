//! BYOL (Grill et al. 2020, "Bootstrap Your Own Latent: A New Approach to
//! Self-Supervised Learning"; reference code deepmind-research/byol): an online network
//! (backbone, projection head, predictor) regresses the projection of the other view
//! made by a target network (backbone and head, no predictor) whose weights are an
//! exponential moving average of the online ones, with a rate τ that rises to 1 over
//! the run. No negatives.

use dfdx::prelude::*;

use super::{
    BuildArgs, CommFacts, Encoder, Loss, Method, MethodPlan, ModelFacts, Objective, ObjectiveError,
    StepBatch, check_rows, check_views, per_view,
};
use crate::nn::model::Model;
use crate::nn::ops::{EngineDevice, T2};
use crate::nn::params::ParamStore;

/// The target network's EMA rate at step `step` of a run of `total` steps, from the
/// base rate `base`: `τ_k = 1 − (1 − τ_base)·(cos(π·k/K) + 1)/2` with `k` clipped to
/// `K` — BYOL's Eq. (in §3.2) and deepmind-research/byol's `schedules.target_ema`
/// (a cosine decay of `1 − τ` from `1 − τ_base` at step 0 to 0 at step `K`). A run of
/// 0 steps is treated as 1.
pub fn target_momentum(base: f64, step: u64, total: u64) -> f64 {
    let total = total.max(1);
    let k = step.min(total) as f64;
    let decay = 0.5 * (1.0 + (std::f64::consts::PI * k / total as f64).cos());
    1.0 - (1.0 - base) * decay
}

/// Rows `[view 1 of every image; view 0 of every image]` of view-major `(2N, d)` rows
/// `z`: row `r` of the result is the other view of row `r`'s image.
fn swap_views(z: &[f32], n: usize, d: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(z.len());
    out.extend_from_slice(&z[n * d..]);
    out.extend_from_slice(&z[..n * d]);
    out
}

/// `p` (online predictions, on the tape) and `z` (target projections, no tape): both
/// `(2N, d)` view-major (row `v·N + i` is view `v` of image `i`), each checked for its
/// rows and finite values; returns `(N, d, ẑ swapped)`: the target rows L2-normalised
/// and reordered so that row `r` is the other view of row `r`'s image.
pub(crate) fn paired_targets<D: EngineDevice, T: Tape<f32, D>>(
    method: &str,
    p: &T2<D, T>,
    z: T2<D, NoneTape>,
) -> Result<(usize, usize, T2<D, NoneTape>), ObjectiveError> {
    let (rows, d) = *p.shape();
    let n = per_view(rows, 2, &format!("{method} predictions"))?;
    check_rows(p, &format!("{method} predictions"), rows)?;
    check_rows(&z, &format!("{method} targets"), rows)?;
    if z.shape().1 != d {
        return Err(ObjectiveError::Shape(format!(
            "{method}: predictions have {d} features, targets {}",
            z.shape().1
        )));
    }
    let dev = p.device().clone();
    let zn = D::l2_normalize(z, 1e-12).as_vec();
    Ok((n, d, dev.tensor_from_vec(swap_views(&zn, n, d), (rows, d))))
}

/// BYOL's loss: `p` are the online predictions of both views and `z` the target
/// projections (no tape), both raw `(2N, d)` rows, view-major (row `v·N + i` is view `v`
/// of image `i`). Each prediction is regressed onto the other view's target,
/// `‖p̂ − ẑ′‖²` with both L2-normalised (`= 2 − 2·cos`), and the loss is
/// `(1/N)·Σ_i (‖p̂₁ᵢ − ẑ′₂ᵢ‖² + ‖p̂₂ᵢ − ẑ′₁ᵢ‖²)`: deepmind-research/byol's
/// `regression_loss` for each direction, the two added, then the mean over the batch
/// (`jnp.mean` of the sum), so the loss lies in [0, 8].
///
/// The reference normalises with `x·rsqrt(max(‖x‖², 1e-12))`; here `x / max(‖x‖,
/// 1e-12)`, the same for any row whose norm exceeds 1e-6.
pub fn loss<D: EngineDevice, T: Tape<f32, D>>(
    p: T2<D, T>,
    z: T2<D, NoneTape>,
) -> Result<Tensor<(), f32, D, T>, ObjectiveError> {
    let (n, _, zs) = paired_targets("BYOL", &p, z)?;
    let pn = D::l2_normalize(p, 1e-12);
    Ok((pn - zs).square().sum::<(), _>() * (1.0 / n as f32))
}

/// The target network's EMA step `ξ ← ξ + (1 − τ)·(θ − ξ)` (deepmind-research/byol's
/// update, `= τ·ξ + (1 − τ)·θ`) for every parameter of `target` (not its batch-norm
/// statistics, which its own forward passes move), from the entry of the same name in
/// `online`. The online store's other entries (the predictor) are not read.
pub fn ema_update<D: Device<f32>>(
    target: &mut ParamStore<D>,
    online: &ParamStore<D>,
    tau: f64,
) -> Result<(), ObjectiveError> {
    if !(0.0..=1.0).contains(&tau) {
        return Err(ObjectiveError::Config(format!(
            "the target's EMA rate must be in [0, 1], got {tau}"
        )));
    }
    let c = (1.0 - tau) as f32;
    let ids: Vec<_> = target.ids().collect();
    for id in ids {
        let t = target.get(id);
        if !t.role.is_trainable() {
            continue;
        }
        let Some(oid) = online.id(&t.name) else {
            return Err(ObjectiveError::State(format!(
                "the online network has no `{}`",
                t.name
            )));
        };
        let o = online.get(oid);
        if o.shape != t.shape {
            return Err(ObjectiveError::State(format!(
                "`{}` has shape {:?} in the target network and {:?} in the online network",
                t.name, t.shape, o.shape
            )));
        }
        let updated = t.tensor.clone() + (o.tensor.clone() - t.tensor.clone()) * c;
        target.get_mut(id).tensor = updated;
    }
    Ok(())
}

/// A copy of `online` without the predictor's entries (BYOL's target network: backbone
/// and head, with their batch-norm statistics), never trained. The predictor is
/// registered last, so every remaining entry keeps its id and the online [`Model`]
/// runs on the copy.
pub fn target_network<D: Device<f32>>(
    online: &ParamStore<D>,
) -> Result<ParamStore<D>, ObjectiveError> {
    let mut target = ParamStore::new(online.device().clone());
    for e in online.entries() {
        if Model::is_predictor_entry(&e.name) {
            continue;
        }
        let id = target
            .add(e.name.clone(), &e.shape, e.tensor.as_vec(), e.role)
            .map_err(|err| ObjectiveError::State(err.to_string()))?;
        if online.id(&e.name) != Some(id) {
            return Err(ObjectiveError::State(format!(
                "`{}` follows the predictor's entries; the target network needs the predictor registered last",
                e.name
            )));
        }
        let t = target.get_mut(id);
        t.trainable = false;
        t.decay = e.decay;
    }
    Ok(target)
}

/// BYOL's hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ByolConfig {
    /// Base EMA rate τ_base of the target network (BYOL: 0.996).
    pub momentum: f64,
}

impl Method for ByolConfig {
    fn name(&self) -> &'static str {
        "byol"
    }

    fn plan(&self, model: &ModelFacts) -> MethodPlan {
        let target = model.encoder_floats - model.predictor_floats;
        // The target runs forward only, on both views (the estimate counts the
        // predictor's small share of a view's forward too).
        MethodPlan {
            parts: vec![format!(
                "target network of {target} values (EMA of backbone and head)"
            )],
            state_bytes: 4 * target,
            extra_step_flops: 2.0 * model.view_forward_flops,
            ..MethodPlan::default()
        }
    }

    fn comm(&self, _step: &CommFacts) -> (f64, usize) {
        // Every rank regresses its own images onto its own targets; the gradient
        // average (and synchronised batch norm) is all that crosses ranks, as the
        // reference's `pmean` of the gradients.
        (0.0, 0)
    }

    fn build<D: EngineDevice>(
        &self,
        on: &BuildArgs<'_, D>,
    ) -> Result<Box<dyn Objective<D>>, ObjectiveError> {
        Ok(Box::new(Byol::new(
            on.encoder,
            on.store,
            *self,
            on.views,
            on.epochs.saturating_mul(on.steps_per_epoch),
        )?))
    }
}

/// BYOL as an [`Objective`]: the target network and its EMA schedule.
///
/// Per step, as deepmind-research/byol's `_update_fn`: both views through the online
/// network (each view a batch of its own, so batch norm sees one view at a time, as
/// the reference's `apply_once_fn`), then through the target network in training mode
/// (its own batch-norm statistics move), the loss, and after the optimiser step the
/// EMA `ξ ← ξ + (1 − τ_k)(θ_{k+1} − ξ)` with step `k`'s rate. The training step calls
/// the loss before the optimiser, so that EMA is made at the start of the next step's
/// loss (step `k + 1`, before any forward pass), which computes the same values; a
/// checkpoint after step `k` therefore holds the target before that update, and a
/// resumed run makes it as the uninterrupted one does.
///
/// The target starts as a copy of the online network (the paper's initialisation; the
/// reference draws it from a second seed and notes no difference).
#[derive(Clone, Debug)]
pub struct Byol<D: Device<f32>> {
    cfg: ByolConfig,
    target: ParamStore<D>,
    total_steps: u64,
}

impl<D: EngineDevice> Byol<D> {
    /// The target network copied from `store` for a run of `total_steps` steps.
    pub fn new(
        encoder: &Encoder,
        store: &ParamStore<D>,
        cfg: ByolConfig,
        views: usize,
        total_steps: u64,
    ) -> Result<Self, ObjectiveError> {
        if !(0.0..1.0).contains(&cfg.momentum) {
            return Err(ObjectiveError::Config(format!(
                "BYOL's base momentum must be in [0, 1), got {}",
                cfg.momentum
            )));
        }
        if views != 2 {
            return Err(ObjectiveError::Config(format!(
                "BYOL needs exactly 2 views per image, the recipe makes {views}"
            )));
        }
        if encoder.model().predictor.is_none() {
            return Err(ObjectiveError::Config(
                "BYOL needs a predictor on the projection head (model.predictor)".into(),
            ));
        }
        Ok(Byol {
            cfg,
            target: target_network(store)?,
            total_steps,
        })
    }

    /// The EMA rate of step `step`'s update.
    pub fn momentum_at(&self, step: u64) -> f64 {
        target_momentum(self.cfg.momentum, step, self.total_steps)
    }
}

/// Rows on the step's tape.
type Taped<D> = T2<D, OwnedTape<f32, D>>;

/// Both views' online predictions, `(2N, d)` view-major, on the tape: each view is its
/// own batch through backbone, head and predictor (batch norm per view, as BYOL's and
/// SimSiam's references). Also returns the projections' values (for SimSiam's
/// stop-gradient targets).
pub(crate) fn predictions<D: EngineDevice>(
    encoder: &mut Encoder,
    store: &mut ParamStore<D>,
    batch: &StepBatch<'_>,
) -> Result<(Taped<D>, Vec<f32>), ObjectiveError> {
    let mut preds: Option<Taped<D>> = None;
    let mut projections = Vec::new();
    for v in 0..batch.views.len() {
        let z = encoder.embed(store, &batch.views[v..v + 1], true)?;
        projections.extend(z.as_vec());
        let p = encoder.model().predict(store, z, true)?;
        preds = Some(match preds {
            None => p,
            Some(prev) => (prev, p).concat_along(Axis::<0>),
        });
    }
    let p = preds.ok_or_else(|| ObjectiveError::Shape("a batch without views".into()))?;
    Ok((p, projections))
}

impl<D: EngineDevice> Objective<D> for Byol<D> {
    fn loss(
        &mut self,
        encoder: &mut Encoder,
        store: &mut ParamStore<D>,
        batch: &StepBatch<'_>,
    ) -> Result<Loss<D>, ObjectiveError> {
        check_views("BYOL", 2, batch)?;
        // The previous step's EMA (see the type's docs): the online weights are now
        // those its optimiser step made.
        if batch.step > 0 {
            let tau = self.momentum_at(batch.step - 1);
            super::timed("objective.state", || {
                ema_update(&mut self.target, store, tau)
            })?;
        }
        let (p, _) = predictions(encoder, store, batch)?;
        super::timed_loss(p, |p| {
            let mut target: Option<T2<D, NoneTape>> = None;
            for v in 0..2 {
                let z = encoder.embed_no_grad(&mut self.target, &batch.views[v..v + 1], true)?;
                target = Some(match target {
                    None => z,
                    Some(prev) => (prev, z).concat_along(Axis::<0>),
                });
            }
            let z = target.expect("two views");
            super::timed("objective.loss.fwd", || loss(p, z))
        })
    }

    fn key_encoder(&self) -> Option<&ParamStore<D>> {
        Some(&self.target)
    }

    fn key_encoder_mut(&mut self) -> Option<&mut ParamStore<D>> {
        Some(&mut self.target)
    }
}
