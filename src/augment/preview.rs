//! A PNG grid of images and their views, so a user can see what a chain does.

use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::color::convert_channels;
use super::geometric::resize;
use super::{AugmentError, Chain};
use crate::data::{Image, ViewMaker};

/// Width in pixels of the white lines between and around the cells.
pub const SEPARATOR: usize = 2;

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

/// Builds the preview grid as an RGB image in `[0, 1]`.
///
/// Row `i` shows `images[i]` (resized, aspect kept, to fit the cell) followed by its
/// views. Every cell is as large as the largest view; smaller views are centred on black.
/// Cells are separated and framed by [`SEPARATOR`]-pixel white lines, so the grid is
/// `(1 + V) * cell_w + (2 + V) * SEPARATOR` wide and
/// `N * cell_h + (N + 1) * SEPARATOR` high for `N` images and `V` views.
/// Views are shown before the chain's final normalisation (the same samples the model
/// sees, un-normalised). Image `i`'s views come from a ChaCha8 RNG seeded with `seed` on
/// stream `i`, so a preview is reproducible.
pub fn preview_grid(chain: &Chain, images: &[Image], seed: u64) -> Result<Image, AugmentError> {
    if images.is_empty() {
        return Err(AugmentError::Preview(
            "there are no images to preview".into(),
        ));
    }
    let shapes = ViewMaker::view_shapes(chain);
    let cell_h = shapes.iter().map(|s| s.1).max().unwrap_or(1);
    let cell_w = shapes.iter().map(|s| s.2).max().unwrap_or(1);
    let cols = 1 + shapes.len();
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
            let s = (cell_h as f64 / image.height as f64).min(cell_w as f64 / image.width as f64);
            let fit = (
                ((image.height as f64 * s).round() as usize).clamp(1, cell_h),
                ((image.width as f64 * s).round() as usize).clamp(1, cell_w),
            );
            let shown = resize(image, fit, true);
            blit_centred(&mut grid, &shown, (y0, SEPARATOR), (cell_h, cell_w))?;
        }
        for (v, view) in views.iter().enumerate() {
            let x0 = SEPARATOR + (v + 1) * (cell_w + SEPARATOR);
            blit_centred(&mut grid, view, (y0, x0), (cell_h, cell_w))?;
        }
    }
    Ok(grid)
}

/// Writes [`preview_grid`] to `path` as an 8-bit RGB PNG.
pub fn write_preview(
    chain: &Chain,
    images: &[Image],
    seed: u64,
    path: &Path,
) -> Result<(), AugmentError> {
    let grid = preview_grid(chain, images, seed)?;
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
        })
}
