//! Geometric ops: random resized crop (and the resampler under it) and horizontal flip.

use rand::Rng;

use super::error::{check_probability, check_range, invalid};
use super::{AugmentError, coin, uniform};
use crate::data::Image;

/// Precomputed weights that resample one axis of length `in_len` to `out_len`.
///
/// The filter is the triangle (bilinear) kernel with pixel centres at `i + 0.5`
/// (`align_corners=False`). When shrinking with antialiasing on, the kernel is widened by
/// the shrink factor, as PIL and torchvision's `antialias=True` do, so every input pixel
/// contributes and a downscaled image does not alias. When enlarging (or with
/// antialiasing off) this is exactly plain bilinear interpolation with edge clamping.
/// Weights of each output sample sum to 1, so constant images stay constant.
#[derive(Clone, Debug)]
pub struct Resampler {
    out_len: usize,
    taps: usize,
    starts: Vec<usize>,
    weights: Vec<f32>,
}

impl Resampler {
    /// Weights for resampling `in_len` samples to `out_len`; both must be positive
    /// (a zero length yields an empty resampler that [`Resampler::out_len`] reports as such).
    pub fn new(in_len: usize, out_len: usize, antialias: bool) -> Self {
        if in_len == 0 || out_len == 0 {
            return Resampler {
                out_len: 0,
                taps: 0,
                starts: Vec::new(),
                weights: Vec::new(),
            };
        }
        let scale = in_len as f64 / out_len as f64;
        let filter_scale = if antialias && scale > 1.0 { scale } else { 1.0 };
        let support = filter_scale;
        let taps = (2.0 * support).ceil() as usize + 1;
        let mut starts = Vec::with_capacity(out_len);
        let mut weights = vec![0.0f32; out_len * taps];
        let mut w = vec![0.0f64; taps];
        for i in 0..out_len {
            let center = (i as f64 + 0.5) * scale;
            let lo = ((center - support + 0.5).floor().max(0.0)) as usize;
            let hi = ((center + support + 0.5).floor() as usize).min(in_len);
            let count = hi.saturating_sub(lo).min(taps);
            let mut total = 0.0;
            for (k, wk) in w.iter_mut().enumerate() {
                *wk = if k < count {
                    let x = ((lo + k) as f64 - center + 0.5) / filter_scale;
                    (1.0 - x.abs()).max(0.0)
                } else {
                    0.0
                };
                total += *wk;
            }
            starts.push(lo);
            let row = &mut weights[i * taps..(i + 1) * taps];
            if total > 0.0 {
                for (dst, &wk) in row.iter_mut().zip(&w) {
                    *dst = (wk / total) as f32;
                }
            } else {
                // Unreachable for positive lengths (the nearest pixel is within the
                // support); kept so a weight row never sums to zero.
                row[0] = 1.0;
            }
        }
        Resampler {
            out_len,
            taps,
            starts,
            weights,
        }
    }

    /// The output length.
    pub fn out_len(&self) -> usize {
        self.out_len
    }

    /// The first input index and the weights (padded with zeros to a fixed tap count)
    /// that make output sample `i`.
    pub fn weights(&self, i: usize) -> (usize, &[f32]) {
        (
            self.starts[i],
            &self.weights[i * self.taps..(i + 1) * self.taps],
        )
    }
}

/// Resamples the window `(top, left, height, width)` of every channel of `img` to
/// `out_h x out_w`, separably (rows first, then columns) with precomputed weights.
///
/// An empty window or output gives an image of zeros of the output size.
pub fn resize_window(
    img: &Image,
    (top, left, height, width): (usize, usize, usize, usize),
    (out_h, out_w): (usize, usize),
    antialias: bool,
) -> Image {
    let c = img.channels;
    let mut out = Image::filled(c, out_h, out_w, 0.0);
    if height == 0 || width == 0 || out_h == 0 || out_w == 0 {
        return out;
    }
    debug_assert!(top + height <= img.height && left + width <= img.width);
    let rx = Resampler::new(width, out_w, antialias);
    let ry = Resampler::new(height, out_h, antialias);
    // Rows padded with zeros past the window so every output reads a fixed tap count.
    let mut row = vec![0.0f32; width + rx.taps];
    let mut tmp = vec![0.0f32; (height + ry.taps) * out_w];
    for ch in 0..c {
        let src = img.plane(ch);
        for r in 0..height {
            let start = (top + r) * img.width + left;
            row[..width].copy_from_slice(&src[start..start + width]);
            let dst = &mut tmp[r * out_w..(r + 1) * out_w];
            // Fixed tap counts (enlarging needs 3, mild shrinking 4-5) unroll fully.
            match rx.taps {
                3 => horizontal::<3>(&row, &rx, dst),
                4 => horizontal::<4>(&row, &rx, dst),
                5 => horizontal::<5>(&row, &rx, dst),
                _ => {
                    for (ox, d) in dst.iter_mut().enumerate() {
                        let (s, w) = rx.weights(ox);
                        *d = w.iter().zip(&row[s..s + rx.taps]).map(|(a, b)| a * b).sum();
                    }
                }
            }
        }
        let plane = out.plane_mut(ch);
        for oy in 0..out_h {
            let (s, w) = ry.weights(oy);
            let dst = &mut plane[oy * out_w..(oy + 1) * out_w];
            for (t, &wt) in w.iter().enumerate() {
                if wt == 0.0 {
                    continue;
                }
                let src = &tmp[(s + t) * out_w..(s + t + 1) * out_w];
                for (d, &v) in dst.iter_mut().zip(src) {
                    *d += wt * v;
                }
            }
        }
    }
    out
}

/// One row of the horizontal pass with a compile-time tap count `N == rx.taps`.
#[inline]
fn horizontal<const N: usize>(row: &[f32], rx: &Resampler, dst: &mut [f32]) {
    for (ox, d) in dst.iter_mut().enumerate() {
        let (s, w) = rx.weights(ox);
        if let (Ok(w), Ok(src)) = (
            <&[f32; N]>::try_from(w),
            <&[f32; N]>::try_from(&row[s..s + N]),
        ) {
            let mut acc = 0.0;
            for t in 0..N {
                acc += w[t] * src[t];
            }
            *d = acc;
        }
    }
}

/// Resizes a whole image to `(out_h, out_w)` with the antialiased bilinear resampler.
pub fn resize(img: &Image, size: (usize, usize), antialias: bool) -> Image {
    resize_window(img, (0, 0, img.height, img.width), size, antialias)
}

/// The window a [`RandomResizedCrop`] chose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CropParams {
    /// First row of the window.
    pub top: usize,
    /// First column of the window.
    pub left: usize,
    /// Window height.
    pub height: usize,
    /// Window width.
    pub width: usize,
    /// True when all 10 random attempts failed and the centre-crop fallback was used.
    pub fallback: bool,
}

/// Crops a random window and resizes it to `size` (torchvision's `RandomResizedCrop`).
///
/// Up to 10 attempts draw an area fraction uniformly from `scale` and an aspect ratio
/// (width / height) log-uniformly from `ratio`; `w = round(sqrt(area * ratio))`,
/// `h = round(sqrt(area / ratio))` (round half to even, as Python's `round`). The first
/// window that fits is placed uniformly at random. If none fits, the fallback is a
/// centred crop of the whole image with its aspect ratio clamped into `ratio`.
/// The window is then resampled bilinearly to `size`; with `antialias` (the default,
/// as torchvision's `antialias=True`) shrinking uses a widened triangle filter.
///
/// Deliberate differences: `scale` must lie in `(0, 1]` (torchvision accepts larger
/// values, which can never fit and silently fall back); images of any size are accepted
/// (an empty image yields a zero view).
#[derive(Clone, Debug, PartialEq)]
pub struct RandomResizedCrop {
    /// Output `(height, width)`.
    pub size: (usize, usize),
    /// Range of the window's area as a fraction of the image's area.
    pub scale: (f64, f64),
    /// Range of the window's aspect ratio (width / height).
    pub ratio: (f64, f64),
    /// Widen the bilinear filter when shrinking (torchvision `antialias=True`).
    pub antialias: bool,
}

impl RandomResizedCrop {
    /// The op's name in recipes.
    pub const NAME: &'static str = "random_resized_crop";
    /// Attempts before the centre-crop fallback (torchvision's constant).
    pub const ATTEMPTS: usize = 10;

    /// A validated crop with antialiasing on.
    pub fn new(
        size: (usize, usize),
        scale: (f64, f64),
        ratio: (f64, f64),
    ) -> Result<Self, AugmentError> {
        let op = RandomResizedCrop {
            size,
            scale,
            ratio,
            antialias: true,
        };
        op.validate()?;
        Ok(op)
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), AugmentError> {
        if self.size.0 == 0 || self.size.1 == 0 {
            return Err(invalid(
                Self::NAME,
                "size",
                format!("must be positive, got {:?}", self.size),
            ));
        }
        check_range(Self::NAME, "scale", self.scale)?;
        if self.scale.0 <= 0.0 || self.scale.1 > 1.0 {
            return Err(invalid(
                Self::NAME,
                "scale",
                format!(
                    "must lie in (0, 1] (a fraction of the image area), got [{}, {}]",
                    self.scale.0, self.scale.1
                ),
            ));
        }
        check_range(Self::NAME, "ratio", self.ratio)?;
        if self.ratio.0 <= 0.0 {
            return Err(invalid(
                Self::NAME,
                "ratio",
                format!(
                    "must be positive (width / height), got [{}, {}]",
                    self.ratio.0, self.ratio.1
                ),
            ));
        }
        Ok(())
    }

    /// Draws the crop window for an image of `height x width`.
    pub fn sample_params<R: Rng + ?Sized>(
        &self,
        height: usize,
        width: usize,
        rng: &mut R,
    ) -> CropParams {
        if height == 0 || width == 0 {
            return CropParams {
                top: 0,
                left: 0,
                height: 0,
                width: 0,
                fallback: true,
            };
        }
        let area = (height * width) as f64;
        let (log_lo, log_hi) = (self.ratio.0.ln(), self.ratio.1.ln());
        for _ in 0..Self::ATTEMPTS {
            let target = area * uniform(rng, self.scale.0, self.scale.1);
            let aspect = uniform(rng, log_lo, log_hi).exp();
            let w = (target * aspect).sqrt().round_ties_even();
            let h = (target / aspect).sqrt().round_ties_even();
            if w >= 1.0 && h >= 1.0 && w <= width as f64 && h <= height as f64 {
                let (h, w) = (h as usize, w as usize);
                let top = rng.gen_range(0..=height - h);
                let left = rng.gen_range(0..=width - w);
                return CropParams {
                    top,
                    left,
                    height: h,
                    width: w,
                    fallback: false,
                };
            }
        }
        let in_ratio = width as f64 / height as f64;
        let (h, w) = if in_ratio < self.ratio.0 {
            let h = (width as f64 / self.ratio.0).round_ties_even() as usize;
            (h.clamp(1, height), width)
        } else if in_ratio > self.ratio.1 {
            let w = (height as f64 * self.ratio.1).round_ties_even() as usize;
            (height, w.clamp(1, width))
        } else {
            (height, width)
        };
        CropParams {
            top: (height - h) / 2,
            left: (width - w) / 2,
            height: h,
            width: w,
            fallback: true,
        }
    }

    /// Crops and resizes `img` (borrowed: the crop reads only its window).
    pub fn apply_ref<R: Rng + ?Sized>(&self, img: &Image, rng: &mut R) -> Image {
        let p = self.sample_params(img.height, img.width, rng);
        resize_window(
            img,
            (p.top, p.left, p.height, p.width),
            self.size,
            self.antialias,
        )
    }

    /// Crops and resizes `img`.
    pub fn apply<R: Rng + ?Sized>(&self, img: Image, rng: &mut R) -> Image {
        self.apply_ref(&img, rng)
    }
}

/// Mirrors the image left-right with probability `p` (torchvision's `RandomHorizontalFlip`).
#[derive(Clone, Debug, PartialEq)]
pub struct HorizontalFlip {
    /// Probability of flipping.
    pub p: f64,
}

impl HorizontalFlip {
    /// The op's name in recipes.
    pub const NAME: &'static str = "horizontal_flip";

    /// A validated flip.
    pub fn new(p: f64) -> Result<Self, AugmentError> {
        let op = HorizontalFlip { p };
        op.validate()?;
        Ok(op)
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), AugmentError> {
        check_probability(Self::NAME, self.p)
    }

    /// Flips `img` in place with probability `p`.
    pub fn apply<R: Rng + ?Sized>(&self, mut img: Image, rng: &mut R) -> Image {
        if coin(rng, self.p) && img.width > 1 {
            let w = img.width;
            for row in img.data.chunks_exact_mut(w) {
                row.reverse();
            }
        }
        img
    }
}
