//! The `downstream` section: the tasks that measure what the encoder learned.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One downstream task, tagged by `task`. Tasks run in order after training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "task", rename_all = "snake_case", deny_unknown_fields)]
pub enum Task {
    /// Weighted k-nearest-neighbour classification on frozen, L2-normalised features
    /// (Wu et al. 2018): each of the `k` most similar training images votes for its
    /// class with weight `exp(sim / temperature)`; top-1 and top-5 accuracy on the test
    /// split.
    Knn {
        /// Neighbours consulted (≥ 1); 200 in InstDisc, 20 is common for small sets.
        #[serde(default = "k_default")]
        #[schemars(range(min = 1))]
        k: usize,
        /// Temperature of the `exp(sim / τ)` neighbour weights (> 0).
        #[serde(default = "knn_t")]
        #[schemars(schema_with = "super::bounds::positive")]
        temperature: f64,
        /// Similarity used to find neighbours.
        #[serde(default)]
        metric: Metric,
        /// Which features to classify.
        #[serde(default)]
        features: Features,
        /// The share of the training labels the task uses: one fraction in (0, 1] or a
        /// list, e.g. `[0.01, 0.1, 1.0]`. Below 1 the labelled subset is class-balanced
        /// (`round(f·n / classes)` images of each class) and drawn once from the seed,
        /// so every row and every task sees the same images; the report gets a table
        /// and a plot of accuracy against the fraction.
        #[serde(default)]
        #[schemars(schema_with = "super::bounds::fraction_or_list")]
        label_fraction: LabelFraction,
        /// Also run this kNN every this many epochs during training, on the test split,
        /// so the report shows kNN accuracy over epochs; at most `train.epochs`. 0 runs
        /// it only after training.
        #[serde(default)]
        every_epochs: usize,
        /// Also run the same kNN on raw pixels and on the untrained network (same seed),
        /// reported next to the trained network's accuracy.
        #[serde(default = "crate::spec::data::default_true")]
        baselines: bool,
        /// Evaluate on another dataset: a section with the same keys as the top-level
        /// `data`, used instead of it for this task (transfer). Its images must reach
        /// the encoder at the encoder's input shape: `channels` converts gray ↔ RGB
        /// (gray replicated, colour to luma) and `image_size` resizes (bilinear, with
        /// `mixed_sizes: resize`), as at the top level; `validate` refuses a mismatch
        /// and names the key that fixes it. Without `normalize`, the pretraining
        /// data's normalisation is used (the statistics the encoder was trained on).
        /// Absent: the pretraining data.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<Box<super::data::Data>>,
    },
    /// A linear classifier trained on frozen features with SGD (momentum fixed at 0.9,
    /// cosine decay of `lr` to 0 over `epochs`), cross-entropy; test top-1 accuracy.
    LinearProbe {
        /// Training epochs of the classifier (≥ 1).
        #[serde(default = "probe_epochs")]
        #[schemars(range(min = 1))]
        epochs: usize,
        /// Batch size (≥ 1).
        #[serde(default = "probe_batch")]
        #[schemars(range(min = 1))]
        batch_size: usize,
        /// Peak learning rate (> 0) of the classifier's SGD; its momentum is fixed at
        /// 0.9 and the rate decays to 0 with a cosine over `epochs`.
        #[serde(default = "probe_lr")]
        #[schemars(schema_with = "super::bounds::positive")]
        lr: f64,
        /// L2 weight decay of the classifier (≥ 0), or a list of candidates: then each
        /// feature set (trained, untrained, raw pixels) gets its own, chosen by top-1 on
        /// a held-out 10% of the training split after training on the other 90%, and
        /// the classifier is retrained on the whole split with it — the regularisation
        /// selection of the SimCLR paper's linear transfer evaluation (after Kornblith
        /// et al. 2019), which keeps a high-dimensional baseline from being scored
        /// overfitted and a compact one underfitted.
        #[serde(default)]
        #[schemars(schema_with = "super::bounds::non_negative_or_list")]
        weight_decay: WeightDecay,
        /// Which features to classify.
        #[serde(default)]
        features: Features,
        /// Standardise each feature dimension with the training split's mean and
        /// standard deviation before the classifier. Without it, small-scale features
        /// (an untrained network's) underfit and baselines are not comparable.
        #[serde(default = "crate::spec::data::default_true")]
        standardize: bool,
        /// Also train the same probe on raw pixels and on the untrained network (same
        /// seed), reported next to the trained network's accuracy.
        #[serde(default = "crate::spec::data::default_true")]
        baselines: bool,
        /// The share of the training labels the task uses: one fraction in (0, 1] or a
        /// list, e.g. `[0.01, 0.1, 1.0]`. Below 1 the labelled subset is class-balanced
        /// (`round(f·n / classes)` images of each class) and drawn once from the seed,
        /// so every row and every task sees the same images; the report gets a table
        /// and a plot of accuracy against the fraction.
        #[serde(default)]
        #[schemars(schema_with = "super::bounds::fraction_or_list")]
        label_fraction: LabelFraction,
        /// Evaluate on another dataset: a section with the same keys as the top-level
        /// `data`, used instead of it for this task (transfer). Its images must reach
        /// the encoder at the encoder's input shape: `channels` converts gray ↔ RGB
        /// (gray replicated, colour to luma) and `image_size` resizes (bilinear, with
        /// `mixed_sizes: resize`), as at the top level; `validate` refuses a mismatch
        /// and names the key that fixes it. Without `normalize`, the pretraining
        /// data's normalisation is used (the statistics the encoder was trained on).
        /// Absent: the pretraining data.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<Box<super::data::Data>>,
    },
    /// Train backbone and a new linear classifier end to end with labels.
    FineTune {
        /// Training epochs (≥ 1): one value for every label fraction, or a list with
        /// one per fraction (small subsets need more epochs for the same steps).
        #[serde(default = "ft_epochs")]
        #[schemars(schema_with = "super::bounds::count_or_list")]
        epochs: Epochs,
        /// Images per step (≥ 2: batch norm trains on batch statistics): one value for
        /// every label fraction, or a list with one per fraction. A fraction with fewer
        /// images uses them all in one batch, so at 1% of 10,000 images a batch of 256
        /// is one step per epoch; a smaller batch there gives the optimiser more steps
        /// for the same compute. The supervised baseline uses the same batches.
        #[serde(default = "ft_batch")]
        #[schemars(schema_with = "super::bounds::batch_or_list")]
        batch_size: Epochs,
        /// Learning rate of the classifier (> 0; SGD with momentum 0.9, cosine decay).
        #[serde(default = "ft_lr")]
        #[schemars(schema_with = "super::bounds::positive")]
        lr: f64,
        /// The backbone's learning rate is `lr × backbone_lr_scale` (≥ 0; 0 freezes it).
        #[serde(default = "ft_scale")]
        #[schemars(schema_with = "super::bounds::non_negative")]
        backbone_lr_scale: f64,
        /// Weight decay (≥ 0).
        #[serde(default = "ft_wd")]
        #[schemars(schema_with = "super::bounds::non_negative")]
        weight_decay: f64,
        /// The share of the training labels the task uses: one fraction in (0, 1] or a
        /// list, e.g. `[0.01, 0.1, 1.0]`. Below 1 the labelled subset is class-balanced
        /// (`round(f·n / classes)` images of each class) and drawn once from the seed,
        /// so every row and every task sees the same images; the report gets a table
        /// and a plot of accuracy against the fraction.
        #[serde(default)]
        #[schemars(schema_with = "super::bounds::fraction_or_list")]
        label_fraction: LabelFraction,
        /// How the fine-tuned networks (trained and untrained) see each training image:
        /// `flip` (a horizontal flip with probability 0.5, the score measures the
        /// representation) or `first_view` (the recipe's first-view pipeline, as the
        /// supervised baseline; SimCLR's semi-supervised fine-tuning used random crops
        /// and flips).
        #[serde(default)]
        augment: FineTuneAugment,
        /// Put a batch norm (affine, learned, not decayed) between the pooled features
        /// and the linear classifier of every row (trained, untrained, supervised), so
        /// the classifier sees standardised features, as the linear probe does.
        #[serde(default)]
        head_norm: bool,
        /// Also train the supervised baseline: the same backbone and a linear
        /// classifier from scratch with cross-entropy on the same labelled images, with
        /// the recipe's first-view augmentation — the row that answers "did pretraining
        /// beat training on my labels alone?". Absent: no supervised row.
        #[serde(default)]
        supervised: Option<Supervised>,
        /// Evaluate on another dataset: a section with the same keys as the top-level
        /// `data`, used instead of it for this task (transfer). Its images must reach
        /// the encoder at the encoder's input shape: `channels` converts gray ↔ RGB
        /// (gray replicated, colour to luma) and `image_size` resizes (bilinear, with
        /// `mixed_sizes: resize`), as at the top level; `validate` refuses a mismatch
        /// and names the key that fixes it. Without `normalize`, the pretraining
        /// data's normalisation is used (the statistics the encoder was trained on).
        /// Absent: the pretraining data.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<Box<super::data::Data>>,
    },
    /// Pictures of what was learned, written to the run directory as PNG files and
    /// linked from its report.
    Visualize {
        /// Which pictures to draw (at least one); all seven by default.
        #[serde(default = "plots_default")]
        #[schemars(length(min = 1))]
        plots: Vec<Plot>,
        /// Test images embedded for `embedding_pca` and `embedding_tsne` (≥ 2).
        #[serde(default = "samples_default")]
        #[schemars(range(min = 2))]
        samples: usize,
        /// Test images shown as queries in `nearest_neighbors` and as inputs in
        /// `feature_maps` (≥ 1).
        #[serde(default = "queries_default")]
        #[schemars(range(min = 1))]
        queries: usize,
        /// Training neighbours shown next to each query in `nearest_neighbors` (≥ 1).
        #[serde(default = "neighbors_default")]
        #[schemars(range(min = 1))]
        neighbors: usize,
        /// t-SNE's perplexity for `embedding_tsne`: the effective number of neighbours
        /// each point's affinities reach (van der Maaten & Hinton 2008; 5–50 is the
        /// usual range, 30 the usual default). Each point needs 3 × perplexity
        /// neighbours, so it is at most (samples − 1) / 3; a smaller test set lowers it
        /// to what its images allow, with a note.
        #[serde(default = "perplexity_default")]
        #[schemars(schema_with = "super::bounds::positive")]
        perplexity: f64,
        /// Evaluate on another dataset: a section with the same keys as the top-level
        /// `data`, used instead of it for this task (transfer). Its images must reach
        /// the encoder at the encoder's input shape: `channels` converts gray ↔ RGB
        /// (gray replicated, colour to luma) and `image_size` resizes (bilinear, with
        /// `mixed_sizes: resize`), as at the top level; `validate` refuses a mismatch
        /// and names the key that fixes it. Without `normalize`, the pretraining
        /// data's normalisation is used (the statistics the encoder was trained on).
        /// Absent: the pretraining data.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<Box<super::data::Data>>,
    },
}

impl Task {
    /// Every task name, in the order the schema lists the variants (keep beside
    /// [`Task::name`], whose match the compiler checks).
    pub const NAMES: [&'static str; 4] = ["knn", "linear_probe", "fine_tune", "visualize"];

    /// The task's name as a recipe writes it (`task: knn`).
    pub fn name(&self) -> &'static str {
        match self {
            Task::Knn { .. } => "knn",
            Task::LinearProbe { .. } => "linear_probe",
            Task::FineTune { .. } => "fine_tune",
            Task::Visualize { .. } => "visualize",
        }
    }

    /// The task's own dataset (transfer), if it has one.
    pub fn data(&self) -> Option<&super::data::Data> {
        match self {
            Task::Knn { data, .. }
            | Task::LinearProbe { data, .. }
            | Task::FineTune { data, .. }
            | Task::Visualize { data, .. } => data.as_deref(),
        }
    }

    /// Whether the task needs labelled data.
    pub fn needs_labels(&self) -> bool {
        match self {
            Task::Knn { .. } | Task::LinearProbe { .. } | Task::FineTune { .. } => true,
            Task::Visualize { .. } => false,
        }
    }
}

/// The linear probe's weight decay: one value, or candidates chosen on held-out data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum WeightDecay {
    /// This value.
    Fixed(f64),
    /// The best of these on a held-out 10% of the training split.
    Choose(Vec<f64>),
}

impl Default for WeightDecay {
    fn default() -> Self {
        WeightDecay::Fixed(0.0)
    }
}

impl WeightDecay {
    /// The candidate values (one when fixed).
    pub fn candidates(&self) -> Vec<f64> {
        match self {
            WeightDecay::Fixed(v) => vec![*v],
            WeightDecay::Choose(v) => v.clone(),
        }
    }
}

/// The share of the training labels a task uses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum LabelFraction {
    /// One fraction.
    One(f64),
    /// Several, each measured and reported.
    Many(Vec<f64>),
}

impl Default for LabelFraction {
    fn default() -> Self {
        LabelFraction::One(1.0)
    }
}

impl LabelFraction {
    /// The fractions in the order written.
    pub fn values(&self) -> Vec<f64> {
        match self {
            LabelFraction::One(v) => vec![*v],
            LabelFraction::Many(v) => v.clone(),
        }
    }
}

/// How `fine_tune` augments the training images of the fine-tuned networks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FineTuneAugment {
    /// A horizontal flip with probability 0.5.
    #[default]
    Flip,
    /// The recipe's first-view pipeline (the supervised baseline's augmentation).
    FirstView,
}

/// A count per label fraction (epochs, batch sizes): one value, or one per fraction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Epochs {
    /// The same for every fraction.
    One(usize),
    /// One per label fraction, in the same order.
    PerFraction(Vec<usize>),
}

impl Epochs {
    /// The epochs of each of `fractions` fractions (a list of another length repeats
    /// its last value; `validate` reports it).
    pub fn per_fraction(&self, fractions: usize) -> Vec<usize> {
        match self {
            Epochs::One(e) => vec![*e; fractions],
            Epochs::PerFraction(v) => (0..fractions)
                .map(|i| v.get(i).or(v.last()).copied().unwrap_or(1))
                .collect(),
        }
    }

    /// The values as written.
    pub fn values(&self) -> Vec<usize> {
        match self {
            Epochs::One(e) => vec![*e],
            Epochs::PerFraction(v) => v.clone(),
        }
    }
}

/// The supervised baseline of `fine_tune`: the backbone trained from scratch on the
/// labelled images (SGD with momentum 0.9, cosine decay to 0, the fine-tune's batch
/// size), with the recipe's first-view augmentation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Supervised {
    /// Training epochs: one value or one per label fraction.
    #[serde(default = "sup_epochs")]
    #[schemars(schema_with = "super::bounds::count_or_list")]
    pub epochs: Epochs,
    /// Peak learning rate (> 0) of backbone and classifier.
    #[serde(default = "sup_lr")]
    #[schemars(schema_with = "super::bounds::positive")]
    pub lr: f64,
    /// Weight decay (≥ 0) of conv and linear weights.
    #[serde(default = "ft_wd")]
    #[schemars(schema_with = "super::bounds::non_negative")]
    pub weight_decay: f64,
}

fn sup_epochs() -> Epochs {
    Epochs::One(30)
}
fn sup_lr() -> f64 {
    0.05
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

/// A picture drawn by `visualize`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Plot {
    /// A grid of the first convolution's kernels, one tile per output channel.
    Filters,
    /// A few test images and the activation maps of each backbone stage.
    FeatureMaps,
    /// 2-D PCA of test embeddings, coloured by class.
    EmbeddingPca,
    /// 2-D t-SNE of test embeddings, coloured by class (exact repulsion; about a
    /// second for 1,000 points).
    EmbeddingTsne,
    /// Test images (queries) next to their nearest training neighbours.
    NearestNeighbors,
    /// The training loss, learning rate and kNN accuracy over training (every run
    /// draws them now; naming this plot changes nothing).
    TrainingCurves,
    /// A grid of augmented views of a few training images.
    AugmentationViews,
}

impl Plot {
    /// Every plot kind, in the order the report shows them (the default of `plots`).
    pub const ALL: [Plot; 7] = [
        Plot::Filters,
        Plot::FeatureMaps,
        Plot::EmbeddingPca,
        Plot::EmbeddingTsne,
        Plot::NearestNeighbors,
        Plot::TrainingCurves,
        Plot::AugmentationViews,
    ];
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
fn ft_epochs() -> Epochs {
    Epochs::One(10)
}
fn ft_batch() -> Epochs {
    Epochs::One(256)
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
    Plot::ALL.to_vec()
}
fn perplexity_default() -> f64 {
    30.0
}
fn samples_default() -> usize {
    1000
}
fn queries_default() -> usize {
    8
}
fn neighbors_default() -> usize {
    8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_lists_every_task_the_schema_knows() {
        // The schema's `task` enum comes from the variants, so a task missing from
        // `NAMES` fails here.
        let schema: serde_json::Value =
            serde_json::from_str(&crate::spec::schema::generate_pretty()).unwrap();
        let listed: Vec<&str> = schema["definitions"]["Task"]["properties"]["task"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(listed, Task::NAMES);
        // Each variant, parsed from its minimal form, reports its listed name.
        for n in Task::NAMES {
            let t: Task = serde_json::from_value(serde_json::json!({"task": n})).unwrap();
            assert_eq!(t.name(), n);
        }
    }
}
