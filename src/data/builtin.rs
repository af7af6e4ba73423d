//! The built-in datasets: class-balanced Fashion-MNIST and MNIST subsets compiled into
//! the binary.
//!
//! Each has 10,000 training images (1,000 per class) and 2,000 test images (200 per
//! class), 28x28 grayscale, the first N images of each class of the original IDX files
//! in file order. `assets/fashion-mnist-subset/README.md` and
//! `assets/mnist-subset/README.md` say exactly how the files were made; the licences
//! (Fashion-MNIST: MIT, Zalando SE; MNIST: CC BY-SA 3.0, Yann LeCun, Corinna Cortes and
//! Christopher J.C. Burges) are next to them.

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

/// MNIST's class names, indexed by label: the digits.
pub const MNIST_CLASSES: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// Images in each built-in training split.
pub const TRAIN_LEN: usize = 10_000;

/// Images in each built-in test split.
pub const TEST_LEN: usize = 2_000;

/// Origin name of the Fashion-MNIST subset (the default built-in) in messages; see
/// [`Builtin::origin`].
pub const BUILTIN_NAME: &str = "builtin:fashion-mnist-subset";

/// The four gzipped IDX files of one built-in dataset, as embedded in the binary.
#[derive(Clone, Copy, Debug)]
pub struct BuiltinFiles {
    /// `train-images-idx3-ubyte.gz`.
    pub train_images: &'static [u8],
    /// `train-labels-idx1-ubyte.gz`.
    pub train_labels: &'static [u8],
    /// `t10k-images-idx3-ubyte.gz`.
    pub test_images: &'static [u8],
    /// `t10k-labels-idx1-ubyte.gz`.
    pub test_labels: &'static [u8],
}

macro_rules! embed {
    ($dir:literal) => {
        BuiltinFiles {
            train_images: include_bytes!(concat!(
                "../../assets/",
                $dir,
                "/train-images-idx3-ubyte.gz"
            )),
            train_labels: include_bytes!(concat!(
                "../../assets/",
                $dir,
                "/train-labels-idx1-ubyte.gz"
            )),
            test_images: include_bytes!(concat!(
                "../../assets/",
                $dir,
                "/t10k-images-idx3-ubyte.gz"
            )),
            test_labels: include_bytes!(concat!(
                "../../assets/",
                $dir,
                "/t10k-labels-idx1-ubyte.gz"
            )),
        }
    };
}

const FASHION_MNIST_FILES: BuiltinFiles = embed!("fashion-mnist-subset");
const MNIST_FILES: BuiltinFiles = embed!("mnist-subset");

/// A dataset compiled into the binary (the data layer's side of
/// [`crate::spec::data::BuiltinDataset`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Builtin {
    /// The Fashion-MNIST subset (`assets/fashion-mnist-subset`).
    #[default]
    FashionMnist,
    /// The MNIST subset (`assets/mnist-subset`).
    Mnist,
}

impl Builtin {
    /// Every built-in dataset.
    pub const ALL: [Builtin; 2] = [Builtin::FashionMnist, Builtin::Mnist];

    /// The embedded gzipped IDX files.
    pub fn files(self) -> BuiltinFiles {
        match self {
            Builtin::FashionMnist => FASHION_MNIST_FILES,
            Builtin::Mnist => MNIST_FILES,
        }
    }

    /// The folder under `assets/` the files come from (`fashion-mnist-subset`, …).
    pub fn asset_dir(self) -> &'static str {
        match self {
            Builtin::FashionMnist => "fashion-mnist-subset",
            Builtin::Mnist => "mnist-subset",
        }
    }

    /// The datasets' origin in messages: `builtin:` and the asset folder's name.
    pub fn origin(self) -> &'static str {
        match self {
            Builtin::FashionMnist => BUILTIN_NAME,
            Builtin::Mnist => "builtin:mnist-subset",
        }
    }

    /// Class names, indexed by label.
    pub fn classes(self) -> &'static [&'static str; 10] {
        match self {
            Builtin::FashionMnist => &FASHION_MNIST_CLASSES,
            Builtin::Mnist => &MNIST_CLASSES,
        }
    }

    /// The usual normalisation `(mean, std)` of the dataset's single channel on the
    /// `[0, 1]` scale: the statistics of the full 60,000-image training set, as recipes
    /// conventionally write them. The embedded training subsets' own statistics are
    /// within 0.002 of these (Fashion-MNIST 0.2867 / 0.3540, MNIST 0.1321 / 0.3096).
    pub fn mean_std(self) -> (f64, f64) {
        match self {
            Builtin::FashionMnist => (0.2860, 0.3530),
            Builtin::Mnist => (0.1307, 0.3081),
        }
    }

    /// Decodes the embedded `(train, test)` splits (labelled, 1 x 28 x 28).
    pub fn load(self) -> Result<(Dataset, Dataset), DataError> {
        let f = self.files();
        let train = self.decode(f.train_images, f.train_labels, "train")?;
        let test = self.decode(f.test_images, f.test_labels, "t10k")?;
        Ok((train, test))
    }

    fn decode(self, images: &[u8], labels: &[u8], split: &str) -> Result<Dataset, DataError> {
        let origin = self.origin();
        let ip = format!("{origin}/{split}-images-idx3-ubyte.gz");
        let lp = format!("{origin}/{split}-labels-idx1-ubyte.gz");
        super::source::idx_dataset(
            (images, Path::new(&ip)),
            Some((labels, Path::new(&lp))),
            format!("{origin}/{split}"),
            Some(self.classes().iter().map(|s| s.to_string()).collect()),
        )
    }
}

/// Decodes the embedded Fashion-MNIST `(train, test)` splits (labelled, 1 x 28 x 28).
pub fn fashion_mnist_subset() -> Result<(Dataset, Dataset), DataError> {
    Builtin::FashionMnist.load()
}

/// Decodes the embedded MNIST `(train, test)` splits (labelled, 1 x 28 x 28).
pub fn mnist_subset() -> Result<(Dataset, Dataset), DataError> {
    Builtin::Mnist.load()
}
