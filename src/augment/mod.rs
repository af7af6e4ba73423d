//! Augmentations: the ops that make the views of an image, and the chain that
//! interprets a recipe's `augment` section.
//!
//! # Layout
//!
//! - [`geometric`]: [`RandomResizedCrop`] (with the separable, antialiased bilinear
//!   resampler it is built on) and [`HorizontalFlip`].
//! - [`color`]: [`ColorJitter`], [`RandomGrayscale`], [`Solarize`], [`Normalize`] and the
//!   RGB/HSV conversions behind the hue shift.
//! - [`blur`]: [`GaussianBlur`] (separable, reflect padding).
//! - [`chain`]: [`Chain`], the [`ViewMaker`] that runs one shared pipeline N times, one
//!   pipeline per view (BYOL-style asymmetric views) or SwAV's multi-crop, followed by a
//!   final normalisation.
//! - [`preview`]: a PNG grid of original images and their views (`recipe preview`).
//!
//! The recipe's `augment` section becomes a [`Chain`] in `build::augment`; this module
//! knows no recipe types.
//!
//! # Semantics
//!
//! Every op follows torchvision's `transforms` (v2-era defaults) unless its doc comment
//! names a deliberate difference. Each op is a plain struct with public parameters, a
//! validating `new` and an `apply(&self, img, rng)`. Random decisions are drawn from the
//! RNG the caller passes, in a fixed order, so a view depends only on the image and the
//! RNG state.
//!
//! # Invariants
//!
//! - Images are planar CHW `f32` with 1 or 3 channels. Every op except [`Normalize`]
//!   maps samples in `[0, 1]` to samples in `[0, 1]`; [`Normalize`] runs last.
//! - No op changes the channel count: grayscale conversion keeps 3 channels (all equal).
//!   On 1-channel input brightness and contrast apply, while saturation, hue and random
//!   grayscale are identities (a gray image has no chroma to change).
//! - Parameters are checked when an op or chain is built ([`AugmentError`]); applying a
//!   validated op never panics and never fails, whatever the input image's size.
//! - Given the same RNG state and image, the views are bit-identical (no thread-local
//!   randomness, no global state), which is what lets the loader promise identical
//!   batches for any thread count.
//! - Each [`ViewMaker::view_shapes`] entry is fixed at construction: view `v` of every
//!   image has the same shape, so a batch stacks view `v` across images.

//!
//! # Speed
//!
//! Ops work in place on the planar buffer where they can; resampling uses per-call
//! precomputed separable weights, the blur is two passes of row-wise multiply-adds
//! (subnormal taps dropped), and the hue shift is branchless so it vectorises. No op
//! allocates per pixel. `cargo bench --bench augment` measures the SimCLR chain.

pub mod blur;
pub mod chain;
pub mod color;
mod error;
pub mod geometric;
pub mod preview;

/// The loader's view-maker contract, which [`Chain`] implements; re-exported so code
/// holding a `Chain` can call its methods with one import.
pub use crate::data::ViewMaker;
pub use blur::GaussianBlur;
pub use chain::{Chain, ChainConfig, CropGroup, Op, ViewPlan};
pub use color::{ColorJitter, JitterParams, Normalize, RandomGrayscale, Solarize};
pub use error::AugmentError;
pub use geometric::{CropParams, HorizontalFlip, RandomResizedCrop, Resampler};
pub use preview::{Scale, preview_grid, preview_grid_scaled, write_preview};

/// A uniform sample in `[lo, hi)` (or exactly `lo` when the range is empty), drawn as one
/// `f64` so that degenerate ranges such as `[1, 1]` never panic.
pub(crate) fn uniform<R: rand::Rng + ?Sized>(rng: &mut R, lo: f64, hi: f64) -> f64 {
    lo + (hi - lo) * rng.r#gen::<f64>()
}

/// One Bernoulli draw with probability `p`; always consumes one sample so the RNG stream
/// does not depend on `p` (p = 0 and p = 1 still advance it).
pub(crate) fn coin<R: rand::Rng + ?Sized>(rng: &mut R, p: f64) -> bool {
    rng.r#gen::<f64>() < p
}
