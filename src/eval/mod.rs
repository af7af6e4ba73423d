//! Downstream evaluation: what a trained encoder's features are worth.
//!
//! ```text
//! Model + ParamStore + Dataset --features::extract--> FeatureMatrix (n × dim, labels)
//!   FeatureMatrix (train, test) --knn::knn-------------------> KnnResult
//!   FeatureMatrix (train, test) --linear_probe::linear_probe-> ProbeResult
//!   FeatureMatrix --pca::pca_2d------------------------------> 2-D coordinates
//! Model + ParamStore + Dataset (train, test) --fine_tune::fine_tune--> FineTuneResult
//! ```
//!
//! - [`features`](mod@crate::eval::features): frozen features of a dataset (backbone or
//!   head, evaluation-mode batch norm, no tape) and the raw-pixel baseline.
//! - [`knn`](mod@crate::eval::knn): InstDisc's weighted k-nearest-neighbour classifier
//!   (cosine or Euclidean), and the neighbour lists behind the nearest-neighbour picture.
//! - [`linear_probe`](mod@crate::eval::linear_probe): a softmax classifier on frozen,
//!   standardised features.
//! - [`fine_tune`](mod@crate::eval::fine_tune): backbone and a fresh classifier trained end
//!   to end on labels.
//! - [`pca`](mod@crate::eval::pca): the 2-D principal-component projection of features.
//! - [`tsne`](mod@crate::eval::tsne): the 2-D t-SNE map of features (exact repulsion,
//!   sparse perplexity-calibrated affinities).
//! - [`collapse`](mod@crate::eval::collapse): the collapse indicators watched every epoch
//!   (SimSiam's normalised-embedding std, RankMe's effective rank) and the symmetric
//!   eigen-solver behind the rank.
//! - [`downstream`](mod@crate::eval::downstream): the downstream tasks of a run — one
//!   `Task` variant per task, each run by its own file (`knn`, `linear_probe`,
//!   `fine_tune`, [`visualize`](mod@crate::eval::visualize)) against the trained encoder
//!   and its baselines, returning its JSON, table columns, metrics record and figures.
//!
//! Configs are plain structs (no recipe types: `build` maps the recipe's `downstream`
//! section onto them). Invariants:
//! - Nothing here changes the caller's parameters: feature extraction runs batch norm in
//!   evaluation mode (which writes nothing), and fine-tuning works on a clone of the store.
//! - Everything random (probe shuffling, fine-tuning order and flips, classifier
//!   initialisation) comes from the config's seed, so the same inputs and seed give the
//!   same numbers run after run on one machine (the probe's products run single-threaded
//!   in a fixed order; fine-tuning is as repeatable as the engine's kernels).
//! - Bad input (no labels, mismatched sizes, zero `k`, an empty split) is an
//!   [`EvalError`](crate::eval::EvalError), never a panic.
//! - Model code is generic over [`EngineDevice`](crate::nn::EngineDevice); the pure math
//!   (kNN, probe, PCA) works on host `f32` slices with `gemm` and rayon.

use std::fmt;

use crate::augment::AugmentError;
use crate::nn::ModelError;
use crate::optim::OptimError;
use crate::optim::schedule::ScheduleError;

pub mod collapse;
pub mod downstream;
pub mod features;
pub mod fine_tune;
pub mod knn;
mod linalg;
pub mod linear_probe;
pub mod pca;
pub mod subsets;
pub mod tsne;
pub mod visualize;

pub use features::{FeatureMatrix, Normalize, Which, extract, raw_pixels};
pub use fine_tune::{FineTuneConfig, FineTuneResult, fine_tune};
pub use knn::{KnnConfig, KnnResult, Metric, knn, nearest};
pub use linear_probe::{ProbeConfig, ProbeResult, linear_probe, linear_probe_select};
pub use pca::{Pca, pca_2d};

/// Why an evaluation could not run.
#[derive(Debug)]
pub enum EvalError {
    /// The model does not fit the data (channels, image size) or could not be built.
    Model(ModelError),
    /// The optimiser rejected a step (learning rate, device error).
    Optim(OptimError),
    /// The learning-rate schedule could not be built (epochs, lr).
    Schedule(ScheduleError),
    /// The normalisation does not fit the images.
    Normalize(AugmentError),
    /// A configuration value is out of range (`k = 0`, temperature ≤ 0, …).
    Config(String),
    /// The data cannot be used as given (no labels, no images, sizes that differ).
    Data(String),
}

impl fmt::Display for EvalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EvalError::Model(e) => write!(f, "{e}"),
            EvalError::Optim(e) => write!(f, "{e}"),
            EvalError::Schedule(e) => write!(f, "{e}"),
            EvalError::Normalize(e) => write!(f, "cannot normalise the images: {e}"),
            EvalError::Config(m) => write!(f, "invalid evaluation setting: {m}"),
            EvalError::Data(m) => write!(f, "cannot evaluate: {m}"),
        }
    }
}

impl std::error::Error for EvalError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            EvalError::Model(e) => Some(e),
            EvalError::Optim(e) => Some(e),
            EvalError::Schedule(e) => Some(e),
            EvalError::Normalize(e) => Some(e),
            EvalError::Config(_) | EvalError::Data(_) => None,
        }
    }
}

impl From<ModelError> for EvalError {
    fn from(e: ModelError) -> Self {
        EvalError::Model(e)
    }
}

impl From<OptimError> for EvalError {
    fn from(e: OptimError) -> Self {
        EvalError::Optim(e)
    }
}

impl From<ScheduleError> for EvalError {
    fn from(e: ScheduleError) -> Self {
        EvalError::Schedule(e)
    }
}

impl From<AugmentError> for EvalError {
    fn from(e: AugmentError) -> Self {
        EvalError::Normalize(e)
    }
}

/// Top-1 and top-5 accuracy in percent of class scores `scores` (`n × classes`,
/// row-major) against `labels`. Classes are ranked by score, ties by lower class index,
/// so the result is deterministic; with fewer than five classes top-5 counts all.
pub(crate) fn topk_accuracy(scores: &[f32], classes: usize, labels: &[u32]) -> (f64, f64) {
    if labels.is_empty() || classes == 0 {
        return (0.0, 0.0);
    }
    let (mut top1, mut top5) = (0usize, 0usize);
    for (row, &y) in scores.chunks_exact(classes).zip(labels) {
        let y = y as usize;
        let Some(&sy) = row.get(y).filter(|s| !s.is_nan()) else {
            continue;
        };
        // Rank of the true class: classes strictly better, or equal with a lower index.
        let rank = row
            .iter()
            .enumerate()
            .filter(|&(c, &s)| s > sy || (s == sy && c < y))
            .count();
        top1 += usize::from(rank == 0);
        top5 += usize::from(rank < 5);
    }
    let n = labels.len() as f64;
    (100.0 * top1 as f64 / n, 100.0 * top5 as f64 / n)
}

/// The labels of `m`, or an error naming `what` when it has none.
pub(crate) fn labels_of<'a>(m: &'a FeatureMatrix, what: &str) -> Result<&'a [u32], EvalError> {
    m.labels
        .as_deref()
        .ok_or_else(|| EvalError::Data(format!("the {what} features have no labels")))
}

/// Number of classes seen in either label set (largest label + 1).
pub(crate) fn class_count(a: &[u32], b: &[u32]) -> usize {
    a.iter().chain(b).max().map_or(0, |&m| m as usize + 1)
}
