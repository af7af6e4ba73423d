//! The `model` section: the encoder (backbone) and the projection head.

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
