//! What a dataset on disk is: layout, size, channels, classes, test split and the
//! normalisation statistics of its training split ([`detect`]).

use super::*;

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
pub(super) fn holdout_fraction(n: usize) -> f64 {
    if n < 1000 { 0.2 } else { 0.1 }
}

pub(super) fn file_in(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names
        .iter()
        .flat_map(|n| [format!("{n}.gz"), n.to_string()])
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// The folder to look in: `data` itself, or the folder of a dataset file inside it.
pub(super) fn dataset_dir(data: &Path) -> Result<PathBuf, InitError> {
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
pub(super) fn find_source(dir: &Path) -> Result<DetectedSource, InitError> {
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
pub(super) fn header(path: &Path) -> Result<Header, String> {
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
pub(super) struct FolderScan {
    sizes: BTreeMap<(usize, usize), usize>,
    colour: bool,
    classes: Vec<String>,
}

pub(super) fn scan_folder(root: &Path) -> Result<FolderScan, InitError> {
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
pub(super) fn most_common(sizes: &BTreeMap<(usize, usize), usize>) -> ((usize, usize), usize) {
    sizes
        .iter()
        .max_by(|a, b| a.1.cmp(b.1).then((a.0.0 * a.0.1).cmp(&(b.0.0 * b.0.1))))
        .map(|(s, n)| (*s, *n))
        .unwrap_or(((1, 1), 0))
}

/// The recipe's `data` section for `source`, with absolute paths (for loading).
pub(super) fn data_section(
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
pub(super) fn all_gray(ds: &Dataset) -> bool {
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
pub(super) struct Facts {
    layout: String,
    sizes: BTreeMap<(usize, usize), usize>,
    channels: usize,
    channels_note: String,
    /// Class names of a folder (empty: flat); `None` for IDX and CIFAR, whose loader
    /// names the classes.
    classes: Option<Vec<String>>,
}

pub(super) fn facts(source: &DetectedSource) -> Result<Facts, InitError> {
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
