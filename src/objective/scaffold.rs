//! The scaffolding every method's [`Objective::loss`](super::Objective::loss) shares:
//! the timing of the loss's forward and backward for `recipe bench`
//! ([`timed_loss`], [`timed`]), and, for the methods whose anchors see the whole global
//! batch, the gather over ranks with its summed backward ([`batch_loss`],
//! [`gathered_loss`], [`gather_labels`]).

use dfdx::prelude::*;

use super::{Loss, ObjectiveError, per_view};
use crate::dist::{Collective, layout};
use crate::nn::ops::{EngineDevice, T2};

/// The scaffolding of a method's loss on `z`, this rank's embeddings (the output of the
/// encoder, on the tape): `f` computes the loss — and makes the state updates the
/// reference makes around it — on `z` marked for [`BackwardTimer`], so `recipe bench`
/// times the loss's backward apart from the encoder's.
pub(crate) fn timed_loss<D: EngineDevice>(
    z: T2<D, OwnedTape<f32, D>>,
    f: impl FnOnce(T2<D, OwnedTape<f32, D>>) -> Result<Loss<D>, ObjectiveError>,
) -> Result<Loss<D>, ObjectiveError> {
    let timer = BackwardTimer::default();
    let l = f(timer.begin(z))?;
    Ok(timer.end(l))
}

/// The loss of a method whose every anchor meets the whole global batch (`z`: this
/// rank's `views × n` rows, view-major): on one process `local(z)`; over several ranks
/// `global(zg, anchors)` on the gathered rows through [`gathered_loss`]. The forward is
/// timed as `objective.loss.fwd`, the backward as `objective.loss.bwd`.
pub(crate) fn batch_loss<D: EngineDevice>(
    z: T2<D, OwnedTape<f32, D>>,
    dist: &dyn Collective,
    views: usize,
    local: impl FnOnce(T2<D, OwnedTape<f32, D>>) -> Result<Loss<D>, ObjectiveError>,
    global: impl FnOnce(T2<D, OwnedTape<f32, D>>, &[usize]) -> Result<Loss<D>, ObjectiveError>,
) -> Result<Loss<D>, ObjectiveError> {
    if dist.world() > 1 {
        return gathered_loss(z, dist, views, |zg, anchors| {
            timed("objective.loss.fwd", || global(zg, anchors))
        });
    }
    timed_loss(z, |z| timed("objective.loss.fwd", || local(z)))
}

/// The loss of this rank's embeddings `z` (`views × n` rows, view-major) when every
/// anchor must see the whole global batch: the embeddings of all ranks are gathered
/// into the single-process row order, `head` computes this rank's share of the loss on
/// them (it gets the gathered rows, traced, and the global rows of this rank's
/// anchors), and the gradient of the gathered rows is summed over the ranks and handed
/// back to this rank's rows — the backward of solo-learn's and lightly's `GatherLayer`
/// (a reduce-scatter with SUM). Without that sum the cross-rank terms of the gradient
/// would be lost.
///
/// The head's own backward runs here; the returned scalar carries the head's value and,
/// on the tape, `Σ z·G` with `G` the summed gradient, so the caller's backward reaches
/// the encoder exactly as a single process would.
pub(crate) fn gathered_loss<D: EngineDevice>(
    z: T2<D, OwnedTape<f32, D>>,
    dist: &dyn Collective,
    views: usize,
    head: impl FnOnce(
        T2<D, OwnedTape<f32, D>>,
        &[usize],
    ) -> Result<Tensor<(), f32, D, OwnedTape<f32, D>>, ObjectiveError>,
) -> Result<Loss<D>, ObjectiveError> {
    let (rows, d) = *z.shape();
    let world = dist.world();
    let n = per_view(rows, views, "embeddings to gather")?;
    let dev = z.device().clone();
    let local = z.as_vec();
    let gathered = crate::dist::timed("comm.gather", || dist.all_gather(&local));
    let global = layout::to_view_major(&gathered, world, views, d);
    let zg = dev.tensor_from_vec(global, (rows * world, d));
    let anchors = layout::local_rows(dist.rank(), world, views, n);
    let l = head(zg.trace(Gradients::leaky()), &anchors)?;
    let value = l.as_vec()[0];
    let g = timed("objective.loss.bwd", || l.backward());
    let gz = layout::to_rank_major(&g.get(&zg).as_vec(), world, views, d);
    let mine = crate::dist::timed("comm.gather", || dist.reduce_scatter_sum(&gz));
    let surrogate = (z * dev.tensor_from_vec(mine, (rows, d))).sum::<(), _>();
    let s = surrogate.as_vec()[0];
    Ok(surrogate + (value - s))
}

/// Every rank's `n` labels, in global image order.
pub(crate) fn gather_labels(dist: &dyn Collective, labels: &[u32]) -> Vec<u32> {
    let bits: Vec<f32> = labels.iter().map(|&l| f32::from_bits(l)).collect();
    crate::dist::timed("comm.gather", || dist.all_gather(&bits))
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

/// Brackets the backward pass of a loss for `recipe bench`'s breakdown: call
/// [`begin`](BackwardTimer::begin) on the embeddings before the loss ops are recorded and
/// [`end`](BackwardTimer::end) on the scalar after. dfdx runs backward ops in reverse
/// order, so the op added by `end` runs first (starts the clock) and the one added by
/// `begin` runs once the loss's own backward ops are done (records
/// `objective.loss.bwd`). Both leave the gradients untouched; nothing is added while
/// timing is off.
#[derive(Clone, Debug, Default)]
pub struct BackwardTimer {
    started: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

impl BackwardTimer {
    /// Marks the loss's input; returns it unchanged.
    pub fn begin<D: Device<f32>, T: Tape<f32, D>>(&self, z: T2<D, T>) -> T2<D, T> {
        if !crate::nn::ops::timing::enabled() {
            return z;
        }
        let started = self.started.clone();
        let (z, mut tape) = z.split_tape();
        tape.add_backward_op(move |_| {
            if let Some(t) = started.lock().map(|mut s| s.take()).unwrap_or(None) {
                crate::nn::ops::timing::record("objective.loss.bwd", t.elapsed());
            }
            Ok(())
        });
        z.put_tape(tape)
    }

    /// Marks the loss's output; returns it unchanged.
    pub fn end<D: Device<f32>, T: Tape<f32, D>>(
        &self,
        loss: Tensor<(), f32, D, T>,
    ) -> Tensor<(), f32, D, T> {
        if !crate::nn::ops::timing::enabled() {
            return loss;
        }
        let started = self.started.clone();
        let (loss, mut tape) = loss.split_tape();
        tape.add_backward_op(move |_| {
            if let Ok(mut s) = started.lock() {
                *s = Some(std::time::Instant::now());
            }
            Ok(())
        });
        loss.put_tape(tape)
    }
}

/// Runs `f`, recording its time under `name` when timing is on.
pub(crate) fn timed<R>(name: &'static str, f: impl FnOnce() -> R) -> R {
    let t = std::time::Instant::now();
    let r = f();
    crate::nn::ops::timing::record(name, t.elapsed());
    r
}
