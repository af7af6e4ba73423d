//! Image folders: one subfolder per class (labelled, classes sorted by name, files found
//! recursively inside each class folder), or a flat folder of images (unlabelled).
//!
//! A file counts as an image when its extension is one the `image` crate build can
//! decode (png, jpg/jpeg, bmp, gif, tiff, webp); other files and hidden entries (names
//! starting with `.`) are ignored, as torchvision's `ImageFolder` does. Files are visited
//! in sorted path order, so the dataset order is the same on every machine.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::DataError;
use super::dataset::RawImage;
use super::error::io_error;

/// An image file that could not be read or decoded and was skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The file.
    pub path: PathBuf,
    /// Why: the full error message (decoder or I/O).
    pub reason: String,
}

/// The files of an image folder, before decoding.
#[derive(Clone, Debug)]
pub struct FolderListing {
    /// Class names (subfolder names, sorted), empty for a flat folder.
    pub classes: Vec<String>,
    /// Every image file with its class index (`None` in a flat folder).
    pub files: Vec<(PathBuf, Option<u32>)>,
}

fn is_hidden(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with('.'))
}

/// Whether `p` has an extension of an image format this build can decode.
pub fn is_image_file(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .and_then(image::ImageFormat::from_extension)
        .is_some_and(|f| f.reading_enabled())
}

/// Sorted non-hidden entries of `dir`, split into (subfolders, image files).
fn entries(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>), DataError> {
    let rd = std::fs::read_dir(dir).map_err(|e| io_error(dir, "image folder", e))?;
    let mut dirs = Vec::new();
    let mut files = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| io_error(dir, "image folder", e))?;
        let path = entry.path();
        if is_hidden(&path) {
            continue;
        }
        // Follows symlinks, so a linked class folder or image counts like a real one.
        if path.is_dir() {
            dirs.push(path);
        } else if is_image_file(&path) {
            files.push(path);
        }
    }
    dirs.sort();
    files.sort();
    Ok((dirs, files))
}

fn walk_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let (dirs, files) = entries(dir)?;
    out.extend(files);
    for d in dirs {
        walk_images(&d, out)?;
    }
    Ok(())
}

/// Lists an image folder: labelled when it has subfolders, flat otherwise.
pub fn list_folder(root: &Path) -> Result<FolderListing, DataError> {
    if !root.exists() {
        return Err(DataError::Missing {
            path: root.to_path_buf(),
            what: "image folder",
        });
    }
    if !root.is_dir() {
        return Err(DataError::Config(format!(
            "`{}` is a file, but an image folder was expected",
            root.display()
        )));
    }
    let (dirs, loose) = entries(root)?;
    if dirs.is_empty() {
        if loose.is_empty() {
            return Err(DataError::EmptyFolder {
                path: root.to_path_buf(),
                detail: "no class subfolders and no image files (png, jpg, bmp, gif, tiff, webp)"
                    .into(),
            });
        }
        return Ok(FolderListing {
            classes: Vec::new(),
            files: loose.into_iter().map(|p| (p, None)).collect(),
        });
    }
    if let Some(example) = loose.into_iter().next() {
        return Err(DataError::MixedLayout {
            path: root.to_path_buf(),
            example,
        });
    }
    let mut classes = Vec::new();
    let mut files = Vec::new();
    for (c, dir) in dirs.iter().enumerate() {
        let mut found = Vec::new();
        walk_images(dir, &mut found)?;
        found.sort();
        if found.is_empty() {
            return Err(DataError::EmptyFolder {
                path: dir.clone(),
                detail: "this class folder has no image files".into(),
            });
        }
        classes.push(
            dir.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        );
        files.extend(found.into_iter().map(|p| (p, Some(c as u32))));
    }
    Ok(FolderListing { classes, files })
}

/// Decodes one image file to 8-bit planar gray (1 channel) or RGB (3 channels), keeping
/// gray sources gray; alpha is dropped, 16-bit samples are scaled to 8 bits.
pub(crate) fn decode_file(path: &Path) -> Result<RawImage, DataError> {
    let decode_err = |message: String| DataError::Decode {
        path: path.to_path_buf(),
        message,
    };
    let reader = image::ImageReader::open(path)
        .map_err(|e| io_error(path, "image file", e))?
        .with_guessed_format()
        .map_err(|e| io_error(path, "image file", e))?;
    let img = reader.decode().map_err(|e| decode_err(e.to_string()))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return Err(decode_err("image has zero width or height".into()));
    }
    let gray = matches!(
        img.color(),
        image::ColorType::L8
            | image::ColorType::L16
            | image::ColorType::La8
            | image::ColorType::La16
    );
    if gray {
        Ok(RawImage {
            channels: 1,
            height: h,
            width: w,
            pixels: img.to_luma8().into_raw(),
        })
    } else {
        let rgb = img.to_rgb8().into_raw();
        let n = h * w;
        let mut pixels = vec![0u8; 3 * n];
        for (i, px) in rgb.chunks_exact(3).enumerate() {
            pixels[i] = px[0];
            pixels[n + i] = px[1];
            pixels[2 * n + i] = px[2];
        }
        Ok(RawImage {
            channels: 3,
            height: h,
            width: w,
            pixels,
        })
    }
}

/// A decoded file: its path, class (in a labelled folder) and pixels.
pub(crate) type Decoded = (PathBuf, Option<u32>, RawImage);

/// Decodes every listed file in parallel, preserving order. A file that cannot be read
/// or decoded is an error, or with `skip_unreadable` is dropped and reported.
pub(crate) fn decode_all(
    files: Vec<(PathBuf, Option<u32>)>,
    skip_unreadable: bool,
) -> Result<(Vec<Decoded>, Vec<Skipped>), DataError> {
    let decoded: Vec<(PathBuf, Option<u32>, Result<RawImage, DataError>)> = files
        .into_par_iter()
        .map(|(p, y)| {
            let r = decode_file(&p);
            (p, y, r)
        })
        .collect();
    let mut ok = Vec::with_capacity(decoded.len());
    let mut skipped = Vec::new();
    for (p, y, r) in decoded {
        match r {
            Ok(img) => ok.push((p, y, img)),
            Err(e) if skip_unreadable => skipped.push(Skipped {
                reason: match &e {
                    DataError::Decode { path, message } => {
                        super::error::decode_message(path, message)
                    }
                    e => e.to_string(),
                },
                path: p,
            }),
            Err(e) => return Err(e),
        }
    }
    Ok((ok, skipped))
}
