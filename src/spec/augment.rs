//! The `augment` section: how the views of each image are made.
//!
//! Op names and defaults follow torchvision and solo-learn (`RandomResizedCrop`
//! scale `[0.08, 1.0]`, colour jitter 0.4/0.4/0.4/0.1 at p = 0.8 for CIFAR-sized
//! SimCLR, grayscale p = 0.2, blur sigma `[0.1, 2.0]`).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How views are made: `views` views from one shared `pipeline`, or one pipeline per
/// view (`per_view`, asymmetric as in BYOL), optionally with SwAV multi-crop.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Augment {
    /// Number of views per image (multi-crop: the number of global crops is used instead).
    #[serde(default = "default_views")]
    #[schemars(range(min = 1, max = 64))]
    pub views: usize,
    /// The ops applied, in order, to make every view.
    #[serde(default = "default_pipeline")]
    pub pipeline: Vec<Op>,
    /// One pipeline per view (asymmetric augmentation); when given it has exactly
    /// `views` entries and `pipeline` is not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_view: Option<Vec<Vec<Op>>>,
    /// SwAV multi-crop: global and local crops replace the pipeline's
    /// `random_resized_crop`; the other ops apply to every crop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_crop: Option<MultiCrop>,
}

impl Default for Augment {
    fn default() -> Self {
        Augment {
            views: default_views(),
            pipeline: default_pipeline(),
            per_view: None,
            multi_crop: None,
        }
    }
}

fn default_views() -> usize {
    2
}

fn default_pipeline() -> Vec<Op> {
    vec![
        Op::RandomResizedCrop(RandomResizedCrop {
            size: None,
            scale: default_scale(),
            ratio: default_ratio(),
        }),
        Op::HorizontalFlip(HorizontalFlip { p: 0.5 }),
        Op::ColorJitter(ColorJitter::default()),
        Op::Grayscale(Grayscale { p: 0.2 }),
    ]
}

/// One augmentation op, written as a one-key mapping: `- horizontal_flip: {p: 0.5}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Crop a random area and aspect ratio, then resize (bilinear) to `size`.
    RandomResizedCrop(RandomResizedCrop),
    /// Mirror left-right with probability `p`.
    HorizontalFlip(HorizontalFlip),
    /// Random brightness, contrast, saturation and hue, in random order, with probability `p`.
    ColorJitter(ColorJitter),
    /// Convert to grayscale (keeping the channel count) with probability `p`.
    Grayscale(Grayscale),
    /// Gaussian blur with a random sigma, with probability `p`.
    GaussianBlur(GaussianBlur),
    /// Invert pixels above `threshold`, with probability `p`.
    Solarize(Solarize),
}

impl Op {
    /// The op's key as written in a recipe.
    pub fn name(&self) -> &'static str {
        match self {
            Op::RandomResizedCrop(_) => "random_resized_crop",
            Op::HorizontalFlip(_) => "horizontal_flip",
            Op::ColorJitter(_) => "color_jitter",
            Op::Grayscale(_) => "grayscale",
            Op::GaussianBlur(_) => "gaussian_blur",
            Op::Solarize(_) => "solarize",
        }
    }
}

/// torchvision's `RandomResizedCrop`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RandomResizedCrop {
    /// Output side in pixels; defaults to `data.image_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub size: Option<usize>,
    /// Range of the crop's area as a fraction of the image, `[min, max]`.
    #[serde(default = "default_scale")]
    #[schemars(schema_with = "super::bounds::fraction_pair")]
    pub scale: [f64; 2],
    /// Range of the crop's aspect ratio (width / height), `[min, max]`, sampled log-uniformly.
    #[serde(default = "default_ratio")]
    #[schemars(schema_with = "super::bounds::positive_pair")]
    pub ratio: [f64; 2],
}

pub(crate) fn default_scale() -> [f64; 2] {
    [0.08, 1.0]
}
pub(crate) fn default_ratio() -> [f64; 2] {
    [3.0 / 4.0, 4.0 / 3.0]
}

/// torchvision's `RandomHorizontalFlip`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HorizontalFlip {
    /// Probability of flipping.
    #[serde(default = "half")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub p: f64,
}

/// torchvision's `ColorJitter` inside a `RandomApply`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ColorJitter {
    /// Brightness factor drawn from `[max(0, 1 - b), 1 + b]`.
    #[serde(default = "jitter_default")]
    #[schemars(range(min = 0.0))]
    pub brightness: f64,
    /// Contrast factor drawn from `[max(0, 1 - c), 1 + c]`.
    #[serde(default = "jitter_default")]
    #[schemars(range(min = 0.0))]
    pub contrast: f64,
    /// Saturation factor drawn from `[max(0, 1 - s), 1 + s]` (no effect on grayscale).
    #[serde(default = "jitter_default")]
    #[schemars(range(min = 0.0))]
    pub saturation: f64,
    /// Hue shift drawn from `[-h, h]`, in turns; at most 0.5 (no effect on grayscale).
    #[serde(default = "hue_default")]
    #[schemars(range(min = 0.0, max = 0.5))]
    pub hue: f64,
    /// Probability of applying the jitter at all.
    #[serde(default = "jitter_p")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub p: f64,
}

impl Default for ColorJitter {
    fn default() -> Self {
        ColorJitter {
            brightness: 0.4,
            contrast: 0.4,
            saturation: 0.4,
            hue: 0.1,
            p: 0.8,
        }
    }
}

fn jitter_default() -> f64 {
    0.4
}
fn hue_default() -> f64 {
    0.1
}
fn jitter_p() -> f64 {
    0.8
}
fn half() -> f64 {
    0.5
}

/// torchvision's `RandomGrayscale`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Grayscale {
    /// Probability of converting.
    #[serde(default = "gray_p")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub p: f64,
}

fn gray_p() -> f64 {
    0.2
}

/// torchvision's `GaussianBlur` inside a `RandomApply`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GaussianBlur {
    /// Range the standard deviation is drawn from uniformly, `[min, max]`, in pixels.
    #[serde(default = "sigma_default")]
    #[schemars(schema_with = "super::bounds::positive_pair")]
    pub sigma: [f64; 2],
    /// Kernel side in pixels (odd). SimCLR uses 10% of the image side.
    #[serde(default = "kernel_default")]
    #[schemars(range(min = 1))]
    pub kernel_size: usize,
    /// Probability of blurring.
    #[serde(default = "half")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub p: f64,
}

fn sigma_default() -> [f64; 2] {
    [0.1, 2.0]
}
fn kernel_default() -> usize {
    23
}

/// torchvision's `RandomSolarize`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Solarize {
    /// Pixels at or above this value (in [0, 1]) are inverted.
    #[serde(default = "half")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub threshold: f64,
    /// Probability of solarizing.
    #[serde(default = "solarize_p")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub p: f64,
}

fn solarize_p() -> f64 {
    0.2
}

/// SwAV multi-crop: a few large global crops and several small local crops.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MultiCrop {
    /// The global crops (the ones whose codes are computed).
    pub global: CropGroup,
    /// The local crops (only predicted from).
    pub local: CropGroup,
}

/// One group of multi-crop crops.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CropGroup {
    /// How many crops of this group per image.
    #[schemars(range(min = 0, max = 64))]
    pub count: usize,
    /// Output side in pixels.
    #[schemars(range(min = 1))]
    pub size: usize,
    /// Range of the crop's area as a fraction of the image, `[min, max]`.
    #[schemars(schema_with = "super::bounds::fraction_pair")]
    pub scale: [f64; 2],
    /// Range of aspect ratios, `[min, max]`.
    #[serde(default = "default_ratio")]
    #[schemars(schema_with = "super::bounds::positive_pair")]
    pub ratio: [f64; 2],
}

impl Augment {
    /// The pipelines actually used, one per view (multi-crop: one per crop).
    pub fn view_pipelines(&self) -> Vec<&[Op]> {
        match (&self.per_view, &self.multi_crop) {
            (Some(pv), _) => pv.iter().map(Vec::as_slice).collect(),
            (None, Some(mc)) => vec![self.pipeline.as_slice(); mc.global.count + mc.local.count],
            (None, None) => vec![self.pipeline.as_slice(); self.views],
        }
    }

    /// The side of every view, in order, for images of side `image_size`: the crop size
    /// of its pipeline's `random_resized_crop` (or the multi-crop group's), else the image's.
    pub fn view_sizes(&self, image_size: usize) -> Vec<usize> {
        if let Some(mc) = &self.multi_crop {
            return std::iter::repeat_n(mc.global.size, mc.global.count)
                .chain(std::iter::repeat_n(mc.local.size, mc.local.count))
                .collect();
        }
        self.view_pipelines()
            .iter()
            .map(|ops| {
                ops.iter()
                    .find_map(|o| match o {
                        Op::RandomResizedCrop(c) => Some(c.size.unwrap_or(image_size)),
                        _ => None,
                    })
                    .unwrap_or(image_size)
            })
            .collect()
    }

    /// Number of views each image yields.
    pub fn total_views(&self) -> usize {
        match &self.multi_crop {
            Some(mc) => mc.global.count + mc.local.count,
            None => self.per_view.as_ref().map_or(self.views, Vec::len),
        }
    }
}
