//! The recipe language: typed sections, loading with positions, and semantic checks.
//!
//! One file per recipe section ([`data`], [`augment`], [`model`], [`loss`], [`optim`],
//! [`train`], [`downstream`]); their doc comments become the JSON Schema's
//! descriptions. [`load`] turns text into a checked [`Recipe`]; [`schema`] generates
//! and applies the schema; [`check`] holds the rules a schema cannot express. This
//! layer knows nothing about tensors.

pub mod augment;
pub mod bounds;
pub mod check;
pub mod data;
pub mod downstream;
pub mod load;
pub mod loss;
pub mod model;
pub mod optim;
pub mod schema;
pub mod train;
pub mod validate;
pub mod yaml;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use load::{Loaded, Loader};

/// A whole experiment: data, views, model, objective, optimisation and evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(
    title = "recipe",
    description = "A contrastive representation-learning experiment on images."
)]
pub struct Recipe {
    /// Version of the recipe language; currently 1.
    #[schemars(range(min = 1, max = 1))]
    pub version: u32,
    /// A short name; each run writes to a new directory `<output.dir>/<name>-<timestamp>/`.
    #[schemars(length(min = 1), regex(pattern = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"))]
    pub name: String,
    /// Free text describing the experiment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A base recipe this one extends (relative path); keys here override it, mappings
    /// merge deeply, sequences are replaced. Resolved away at load time.
    #[serde(default, skip_serializing)]
    pub extends: Option<String>,
    /// Seed of every random choice (initialisation, shuffling, augmentation).
    #[serde(default)]
    pub seed: u64,
    /// The dataset.
    pub data: data::Data,
    /// How the views are made.
    #[serde(default)]
    pub augment: augment::Augment,
    /// The encoder and projection head.
    pub model: model::Model,
    /// The objective and its state (queues, momentum encoders, prototypes).
    pub loss: loss::Loss,
    /// The optimiser.
    pub optimizer: optim::Optimizer,
    /// The learning-rate schedule.
    #[serde(default)]
    pub schedule: optim::Schedule,
    /// Length, batch size and device of training.
    pub train: train::Train,
    /// Tasks run after training, in order.
    #[serde(default)]
    pub downstream: Vec<downstream::Task>,
    /// Where results go.
    #[serde(default)]
    pub output: train::Output,
}
