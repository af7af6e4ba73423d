//! RotNet rotation prediction (Gidaris, Singh & Komodakis 2018, "Unsupervised
//! Representation Learning by Predicting Image Rotations"; gidariss/FeatureLearningRotNet):
//! every image is rotated by multiples of 90° and a classifier on the network predicts
//! the rotation, with cross-entropy.
//!
//! The classifier is the model's projection head: its `out_dim` outputs are the logits
//! of the rotation classes (RotNet's own classifier sits where our head does, on the
//! pooled features: a linear layer for its CIFAR NIN, fully connected layers for its
//! AlexNet). It is trained and checkpointed as the head always is, and the downstream
//! tasks read the backbone's features, as for every method. Unlike the contrastive
//! losses, the logits are not L2-normalised: they are a classifier's scores.
//!
//! Rotations act on the pixels before the encoder (they are data, not parameters, so
//! nothing rotated needs a gradient). RotNet rotates the augmented image and then
//! normalises it per channel; rotating the normalised view is the same image.

use dfdx::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{
    BuildArgs, CommFacts, Encoder, Loss, Method, MethodPlan, ModelFacts, Objective, ObjectiveError,
    StepBatch, check_rows,
};
use crate::data::ViewBatch;
use crate::nn::ops::{EngineDevice, T2};
use crate::nn::params::ParamStore;

/// `data`, one planar `C×S×S` image (or a batch of them back to back), rotated by
/// `quarter_turns` × 90° counter-clockwise — `torch.rot90(x, k, dims=(-2, -1))`, which
/// is RotNet's `rotate_img` (90°: `flipud(transpose(img))`): for one turn,
/// `out[i][j] = in[j][S−1−i]`. `data.len()` must be a multiple of `S²`.
pub fn rotate_square(data: &[f32], size: usize, quarter_turns: u8) -> Vec<f32> {
    let plane = size * size;
    assert!(
        plane > 0 && data.len().is_multiple_of(plane),
        "rotate_square: {} values are not whole {size}×{size} planes",
        data.len()
    );
    let last = size - 1;
    let mut out = vec![0.0f32; data.len()];
    for (src, dst) in data.chunks_exact(plane).zip(out.chunks_exact_mut(plane)) {
        for i in 0..size {
            for j in 0..size {
                let (si, sj) = match quarter_turns % 4 {
                    0 => (i, j),
                    1 => (j, last - i),
                    2 => (last - i, last - j),
                    _ => (last - j, i),
                };
                dst[i * size + j] = src[si * size + sj];
            }
        }
    }
    out
}

/// The images of `view` rotated, image `b` by `turns(b)` quarter turns. Views must be
/// square (a rotation by 90° of a non-square image has another shape).
pub fn rotate_view(
    view: &ViewBatch,
    turns: impl Fn(usize) -> u8,
) -> Result<ViewBatch, ObjectiveError> {
    let [b, c, h, w] = view.shape;
    if h != w {
        return Err(ObjectiveError::Shape(format!(
            "rotation prediction needs square views, found {h}×{w}"
        )));
    }
    let image = c * h * w;
    if view.data.len() != b * image || image == 0 {
        return Err(ObjectiveError::Shape(format!(
            "a view holds {} values, its shape {:?} needs {}",
            view.data.len(),
            view.shape,
            b * image
        )));
    }
    let mut data = Vec::with_capacity(view.data.len());
    for (i, img) in view.data.chunks_exact(image).enumerate() {
        data.extend(rotate_square(img, h, turns(i)));
    }
    Ok(ViewBatch {
        data,
        shape: view.shape,
    })
}

/// Cross-entropy of `logits`, `(M, K)` raw classifier scores, against `targets` (one
/// class in `0..K` per row), averaged over the `M` rows — `nn.CrossEntropyLoss`, as
/// RotNet trains its rotation classifier.
pub fn loss<D: EngineDevice, T: Tape<f32, D>>(
    logits: T2<D, T>,
    targets: &[usize],
) -> Result<Tensor<(), f32, D, T>, ObjectiveError> {
    let (m, k) = *logits.shape();
    if targets.len() != m || m == 0 {
        return Err(ObjectiveError::Shape(format!(
            "rotation: {} targets for {m} rows of logits",
            targets.len()
        )));
    }
    if k < 2 {
        return Err(ObjectiveError::Shape(format!(
            "rotation: a classifier needs at least 2 classes, the logits have {k}"
        )));
    }
    if let Some(&t) = targets.iter().find(|&&t| t >= k) {
        return Err(ObjectiveError::Shape(format!(
            "rotation: target class {t} for logits of {k} classes"
        )));
    }
    check_rows(&logits, "rotation logits", m)?;
    let mut pick = vec![0.0f32; m * k];
    for (row, &t) in targets.iter().enumerate() {
        pick[row * k + t] = 1.0 / m as f32;
    }
    let dev = logits.device().clone();
    Ok(
        (logits.log_softmax::<Axis<1>>() * dev.tensor_from_vec(pick, (m, k)))
            .sum::<(), _>()
            .negate(),
    )
}

/// The rotated batch a step trains on, and each row's class.
///
/// With `all`: for each view `v`, for each class `r` (the `r`-th of `quarter_turns`),
/// every image rotated — row `(v·R + r)·N + i`, class `r` (RotNet's loader puts an
/// image's rotations next to each other; the mean over rows and the batch-norm
/// statistics do not depend on the order). Without: one batch per view, image `i`
/// rotated by a class drawn uniformly from a generator keyed by `(seed, step,
/// indices[i], v)` — the same draw on any number of ranks — row `v·N + i`.
pub fn rotated_batch(
    views: &[ViewBatch],
    indices: &[usize],
    quarter_turns: &[u8],
    all: bool,
    seed: u64,
    step: u64,
) -> Result<(Vec<ViewBatch>, Vec<usize>), ObjectiveError> {
    let mut out = Vec::new();
    let mut targets = Vec::new();
    for (v, view) in views.iter().enumerate() {
        let n = view.shape[0];
        if all {
            for (r, &k) in quarter_turns.iter().enumerate() {
                out.push(rotate_view(view, |_| k)?);
                targets.extend(std::iter::repeat_n(r, n));
            }
        } else {
            if indices.len() != n {
                return Err(ObjectiveError::Shape(format!(
                    "rotation: {} dataset indices for a view of {n} images",
                    indices.len()
                )));
            }
            let drawn: Vec<usize> = indices
                .iter()
                .map(|&i| draw(seed, step, i as u64, v as u64, quarter_turns.len()))
                .collect();
            out.push(rotate_view(view, |b| quarter_turns[drawn[b]])?);
            targets.extend(drawn);
        }
    }
    Ok((out, targets))
}

/// A class in `0..classes`, uniform, from a generator keyed by the run's seed, the step,
/// the image's dataset index and the view.
fn draw(seed: u64, step: u64, index: u64, view: u64, classes: usize) -> usize {
    let mut key = [0u8; 32];
    for (i, x) in [seed, step, index, view].into_iter().enumerate() {
        key[8 * i..8 * i + 8].copy_from_slice(&x.to_le_bytes());
    }
    ChaCha8Rng::from_seed(key).gen_range(0..classes)
}

/// Rotation prediction as an [`Objective`]: the rotated views through the encoder as
/// one batch per view size (batch-norm statistics over all rotations, as RotNet's
/// batches of `4 × batch` images), then [`loss`] on the head's outputs. Nothing is
/// gathered over ranks: each rank's loss is the mean over its own rows, and the
/// averaged gradients of equal shards are the global mean's.
#[derive(Clone, Debug)]
pub struct Rotation {
    /// Quarter turns of each class.
    pub quarter_turns: Vec<u8>,
    /// Every rotation of every view (else one drawn per view of each image).
    pub all: bool,
    /// Views per image.
    pub views: usize,
    /// Seeds the drawn rotations.
    pub seed: u64,
}

impl<D: EngineDevice> Objective<D> for Rotation {
    fn loss(
        &mut self,
        encoder: &mut Encoder,
        store: &mut ParamStore<D>,
        batch: &StepBatch<'_>,
    ) -> Result<Loss<D>, ObjectiveError> {
        super::check_views("rotation", self.views, batch)?;
        let (rotated, targets) = super::timed("objective.rotate", || {
            rotated_batch(
                batch.views,
                batch.indices,
                &self.quarter_turns,
                self.all,
                self.seed,
                batch.step,
            )
        })?;
        let z = encoder.embed(store, &rotated, true)?;
        let classes = self.quarter_turns.len();
        if z.shape().1 != classes {
            return Err(ObjectiveError::Shape(format!(
                "rotation: the head has {} outputs for {classes} rotation classes",
                z.shape().1
            )));
        }
        super::timed_loss(z, |z| {
            super::timed("objective.loss.fwd", || loss(z, &targets))
        })
    }
}

/// Rotation prediction's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct RotationConfig {
    /// The rotation classes, in degrees counter-clockwise (each 0, 90, 180 or 270).
    pub rotations: Vec<u32>,
    /// Every rotation of every view in one batch (RotNet); else one drawn per view.
    pub all: bool,
}

impl RotationConfig {
    /// Quarter turns of each class; an error unless every angle is a distinct multiple
    /// of 90° below 360° and there are at least 2.
    pub fn quarter_turns(&self) -> Result<Vec<u8>, ObjectiveError> {
        let mut turns = Vec::with_capacity(self.rotations.len());
        for &a in &self.rotations {
            if a % 90 != 0 || a >= 360 {
                return Err(ObjectiveError::Config(format!(
                    "rotations are 0, 90, 180 or 270 degrees, found {a}"
                )));
            }
            let k = (a / 90) as u8;
            if turns.contains(&k) {
                return Err(ObjectiveError::Config(format!(
                    "rotation {a} is listed twice"
                )));
            }
            turns.push(k);
        }
        if turns.len() < 2 {
            return Err(ObjectiveError::Config(format!(
                "rotation prediction needs at least 2 rotations, found {}",
                turns.len()
            )));
        }
        Ok(turns)
    }

    /// Images through the encoder per view of each image.
    fn copies(&self) -> usize {
        if self.all { self.rotations.len() } else { 1 }
    }
}

impl Method for RotationConfig {
    fn name(&self) -> &'static str {
        "rotation"
    }

    fn plan(&self, _model: &ModelFacts) -> MethodPlan {
        let mut p = MethodPlan::from_layout(&[]);
        let r = self.rotations.len();
        p.encoder_copies = self.copies();
        p.parts.push(if self.all {
            format!("{r}-way rotation classifier (the head), every view rotated {r} ways")
        } else {
            format!("{r}-way rotation classifier (the head), one rotation drawn per view")
        });
        p
    }

    fn comm(&self, _step: &CommFacts) -> (f64, usize) {
        // A per-image loss: nothing beyond the gradient all-reduce.
        (0.0, 0)
    }

    fn build<D: EngineDevice>(
        &self,
        on: &BuildArgs<'_, D>,
    ) -> Result<Box<dyn Objective<D>>, ObjectiveError> {
        let quarter_turns = self.quarter_turns()?;
        if on.dim != quarter_turns.len() {
            return Err(ObjectiveError::Config(format!(
                "rotation prediction over {} rotations needs a head with {} outputs (the classifier's logits), the head has {}",
                quarter_turns.len(),
                quarter_turns.len(),
                on.dim
            )));
        }
        if on.views == 0 {
            return Err(ObjectiveError::Config(
                "rotation prediction needs at least 1 view".into(),
            ));
        }
        Ok(Box::new(Rotation {
            quarter_turns,
            all: self.all,
            views: on.views,
            seed: on.seed,
        }))
    }
}
