//! `recipe init`: a starting recipe for a dataset on disk.
//!
//! ```text
//! --data DIR --detect--> Detected { source, size, channels, classes, split, mean/std }
//!   --render--> YAML text with a comment on every detected value
//!   --spec::Loader--> valid (or an error: nothing is written) --write--> FILE
//! ```
//!
//! [`detect`] recognises, in this order: CIFAR binary batches in `DIR`
//! (`data_batch_1.bin` …: CIFAR-10; `train.bin` + `test.bin`: CIFAR-100), MNIST-style
//! IDX files (`train-images-idx3-ubyte[.gz]` and its labels, with `t10k-…` as the test
//! split when present), a folder with a `train` subfolder beside `test` (or `val`), and
//! otherwise an image folder: one subfolder per class (labelled) or flat (unlabelled).
//! It reads what the loader reads ([`crate::data::load`] with the data section it is
//! about to write), so the measured statistics are those of the training split a run
//! sees: after the test hold-out, on the `[0, 1]` scale (`u8 / 255`), at the channel
//! count and size the recipe asks for.
//!
//! [`render`] sizes everything else from what was detected (see its doc), and
//! [`init`] validates the text with [`crate::spec::Loader`] before writing it, so a
//! written recipe always loads.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use rayon::prelude::*;

use crate::data::folder::list_folder;
use crate::data::{DataError, Dataset};
use crate::diag::render_human;
use crate::spec::data as spec;
use crate::spec::{Loader, schema};

/// The contrastive method a recipe is written for (`loss.method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// SimCLR's NT-Xent over two views.
    Simclr,
    /// MoCo v2: momentum key encoder and a queue of negatives.
    Moco,
    /// InstDisc's memory bank of instance embeddings.
    MemoryBank,
    /// SwAV with multi-crop where the images are large enough.
    Swav,
    /// Supervised contrastive learning; needs labels.
    Supcon,
}

impl Method {
    /// The `loss.method` value.
    pub fn name(self) -> &'static str {
        match self {
            Method::Simclr => "simclr",
            Method::Moco => "moco",
            Method::MemoryBank => "memory_bank",
            Method::Swav => "swav",
            Method::Supcon => "supcon",
        }
    }
}

/// What `recipe init` was asked to do.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// The dataset: a folder (or an IDX / CIFAR file inside the folder that holds them).
    pub data: PathBuf,
    /// The method to write.
    pub method: Method,
    /// The recipe file to write.
    pub output: PathBuf,
    /// Overwrite `output` if it exists.
    pub force: bool,
    /// A project checkout whose `schemas/recipe.schema.json` the modeline points at when
    /// none is found above `output` (the binary passes the folder it was built from).
    pub project_dir: Option<PathBuf>,
}

/// Why no recipe was written.
#[derive(Debug)]
pub enum InitError {
    /// The request cannot be met as asked (SupCon without labels, an existing file
    /// without `--force`, a folder that is no known dataset layout).
    Usage(String),
    /// The data could not be read.
    Data(DataError),
    /// Writing the recipe or the schema failed.
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The generated recipe did not validate (a bug in `init`); the diagnostics as text.
    Invalid(String),
}

impl InitError {
    /// The exit code of `recipe init` for this error: 1 for a recipe that does not
    /// validate, 2 for usage and I/O problems.
    pub fn exit_code(&self) -> u8 {
        match self {
            InitError::Invalid(_) => 1,
            _ => 2,
        }
    }
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitError::Usage(m) => f.write_str(m),
            InitError::Data(e) => write!(f, "cannot read the data: {e}"),
            InitError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            InitError::Invalid(d) => write!(
                f,
                "the generated recipe does not validate (please report this):\n{d}"
            ),
        }
    }
}

impl std::error::Error for InitError {}

impl From<DataError> for InitError {
    fn from(e: DataError) -> Self {
        InitError::Data(e)
    }
}

/// Where the images are, with absolute paths.
#[derive(Clone, Debug, PartialEq)]
pub enum DetectedSource {
    /// An image folder, with a test folder when one was found beside it.
    Folder {
        /// Training folder.
        train: PathBuf,
        /// Test folder.
        test: Option<PathBuf>,
    },
    /// IDX files.
    Idx {
        /// Training images.
        train_images: PathBuf,
        /// Training labels.
        train_labels: PathBuf,
        /// Test images and labels, when both were found.
        test: Option<(PathBuf, PathBuf)>,
    },
    /// CIFAR binary batches.
    Cifar {
        /// CIFAR-10 or CIFAR-100.
        variant: spec::CifarVariant,
        /// The folder holding the batches.
        dir: PathBuf,
    },
}

/// How the test split is made.
#[derive(Clone, Debug, PartialEq)]
pub enum TestSplit {
    /// The source's own test files or folder, with this many images.
    Own(usize),
    /// `test_fraction` of the training images, this many of them.
    HeldOut(f64, usize),
    /// None (an unlabelled folder: no task needs one).
    None,
}

/// What [`detect`] found.
#[derive(Clone, Debug, PartialEq)]
pub struct Detected {
    /// The source, absolute paths.
    pub source: DetectedSource,
    /// A short description of the layout for people ("an image folder with 3 class
    /// subfolders").
    pub layout: String,
    /// `data.image_size`.
    pub image_size: usize,
    /// The most common `(height, width)` of the source images.
    pub common_size: (usize, usize),
    /// Images of that size (0 where the format fixes the size: CIFAR).
    pub common_count: usize,
    /// Images of any size other than `image_size × image_size`, by `(height, width)`;
    /// when there are any, the loader resizes them (`mixed_sizes: resize`).
    pub other_sizes: BTreeMap<(usize, usize), usize>,
    /// `data.channels`.
    pub channels: usize,
    /// Why that channel count ("RGB images", "grayscale images", …).
    pub channels_note: String,
    /// Class names; empty for an unlabelled folder.
    pub classes: Vec<String>,
    /// Training images (after the hold-out).
    pub train_images: usize,
    /// The test split.
    pub test: TestSplit,
    /// Files that could not be read (then `skip_unreadable: true` is written), with
    /// the first one's path and reason.
    pub unreadable: Option<(usize, PathBuf, String)>,
    /// Per-channel mean of the training split, `[0, 1]` scale.
    pub mean: Vec<f64>,
    /// Per-channel standard deviation of the training split, `[0, 1]` scale.
    pub std: Vec<f64>,
}

impl Detected {
    /// Whether the dataset has labels.
    pub fn labelled(&self) -> bool {
        !self.classes.is_empty()
    }
}

/// The fraction held out when a labelled source has no test split: 10%, or 20% under
/// 1,000 images so that small classes still put images in the test split.
fn holdout_fraction(n: usize) -> f64 {
    if n < 1000 { 0.2 } else { 0.1 }
}

fn file_in(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names
        .iter()
        .flat_map(|n| [format!("{n}.gz"), n.to_string()])
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// The folder to look in: `data` itself, or the folder of a dataset file inside it.
fn dataset_dir(data: &Path) -> Result<PathBuf, InitError> {
    if !data.exists() {
        return Err(DataError::Missing {
            path: data.to_path_buf(),
            what: "data folder",
        }
        .into());
    }
    let abs = absolute(data);
    if abs.is_dir() {
        return Ok(abs);
    }
    let name = abs
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dataset_file = name.contains("idx3") || name.contains("idx1") || name.ends_with(".bin");
    match abs.parent() {
        Some(dir) if dataset_file => Ok(dir.to_path_buf()),
        _ => Err(InitError::Usage(format!(
            "`{}` is a file; give the folder that holds the images (or the IDX / CIFAR files)",
            data.display()
        ))),
    }
}

/// Finds the source in `dir` (see the module docs for the order).
fn find_source(dir: &Path) -> Result<DetectedSource, InitError> {
    if dir.join("data_batch_1.bin").is_file() {
        return Ok(DetectedSource::Cifar {
            variant: spec::CifarVariant::Cifar10,
            dir: dir.to_path_buf(),
        });
    }
    if dir.join("train.bin").is_file() && dir.join("test.bin").is_file() {
        return Ok(DetectedSource::Cifar {
            variant: spec::CifarVariant::Cifar100,
            dir: dir.to_path_buf(),
        });
    }
    if let Some(train_images) =
        file_in(dir, &["train-images-idx3-ubyte", "train-images.idx3-ubyte"])
    {
        let Some(train_labels) =
            file_in(dir, &["train-labels-idx1-ubyte", "train-labels.idx1-ubyte"])
        else {
            return Err(InitError::Usage(format!(
                "`{}` has IDX training images but no `train-labels-idx1-ubyte[.gz]`; the \
                 recipe's `idx` source needs the labels file",
                dir.display()
            )));
        };
        let test = file_in(dir, &["t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"]).zip(
            file_in(dir, &["t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"]),
        );
        return Ok(DetectedSource::Idx {
            train_images,
            train_labels,
            test,
        });
    }
    let train = dir.join("train");
    if train.is_dir() {
        let test = ["test", "val", "valid", "validation"]
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.is_dir());
        // Only a layout of split folders counts; a class that happens to be called
        // `train` must not turn the other classes into ignored folders.
        let others = std::fs::read_dir(dir)
            .map_err(|source| InitError::Io {
                path: dir.to_path_buf(),
                source,
            })?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.is_dir()
                    && !p
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .filter(|p| *p != train && Some(p) != test.as_ref())
            .count();
        if others == 0 {
            return Ok(DetectedSource::Folder { train, test });
        }
    }
    Ok(DetectedSource::Folder {
        train: dir.to_path_buf(),
        test: None,
    })
}

/// `(height, width, colour)` of an image file.
type Header = (usize, usize, bool);

/// The header of an image file, read without decoding the pixels.
fn header(path: &Path) -> Result<Header, String> {
    use image::ImageDecoder;
    let reader = image::ImageReader::open(path)
        .and_then(|r| r.with_guessed_format())
        .map_err(|e| e.to_string())?;
    let decoder = reader.into_decoder().map_err(|e| e.to_string())?;
    let (w, h) = decoder.dimensions();
    // The loader's rule (`data::folder`): gray types stay gray, everything else is RGB.
    let gray = matches!(
        decoder.color_type(),
        image::ColorType::L8
            | image::ColorType::L16
            | image::ColorType::La8
            | image::ColorType::La16
    );
    if w == 0 || h == 0 {
        return Err("image has zero width or height".into());
    }
    Ok((h as usize, w as usize, !gray))
}

/// Sizes and colour of an image folder's files, from their headers.
struct FolderScan {
    sizes: BTreeMap<(usize, usize), usize>,
    colour: bool,
    classes: Vec<String>,
}

fn scan_folder(root: &Path) -> Result<FolderScan, InitError> {
    let listing = list_folder(root)?;
    let headers: Vec<(PathBuf, Result<Header, String>)> = listing
        .files
        .into_par_iter()
        .map(|(p, _)| {
            let h = header(&p);
            (p, h)
        })
        .collect();
    let mut sizes = BTreeMap::new();
    let mut colour = false;
    // Unreadable files are left to the loader, which skips and reports them; the first
    // one only names the problem when no file can be read at all.
    let mut unreadable: Option<(PathBuf, String)> = None;
    for (p, h) in headers {
        match h {
            Ok((height, width, c)) => {
                *sizes.entry((height, width)).or_insert(0) += 1;
                colour |= c;
            }
            Err(reason) => {
                unreadable.get_or_insert((p, reason));
            }
        }
    }
    if sizes.is_empty() {
        let (path, reason) = unreadable.unwrap_or_default();
        return Err(DataError::Decode {
            path,
            message: format!("no image in `{}` could be read ({reason})", root.display()),
        }
        .into());
    }
    Ok(FolderScan {
        sizes,
        colour,
        classes: listing.classes,
    })
}

/// The most common size and its count; a tie goes to the larger size, so no tied
/// image is blown up into blur.
fn most_common(sizes: &BTreeMap<(usize, usize), usize>) -> ((usize, usize), usize) {
    sizes
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then((a.0.0 * a.0.1).cmp(&(b.0.0 * b.0.1))))
        .map(|(s, n)| (*s, *n))
        .unwrap_or(((1, 1), 0))
}

/// The recipe's `data` section for `source`, with absolute paths (for loading).
fn data_section(
    source: &DetectedSource,
    image_size: usize,
    channels: usize,
    labels: bool,
    test_fraction: f64,
    skip_unreadable: bool,
) -> spec::Data {
    let s = |p: &Path| p.display().to_string();
    let source = match source {
        DetectedSource::Folder { train, test } => spec::Source::ImageFolder {
            train: s(train),
            test: test.as_deref().map(s),
        },
        DetectedSource::Idx {
            train_images,
            train_labels,
            test,
        } => spec::Source::Idx {
            train_images: s(train_images),
            train_labels: s(train_labels),
            test_images: test.as_ref().map(|t| s(&t.0)),
            test_labels: test.as_ref().map(|t| s(&t.1)),
        },
        DetectedSource::Cifar { variant, dir } => spec::Source::Cifar {
            variant: *variant,
            dir: s(dir),
        },
    };
    spec::Data {
        source,
        image_size,
        channels,
        mixed_sizes: spec::MixedSizes::Resize,
        normalize: None,
        labels,
        subset: 1.0,
        test_fraction,
        skip_unreadable,
    }
}

/// Per-channel mean and standard deviation of `ds` on the `[0, 1]` scale, in `f64`.
pub fn channel_stats(ds: &Dataset) -> (Vec<f64>, Vec<f64>) {
    let (c, h, w) = ds.shape();
    let plane = h * w;
    let (sums, squares) = (0..ds.len())
        .into_par_iter()
        .map(|i| {
            let px = ds.pixels(i);
            let mut s = vec![0u64; c];
            let mut q = vec![0u64; c];
            for ch in 0..c {
                for &v in &px[ch * plane..(ch + 1) * plane] {
                    s[ch] += v as u64;
                    q[ch] += (v as u64) * (v as u64);
                }
            }
            (s, q)
        })
        .reduce(
            || (vec![0u64; c], vec![0u64; c]),
            |(mut s, mut q), (s2, q2)| {
                for ch in 0..c {
                    s[ch] += s2[ch];
                    q[ch] += q2[ch];
                }
                (s, q)
            },
        );
    // Integer sums are exact, so the statistics do not depend on the summation order.
    let n = (ds.len() * plane).max(1) as f64;
    let mean: Vec<f64> = sums.iter().map(|&s| s as f64 / n / 255.0).collect();
    let std = squares
        .iter()
        .zip(&mean)
        .map(|(&q, &m)| (q as f64 / n / (255.0 * 255.0) - m * m).max(0.0).sqrt())
        .collect();
    (mean, std)
}

/// Whether every image of a 3-channel dataset has equal R, G and B everywhere.
fn all_gray(ds: &Dataset) -> bool {
    let (c, h, w) = ds.shape();
    if c != 3 {
        return false;
    }
    let plane = h * w;
    (0..ds.len()).into_par_iter().all(|i| {
        let px = ds.pixels(i);
        (0..plane).all(|p| px[p] == px[plane + p] && px[p] == px[2 * plane + p])
    })
}

/// What the files say before anything is loaded.
struct Facts {
    layout: String,
    sizes: BTreeMap<(usize, usize), usize>,
    channels: usize,
    channels_note: String,
    /// Class names of a folder (empty: flat); `None` for IDX and CIFAR, whose loader
    /// names the classes.
    classes: Option<Vec<String>>,
}

fn facts(source: &DetectedSource) -> Result<Facts, InitError> {
    Ok(match source {
        DetectedSource::Folder { train, test } => {
            let scan = scan_folder(train)?;
            let layout = match (scan.classes.len(), test) {
                (0, _) => "a flat image folder (no class subfolders, so no labels)".to_string(),
                (k, Some(t)) => format!(
                    "an image folder with {k} class subfolders and a test folder `{}`",
                    t.file_name().unwrap_or_default().to_string_lossy()
                ),
                (k, None) => format!("an image folder with {k} class subfolders"),
            };
            let (channels, channels_note) = if scan.colour {
                (3, "RGB colour images".to_string())
            } else {
                (1, "grayscale images".to_string())
            };
            Facts {
                layout,
                sizes: scan.sizes,
                channels,
                channels_note,
                classes: Some(scan.classes),
            }
        }
        DetectedSource::Idx { train_images, .. } => {
            let arr = crate::data::idx::read_idx(train_images, 3)?;
            Facts {
                layout: "MNIST-style IDX files".into(),
                sizes: BTreeMap::from([((arr.dims[1], arr.dims[2]), arr.dims[0])]),
                channels: 1,
                channels_note: "IDX images are grayscale".into(),
                classes: None,
            }
        }
        DetectedSource::Cifar { variant, .. } => Facts {
            layout: match variant {
                spec::CifarVariant::Cifar10 => "CIFAR-10 binary batches".into(),
                spec::CifarVariant::Cifar100 => "CIFAR-100 binary batches (fine labels)".into(),
            },
            // Every CIFAR image is 32×32; the count comes from the loader.
            sizes: BTreeMap::new(),
            channels: 3,
            channels_note: "CIFAR images are RGB".into(),
            classes: None,
        },
    })
}

/// Reads the dataset at `data` and measures what a recipe needs (module docs).
pub fn detect(data: &Path) -> Result<Detected, InitError> {
    let dir = dataset_dir(data)?;
    let source = find_source(&dir)?;
    let f = facts(&source)?;
    let ((h, w), common_count) = if f.sizes.is_empty() {
        ((32, 32), 0)
    } else {
        most_common(&f.sizes)
    };
    // The model sees squares: the shorter side, so a non-square image is squeezed to
    // it rather than enlarged.
    let image_size = h.min(w);
    let mut other_sizes = f.sizes.clone();
    other_sizes.remove(&(image_size, image_size));
    let labelled = f.classes.as_ref().is_none_or(|c| !c.is_empty());
    let has_test = match &source {
        DetectedSource::Folder { test, .. } => test.is_some(),
        DetectedSource::Idx { test, .. } => test.is_some(),
        DetectedSource::Cifar { .. } => true,
    };
    let total: usize = f.sizes.values().sum();
    let fraction = if labelled && !has_test {
        holdout_fraction(total)
    } else {
        0.0
    };
    let load = |channels: usize| {
        let d = data_section(
            &source,
            image_size,
            channels,
            labelled,
            fraction,
            // Only folders have per-image files; the recipe keeps the flag only when
            // something was skipped, and then the run skips the same files.
            matches!(source, DetectedSource::Folder { .. }),
        );
        crate::data::load(&crate::build::data::config(&d, 0))
    };
    let (mut channels, mut channels_note) = (f.channels, f.channels_note);
    let mut loaded = load(channels)?;
    if channels == 3 && all_gray(&loaded.train) {
        // RGB files of gray pictures would cost three times the input for nothing.
        channels = 1;
        channels_note = "the files are RGB, but every pixel is gray".into();
        loaded = load(1)?;
    }
    let unreadable = loaded.skipped.first().map(|first| {
        (
            loaded.skipped.len(),
            first.path.clone(),
            first.reason.clone(),
        )
    });
    let (mean, std) = channel_stats(&loaded.train);
    let test = match &loaded.test {
        Some(t) if has_test => TestSplit::Own(t.len()),
        Some(t) => TestSplit::HeldOut(fraction, t.len()),
        None => TestSplit::None,
    };
    let classes = match f.classes {
        Some(c) => c,
        None => match &loaded.test {
            Some(t) if t.num_classes() > loaded.train.num_classes() => t.classes().to_vec(),
            _ => loaded.train.classes().to_vec(),
        },
    };
    Ok(Detected {
        source,
        layout: f.layout,
        image_size,
        common_size: (h, w),
        common_count,
        other_sizes,
        channels,
        channels_note,
        classes,
        train_images: loaded.train.len(),
        test,
        unreadable,
        mean,
        std,
    })
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn absolute(p: &Path) -> PathBuf {
    crate::spec::load::normalize_lexically(
        &std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()),
    )
}

/// `target` relative to the folder `base` (both made absolute first); `target` itself
/// when they share no root.
pub fn relative_path(target: &Path, base: &Path) -> PathBuf {
    let (t, b) = (absolute(target), absolute(base));
    let tc: Vec<Component> = t.components().collect();
    let bc: Vec<Component> = b.components().collect();
    let common = tc.iter().zip(&bc).take_while(|(x, y)| x == y).count();
    if common == 0 {
        return t;
    }
    let mut out = PathBuf::new();
    for _ in common..bc.len() {
        out.push("..");
    }
    for c in &tc[common..] {
        out.push(c);
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// How a recipe in `base` names the data at `target`: relative when they share a
/// folder below the root (the recipe and its data move together), absolute otherwise
/// (`../../../data` climbing to the root says nothing a reader can check at a glance).
fn data_path(target: &Path, base: &Path) -> PathBuf {
    let (t, b) = (absolute(target), absolute(base));
    let shared = t
        .components()
        .zip(b.components())
        .take_while(|(x, y)| x == y)
        .filter(|(c, _)| matches!(c, Component::Normal(_)))
        .count();
    if shared == 0 {
        t
    } else {
        relative_path(&t, &b)
    }
}

/// The project schema the modeline of a recipe in `out_dir` should name: the first
/// `schemas/recipe.schema.json` in `out_dir` or a folder above it, else the one in
/// `project_dir`; `None` when neither exists.
pub fn find_schema(out_dir: &Path, project_dir: Option<&Path>) -> Option<PathBuf> {
    let rel = Path::new("schemas").join("recipe.schema.json");
    absolute(out_dir)
        .ancestors()
        .map(|a| a.join(&rel))
        .find(|p| p.is_file())
        .or_else(|| project_dir.map(|d| d.join(&rel)).filter(|p| p.is_file()))
}

/// A path with `/` between its components, as recipes and modelines write them.
fn slashed(p: &Path) -> String {
    let s = p
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/");
    // A root component renders as `/`, which the join doubles.
    s.replacen("//", "/", 1)
}

/// A path as a YAML scalar: double-quoted JSON, which YAML reads back unchanged
/// whatever the path holds (`#`, `: `, spaces, backslashes).
fn quoted(p: &Path) -> String {
    serde_json::to_string(&slashed(p)).unwrap_or_else(|_| "\"\"".into())
}

/// A recipe name from the dataset folder and the method, kept to the characters the
/// schema allows in `name`.
fn recipe_name(d: &Detected, method: Method) -> String {
    let dir = match &d.source {
        DetectedSource::Folder { train, test } => {
            let split_layout = test.is_some() && train.file_name().is_some_and(|n| n == "train");
            if split_layout {
                train.parent().map(Path::to_path_buf).unwrap_or_default()
            } else {
                train.clone()
            }
        }
        DetectedSource::Idx { train_images, .. } => train_images
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
        DetectedSource::Cifar { dir, .. } => dir.clone(),
    };
    let raw = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    name = name.trim_start_matches(['_', '.', '-']).to_string();
    if name.is_empty() {
        name = "data".into();
    }
    format!("{name}-{}", method.name().replace('_', "-"))
}

/// The backbone family a size calls for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Net {
    /// `small_cnn` with this many stages (each after the first halves the side).
    Small(usize),
    /// `resnet18` with the CIFAR stem (3 halvings).
    ResnetCifar,
    /// `resnet18` with the ImageNet stem (5 halvings).
    ResnetImagenet,
}

impl Net {
    fn for_size(s: usize) -> Net {
        match s {
            // Under 32 px a ResNet's stages end below 4×4, and the project's small
            // datasets (8×8 digits, 28×28 Fashion-MNIST) train in minutes on a CPU.
            0..32 => Net::Small(match s {
                0..2 => 1,
                2..4 => 2,
                _ => 3,
            }),
            32..=64 => Net::ResnetCifar,
            _ => Net::ResnetImagenet,
        }
    }

    /// The smallest side a view may have.
    fn min_side(self) -> usize {
        match self {
            Net::Small(stages) => 1 << (stages - 1),
            Net::ResnetCifar => 8,
            Net::ResnetImagenet => 32,
        }
    }
}

/// A float as YAML: always with a decimal point, so it reads back as a float.
fn num(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.1}")
    } else {
        format!("{x}")
    }
}

/// `[a, b, c]` of floats at 4 decimals.
fn list4(v: &[f64]) -> String {
    let items: Vec<String> = v.iter().map(|x| format!("{x:.4}")).collect();
    format!("[{}]", items.join(", "))
}

/// The largest power of two at most `n` (1 for 0).
fn pow2_at_most(n: usize) -> usize {
    if n < 2 {
        1
    } else {
        1 << (usize::BITS - 1 - n.leading_zeros())
    }
}

/// The recipe text for `d` and `method`, to be saved as a file in `out_dir`, whose
/// modeline names `schema` (a path relative to `out_dir`).
///
/// Data paths are relative to `out_dir` (absolute when the two share only the root).
/// Sizing, from the detected side `S`, channels and training images `N`:
/// - backbone: `small_cnn` below 32 px (fewer stages below 4 px), `resnet18` with the
///   CIFAR stem up to 64 px, with the ImageNet stem above;
/// - batch: 128 (`small_cnn`), 256 (CIFAR stem) or 64 (ImageNet stem), lowered to the
///   largest power of two that gives at least 4 steps per epoch;
/// - epochs 20 (`small_cnn`) or 100, warmup a tenth of them, a checkpoint every fifth;
/// - crops of the whole side, down to 40% of the area under 16 px, 20% under 32 px,
///   8% (torchvision's default) from 32 px; flips; colour jitter (brightness and
///   contrast only on one channel), grayscale only on three; a Gaussian blur with a
///   kernel of about 10% of the side (odd) from 64 px, where it no longer wipes out
///   the image;
/// - per method: MoCo's queue a multiple of the keys enqueued per step (2 × batch,
///   symmetric) up to 4096 and at most `N / 2`; the memory bank one view and up to
///   4096 negatives, at most `N / 2`; SwAV multi-crop (2 global + 4 local crops) where
///   a local crop of about half the side still fits the backbone, 10 prototypes per
///   class (or `N / 10`, at most `N / 2`), the prototypes frozen for the first epoch;
///   SupCon only with labels;
/// - downstream: kNN, a linear probe and all pictures with labels; pictures that need
///   no labels without them.
pub fn render(
    d: &Detected,
    method: Method,
    out_dir: &Path,
    schema: &Path,
) -> Result<String, InitError> {
    if method == Method::Supcon && !d.labelled() {
        return Err(InitError::Usage(format!(
            "`--method supcon` needs labels, but {} has none; use class subfolders \
             (one per class), or a self-supervised method (simclr, moco, memory_bank, swav)",
            d.layout
        )));
    }
    let n = d.train_images;
    if n < 2 {
        return Err(InitError::Usage(format!(
            "only {n} training image(s); contrastive learning needs at least 2 per batch"
        )));
    }
    let s = d.image_size;
    let c = d.channels;
    let net = Net::for_size(s);
    let mut y = String::new();
    let mut line = |t: &str| {
        y.push_str(t);
        y.push('\n');
    };

    // --- header
    line(&format!(
        "# yaml-language-server: $schema={}",
        slashed(schema)
    ));
    line(&format!(
        "# Written by `recipe init --method {}`.",
        method.name()
    ));
    line(&format!("# Data: {}.", d.layout));
    line("# Every value is a starting point: look at the views with `recipe preview`, check");
    line("# shapes and memory with `recipe plan`, then train with `recipe run`.");
    line("version: 1");
    line(&format!("name: {}", recipe_name(d, method)));
    if matches!(d.test, TestSplit::HeldOut(..)) {
        line("seed: 0\u{1}# also picks the held-out test images: keep it when comparing runs");
    } else {
        line("seed: 0");
    }

    // --- data
    line("data:");
    match &d.source {
        DetectedSource::Folder { train, test } => {
            let mut src = format!(
                "  source: {{format: image_folder, train: {}",
                quoted(&data_path(train, out_dir))
            );
            if let Some(t) = test {
                src += &format!(", test: {}", quoted(&data_path(t, out_dir)));
            }
            line(&(src + "}"));
        }
        DetectedSource::Idx {
            train_images,
            train_labels,
            test,
        } => {
            line("  source:");
            line("    format: idx");
            line(&format!(
                "    train_images: {}",
                quoted(&data_path(train_images, out_dir))
            ));
            line(&format!(
                "    train_labels: {}",
                quoted(&data_path(train_labels, out_dir))
            ));
            if let Some((ti, tl)) = test {
                line(&format!(
                    "    test_images: {}",
                    quoted(&data_path(ti, out_dir))
                ));
                line(&format!(
                    "    test_labels: {}",
                    quoted(&data_path(tl, out_dir))
                ));
            }
        }
        DetectedSource::Cifar { variant, dir } => {
            let v = match variant {
                spec::CifarVariant::Cifar10 => "cifar10",
                spec::CifarVariant::Cifar100 => "cifar100",
            };
            line(&format!(
                "  source: {{format: cifar, variant: {v}, dir: {}}}",
                quoted(&data_path(dir, out_dir))
            ));
        }
    }
    let held_out = match d.test {
        TestSplit::HeldOut(_, k) => k,
        _ => 0,
    };
    if d.labelled() {
        line(&format!(
            "  # {} training images in {}",
            thousands(n + held_out),
            classes_comment(&d.classes)
        ));
    } else {
        line(&format!("  # {} images", thousands(n)));
    }
    let (ch, cw) = d.common_size;
    let size_note = if d.other_sizes.is_empty() {
        format!("every image is {s}×{s}")
    } else if d.common_size == (s, s) {
        let others: usize = d.other_sizes.values().sum();
        format!(
            "{} of {} images are {s}×{s}",
            thousands(d.common_count),
            thousands(d.common_count + others)
        )
    } else {
        format!(
            "the most common size is {ch}×{cw} (height × width); images are squares of its shorter side"
        )
    };
    line(&format!("  image_size: {s}\u{1}# {size_note}"));
    line(&format!("  channels: {c}\u{1}# {}", d.channels_note));
    if !d.other_sizes.is_empty() {
        let others: usize = d.other_sizes.values().sum();
        let mut listed: Vec<String> = d
            .other_sizes
            .iter()
            .take(4)
            .map(|((h, w), k)| format!("{}× {h}×{w}", thousands(*k)))
            .collect();
        if d.other_sizes.len() > 4 {
            listed.push(format!("{} more sizes", d.other_sizes.len() - 4));
        }
        line(&format!(
            "  mixed_sizes: resize\u{1}# {} image(s) of other sizes ({}) are resized to {s}×{s}",
            thousands(others),
            listed.join(", ")
        ));
        line("\u{1}# (bilinear, aspect not kept); `error` would refuse them");
    } else if matches!(d.source, DetectedSource::Folder { .. }) {
        // A file added later in another size is then a located error, not a silent
        // resize that changes what the model sees.
        line(
            "  mixed_sizes: error\u{1}# all one size: a file of another size is refused, not resized",
        );
    }
    line("  normalize:");
    line("    # per channel, on the [0, 1] scale the loader uses, measured over the");
    line(&format!(
        "    # {} training images{}",
        thousands(n),
        if matches!(d.test, TestSplit::None) {
            ""
        } else {
            " (test split excluded)"
        }
    ));
    let std: Vec<f64> = d
        .std
        .iter()
        .map(|&x| if x < 1e-3 { 1.0 } else { x })
        .collect();
    line(&format!("    mean: {}", list4(&d.mean)));
    let flat = d.std.iter().any(|&x| x < 1e-3);
    line(&format!(
        "    std: {}{}",
        list4(&std),
        if flat {
            "\u{1}# a constant channel gets 1.0 (its std is 0)"
        } else {
            ""
        }
    ));
    if !d.labelled() {
        line("  labels: false\u{1}# a flat folder has no classes");
    }
    match &d.test {
        TestSplit::Own(k) => line(&format!(
            "  # test split: the source's own, {} images",
            thousands(*k)
        )),
        TestSplit::HeldOut(f, k) => line(&format!(
            "  test_fraction: {}\u{1}# no test split in the data: {} images ({:.0}%, stratified by class) held out for evaluation",
            num(*f),
            thousands(*k),
            f * 100.0
        )),
        TestSplit::None => line("  # no test split: nothing below needs one without labels"),
    }
    if let Some((k, path, reason)) = &d.unreadable {
        line(&format!(
            "  skip_unreadable: true\u{1}# {} file(s) could not be read, e.g. {}: {}",
            thousands(*k),
            path.file_name().unwrap_or_default().to_string_lossy(),
            reason.replace('\n', " ")
        ));
    }

    // --- augment
    let crop_lo = match s {
        0..16 => 0.4,
        16..32 => 0.2,
        _ => 0.08,
    };
    let mut ops: Vec<String> = Vec::new();
    let flip =
        "- horizontal_flip: {p: 0.5}\u{1}# drop it where left and right differ (digits, text)"
            .to_string();
    let jitter = if c == 3 {
        "- color_jitter: {brightness: 0.4, contrast: 0.4, saturation: 0.4, hue: 0.1, p: 0.8}"
            .to_string()
    } else {
        "- color_jitter: {brightness: 0.4, contrast: 0.4, saturation: 0.0, hue: 0.0, p: 0.8}\u{1}# one channel: no saturation or hue".to_string()
    };
    let gray = (c == 3).then(|| "- grayscale: {p: 0.2}".to_string());
    let blur = (s >= 64).then(|| {
        // The odd size nearest below 10% of the side, as SimCLR's 23 for 224.
        let k = 2 * (s / 20) + 1;
        format!(
            "- gaussian_blur: {{kernel_size: {k}, sigma: [0.1, 2.0], p: 0.5}}\u{1}# about 10% of the side, odd"
        )
    });
    let multi_crop = (method == Method::Swav).then(|| {
        let local = if s <= 64 { s / 2 } else { (s * 3).div_ceil(7) }.max(net.min_side());
        (local < s).then_some(local)
    });
    line("augment:");
    match multi_crop {
        Some(Some(local)) => {
            let (g, l) = if s < 32 {
                ("[0.35, 1.0]", "[0.1, 0.35]")
            } else {
                ("[0.14, 1.0]", "[0.05, 0.14]")
            };
            line("  pipeline:\u{1}# applied to every crop after it is made");
            ops.push(flip);
            ops.push(jitter);
            ops.extend(gray);
            ops.extend(blur);
            for o in &ops {
                line(&format!("    {o}"));
            }
            line("  multi_crop:\u{1}# SwAV: codes from the global crops, predicted from all");
            line(&format!("    global: {{count: 2, size: {s}, scale: {g}}}"));
            line(&format!(
                "    local: {{count: 4, size: {local}, scale: {l}}}"
            ));
        }
        _ => {
            let views = if method == Method::MemoryBank { 1 } else { 2 };
            line(&format!(
                "  views: {views}{}",
                if views == 1 {
                    "\u{1}# the memory bank compares one view with its stored embedding"
                } else {
                    ""
                }
            ));
            line("  pipeline:");
            ops.push(format!(
                "- random_resized_crop: {{size: {s}, scale: [{}, 1.0]}}\u{1}# the whole side; crops down to {:.0}% of the area",
                num(crop_lo),
                crop_lo * 100.0
            ));
            ops.push(flip);
            ops.push(jitter);
            ops.extend(gray);
            ops.extend(blur);
            for o in &ops {
                line(&format!("    {o}"));
            }
        }
    }

    // --- model
    line("model:");
    match net {
        Net::Small(stages) => {
            let widths: Vec<String> = [32, 64, 128][..stages]
                .iter()
                .map(|w| w.to_string())
                .collect();
            line(&format!(
                "  backbone: {{arch: small_cnn, channels: [{}]}}\u{1}# {s} px is too small for a ResNet's stages",
                widths.join(", ")
            ));
        }
        Net::ResnetCifar => line(&format!(
            "  backbone: {{arch: resnet18, stem: cifar}}\u{1}# {s} px: a 3×3 stem without max pool, as for CIFAR"
        )),
        Net::ResnetImagenet => line(&format!(
            "  backbone: {{arch: resnet18, stem: imagenet}}\u{1}# {s} px: the 7×7 stride-2 stem and max pool"
        )),
    }
    if method == Method::MemoryBank {
        line("  head: {hidden: [], out_dim: 128}\u{1}# InstDisc: one linear layer to 128-d");
    } else if matches!(net, Net::Small(_)) {
        line("  head: {hidden: [128], out_dim: 64, batch_norm: true}");
    } else {
        line("  head: {hidden: [512], out_dim: 128, batch_norm: true}");
    }

    // --- training length and batch
    let (base_batch, epochs) = match net {
        Net::Small(_) => (128, 20),
        Net::ResnetCifar => (256, 100),
        Net::ResnetImagenet => (64, 100),
    };
    let batch = base_batch.min(pow2_at_most(n / 4)).max(2);
    let steps = (n / batch).max(1);

    // --- loss
    line("loss:");
    line(&format!("  method: {}", method.name()));
    match method {
        Method::Simclr => line("  temperature: 0.2"),
        Method::Moco => {
            let per_step = 2 * batch;
            // Half the dataset at most: a queue that holds an image's own key from an
            // earlier step makes it its own negative.
            let queue = (4096.min(n / 2) / per_step).max(1) * per_step;
            line("  temperature: 0.2");
            line("  momentum: 0.99\u{1}# of the key encoder's EMA");
            line(&format!(
                "  queue_size: {queue}\u{1}# {} × 2 × batch {batch} (symmetric: both views' keys each step), at most half the dataset",
                queue / per_step
            ));
            line("  symmetric: true");
        }
        Method::MemoryBank => {
            let negatives = 4096.min(n / 2).max(1);
            line("  temperature: 0.07");
            line("  bank_momentum: 0.5");
            line(&format!(
                "  negatives: {negatives}\u{1}# drawn from a bank of {} embeddings",
                thousands(n)
            ));
            line(
                "  shared_negatives: true\u{1}# one draw per step for the whole batch: much faster on a CPU",
            );
        }
        Method::Swav => {
            let k = if d.labelled() {
                10 * d.classes.len()
            } else {
                n / 10
            };
            // Sinkhorn spreads the images evenly over the prototypes, so more than
            // half as many prototypes as images would leave most of them empty.
            let k = k.min(n / 2).clamp(2, 3000);
            line("  temperature: 0.1");
            line(&format!(
                "  prototypes: {k}\u{1}# {}",
                if d.labelled() {
                    format!("10 per class ({} classes)", d.classes.len())
                } else {
                    "a tenth of the training images".to_string()
                }
            ));
            line("  epsilon: 0.05");
            line("  sinkhorn_iterations: 3");
            line(&format!(
                "  freeze_prototypes_steps: {steps}\u{1}# the first epoch"
            ));
            if batch < 256 && n >= 16 * batch && epochs > 1 {
                line(&format!(
                    "  queue: {{size: {}, start_epoch: {}}}\u{1}# small batches: codes also from past embeddings",
                    8 * batch,
                    epochs / 5
                ));
            }
        }
        Method::Supcon => {
            line("  temperature: 0.1");
            line("  base_temperature: 0.07");
        }
    }

    // --- optimiser and schedule
    line("optimizer:");
    match method {
        Method::Swav => {
            line("  name: lars");
            line("  lr: 0.6");
            line("  lr_scaling: linear\u{1}# × batch/256");
            line("  momentum: 0.9");
            line("  weight_decay: 1.0e-6");
            line("  trust_coefficient: 0.02");
        }
        _ => {
            let (lr, wd, scaled) = match method {
                Method::Moco => ("0.06", "5.0e-4", true),
                Method::MemoryBank => ("0.03", "5.0e-4", false),
                Method::Supcon => ("0.5", "1.0e-4", true),
                _ => ("0.3", "1.0e-4", true),
            };
            line("  name: sgd");
            line(&format!("  lr: {lr}"));
            if scaled {
                line("  lr_scaling: linear\u{1}# × batch/256");
            }
            line("  momentum: 0.9");
            line(&format!("  weight_decay: {wd}"));
        }
    }
    line("schedule:");
    line("  kind: warmup_cosine");
    line(&format!("  warmup_epochs: {}", (epochs / 10).max(1)));
    if method == Method::Swav {
        line("  final_lr: 0.0006");
    }
    line("train:");
    line(&format!(
        "  epochs: {epochs}\u{1}# a starting point: more epochs usually help"
    ));
    line(&format!(
        "  batch_size: {batch}\u{1}# {} steps per epoch over {} training images",
        thousands(steps),
        thousands(n)
    ));
    line(&format!("  checkpoint_every: {}", (epochs / 5).max(1)));

    // --- downstream
    line("downstream:");
    if d.labelled() {
        let k = 20.min(n);
        line(&format!("  - {{task: knn, k: {k}, temperature: 0.07}}"));
        line(
            "  - {task: linear_probe, epochs: 30, lr: 0.1, weight_decay: [0.0, 1.0e-4, 1.0e-3, 1.0e-2]}",
        );
        line("  - {task: visualize}");
    } else {
        line("  # no labels: kNN, the linear probe and fine-tuning need them");
        line(
            "  - {task: visualize, plots: [filters, feature_maps, embedding_pca, training_curves, augmentation_views]}",
        );
    }
    line("output:");
    line("  dir: runs\u{1}# relative to the folder `recipe run` is started in");
    Ok(align_comments(&y))
}

/// Column at which [`render`] starts end-of-line comments, where the code leaves room.
const COMMENT_COLUMN: usize = 28;

/// Replaces the `\u{1}` that [`render`] puts between code and its comment by the
/// spaces that start the comment at [`COMMENT_COLUMN`] (two, past it).
fn align_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 1024);
    for l in text.lines() {
        match l.split_once('\u{1}') {
            Some((code, comment)) => {
                let width = code.chars().count();
                let pad = if width + 2 <= COMMENT_COLUMN {
                    COMMENT_COLUMN - width
                } else {
                    2
                };
                out.push_str(code);
                out.extend(std::iter::repeat_n(' ', pad));
                out.push_str(comment);
            }
            None => out.push_str(l),
        }
        out.push('\n');
    }
    out
}

fn classes_comment(classes: &[String]) -> String {
    let k = classes.len();
    let names = if k <= 6 {
        classes.join(", ")
    } else {
        format!(
            "{}, {}, {}, …, {}",
            classes[0],
            classes[1],
            classes[2],
            classes[k - 1]
        )
    };
    format!("{k} classes: {names}")
}

/// What [`init`] wrote.
#[derive(Clone, Debug)]
pub struct Written {
    /// What was detected.
    pub detected: Detected,
    /// The recipe file.
    pub recipe: PathBuf,
    /// The schema file the modeline names.
    pub schema: PathBuf,
    /// Whether `schema` was written now (no project schema was found).
    pub wrote_schema: bool,
    /// Warnings the loader gave on the written recipe, rendered (usually empty).
    pub warnings: String,
}

/// Detects the data, renders the recipe, validates it, and writes it (and, when no
/// project schema is found, `recipe.schema.json` beside it).
pub fn init(opts: &InitOptions) -> Result<Written, InitError> {
    let out = absolute(&opts.output);
    if out.exists() && !opts.force {
        return Err(InitError::Usage(format!(
            "`{}` already exists; pass `--force` to overwrite it, or choose another file with `-o`",
            opts.output.display()
        )));
    }
    if out.is_dir() {
        return Err(InitError::Usage(format!(
            "`{}` is a folder; give a file name with `-o`",
            opts.output.display()
        )));
    }
    let out_dir = out.parent().map(Path::to_path_buf).unwrap_or_default();
    let detected = detect(&opts.data)?;
    let found = find_schema(&out_dir, opts.project_dir.as_deref());
    let schema = found
        .clone()
        .unwrap_or_else(|| out_dir.join("recipe.schema.json"));
    let text = render(
        &detected,
        opts.method,
        &out_dir,
        &relative_path(&schema, &out_dir),
    )?;

    let loader = Loader::new();
    let name = out.display().to_string();
    let mut loaded = loader
        .load_bytes(&name, Some(&out_dir), text.as_bytes(), &[])
        .map_err(|e| InitError::Invalid(e.to_string()))?;
    crate::build::check_data_paths(&mut loaded);
    let rendered = render_human(&loaded.diagnostics, &loaded.sources);
    if loaded.valid_recipe().is_none() {
        return Err(InitError::Invalid(format!("{rendered}\n{text}")));
    }

    std::fs::create_dir_all(&out_dir).map_err(|source| InitError::Io {
        path: out_dir.clone(),
        source,
    })?;
    let wrote_schema = found.is_none() && (opts.force || !schema.exists());
    if wrote_schema {
        std::fs::write(&schema, schema::generate_pretty()).map_err(|source| InitError::Io {
            path: schema.clone(),
            source,
        })?;
    }
    std::fs::write(&out, &text).map_err(|source| InitError::Io {
        path: out.clone(),
        source,
    })?;
    Ok(Written {
        detected,
        recipe: out,
        schema,
        wrote_schema,
        warnings: rendered,
    })
}
