//! The chain: turns one image into its views, as a recipe's `augment` section says.

use std::borrow::Cow;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::color::convert_channels;
use super::geometric::resize;
use super::{
    AugmentError, ColorJitter, GaussianBlur, HorizontalFlip, Normalize, RandomGrayscale,
    RandomResizedCrop, Solarize,
};
use crate::data::{Image, ViewMaker};

/// One op of a pipeline.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// Random crop resized to a fixed size.
    RandomResizedCrop(RandomResizedCrop),
    /// Random left-right mirror.
    HorizontalFlip(HorizontalFlip),
    /// Random brightness/contrast/saturation/hue.
    ColorJitter(ColorJitter),
    /// Random conversion to gray.
    Grayscale(RandomGrayscale),
    /// Random Gaussian blur.
    GaussianBlur(GaussianBlur),
    /// Random solarization.
    Solarize(Solarize),
}

impl Op {
    /// The op's name in recipes.
    pub fn name(&self) -> &'static str {
        match self {
            Op::RandomResizedCrop(_) => RandomResizedCrop::NAME,
            Op::HorizontalFlip(_) => HorizontalFlip::NAME,
            Op::ColorJitter(_) => ColorJitter::NAME,
            Op::Grayscale(_) => RandomGrayscale::NAME,
            Op::GaussianBlur(_) => GaussianBlur::NAME,
            Op::Solarize(_) => Solarize::NAME,
        }
    }

    /// Checks the op's parameters.
    pub fn validate(&self) -> Result<(), AugmentError> {
        match self {
            Op::RandomResizedCrop(op) => op.validate(),
            Op::HorizontalFlip(op) => op.validate(),
            Op::ColorJitter(op) => op.validate(),
            Op::Grayscale(op) => op.validate(),
            Op::GaussianBlur(op) => op.validate(),
            Op::Solarize(op) => op.validate(),
        }
    }

    /// Applies the op.
    pub fn apply<R: Rng + ?Sized>(&self, img: Image, rng: &mut R) -> Image {
        match self {
            Op::RandomResizedCrop(op) => op.apply(img, rng),
            Op::HorizontalFlip(op) => op.apply(img, rng),
            Op::ColorJitter(op) => op.apply(img, rng),
            Op::Grayscale(op) => op.apply(img, rng),
            Op::GaussianBlur(op) => op.apply(img, rng),
            Op::Solarize(op) => op.apply(img, rng),
        }
    }
}

/// A group of multi-crop views: `count` crops of `size` with area fraction in `scale`.
#[derive(Clone, Debug, PartialEq)]
pub struct CropGroup {
    /// Number of crops in the group.
    pub count: usize,
    /// Output `(height, width)` of each crop.
    pub size: (usize, usize),
    /// Area fraction range of each crop.
    pub scale: (f64, f64),
    /// Aspect ratio range of each crop (torchvision's default is `(3/4, 4/3)`).
    pub ratio: (f64, f64),
}

/// How the views are made.
#[derive(Clone, Debug, PartialEq)]
pub enum ViewPlan {
    /// `views` views, each from its own run of the same pipeline (SimCLR, MoCo).
    Shared {
        /// Number of views (at least 1).
        views: usize,
        /// The ops, in order.
        pipeline: Vec<Op>,
    },
    /// One pipeline per view (BYOL-style asymmetric views); view `v` uses pipeline `v`.
    PerView(Vec<Vec<Op>>),
    /// SwAV multi-crop: the global crops, then the local crops, each followed by
    /// `pipeline`, which must not contain a crop of its own.
    MultiCrop {
        /// Large crops (SwAV: 2 of 224 with scale `[0.14, 1]`).
        global: CropGroup,
        /// Small crops (SwAV: 6 of 96 with scale `[0.05, 0.14]`); `count` may be 0.
        local: CropGroup,
        /// The ops after the crop.
        pipeline: Vec<Op>,
    },
}

/// Everything a [`Chain`] is built from.
#[derive(Clone, Debug, PartialEq)]
pub struct ChainConfig {
    /// How the views are made.
    pub plan: ViewPlan,
    /// Applied to every view last (the recipe's `data` mean/std), if any.
    pub normalize: Option<Normalize>,
}

/// The view maker a recipe describes: per-view pipelines, then normalisation.
///
/// Images whose channel count differs from the declared input are converted first
/// (RGB to luma, or gray replicated to RGB). A view whose pipeline has no crop keeps the
/// input size, so for it an image of another size is first resized to the declared
/// size; views with a crop accept any image size. Views are drawn in order from the one
/// RNG, so the same RNG state gives the same views.
#[derive(Clone, Debug)]
pub struct Chain {
    input: (usize, usize, usize),
    pipelines: Vec<Vec<Op>>,
    has_crop: Vec<bool>,
    shapes: Vec<(usize, usize, usize)>,
    normalize: Option<Normalize>,
}

impl Chain {
    /// Builds and checks a chain for images of `(channels, height, width)`.
    pub fn new(config: ChainConfig, input: (usize, usize, usize)) -> Result<Self, AugmentError> {
        let (c, h, w) = input;
        if c != 1 && c != 3 {
            return Err(AugmentError::Channels {
                expected: 3,
                found: c,
            });
        }
        if h == 0 || w == 0 {
            return Err(AugmentError::InvalidChain(format!(
                "input images must have a positive size, got {h}x{w}"
            )));
        }
        let pipelines = match config.plan {
            ViewPlan::Shared { views, pipeline } => {
                if views == 0 {
                    return Err(AugmentError::InvalidChain(
                        "`views` must be at least 1".into(),
                    ));
                }
                vec![pipeline; views]
            }
            ViewPlan::PerView(pipelines) => {
                if pipelines.is_empty() {
                    return Err(AugmentError::InvalidChain(
                        "`per_view` must list at least one pipeline".into(),
                    ));
                }
                pipelines
            }
            ViewPlan::MultiCrop {
                global,
                local,
                pipeline,
            } => {
                if global.count == 0 {
                    return Err(AugmentError::InvalidChain(
                        "multi_crop needs at least one global crop".into(),
                    ));
                }
                if pipeline
                    .iter()
                    .any(|op| matches!(op, Op::RandomResizedCrop(_)))
                {
                    return Err(AugmentError::InvalidChain(
                        "with multi_crop the crops come from `multi_crop`; remove \
                         `random_resized_crop` from the pipeline"
                            .into(),
                    ));
                }
                let mut out = Vec::with_capacity(global.count + local.count);
                for group in [&global, &local] {
                    let crop = RandomResizedCrop::new(group.size, group.scale, group.ratio)?;
                    let mut p = Vec::with_capacity(pipeline.len() + 1);
                    p.push(Op::RandomResizedCrop(crop));
                    p.extend(pipeline.iter().cloned());
                    out.extend(std::iter::repeat_n(p, group.count));
                }
                out
            }
        };
        for op in pipelines.iter().flatten() {
            op.validate()?;
        }
        if let Some(n) = &config.normalize {
            n.validate()?;
            if n.channels() != c {
                return Err(AugmentError::InvalidChain(format!(
                    "normalisation has {} mean/std value(s) but images have {c} channel(s)",
                    n.channels()
                )));
            }
        }
        let shapes = pipelines
            .iter()
            .map(|p| {
                // The last crop decides the size; ops never change the channel count.
                let size = p
                    .iter()
                    .rev()
                    .find_map(|op| match op {
                        Op::RandomResizedCrop(crop) => Some(crop.size),
                        _ => None,
                    })
                    .unwrap_or((h, w));
                (c, size.0, size.1)
            })
            .collect();
        let has_crop = pipelines
            .iter()
            .map(|p| p.iter().any(|op| matches!(op, Op::RandomResizedCrop(_))))
            .collect();
        Ok(Chain {
            input,
            pipelines,
            has_crop,
            shapes,
            normalize: config.normalize,
        })
    }

    /// The pipeline of each view (multi-crop pipelines start with their crop).
    pub fn pipelines(&self) -> &[Vec<Op>] {
        &self.pipelines
    }

    /// The final normalisation, if any (the preview inverts it for display).
    pub fn normalize(&self) -> Option<&Normalize> {
        self.normalize.as_ref()
    }

    /// The views of `image`, without the final normalisation (values in `[0, 1]`).
    ///
    /// Fails only if the image has a channel count other than 1 or 3.
    pub fn make_raw_views<R: Rng + ?Sized>(
        &self,
        image: &Image,
        rng: &mut R,
    ) -> Result<Vec<Image>, AugmentError> {
        let (c, h, w) = self.input;
        let base: Cow<Image> = if image.channels == c {
            Cow::Borrowed(image)
        } else {
            Cow::Owned(convert_channels(image, c)?)
        };
        let mut resized: Option<Image> = None;
        let mut views = Vec::with_capacity(self.pipelines.len());
        for (pipeline, &has_crop) in self.pipelines.iter().zip(&self.has_crop) {
            let start: &Image = if !has_crop && (base.height, base.width) != (h, w) {
                resized.get_or_insert_with(|| resize(&base, (h, w), true))
            } else {
                &base
            };
            let mut current: Option<Image> = None;
            for op in pipeline {
                current = Some(match (current.take(), op) {
                    // The first crop reads the shared source directly: no copy of it.
                    (None, Op::RandomResizedCrop(crop)) => crop.apply_ref(start, rng),
                    (None, op) => op.apply(start.clone(), rng),
                    (Some(img), op) => op.apply(img, rng),
                });
            }
            views.push(current.unwrap_or_else(|| start.clone()));
        }
        Ok(views)
    }

    /// The views of `image`, normalised; errors as [`Chain::make_raw_views`].
    pub fn try_make_views<R: Rng + ?Sized>(
        &self,
        image: &Image,
        rng: &mut R,
    ) -> Result<Vec<Image>, AugmentError> {
        let views = self.make_raw_views(image, rng)?;
        match &self.normalize {
            Some(n) => views.into_iter().map(|v| n.apply(v)).collect(),
            None => Ok(views),
        }
    }
}

impl ViewMaker for Chain {
    fn view_shapes(&self) -> Vec<(usize, usize, usize)> {
        self.shapes.clone()
    }

    /// As [`Chain::try_make_views`]; an image with an unsupported channel count (which
    /// the loaders never produce) yields all-zero views of the declared shapes, since
    /// this contract cannot return an error.
    fn make_views(&self, image: &Image, rng: &mut ChaCha8Rng) -> Vec<Image> {
        self.try_make_views(image, rng).unwrap_or_else(|_| {
            self.shapes
                .iter()
                .map(|&(c, h, w)| Image::filled(c, h, w, 0.0))
                .collect()
        })
    }
}
