//! The contrastive objectives: a loss on the tape from a batch of views, and the state
//! each method keeps between steps.
//!
//! Two layers, both public:
//! - one module per method with plain functions on dfdx tensors, usable without a
//!   recipe or a model: [`nt_xent::loss`], [`supcon::loss`], [`moco::loss`] (with
//!   [`moco::KeyQueue`] and [`moco::ema_update`]), [`memory_bank::loss`] (with
//!   [`memory_bank::MemoryBank`]), [`swav::sinkhorn`] and [`swav::loss`],
//!   [`rotation::loss`] (with [`rotation::rotate_square`]: RotNet's pretext task, whose
//!   loss is a classifier's cross-entropy on the head's outputs, not normalised
//!   embeddings),
//!   [`byol::loss`] (with [`byol::target_momentum`] and [`byol::ema_update`]) and
//!   [`simsiam::loss`], [`barlow_twins::loss`], [`vicreg::loss`] and [`dino::loss`] (with its
//!   schedules and [`dino::center_update`]). Each function's doc comment gives its row
//!   layout.
//! - the [`Objective`] trait, which the training step drives: it runs the encoder on a
//!   batch of views, computes the method's loss, and updates the method's state (MoCo's
//!   key encoder and queue, the memory bank, SwAV's prototypes and queue, BYOL's
//!   target network, DINO's teacher and centre) exactly when the reference code does. [`build`] makes one from a [`MethodConfig`].
//!
//! A method is described once, in its own file: its config (`nt_xent::SimclrConfig`,
//! `moco::MocoConfig`, …) implements [`Method`] — its name, its state layout, its costs
//! for `recipe plan`, its communication, and the objective it builds. [`MethodConfig`]
//! has one variant per method and dispatches through one exhaustive match (`method.rs`).
//! Shared pieces: `scaffold.rs` (the timing and the gather over ranks around every
//! loss), `rows.rs` (the row helpers of the methods that score against stored rows).
//!
//! Invariants:
//! - Callers pass raw head outputs. The contrastive losses L2-normalise them inside;
//!   Barlow Twins batch-normalises each feature instead, VICReg uses them as they are,
//!   as their references do, and rotation prediction's head outputs are logits.
//! - State that is not a parameter (queues, banks, the key encoder) never receives a
//!   gradient: it enters the graph as tape-less tensors.
//! - Every shape or value a method cannot work with is an [`ObjectiveError`], checked
//!   before any dfdx op runs (dfdx panics on mismatched shapes); NaN or infinite
//!   embeddings are an error, not a NaN loss.
//! - [`Objective::state`] and [`Objective::load_state`] round-trip everything the method
//!   keeps, so a resumed run continues bit-identically.

pub mod barlow_twins;
pub mod byol;
pub mod dino;
pub mod memory_bank;
mod method;
pub mod moco;
pub mod nt_xent;
pub mod rotation;
mod rows;
mod scaffold;
pub mod simsiam;
pub mod supcon;
pub mod swav;
pub mod vicreg;

use std::fmt;

use dfdx::prelude::*;

use crate::data::ViewBatch;
use crate::dist::Collective;
use crate::nn::ModelError;
use crate::nn::model::Model;
use crate::nn::ops::{EngineDevice, T2};
use crate::nn::params::ParamStore;
pub use crate::optim::StateTensor;
pub use method::{BuildArgs, CommFacts, Method, MethodConfig, MethodPlan, ModelFacts, build};
pub use scaffold::BackwardTimer;
pub(crate) use scaffold::{batch_loss, gather_labels, timed, timed_loss};

/// The scalar loss of a step, on the tape.
pub type Loss<D> = Tensor<(), f32, D, OwnedTape<f32, D>>;

/// Why an objective cannot compute its loss or restore its state.
#[derive(Debug, Clone, PartialEq)]
pub enum ObjectiveError {
    /// Inputs whose shapes do not fit the method (row counts, labels, queue sizes).
    Shape(String),
    /// NaN or infinite embeddings.
    NonFinite(String),
    /// A hyper-parameter the method cannot use.
    Config(String),
    /// The encoder failed (input shape).
    Model(ModelError),
    /// A saved state that does not fit this objective.
    State(String),
}

impl fmt::Display for ObjectiveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ObjectiveError::Shape(m) => write!(f, "objective input: {m}"),
            ObjectiveError::NonFinite(m) => write!(f, "non-finite values: {m}"),
            ObjectiveError::Config(m) => write!(f, "objective configuration: {m}"),
            ObjectiveError::Model(e) => write!(f, "{e}"),
            ObjectiveError::State(m) => write!(f, "objective state: {m}"),
        }
    }
}

impl std::error::Error for ObjectiveError {}

impl From<ModelError> for ObjectiveError {
    fn from(e: ModelError) -> Self {
        ObjectiveError::Model(e)
    }
}

/// Errors unless `z` has `rows` rows and only finite values.
pub(crate) fn check_rows<D: Device<f32>, T>(
    z: &T2<D, T>,
    what: &str,
    rows: usize,
) -> Result<(), ObjectiveError> {
    let (r, d) = *z.shape();
    if r != rows {
        return Err(ObjectiveError::Shape(format!(
            "{what}: expected {rows} rows, found {r}"
        )));
    }
    if d == 0 {
        return Err(ObjectiveError::Shape(format!(
            "{what}: zero-width embeddings"
        )));
    }
    check_finite(&z.as_vec(), what)
}

pub(crate) fn check_finite(v: &[f32], what: &str) -> Result<(), ObjectiveError> {
    match v.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(i) => Err(ObjectiveError::NonFinite(format!(
            "{what} has {} at element {i}",
            v[i]
        ))),
    }
}

/// Errors unless `batch` has the `expected` views the method was built for.
pub(crate) fn check_views(
    method: &str,
    expected: usize,
    batch: &StepBatch<'_>,
) -> Result<(), ObjectiveError> {
    if batch.views.len() == expected {
        Ok(())
    } else {
        Err(ObjectiveError::Shape(format!(
            "{method} was built for {expected} views, the batch has {}",
            batch.views.len()
        )))
    }
}

pub(crate) fn check_temperature(t: f32, what: &str) -> Result<(), ObjectiveError> {
    if t.is_finite() && t > 0.0 {
        Ok(())
    } else {
        Err(ObjectiveError::Config(format!(
            "{what} must be a positive number, got {t}"
        )))
    }
}

/// Rows per view of view-major embeddings with `rows` rows and `views` views.
pub(crate) fn per_view(rows: usize, views: usize, what: &str) -> Result<usize, ObjectiveError> {
    if views == 0 || rows == 0 || !rows.is_multiple_of(views) {
        return Err(ObjectiveError::Shape(format!(
            "{what}: {rows} rows cannot be {views} views of the same images (view-major layout needs a multiple of {views})"
        )));
    }
    Ok(rows / views)
}

/// The multi-positive InfoNCE shared by NT-Xent and SupCon: with `zn` L2-normalised
/// `(m, d)` rows, logits `zn·znᵀ / τ` without the diagonal, and
/// `loss = Σ_{a,p} w[a,p] · (−log softmax_a[p])` for a weight matrix `w` that is zero
/// on the diagonal.
pub(crate) fn weighted_info_nce<D: EngineDevice, T: Tape<f32, D>>(
    z: T2<D, T>,
    temperature: f32,
    weights: Vec<f32>,
) -> Tensor<(), f32, D, T> {
    let m = z.shape().0;
    let dev = z.device().clone();
    let zn = D::l2_normalize(z, 1e-12);
    // Scaling one side gives it a new id: a matmul of a tensor with itself panics.
    let zs = zn.retaped::<T>() * (1.0 / temperature);
    let sim = zs.matmul(zn.permute::<_, Axes2<1, 0>>());
    let mut mask = vec![0.0f32; m * m];
    for i in 0..m {
        // exp(−1e9) is exactly 0 in f32: the anchor is no candidate of its own softmax.
        mask[i * m + i] = -1e9;
    }
    let lsm = (sim + dev.tensor_from_vec(mask, (m, m))).log_softmax::<Axis<1>>();
    (lsm * dev.tensor_from_vec(weights, (m, m)))
        .sum::<(), _>()
        .negate()
}

/// [`weighted_info_nce`] for the anchors `anchors` (rows of `z`) only: logits
/// `z[anchors]·zᵀ / τ` without each anchor's own column, and
/// `Σ_i Σ_p w[i,p] · (−log softmax_i[p])` for `w` of shape `(anchors, m)`. With every row
/// an anchor it is the same sum as [`weighted_info_nce`].
pub(crate) fn weighted_info_nce_rows<D: EngineDevice, T: Tape<f32, D>>(
    z: T2<D, T>,
    anchors: &[usize],
    temperature: f32,
    weights: Vec<f32>,
) -> Tensor<(), f32, D, T> {
    let m = z.shape().0;
    let a = anchors.len();
    let dev = z.device().clone();
    let zn = D::l2_normalize(z, 1e-12);
    let idx = dev.tensor_from_vec(anchors.to_vec(), (a,));
    let za = zn.retaped::<T>().gather(idx) * (1.0 / temperature);
    let sim = za.matmul(zn.permute::<_, Axes2<1, 0>>());
    let mut mask = vec![0.0f32; a * m];
    for (i, &r) in anchors.iter().enumerate() {
        mask[i * m + r] = -1e9;
    }
    let lsm = (sim + dev.tensor_from_vec(mask, (a, m))).log_softmax::<Axis<1>>();
    (lsm * dev.tensor_from_vec(weights, (a, m)))
        .sum::<(), _>()
        .negate()
}

/// What the step hands an objective: the views of one batch and where they came from.
///
/// In a data-parallel job the views, indices and labels are this rank's slice of the
/// global batch (images `[r·B/K, (r+1)·B/K)`), and `dist` reaches the other ranks.
#[derive(Clone, Copy, Debug)]
pub struct StepBatch<'a> {
    /// One entry per view, in the augmentation's order (SwAV: global crops first).
    pub views: &'a [ViewBatch],
    /// Dataset index of each image (the memory bank's rows).
    pub indices: &'a [usize],
    /// Class of each image, when the data is labelled.
    pub labels: Option<&'a [u32]>,
    /// Epoch being trained (0-based).
    pub epoch: usize,
    /// Optimiser steps taken before this one.
    pub step: u64,
    /// The job's ranks ([`dist::Solo`](crate::dist::Solo) in a single process).
    pub dist: &'a dyn Collective,
}

/// The encoder of a run: one model, re-planned for every view size it meets.
#[derive(Clone, Debug)]
pub struct Encoder {
    model: Model,
    sized: Vec<((usize, usize), Model)>,
}

impl Encoder {
    /// Wraps `model` (planned for the largest view).
    pub fn new(model: Model) -> Self {
        Encoder {
            model,
            sized: Vec::new(),
        }
    }

    /// The model as planned.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The model planned for `hw`, cached.
    pub fn at(&mut self, hw: (usize, usize)) -> Result<&Model, ModelError> {
        if (self.model.input.1, self.model.input.2) == hw {
            return Ok(&self.model);
        }
        if let Some(i) = self.sized.iter().position(|(s, _)| *s == hw) {
            return Ok(&self.sized[i].1);
        }
        let m = self.model.with_input(hw)?;
        self.sized.push((hw, m));
        Ok(&self.sized.last().expect("just pushed").1)
    }

    /// Head outputs of `views`, stacked view-major: consecutive views of one size go
    /// through the network as one batch (as SimCLR's and SwAV's code do: batch-norm
    /// statistics over all of them), sizes one after another. `train` selects batch
    /// statistics; the input is traced when `T` is a tape.
    pub fn embed<D: EngineDevice>(
        &mut self,
        store: &mut ParamStore<D>,
        views: &[ViewBatch],
        train: bool,
    ) -> Result<T2<D, OwnedTape<f32, D>>, ObjectiveError> {
        let mut out: Option<T2<D, OwnedTape<f32, D>>> = None;
        for group in group_by_shape(views) {
            let x = stack(store.device(), group)?;
            let hw = (group[0].shape[2], group[0].shape[3]);
            let model = self.at(hw)?.clone();
            let z = model.project(store, x.trace(Gradients::leaky()), train)?;
            out = Some(match out {
                None => z,
                Some(prev) => (prev, z).concat_along(Axis::<0>),
            });
        }
        out.ok_or_else(|| ObjectiveError::Shape("a batch without views".into()))
    }

    /// [`embed`](Self::embed) without a tape (key encoders, evaluation).
    pub fn embed_no_grad<D: EngineDevice>(
        &mut self,
        store: &mut ParamStore<D>,
        views: &[ViewBatch],
        train: bool,
    ) -> Result<T2<D, NoneTape>, ObjectiveError> {
        let mut out: Option<T2<D, NoneTape>> = None;
        for group in group_by_shape(views) {
            let x = stack(store.device(), group)?;
            let hw = (group[0].shape[2], group[0].shape[3]);
            let model = self.at(hw)?.clone();
            let z = model.project(store, x, train)?;
            out = Some(match out {
                None => z,
                Some(prev) => (prev, z).concat_along(Axis::<0>),
            });
        }
        out.ok_or_else(|| ObjectiveError::Shape("a batch without views".into()))
    }
}

fn group_by_shape(views: &[ViewBatch]) -> Vec<&[ViewBatch]> {
    let mut groups = Vec::new();
    let mut start = 0;
    for i in 1..=views.len() {
        if i == views.len() || views[i].shape[1..] != views[start].shape[1..] {
            groups.push(&views[start..i]);
            start = i;
        }
    }
    groups
}

/// The views of one group as one `(Σ b, c, h, w)` tensor.
fn stack<D: Device<f32>>(
    dev: &D,
    group: &[ViewBatch],
) -> Result<crate::nn::ops::T4<D, NoneTape>, ObjectiveError> {
    let [b0, c, h, w] = group[0].shape;
    if group.iter().any(|v| v.shape[0] != b0) {
        return Err(ObjectiveError::Shape(
            "views of one batch have different image counts".into(),
        ));
    }
    let mut data = Vec::with_capacity(group.len() * b0 * c * h * w);
    for v in group {
        if v.data.len() != b0 * c * h * w {
            return Err(ObjectiveError::Shape(format!(
                "a view holds {} values, its shape {:?} needs {}",
                v.data.len(),
                v.shape,
                b0 * c * h * w
            )));
        }
        data.extend_from_slice(&v.data);
    }
    Ok(dev.tensor_from_vec(data, (group.len() * b0, c, h, w)))
}

/// A contrastive method with its state, driven by the training step.
///
/// Per step the caller runs [`prepare`](Self::prepare), then [`loss`](Self::loss),
/// backward and the optimiser step. State updates that the reference code makes inside
/// its forward pass (MoCo's EMA and enqueue, the bank update, SwAV's queue) happen
/// inside `loss`, in the reference's order. Made by the method config's
/// [`Method::build`], which also holds the method's name and state layout.
pub trait Objective<D: EngineDevice> {
    /// Work before the forward pass of step `step` (0-based, in epoch `epoch`): SwAV
    /// normalises its prototypes and freezes or unfreezes them. Also called before an
    /// optimiser state is restored, so trainable flags match the saved step.
    fn prepare(
        &mut self,
        _encoder: &Encoder,
        _store: &mut ParamStore<D>,
        _step: u64,
        _epoch: usize,
    ) -> Result<(), ObjectiveError> {
        Ok(())
    }

    /// Sets the trainable flags the method wants at step `step` (SwAV's frozen
    /// prototypes) without touching any value: before a checkpoint is written or read,
    /// so the optimiser state's layout matches the step it belongs to.
    fn sync_flags(&self, _store: &mut ParamStore<D>, _step: u64) {}

    /// The loss of `batch`, on the tape of the query encoder's parameters.
    fn loss(
        &mut self,
        encoder: &mut Encoder,
        store: &mut ParamStore<D>,
        batch: &StepBatch<'_>,
    ) -> Result<Loss<D>, ObjectiveError>;

    /// Names and shapes of [`state`](Self::state): the method config's
    /// [`Method::state_layout`] for this objective's embeddings (none by default).
    fn state_layout(&self) -> Vec<(String, Vec<usize>)> {
        Vec::new()
    }

    /// The method's state tensors (queue, pointer, bank, …), host side, in the order
    /// of [`state_layout`](Self::state_layout) (none by default).
    fn state(&self) -> Vec<StateTensor> {
        Vec::new()
    }

    /// Restores [`state`](Self::state); checks every name and shape first and changes
    /// nothing on a mismatch. By default only the check (a method without state).
    fn load_state(&mut self, tensors: &[StateTensor]) -> Result<(), ObjectiveError> {
        check_state(&self.state_layout(), tensors)
    }

    /// MoCo's key encoder or BYOL's target network (parameters and its own batch-norm
    /// statistics).
    fn key_encoder(&self) -> Option<&ParamStore<D>> {
        None
    }

    /// Mutable access to the key encoder, to restore it from a checkpoint.
    fn key_encoder_mut(&mut self) -> Option<&mut ParamStore<D>> {
        None
    }
}

/// The state tensors of `layout` holding `data`, one vector per tensor in order.
pub(crate) fn state_tensors(
    layout: Vec<(String, Vec<usize>)>,
    data: Vec<Vec<f32>>,
) -> Vec<StateTensor> {
    assert_eq!(layout.len(), data.len(), "one vector per state tensor");
    layout
        .into_iter()
        .zip(data)
        .map(|((name, shape), data)| StateTensor { name, shape, data })
        .collect()
}

/// Checks `tensors` against `layout` (every name once, same shapes).
pub(crate) fn check_state(
    layout: &[(String, Vec<usize>)],
    tensors: &[StateTensor],
) -> Result<(), ObjectiveError> {
    let mut problems = Vec::new();
    for (name, shape) in layout {
        match tensors.iter().find(|t| &t.name == name) {
            None => problems.push(format!("`{name}` is missing")),
            Some(t) if &t.shape != shape || t.data.len() != shape.iter().product::<usize>() => {
                problems.push(format!(
                    "`{name}` has shape {:?}, expected {shape:?}",
                    t.shape
                ))
            }
            Some(_) => {}
        }
    }
    for t in tensors {
        if !layout.iter().any(|(n, _)| n == &t.name) {
            problems.push(format!("unexpected `{}`", t.name));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ObjectiveError::State(problems.join("; ")))
    }
}
