//! The view-maker contract: what the loader asks of whatever makes the views of an
//! image. The loader owns it, so `data` depends on no augmentation code; the augment
//! chain implements it, and tests plug in their own.

use rand_chacha::ChaCha8Rng;

use super::Image;

/// Makes the views of one image: the contract between the loader and the augment chain.
///
/// Implementations must be deterministic given the RNG state, so the loader can seed one
/// RNG per (seed, epoch, dataset index) and get identical batches for any thread count.
pub trait ViewMaker: Send + Sync {
    /// The `(channels, height, width)` of each view, in order; views of one group
    /// (e.g. all global crops) share a size, so a batch stacks view `v` of every image.
    fn view_shapes(&self) -> Vec<(usize, usize, usize)>;

    /// The views of `image`, in the order of [`ViewMaker::view_shapes`].
    fn make_views(&self, image: &Image, rng: &mut ChaCha8Rng) -> Vec<Image>;
}
