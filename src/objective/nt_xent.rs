//! SimCLR's NT-Xent (Chen et al. 2020, "A Simple Framework for Contrastive Learning of
//! Visual Representations", eq. 1).

use dfdx::prelude::*;

use super::{
    BuildArgs, CommFacts, Encoder, Loss, Method, Objective, ObjectiveError, StepBatch, check_rows,
    check_temperature, per_view, weighted_info_nce,
};
use crate::nn::ops::{EngineDevice, T2};
use crate::nn::params::ParamStore;

/// NT-Xent of `z`, `(V·N, d)` raw embeddings in view-major order: row `v·N + i` is view
/// `v` of image `i` (rows `i` and `i + N` are the two views of image `i` when `V = 2`).
///
/// Rows are L2-normalised; logits are cosine similarities / `temperature`; each row's
/// softmax runs over the other `V·N − 1` rows. With two views this is exactly the
/// SimCLR reference code's `info_nce_loss` followed by cross-entropy (the positive is
/// the other view, the `2N − 2` rows of other images are negatives), averaged over all
/// `2N` anchors. With `V > 2` every other view of the same image is a positive: each
/// anchor averages `−log softmax` over its `V − 1` positives (SupCon's `L_out` with the
/// image as the class), then anchors are averaged. (sthalles/SimCLR with `n_views > 2`
/// keeps only the first positive as the target; we do not.)
pub fn loss<D: EngineDevice, T: Tape<f32, D>>(
    z: T2<D, T>,
    views: usize,
    temperature: f32,
) -> Result<Tensor<(), f32, D, T>, ObjectiveError> {
    check_temperature(temperature, "NT-Xent temperature")?;
    let m = z.shape().0;
    let n = per_view(m, views, "NT-Xent embeddings")?;
    if views < 2 {
        return Err(ObjectiveError::Shape(
            "NT-Xent needs at least 2 views per image".into(),
        ));
    }
    check_rows(&z, "NT-Xent embeddings", m)?;
    let w = 1.0 / (m as f32 * (views - 1) as f32);
    let mut weights = vec![0.0f32; m * m];
    for a in 0..m {
        for v in 0..views {
            let p = v * n + a % n;
            if p != a {
                weights[a * m + p] = w;
            }
        }
    }
    Ok(weighted_info_nce(z, temperature, weights))
}

/// SimCLR as an [`Objective`]: all views through the encoder as one batch (as the
/// reference does), then [`loss`].
/// One rank's share of [`loss`] over the gathered global batch `z` (all `m` rows, in
/// single-process order): the terms of the anchors `anchors`, scaled by `world` so the
/// mean over ranks is the single-process loss (and the mean of the ranks' gradients its
/// gradient).
pub(crate) fn distributed_loss<D: EngineDevice, T: Tape<f32, D>>(
    z: T2<D, T>,
    anchors: &[usize],
    views: usize,
    temperature: f32,
    world: usize,
) -> Result<Tensor<(), f32, D, T>, ObjectiveError> {
    check_temperature(temperature, "NT-Xent temperature")?;
    let m = z.shape().0;
    let n = per_view(m, views, "NT-Xent embeddings")?;
    if views < 2 {
        return Err(ObjectiveError::Shape(
            "NT-Xent needs at least 2 views per image".into(),
        ));
    }
    check_rows(&z, "NT-Xent embeddings", m)?;
    let w = world as f32 / (m as f32 * (views - 1) as f32);
    let mut weights = vec![0.0f32; anchors.len() * m];
    for (i, &a) in anchors.iter().enumerate() {
        for v in 0..views {
            let p = v * n + a % n;
            if p != a {
                weights[i * m + p] = w;
            }
        }
    }
    Ok(super::weighted_info_nce_rows(
        z,
        anchors,
        temperature,
        weights,
    ))
}

#[derive(Clone, Debug)]
pub struct NtXent {
    /// Temperature τ.
    pub temperature: f32,
    /// Views per image.
    pub views: usize,
}

impl<D: EngineDevice> Objective<D> for NtXent {
    fn loss(
        &mut self,
        encoder: &mut Encoder,
        store: &mut ParamStore<D>,
        batch: &StepBatch<'_>,
    ) -> Result<Loss<D>, ObjectiveError> {
        super::check_views("SimCLR", self.views, batch)?;
        let z = encoder.embed(store, batch.views, true)?;
        let (views, t, world) = (self.views, self.temperature, batch.dist.world());
        super::batch_loss(
            z,
            batch.dist,
            views,
            |z| loss(z, views, t),
            |zg, anchors| distributed_loss(zg, anchors, views, t, world),
        )
    }
}

/// SimCLR's hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SimclrConfig {
    /// Temperature τ.
    pub temperature: f32,
}

impl Method for SimclrConfig {
    fn name(&self) -> &'static str {
        "simclr"
    }

    fn comm(&self, step: &CommFacts) -> (f64, usize) {
        // Every view's embeddings are gathered; their gradient is reduce-scattered.
        (step.views as f64 * step.embedding_bytes * 2.0, 2)
    }

    fn build<D: EngineDevice>(
        &self,
        on: &BuildArgs<'_, D>,
    ) -> Result<Box<dyn Objective<D>>, ObjectiveError> {
        check_temperature(self.temperature, "temperature")?;
        if on.views < 2 {
            return Err(ObjectiveError::Config(
                "SimCLR needs at least 2 views per image".into(),
            ));
        }
        Ok(Box::new(NtXent {
            temperature: self.temperature,
            views: on.views,
        }))
    }
}
