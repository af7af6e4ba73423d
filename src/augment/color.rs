//! Colour ops: colour jitter, random grayscale, solarize, normalise, and RGB/HSV.
//!
//! On 1-channel images brightness, contrast and solarize apply as on any channel;
//! saturation, hue and grayscale are identities, since a gray image has no chroma
//! (torchvision does the same for saturation and hue on 1-channel tensors).

use rand::Rng;
use rand::seq::SliceRandom;

use super::error::{check_probability, check_range, invalid};
use super::{AugmentError, coin, uniform};
use crate::data::Image;

/// ITU-R 601-2 luma weights for R, G, B. torchvision's tensor path uses 0.2989 for red;
/// these sum to exactly 1 so a gray pixel stays exactly gray (a deliberate difference of
/// at most 1e-4 per sample).
pub const LUMA: [f32; 3] = [0.299, 0.587, 0.114];

/// Replaces the three planes of an RGB image by their luma; no-op on other channel counts.
fn to_gray_in_place(img: &mut Image) {
    if img.channels != 3 {
        return;
    }
    let n = img.height * img.width;
    let (r, rest) = img.data.split_at_mut(n);
    let (g, b) = rest.split_at_mut(n);
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        let y = LUMA[0] * *r + LUMA[1] * *g + LUMA[2] * *b;
        *r = y;
        *g = y;
        *b = y;
    }
}

/// The luma plane of an RGB image, or a copy of the plane of a 1-channel image.
fn luma(img: &Image) -> Vec<f32> {
    if img.channels == 3 {
        let (r, g, b) = (img.plane(0), img.plane(1), img.plane(2));
        r.iter()
            .zip(g)
            .zip(b)
            .map(|((r, g), b)| LUMA[0] * r + LUMA[1] * g + LUMA[2] * b)
            .collect()
    } else {
        img.plane(0).to_vec()
    }
}

/// Converts RGB in `[0, 1]` to `(hue, saturation, value)`, hue in `[0, 1)`.
pub fn rgb_to_hsv(r: f32, g: f32, b: f32) -> (f32, f32, f32) {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let chroma = max - min;
    if chroma <= 0.0 {
        return (0.0, 0.0, max);
    }
    let s = if max > 0.0 { chroma / max } else { 0.0 };
    // Sector formula: which channel is the maximum decides the base hue.
    let h = if max == r {
        (g - b) / chroma
    } else if max == g {
        2.0 + (b - r) / chroma
    } else {
        4.0 + (r - g) / chroma
    };
    ((h / 6.0).rem_euclid(1.0), s, max)
}

/// Converts `(hue, saturation, value)` back to RGB; hue is taken modulo 1.
pub fn hsv_to_rgb(h: f32, s: f32, v: f32) -> (f32, f32, f32) {
    let h6 = h.rem_euclid(1.0) * 6.0;
    let sector = h6.floor();
    let f = h6 - sector;
    let p = (v * (1.0 - s)).clamp(0.0, 1.0);
    let q = (v * (1.0 - s * f)).clamp(0.0, 1.0);
    let t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0);
    match sector as i32 % 6 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    }
}

/// One of colour jitter's four adjustments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adjust {
    /// Multiply by the factor.
    Brightness,
    /// Blend with the image's mean luma.
    Contrast,
    /// Blend with the per-pixel luma.
    Saturation,
    /// Rotate the hue.
    Hue,
}

/// The factors one colour-jitter application drew, and the order it applies them in.
#[derive(Clone, Debug, PartialEq)]
pub struct JitterParams {
    /// A random permutation of the four adjustments.
    pub order: [Adjust; 4],
    /// Brightness factor, if brightness is jittered.
    pub brightness: Option<f32>,
    /// Contrast factor, if contrast is jittered.
    pub contrast: Option<f32>,
    /// Saturation factor, if saturation is jittered.
    pub saturation: Option<f32>,
    /// Hue shift (a fraction of a full turn), if hue is jittered.
    pub hue: Option<f32>,
}

/// Random brightness, contrast, saturation and hue in a random order, the whole applied
/// with probability `p` (torchvision's `RandomApply([ColorJitter(...)], p)`).
///
/// Each factor is drawn uniformly from its range; a range of `None` (or the identity
/// `[1, 1]` / `[0, 0]`) skips that adjustment. Brightness multiplies, contrast blends with
/// the mean luma of the whole image, saturation blends with each pixel's luma, hue rotates
/// the HSV hue by the factor (a fraction of a turn); each step clamps to `[0, 1]`.
#[derive(Clone, Debug, PartialEq)]
pub struct ColorJitter {
    /// Brightness factor range (`>= 0`).
    pub brightness: Option<(f64, f64)>,
    /// Contrast factor range (`>= 0`).
    pub contrast: Option<(f64, f64)>,
    /// Saturation factor range (`>= 0`).
    pub saturation: Option<(f64, f64)>,
    /// Hue shift range, within `[-0.5, 0.5]`.
    pub hue: Option<(f64, f64)>,
    /// Probability of applying the jitter at all.
    pub p: f64,
}

impl ColorJitter {
    /// The op's name in recipes.
    pub const NAME: &'static str = "color_jitter";

    /// torchvision's scalar form: brightness, contrast and saturation `v` mean factors in
    /// `[max(0, 1 - v), 1 + v]`, hue `v` (at most 0.5) means shifts in `[-v, v]`; 0
    /// disables an adjustment.
    pub fn new(
        brightness: f64,
        contrast: f64,
        saturation: f64,
        hue: f64,
        p: f64,
    ) -> Result<Self, AugmentError> {
        let factor = |param: &'static str, v: f64| -> Result<Option<(f64, f64)>, AugmentError> {
            if !(v.is_finite() && v >= 0.0) {
                return Err(invalid(
                    Self::NAME,
                    param,
                    format!("must be a non-negative number, got {v}"),
                ));
            }
            Ok((v > 0.0).then(|| ((1.0 - v).max(0.0), 1.0 + v)))
        };
        if !(hue.is_finite() && (0.0..=0.5).contains(&hue)) {
            return Err(invalid(
                Self::NAME,
                "hue",
                format!("must be in [0, 0.5], got {hue}"),
            ));
        }
        let op = ColorJitter {
            brightness: factor("brightness", brightness)?,
            contrast: factor("contrast", contrast)?,
            saturation: factor("saturation", saturation)?,
            hue: (hue > 0.0).then_some((-hue, hue)),
            p,
        };
        op.validate()?;
        Ok(op)
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), AugmentError> {
        check_probability(Self::NAME, self.p)?;
        for (param, range) in [
            ("brightness", self.brightness),
            ("contrast", self.contrast),
            ("saturation", self.saturation),
        ] {
            if let Some(r) = range {
                check_range(Self::NAME, param, r)?;
                if r.0 < 0.0 {
                    return Err(invalid(
                        Self::NAME,
                        param,
                        format!("factors must be non-negative, got [{}, {}]", r.0, r.1),
                    ));
                }
            }
        }
        if let Some(r) = self.hue {
            check_range(Self::NAME, "hue", r)?;
            if r.0 < -0.5 || r.1 > 0.5 {
                return Err(invalid(
                    Self::NAME,
                    "hue",
                    format!("shifts must lie in [-0.5, 0.5], got [{}, {}]", r.0, r.1),
                ));
            }
        }
        Ok(())
    }

    /// Draws whether to apply (probability `p`) and, if so, the order and the factors.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Option<JitterParams> {
        if !coin(rng, self.p) {
            return None;
        }
        let mut order = [
            Adjust::Brightness,
            Adjust::Contrast,
            Adjust::Saturation,
            Adjust::Hue,
        ];
        order.shuffle(rng);
        let mut draw = |range: Option<(f64, f64)>, identity: f64| {
            range
                .filter(|&(lo, hi)| !(lo == identity && hi == identity))
                .map(|(lo, hi)| uniform(rng, lo, hi) as f32)
        };
        let brightness = draw(self.brightness, 1.0);
        let contrast = draw(self.contrast, 1.0);
        let saturation = draw(self.saturation, 1.0);
        let hue = draw(self.hue, 0.0);
        Some(JitterParams {
            order,
            brightness,
            contrast,
            saturation,
            hue,
        })
    }

    /// Applies drawn parameters to `img`.
    pub fn apply_params(params: &JitterParams, mut img: Image) -> Image {
        for step in params.order {
            match step {
                Adjust::Brightness => {
                    if let Some(f) = params.brightness {
                        adjust_brightness(&mut img, f);
                    }
                }
                Adjust::Contrast => {
                    if let Some(f) = params.contrast {
                        adjust_contrast(&mut img, f);
                    }
                }
                Adjust::Saturation => {
                    if let Some(f) = params.saturation {
                        adjust_saturation(&mut img, f);
                    }
                }
                Adjust::Hue => {
                    if let Some(f) = params.hue {
                        adjust_hue(&mut img, f);
                    }
                }
            }
        }
        img
    }

    /// Jitters `img` with probability `p`.
    pub fn apply<R: Rng + ?Sized>(&self, img: Image, rng: &mut R) -> Image {
        match self.sample(rng) {
            Some(params) => Self::apply_params(&params, img),
            None => img,
        }
    }
}

/// Multiplies every sample by `factor`, clamped to `[0, 1]`.
pub fn adjust_brightness(img: &mut Image, factor: f32) {
    for v in &mut img.data {
        *v = (*v * factor).clamp(0.0, 1.0);
    }
}

/// Blends every sample with the image's mean luma: `f * x + (1 - f) * mean`, clamped.
pub fn adjust_contrast(img: &mut Image, factor: f32) {
    let n = img.height * img.width;
    if n == 0 {
        return;
    }
    let mean = (luma(img).iter().map(|&v| v as f64).sum::<f64>() / n as f64) as f32;
    let offset = (1.0 - factor) * mean;
    for v in &mut img.data {
        *v = (factor * *v + offset).clamp(0.0, 1.0);
    }
}

/// Blends each RGB pixel with its luma: `f * x + (1 - f) * luma`, clamped; identity on
/// 1-channel images.
pub fn adjust_saturation(img: &mut Image, factor: f32) {
    if img.channels != 3 {
        return;
    }
    let gray = luma(img);
    let keep = 1.0 - factor;
    for c in 0..3 {
        for (v, &y) in img.plane_mut(c).iter_mut().zip(&gray) {
            *v = (factor * *v + keep * y).clamp(0.0, 1.0);
        }
    }
}

/// Rotates the hue of one RGB pixel by `shift6` sixths of a turn (`0 <= shift6 < 6`).
///
/// The same mapping as [`rgb_to_hsv`] followed by [`hsv_to_rgb`], written without
/// branches (selects, min and max only) so the pixel loop vectorises: channel `n`
/// (5 for red, 3 for green, 1 for blue) is `v - chroma * clamp(min(k, 4 - k), 0, 1)`
/// with `k = (n + hue) mod 6`, hue in sixths.
#[inline(always)]
fn shift_hue_pixel(r: f32, g: f32, b: f32, shift6: f32) -> (f32, f32, f32) {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let chroma = max - min;
    let inv = if chroma > 0.0 { 1.0 / chroma } else { 0.0 };
    let h = if max == r {
        let h = (g - b) * inv;
        if h < 0.0 { h + 6.0 } else { h }
    } else if max == g {
        2.0 + (b - r) * inv
    } else {
        4.0 + (r - g) * inv
    };
    let h = h + shift6;
    let h = if h >= 6.0 { h - 6.0 } else { h };
    let channel = |n: f32| {
        let k = n + h;
        let k = if k >= 6.0 { k - 6.0 } else { k };
        max - chroma * k.min(4.0 - k).clamp(0.0, 1.0)
    };
    (channel(5.0), channel(3.0), channel(1.0))
}

/// Rotates the hue of every RGB pixel by `shift` turns (HSV); identity on 1-channel images.
pub fn adjust_hue(img: &mut Image, shift: f32) {
    if img.channels != 3 {
        return;
    }
    let shift6 = (shift.rem_euclid(1.0) * 6.0).min(6.0 - f32::EPSILON * 6.0);
    let n = img.height * img.width;
    let (r, rest) = img.data.split_at_mut(n);
    let (g, b) = rest.split_at_mut(n);
    for ((r, g), b) in r.iter_mut().zip(g.iter_mut()).zip(b.iter_mut()) {
        let (nr, ng, nb) = shift_hue_pixel(*r, *g, *b, shift6);
        *r = nr;
        *g = ng;
        *b = nb;
    }
}

/// Converts an RGB image to luma with probability `p`, keeping 3 (equal) channels
/// (torchvision's `RandomGrayscale`); identity on 1-channel images.
#[derive(Clone, Debug, PartialEq)]
pub struct RandomGrayscale {
    /// Probability of converting.
    pub p: f64,
}

impl RandomGrayscale {
    /// The op's name in recipes.
    pub const NAME: &'static str = "grayscale";

    /// A validated random grayscale.
    pub fn new(p: f64) -> Result<Self, AugmentError> {
        let op = RandomGrayscale { p };
        op.validate()?;
        Ok(op)
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), AugmentError> {
        check_probability(Self::NAME, self.p)
    }

    /// Converts `img` with probability `p`.
    pub fn apply<R: Rng + ?Sized>(&self, mut img: Image, rng: &mut R) -> Image {
        if coin(rng, self.p) {
            to_gray_in_place(&mut img);
        }
        img
    }
}

/// Inverts samples at or above `threshold` (`x -> 1 - x`) with probability `p`
/// (torchvision's `RandomSolarize`).
#[derive(Clone, Debug, PartialEq)]
pub struct Solarize {
    /// Samples `>= threshold` are inverted; in `[0, 1]`.
    pub threshold: f32,
    /// Probability of solarizing.
    pub p: f64,
}

impl Solarize {
    /// The op's name in recipes.
    pub const NAME: &'static str = "solarize";

    /// A validated solarize.
    pub fn new(threshold: f32, p: f64) -> Result<Self, AugmentError> {
        let op = Solarize { threshold, p };
        op.validate()?;
        Ok(op)
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), AugmentError> {
        check_probability(Self::NAME, self.p)?;
        if !(0.0..=1.0).contains(&self.threshold) {
            return Err(invalid(
                Self::NAME,
                "threshold",
                format!("must be in [0, 1], got {}", self.threshold),
            ));
        }
        Ok(())
    }

    /// Inverts the samples at or above the threshold, unconditionally.
    pub fn solarize(&self, mut img: Image) -> Image {
        for v in &mut img.data {
            if *v >= self.threshold {
                *v = 1.0 - *v;
            }
        }
        img
    }

    /// Solarizes `img` with probability `p`.
    pub fn apply<R: Rng + ?Sized>(&self, img: Image, rng: &mut R) -> Image {
        if coin(rng, self.p) {
            self.solarize(img)
        } else {
            img
        }
    }
}

/// Standardises each channel: `(x - mean[c]) / std[c]` (torchvision's `Normalize`).
#[derive(Clone, Debug, PartialEq)]
pub struct Normalize {
    /// Per-channel mean.
    pub mean: Vec<f32>,
    /// Per-channel standard deviation (positive).
    pub std: Vec<f32>,
}

impl Normalize {
    /// The op's name (it lives in the recipe's `data` section).
    pub const NAME: &'static str = "normalize";

    /// A validated normalisation.
    pub fn new(mean: Vec<f32>, std: Vec<f32>) -> Result<Self, AugmentError> {
        let op = Normalize { mean, std };
        op.validate()?;
        Ok(op)
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), AugmentError> {
        if self.mean.is_empty() || self.mean.len() != self.std.len() {
            return Err(invalid(
                Self::NAME,
                "std",
                format!(
                    "needs one mean and one std per channel, got {} mean(s) and {} std(s)",
                    self.mean.len(),
                    self.std.len()
                ),
            ));
        }
        if let Some(m) = self.mean.iter().find(|m| !m.is_finite()) {
            return Err(invalid(
                Self::NAME,
                "mean",
                format!("must be finite, got {m}"),
            ));
        }
        if let Some(s) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(invalid(
                Self::NAME,
                "std",
                format!("must be positive and finite, got {s}"),
            ));
        }
        Ok(())
    }

    /// The number of channels this normalisation is for.
    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    fn check_channels(&self, img: &Image) -> Result<(), AugmentError> {
        if img.channels == self.mean.len() {
            Ok(())
        } else {
            Err(AugmentError::Channels {
                expected: self.mean.len(),
                found: img.channels,
            })
        }
    }

    /// Normalises `img`; its channel count must match.
    pub fn apply(&self, mut img: Image) -> Result<Image, AugmentError> {
        self.check_channels(&img)?;
        for c in 0..img.channels {
            let (m, inv) = (self.mean[c], 1.0 / self.std[c]);
            for v in img.plane_mut(c) {
                *v = (*v - m) * inv;
            }
        }
        Ok(img)
    }

    /// Undoes [`Normalize::apply`] (for display).
    pub fn invert(&self, mut img: Image) -> Result<Image, AugmentError> {
        self.check_channels(&img)?;
        for c in 0..img.channels {
            let (m, s) = (self.mean[c], self.std[c]);
            for v in img.plane_mut(c) {
                *v = *v * s + m;
            }
        }
        Ok(img)
    }
}

/// Converts `img` to `channels` (1 or 3): RGB to gray by luma, gray to RGB by replication.
pub fn convert_channels(img: &Image, channels: usize) -> Result<Image, AugmentError> {
    match (img.channels, channels) {
        (a, b) if a == b && (a == 1 || a == 3) => Ok(img.clone()),
        (3, 1) => Ok(Image {
            channels: 1,
            height: img.height,
            width: img.width,
            data: luma(img),
        }),
        (1, 3) => {
            let mut data = Vec::with_capacity(3 * img.data.len());
            for _ in 0..3 {
                data.extend_from_slice(&img.data);
            }
            Ok(Image {
                channels: 3,
                height: img.height,
                width: img.width,
                data,
            })
        }
        (found, expected) => Err(AugmentError::Channels { expected, found }),
    }
}
