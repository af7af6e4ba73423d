//! SimSiam (Chen & He 2021, "Exploring Simple Siamese Representation Learning";
//! reference code facebookresearch/simsiam): one network (backbone, projection head,
//! predictor) on both views; each view's prediction is pulled towards the other view's
//! projection, which is held fixed by a stop-gradient. No negatives, no momentum
//! encoder.

use dfdx::prelude::*;

use super::byol::{paired_targets, predictions};
use super::{
    BuildArgs, CommFacts, Encoder, Loss, Method, Objective, ObjectiveError, StepBatch, check_views,
};
use crate::nn::ops::{EngineDevice, T2};
use crate::nn::params::ParamStore;

/// SimSiam's loss: `p` are the predictions of both views (on the tape) and `z` the
/// projections (no tape: the stop-gradient), both raw `(2N, d)` rows, view-major (row
/// `v·N + i` is view `v` of image `i`). With `D(p, z) = −cos(p, z)`, the loss is
/// `D(p₁, z₂)/2 + D(p₂, z₁)/2` with each `D` averaged over the batch —
/// facebookresearch/simsiam's `-(criterion(p1, z2).mean() + criterion(p2, z1).mean())
/// * 0.5` with `nn.CosineSimilarity(dim=1)` — so it lies in [−1, 1].
///
/// The cosine is the dot product of the rows divided by `max(‖·‖, 1e-12)` each; torch's
/// `CosineSimilarity` clamps with 1e-8, the same for any row whose norm exceeds 1e-8.
pub fn loss<D: EngineDevice, T: Tape<f32, D>>(
    p: T2<D, T>,
    z: T2<D, NoneTape>,
) -> Result<Tensor<(), f32, D, T>, ObjectiveError> {
    let (n, _, zs) = paired_targets("SimSiam", &p, z)?;
    let pn = D::l2_normalize(p, 1e-12);
    Ok((pn * zs).sum::<(), _>() * (-0.5 / n as f32))
}

/// SimSiam has no hyper-parameters of its own (its predictor is `model.predictor`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SimsiamConfig;

impl Method for SimsiamConfig {
    fn name(&self) -> &'static str {
        "simsiam"
    }

    fn comm(&self, _step: &CommFacts) -> (f64, usize) {
        // Each rank's images are their own targets: only the gradient average (and
        // synchronised batch norm) crosses ranks, as the reference's DDP.
        (0.0, 0)
    }

    fn build<D: EngineDevice>(
        &self,
        on: &BuildArgs<'_, D>,
    ) -> Result<Box<dyn Objective<D>>, ObjectiveError> {
        if on.views != 2 {
            return Err(ObjectiveError::Config(format!(
                "SimSiam needs exactly 2 views per image, the recipe makes {}",
                on.views
            )));
        }
        if on.encoder.model().predictor.is_none() {
            return Err(ObjectiveError::Config(
                "SimSiam needs a predictor on the projection head (model.predictor)".into(),
            ));
        }
        Ok(Box::new(Simsiam))
    }
}

/// SimSiam as an [`Objective`]: per step, as facebookresearch/simsiam's
/// `SimSiam.forward`, each view through backbone, head and predictor (a batch of its
/// own, so batch norm sees one view at a time), the projections detached as the
/// targets, and the loss. It keeps no state.
#[derive(Clone, Copy, Debug, Default)]
pub struct Simsiam;

impl<D: EngineDevice> Objective<D> for Simsiam {
    fn loss(
        &mut self,
        encoder: &mut Encoder,
        store: &mut ParamStore<D>,
        batch: &StepBatch<'_>,
    ) -> Result<Loss<D>, ObjectiveError> {
        check_views("SimSiam", 2, batch)?;
        let (p, z) = predictions(encoder, store, batch)?;
        let shape = *p.shape();
        // The stop-gradient: the projections' values, off the tape.
        let z = store.device().tensor_from_vec(z, shape);
        super::timed_loss(p, |p| super::timed("objective.loss.fwd", || loss(p, z)))
    }
}
