//! A PNG grid of images and their views, so a user can see what a chain does.
//!
//! Small datasets have tiny images (8×8 digits, 28×28 Fashion-MNIST), which are
//! unreadable at native size, so the written grid enlarges every cell by an integer
//! factor with nearest-neighbour sampling ([`Scale`]): pixels stay visible as blocks,
//! as in the report's other grids (`crate::report::grid`), and the views are not
//! smoothed into something the model never saw.

use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::color::convert_channels;
use super::geometric::resize;
use super::{AugmentError, Chain};
use crate::data::{Image, ViewMaker};

/// Width in pixels of the white lines between and around the cells.
pub const SEPARATOR: usize = 2;

/// The automatic [`Scale`] enlarges cells until their longer side is at least this many
/// pixels (an 8×8 view becomes 96×96, a 28×28 one 112×112).
pub const LEGIBLE_CELL: usize = 96;

/// The automatic [`Scale`] stays at or below the factor that keeps the grid's longer
/// side within this many pixels (never below 1×), so many rows or views of large crops
/// do not make a picture no viewer opens.
pub const MAX_AUTO_SIDE: usize = 2048;

/// The most pixels a preview grid may have, whatever the scale (about 800 MB while
/// it is drawn).
pub const MAX_PIXELS: usize = 64_000_000;

/// How much [`write_preview`] enlarges the grid's cells.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Scale {
    /// The smallest integer factor that makes a cell's longer side at least
    /// [`LEGIBLE_CELL`] pixels, lowered (to no less than 1) while the grid's longer side
    /// would exceed [`MAX_AUTO_SIDE`]; see [`auto_scale`].
    #[default]
    Auto,
    /// Exactly this factor (≥ 1; 1 is native size).
    Times(usize),
}

/// The factor [`Scale::Auto`] picks for a grid of `rows` × `cols` cells of
/// `(cell_h, cell_w)` native pixels.
pub fn auto_scale((cell_h, cell_w): (usize, usize), rows: usize, cols: usize) -> usize {
    let longest = cell_h.max(cell_w).max(1);
    let legible = LEGIBLE_CELL.div_ceil(longest).max(1);
    // The separators do not scale, so they come off the budget before dividing.
    let fit = |cells: usize, side: usize| {
        MAX_AUTO_SIDE.saturating_sub((cells + 1) * SEPARATOR) / (cells * side).max(1)
    };
    let cap = fit(cols, cell_w).min(fit(rows, cell_h));
    legible.min(cap).max(1)
}

/// Value of the separator lines.
const SEPARATOR_VALUE: f32 = 1.0;
/// Value of the padding around views smaller than their cell.
const PAD_VALUE: f32 = 0.0;

/// Copies `src` (converted to RGB) centred into the cell whose top-left corner is
/// `(y0, x0)` and whose size is `(cell_h, cell_w)`.
fn blit_centred(
    grid: &mut Image,
    src: &Image,
    (y0, x0): (usize, usize),
    (cell_h, cell_w): (usize, usize),
) -> Result<(), AugmentError> {
    let rgb = convert_channels(src, 3)?;
    let oy = y0 + cell_h.saturating_sub(rgb.height) / 2;
    let ox = x0 + cell_w.saturating_sub(rgb.width) / 2;
    let (h, w) = (rgb.height.min(cell_h), rgb.width.min(cell_w));
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let v = rgb.get(c, y, x).clamp(0.0, 1.0);
                grid.data[(c * grid.height + oy + y) * grid.width + ox + x] = v;
            }
        }
    }
    Ok(())
}

/// Enlarges `img` by the integer factor `s`, nearest neighbour.
fn upscale(img: &Image, s: usize) -> Image {
    if s == 1 {
        return img.clone();
    }
    let (h, w) = (img.height * s, img.width * s);
    let mut data = Vec::with_capacity(img.channels * h * w);
    for c in 0..img.channels {
        for y in 0..h {
            for x in 0..w {
                data.push(img.get(c, y / s, x / s));
            }
        }
    }
    Image {
        channels: img.channels,
        height: h,
        width: w,
        data,
    }
}

/// Builds the preview grid at native size as an RGB image in `[0, 1]`: the same as
/// [`preview_grid_scaled`] with a factor of 1.
pub fn preview_grid(chain: &Chain, images: &[Image], seed: u64) -> Result<Image, AugmentError> {
    preview_grid_scaled(chain, images, seed, 1)
}

/// Builds the preview grid as an RGB image in `[0, 1]`, every cell enlarged `scale`
/// times (nearest neighbour); `scale` must be at least 1.
///
/// Row `i` shows `images[i]` (resized, aspect kept, to fit the cell) followed by its
/// views. Every cell is as large as the largest view; smaller views are centred on black.
/// Cells are separated and framed by [`SEPARATOR`]-pixel white lines, so the grid is
/// `(1 + V) * cell_w + (2 + V) * SEPARATOR` wide and
/// `N * cell_h + (N + 1) * SEPARATOR` high for `N` images and `V` views.
/// Views are shown before the chain's final normalisation (the same samples the model
/// sees, un-normalised). Image `i`'s views come from a ChaCha8 RNG seeded with `seed` on
/// stream `i`, so a preview is reproducible.
pub fn preview_grid_scaled(
    chain: &Chain,
    images: &[Image],
    seed: u64,
    scale: usize,
) -> Result<Image, AugmentError> {
    if scale == 0 {
        return Err(AugmentError::Preview(
            "the scale must be at least 1 (1 = native size)".into(),
        ));
    }
    if images.is_empty() {
        return Err(AugmentError::Preview(
            "there are no images to preview".into(),
        ));
    }
    let shapes = ViewMaker::view_shapes(chain);
    let native_h = shapes.iter().map(|s| s.1).max().unwrap_or(1);
    let native_w = shapes.iter().map(|s| s.2).max().unwrap_or(1);
    let cols = 1 + shapes.len();
    // A mistyped factor must be an error, not an allocation that takes the machine down.
    let side = |cells: usize, cell: usize| {
        cell.checked_mul(scale)
            .and_then(|c| c.checked_mul(cells))
            .and_then(|p| p.checked_add((cells + 1) * SEPARATOR))
    };
    let fits = side(cols, native_w)
        .zip(side(images.len(), native_h))
        .and_then(|(w, h)| w.checked_mul(h))
        .is_some_and(|px| px <= MAX_PIXELS);
    if !fits {
        return Err(AugmentError::Preview(format!(
            "{} rows of {cols} cells of {native_h}×{native_w} px enlarged {scale}× would be \
             over {} million pixels; use a smaller scale or fewer images",
            images.len(),
            MAX_PIXELS / 1_000_000
        )));
    }
    let (cell_h, cell_w) = (native_h * scale, native_w * scale);
    let width = cols * cell_w + (cols + 1) * SEPARATOR;
    let height = images.len() * cell_h + (images.len() + 1) * SEPARATOR;
    let mut grid = Image::filled(3, height, width, SEPARATOR_VALUE);
    for (row, image) in images.iter().enumerate() {
        let y0 = SEPARATOR + row * (cell_h + SEPARATOR);
        for col in 0..cols {
            let x0 = SEPARATOR + col * (cell_w + SEPARATOR);
            for c in 0..3 {
                for y in y0..y0 + cell_h {
                    let start = (c * height + y) * width + x0;
                    grid.data[start..start + cell_w].fill(PAD_VALUE);
                }
            }
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(row as u64);
        let views = chain.make_raw_views(image, &mut rng)?;
        if image.height > 0 && image.width > 0 {
            let s =
                (native_h as f64 / image.height as f64).min(native_w as f64 / image.width as f64);
            let fit = (
                ((image.height as f64 * s).round() as usize).clamp(1, native_h),
                ((image.width as f64 * s).round() as usize).clamp(1, native_w),
            );
            let shown = upscale(&resize(image, fit, true), scale);
            blit_centred(&mut grid, &shown, (y0, SEPARATOR), (cell_h, cell_w))?;
        }
        for (v, view) in views.iter().enumerate() {
            let x0 = SEPARATOR + (v + 1) * (cell_w + SEPARATOR);
            blit_centred(&mut grid, &upscale(view, scale), (y0, x0), (cell_h, cell_w))?;
        }
    }
    Ok(grid)
}

/// The factor `scale` resolves to for `images` previewed through `chain`: the
/// [`auto_scale`] of its grid for [`Scale::Auto`], the given factor otherwise.
pub fn resolve_scale(chain: &Chain, images: &[Image], scale: Scale) -> usize {
    match scale {
        Scale::Times(s) => s,
        Scale::Auto => {
            let shapes = ViewMaker::view_shapes(chain);
            let cell_h = shapes.iter().map(|s| s.1).max().unwrap_or(1);
            let cell_w = shapes.iter().map(|s| s.2).max().unwrap_or(1);
            auto_scale((cell_h, cell_w), images.len(), 1 + shapes.len())
        }
    }
}

/// Writes [`preview_grid_scaled`] to `path` as an 8-bit RGB PNG, enlarged as `scale`
/// says; returns the factor used.
pub fn write_preview(
    chain: &Chain,
    images: &[Image],
    seed: u64,
    scale: Scale,
    path: &Path,
) -> Result<usize, AugmentError> {
    let factor = resolve_scale(chain, images, scale);
    let grid = preview_grid_scaled(chain, images, seed, factor)?;
    let n = grid.height * grid.width;
    let mut bytes = Vec::with_capacity(3 * n);
    for i in 0..n {
        for c in 0..3 {
            bytes.push((grid.data[c * n + i].clamp(0.0, 1.0) * 255.0).round() as u8);
        }
    }
    let too_big = || {
        AugmentError::Preview(format!(
            "grid of {}x{} is too large",
            grid.width, grid.height
        ))
    };
    let w = u32::try_from(grid.width).map_err(|_| too_big())?;
    let h = u32::try_from(grid.height).map_err(|_| too_big())?;
    let img = image::RgbImage::from_raw(w, h, bytes).ok_or_else(too_big)?;
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|source| AugmentError::Write {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(factor)
}
