//! The view-making chain: view shapes, determinism, per-view and multi-crop plans,
//! normalisation, and the preview grid.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use recipe::augment::{
    AugmentError, Chain, ChainConfig, ColorJitter, CropGroup, GaussianBlur, HorizontalFlip,
    Normalize, Op, RandomGrayscale, RandomResizedCrop, Scale, Solarize, ViewMaker, ViewPlan,
    preview::SEPARATOR, preview_grid, preview_grid_scaled, write_preview,
};
use recipe::data::Image;

fn noise(c: usize, h: usize, w: usize, seed: u64) -> Image {
    use rand::Rng;
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    Image::from_planar(c, h, w, (0..c * h * w).map(|_| r.r#gen::<f32>()).collect()).unwrap()
}

fn simclr_pipeline(size: usize, blur: bool) -> Vec<Op> {
    let mut ops = vec![
        Op::RandomResizedCrop(
            RandomResizedCrop::new((size, size), (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0)).unwrap(),
        ),
        Op::HorizontalFlip(HorizontalFlip::new(0.5).unwrap()),
        Op::ColorJitter(ColorJitter::new(0.4, 0.4, 0.4, 0.1, 0.8).unwrap()),
        Op::Grayscale(RandomGrayscale::new(0.2).unwrap()),
    ];
    if blur {
        ops.push(Op::GaussianBlur(
            GaussianBlur::new((0.1, 2.0), GaussianBlur::default_kernel_size(size), 0.5).unwrap(),
        ));
    }
    ops
}

fn simclr(c: usize, size: usize) -> Chain {
    let normalize = Normalize::new(vec![0.5; c], vec![0.25; c]).unwrap();
    Chain::new(
        ChainConfig {
            plan: ViewPlan::Shared {
                views: 2,
                pipeline: simclr_pipeline(size, true),
            },
            normalize: Some(normalize),
        },
        (c, 40, 40),
    )
    .unwrap()
}

#[test]
fn same_seed_same_views_for_one_and_three_channels() {
    for c in [1, 3] {
        let chain = simclr(c, 24);
        assert_eq!(chain.view_shapes(), vec![(c, 24, 24); 2]);
        let img = noise(c, 40, 40, 1);
        let a = chain.make_views(&img, &mut ChaCha8Rng::seed_from_u64(9));
        let b = chain.make_views(&img, &mut ChaCha8Rng::seed_from_u64(9));
        let other = chain.make_views(&img, &mut ChaCha8Rng::seed_from_u64(10));
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert_ne!(a[0], a[1], "two views of one image should differ");
        for v in &a {
            assert_eq!((v.channels, v.height, v.width), (c, 24, 24));
            // Normalised from [0, 1] with mean 0.5 / std 0.25: within [-2, 2].
            assert!(
                v.data
                    .iter()
                    .all(|x| x.is_finite() && (-2.0..=2.0).contains(x))
            );
        }
    }
}

#[test]
fn views_equal_raw_views_normalised() {
    let chain = simclr(3, 16);
    let img = noise(3, 40, 40, 2);
    let raw = chain
        .make_raw_views(&img, &mut ChaCha8Rng::seed_from_u64(3))
        .unwrap();
    let views = chain.make_views(&img, &mut ChaCha8Rng::seed_from_u64(3));
    for (r, v) in raw.iter().zip(&views) {
        assert!(r.data.iter().all(|x| (0.0..=1.0).contains(x)));
        for (a, b) in r.data.iter().zip(&v.data) {
            assert!(((a - 0.5) / 0.25 - b).abs() < 1e-5);
        }
    }
}

#[test]
fn per_view_pipelines_are_asymmetric() {
    // BYOL-style: view 0 always solarized, view 1 never; different output sizes.
    let crop = |s: usize| {
        Op::RandomResizedCrop(RandomResizedCrop::new((s, s), (0.5, 1.0), (0.75, 1.33)).unwrap())
    };
    let chain = Chain::new(
        ChainConfig {
            plan: ViewPlan::PerView(vec![
                vec![crop(8), Op::Solarize(Solarize::new(0.0, 1.0).unwrap())],
                vec![crop(12)],
            ]),
            normalize: None,
        },
        (3, 20, 20),
    )
    .unwrap();
    assert_eq!(chain.view_shapes(), vec![(3, 8, 8), (3, 12, 12)]);
    let img = Image::filled(3, 20, 20, 0.3);
    let views = chain.make_views(&img, &mut ChaCha8Rng::seed_from_u64(1));
    // Threshold 0 inverts everything: 0.3 -> 0.7.
    assert!(views[0].data.iter().all(|v| (v - 0.7).abs() < 1e-6));
    assert!(views[1].data.iter().all(|v| (v - 0.3).abs() < 1e-6));
}

#[test]
fn multi_crop_shapes_and_errors() {
    let config = |pipeline: Vec<Op>| ChainConfig {
        plan: ViewPlan::MultiCrop {
            global: CropGroup {
                count: 2,
                size: (32, 32),
                scale: (0.14, 1.0),
                ratio: (0.75, 4.0 / 3.0),
            },
            local: CropGroup {
                count: 4,
                size: (12, 12),
                scale: (0.05, 0.14),
                ratio: (0.75, 4.0 / 3.0),
            },
            pipeline,
        },
        normalize: Some(Normalize::new(vec![0.5, 0.5, 0.5], vec![0.2, 0.2, 0.2]).unwrap()),
    };
    let rest = simclr_pipeline(32, true)[1..].to_vec();
    let chain = Chain::new(config(rest), (3, 48, 48)).unwrap();
    let mut expected = vec![(3, 32, 32); 2];
    expected.extend(vec![(3, 12, 12); 4]);
    assert_eq!(chain.view_shapes(), expected);
    let views = chain.make_views(&noise(3, 48, 48, 4), &mut ChaCha8Rng::seed_from_u64(5));
    let shapes: Vec<_> = views
        .iter()
        .map(|v| (v.channels, v.height, v.width))
        .collect();
    assert_eq!(shapes, expected);

    // A crop inside the multi-crop pipeline is ambiguous.
    let err = Chain::new(config(simclr_pipeline(32, false)), (3, 48, 48)).unwrap_err();
    assert!(matches!(err, AugmentError::InvalidChain(_)), "{err}");
}

#[test]
fn chain_rejects_inconsistent_configs() {
    let shared = |views, normalize| ChainConfig {
        plan: ViewPlan::Shared {
            views,
            pipeline: simclr_pipeline(8, false),
        },
        normalize,
    };
    assert!(Chain::new(shared(0, None), (3, 8, 8)).is_err());
    assert!(Chain::new(shared(2, None), (2, 8, 8)).is_err());
    assert!(Chain::new(shared(2, None), (3, 0, 8)).is_err());
    let gray_norm = Normalize::new(vec![0.5], vec![0.5]).unwrap();
    assert!(Chain::new(shared(2, Some(gray_norm)), (3, 8, 8)).is_err());
    // A hand-built op with bad parameters is caught when the chain is built.
    let bad = ChainConfig {
        plan: ViewPlan::Shared {
            views: 2,
            pipeline: vec![Op::HorizontalFlip(HorizontalFlip { p: 2.0 })],
        },
        normalize: None,
    };
    assert!(Chain::new(bad, (3, 8, 8)).is_err());
}

#[test]
fn inputs_are_conformed_to_the_declared_shape() {
    // No crop: a 10x10 RGB input to a chain declared 1x6x6 becomes a 6x6 gray view.
    let chain = Chain::new(
        ChainConfig {
            plan: ViewPlan::Shared {
                views: 1,
                pipeline: vec![Op::HorizontalFlip(HorizontalFlip::new(0.5).unwrap())],
            },
            normalize: None,
        },
        (1, 6, 6),
    )
    .unwrap();
    let img = Image::filled(3, 10, 10, 0.5);
    let views = chain.make_views(&img, &mut ChaCha8Rng::seed_from_u64(0));
    assert_eq!(
        (views[0].channels, views[0].height, views[0].width),
        (1, 6, 6)
    );
    assert!(views[0].data.iter().all(|v| (v - 0.5).abs() < 1e-6));
    // An unsupported channel count is an error on the fallible path.
    let two = Image::filled(2, 6, 6, 0.5);
    assert!(
        chain
            .try_make_views(&two, &mut ChaCha8Rng::seed_from_u64(0))
            .is_err()
    );
}

#[test]
fn preview_writes_a_png_of_the_expected_size() {
    let chain = Chain::new(
        ChainConfig {
            plan: ViewPlan::PerView(vec![simclr_pipeline(16, true), simclr_pipeline(10, false)]),
            normalize: Some(Normalize::new(vec![0.4, 0.4, 0.4], vec![0.2, 0.3, 0.4]).unwrap()),
        },
        (3, 20, 30),
    )
    .unwrap();
    let images: Vec<Image> = (0..3).map(|i| noise(3, 20, 30, i)).collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("views.png");
    assert_eq!(
        write_preview(&chain, &images, 1, Scale::Times(1), &path).unwrap(),
        1
    );
    let png = image::open(&path).unwrap().to_rgb8();
    let (cell, cols, rows) = (16u32, 3u32, 3u32);
    let s = SEPARATOR as u32;
    assert_eq!(png.width(), cols * cell + (cols + 1) * s);
    assert_eq!(png.height(), rows * cell + (rows + 1) * s);
    // Separator lines are white; the top-left cell's centre holds image content.
    assert_eq!(png.get_pixel(0, 0).0, [255, 255, 255]);
    // The 10x10 view is centred in its 16x16 cell on black padding.
    let x0 = s + 2 * (cell + s);
    assert_eq!(png.get_pixel(x0, s).0, [0, 0, 0]);

    // The grid shows un-normalised views: same samples as the raw views.
    let grid = preview_grid(&chain, &images[..1], 1).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    rng.set_stream(0);
    let raw = chain.make_raw_views(&images[0], &mut rng).unwrap();
    let x1 = SEPARATOR + (16 + SEPARATOR);
    for y in 0..16 {
        for x in 0..16 {
            assert_eq!(grid.get(1, SEPARATOR + y, x1 + x), raw[0].get(1, y, x));
        }
    }
    // Gray chains preview too.
    let gray = simclr(1, 12);
    let out = preview_grid(&gray, &[noise(1, 40, 40, 3)], 0).unwrap();
    assert_eq!(out.channels, 3);
    assert!(preview_grid(&gray, &[], 0).is_err());
}

/// A two-view chain whose crops keep the whole side of `c`-channel `size`² images.
fn native_chain(c: usize, size: usize) -> Chain {
    let crop = RandomResizedCrop::new((size, size), (0.2, 1.0), (3.0 / 4.0, 4.0 / 3.0)).unwrap();
    Chain::new(
        ChainConfig {
            plan: ViewPlan::Shared {
                views: 2,
                pipeline: vec![Op::RandomResizedCrop(crop)],
            },
            normalize: None,
        },
        (c, size, size),
    )
    .unwrap()
}

/// The outer size of a preview of `rows` images and 2 views in cells of `cell` pixels.
fn preview_size(rows: u32, cell: u32) -> (u32, u32) {
    let s = SEPARATOR as u32;
    (3 * cell + 4 * s, rows * cell + (rows + 1) * s)
}

#[test]
fn preview_is_enlarged_to_a_legible_size() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("views.png");
    // 8×8 digits: 12× makes 96-pixel cells.
    let digits: Vec<Image> = (0..8).map(|i| noise(1, 8, 8, i)).collect();
    let chain = native_chain(1, 8);
    assert_eq!(
        write_preview(&chain, &digits, 0, Scale::Auto, &path).unwrap(),
        12
    );
    let png = image::open(&path).unwrap().to_rgb8();
    assert_eq!(png.dimensions(), preview_size(8, 96));
    // 28×28 Fashion-MNIST: 4× makes 112-pixel cells.
    let fashion: Vec<Image> = (0..8).map(|i| noise(1, 28, 28, i)).collect();
    let chain28 = native_chain(1, 28);
    assert_eq!(
        write_preview(&chain28, &fashion, 0, Scale::Auto, &path).unwrap(),
        4
    );
    assert_eq!(
        image::open(&path).unwrap().to_rgb8().dimensions(),
        preview_size(8, 112)
    );
    // 32×32 RGB: 3× (96 pixels).
    let cifar: Vec<Image> = (0..2).map(|i| noise(3, 32, 32, i)).collect();
    assert_eq!(
        write_preview(&native_chain(3, 32), &cifar, 0, Scale::Auto, &path).unwrap(),
        3
    );
    // A given factor is used as it is.
    assert_eq!(
        write_preview(&chain, &digits[..2], 0, Scale::Times(5), &path).unwrap(),
        5
    );
    assert_eq!(
        image::open(&path).unwrap().to_rgb8().dimensions(),
        preview_size(2, 40)
    );

    // Each view pixel becomes a block of scale × scale equal pixels: the enlarged grid
    // is the native one sampled by nearest neighbour, separators excepted.
    let native = preview_grid(&chain, &digits[..1], 3).unwrap();
    let big = preview_grid_scaled(&chain, &digits[..1], 3, 12).unwrap();
    let x1 = SEPARATOR + 8 + SEPARATOR;
    let bx1 = SEPARATOR + 96 + SEPARATOR;
    for y in 0..96 {
        for x in 0..96 {
            assert_eq!(
                big.get(0, SEPARATOR + y, bx1 + x),
                native.get(0, SEPARATOR + y / 12, x1 + x / 12)
            );
        }
    }
    assert!(preview_grid_scaled(&chain, &digits, 0, 0).is_err());
    // A factor that would need gigabytes is an error, not an allocation.
    assert!(preview_grid_scaled(&chain, &digits, 0, 100_000).is_err());
}

#[test]
fn auto_scale_keeps_large_grids_in_bounds() {
    use recipe::augment::preview::{MAX_AUTO_SIDE, auto_scale};
    assert_eq!(auto_scale((8, 8), 8, 3), 12);
    assert_eq!(auto_scale((28, 28), 8, 3), 4);
    assert_eq!(auto_scale((96, 96), 8, 3), 1);
    // 64 rows of 28 px at 4× would be 7,000 px high: the cap brings it to 1×.
    assert_eq!(auto_scale((28, 28), 64, 3), 1);
    // SwAV's 2 + 4 crops of 8 px next to the original (7 columns) at 12×: 700 px wide.
    assert_eq!(auto_scale((8, 8), 8, 7), 12);
    // 16 rows of 8 px: 12× would be 1,570 px high, still within the cap.
    let s = auto_scale((8, 8), 16, 3);
    assert_eq!(s, 12);
    assert!(16 * 8 * s + 17 * SEPARATOR <= MAX_AUTO_SIDE);
}
