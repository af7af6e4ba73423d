//! Datasets and the batch loader: where images come from and how they reach the model.
//!
//! ```text
//! DataConfig --load--> LoadedData { train: Dataset, test: Option<Dataset>, skipped }
//! Dataset + ViewMaker + LoaderConfig --Loader::new--> Loader --epoch(e)--> Batch, Batch, ...
//! ```
//!
//! The loader owns the [`ViewMaker`] contract ([`views`]); `augment` implements it, and
//! this module imports nothing from `augment`.
//!
//! Sources ([`Source`]): IDX files ([`idx`], MNIST / Fashion-MNIST, raw or gzipped),
//! CIFAR-10/100 binary batches ([`cifar`]), image folders ([`folder`]), and the built-in
//! Fashion-MNIST and MNIST subsets compiled into the binary ([`builtin`]).
//!
//! Invariants this module keeps:
//! - A [`Dataset`] holds 8-bit images that all share one `(channels, height, width)`,
//!   with 1 (gray) or 3 (RGB) planar channels; [`Dataset::image`] yields an [`Image`] in
//!   `[0, 1]` (`u8 / 255`). Labels, when present, are `< num_classes()`; class names of
//!   image folders are the sorted subfolder names.
//! - A dataset index is the image's position in its split after hold-out and subset, so
//!   indices of the training split are exactly `0..len()` (what a memory bank needs).
//! - Everything random is seeded from the config's seed through independent streams:
//!   hold-out and subsets from `(seed)`, the epoch order from `(seed, epoch)`, and image
//!   `i`'s augmentation RNG from `(seed, epoch, i)`. So the same seed gives bit-identical
//!   batches whatever the number of loader threads, with or without prefetch.
//! - Bad data is a [`DataError`] naming the file and the problem, never a panic; a panic
//!   inside a view maker is caught and returned as [`DataError::WorkerPanic`].
//! - The loader's threads (its own rayon pool and one prefetch thread per live
//!   [`Epoch`]) stop and are joined when the [`Epoch`] / [`Loader`] is dropped.
//! - Nothing here reads the network or the recipe: paths come from [`DataConfig`], which
//!   the recipe layer fills in.

pub mod builtin;
pub mod check;
pub mod cifar;
pub mod dataset;
pub mod error;
pub mod folder;
pub mod idx;
pub mod image;
pub mod loader;
pub mod source;
pub mod views;

pub use builtin::Builtin;
pub use check::{Conversion, ConversionKind, PathProblem, Survey, check_paths, survey};
pub use cifar::CifarKind;
pub use dataset::Dataset;
pub use error::DataError;
pub use folder::Skipped;
pub use image::Image;
pub use loader::{Batch, Epoch, Loader, LoaderConfig, ViewBatch};
pub use source::{CifarFiles, DataConfig, IdxFiles, LoadedData, Resize, Source, load};
pub use views::ViewMaker;
