//! The `data` section: where images come from and what the model sees.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where the images come from, what size and channel count the model sees, and how
/// they are normalised.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Data {
    /// The dataset: a built-in one, IDX files, CIFAR binary batches or an image folder.
    pub source: Source,
    /// Side of the square images the dataset yields, in pixels (before augmentation).
    /// Source images of another size are handled as `mixed_sizes` says.
    #[schemars(range(min = 1, max = 4096))]
    pub image_size: usize,
    /// Channels the model sees: 1 (grayscale) or 3 (RGB). Gray sources are replicated
    /// to 3 channels; colour sources are converted to luma for 1.
    #[serde(default = "default_channels")]
    #[schemars(range(min = 1, max = 3))]
    pub channels: usize,
    /// What to do with source images whose size differs from `image_size`.
    #[serde(default)]
    pub mixed_sizes: MixedSizes,
    /// Per-channel normalisation applied after augmentation and to evaluation images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalize: Option<Normalize>,
    /// Whether the dataset's labels are used. Self-supervised methods train without
    /// them; SupCon and the downstream kNN, linear probe and fine-tune need them.
    #[serde(default = "default_true")]
    pub labels: bool,
    /// Fraction of the training set to use (class-balanced when labelled), in (0, 1].
    #[serde(default = "default_one")]
    #[schemars(schema_with = "super::bounds::fraction")]
    pub subset: f64,
    /// Fraction of the training images held out as the test split when the source has
    /// no test split of its own (an image folder without `test`). 0 means no test split.
    #[serde(default)]
    #[schemars(schema_with = "super::bounds::unit_open")]
    pub test_fraction: f64,
    /// Skip unreadable images (and report how many) instead of failing.
    #[serde(default)]
    pub skip_unreadable: bool,
}

/// The dataset format and its files, tagged by `format`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "format", rename_all = "snake_case", deny_unknown_fields)]
pub enum Source {
    /// A dataset compiled into the binary: nothing to download.
    Builtin {
        /// Which built-in dataset.
        #[serde(default)]
        name: BuiltinDataset,
    },
    /// MNIST-style IDX files (raw or `.gz`), e.g. MNIST or Fashion-MNIST.
    Idx {
        /// Training images (`train-images-idx3-ubyte[.gz]`).
        train_images: String,
        /// Training labels (`train-labels-idx1-ubyte[.gz]`).
        train_labels: String,
        /// Test images, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        test_images: Option<String>,
        /// Test labels, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        test_labels: Option<String>,
    },
    /// CIFAR-10 or CIFAR-100 binary batches (`data_batch_1.bin` … / `train.bin`).
    Cifar {
        /// CIFAR-10 or CIFAR-100.
        #[serde(default)]
        variant: CifarVariant,
        /// Folder holding the `.bin` batch files.
        dir: String,
    },
    /// A folder of images: one subfolder per class (labelled) or a flat folder
    /// (unlabelled). Any format the `image` crate reads (PNG, JPEG, BMP, …).
    ImageFolder {
        /// Training folder.
        train: String,
        /// Test folder with the same class subfolders, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        test: Option<String>,
    },
}

/// Datasets embedded in the binary.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BuiltinDataset {
    /// A class-balanced Fashion-MNIST subset: 10,000 training and 2,000 test images,
    /// 28×28 grayscale, 10 classes (MIT licence, Zalando Research). Usual
    /// normalisation: mean 0.2860, std 0.3530.
    #[default]
    FashionMnist,
    /// A class-balanced MNIST subset (handwritten digits): 10,000 training and 2,000
    /// test images, 28×28 grayscale, 10 classes "0"–"9" (CC BY-SA 3.0, Yann LeCun,
    /// Corinna Cortes and Christopher J.C. Burges). Usual normalisation: mean 0.1307,
    /// std 0.3081.
    Mnist,
}

/// CIFAR variant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CifarVariant {
    /// 10 classes, `data_batch_{1..5}.bin` + `test_batch.bin`.
    #[default]
    Cifar10,
    /// 100 classes (fine labels), `train.bin` + `test.bin`.
    Cifar100,
}

/// Handling of images whose size differs from `data.image_size`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MixedSizes {
    /// Resize (bilinear) to `image_size`.
    #[default]
    Resize,
    /// Report the image as an error.
    Error,
}

/// Per-channel normalisation: `(x - mean) / std`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Normalize {
    /// Mean per channel (one value per channel).
    pub mean: Vec<f64>,
    /// Standard deviation per channel, each > 0.
    #[schemars(schema_with = "super::bounds::positive_list")]
    pub std: Vec<f64>,
}

fn default_channels() -> usize {
    3
}
pub(crate) fn default_true() -> bool {
    true
}
pub(crate) fn default_one() -> f64 {
    1.0
}

impl Source {
    /// Whether the source has a test split of its own.
    pub fn has_test_split(&self) -> bool {
        match self {
            Source::Builtin { .. } | Source::Cifar { .. } => true,
            Source::Idx { test_images, .. } => test_images.is_some(),
            Source::ImageFolder { test, .. } => test.is_some(),
        }
    }

    /// Number of training images, when it is known without reading files.
    pub fn known_train_len(&self) -> Option<usize> {
        match self {
            Source::Builtin {
                name: BuiltinDataset::FashionMnist | BuiltinDataset::Mnist,
            } => Some(10_000),
            Source::Cifar { .. } => Some(50_000),
            _ => None,
        }
    }
}
