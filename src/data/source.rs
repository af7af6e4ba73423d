//! Dataset sources and their configuration: what to load, and how to turn it into the
//! train and test [`Dataset`]s a recipe trains and evaluates on.

use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::cifar::{self, CifarKind};
use super::dataset::RawImage;
use super::folder::{self, Skipped};
use super::{DataError, Dataset, builtin, idx};

/// Where the images come from.
#[derive(Clone, Debug, PartialEq)]
pub enum Source {
    /// An embedded dataset (10,000 train / 2,000 test, 1 x 28 x 28): the Fashion-MNIST
    /// or the MNIST subset.
    Builtin(builtin::Builtin),
    /// IDX files (MNIST / Fashion-MNIST), raw or gzipped.
    Idx(IdxFiles),
    /// CIFAR-10 or CIFAR-100 binary batches.
    Cifar(CifarFiles),
    /// An image folder: one subfolder per class (labelled) or a flat folder (unlabelled).
    ImageFolder {
        /// The training folder.
        train: PathBuf,
        /// An optional test folder with the same class subfolders.
        test: Option<PathBuf>,
    },
}

impl Source {
    /// Whether the source has test files of its own (then `holdout` must not be set).
    pub fn has_test_split(&self) -> bool {
        match self {
            Source::Builtin(_) => true,
            Source::Idx(f) => f.test_images.is_some(),
            Source::Cifar(f) => !f.test.is_empty(),
            Source::ImageFolder { test, .. } => test.is_some(),
        }
    }
}

/// The files of an IDX source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxFiles {
    /// Training images (rank-3 IDX).
    pub train_images: PathBuf,
    /// Training labels (rank-1 IDX); without it the source is unlabelled.
    pub train_labels: Option<PathBuf>,
    /// Test images; without them the source has no test split of its own.
    pub test_images: Option<PathBuf>,
    /// Test labels.
    pub test_labels: Option<PathBuf>,
}

fn first_existing(dir: &Path, stems: &[&str]) -> PathBuf {
    for stem in stems {
        for name in [format!("{stem}.gz"), stem.to_string()] {
            let p = dir.join(&name);
            if p.exists() {
                return p;
            }
        }
    }
    dir.join(format!("{}.gz", stems[0]))
}

impl IdxFiles {
    /// The four standard MNIST file names in `dir` (`train-images-idx3-ubyte[.gz]`,
    /// `train-labels-idx1-ubyte[.gz]`, `t10k-...`; the dotted `train-images.idx3-ubyte`
    /// spelling is accepted too). A name that exists nowhere is kept as its `.gz`
    /// spelling, so loading or [`super::check_paths`] reports it as missing.
    pub fn in_dir(dir: &Path) -> IdxFiles {
        IdxFiles {
            train_images: first_existing(
                dir,
                &["train-images-idx3-ubyte", "train-images.idx3-ubyte"],
            ),
            train_labels: Some(first_existing(
                dir,
                &["train-labels-idx1-ubyte", "train-labels.idx1-ubyte"],
            )),
            test_images: Some(first_existing(
                dir,
                &["t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"],
            )),
            test_labels: Some(first_existing(
                dir,
                &["t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"],
            )),
        }
    }
}

/// The batch files of a CIFAR source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CifarFiles {
    /// CIFAR-10 or CIFAR-100 (and which CIFAR-100 label).
    pub kind: CifarKind,
    /// Training batches, concatenated in this order.
    pub train: Vec<PathBuf>,
    /// Test batches (may be empty: then the source has no test split of its own).
    pub test: Vec<PathBuf>,
}

impl CifarFiles {
    /// The standard binary-distribution file names in `dir`: `data_batch_1.bin` ..
    /// `data_batch_5.bin` and `test_batch.bin` for CIFAR-10, `train.bin` and `test.bin`
    /// for CIFAR-100.
    pub fn in_dir(dir: &Path, kind: CifarKind) -> CifarFiles {
        let (train, test) = match kind {
            CifarKind::Cifar10 => (
                (1..=5)
                    .map(|i| dir.join(format!("data_batch_{i}.bin")))
                    .collect(),
                vec![dir.join("test_batch.bin")],
            ),
            _ => (vec![dir.join("train.bin")], vec![dir.join("test.bin")]),
        };
        CifarFiles { kind, train, test }
    }
}

/// What to do with an image whose size differs from the configured (or common) size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resize {
    /// Resize it to the configured `image_size` (antialiased bilinear).
    Bilinear,
    /// Refuse it with [`DataError::MixedSizes`].
    Error,
}

/// Everything needed to load a dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct DataConfig {
    /// Where the images come from.
    pub source: Source,
    /// 1 or 3 channels; `None` keeps the source's own (gray 1, colour 3; an image folder
    /// with any colour image is colour).
    pub channels: Option<usize>,
    /// `(height, width)` every image must have. `None` keeps the source's size, and an
    /// image folder's images must then all share one size.
    pub image_size: Option<(usize, usize)>,
    /// What to do with images whose size is not `image_size`; resizing needs
    /// `image_size`.
    pub resize: Resize,
    /// Keep this fraction (in `(0, 1]`) of the training split: seeded, and class-balanced
    /// when labelled (each class keeps `round(fraction * count)`, at least 1).
    pub subset: Option<f64>,
    /// The same for the test split.
    pub test_subset: Option<f64>,
    /// For a source without its own test files: hold out this fraction (in `(0, 1)`) of
    /// the training images as the test split (seeded, stratified when labelled). Giving
    /// it for a source that has test files is an error.
    pub holdout: Option<f64>,
    /// Keep the training labels. `false` drops them (unlabelled objectives); `true` on an
    /// unlabelled source is an error. Test labels are always kept for evaluation.
    pub use_labels: bool,
    /// Skip image files that cannot be decoded (reported in [`LoadedData::skipped`])
    /// instead of failing. Only image folders have per-image files to skip.
    pub skip_unreadable: bool,
    /// Seed of the subset and hold-out choices.
    pub seed: u64,
}

impl DataConfig {
    /// A configuration with the defaults: source channels and size, resize refused, all
    /// images, no hold-out, labels kept, unreadable images are errors, seed 0.
    pub fn new(source: Source) -> DataConfig {
        DataConfig {
            source,
            channels: None,
            image_size: None,
            resize: Resize::Error,
            subset: None,
            test_subset: None,
            holdout: None,
            use_labels: true,
            skip_unreadable: false,
            seed: 0,
        }
    }

    fn validate(&self) -> Result<(), DataError> {
        let cfg = |m: String| Err(DataError::Config(m));
        if let Some(c) = self.channels
            && c != 1
            && c != 3
        {
            return cfg(format!("channels must be 1 or 3, got {c}"));
        }
        if let Some((h, w)) = self.image_size
            && (h == 0 || w == 0)
        {
            return cfg(format!("image size {h}x{w} has a zero dimension"));
        }
        for (name, f) in [("subset", self.subset), ("test_subset", self.test_subset)] {
            if let Some(f) = f
                && !(f > 0.0 && f <= 1.0)
            {
                return cfg(format!("{name} must be in (0, 1], got {f}"));
            }
        }
        if let Some(f) = self.holdout
            && !(f > 0.0 && f < 1.0)
        {
            return cfg(format!("holdout must be in (0, 1), got {f}"));
        }
        if let Some(f) = self.holdout
            && self.source.has_test_split()
        {
            return cfg(format!(
                "holdout {f} was given, but {} has its own test split",
                describe(&self.source)
            ));
        }
        if self.resize == Resize::Bilinear && self.image_size.is_none() {
            return cfg("resizing needs an image size to resize to".into());
        }
        Ok(())
    }
}

/// The loaded splits.
#[derive(Clone, Debug)]
pub struct LoadedData {
    /// The training split.
    pub train: Dataset,
    /// The test split: the source's own, or the hold-out; `None` if neither.
    pub test: Option<Dataset>,
    /// Image files skipped as unreadable (only with `skip_unreadable`).
    pub skipped: Vec<Skipped>,
}

/// Seeds an RNG for one purpose of the data layer; `stream` keeps purposes independent.
pub(crate) fn rng_for(seed: u64, stream: u64, a: u64, b: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&stream.to_le_bytes());
    key[16..24].copy_from_slice(&a.to_le_bytes());
    key[24..].copy_from_slice(&b.to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

const STREAM_HOLDOUT: u64 = 1;
const STREAM_SUBSET_TRAIN: u64 = 2;
const STREAM_SUBSET_TEST: u64 = 3;

/// Splits `0..n` into (kept, taken) where `taken` holds `fraction` of each class (or of
/// all images when unlabelled), chosen with a seeded shuffle; both lists are sorted so
/// the source order is preserved. A class keeps at least one taken image when it has any
/// and `at_least_one`.
pub(crate) fn stratified_pick(
    labels: Option<&[u32]>,
    n: usize,
    fraction: f64,
    rng: &mut ChaCha8Rng,
    at_least_one: bool,
) -> (Vec<usize>, Vec<usize>) {
    let groups: Vec<Vec<usize>> = match labels {
        Some(l) => {
            let k = l.iter().map(|&y| y as usize + 1).max().unwrap_or(0);
            let mut g = vec![Vec::new(); k];
            for (i, &y) in l.iter().enumerate() {
                g[y as usize].push(i);
            }
            g
        }
        None => vec![(0..n).collect()],
    };
    let mut taken = Vec::new();
    for mut g in groups {
        if g.is_empty() {
            continue;
        }
        g.shuffle(rng);
        let mut k = (fraction * g.len() as f64).round() as usize;
        if at_least_one {
            k = k.max(1);
        }
        taken.extend_from_slice(&g[..k.min(g.len())]);
    }
    taken.sort_unstable();
    let mut is_taken = vec![false; n];
    for &i in &taken {
        is_taken[i] = true;
    }
    let kept = (0..n).filter(|&i| !is_taken[i]).collect();
    (kept, taken)
}

/// Builds a dataset from IDX bytes (raw or gzipped). `classes` names the labels; when
/// `None` they are named `"0"`, `"1"`, ... up to the largest label.
pub(crate) fn idx_dataset(
    images: (&[u8], &Path),
    labels: Option<(&[u8], &Path)>,
    origin: String,
    classes: Option<Vec<String>>,
) -> Result<Dataset, DataError> {
    let (img, lab) = idx::images_and_labels(images, labels)?;
    let labels: Option<Vec<u32>> = lab.map(|l| l.data.iter().map(|&y| y as u32).collect());
    let classes = match classes {
        Some(c) => c,
        None => numeric_classes(labels.iter().flatten().max().map_or(0, |&m| m as usize + 1)),
    };
    if let Some(l) = &labels
        && let Some((i, &y)) = l
            .iter()
            .enumerate()
            .find(|(_, y)| **y as usize >= classes.len())
    {
        return Err(DataError::BadIdx {
            path: images.1.to_path_buf(),
            problem: format!(
                "item {i} has label {y}, but there are {} classes",
                classes.len()
            ),
        });
    }
    let (rows, cols) = (img.dims[1], img.dims[2]);
    Dataset::from_parts(origin, (1, rows, cols), img.data, labels, classes).ok_or_else(|| {
        DataError::BadIdx {
            path: images.1.to_path_buf(),
            problem: "inconsistent image data".into(),
        }
    })
}

fn numeric_classes(k: usize) -> Vec<String> {
    (0..k).map(|i| i.to_string()).collect()
}

fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, DataError> {
    std::fs::read(path).map_err(|e| super::error::io_error(path, what, e))
}

fn load_idx(files: &IdxFiles) -> Result<(Dataset, Option<Dataset>), DataError> {
    let one = |images: &Path, labels: Option<&PathBuf>| -> Result<Dataset, DataError> {
        let ib = read_file(images, "IDX images file")?;
        let lb = labels
            .map(|p| read_file(p, "IDX labels file"))
            .transpose()?;
        idx_dataset(
            (&ib, images),
            lb.as_deref().zip(labels.map(|p| p.as_path())),
            images.display().to_string(),
            None,
        )
    };
    if files.test_labels.is_some() && files.test_images.is_none() {
        return Err(DataError::Config(
            "IDX test labels are given without test images".into(),
        ));
    }
    let mut train = one(&files.train_images, files.train_labels.as_ref())?;
    let mut test = files
        .test_images
        .as_ref()
        .map(|p| one(p, files.test_labels.as_ref()))
        .transpose()?;
    if let Some(t) = &mut test {
        if t.shape() != train.shape() {
            return Err(DataError::MixedSizes {
                path: PathBuf::from(t.origin()),
                found: (t.shape().1, t.shape().2),
                expected: (train.shape().1, train.shape().2),
                expected_from: format!("the training images `{}`", train.origin()),
            });
        }
        // Both splits index the same class list, whichever has the larger label.
        let k = train.num_classes().max(t.num_classes());
        train.set_classes(numeric_classes(k));
        t.set_classes(numeric_classes(k));
    }
    Ok((train, test))
}

/// Class names from the `*.txt` meta file of the binary distribution, if it sits next
/// to the first batch and lists the right number of names.
fn cifar_class_names(files: &CifarFiles) -> Vec<String> {
    let k = files.kind.num_classes();
    let meta = match files.kind {
        CifarKind::Cifar10 => "batches.meta.txt",
        CifarKind::Cifar100Fine => "fine_label_names.txt",
        CifarKind::Cifar100Coarse => "coarse_label_names.txt",
    };
    let names = files
        .train
        .first()
        .and_then(|p| p.parent())
        .and_then(|d| std::fs::read_to_string(d.join(meta)).ok())
        .map(|t| {
            t.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        });
    match names {
        Some(n) if n.len() == k => n,
        _ => numeric_classes(k),
    }
}

fn load_cifar(files: &CifarFiles) -> Result<(Dataset, Option<Dataset>), DataError> {
    if files.train.is_empty() {
        return Err(DataError::Config("no CIFAR training batch given".into()));
    }
    let classes = cifar_class_names(files);
    let split = |paths: &[PathBuf]| -> Result<Dataset, DataError> {
        let mut pixels = Vec::new();
        let mut labels = Vec::new();
        for p in paths {
            cifar::read_batch(p, files.kind, &mut pixels, &mut labels)?;
        }
        Dataset::from_parts(
            paths[0].display().to_string(),
            (3, 32, 32),
            pixels,
            Some(labels),
            classes.clone(),
        )
        .ok_or_else(|| DataError::BadCifar {
            path: paths[0].clone(),
            problem: "inconsistent records".into(),
        })
    };
    let train = split(&files.train)?;
    let test = if files.test.is_empty() {
        None
    } else {
        Some(split(&files.test)?)
    };
    Ok((train, test))
}

/// Decodes a folder's images and brings them to one channel count and size.
fn load_folder_split(
    root: &Path,
    cfg: &DataConfig,
    channels: Option<usize>,
    size: Option<((usize, usize), String)>,
    skipped: &mut Vec<Skipped>,
) -> Result<Dataset, DataError> {
    let listing = folder::list_folder(root)?;
    let (decoded, skip) = folder::decode_all(listing.files, cfg.skip_unreadable)?;
    skipped.extend(skip);
    if decoded.is_empty() {
        return Err(DataError::EmptyFolder {
            path: root.to_path_buf(),
            detail: "every image file was unreadable and skipped".into(),
        });
    }
    let channels =
        channels
            .or(cfg.channels)
            .unwrap_or(if decoded.iter().any(|(_, _, im)| im.channels == 3) {
                3
            } else {
                1
            });
    let (target, target_from) = match (cfg.image_size, size) {
        (Some(s), _) => (s, "the configured image size".to_string()),
        (None, Some(s)) => s,
        (None, None) => {
            let (p, _, im) = &decoded[0];
            (
                (im.height, im.width),
                format!("the first image `{}`", p.display()),
            )
        }
    };
    let labelled = !listing.classes.is_empty();
    let mut pixels = Vec::with_capacity(decoded.len() * channels * target.0 * target.1);
    let mut labels = Vec::with_capacity(if labelled { decoded.len() } else { 0 });
    for (path, y, im) in decoded {
        let im: RawImage = if (im.height, im.width) != target {
            if cfg.resize == Resize::Error {
                return Err(DataError::MixedSizes {
                    path,
                    found: (im.height, im.width),
                    expected: target,
                    expected_from: target_from,
                });
            }
            im.conform(channels, target.0, target.1)
        } else {
            im.into_channels(channels)
        };
        pixels.extend_from_slice(&im.pixels);
        if let Some(y) = y {
            labels.push(y);
        }
    }
    Dataset::from_parts(
        root.display().to_string(),
        (channels, target.0, target.1),
        pixels,
        labelled.then_some(labels),
        listing.classes,
    )
    .ok_or_else(|| DataError::Config(format!("inconsistent images in `{}`", root.display())))
}

fn load_folders(
    train_root: &Path,
    test_root: Option<&Path>,
    cfg: &DataConfig,
    skipped: &mut Vec<Skipped>,
) -> Result<(Dataset, Option<Dataset>), DataError> {
    let train = load_folder_split(train_root, cfg, None, None, skipped)?;
    let test = match test_root {
        None => None,
        Some(root) => {
            let (c, h, w) = train.shape();
            let from = format!("the training images in `{}`", train_root.display());
            let test = load_folder_split(root, cfg, Some(c), Some(((h, w), from)), skipped)?;
            if test.classes() != train.classes() {
                let mut differences: Vec<String> = train
                    .classes()
                    .iter()
                    .filter(|c| !test.classes().contains(c))
                    .map(|c| format!("`{c}` only in train"))
                    .collect();
                differences.extend(
                    test.classes()
                        .iter()
                        .filter(|c| !train.classes().contains(c))
                        .map(|c| format!("`{c}` only in test")),
                );
                if differences.is_empty() {
                    differences.push("one folder is labelled and the other is flat".into());
                }
                return Err(DataError::ClassMismatch {
                    train: train_root.to_path_buf(),
                    test: root.to_path_buf(),
                    differences,
                });
            }
            Some(test)
        }
    };
    Ok((train, test))
}

/// Brings a whole dataset (IDX, CIFAR, built-in: one size already) to the configured
/// channels and size.
fn conform(ds: Dataset, cfg: &DataConfig) -> Result<Dataset, DataError> {
    let (c, h, w) = ds.shape();
    let channels = cfg.channels.unwrap_or(c);
    let (th, tw) = cfg.image_size.unwrap_or((h, w));
    if (th, tw) != (h, w) && cfg.resize == Resize::Error {
        return Err(DataError::MixedSizes {
            path: PathBuf::from(ds.origin()),
            found: (h, w),
            expected: (th, tw),
            expected_from: "the configured image size".into(),
        });
    }
    // Resize the variant with fewer channels: less work, same result up to rounding.
    Ok(if channels > c {
        ds.resize(th, tw).into_channels(channels)
    } else {
        ds.into_channels(channels).resize(th, tw)
    })
}

fn describe(source: &Source) -> String {
    match source {
        Source::Builtin(b) => format!("the built-in dataset `{}`", b.origin()),
        Source::Idx(f) => format!("IDX source `{}`", f.train_images.display()),
        Source::Cifar(f) => format!(
            "CIFAR source `{}`",
            f.train
                .first()
                .map(|p| p.display().to_string())
                .unwrap_or_default()
        ),
        Source::ImageFolder { train, .. } => format!("image folder `{}`", train.display()),
    }
}

/// Loads the configured source into train and test splits.
///
/// Order of operations: read and decode; bring images to the configured channels and
/// size; hold out a test split if asked (stratified); take the subsets (class-balanced);
/// drop the training labels if `use_labels` is false.
pub fn load(cfg: &DataConfig) -> Result<LoadedData, DataError> {
    cfg.validate()?;
    let mut skipped = Vec::new();
    let (train, test) = match &cfg.source {
        Source::Builtin(b) => {
            let (tr, te) = b.load()?;
            (tr, Some(te))
        }
        Source::Idx(files) => load_idx(files)?,
        Source::Cifar(files) => load_cifar(files)?,
        Source::ImageFolder { train, test } => {
            load_folders(train, test.as_deref(), cfg, &mut skipped)?
        }
    };
    if train.is_empty() {
        return Err(DataError::Config(format!(
            "{} has no training images",
            describe(&cfg.source)
        )));
    }
    let train = conform(train, cfg)?;
    let test = test.map(|t| conform(t, cfg)).transpose()?;

    let (mut train, mut test) = match (test, cfg.holdout) {
        (None, Some(f)) => {
            let mut rng = rng_for(cfg.seed, STREAM_HOLDOUT, 0, 0);
            let (kept, taken) = stratified_pick(train.labels(), train.len(), f, &mut rng, false);
            if kept.is_empty() || taken.is_empty() {
                return Err(DataError::Config(format!(
                    "holdout {f} of {} images leaves an empty split",
                    train.len()
                )));
            }
            (train.select(&kept), Some(train.select(&taken)))
        }
        (test, _) => (train, test),
    };
    if let Some(f) = cfg.subset {
        let mut rng = rng_for(cfg.seed, STREAM_SUBSET_TRAIN, 0, 0);
        let (_, taken) = stratified_pick(train.labels(), train.len(), f, &mut rng, true);
        train = train.select(&taken);
    }
    if let Some(f) = cfg.test_subset {
        match &test {
            Some(t) => {
                let mut rng = rng_for(cfg.seed, STREAM_SUBSET_TEST, 0, 0);
                let (_, taken) = stratified_pick(t.labels(), t.len(), f, &mut rng, true);
                test = Some(t.select(&taken));
            }
            None => {
                return Err(DataError::Config(format!(
                    "test_subset was given, but {} has no test split (set holdout)",
                    describe(&cfg.source)
                )));
            }
        }
    }
    if cfg.use_labels {
        if train.labels().is_none() {
            return Err(DataError::LabelsRequired {
                source: describe(&cfg.source),
            });
        }
    } else {
        train = train.without_labels();
    }
    Ok(LoadedData {
        train,
        test,
        skipped,
    })
}
