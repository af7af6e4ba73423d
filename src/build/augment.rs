//! The recipe's `augment` section (and the normalisation in `data`) as an augment
//! [`Chain`].
//!
//! The spec layer has already checked the recipe; this adapter re-validates every value
//! through the ops' own constructors, so a recipe built by hand (not loaded) cannot slip
//! an invalid parameter through, and names the recipe path of any problem.

use crate::augment::{
    AugmentError, Chain, ChainConfig, ColorJitter, CropGroup, GaussianBlur, HorizontalFlip,
    Normalize, Op, RandomGrayscale, RandomResizedCrop, Solarize, ViewPlan,
};
use crate::spec::augment as spec;
use crate::spec::data::Data;

/// Prefixes an error with the recipe path it comes from.
fn at(path: String) -> impl FnOnce(AugmentError) -> AugmentError {
    move |source| AugmentError::At {
        path,
        source: Box::new(source),
    }
}

fn pair(v: [f64; 2]) -> (f64, f64) {
    (v[0], v[1])
}

/// One spec op as an augment op; a crop without `size` takes `image_size`.
fn op(o: &spec::Op, image_size: usize, path: String) -> Result<Op, AugmentError> {
    let built = match o {
        spec::Op::RandomResizedCrop(c) => {
            let side = c.size.unwrap_or(image_size);
            RandomResizedCrop::new((side, side), pair(c.scale), pair(c.ratio))
                .map(Op::RandomResizedCrop)
        }
        spec::Op::HorizontalFlip(f) => HorizontalFlip::new(f.p).map(Op::HorizontalFlip),
        spec::Op::ColorJitter(j) => {
            ColorJitter::new(j.brightness, j.contrast, j.saturation, j.hue, j.p)
                .map(Op::ColorJitter)
        }
        spec::Op::Grayscale(g) => RandomGrayscale::new(g.p).map(Op::Grayscale),
        spec::Op::GaussianBlur(b) => {
            GaussianBlur::new(pair(b.sigma), b.kernel_size, b.p).map(Op::GaussianBlur)
        }
        spec::Op::Solarize(s) => Solarize::new(s.threshold as f32, s.p).map(Op::Solarize),
    };
    built.map_err(at(path))
}

fn pipeline(ops: &[spec::Op], image_size: usize, path: &str) -> Result<Vec<Op>, AugmentError> {
    ops.iter()
        .enumerate()
        .map(|(i, o)| op(o, image_size, format!("{path}.{i}")))
        .collect()
}

fn group(g: &spec::CropGroup) -> CropGroup {
    CropGroup {
        count: g.count,
        size: (g.size, g.size),
        scale: pair(g.scale),
        ratio: pair(g.ratio),
    }
}

/// Builds the chain a recipe describes, for the images `data` yields
/// (`data.channels` x `data.image_size`²), normalised by `data.normalize`.
///
/// - `multi_crop`: the global then the local crops, each followed by `pipeline`
///   without its `random_resized_crop` (the spec warns that it is replaced);
///   `views` is not used. Combining it with `per_view` is an error.
/// - `per_view`: one pipeline per view; it must have `views` entries.
/// - otherwise: `views` runs of `pipeline`.
pub fn chain(augment: &spec::Augment, data: &Data) -> Result<Chain, AugmentError> {
    let size = data.image_size;
    let plan = match (&augment.multi_crop, &augment.per_view) {
        (Some(_), Some(_)) => {
            return Err(AugmentError::At {
                path: "augment.multi_crop".into(),
                source: Box::new(AugmentError::InvalidChain(
                    "`multi_crop` and `per_view` cannot be combined".into(),
                )),
            });
        }
        (Some(mc), None) => {
            let rest = pipeline(&augment.pipeline, size, "augment.pipeline")?
                .into_iter()
                .filter(|o| !matches!(o, Op::RandomResizedCrop(_)))
                .collect();
            ViewPlan::MultiCrop {
                global: group(&mc.global),
                local: group(&mc.local),
                pipeline: rest,
            }
        }
        (None, Some(pv)) => {
            if pv.len() != augment.views {
                return Err(AugmentError::At {
                    path: "augment.per_view".into(),
                    source: Box::new(AugmentError::InvalidChain(format!(
                        "`per_view` has {} pipeline(s) but `views` is {}",
                        pv.len(),
                        augment.views
                    ))),
                });
            }
            ViewPlan::PerView(
                pv.iter()
                    .enumerate()
                    .map(|(v, ops)| pipeline(ops, size, &format!("augment.per_view.{v}")))
                    .collect::<Result<_, _>>()?,
            )
        }
        (None, None) => ViewPlan::Shared {
            views: augment.views,
            pipeline: pipeline(&augment.pipeline, size, "augment.pipeline")?,
        },
    };
    let normalize = data
        .normalize
        .as_ref()
        .map(|n| {
            Normalize::new(
                n.mean.iter().map(|&v| v as f32).collect(),
                n.std.iter().map(|&v| v as f32).collect(),
            )
            .map_err(at("data.normalize".into()))
        })
        .transpose()?;
    let chain_path = if augment.multi_crop.is_some() {
        "augment.multi_crop"
    } else {
        "augment"
    };
    Chain::new(ChainConfig { plan, normalize }, (data.channels, size, size))
        .map_err(at(chain_path.into()))
}
