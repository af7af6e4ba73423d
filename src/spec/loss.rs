//! The `loss` section: the contrastive objective and its state, tagged by `method`.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The objective, tagged by `method`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum Loss {
    /// SimCLR's NT-Xent (Chen et al. 2020): each view's positive is the other view of
    /// the same image; the other 2(N−1) views of the batch are negatives.
    Simclr {
        /// Softmax temperature τ (> 0).
        #[serde(default = "half")]
        #[schemars(schema_with = "super::bounds::positive")]
        temperature: f64,
    },
    /// MoCo InfoNCE (He et al. 2020; v2: Chen et al. 2020) with a momentum key encoder
    /// and a queue of negative keys.
    Moco {
        /// Softmax temperature τ (> 0); MoCo v2 uses 0.2.
        #[serde(default = "moco_t")]
        #[schemars(schema_with = "super::bounds::positive")]
        temperature: f64,
        /// EMA momentum of the key encoder, in [0, 1); MoCo uses 0.999.
        #[serde(default = "moco_m")]
        #[schemars(schema_with = "super::bounds::unit_open")]
        momentum: f64,
        /// Negative keys kept in the queue: a positive multiple of the keys enqueued per
        /// step, which is the batch size, or 2 × the batch size with `symmetric`.
        #[serde(default = "moco_queue")]
        #[schemars(range(min = 1))]
        queue_size: usize,
        /// Also swap query and key views and average the two losses; the keys of both
        /// views are then enqueued each step.
        #[serde(default)]
        symmetric: bool,
    },
    /// Memory bank of instance embeddings with sampled negatives (Wu et al. 2018, InstDisc).
    MemoryBank {
        /// Softmax temperature τ (> 0); InstDisc uses 0.07.
        #[serde(default = "bank_t")]
        #[schemars(schema_with = "super::bounds::positive")]
        temperature: f64,
        /// Momentum of the bank update `v ← m·v + (1−m)·f`, in [0, 1); InstDisc uses 0.5.
        #[serde(default = "half")]
        #[schemars(schema_with = "super::bounds::unit_open")]
        bank_momentum: f64,
        /// Negatives sampled from the bank per example; InstDisc uses 4096.
        #[serde(default = "bank_negatives")]
        #[schemars(range(min = 1))]
        negatives: usize,
        /// Draw the negatives once per step and share them among the batch's anchors:
        /// one matrix product instead of a gather per anchor (several times faster on
        /// a CPU; every anchor still sees `negatives` uniform draws). `false` (the
        /// default) draws each anchor its own, as InstDisc does.
        #[serde(default)]
        shared_negatives: bool,
    },
    /// SwAV swapped prediction of Sinkhorn cluster codes (Caron et al. 2020).
    Swav {
        /// Softmax temperature τ of the prototype scores (> 0); SwAV uses 0.1.
        #[serde(default = "swav_t")]
        #[schemars(schema_with = "super::bounds::positive")]
        temperature: f64,
        /// Number of prototypes (≥ 2); SwAV uses 3000 on ImageNet.
        #[serde(default = "swav_k")]
        #[schemars(range(min = 2))]
        prototypes: usize,
        /// Entropy regularisation ε of Sinkhorn-Knopp (> 0); SwAV uses 0.05.
        #[serde(default = "swav_eps")]
        #[schemars(schema_with = "super::bounds::positive")]
        epsilon: f64,
        /// Sinkhorn-Knopp iterations; SwAV uses 3.
        #[serde(default = "swav_iters")]
        #[schemars(range(min = 1))]
        sinkhorn_iterations: usize,
        /// Keep the prototypes fixed for this many optimiser steps at the start.
        #[serde(default)]
        freeze_prototypes_steps: usize,
        /// A queue of past embeddings to stabilise small-batch codes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        queue: Option<SwavQueue>,
    },
    /// Supervised contrastive loss (Khosla et al. 2020): all views of the same class are
    /// positives. Needs labelled data.
    Supcon {
        /// Softmax temperature τ (> 0); SupCon uses 0.1.
        #[serde(default = "swav_t")]
        #[schemars(schema_with = "super::bounds::positive")]
        temperature: f64,
        /// Base temperature; the loss is scaled by τ / base (> 0), 0.07 in the paper's code.
        #[serde(default = "bank_t")]
        #[schemars(schema_with = "super::bounds::positive")]
        base_temperature: f64,
    },
    /// DINO self-distillation (Caron et al. 2021, "Emerging Properties in
    /// Self-Supervised Vision Transformers"; facebookresearch/dino `main_dino.py`): a
    /// student and an EMA teacher share the architecture (backbone, `model.head` as
    /// DINOHead's MLP, then L2 normalisation and a weight-normalised last layer of
    /// `out_dim`); the teacher sees only the global crops, its outputs are centred and
    /// sharpened, and every student crop predicts every other global crop's teacher
    /// distribution (cross-entropy). Works with `augment.multi_crop` (global crops to
    /// the teacher) or plain views (all global).
    Dino {
        /// Outputs of the weight-normalised last layer, the "prototypes" (≥ 2); the
        /// reference's `out_dim` is 65536.
        #[serde(default = "dino_out_dim")]
        #[schemars(range(min = 2))]
        out_dim: usize,
        /// Fix the last layer's weight-norm magnitude to 1 (`w = v/‖v‖` per output), as
        /// the reference's default `norm_last_layer: true`; `false` trains it (better
        /// but less stable, per the reference).
        #[serde(default = "crate::spec::data::default_true")]
        norm_last_layer: bool,
        /// Student softmax temperature τ_s (> 0); DINO uses 0.1.
        #[serde(default = "swav_t")]
        #[schemars(schema_with = "super::bounds::positive")]
        student_temp: f64,
        /// Teacher temperature τ_t after its warmup (> 0); the reference code's default
        /// is 0.04, the paper warms up from 0.04 to 0.07 (above 0.07 is unstable, says
        /// the reference).
        #[serde(default = "dino_teacher_t")]
        #[schemars(schema_with = "super::bounds::positive")]
        teacher_temp: f64,
        /// Teacher temperature at epoch 0, rising linearly to `teacher_temp` over
        /// `warmup_teacher_temp_epochs` epochs (> 0); DINO uses 0.04.
        #[serde(default = "dino_teacher_t")]
        #[schemars(schema_with = "super::bounds::positive")]
        warmup_teacher_temp: f64,
        /// Epochs of the teacher temperature's linear warmup (epoch `e` < W uses
        /// `linspace(warmup_teacher_temp, teacher_temp, W)[e]`, later epochs
        /// `teacher_temp`); 0 (the reference code's default) disables it; the paper
        /// uses 30.
        #[serde(default)]
        warmup_teacher_temp_epochs: usize,
        /// Base EMA momentum of the teacher, raised to 1 over training with a cosine
        /// schedule (per step: `1 − (1 − m)·(1 + cos(π·step/steps))/2`), in [0, 1);
        /// DINO uses 0.996 (0.9995 suggested for batches of 256).
        #[serde(default = "dino_teacher_m")]
        #[schemars(schema_with = "super::bounds::unit_open")]
        teacher_momentum: f64,
        /// Momentum of the centre of the teacher's outputs,
        /// `c ← m·c + (1 − m)·mean(teacher outputs)`, in [0, 1] (1 keeps the centre at
        /// 0: no centring); DINO uses 0.9.
        #[serde(default = "dino_center_m")]
        #[schemars(range(min = 0.0, max = 1.0))]
        center_momentum: f64,
        /// Epochs at the start during which the last layer is not updated; DINO uses 1.
        #[serde(default = "dino_freeze")]
        freeze_last_layer: usize,
    },
}

/// SwAV's feature queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SwavQueue {
    /// Embeddings kept; a positive multiple of the batch size.
    #[schemars(range(min = 1))]
    pub size: usize,
    /// Epoch from which the queue is used.
    #[serde(default)]
    pub start_epoch: usize,
}

impl Loss {
    /// The `method` name as written in a recipe.
    pub fn method(&self) -> &'static str {
        match self {
            Loss::Simclr { .. } => "simclr",
            Loss::Moco { .. } => "moco",
            Loss::MemoryBank { .. } => "memory_bank",
            Loss::Swav { .. } => "swav",
            Loss::Supcon { .. } => "supcon",
            Loss::Dino { .. } => "dino",
        }
    }
}

fn half() -> f64 {
    0.5
}
fn moco_t() -> f64 {
    0.2
}
fn moco_m() -> f64 {
    0.99
}
fn moco_queue() -> usize {
    4096
}
fn bank_t() -> f64 {
    0.07
}
fn bank_negatives() -> usize {
    4096
}
fn swav_t() -> f64 {
    0.1
}
fn swav_k() -> usize {
    3000
}
fn swav_eps() -> f64 {
    0.05
}
fn swav_iters() -> usize {
    3
}
fn dino_out_dim() -> usize {
    65536
}
fn dino_teacher_t() -> f64 {
    0.04
}
fn dino_teacher_m() -> f64 {
    0.996
}
fn dino_center_m() -> f64 {
    0.9
}
fn dino_freeze() -> usize {
    1
}
