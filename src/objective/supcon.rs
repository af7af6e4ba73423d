//! Supervised contrastive loss (Khosla et al. 2020, "Supervised Contrastive Learning",
//! `L_out`, eq. 2).

use dfdx::prelude::*;

use super::{
    BuildArgs, CommFacts, Encoder, Loss, Method, Objective, ObjectiveError, StepBatch, check_rows,
    check_temperature, per_view, weighted_info_nce,
};
use crate::nn::ops::{EngineDevice, T2};
use crate::nn::params::ParamStore;

/// SupCon `L_out` of `z`, `(V·N, d)` raw embeddings in view-major order (row `v·N + i`
/// is view `v` of image `i`), with `labels` one class per image (`N` of them).
///
/// Rows are L2-normalised; every anchor's softmax runs over the other `V·N − 1` rows at
/// temperature `τ`; its positives are all other rows of the same class (every other view
/// of the same image included); `−log softmax` is averaged over an anchor's positives,
/// scaled by `τ / base_temperature`, and averaged over all `V·N` anchors — HobbitLong/
/// SupContrast's `SupConLoss` with `contrast_mode='all'`. Without labels every image is
/// its own class, which is SimCLR's NT-Xent (times `τ / base_temperature`). An anchor
/// without positives (one view, a class seen once) contributes 0, as in the reference.
pub fn loss<D: EngineDevice, T: Tape<f32, D>>(
    z: T2<D, T>,
    views: usize,
    labels: Option<&[u32]>,
    temperature: f32,
    base_temperature: f32,
) -> Result<Tensor<(), f32, D, T>, ObjectiveError> {
    check_temperature(temperature, "SupCon temperature")?;
    check_temperature(base_temperature, "SupCon base temperature")?;
    let m = z.shape().0;
    let n = per_view(m, views, "SupCon embeddings")?;
    if let Some(l) = labels
        && l.len() != n
    {
        return Err(ObjectiveError::Shape(format!(
            "SupCon: {} labels for {n} images ({m} rows of {views} views)",
            l.len()
        )));
    }
    check_rows(&z, "SupCon embeddings", m)?;
    let class = |r: usize| labels.map_or((r % n) as u64, |l| l[r % n] as u64);
    let scale = temperature / base_temperature / m as f32;
    let mut weights = vec![0.0f32; m * m];
    let mut any = false;
    for a in 0..m {
        let pos: Vec<usize> = (0..m).filter(|&p| p != a && class(p) == class(a)).collect();
        for &p in &pos {
            weights[a * m + p] = scale / pos.len() as f32;
        }
        any |= !pos.is_empty();
    }
    if !any {
        return Err(ObjectiveError::Shape(
            "SupCon: no anchor has a positive (one view and no repeated class)".into(),
        ));
    }
    Ok(weighted_info_nce(z, temperature, weights))
}

/// SupCon as an [`Objective`]: all views through the encoder as one batch, then
/// [`loss`] with the batch's labels.
/// One rank's share of [`loss`] over the gathered global batch `z` (all `m` rows in
/// single-process order, `labels` of all images): the terms of the anchors `anchors`,
/// scaled by `world` so the mean over ranks is the single-process loss.
pub(crate) fn distributed_loss<D: EngineDevice, T: Tape<f32, D>>(
    z: T2<D, T>,
    anchors: &[usize],
    views: usize,
    labels: &[u32],
    temperature: f32,
    base_temperature: f32,
    world: usize,
) -> Result<Tensor<(), f32, D, T>, ObjectiveError> {
    check_temperature(temperature, "SupCon temperature")?;
    check_temperature(base_temperature, "SupCon base temperature")?;
    let m = z.shape().0;
    let n = per_view(m, views, "SupCon embeddings")?;
    if labels.len() != n {
        return Err(ObjectiveError::Shape(format!(
            "SupCon: {} labels for {n} images ({m} rows of {views} views)",
            labels.len()
        )));
    }
    check_rows(&z, "SupCon embeddings", m)?;
    let class = |r: usize| labels[r % n];
    // The single-process rule: an error only when no anchor of the global batch has a
    // positive (one view and no repeated class).
    if views < 2 && (0..n).all(|a| (0..n).all(|p| p == a || class(p) != class(a))) {
        return Err(ObjectiveError::Shape(
            "SupCon: no anchor has a positive (one view and no repeated class)".into(),
        ));
    }
    let scale = temperature / base_temperature / m as f32 * world as f32;
    let mut weights = vec![0.0f32; anchors.len() * m];
    for (i, &a) in anchors.iter().enumerate() {
        let pos: Vec<usize> = (0..m).filter(|&p| p != a && class(p) == class(a)).collect();
        for &p in &pos {
            weights[i * m + p] = scale / pos.len() as f32;
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
pub struct SupCon {
    /// Temperature τ.
    pub temperature: f32,
    /// Base temperature.
    pub base_temperature: f32,
    /// Views per image.
    pub views: usize,
}

impl<D: EngineDevice> Objective<D> for SupCon {
    fn loss(
        &mut self,
        encoder: &mut Encoder,
        store: &mut ParamStore<D>,
        batch: &StepBatch<'_>,
    ) -> Result<Loss<D>, ObjectiveError> {
        super::check_views("SupCon", self.views, batch)?;
        let Some(labels) = batch.labels else {
            return Err(ObjectiveError::Shape(
                "SupCon needs labelled batches".into(),
            ));
        };
        let z = encoder.embed(store, batch.views, true)?;
        let (views, t, bt, world) = (
            self.views,
            self.temperature,
            self.base_temperature,
            batch.dist.world(),
        );
        // Every rank's labels, in global image order (none needed on one process).
        let all = if world > 1 {
            super::gather_labels(batch.dist, labels)
        } else {
            Vec::new()
        };
        super::batch_loss(
            z,
            batch.dist,
            views,
            |z| loss(z, views, Some(labels), t, bt),
            |zg, anchors| distributed_loss(zg, anchors, views, &all, t, bt, world),
        )
    }
}

/// SupCon's hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SupconConfig {
    /// Temperature τ.
    pub temperature: f32,
    /// Base temperature.
    pub base_temperature: f32,
}

impl Method for SupconConfig {
    fn name(&self) -> &'static str {
        "supcon"
    }

    fn comm(&self, step: &CommFacts) -> (f64, usize) {
        // SimCLR's gather and reduce-scatter, plus the labels.
        (
            step.views as f64 * step.embedding_bytes * 2.0 + (step.images * 4) as f64,
            3,
        )
    }

    fn build<D: EngineDevice>(
        &self,
        on: &BuildArgs<'_, D>,
    ) -> Result<Box<dyn Objective<D>>, ObjectiveError> {
        check_temperature(self.temperature, "temperature")?;
        check_temperature(self.base_temperature, "base temperature")?;
        Ok(Box::new(SupCon {
            temperature: self.temperature,
            base_temperature: self.base_temperature,
            views: on.views,
        }))
    }
}
