//! PNG grids of images: what the first layer learned, what each stage responds to,
//! which training images a test image lands next to, and what the augmentations make.
//!
//! Every grid is rows of equally sized cells on a white background, `SEPARATOR`
//! pixels apart. A cell holds one image, scaled up by an integer factor (nearest
//! neighbour, so pixels stay visible) until its longer side is at least
//! `MIN_CELL` pixels (at most 8×, 16× for filters), centred on black when it is smaller than the cell, inside a
//! `FRAME`-pixel border that is coloured where the picture means something (the
//! neighbours' right/wrong) and black otherwise. Input images are planar CHW `f32` in
//! `[0, 1]` (1 channel is shown grey, 3 as RGB); values outside are clamped.
//!
//! For the augmentation picture of a recipe, [`crate::augment::write_preview`] draws
//! the chain's own views next to each original; [`views_png`] draws rows of images
//! that were made elsewhere (e.g. the loader's batches) in the same style.

use std::path::Path;

use super::{ReportError, save_rgb};
use crate::data::Image;

/// White lines between and around cells, in pixels.
pub const SEPARATOR: usize = 2;
/// Border inside each cell, in pixels.
pub const FRAME: usize = 3;
/// Images are scaled up by an integer factor until their longer side reaches this.
pub const MIN_CELL: usize = 64;
/// The largest upscaling factor of images.
const MAX_SCALE: usize = 8;
/// The largest upscaling factor of filters (3×3 kernels become 48-pixel tiles).
const MAX_FILTER_SCALE: usize = 16;
/// Extra white space between groups of columns (query | neighbours, stage | stage).
pub const GROUP_GAP: usize = 8;

/// Frame colour of a correct neighbour.
pub const GREEN: [u8; 3] = [40, 170, 60];
/// Frame colour of a wrong neighbour.
pub const RED: [u8; 3] = [220, 40, 40];
const BLACK: [u8; 3] = [0, 0, 0];
const WHITE: u8 = 255;

/// One cell: an image and the colour of its frame.
struct Tile<'a> {
    img: &'a Image,
    frame: [u8; 3],
}

fn check_image(img: &Image) -> Result<(), ReportError> {
    if !(img.channels == 1 || img.channels == 3)
        || img.height == 0
        || img.width == 0
        || img.data.len() != img.channels * img.height * img.width
    {
        return Err(ReportError::Input(format!(
            "an image of {} channel(s), {}x{} with {} samples cannot be drawn (1 or 3 \
             channels, CHW)",
            img.channels,
            img.height,
            img.width,
            img.data.len()
        )));
    }
    Ok(())
}

fn to_u8(v: f32) -> u8 {
    (v.clamp(0.0, 1.0) * 255.0).round() as u8
}

/// Lays `rows` out as described in the module docs and writes the PNG. Columns listed
/// in `gaps_after` are followed by [`GROUP_GAP`] extra pixels.
fn compose(
    path: &Path,
    rows: &[Vec<Tile<'_>>],
    gaps_after: &[usize],
    max_scale: usize,
) -> Result<(), ReportError> {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    if cols == 0 {
        return Err(ReportError::Input("there are no images to draw".into()));
    }
    for t in rows.iter().flatten() {
        check_image(t.img)?;
    }
    let max_h = rows
        .iter()
        .flatten()
        .map(|t| t.img.height)
        .max()
        .unwrap_or(1);
    let max_w = rows
        .iter()
        .flatten()
        .map(|t| t.img.width)
        .max()
        .unwrap_or(1);
    let scale = MIN_CELL.div_ceil(max_h.max(max_w)).clamp(1, max_scale);
    let (inner_h, inner_w) = (max_h * scale, max_w * scale);
    let (cell_h, cell_w) = (inner_h + 2 * FRAME, inner_w + 2 * FRAME);
    let col_x: Vec<usize> = (0..cols)
        .scan(SEPARATOR, |x, c| {
            let here = *x;
            *x += cell_w
                + SEPARATOR
                + if gaps_after.contains(&c) {
                    GROUP_GAP
                } else {
                    0
                };
            Some(here)
        })
        .collect();
    let width = col_x[cols - 1] + cell_w + SEPARATOR;
    let height = rows.len() * (cell_h + SEPARATOR) + SEPARATOR;
    let mut rgb = vec![WHITE; width * height * 3];
    let mut put = |x: usize, y: usize, px: [u8; 3]| {
        let o = (y * width + x) * 3;
        rgb[o..o + 3].copy_from_slice(&px);
    };
    for (r, row) in rows.iter().enumerate() {
        let y0 = SEPARATOR + r * (cell_h + SEPARATOR);
        for (t, &x0) in row.iter().zip(&col_x) {
            for y in 0..cell_h {
                for x in 0..cell_w {
                    put(
                        x0 + x,
                        y0 + y,
                        if y < FRAME || x < FRAME || y >= cell_h - FRAME || x >= cell_w - FRAME {
                            t.frame
                        } else {
                            BLACK
                        },
                    );
                }
            }
            let img = t.img;
            let (h, w) = (img.height * scale, img.width * scale);
            let oy = y0 + FRAME + (inner_h - h) / 2;
            let ox = x0 + FRAME + (inner_w - w) / 2;
            for y in 0..h {
                for x in 0..w {
                    let (sy, sx) = (y / scale, x / scale);
                    let px = if img.channels == 3 {
                        [0, 1, 2].map(|c| to_u8(img.get(c, sy, sx)))
                    } else {
                        [to_u8(img.get(0, sy, sx)); 3]
                    };
                    put(ox + x, oy + y, px);
                }
            }
        }
    }
    save_rgb(path, width, height, rgb)
}

/// Scales `v` to `[0, 1]` by its own minimum and maximum (a constant slice becomes 0.5).
fn min_max(v: &[f32]) -> Vec<f32> {
    let finite = v.iter().copied().filter(|x| x.is_finite());
    let lo = finite.clone().fold(f32::INFINITY, f32::min);
    let hi = finite.fold(f32::NEG_INFINITY, f32::max);
    // Also catches no finite value at all (lo = +inf, hi = -inf).
    if hi <= lo {
        return vec![0.5; v.len()];
    }
    v.iter().map(|&x| (x - lo) / (hi - lo)).collect()
}

/// The first convolution's filters, one tile per output channel, in a near-square grid.
///
/// `weights` is `(out, in, kh, kw)` row-major (`shape`). Each filter is min-max scaled
/// on its own; with 3 input channels it is shown in colour (RGB), otherwise as the grey
/// mean over its input channels (exact for 1-channel input).
pub fn filters_png(path: &Path, weights: &[f32], shape: [usize; 4]) -> Result<(), ReportError> {
    let [o, i, kh, kw] = shape;
    if o == 0 || i == 0 || kh == 0 || kw == 0 || weights.len() != o * i * kh * kw {
        return Err(ReportError::Input(format!(
            "{} weights do not make filters of shape {shape:?}",
            weights.len()
        )));
    }
    let plane = kh * kw;
    let tiles: Vec<Image> = weights
        .chunks_exact(i * plane)
        .map(|f| {
            let data = if i == 3 {
                min_max(f)
            } else {
                let mean: Vec<f32> = (0..plane)
                    .map(|p| (0..i).map(|c| f[c * plane + p]).sum::<f32>() / i as f32)
                    .collect();
                min_max(&mean)
            };
            Image::from_planar(if i == 3 { 3 } else { 1 }, kh, kw, data)
                .expect("tile data has the tile's size")
        })
        .collect();
    let cols = (o as f64).sqrt().ceil() as usize;
    let rows: Vec<Vec<Tile<'_>>> = tiles
        .chunks(cols)
        .map(|r| r.iter().map(|img| Tile { img, frame: BLACK }).collect())
        .collect();
    compose(path, &rows, &[], MAX_FILTER_SCALE)
}

/// Activation maps: row `r` shows `images[r]`, then for each stage in order the first
/// `channels_per_stage` channels of its map for sample `r` (each min-max scaled on its
/// own and enlarged to the image's size, nearest neighbour), with a wider gap between
/// stages. A stage is `(name, values, [n, c, h, w])` with values NCHW row-major and
/// `n ≥ images.len()`; the names are for the caller's caption.
pub fn feature_maps_png(
    path: &Path,
    images: &[Image],
    stages: &[(String, Vec<f32>, [usize; 4])],
    channels_per_stage: usize,
) -> Result<(), ReportError> {
    if images.is_empty() || channels_per_stage == 0 {
        return Err(ReportError::Input(
            "the activation picture needs images and at least one channel per stage".into(),
        ));
    }
    for img in images {
        check_image(img)?;
    }
    for (name, data, [n, c, h, w]) in stages {
        if data.len() != n * c * h * w || *n < images.len() || *c == 0 || *h == 0 || *w == 0 {
            return Err(ReportError::Input(format!(
                "stage `{name}`: {} values of shape {:?} do not cover {} images",
                data.len(),
                [n, c, h, w],
                images.len()
            )));
        }
    }
    let mut maps: Vec<Vec<Image>> = Vec::with_capacity(images.len());
    // Column 0 is the image; a gap after it and after each stage's last column.
    let mut gaps = vec![0];
    let mut col = 0;
    for (r, img) in images.iter().enumerate() {
        let mut row = Vec::new();
        for (_, data, [_, c, h, w]) in stages {
            let plane = h * w;
            for ch in 0..channels_per_stage.min(*c) {
                let o = (r * c + ch) * plane;
                let scaled = min_max(&data[o..o + plane]);
                // Enlarged to the input's size, so every cell has the same scale.
                let (ih, iw) = (img.height, img.width);
                let up: Vec<f32> = (0..ih * iw)
                    .map(|p| scaled[(p / iw) * h / ih * w + (p % iw) * w / iw])
                    .collect();
                row.push(Image::from_planar(1, ih, iw, up).expect("map has the image's size"));
            }
            if r == 0 {
                col += channels_per_stage.min(*c);
                gaps.push(col);
            }
        }
        maps.push(row);
    }
    let rows: Vec<Vec<Tile<'_>>> = images
        .iter()
        .zip(&maps)
        .map(|(img, row)| {
            std::iter::once(img)
                .chain(row)
                .map(|img| Tile { img, frame: BLACK })
                .collect()
        })
        .collect();
    compose(path, &rows, &gaps, MAX_SCALE)
}

/// Nearest neighbours: row `r` shows `queries[r]`, a gap, then `neighbors[r]` in order,
/// each framed green when `correct[r][j]` (same class as the query) and red otherwise.
pub fn neighbors_png(
    path: &Path,
    queries: &[Image],
    neighbors: &[Vec<Image>],
    correct: &[Vec<bool>],
) -> Result<(), ReportError> {
    if queries.len() != neighbors.len()
        || neighbors.len() != correct.len()
        || neighbors
            .iter()
            .zip(correct)
            .any(|(n, c)| n.len() != c.len())
    {
        return Err(ReportError::Input(
            "queries, neighbours and their right/wrong marks must have matching lengths".into(),
        ));
    }
    let rows: Vec<Vec<Tile<'_>>> = queries
        .iter()
        .zip(neighbors)
        .zip(correct)
        .map(|((q, nb), ok)| {
            std::iter::once(Tile {
                img: q,
                frame: BLACK,
            })
            .chain(nb.iter().zip(ok).map(|(img, &ok)| Tile {
                img,
                frame: if ok { GREEN } else { RED },
            }))
            .collect()
        })
        .collect();
    compose(path, &rows, &[0], MAX_SCALE)
}

/// Rows of images (e.g. an original followed by its augmented views), one row each,
/// cells as large as the largest image; smaller images are centred on black.
pub fn views_png(path: &Path, rows: &[Vec<Image>]) -> Result<(), ReportError> {
    let tiles: Vec<Vec<Tile<'_>>> = rows
        .iter()
        .map(|r| r.iter().map(|img| Tile { img, frame: BLACK }).collect())
        .collect();
    compose(path, &tiles, &[], MAX_SCALE)
}
