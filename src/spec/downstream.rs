//! The `downstream` section: the tasks that measure what the encoder learned.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One downstream task, tagged by `task`. Tasks run in order after training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "task", rename_all = "snake_case", deny_unknown_fields)]
pub enum Task {
    /// Weighted k-nearest-neighbour classification on frozen features (Wu et al. 2018).
    Knn {
        /// Neighbours consulted (≥ 1); 200 in InstDisc, 20 is common for small sets.
        #[serde(default = "k_default")]
        k: usize,
        /// Temperature of the `exp(sim / τ)` neighbour weights (> 0).
        #[serde(default = "knn_t")]
        temperature: f64,
        /// Similarity used to find neighbours.
        #[serde(default)]
        metric: Metric,
        /// Which features to classify.
        #[serde(default)]
        features: Features,
    },
    /// A linear classifier trained on frozen features.
    LinearProbe {
        /// Training epochs of the classifier.
        #[serde(default = "probe_epochs")]
        epochs: usize,
        /// Batch size.
        #[serde(default = "probe_batch")]
        batch_size: usize,
        /// Learning rate (SGD with momentum 0.9, cosine decay).
        #[serde(default = "probe_lr")]
        lr: f64,
        /// Weight decay.
        #[serde(default)]
        weight_decay: f64,
        /// Which features to classify.
        #[serde(default)]
        features: Features,
    },
    /// Train backbone and a new linear classifier end to end with labels.
    FineTune {
        /// Training epochs.
        #[serde(default = "ft_epochs")]
        epochs: usize,
        /// Batch size.
        #[serde(default = "probe_batch")]
        batch_size: usize,
        /// Learning rate of the classifier (SGD with momentum 0.9, cosine decay).
        #[serde(default = "ft_lr")]
        lr: f64,
        /// The backbone's learning rate is `lr × backbone_lr_scale`.
        #[serde(default = "ft_scale")]
        backbone_lr_scale: f64,
        /// Weight decay.
        #[serde(default = "ft_wd")]
        weight_decay: f64,
    },
    /// Pictures of what was learned, written to the run directory.
    Visualize {
        /// Which pictures to draw.
        #[serde(default = "plots_default")]
        plots: Vec<Plot>,
        /// Test images embedded for the embedding plot.
        #[serde(default = "samples_default")]
        samples: usize,
    },
}

impl Task {
    /// The `task` name as written in a recipe.
    pub fn name(&self) -> &'static str {
        match self {
            Task::Knn { .. } => "knn",
            Task::LinearProbe { .. } => "linear_probe",
            Task::FineTune { .. } => "fine_tune",
            Task::Visualize { .. } => "visualize",
        }
    }

    /// Whether the task needs labelled data.
    pub fn needs_labels(&self) -> bool {
        !matches!(self, Task::Visualize { .. })
    }
}

/// Similarity for kNN.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Cosine similarity of L2-normalised features.
    #[default]
    Cosine,
    /// Negative Euclidean distance.
    Euclidean,
}

/// Which representation a downstream task reads.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Features {
    /// The backbone's pooled features (the usual choice).
    #[default]
    Backbone,
    /// The projection head's output.
    Head,
}

/// A visualisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Plot {
    /// 2-D PCA of test embeddings, coloured by class.
    EmbeddingPca,
    /// Test images next to their nearest training neighbours.
    NearestNeighbors,
    /// The training loss and learning rate over steps.
    TrainingCurves,
    /// A grid of augmented views.
    AugmentationViews,
}

fn k_default() -> usize {
    20
}
fn knn_t() -> f64 {
    0.07
}
fn probe_epochs() -> usize {
    20
}
fn probe_batch() -> usize {
    256
}
fn probe_lr() -> f64 {
    0.1
}
fn ft_epochs() -> usize {
    10
}
fn ft_lr() -> f64 {
    0.01
}
fn ft_scale() -> f64 {
    0.1
}
fn ft_wd() -> f64 {
    5e-4
}
fn plots_default() -> Vec<Plot> {
    vec![
        Plot::EmbeddingPca,
        Plot::NearestNeighbors,
        Plot::TrainingCurves,
    ]
}
fn samples_default() -> usize {
    1000
}
