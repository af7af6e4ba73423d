//! Fine-tuning: the whole backbone plus a fresh linear classifier, trained end to end on
//! labelled images.
//!
//! What runs, per step: a batch of training images, each augmented ([`Augmentation`]:
//! by default only a horizontal flip with probability 0.5, so the score measures the
//! representation and not an augmentation recipe; or the recipe's first view) and
//! normalised; the backbone in training mode (batch
//! norm uses and updates batch statistics); with [`FineTuneConfig::head_norm`] a batch
//! norm `bn` over the pooled features (training mode; its running statistics at test
//! time); the classifier `fc` (`Linear`, PyTorch's default init from the seed); the mean cross-entropy; then two SGD steps (momentum
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
use std::sync::Arc;

use crate::augment::{HorizontalFlip, Op};
use crate::data::{Dataset, Image};
use crate::nn::init::Init;
use crate::nn::layers::{BatchNorm, Linear};
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
    /// A batch norm (affine, not decayed) between the pooled features and the
    /// classifier: the features reach the classifier standardised, as the linear
    /// probe's do, so one learning rate fits every encoder's feature scale.
    pub head_norm: bool,
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
            head_norm: false,
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

/// How each training image is augmented before it is normalised.
#[derive(Clone, Debug, PartialEq)]
pub enum Augmentation {
    /// A horizontal flip with probability 0.5 (fine-tuning: the score measures the
    /// representation, not an augmentation recipe).
    Flip,
    /// These ops in order (the supervised baseline: the recipe's first view), then a
    /// resize to the dataset's image size when the ops end at another size.
    Pipeline(Arc<Vec<Op>>),
}

impl Augmentation {
    fn apply(&self, img: Image, rng: &mut ChaCha8Rng, hw: (usize, usize)) -> Image {
        match self {
            Augmentation::Flip => HorizontalFlip { p: 0.5 }.apply(img, rng),
            Augmentation::Pipeline(ops) => {
                let img = ops.iter().fold(img, |img, op| op.apply(img, rng));
                if (img.height, img.width) == hw {
                    img
                } else {
                    crate::augment::geometric::resize(&img, hw, true)
                }
            }
        }
    }
}

/// Fine-tunes a copy of `store`'s backbone with a new classifier on `train` and reports
/// the accuracy on `test`; both need labels. `norm` is the training normalisation;
/// `aug` how training images are augmented (image `i`'s draw in epoch `e` comes from
/// its own stream of the seed, whatever the thread count).
pub fn fine_tune<D: EngineDevice>(
    model: &Model,
    store: &ParamStore<D>,
    train: &Dataset,
    test: &Dataset,
    norm: &Normalize,
    cfg: &FineTuneConfig,
    aug: &Augmentation,
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
    let bn = if cfg.head_norm {
        Some(BatchNorm::new(&mut head, "bn", dim)?)
    } else {
        None
    };
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
                aug.apply(img, &mut rng, (h, w))
            })?;
            let x = dev.tensor_from_vec(px, (batch.len(), c, h, w));
            let f = net.features(&mut bb, x.trace(Gradients::leaky()), true)?;
            let f = match &bn {
                Some(bn) => bn.forward1d(&mut head, f, true),
                None => f,
            };
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

    let mut feats = extract(model, &mut bb, test, norm, Which::Backbone, bs)?;
    if let Some(bn) = &bn {
        // Evaluation mode: the running statistics, then the affine map.
        let get = |what: &str| head.data(head.id(&format!("{}.{what}", bn.name)).unwrap());
        let (mean, var) = (get("running_mean"), get("running_var"));
        let (g, b) = (get("weight"), get("bias"));
        for r in feats.data.chunks_exact_mut(dim) {
            for (j, v) in r.iter_mut().enumerate() {
                *v = (*v - mean[j]) / (var[j] + bn.cfg.eps).sqrt() * g[j] + b[j];
            }
        }
    }
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

/// The supervised baseline's settings: the untrained network (the run's seed)
/// trained end to end, backbone at the full learning rate.
#[derive(Clone, Debug, PartialEq)]
pub struct SupervisedConfig {
    /// Epochs per labelled fraction (the task's order).
    pub epochs: Vec<usize>,
    /// Peak learning rate of backbone and classifier.
    pub lr: f64,
    /// Weight decay of conv and linear weights.
    pub weight_decay: f64,
    /// The recipe's first-view augmentation ops.
    pub augment: Arc<Vec<Op>>,
}

/// The `fine_tune` downstream task: [`fine_tune`] from the trained encoder and from the
/// untrained network (raw pixels have no network to fine-tune), and optionally the
/// supervised baseline, at each labelled fraction.
#[derive(Clone, Debug, PartialEq)]
pub struct FineTuneTask {
    /// The fine-tuning settings (`epochs`: see `epochs`).
    pub cfg: FineTuneConfig,
    /// The labelled fractions of the training split (`[1.0]`: all).
    pub fractions: Vec<f64>,
    /// Fine-tuning epochs per fraction.
    pub epochs: Vec<usize>,
    /// Batch size per fraction (fine-tuning and the supervised baseline).
    pub batch_sizes: Vec<usize>,
    /// How the fine-tuned networks (trained and untrained) augment training images.
    pub augment: Augmentation,
    /// The supervised row, when asked for.
    pub supervised: Option<SupervisedConfig>,
}

impl FineTuneTask {
    /// Top-1 and top-5 of both networks (and the supervised one) at each fraction: one
    /// `results.json` entry, one report column (the largest fraction), the trained
    /// network's `fine_tune_top1`/`fine_tune_top5` record, and the label-efficiency
    /// table with several fractions.
    pub fn run<D: EngineDevice>(
        &self,
        enc: &mut super::downstream::Encoders<'_, D>,
    ) -> Result<super::downstream::TaskOutput, super::downstream::DownstreamError> {
        let test = enc.test()?;
        let (_, h, w) = test.shape();
        let m = enc.model.with_input((h, w))?;
        let m0 = enc.untrained().0.with_input((h, w))?;
        let mut by = Vec::new();
        for (i, &f) in self.fractions.iter().enumerate() {
            let subset = enc.labelled(f)?;
            let picked;
            let train = if f == 1.0 {
                enc.train
            } else {
                picked = enc.train.select(&subset);
                &picked
            };
            let pick =
                |v: &[usize], default: usize| v.get(i).or(v.last()).copied().unwrap_or(default);
            let cfg = FineTuneConfig {
                epochs: pick(&self.epochs, self.cfg.epochs),
                batch_size: pick(&self.batch_sizes, self.cfg.batch_size),
                ..self.cfg
            };
            let aug = &self.augment;
            let res = fine_tune(&m, enc.store, train, test, enc.norm, &cfg, aug)?;
            let untrained = enc.untrained().1;
            let base = fine_tune(&m0, untrained, train, test, enc.norm, &cfg, aug)?;
            let sup = match &self.supervised {
                Some(s) => Some(fine_tune(
                    &m0,
                    untrained,
                    train,
                    test,
                    enc.norm,
                    &FineTuneConfig {
                        epochs: s.epochs[i.min(s.epochs.len() - 1)],
                        lr: s.lr,
                        backbone_lr_scale: 1.0,
                        weight_decay: s.weight_decay,
                        ..cfg
                    },
                    &Augmentation::Pipeline(s.augment.clone()),
                )?),
                None => None,
            };
            by.push((f, subset.len(), [Some(res), Some(base), None, sup]));
        }
        let augment = match self.augment {
            Augmentation::Flip => "flip",
            Augmentation::Pipeline(_) => "first_view",
        };
        let json = serde_json::json!({"task": "fine_tune", "epochs": self.epochs,
            "batch_size": self.batch_sizes, "lr": self.cfg.lr,
            "backbone_lr_scale": self.cfg.backbone_lr_scale,
            "weight_decay": self.cfg.weight_decay, "augment": augment,
            "head_norm": self.cfg.head_norm});
        let mut out = super::downstream::fraction_output(
            json,
            "fine-tune top-1",
            "fine_tune",
            false,
            &by,
            |r| (r.top1, r.top5),
            |_, _| {},
        );
        if let Some(s) = &self.supervised {
            out.json["supervised"]["config"] = serde_json::json!({"epochs": s.epochs,
                "lr": s.lr, "weight_decay": s.weight_decay});
            out.notes.push(
                "Fine-tune: *untrained network* fine-tunes the same network from its \
                 initialisation with the fine-tune settings; *supervised (from scratch)* \
                 trains it on the same labelled images with the recipe's first-view \
                 augmentation and its own epochs, learning rate and weight decay, the \
                 backbone at the full rate."
                    .into(),
            );
        }
        Ok(out)
    }
}
