//! The `optimizer` and `schedule` sections.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The optimiser, tagged by `name`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "name", rename_all = "snake_case", deny_unknown_fields)]
pub enum Optimizer {
    /// Stochastic gradient descent with momentum (PyTorch semantics, coupled weight decay).
    Sgd {
        /// Base learning rate (> 0), before `lr_scaling`.
        #[schemars(schema_with = "super::bounds::positive")]
        lr: f64,
        /// How the base learning rate scales with the batch size.
        #[serde(default)]
        lr_scaling: LrScaling,
        /// L2 weight decay (≥ 0).
        #[serde(default)]
        #[schemars(schema_with = "super::bounds::non_negative")]
        weight_decay: f64,
        /// Momentum, in [0, 1).
        #[serde(default = "momentum_default")]
        #[schemars(schema_with = "super::bounds::unit_open")]
        momentum: f64,
        /// Nesterov momentum.
        #[serde(default)]
        nesterov: bool,
        /// Exclude biases and normalisation parameters from weight decay.
        #[serde(default = "crate::spec::data::default_true")]
        exclude_bias_and_norm: bool,
    },
    /// LARS (You et al. 2017) as used by SimCLR: SGD with momentum whose per-layer
    /// learning rate is scaled by the trust ratio `η·‖w‖ / (‖g‖ + wd·‖w‖)`.
    Lars {
        /// Base learning rate (> 0), before `lr_scaling`.
        #[schemars(schema_with = "super::bounds::positive")]
        lr: f64,
        /// How the base learning rate scales with the batch size.
        #[serde(default)]
        lr_scaling: LrScaling,
        /// L2 weight decay (≥ 0).
        #[serde(default)]
        #[schemars(schema_with = "super::bounds::non_negative")]
        weight_decay: f64,
        /// Momentum, in [0, 1).
        #[serde(default = "momentum_default")]
        #[schemars(schema_with = "super::bounds::unit_open")]
        momentum: f64,
        /// Trust coefficient η (> 0); SimCLR uses 0.001.
        #[serde(default = "eta_default")]
        #[schemars(schema_with = "super::bounds::positive")]
        trust_coefficient: f64,
        /// Clip the trust ratio to `min(ratio / lr, 1)` (LARC-style), as solo-learn's
        /// CIFAR recipes do.
        #[serde(default)]
        clip_lr: bool,
        /// Exclude biases and normalisation parameters from weight decay and from the
        /// trust-ratio adaptation, as the SimCLR reference does.
        #[serde(default = "crate::spec::data::default_true")]
        exclude_bias_and_norm: bool,
    },
    /// AdamW (Loshchilov & Hutter 2019): Adam with decoupled weight decay.
    Adamw {
        /// Base learning rate (> 0), before `lr_scaling`.
        #[schemars(schema_with = "super::bounds::positive")]
        lr: f64,
        /// How the base learning rate scales with the batch size.
        #[serde(default)]
        lr_scaling: LrScaling,
        /// Decoupled weight decay (≥ 0).
        #[serde(default = "adamw_wd")]
        #[schemars(schema_with = "super::bounds::non_negative")]
        weight_decay: f64,
        /// Exponential decay rates of the moment estimates, each in [0, 1).
        #[serde(default = "betas_default")]
        #[schemars(schema_with = "super::bounds::unit_open_pair")]
        betas: [f64; 2],
        /// Denominator term for numerical stability (> 0).
        #[serde(default = "eps_default")]
        #[schemars(schema_with = "super::bounds::positive")]
        eps: f64,
        /// Exclude biases and normalisation parameters from weight decay.
        #[serde(default = "crate::spec::data::default_true")]
        exclude_bias_and_norm: bool,
    },
}

impl Optimizer {
    /// The `name` as written in a recipe.
    pub fn name(&self) -> &'static str {
        match self {
            Optimizer::Sgd { .. } => "sgd",
            Optimizer::Lars { .. } => "lars",
            Optimizer::Adamw { .. } => "adamw",
        }
    }

    /// The base learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            Optimizer::Sgd { lr, .. }
            | Optimizer::Lars { lr, .. }
            | Optimizer::Adamw { lr, .. } => *lr,
        }
    }

    /// The learning-rate scaling rule.
    pub fn lr_scaling(&self) -> LrScaling {
        match self {
            Optimizer::Sgd { lr_scaling, .. }
            | Optimizer::Lars { lr_scaling, .. }
            | Optimizer::Adamw { lr_scaling, .. } => *lr_scaling,
        }
    }

    /// The weight decay.
    pub fn weight_decay(&self) -> f64 {
        match self {
            Optimizer::Sgd { weight_decay, .. }
            | Optimizer::Lars { weight_decay, .. }
            | Optimizer::Adamw { weight_decay, .. } => *weight_decay,
        }
    }
}

/// How the learning rate scales with the batch size. The rule is always explicit:
/// `recipe plan` prints the base and the resulting learning rate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LrScaling {
    /// Use `lr` as written.
    #[default]
    None,
    /// `lr × batch_size / 256` (Goyal et al. 2017; SimCLR).
    Linear,
    /// `lr × sqrt(batch_size / 256)` (SimCLR with LARS at large batch).
    Sqrt,
}

fn momentum_default() -> f64 {
    0.9
}
fn eta_default() -> f64 {
    0.001
}
fn adamw_wd() -> f64 {
    0.01
}
fn betas_default() -> [f64; 2] {
    [0.9, 0.999]
}
fn eps_default() -> f64 {
    1e-8
}

/// The learning-rate schedule, evaluated every optimiser step, tagged by `kind`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Schedule {
    /// The learning rate stays as it is.
    Constant,
    /// Multiply the learning rate by `gamma` at each milestone epoch.
    Step {
        /// Epochs at which the rate drops, strictly increasing, each < `train.epochs`.
        #[schemars(schema_with = "super::bounds::counts")]
        milestones: Vec<usize>,
        /// Factor applied at each milestone, in (0, 1].
        #[serde(default = "gamma_default")]
        #[schemars(schema_with = "super::bounds::fraction")]
        gamma: f64,
    },
    /// Linear warmup from `warmup_start_lr` to the learning rate, then cosine decay to
    /// `final_lr` (SimCLR, MoCo v2, SwAV).
    WarmupCosine {
        /// Warmup length in epochs (may be fractional), shorter than training.
        #[serde(default = "warmup_default")]
        #[schemars(schema_with = "super::bounds::non_negative")]
        warmup_epochs: f64,
        /// Learning rate at the first step.
        #[serde(default)]
        #[schemars(schema_with = "super::bounds::non_negative")]
        warmup_start_lr: f64,
        /// Learning rate at the last step.
        #[serde(default)]
        #[schemars(schema_with = "super::bounds::non_negative")]
        final_lr: f64,
    },
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule::WarmupCosine {
            warmup_epochs: warmup_default(),
            warmup_start_lr: 0.0,
            final_lr: 0.0,
        }
    }
}

fn gamma_default() -> f64 {
    0.1
}
fn warmup_default() -> f64 {
    10.0
}
