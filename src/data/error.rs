//! The one error type of the data layer: every variant names the file (or folder) and
//! says what is wrong with it, so a user can fix their data without reading code.

use std::fmt;
use std::path::PathBuf;

/// Why a dataset could not be loaded or a batch could not be made.
#[derive(Debug)]
pub enum DataError {
    /// A configured path does not exist.
    Missing {
        /// The path that was looked for.
        path: PathBuf,
        /// What it was supposed to be ("IDX images file", "image folder", ...).
        what: &'static str,
    },
    /// The operating system refused to read a file or folder.
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A folder that should hold images holds none (or every image was skipped).
    EmptyFolder {
        /// The folder.
        path: PathBuf,
        /// What was looked for, e.g. "no image files (png, jpg, ...)".
        detail: String,
    },
    /// A folder mixes class subfolders and loose image files, so it is neither layout.
    MixedLayout {
        /// The folder.
        path: PathBuf,
        /// One of the loose image files.
        example: PathBuf,
    },
    /// An image file could not be decoded (corrupt, truncated or not really an image).
    Decode {
        /// The image file.
        path: PathBuf,
        /// The decoder's message.
        message: String,
    },
    /// An IDX file is malformed: wrong magic number, wrong rank, or a size that does not
    /// match its header.
    BadIdx {
        /// The IDX file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// An IDX images file and its labels file disagree on the number of items.
    IdxCountMismatch {
        /// The images file.
        images: PathBuf,
        /// The labels file.
        labels: PathBuf,
        /// Items in the images file.
        n_images: usize,
        /// Items in the labels file.
        n_labels: usize,
    },
    /// A CIFAR binary batch is malformed (truncated, empty, or a label out of range).
    BadCifar {
        /// The batch file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// An image's size differs from the others and the configuration says not to resize.
    MixedSizes {
        /// The image whose size differs.
        path: PathBuf,
        /// Its `(height, width)`.
        found: (usize, usize),
        /// The `(height, width)` expected (the configured size, or the first image's).
        expected: (usize, usize),
        /// Where the expected size came from.
        expected_from: String,
    },
    /// Images are smaller than a required minimum (e.g. the crop size).
    TooSmall {
        /// The dataset (its origin path or name).
        origin: String,
        /// The images' `(height, width)`.
        size: (usize, usize),
        /// The required minimum `(height, width)`.
        min: (usize, usize),
        /// Why the minimum exists, e.g. "the crop size".
        reason: String,
    },
    /// The train and test image folders have different class subfolders.
    ClassMismatch {
        /// The train folder.
        train: PathBuf,
        /// The test folder.
        test: PathBuf,
        /// Classes present in one folder but not the other.
        differences: Vec<String>,
    },
    /// Labels were asked for but the source has none.
    LabelsRequired {
        /// The source, described.
        source: String,
    },
    /// The configuration itself is inconsistent (a fraction out of range, ...).
    Config(String),
    /// The loader's worker thread pool could not be created.
    ThreadPool(String),
    /// A view maker returned a view whose shape differs from what it declared.
    ViewShape {
        /// The view's position.
        view: usize,
        /// The declared `(channels, height, width)`.
        declared: (usize, usize, usize),
        /// The shape actually returned.
        got: (usize, usize, usize),
    },
    /// A loader worker panicked; the panic message is kept.
    WorkerPanic(String),
}

fn show(p: &std::path::Path) -> String {
    p.display().to_string()
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DataError::*;
        match self {
            Missing { path, what } => write!(f, "{what} `{}` does not exist", show(path)),
            Io { path, source } => write!(f, "cannot read `{}`: {source}", show(path)),
            EmptyFolder { path, detail } => write!(f, "folder `{}` is empty: {detail}", show(path)),
            MixedLayout { path, example } => write!(
                f,
                "folder `{}` has both class subfolders and loose images (e.g. `{}`); \
                 put every image in a class subfolder, or use a flat folder without subfolders",
                show(path),
                show(example)
            ),
            Decode { path, message } => write!(
                f,
                "{}; set `data.skip_unreadable: true` to skip unreadable images (they are counted and reported)",
                decode_message(path, message)
            ),
            BadIdx { path, problem } => write!(f, "bad IDX file `{}`: {problem}", show(path)),
            IdxCountMismatch {
                images,
                labels,
                n_images,
                n_labels,
            } => write!(
                f,
                "IDX images file `{}` has {n_images} images but labels file `{}` has {n_labels} labels",
                show(images),
                show(labels)
            ),
            BadCifar { path, problem } => {
                write!(f, "bad CIFAR batch `{}`: {problem}", show(path))
            }
            MixedSizes {
                path,
                found,
                expected,
                expected_from,
            } => write!(
                f,
                "image `{}` is {}x{} (HxW) but {} is {}x{}; set an image size with resizing \
                 enabled, or make all images the same size",
                show(path),
                found.0,
                found.1,
                expected_from,
                expected.0,
                expected.1
            ),
            TooSmall {
                origin,
                size,
                min,
                reason,
            } => write!(
                f,
                "images of `{origin}` are {}x{} (HxW), smaller than {} ({}x{})",
                size.0, size.1, reason, min.0, min.1
            ),
            ClassMismatch {
                train,
                test,
                differences,
            } => write!(
                f,
                "train folder `{}` and test folder `{}` have different classes: {}",
                show(train),
                show(test),
                differences.join(", ")
            ),
            LabelsRequired { source } => write!(
                f,
                "labels were requested but {source} has none (a flat image folder or an IDX \
                 source without a labels file is unlabelled); set `data.labels: false` to \
                 train without them (every method but `supcon` can), or put the images in \
                 one subfolder per class"
            ),
            Config(msg) => write!(f, "invalid data configuration: {msg}"),
            ThreadPool(msg) => write!(f, "cannot start the loader's worker threads: {msg}"),
            ViewShape {
                view,
                declared,
                got,
            } => write!(
                f,
                "view {view} has shape {got:?} (C,H,W) but the augment chain declared {declared:?}"
            ),
            WorkerPanic(msg) => write!(f, "a data loader worker panicked: {msg}"),
        }
    }
}

impl std::error::Error for DataError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DataError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// What is wrong with an undecodable image, without the hint of how to skip it (a
/// skipped file's reason is reported when skipping is already on).
pub(crate) fn decode_message(path: &std::path::Path, message: &str) -> String {
    format!(
        "cannot decode image `{}`: {}",
        show(path),
        message.trim_end_matches('.')
    )
}

/// Maps an I/O error on `path` to [`DataError::Missing`] when the path is absent, else
/// to [`DataError::Io`].
pub(crate) fn io_error(path: &std::path::Path, what: &'static str, e: std::io::Error) -> DataError {
    if e.kind() == std::io::ErrorKind::NotFound {
        DataError::Missing {
            path: path.to_path_buf(),
            what,
        }
    } else {
        DataError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }
}
