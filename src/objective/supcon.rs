//! Supervised contrastive loss (Khosla et al. 2020, "Supervised Contrastive Learning",
//! `L_out`, eq. 2).

use dfdx::prelude::*;

use super::{
    BuildArgs, CommFacts, Encoder, Loss, Method, Objective, ObjectiveError, StepBatch, check_rows,
    check_temperature, per_view, weighted_info_nce,
};
use crate::nn::ops::{EngineDevice, T2};
use crate::nn::params::ParamStore;

/// Which rows of the batch are SupCon's anchors (SupContrast's `contrast_mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ContrastMode {
    /// Every row: all views of all images (SupContrast's default, `'all'`).
    #[default]
    All,
    /// The first view's rows only (`'one'`), each contrasted against all `V·N` rows.
    One,
}

impl ContrastMode {
    /// The anchors among `m` view-major rows of `n` images.
    fn anchors(self, m: usize, n: usize) -> usize {
        match self {
            ContrastMode::All => m,
            ContrastMode::One => n,
        }
    }
}

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
    loss_with_mode(
        z,
        views,
        labels,
        temperature,
        base_temperature,
        ContrastMode::All,
    )
}

/// [`loss`] with the anchors `mode` chooses: with [`ContrastMode::One`] only the `N`
/// rows of the first view are anchors (SupContrast's `contrast_mode='one'`), each
/// still contrasted against the other `V·N − 1` rows with every other row of its class
/// a positive, and the loss is the mean over those `N` anchors. With one view the two
/// modes are the same loss.
pub fn loss_with_mode<D: EngineDevice, T: Tape<f32, D>>(
    z: T2<D, T>,
    views: usize,
    labels: Option<&[u32]>,
    temperature: f32,
    base_temperature: f32,
    mode: ContrastMode,
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
    let anchors = mode.anchors(m, n);
    let scale = temperature / base_temperature / anchors as f32;
    let mut weights = vec![0.0f32; anchors * m];
    let mut any = false;
    for a in 0..anchors {
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
    Ok(match mode {
        ContrastMode::All => weighted_info_nce(z, temperature, weights),
        ContrastMode::One => {
            let rows: Vec<usize> = (0..anchors).collect();
            super::weighted_info_nce_rows(z, &rows, temperature, weights)
        }
    })
}

/// One rank's share of [`loss_with_mode`] over the gathered global batch `z` (all `m`
/// rows in single-process order, `labels` of all images): the terms of this rank's rows
/// `rows` that `mode` makes anchors (with [`ContrastMode::One`], those of the first
/// view), scaled by `world` so the mean over ranks is the single-process loss.
#[allow(clippy::too_many_arguments)]
pub(crate) fn distributed_loss<D: EngineDevice, T: Tape<f32, D>>(
    z: T2<D, T>,
    rows: &[usize],
    views: usize,
    labels: &[u32],
    temperature: f32,
    base_temperature: f32,
    mode: ContrastMode,
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
    let anchors: Vec<usize> = match mode {
        ContrastMode::All => rows.to_vec(),
        ContrastMode::One => rows.iter().copied().filter(|&r| r < n).collect(),
    };
    let anchors = &anchors[..];
    let scale = temperature / base_temperature / mode.anchors(m, n) as f32 * world as f32;
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

/// SupCon as an [`Objective`]: all views through the encoder as one batch, then
/// [`loss_with_mode`] with the batch's labels.
#[derive(Clone, Debug)]
pub struct SupCon {
    /// Temperature τ.
    pub temperature: f32,
    /// Base temperature.
    pub base_temperature: f32,
    /// Which rows are anchors.
    pub mode: ContrastMode,
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
        let (views, t, bt, mode, world) = (
            self.views,
            self.temperature,
            self.base_temperature,
            self.mode,
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
            |z| loss_with_mode(z, views, Some(labels), t, bt, mode),
            |zg, rows| distributed_loss(zg, rows, views, &all, t, bt, mode, world),
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
    /// Which rows are anchors (SupContrast's `contrast_mode`).
    pub contrast_mode: ContrastMode,
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
            mode: self.contrast_mode,
            views: on.views,
        }))
    }
}
