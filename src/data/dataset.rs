//! The in-memory dataset: equally sized 8-bit images plus optional labels.
//!
//! Pixels stay `u8` (a quarter of the memory of `f32`, like the PIL images torchvision
//! keeps) and become a [`Image`] in `[0, 1]` only when a worker asks for one.

use super::Image;

/// An 8-bit image before it joins a dataset: planar CHW, 1 or 3 channels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RawImage {
    /// 1 (grayscale) or 3 (RGB).
    pub channels: usize,
    /// Height in pixels.
    pub height: usize,
    /// Width in pixels.
    pub width: usize,
    /// `channels * height * width` samples, channel-major then row-major.
    pub pixels: Vec<u8>,
}

impl RawImage {
    /// Converts to `channels` (1 or 3): gray is replicated into R, G and B; RGB becomes
    /// gray by ITU-R 601-2 luma with PIL's fixed-point rounding (`convert("L")`).
    pub(crate) fn into_channels(self, channels: usize) -> RawImage {
        if channels == self.channels {
            return self;
        }
        let n = self.height * self.width;
        let pixels = if channels == 3 {
            // 1 -> 3
            let mut out = Vec::with_capacity(3 * n);
            for _ in 0..3 {
                out.extend_from_slice(&self.pixels[..n]);
            }
            out
        } else {
            // 3 -> 1
            let (r, rest) = self.pixels.split_at(n);
            let (g, b) = rest.split_at(n);
            r.iter()
                .zip(g)
                .zip(b)
                .map(|((&r, &g), &b)| luma(r, g, b))
                .collect()
        };
        RawImage {
            channels,
            height: self.height,
            width: self.width,
            pixels,
        }
    }

    /// Resizes to `(height, width)` with a triangle (bilinear) filter whose support grows
    /// with the downscale factor, i.e. antialiased bilinear like PIL's `BILINEAR` and
    /// torchvision's `Resize` on PIL images. Results are rounded back to 8 bits.
    pub(crate) fn resize(self, height: usize, width: usize) -> RawImage {
        if (height, width) == (self.height, self.width) {
            return self;
        }
        let plane = self.height * self.width;
        let mut pixels = Vec::with_capacity(self.channels * height * width);
        for c in 0..self.channels {
            let src = image::GrayImage::from_raw(
                self.width as u32,
                self.height as u32,
                self.pixels[c * plane..(c + 1) * plane].to_vec(),
            )
            .expect("plane length matches its dimensions");
            let dst = image::imageops::resize(
                &src,
                width as u32,
                height as u32,
                image::imageops::FilterType::Triangle,
            );
            pixels.extend_from_slice(dst.as_raw());
        }
        RawImage {
            channels: self.channels,
            height,
            width,
            pixels,
        }
    }
}

impl RawImage {
    /// [`RawImage::into_channels`] and [`RawImage::resize`] together, resizing the image
    /// with fewer channels (gray is replicated after resizing, colour made gray before).
    pub(crate) fn conform(self, channels: usize, height: usize, width: usize) -> RawImage {
        if channels > self.channels {
            self.resize(height, width).into_channels(channels)
        } else {
            self.into_channels(channels).resize(height, width)
        }
    }
}

/// PIL's `L = R*299/1000 + G*587/1000 + B*114/1000`, in its 16-bit fixed point.
pub(crate) fn luma(r: u8, g: u8, b: u8) -> u8 {
    ((r as u32 * 19595 + g as u32 * 38470 + b as u32 * 7471 + 0x8000) >> 16) as u8
}

/// A dataset split held in memory.
///
/// Invariants: every image has the same `(channels, height, width)`; `labels`, when
/// present, has one entry per image, each `< num_classes`; a dataset index is the
/// position in this split, `0..len()`, stable for the split's lifetime.
#[derive(Clone, Debug)]
pub struct Dataset {
    origin: String,
    channels: usize,
    height: usize,
    width: usize,
    pixels: Vec<u8>,
    labels: Option<Vec<u32>>,
    classes: Vec<String>,
}

impl Dataset {
    /// Builds a dataset from packed pixels. `origin` names where it came from (a path or
    /// `builtin:...`) for error messages; `classes` names the classes (may be empty for an
    /// unlabelled dataset). Returns `None` if the sizes are inconsistent or a label is out
    /// of range.
    pub fn from_parts(
        origin: impl Into<String>,
        (channels, height, width): (usize, usize, usize),
        pixels: Vec<u8>,
        labels: Option<Vec<u32>>,
        classes: Vec<String>,
    ) -> Option<Dataset> {
        let size = channels * height * width;
        if size == 0 || !pixels.len().is_multiple_of(size) {
            return None;
        }
        let n = pixels.len() / size;
        if let Some(l) = &labels
            && (l.len() != n || l.iter().any(|&y| y as usize >= classes.len()))
        {
            return None;
        }
        Some(Dataset {
            origin: origin.into(),
            channels,
            height,
            width,
            pixels,
            labels,
            classes,
        })
    }

    /// Where the dataset came from (a path, or `builtin:fashion-mnist-subset/...` /
    /// `builtin:mnist-subset/...`).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.pixels.len() / self.image_len()
    }

    /// Whether the dataset holds no image.
    pub fn is_empty(&self) -> bool {
        self.pixels.is_empty()
    }

    /// `(channels, height, width)` of every image.
    pub fn shape(&self) -> (usize, usize, usize) {
        (self.channels, self.height, self.width)
    }

    fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The 8-bit samples of image `i` (planar CHW).
    pub fn pixels(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.pixels[i * n..(i + 1) * n]
    }

    /// Image `i` as `f32` samples in `[0, 1]` (`u8 / 255`, like torchvision's `ToTensor`).
    pub fn image(&self, i: usize) -> Image {
        let data = self.pixels(i).iter().map(|&p| p as f32 / 255.0).collect();
        Image::from_planar(self.channels, self.height, self.width, data)
            .expect("dataset images are consistently sized")
    }

    /// The label of image `i`, if the dataset is labelled.
    pub fn label(&self, i: usize) -> Option<u32> {
        self.labels.as_ref().map(|l| l[i])
    }

    /// All labels, if the dataset is labelled.
    pub fn labels(&self) -> Option<&[u32]> {
        self.labels.as_deref()
    }

    /// Class names, indexed by label (empty when the source has no notion of classes).
    pub fn classes(&self) -> &[String] {
        &self.classes
    }

    /// Number of classes (0 for an unlabelled source).
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// Number of images per class (empty when unlabelled).
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.classes.len()];
        for &y in self.labels.iter().flatten() {
            counts[y as usize] += 1;
        }
        counts
    }

    /// Replaces the class names (same labels); used to give a train and test split
    /// the same class list. Callers keep every label below `classes.len()`.
    pub(crate) fn set_classes(&mut self, classes: Vec<String>) {
        debug_assert!(
            self.labels
                .iter()
                .flatten()
                .all(|&y| (y as usize) < classes.len())
        );
        self.classes = classes;
    }

    /// Drops the labels (for objectives that train on unlabelled data).
    pub fn without_labels(mut self) -> Dataset {
        self.labels = None;
        self
    }

    /// The images at `indices`, in that order, as a new dataset (indices renumbered).
    pub fn select(&self, indices: &[usize]) -> Dataset {
        let mut pixels = Vec::with_capacity(indices.len() * self.image_len());
        for &i in indices {
            pixels.extend_from_slice(self.pixels(i));
        }
        Dataset {
            origin: self.origin.clone(),
            channels: self.channels,
            height: self.height,
            width: self.width,
            pixels,
            labels: self
                .labels
                .as_ref()
                .map(|l| indices.iter().map(|&i| l[i]).collect()),
            classes: self.classes.clone(),
        }
    }

    /// Converts every image to `channels` (1 or 3); gray is replicated into R, G and B;
    /// RGB becomes gray by ITU-R 601-2 luma with PIL's fixed-point rounding (`convert("L")`).
    pub fn into_channels(self, channels: usize) -> Dataset {
        if channels == self.channels {
            return self;
        }
        let pixels = self.map_images(channels, self.height, self.width, |raw| {
            raw.into_channels(channels)
        });
        Dataset {
            channels,
            pixels,
            ..self
        }
    }

    /// Applies `f` to every image in parallel; each result must be `(c, h, w)`.
    fn map_images(
        &self,
        c: usize,
        h: usize,
        w: usize,
        f: impl Fn(RawImage) -> RawImage + Sync,
    ) -> Vec<u8> {
        use rayon::prelude::*;
        let out_len = c * h * w;
        let mut pixels = vec![0u8; self.len() * out_len];
        pixels
            .par_chunks_mut(out_len)
            .enumerate()
            .for_each(|(i, out)| {
                let raw = RawImage {
                    channels: self.channels,
                    height: self.height,
                    width: self.width,
                    pixels: self.pixels(i).to_vec(),
                };
                out.copy_from_slice(&f(raw).pixels);
            });
        pixels
    }

    /// Resizes every image to `(height, width)`; antialiased bilinear (triangle filter), like
    /// PIL's `BILINEAR` resize, rounded back to 8 bits.
    pub fn resize(self, height: usize, width: usize) -> Dataset {
        if (height, width) == (self.height, self.width) {
            return self;
        }
        let pixels = self.map_images(self.channels, height, width, |raw| {
            raw.resize(height, width)
        });
        Dataset {
            height,
            width,
            pixels,
            ..self
        }
    }

    /// Errors with [`super::DataError::TooSmall`] if the images are smaller than
    /// `(min_height, min_width)` in either dimension; `reason` says where the minimum
    /// comes from (e.g. "the crop size").
    pub fn check_min_size(
        &self,
        min_height: usize,
        min_width: usize,
        reason: &str,
    ) -> Result<(), super::DataError> {
        if self.height < min_height || self.width < min_width {
            return Err(super::DataError::TooSmall {
                origin: self.origin.clone(),
                size: (self.height, self.width),
                min: (min_height, min_width),
                reason: reason.to_string(),
            });
        }
        Ok(())
    }
}
