//! Every PNG writer produces a decodable PNG of the expected size and content.

use std::path::Path;

use recipe::data::Image;
use recipe::report::grid::{FRAME, GREEN, RED, SEPARATOR};
use recipe::report::{
    Series, feature_maps_png, filters_png, line_chart, neighbors_png, scatter, views_png,
};

fn decode(path: &Path) -> image::RgbImage {
    image::open(path).unwrap().to_rgb8()
}

/// The colour `plots` gives class `i`.
fn class_color(i: usize) -> [u8; 3] {
    let c = recipe::report::plots::color(i);
    [c.0, c.1, c.2]
}

fn gray(h: usize, w: usize, v: f32) -> Image {
    Image::filled(1, h, w, v)
}

/// The outer size of a grid of `rows × cols` cells of `cell` pixels (frame included)
/// with `gaps` group gaps.
fn grid_size(rows: usize, cols: usize, cell: usize, gaps: usize) -> (u32, u32) {
    let w = SEPARATOR + cols * (cell + SEPARATOR) + gaps * recipe::report::grid::GROUP_GAP;
    let h = SEPARATOR + rows * (cell + SEPARATOR);
    (w as u32, h as u32)
}

/// Dark pixels (text, lines, markers) in the rectangle `[x0, x1) × [y0, y1)`.
fn dark_pixels(img: &image::RgbImage, (x0, x1): (u32, u32), (y0, y1): (u32, u32)) -> usize {
    let mut n = 0;
    for y in y0..y1 {
        for x in x0..x1 {
            let p = img.get_pixel(x, y).0;
            n += usize::from(p.iter().all(|&c| c < 100));
        }
    }
    n
}

#[test]
fn line_chart_draws_its_title_and_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loss.png");
    let series = vec![
        Series {
            name: "loss".into(),
            points: (0..50)
                .map(|i| (i as f64, 5.0 / (1.0 + i as f64)))
                .collect(),
        },
        Series {
            name: "with a gap".into(),
            points: vec![(0.0, 1.0), (10.0, f64::NAN), (20.0, 2.0)],
        },
    ];
    line_chart(&path, "Training loss", "step", &series).unwrap();
    let img = decode(&path);
    assert_eq!(img.dimensions(), (900, 500));
    // The title is rendered text: dark pixels in the top band, centred.
    assert!(dark_pixels(&img, (300, 600), (0, 40)) > 50, "no title text");
    // The first series is tab10 blue somewhere in the plot.
    assert!(img.pixels().any(|p| p.0 == [31, 119, 180]));
    // An empty chart still renders.
    line_chart(&path, "Nothing yet", "epoch", &[]).unwrap();
    assert_eq!(decode(&path).dimensions(), (900, 500));
}

#[test]
fn scatter_colours_points_by_class_with_a_legend() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pca.png");
    let points: Vec<(f32, f32)> = (0..60)
        .map(|i| {
            (
                (i % 3) as f32 * 5.0 + (i as f32 * 0.1).sin(),
                (i as f32).cos(),
            )
        })
        .collect();
    let classes: Vec<u32> = (0..60).map(|i| (i % 3) as u32).collect();
    let names = vec!["T-shirt".to_string(), "Trouser".into(), "Pullover".into()];
    scatter(&path, "Embedding (PCA)", &points, &classes, &names).unwrap();
    let img = decode(&path);
    assert_eq!(img.dimensions(), (960, 720));
    // Legend markers: the class colours at the legend's marker centres (x = 760 + 16).
    assert_eq!(img.get_pixel(776, 60).0, [31, 119, 180]);
    assert_eq!(img.get_pixel(776, 84).0, [255, 127, 14]);
    assert_eq!(img.get_pixel(776, 108).0, [44, 160, 44]);
    // Legend text next to the markers.
    assert!(
        dark_pixels(&img, (790, 960), (48, 120)) > 30,
        "no legend text"
    );
    assert!(scatter(&path, "x", &points, &classes[..5], &names).is_err());
    // 100 classes: the legend stops at the bottom with a count of the rest.
    let many: Vec<u32> = (0..60).map(|i| i as u32 + 40).collect();
    scatter(&path, "many", &points, &many, &[]).unwrap();
    let img = decode(&path);
    assert_eq!(img.get_pixel(776, 60 + 24 * 25).0, class_color(25));
    assert!(
        dark_pixels(&img, (760, 960), (60 + 24 * 26 - 12, 720)) > 20,
        "no summary row"
    );
}

#[test]
fn filters_are_tiled_and_scaled_per_filter() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("filters.png");
    // 5 RGB 3×3 filters; filter f has values f·100 + index, so min-max scaling makes
    // every filter span black to white whatever its offset.
    let shape = [5, 3, 3, 3];
    let weights: Vec<f32> = (0..5)
        .flat_map(|f| (0..27).map(move |i| f as f32 * 100.0 + i as f32))
        .collect();
    filters_png(&path, &weights, shape).unwrap();
    let img = decode(&path);
    // 5 filters in 3 columns and 2 rows; 3×3 scaled by 16 (the cap) plus the frame.
    let cell = 3 * 16 + 2 * FRAME;
    assert_eq!(img.dimensions(), grid_size(2, 3, cell, 0));
    // Filter 4 (second row, second column): its first red sample (R index 0) is the
    // filter's minimum, its last blue sample (B index 26) its maximum.
    let x0 = (SEPARATOR + (cell + SEPARATOR) + FRAME) as u32;
    let y0 = (SEPARATOR + (cell + SEPARATOR) + FRAME) as u32;
    assert_eq!(img.get_pixel(x0, y0).0[0], 0);
    assert_eq!(img.get_pixel(x0 + 47, y0 + 47).0[2], 255);
    // Gray filters (1 input channel) and bad shapes.
    filters_png(&path, &[0.0, 1.0, 2.0, 3.0], [1, 1, 2, 2]).unwrap();
    let img = decode(&path);
    let cell = 2 * 16 + 2 * FRAME;
    assert_eq!(img.dimensions(), grid_size(1, 1, cell, 0));
    let p = img.get_pixel((SEPARATOR + FRAME) as u32, (SEPARATOR + FRAME) as u32);
    assert_eq!(p.0, [0, 0, 0]);
    assert!(filters_png(&path, &[0.0; 7], [1, 1, 2, 2]).is_err());
}

#[test]
fn feature_maps_show_each_stage_next_to_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("maps.png");
    let images = vec![gray(16, 16, 0.5), gray(16, 16, 0.2)];
    // Stage 1: 2 images × 3 channels × 8×8; stage 2: 2 × 2 × 4×4.
    let s1: Vec<f32> = (0..2 * 3 * 64).map(|i| i as f32).collect();
    let s2: Vec<f32> = (0..2 * 2 * 16).map(|i| (i % 7) as f32).collect();
    let stages = vec![
        ("layer1".to_string(), s1, [2, 3, 8, 8]),
        ("layer2".to_string(), s2, [2, 2, 4, 4]),
    ];
    feature_maps_png(&path, &images, &stages, 2).unwrap();
    let img = decode(&path);
    // 16×16 images scaled by 4; columns: image, 2 of layer1, 2 of layer2; gaps after
    // the image and after layer1 (none after the last column).
    let cell = 16 * 4 + 2 * FRAME;
    assert_eq!(img.dimensions(), grid_size(2, 5, cell, 2));
    assert!(feature_maps_png(&path, &images, &stages[..1], 0).is_err());
    let short = vec![("x".to_string(), vec![0.0; 10], [1, 1, 2, 5])];
    assert!(feature_maps_png(&path, &images, &short, 1).is_err());
}

#[test]
fn neighbours_are_framed_green_or_red() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nn.png");
    let q = vec![gray(8, 8, 1.0)];
    let nb = vec![vec![gray(8, 8, 0.5), gray(8, 8, 0.5), gray(8, 8, 0.5)]];
    let ok = vec![vec![true, false, true]];
    neighbors_png(&path, &q, &nb, &ok).unwrap();
    let img = decode(&path);
    let cell = 8 * 8 + 2 * FRAME;
    assert_eq!(img.dimensions(), grid_size(1, 4, cell, 1));
    let gap = recipe::report::grid::GROUP_GAP;
    let frame_at = |col: usize| {
        let x = SEPARATOR + col * (cell + SEPARATOR) + gap + 1;
        img.get_pixel(x as u32, (SEPARATOR + 1) as u32).0
    };
    assert_eq!(frame_at(1), GREEN);
    assert_eq!(frame_at(2), RED);
    assert_eq!(frame_at(3), GREEN);
    // The query itself is drawn white inside a black frame.
    let c = (SEPARATOR + FRAME + 10) as u32;
    assert_eq!(img.get_pixel(c, c).0, [255, 255, 255]);
    assert!(neighbors_png(&path, &q, &nb, &[vec![true]]).is_err());
}

#[test]
fn views_grid_centres_smaller_images() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("views.png");
    let mut red = Image::filled(3, 16, 16, 0.0);
    red.plane_mut(0).fill(1.0);
    let rows = vec![
        vec![red.clone(), gray(8, 8, 1.0), red.clone()],
        vec![red, gray(16, 16, 0.0)],
    ];
    views_png(&path, &rows).unwrap();
    let img = decode(&path);
    let cell = 16 * 4 + 2 * FRAME;
    assert_eq!(img.dimensions(), grid_size(2, 3, cell, 0));
    let inner = |col: usize, dx: usize, dy: usize| {
        let x = SEPARATOR + col * (cell + SEPARATOR) + FRAME + dx;
        let y = SEPARATOR + FRAME + dy;
        img.get_pixel(x as u32, y as u32).0
    };
    assert_eq!(inner(0, 5, 5), [255, 0, 0]);
    // The 8×8 view is centred: black padding at the corner, white in the middle.
    assert_eq!(inner(1, 2, 2), [0, 0, 0]);
    assert_eq!(inner(1, 32, 32), [255, 255, 255]);
    assert!(views_png(&path, &[]).is_err());
    let bad = Image {
        channels: 2,
        height: 1,
        width: 1,
        data: vec![0.0, 0.0],
    };
    assert!(views_png(&path, &[vec![bad]]).is_err());
}
