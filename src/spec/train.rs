//! The `train` and `output` sections.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How long and how big the training run is, and where it runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Train {
    /// Passes over the training set.
    #[schemars(range(min = 1))]
    pub epochs: usize,
    /// Images per batch (each image yields `augment.views` views), at least 2: the
    /// other images of the batch are the negatives.
    #[schemars(range(min = 2))]
    pub batch_size: usize,
    /// Where the model runs.
    #[serde(default)]
    pub device: Device,
    /// CPU threads for the model and the augmentation; 0 uses every core.
    #[serde(default)]
    pub threads: usize,
    /// Write a checkpoint every this many epochs (0: only at the end).
    #[serde(default)]
    pub checkpoint_every: usize,
    /// Log the loss every this many steps.
    #[serde(default = "log_default")]
    #[schemars(range(min = 1))]
    pub log_every: usize,
    /// Batches prepared ahead in the background while the model trains.
    #[serde(default = "prefetch_default")]
    pub prefetch: usize,
    /// In a data-parallel run (`mpirun -n K recipe run`), compute batch-norm statistics
    /// over the whole global batch instead of each rank's slice (as PyTorch's
    /// `SyncBatchNorm`); with it, K ranks reproduce one process. No effect in a single
    /// process.
    #[serde(default)]
    pub sync_batch_norm: bool,
    /// Training images (a fixed sample drawn from the seed, un-augmented) on which the
    /// collapse indicators are measured after every epoch: the per-dimension std of the
    /// L2-normalised projector outputs (SimSiam; about 1/√d when healthy, 0 when
    /// collapsed) and the effective rank of the backbone features (RankMe). Logged to
    /// `metrics.jsonl`, drawn in `collapse.png` and `rank.png`, with a warning on
    /// collapse. 0 turns them off; at least 2 otherwise.
    #[serde(default = "watch_default")]
    pub watch_samples: usize,
}

fn watch_default() -> usize {
    512
}

fn log_default() -> usize {
    10
}
fn prefetch_default() -> usize {
    2
}

/// The compute device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Device {
    /// CUDA when this binary was built with it, else the CPU.
    #[default]
    Auto,
    /// The CPU (always available).
    Cpu,
    /// An NVIDIA GPU; needs a binary built with `--features cuda`.
    Cuda,
}

/// Where results are written.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Output {
    /// Parent of the run directories. Each run writes to a new directory
    /// `<dir>/<name>-<timestamp>/` (the recipe's `name`, then the start time), so a run
    /// never overwrites an earlier one. Relative paths are taken from the current
    /// directory.
    #[serde(default = "dir_default")]
    pub dir: String,
}

impl Default for Output {
    fn default() -> Self {
        Output { dir: dir_default() }
    }
}

fn dir_default() -> String {
    "runs".into()
}
