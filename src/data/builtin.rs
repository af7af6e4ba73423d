//! The built-in dataset: a class-balanced Fashion-MNIST subset compiled into the binary.
//!
//! 10,000 training images (1,000 per class) and 2,000 test images (200 per class), 28x28
//! grayscale, the first N images of each class of the original IDX files in file order.
//! `assets/fashion-mnist-subset/README.md` says exactly how the files were made; the
//! licence (MIT, Zalando SE) is next to them.

use std::path::Path;

use super::{DataError, Dataset};

/// Fashion-MNIST's class names, indexed by label.
pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

const TRAIN_IMAGES: &[u8] =
    include_bytes!("../../assets/fashion-mnist-subset/train-images-idx3-ubyte.gz");
const TRAIN_LABELS: &[u8] =
    include_bytes!("../../assets/fashion-mnist-subset/train-labels-idx1-ubyte.gz");
const TEST_IMAGES: &[u8] =
    include_bytes!("../../assets/fashion-mnist-subset/t10k-images-idx3-ubyte.gz");
const TEST_LABELS: &[u8] =
    include_bytes!("../../assets/fashion-mnist-subset/t10k-labels-idx1-ubyte.gz");

/// Images in the built-in training split.
pub const TRAIN_LEN: usize = 10_000;

/// Images in the built-in test split.
pub const TEST_LEN: usize = 2_000;

/// Name used as the datasets' origin in messages.
pub const BUILTIN_NAME: &str = "builtin:fashion-mnist-subset";

fn decode(images: &[u8], labels: &[u8], split: &str) -> Result<Dataset, DataError> {
    let ip = format!("{BUILTIN_NAME}/{split}-images-idx3-ubyte.gz");
    let lp = format!("{BUILTIN_NAME}/{split}-labels-idx1-ubyte.gz");
    super::source::idx_dataset(
        (images, Path::new(&ip)),
        Some((labels, Path::new(&lp))),
        format!("{BUILTIN_NAME}/{split}"),
        Some(
            FASHION_MNIST_CLASSES
                .iter()
                .map(|s| s.to_string())
                .collect(),
        ),
    )
}

/// Decodes the embedded `(train, test)` splits (labelled, 1 x 28 x 28).
pub fn fashion_mnist_subset() -> Result<(Dataset, Dataset), DataError> {
    let train = decode(TRAIN_IMAGES, TRAIN_LABELS, "train")?;
    let test = decode(TEST_IMAGES, TEST_LABELS, "t10k")?;
    Ok((train, test))
}
