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
        /// Which rows are anchors (SupContrast's `contrast_mode`): `all` (the default)
        /// makes every view of every image an anchor; `one` only the first view's rows,
        /// each still contrasted against every view's rows.
        #[serde(default)]
        contrast_mode: ContrastMode,
    },
    /// RotNet rotation prediction (Gidaris, Singh & Komodakis 2018, "Unsupervised
    /// Representation Learning by Predicting Image Rotations"): every view is rotated by
    /// multiples of 90° and the projection head, a classifier with
    /// `model.head.out_dim` = the number of `rotations`, predicts which rotation it sees
    /// (cross-entropy, mean over all rotated images). Views must be square; kNN and the
    /// linear probe evaluate the backbone's features as for every method.
    Rotation {
        /// The rotations to predict, in degrees counter-clockwise (torch.rot90's
        /// direction); class `r` is the `r`-th entry. At least 2 of 0, 90, 180, 270, each
        /// once; RotNet uses all four (its CIFAR-10 ablation: 4 rotations beat 2 and 8).
        #[serde(default = "all_angles")]
        #[schemars(schema_with = "super::bounds::right_angles")]
        rotations: Vec<u32>,
        /// Feed every rotation of every view in the same batch (RotNet's data loader and
        /// the paper's finding: better than one rotation per image), so the encoder sees
        /// `rotations` × the views per step; `false` draws one rotation per view of each
        /// image, uniformly, seeded by the recipe's seed, the step and the image's index.
        #[serde(default = "crate::spec::data::default_true")]
        all_rotations: bool,
    },
    /// BYOL (Grill et al. 2020): the online network (backbone, head, `model.predictor`)
    /// predicts the projection of the other view by a target network (backbone and
    /// head) that is an exponential moving average of the online one; the loss is the
    /// symmetric normalised MSE `‖p̂₁ − ẑ′₂‖² + ‖p̂₂ − ẑ′₁‖²` averaged over the batch
    /// (deepmind-research/byol's `regression_loss`). Needs `model.predictor` and 2 views.
    Byol {
        /// Base EMA rate τ_base of the target network, in [0, 1): τ rises from it to 1
        /// over the run as τ_k = 1 − (1 − τ_base)·(cos(πk/K) + 1)/2; BYOL uses 0.996.
        #[serde(default = "byol_tau")]
        #[schemars(schema_with = "super::bounds::unit_open")]
        momentum: f64,
    },
    /// SimSiam (Chen & He 2021): the predictor (`model.predictor`) of each view predicts
    /// the other view's projection, which is held fixed (stop-gradient); the loss is
    /// the symmetric negative cosine `−(cos(p₁, z₂) + cos(p₂, z₁))/2` averaged over the
    /// batch. No negatives, no momentum encoder. Needs `model.predictor` and 2 views.
    Simsiam {},
    /// Barlow Twins (Zbontar et al. 2021): the cross-correlation `C` of the two views'
    /// embeddings, each batch-normalised without affine parameters, is driven to the
    /// identity: `Σ_i (1 − C_ii)² + λ·Σ_{i≠j} C_ij²`. Needs 2 views.
    BarlowTwins {
        /// Weight λ of the off-diagonal (redundancy-reduction) term (≥ 0); 0.0051 in the
        /// reference code (facebookresearch/barlowtwins `--lambd`; its first release and
        /// the paper's first version used 3.9e-3 with `scale_loss` 1/32).
        #[serde(default = "bt_lambda")]
        #[schemars(schema_with = "super::bounds::non_negative")]
        lambda: f64,
        /// Factor multiplying the whole loss (> 0); 1 in the current reference code.
        /// Its first release multiplied by `--scale-loss` (1/32 by default, 0.024 for its
        /// best 1000-epoch model) and replaced it in June 2021 by a lower learning rate
        /// for biases and norms, which is what the scale amounted to under LARS.
        #[serde(default = "one")]
        #[schemars(schema_with = "super::bounds::positive")]
        scale_loss: f64,
    },
    /// VICReg (Bardes et al. 2022): invariance (mean squared error between the views'
    /// embeddings), variance (a hinge keeping each feature's standard deviation over the
    /// batch at 1) and covariance (the squared off-diagonal covariances) terms. Needs 2
    /// views.
    Vicreg {
        /// Weight λ of the invariance term (≥ 0); 25 in the paper and
        /// facebookresearch/vicreg (`--sim-coeff`).
        #[serde(default = "vicreg_25")]
        #[schemars(schema_with = "super::bounds::non_negative")]
        invariance_coeff: f64,
        /// Weight μ of the variance term (≥ 0); 25 in the paper and the reference
        /// (`--std-coeff`).
        #[serde(default = "vicreg_25")]
        #[schemars(schema_with = "super::bounds::non_negative")]
        variance_coeff: f64,
        /// Weight ν of the covariance term (≥ 0); 1 in the paper and the reference
        /// (`--cov-coeff`).
        #[serde(default = "one")]
        #[schemars(schema_with = "super::bounds::non_negative")]
        covariance_coeff: f64,
        /// ε in the standard deviation `sqrt(Var + ε)` of the variance term (> 0, so its
        /// gradient stays finite when a feature collapses); 1e-4 in the reference.
        #[serde(default = "vicreg_eps")]
        #[schemars(schema_with = "super::bounds::positive")]
        variance_epsilon: f64,
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

/// SupCon's anchors (SupContrast's `contrast_mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ContrastMode {
    /// Every row (every view of every image) is an anchor; SupContrast's default.
    #[default]
    All,
    /// Only the first view's rows are anchors, contrasted against all views' rows.
    One,
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
            Loss::Rotation { .. } => "rotation",
            Loss::Byol { .. } => "byol",
            Loss::Simsiam { .. } => "simsiam",
            Loss::BarlowTwins { .. } => "barlow_twins",
            Loss::Vicreg { .. } => "vicreg",
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
fn all_angles() -> Vec<u32> {
    vec![0, 90, 180, 270]
}
fn byol_tau() -> f64 {
    0.996
}
fn one() -> f64 {
    1.0
}
fn bt_lambda() -> f64 {
    0.0051
}
fn vicreg_25() -> f64 {
    25.0
}
fn vicreg_eps() -> f64 {
    1e-4
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
