//! Fine-tuning: the whole backbone plus a fresh linear classifier, trained end to end on
//! labelled images.
//!
//! What runs, per step: a batch of training images, each flipped horizontally with
//! probability 0.5 (the only augmentation, so the score measures the representation and
//! not an augmentation recipe) and normalised; the backbone in training mode (batch
//! norm uses and updates batch statistics); the classifier `fc` (`Linear`, PyTorch's
//! default init from the seed); the mean cross-entropy; then two SGD steps (momentum
//! 0.9, coupled weight decay on weights, not on biases or norm parameters: the engine's
//! default decay policy).
//!
//! Two learning rates: the classifier's follows a per-step cosine decay from `lr` to 0
//! over all epochs, and the backbone's is that times `backbone_lr_scale`. The backbone
//! and the classifier live in two parameter stores with one optimiser each, stepped from
//! the same gradients: PyTorch's two parameter groups exactly. (Scaling the backbone's
//! gradients instead would also scale its weight decay.) The projection head and SwAV
//! prototypes are frozen: fine-tuning reads backbone features only.
//!
//! The caller's store is never written: training runs on a clone (updates replace
//! tensors, they never write into shared buffers). Epoch order is shuffled from the
//! seed; image `i`'s flip in epoch `e` comes from its own RNG stream, so the batches do
//! not depend on the number of threads. A last batch of a single image is skipped (batch
//! norm cannot normalise one sample per channel of a 1×1 map). Accuracy is measured on
//! the test split afterwards, in evaluation mode, without flips.

use dfdx::prelude::*;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::features::{Normalize, Which, check_normalize, extract, pack_batch};
use super::linalg::{View, matmul};
use super::{EvalError, class_count, topk_accuracy};
use crate::augment::HorizontalFlip;
use crate::data::Dataset;
use crate::nn::init::Init;
use crate::nn::layers::Linear;
use crate::nn::model::Model;
use crate::nn::ops::EngineDevice;
use crate::nn::params::ParamStore;
use crate::optim::schedule::{Decay, Schedule, ScheduleConfig};
use crate::optim::{Optimizer, OptimizerConfig, SgdConfig};

/// Fine-tuning settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FineTuneConfig {
    /// Passes over the training images (≥ 1).
    pub epochs: usize,
    /// Images per step (≥ 2: batch norm trains on batch statistics).
    pub batch_size: usize,
    /// Peak learning rate of the classifier.
    pub lr: f64,
    /// The backbone's learning rate is `lr × backbone_lr_scale` (≥ 0; 0 freezes it
    /// except for its batch-norm running statistics).
    pub backbone_lr_scale: f64,
    /// Coupled L2 weight decay of conv and linear weights.
    pub weight_decay: f64,
    /// Seed of the classifier's init, the epoch order and the flips.
    pub seed: u64,
}

impl Default for FineTuneConfig {
    /// 10 epochs of batches of 256, lr 0.01, backbone scale 0.1, weight decay 5e-4.
    fn default() -> Self {
        FineTuneConfig {
            epochs: 10,
            batch_size: 256,
            lr: 0.01,
            backbone_lr_scale: 0.1,
            weight_decay: 5e-4,
            seed: 0,
        }
    }
}

/// Fine-tuning accuracy in percent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FineTuneResult {
    /// Top-1 accuracy on the test split.
    pub top1: f64,
    /// Top-5 accuracy on the test split (100 with at most five classes).
    pub top5: f64,
    /// Mean training loss over the last epoch.
    pub train_loss: f64,
}

fn check(cfg: &FineTuneConfig) -> Result<(), EvalError> {
    if cfg.epochs == 0 || cfg.batch_size < 2 {
        return Err(EvalError::Config(format!(
            "fine-tuning needs at least one epoch and a batch of at least 2 (got {} epochs, \
             batch {})",
            cfg.epochs, cfg.batch_size
        )));
    }
    for (name, v) in [
        ("learning rate", cfg.lr),
        ("backbone learning-rate scale", cfg.backbone_lr_scale),
        ("weight decay", cfg.weight_decay),
    ] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(EvalError::Config(format!(
                "the fine-tuning {name} must be finite and >= 0, not {v}"
            )));
        }
    }
    Ok(())
}

/// A seed for one (purpose, epoch) pair, so streams never overlap.
fn mix(seed: u64, purpose: u64, epoch: u64) -> u64 {
    // SplitMix64's finaliser over the combined words.
    let mut z = seed ^ purpose.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ epoch.rotate_left(32);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fine-tunes a copy of `store`'s backbone with a new classifier on `train` and reports
/// the accuracy on `test`; both need labels. `norm` is the training normalisation.
pub fn fine_tune<D: EngineDevice>(
    model: &Model,
    store: &ParamStore<D>,
    train: &Dataset,
    test: &Dataset,
    norm: &Normalize,
    cfg: &FineTuneConfig,
) -> Result<FineTuneResult, EvalError> {
    check(cfg)?;
    let (Some(ytrain), Some(ytest)) = (train.labels(), test.labels()) else {
        return Err(EvalError::Data(
            "fine-tuning needs labelled training and test images".into(),
        ));
    };
    if train.len() < 2 || test.is_empty() {
        return Err(EvalError::Data(
            "fine-tuning needs at least two training images and one test image".into(),
        ));
    }
    check_normalize(norm, train)?;
    let (c, h, w) = train.shape();
    let net = model.with_input((h, w))?;
    let dim = net.backbone.out_dim;
    let classes = class_count(ytrain, ytest).max(train.num_classes());

    // The backbone trains in a clone; head and prototypes stay as they are.
    let mut bb = store.clone();
    let backbone: std::collections::HashSet<String> =
        model.backbone_entry_names(store).into_iter().collect();
    for e in bb.entries_mut() {
        e.trainable &= backbone.contains(&e.name);
    }
    let dev = store.device().clone();
    let mut head = ParamStore::new(dev.clone());
    let mut init = Init::new(mix(cfg.seed, 1, 0));
    let fc = Linear::new(&mut head, &mut init, "fc", dim, classes, true)?;
    let sgd = OptimizerConfig::Sgd(SgdConfig {
        momentum: 0.9,
        nesterov: false,
        weight_decay: cfg.weight_decay,
    });
    let mut opt_bb = Optimizer::new(sgd)?;
    let mut opt_fc = Optimizer::new(sgd)?;

    let n = train.len();
    let bs = cfg.batch_size.min(n);
    let steps_per_epoch = (n / bs + usize::from(n % bs >= 2)) as u64;
    let schedule = Schedule::new(
        &ScheduleConfig {
            warmup: None,
            decay: Decay::Cosine { final_lr: 0.0 },
        },
        cfg.lr,
        cfg.epochs as u64,
        steps_per_epoch,
    )?;
    let flip = HorizontalFlip { p: 0.5 };
    let mut order: Vec<usize> = (0..n).collect();
    let mut step = 0u64;
    let mut train_loss = 0.0;
    for epoch in 0..cfg.epochs as u64 {
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(cfg.seed, 2, epoch)));
        let (mut sum, mut batches) = (0.0f64, 0usize);
        for batch in order.chunks(bs).filter(|b| b.len() >= 2) {
            let px = pack_batch(train, batch, norm, |i, img| {
                let mut rng = ChaCha8Rng::seed_from_u64(mix(cfg.seed, 3, epoch));
                rng.set_stream(i as u64);
                flip.apply(img, &mut rng)
            })?;
            let x = dev.tensor_from_vec(px, (batch.len(), c, h, w));
            let f = net.features(&mut bb, x.trace(Gradients::leaky()), true)?;
            let logits = fc.forward(&head, f);
            let targets: Vec<usize> = batch.iter().map(|&i| ytrain[i] as usize).collect();
            let targets = dev.tensor_from_vec(targets, (batch.len(),));
            let picked: Tensor<(usize,), f32, D, _> =
                logits.log_softmax::<Axis<1>>().select(targets);
            let loss = picked.mean::<(), _>().negate();
            sum += loss.as_vec()[0] as f64;
            batches += 1;
            let mut grads = loss.backward();
            let lr = schedule.lr(step);
            opt_bb.step(&mut bb, &mut grads, lr * cfg.backbone_lr_scale)?;
            opt_fc.step(&mut head, &mut grads, lr)?;
            step += 1;
        }
        train_loss = sum / batches.max(1) as f64;
    }

    let feats = extract(model, &mut bb, test, norm, Which::Backbone, bs)?;
    let weight = head.data(fc.weight_id());
    let bias = head
        .id("fc.bias")
        .map_or_else(|| vec![0.0; classes], |id| head.data(id));
    let mut scores = vec![0.0f32; feats.n * classes];
    for r in scores.chunks_exact_mut(classes) {
        r.copy_from_slice(&bias);
    }
    matmul(
        &mut scores,
        View::new(&feats.data, feats.n, dim),
        View::new(&weight, classes, dim).t(),
        true,
        true,
    );
    let (top1, top5) = topk_accuracy(&scores, classes, ytest);
    Ok(FineTuneResult {
        top1,
        top5,
        train_loss,
    })
}

/// The `fine_tune` downstream task: [`fine_tune`] from the trained encoder and from the
/// untrained network (raw pixels have no network to fine-tune).
#[derive(Clone, Debug, PartialEq)]
pub struct FineTuneTask {
    /// The fine-tuning settings.
    pub cfg: FineTuneConfig,
}

impl FineTuneTask {
    /// Top-1 and top-5 of both networks: one `results.json` entry, one report column,
    /// the trained network's `fine_tune_top1`/`fine_tune_top5` record.
    pub fn run<D: EngineDevice>(
        &self,
        enc: &mut super::downstream::Encoders<'_, D>,
    ) -> Result<super::downstream::TaskOutput, super::downstream::DownstreamError> {
        use super::downstream::{Column, TaskOutput};
        let test = enc.test()?;
        let (_, h, w) = test.shape();
        let m = enc.model.with_input((h, w))?;
        let res = fine_tune(&m, enc.store, enc.train, test, enc.norm, &self.cfg)?;
        let (plain, untrained) = enc.untrained();
        let m0 = plain.with_input((h, w))?;
        let base = fine_tune(&m0, untrained, enc.train, test, enc.norm, &self.cfg)?;
        Ok(TaskOutput {
            json: serde_json::json!({"task": "fine_tune", "epochs": self.cfg.epochs,
                "trained": {"top1": res.top1, "top5": res.top5},
                "untrained_network": {"top1": base.top1, "top5": base.top5}}),
            columns: vec![Column {
                name: "fine-tune top-1".into(),
                values: [Some(res.top1), Some(base.top1), None],
            }],
            record: vec![
                ("fine_tune_top1".into(), res.top1),
                ("fine_tune_top5".into(), res.top5),
            ],
            ..Default::default()
        })
    }
}
