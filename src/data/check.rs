//! Cheap checks of a data configuration that touch the file system but decode no
//! pixels, for `recipe validate` (and the same check before `plan` and `run`): paths
//! ([`check_paths`]), then what loading would stop at or convert ([`survey`]).

use std::path::{Path, PathBuf};

use super::{DataConfig, Source};

/// A configured path that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathProblem {
    /// The [`DataConfig`] field that holds the path, e.g. `source.train_images` or
    /// `source.train[2]`.
    pub field: String,
    /// The path.
    pub path: PathBuf,
    /// What is wrong: "does not exist", "is a folder, expected a file", ...
    pub problem: String,
}

fn want(field: String, path: &Path, dir: bool, out: &mut Vec<PathProblem>) {
    let problem = match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist".to_string(),
        Err(e) => format!("cannot be read: {e}"),
        Ok(m) if dir && !m.is_dir() => "is a file, expected a folder".to_string(),
        Ok(m) if !dir && m.is_dir() => "is a folder, expected a file".to_string(),
        Ok(_) => return,
    };
    out.push(PathProblem {
        field,
        path: path.to_path_buf(),
        problem,
    });
}

/// Every path of `cfg` that does not exist or has the wrong kind (file vs folder), in
/// field order. The built-in source has no paths and never has problems.
pub fn check_paths(cfg: &DataConfig) -> Vec<PathProblem> {
    let mut out = Vec::new();
    match &cfg.source {
        Source::Builtin(_) => {}
        Source::Idx(f) => {
            want(
                "source.train_images".into(),
                &f.train_images,
                false,
                &mut out,
            );
            let optional = [
                ("source.train_labels", &f.train_labels),
                ("source.test_images", &f.test_images),
                ("source.test_labels", &f.test_labels),
            ];
            for (field, p) in optional {
                if let Some(p) = p {
                    want(field.into(), p, false, &mut out);
                }
            }
        }
        Source::Cifar(f) => {
            for (i, p) in f.train.iter().enumerate() {
                want(format!("source.train[{i}]"), p, false, &mut out);
            }
            for (i, p) in f.test.iter().enumerate() {
                want(format!("source.test[{i}]"), p, false, &mut out);
            }
        }
        Source::ImageFolder { train, test } => {
            want("source.train".into(), train, true, &mut out);
            if let Some(t) = test {
                want("source.test".into(), t, true, &mut out);
            }
        }
    }
    out
}

/// Most image-file headers [`survey`] reads per folder. Beyond it, files are sampled at
/// an even stride (every class folder is visited), so a folder of a million images is
/// checked in seconds; the counts it reports then cover the sample.
pub const MAX_HEADERS: usize = 20_000;

/// How loading will change images: channel count or size, counted over the files
/// [`survey`] looked at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conversion {
    /// The [`DataConfig`] field of the images (`source.train`, `source.test`, ...).
    pub field: String,
    /// What happens to them.
    pub kind: ConversionKind,
    /// How many images it happens to.
    pub count: usize,
    /// Out of how many images looked at (fewer than the split when sampled).
    pub of: usize,
}

/// One kind of [`Conversion`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConversionKind {
    /// Colour images become luma, or gray images are replicated (`from` → `to` channels).
    Channels {
        /// The images' own channel count.
        from: usize,
        /// The configured one.
        to: usize,
    },
    /// Images of another size are resized (antialiased bilinear) to `to` (height, width).
    Resize {
        /// The target `(height, width)`.
        to: (usize, usize),
    },
}

/// What a cheap look at a data source finds, without decoding pixels: image counts, the
/// errors loading would stop at, and the conversions loading would make silently.
#[derive(Debug, Default)]
pub struct Survey {
    /// Images of the training split as the source holds them (before hold-out and
    /// subset), when it could be counted.
    pub train_len: Option<usize>,
    /// Errors loading would hit, each with the [`DataConfig`] field at fault. Path
    /// problems ([`check_paths`]) are not repeated here.
    pub errors: Vec<(String, super::DataError)>,
    /// What loading converts.
    pub conversions: Vec<Conversion>,
}

/// Looks at a data source the way [`super::load`] will, cheaply: IDX headers, CIFAR
/// file sizes, and for image folders the listing (layout, empty class folders, labels)
/// plus each image file's header (format, size, colour type) through the `image`
/// crate's decoders, at most [`MAX_HEADERS`] per folder. A file whose header decodes
/// but whose pixel data is damaged is only found by loading. Paths that do not exist
/// are left to [`check_paths`].
pub fn survey(cfg: &DataConfig) -> Survey {
    let mut s = Survey::default();
    let target_c = cfg.channels;
    let target_hw = cfg.image_size;
    // A whole dataset of one shape (built-in, IDX, CIFAR).
    let uniform =
        |s: &mut Survey, field: &str, origin: &Path, n: usize, (c, h, w): (usize, usize, usize)| {
            if let Some(to) = target_c
                && to != c
            {
                s.conversions.push(Conversion {
                    field: field.into(),
                    kind: ConversionKind::Channels { from: c, to },
                    count: n,
                    of: n,
                });
            }
            if let Some(to) = target_hw
                && to != (h, w)
            {
                if cfg.resize == super::Resize::Error {
                    s.errors.push((
                        field.into(),
                        super::DataError::MixedSizes {
                            path: origin.to_path_buf(),
                            found: (h, w),
                            expected: to,
                            expected_from: "the configured image size".into(),
                        },
                    ));
                } else {
                    s.conversions.push(Conversion {
                        field: field.into(),
                        kind: ConversionKind::Resize { to },
                        count: n,
                        of: n,
                    });
                }
            }
        };
    match &cfg.source {
        Source::Builtin(b) => {
            s.train_len = Some(super::builtin::TRAIN_LEN);
            let shape = (1, 28, 28);
            let origin = Path::new(b.origin());
            let n = super::builtin::TRAIN_LEN + super::builtin::TEST_LEN;
            uniform(&mut s, "source", origin, n, shape);
        }
        Source::Idx(f) => {
            for (field, p) in [
                ("source.train_images", Some(&f.train_images)),
                ("source.test_images", f.test_images.as_ref()),
            ] {
                let Some(p) = p.filter(|p| p.is_file()) else {
                    continue;
                };
                match idx_header(p) {
                    Ok((n, h, w)) => {
                        if field == "source.train_images" {
                            s.train_len = Some(n);
                        }
                        uniform(&mut s, field, p, n, (1, h, w));
                    }
                    Err(e) => s.errors.push((field.into(), e)),
                }
            }
        }
        Source::Cifar(f) => {
            let rec = f.kind.record_bytes() as u64;
            let mut total = 0usize;
            let mut test_total = 0usize;
            let mut counted = !f.train.is_empty();
            let files = f.train.iter().map(|p| (p, true)).enumerate();
            let files = files.chain(f.test.iter().map(|p| (p, false)).enumerate());
            for (i, (p, is_train)) in files {
                let split = if is_train { "train" } else { "test" };
                let field = format!("source.{split}[{i}]");
                match std::fs::metadata(p) {
                    Ok(m) if m.is_file() && m.len() % rec == 0 => {
                        let n = (m.len() / rec) as usize;
                        if is_train {
                            total += n;
                        } else {
                            test_total += n;
                        }
                    }
                    Ok(m) if m.is_file() => {
                        counted &= !is_train;
                        s.errors.push((
                            field,
                            super::DataError::BadCifar {
                                path: p.clone(),
                                problem: format!(
                                    "{} bytes is not a whole number of {rec}-byte records (truncated?)",
                                    m.len()
                                ),
                            },
                        ));
                    }
                    _ => counted &= !is_train,
                }
            }
            if counted {
                s.train_len = Some(total);
                let n = total + test_total;
                uniform(&mut s, "source.train[0]", &f.train[0], n, (3, 32, 32));
            }
        }
        Source::ImageFolder { train, test } => {
            let mut first = None;
            for (field, root) in [
                ("source.train", Some(train)),
                ("source.test", test.as_ref()),
            ] {
                let Some(root) = root.filter(|r| r.is_dir()) else {
                    continue;
                };
                let listing = match super::folder::list_folder(root) {
                    Ok(l) => l,
                    Err(e) => {
                        s.errors.push((field.into(), e));
                        continue;
                    }
                };
                if field == "source.train" {
                    s.train_len = Some(listing.files.len());
                    if cfg.use_labels && listing.classes.is_empty() {
                        s.errors.push((
                            field.into(),
                            super::DataError::LabelsRequired {
                                source: format!("image folder `{}`", root.display()),
                            },
                        ));
                    }
                }
                folder_headers(&mut s, cfg, field, &listing.files, &mut first);
            }
        }
    }
    s
}

/// The item count and image size from an IDX images file's header (raw or gzipped),
/// reading only the first 16 bytes of the (decompressed) stream.
fn idx_header(path: &Path) -> Result<(usize, usize, usize), super::DataError> {
    use std::io::Read;
    let bad = |problem: String| super::DataError::BadIdx {
        path: path.to_path_buf(),
        problem,
    };
    let file = std::fs::File::open(path)
        .map_err(|e| super::error::io_error(path, "IDX images file", e))?;
    let mut head = [0u8; 2];
    let mut reader = std::io::BufReader::new(file);
    let gz = {
        use std::io::BufRead;
        let buf = reader
            .fill_buf()
            .map_err(|e| super::error::io_error(path, "IDX images file", e))?;
        let n = buf.len().min(2);
        head[..n].copy_from_slice(&buf[..n]);
        n == 2 && head == [0x1f, 0x8b]
    };
    let mut stream: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    let mut header = Vec::with_capacity(16);
    (&mut stream)
        .take(16)
        .read_to_end(&mut header)
        .map_err(|e| bad(format!("gzip stream is corrupt or truncated ({e})")))?;
    if header.len() < 4 || header[..4] != [0, 0, 0x08, 3] {
        // The full parser words every header problem; let it say this one.
        return super::idx::parse_idx(&header, 3, path).map(|_| (0, 0, 0));
    }
    if header.len() < 16 {
        return Err(bad(format!(
            "truncated header: {} bytes, need 16",
            header.len()
        )));
    }
    let dim = |i: usize| {
        u32::from_be_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]) as usize
    };
    Ok((dim(4), dim(8), dim(12)))
}

/// Reads the headers of (a stride sample of) `files` and records unreadable files and
/// the channel and size conversions loading will make. `first` carries the training
/// split's target size (the configured one, or its first image's) to the test split,
/// as loading does.
fn folder_headers(
    s: &mut Survey,
    cfg: &DataConfig,
    field: &str,
    files: &[(PathBuf, Option<u32>)],
    first: &mut Option<(usize, (usize, usize))>,
) {
    use image::ImageDecoder;
    let stride = files.len().div_ceil(MAX_HEADERS).max(1);
    let mut seen = Vec::new();
    for (p, _) in files.iter().step_by(stride) {
        let header = image::ImageReader::open(p)
            .and_then(|r| r.with_guessed_format())
            .map_err(|e| super::error::io_error(p, "image file", e))
            .and_then(|r| {
                r.into_decoder().map_err(|e| super::DataError::Decode {
                    path: p.clone(),
                    message: e.to_string(),
                })
            })
            .map(|d| {
                let (w, h) = d.dimensions();
                let gray = matches!(
                    d.color_type(),
                    image::ColorType::L8
                        | image::ColorType::L16
                        | image::ColorType::La8
                        | image::ColorType::La16
                );
                (if gray { 1 } else { 3 }, (h as usize, w as usize))
            });
        match header {
            Ok(h) => seen.push((p, h)),
            Err(_) if cfg.skip_unreadable => {}
            Err(e) => {
                s.errors.push((field.into(), e));
                return;
            }
        }
    }
    let Some((_, (c0, hw0))) = seen.first() else {
        return;
    };
    let (channels, target) = match *first {
        Some(t) => t,
        None => {
            // As loading decides: the configured values, else colour when any image
            // is colour, and the first image's size.
            let c = cfg
                .channels
                .unwrap_or(if seen.iter().any(|(_, (c, _))| *c == 3) {
                    3
                } else {
                    *c0
                });
            let t = (c, cfg.image_size.unwrap_or(*hw0));
            *first = Some(t);
            t
        }
    };
    let of = seen.len();
    for from in [1, 3] {
        let count = seen.iter().filter(|(_, (c, _))| *c == from).count();
        if from != channels && count > 0 {
            s.conversions.push(Conversion {
                field: field.into(),
                kind: ConversionKind::Channels { from, to: channels },
                count,
                of,
            });
        }
    }
    let resized: Vec<_> = seen.iter().filter(|(_, (_, hw))| *hw != target).collect();
    if let Some((p, (_, hw))) = resized.first() {
        if cfg.resize == super::Resize::Error {
            s.errors.push((
                field.into(),
                super::DataError::MixedSizes {
                    path: (*p).clone(),
                    found: *hw,
                    expected: target,
                    expected_from: if cfg.image_size.is_some() {
                        "the configured image size".into()
                    } else {
                        format!("the first image `{}`", seen[0].0.display())
                    },
                },
            ));
        } else {
            s.conversions.push(Conversion {
                field: field.into(),
                kind: ConversionKind::Resize { to: target },
                count: resized.len(),
                of,
            });
        }
    }
}
