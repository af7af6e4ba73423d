//! The `model` section: the encoder (backbone), the projection head and, for BYOL and
//! SimSiam, the predictor.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The network: a backbone that maps an image to a feature vector, and a projection
/// head that maps features to the space the loss works in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// The encoder.
    pub backbone: Backbone,
    /// The projection head on top of the backbone's pooled features.
    #[serde(default)]
    pub head: Head,
    /// The predictor MLP on top of the projection head, for `byol` and `simsiam` only
    /// (required by both): the online branch predicts the other view's projection
    /// through it. Its parameters are named `predictor.*`, are trained with the rest,
    /// and are not part of the exported backbone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predictor: Option<Predictor>,
}

/// The encoder, tagged by `arch`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "arch", rename_all = "snake_case", deny_unknown_fields)]
pub enum Backbone {
    /// ResNet-18 (basic blocks, [2, 2, 2, 2]), 512 features at width 1.
    Resnet18 {
        /// Stem: `cifar` (3×3 stride 1, no max pool) for small images, `imagenet`
        /// (7×7 stride 2 + 3×3 max pool) for large ones.
        #[serde(default)]
        stem: Stem,
        /// Channel multiplier for every stage (1.0 = torchvision's widths).
        #[serde(default = "one")]
        #[schemars(schema_with = "super::bounds::width")]
        width: f64,
    },
    /// ResNet-34 (basic blocks, [3, 4, 6, 3]), 512 features at width 1.
    Resnet34 {
        /// Stem: `cifar` or `imagenet`.
        #[serde(default)]
        stem: Stem,
        /// Channel multiplier for every stage.
        #[serde(default = "one")]
        #[schemars(schema_with = "super::bounds::width")]
        width: f64,
    },
    /// ResNet-50 (bottleneck blocks, [3, 4, 6, 3]), 2048 features at width 1.
    Resnet50 {
        /// Stem: `cifar` or `imagenet`.
        #[serde(default)]
        stem: Stem,
        /// Channel multiplier for every stage.
        #[serde(default = "one")]
        #[schemars(schema_with = "super::bounds::width")]
        width: f64,
    },
    /// A small plain CNN: per entry of `channels`, a 3×3 conv, batch norm and ReLU,
    /// each stage after the first downsampling by 2; then global average pooling.
    SmallCnn {
        /// Output channels of each stage.
        #[serde(default = "small_channels")]
        #[schemars(schema_with = "super::bounds::counts_non_empty")]
        channels: Vec<usize>,
    },
}

impl Backbone {
    /// The `arch` name as written in a recipe.
    pub fn arch(&self) -> &'static str {
        match self {
            Backbone::Resnet18 { .. } => "resnet18",
            Backbone::Resnet34 { .. } => "resnet34",
            Backbone::Resnet50 { .. } => "resnet50",
            Backbone::SmallCnn { .. } => "small_cnn",
        }
    }

    /// Number of times the input side is halved before pooling.
    pub fn downsamplings(&self) -> usize {
        match self {
            Backbone::Resnet18 { stem, .. }
            | Backbone::Resnet34 { stem, .. }
            | Backbone::Resnet50 { stem, .. } => match stem {
                Stem::Cifar => 3,
                Stem::Imagenet => 5,
            },
            Backbone::SmallCnn { channels } => channels.len().saturating_sub(1),
        }
    }
}

fn one() -> f64 {
    1.0
}
fn small_channels() -> Vec<usize> {
    vec![32, 64, 128]
}

/// ResNet stem.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Stem {
    /// 3×3 conv, stride 1, no max pool (for 32×32-ish inputs).
    #[default]
    Cifar,
    /// 7×7 conv, stride 2, then 3×3 max pool, stride 2 (for 224×224-ish inputs).
    Imagenet,
}

/// MLP projection head: `Linear → [BN] → ReLU` per hidden layer, then a final `Linear`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Head {
    /// Widths of the hidden layers (empty: a single linear projection).
    #[serde(default = "hidden_default")]
    #[schemars(schema_with = "super::bounds::counts")]
    pub hidden: Vec<usize>,
    /// Output dimension (the embedding the loss sees).
    #[serde(default = "out_default")]
    #[schemars(range(min = 1))]
    pub out_dim: usize,
    /// Batch norm after each hidden linear layer.
    #[serde(default = "crate::spec::data::default_true")]
    pub batch_norm: bool,
}

impl Default for Head {
    fn default() -> Self {
        Head {
            hidden: hidden_default(),
            out_dim: out_default(),
            batch_norm: true,
        }
    }
}

fn hidden_default() -> Vec<usize> {
    vec![512]
}
fn out_default() -> usize {
    128
}

/// The predictor MLP (BYOL, SimSiam): `Linear → [BN] → ReLU` per hidden layer, then a
/// final `Linear` back to the projection's width.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Predictor {
    /// Widths of the hidden layers. Default by method: BYOL's 4096 (Grill et al. 2020,
    /// deepmind-research/byol `predictor_hidden_size`), SimSiam's 512-wide bottleneck
    /// (Chen & He 2021, facebookresearch/simsiam `pred_dim`). Sized for ImageNet's
    /// ResNet-50; a small network wants smaller ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "super::bounds::counts")]
    pub hidden: Option<Vec<usize>>,
    /// Output dimension; it must equal `model.head.out_dim` (the prediction is compared
    /// with the other view's projection), which is the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub out_dim: Option<usize>,
    /// Batch norm after each hidden linear layer (both references use it).
    #[serde(default = "crate::spec::data::default_true")]
    pub batch_norm: bool,
}

impl Predictor {
    /// The hidden widths in force for `method` (`byol` or `simsiam`): the recipe's, or
    /// that method's reference default.
    pub fn hidden_for(&self, method: &str) -> Vec<usize> {
        self.hidden
            .clone()
            .unwrap_or_else(|| vec![if method == "byol" { 4096 } else { 512 }])
    }
}
