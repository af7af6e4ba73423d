//! Exact tests of the deterministic parts of the augmentation ops.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use recipe::augment::color::{
    LUMA, adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation, hsv_to_rgb, rgb_to_hsv,
};
use recipe::augment::geometric::{resize, resize_window};
use recipe::augment::{
    AugmentError, ColorJitter, GaussianBlur, HorizontalFlip, Normalize, RandomGrayscale,
    RandomResizedCrop, Resampler, Solarize,
};
use recipe::data::Image;

fn rng() -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(7)
}

fn assert_close(a: f32, b: f32, tol: f32) {
    assert!((a - b).abs() <= tol, "{a} vs {b} (tol {tol})");
}

/// A 3-channel image whose samples vary along x, y and channel.
fn ramp(c: usize, h: usize, w: usize) -> Image {
    let mut data = Vec::with_capacity(c * h * w);
    for ch in 0..c {
        for y in 0..h {
            for x in 0..w {
                data.push(((ch * 7 + y * 3 + x * 5) % 23) as f32 / 22.0);
            }
        }
    }
    Image::from_planar(c, h, w, data).unwrap()
}

#[test]
fn resampler_weights_sum_to_one() {
    for (n_in, n_out) in [(10, 3), (3, 10), (224, 224), (7, 96), (100, 13)] {
        for aa in [true, false] {
            let r = Resampler::new(n_in, n_out, aa);
            for i in 0..n_out {
                let (start, w) = r.weights(i);
                let s: f32 = w.iter().sum();
                assert_close(s, 1.0, 1e-5);
                // Non-zero weights never read past the input.
                for (t, &wt) in w.iter().enumerate() {
                    if wt != 0.0 {
                        assert!(start + t < n_in);
                    }
                }
            }
        }
    }
}

#[test]
fn resize_keeps_a_constant_image_constant() {
    let img = Image::filled(3, 17, 23, 0.37);
    for size in [(5, 7), (40, 31), (17, 23)] {
        for aa in [true, false] {
            let out = resize(&img, size, aa);
            assert_eq!((out.channels, out.height, out.width), (3, size.0, size.1));
            for &v in &out.data {
                assert_close(v, 0.37, 1e-6);
            }
        }
    }
}

#[test]
fn upscaling_a_linear_image_is_linear_interpolation() {
    // f(x) = x on a 1x4 row; upscaling 2x with half-pixel centres samples
    // x' = (i + 0.5) / 2 - 0.5, clamped to the edge samples.
    let img = Image::from_planar(1, 1, 4, vec![0.0, 1.0, 2.0, 3.0]).unwrap();
    let out = resize(&img, (1, 8), true);
    let expected = [0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0];
    for (a, b) in out.data.iter().zip(expected) {
        assert_close(*a, b, 1e-6);
    }
    // Same along y, and identical without antialiasing when enlarging.
    let col = Image::from_planar(1, 4, 1, vec![0.0, 1.0, 2.0, 3.0]).unwrap();
    let out = resize(&col, (8, 1), false);
    for (a, b) in out.data.iter().zip(expected) {
        assert_close(*a, b, 1e-6);
    }
}

#[test]
fn downscaling_by_two_averages_pairs() {
    // With antialiasing a 2x shrink of a linear ramp is the mean of neighbouring pairs
    // (triangle of half-width 2 over centres at 0.5 and 1.5 offsets: weights 1/4,3/4,3/4,1/4
    // normalised, clamped at the edges).
    let img = Image::from_planar(1, 1, 8, (0..8).map(|v| v as f32).collect()).unwrap();
    let out = resize(&img, (1, 4), false);
    // Without antialiasing a 2x shrink samples exactly between two pixels.
    for (i, v) in out.data.iter().enumerate() {
        assert_close(*v, 2.0 * i as f32 + 0.5, 1e-6);
    }
    let aa = resize(&img, (1, 4), true);
    // Interior outputs: weights over pixels 2i-1..2i+2 are 1/8,3/8,3/8,1/8 -> 2i + 0.5.
    assert_close(aa.data[1], 2.5, 1e-5);
    assert_close(aa.data[2], 4.5, 1e-5);
    // Edge: pixels 0,1,2 with weights 3/7,3/7,1/7.
    assert_close(aa.data[0], (3.0 * 0.0 + 3.0 * 1.0 + 2.0) / 7.0, 1e-5);
}

#[test]
fn resize_window_reads_only_the_window() {
    let img = ramp(3, 12, 10);
    let out = resize_window(&img, (2, 3, 4, 5), (4, 5), true);
    for c in 0..3 {
        for y in 0..4 {
            for x in 0..5 {
                assert_close(out.get(c, y, x), img.get(c, y + 2, x + 3), 1e-6);
            }
        }
    }
}

#[test]
fn crop_fallback_is_centred_and_clamped_to_ratio() {
    // scale (1, 1) with ratio far from the image's cannot fit in 10 attempts.
    let crop = RandomResizedCrop::new((8, 8), (1.0, 1.0), (2.0, 3.0)).unwrap();
    let p = crop.sample_params(100, 50, &mut rng());
    // in_ratio = 0.5 < 2: width kept, height = round(50 / 2) = 25, centred.
    assert!(p.fallback);
    assert_eq!((p.top, p.left, p.height, p.width), (37, 0, 25, 50));
    let crop = RandomResizedCrop::new((8, 8), (1.0, 1.0), (0.2, 0.25)).unwrap();
    let p = crop.sample_params(40, 60, &mut rng());
    // in_ratio = 1.5 > 0.25: height kept, width = round(40 * 0.25) = 10.
    assert_eq!((p.top, p.left, p.height, p.width), (0, 25, 40, 10));
}

#[test]
fn flip_mirrors_rows() {
    let img = ramp(3, 4, 5);
    let out = HorizontalFlip::new(1.0)
        .unwrap()
        .apply(img.clone(), &mut rng());
    for c in 0..3 {
        for y in 0..4 {
            for x in 0..5 {
                assert_eq!(out.get(c, y, x), img.get(c, y, 4 - x));
            }
        }
    }
    let same = HorizontalFlip::new(0.0)
        .unwrap()
        .apply(img.clone(), &mut rng());
    assert_eq!(same, img);
}

#[test]
fn gaussian_kernel_is_normalised_and_symmetric() {
    let blur = GaussianBlur::new((0.1, 2.0), 23, 1.0).unwrap();
    for sigma in [0.1, 0.7, 2.0, 10.0] {
        let k = blur.kernel(sigma);
        assert_eq!(k.len(), 23);
        assert_close(k.iter().sum(), 1.0, 1e-5);
        for i in 0..23 {
            assert_close(k[i], k[22 - i], 1e-7);
        }
        // Ratio of neighbouring taps is the Gaussian's: exp(-(2i+1)/(2 sigma^2)).
        let ratio = k[12] / k[11];
        assert_close(ratio, (-0.5 / (sigma * sigma)).exp() as f32, 1e-4);
    }
}

#[test]
fn blur_preserves_constants_and_uses_reflect_padding() {
    let blur = GaussianBlur::new((1.0, 1.0), 5, 1.0).unwrap();
    let out = blur.apply(Image::filled(3, 9, 6, 0.42), &mut rng());
    for &v in &out.data {
        assert_close(v, 0.42, 1e-6);
    }
    // Tiny images (smaller than the padding) still work and stay constant.
    let tiny = blur.blur(Image::filled(1, 2, 1, 0.8), 1.5);
    for &v in &tiny.data {
        assert_close(v, 0.8, 1e-6);
    }
    // Reflect padding on a 1x3 row [a, b, c] with kernel 3: left output sees [b, a, b].
    let blur3 = GaussianBlur::new((1.0, 1.0), 3, 1.0).unwrap();
    let k = blur3.kernel(1.0);
    let row = Image::from_planar(1, 1, 3, vec![0.0, 1.0, 0.5]).unwrap();
    let out = blur3.blur(row, 1.0);
    assert_close(out.data[0], k[0] * 1.0 + k[1] * 0.0 + k[2] * 1.0, 1e-6);
    assert_close(out.data[1], k[0] * 0.0 + k[1] * 1.0 + k[2] * 0.5, 1e-6);
    assert_close(out.data[2], k[0] * 1.0 + k[1] * 0.5 + k[2] * 1.0, 1e-6);
}

#[test]
fn blur_matches_direct_2d_convolution() {
    let blur = GaussianBlur::new((0.8, 0.8), 5, 1.0).unwrap();
    let img = ramp(1, 7, 9);
    let out = blur.blur(img.clone(), 0.8);
    let k = blur.kernel(0.8);
    let refl = |i: isize, n: isize| -> usize {
        let i = if i < 0 { -i } else { i };
        (if i >= n { 2 * (n - 1) - i } else { i }) as usize
    };
    for y in 0..7isize {
        for x in 0..9isize {
            let mut acc = 0.0f32;
            for (a, ka) in k.iter().enumerate() {
                for (b, kb) in k.iter().enumerate() {
                    let sy = refl(y + a as isize - 2, 7);
                    let sx = refl(x + b as isize - 2, 9);
                    acc += ka * kb * img.get(0, sy, sx);
                }
            }
            assert_close(out.get(0, y as usize, x as usize), acc, 1e-5);
        }
    }
}

#[test]
fn solarize_inverts_at_and_above_threshold() {
    let img = Image::from_planar(1, 1, 4, vec![0.1, 0.5, 0.6, 1.0]).unwrap();
    let out = Solarize::new(0.5, 1.0)
        .unwrap()
        .apply(img.clone(), &mut rng());
    for (a, b) in out.data.iter().zip([0.1, 0.5, 0.4, 0.0]) {
        assert_close(*a, b, 1e-6);
    }
    let never = Solarize::new(0.5, 0.0)
        .unwrap()
        .apply(img.clone(), &mut rng());
    assert_eq!(never, img);
}

#[test]
fn normalise_and_invert() {
    let n = Normalize::new(vec![0.5, 0.25, 0.0], vec![0.5, 0.25, 2.0]).unwrap();
    let img = Image::from_planar(3, 1, 2, vec![1.0, 0.0, 0.5, 0.75, 0.2, 0.4]).unwrap();
    let out = n.apply(img.clone()).unwrap();
    let expected = [1.0, -1.0, 1.0, 2.0, 0.1, 0.2];
    for (a, b) in out.data.iter().zip(expected) {
        assert_close(*a, b, 1e-6);
    }
    let back = n.invert(out).unwrap();
    for (a, b) in back.data.iter().zip(&img.data) {
        assert_close(*a, *b, 1e-6);
    }
    assert!(matches!(
        n.apply(Image::filled(1, 2, 2, 0.0)),
        Err(AugmentError::Channels {
            expected: 3,
            found: 1
        })
    ));
}

#[test]
fn hue_shift_of_known_colours() {
    let cases = [
        // (rgb, shift, expected)
        ([1.0, 0.0, 0.0], 1.0 / 3.0, [0.0, 1.0, 0.0]),
        ([0.0, 1.0, 0.0], 1.0 / 3.0, [0.0, 0.0, 1.0]),
        ([0.0, 0.0, 1.0], 1.0 / 3.0, [1.0, 0.0, 0.0]),
        ([1.0, 0.0, 0.0], -1.0 / 6.0, [1.0, 0.0, 1.0]),
        ([1.0, 0.0, 0.0], 0.5, [0.0, 1.0, 1.0]),
        ([0.8, 0.4, 0.4], 1.0 / 3.0, [0.4, 0.8, 0.4]),
        ([0.3, 0.3, 0.3], 0.25, [0.3, 0.3, 0.3]),
    ];
    for (rgb, shift, expected) in cases {
        let mut img = Image::from_planar(3, 1, 1, rgb.to_vec()).unwrap();
        adjust_hue(&mut img, shift);
        for (a, b) in img.data.iter().zip(expected) {
            assert_close(*a, b, 1e-5);
        }
    }
    assert_eq!(rgb_to_hsv(1.0, 0.5, 0.0), (1.0 / 12.0, 1.0, 1.0));
    let (r, g, b) = hsv_to_rgb(1.0 / 12.0, 1.0, 1.0);
    assert_close(r, 1.0, 1e-6);
    assert_close(g, 0.5, 1e-6);
    assert_close(b, 0.0, 1e-6);
}

#[test]
fn hsv_round_trip() {
    let img = ramp(3, 5, 5);
    for i in 0..25 {
        let (r, g, b) = (img.data[i], img.data[25 + i], img.data[50 + i]);
        let (h, s, v) = rgb_to_hsv(r, g, b);
        let (r2, g2, b2) = hsv_to_rgb(h, s, v);
        assert_close(r, r2, 1e-5);
        assert_close(g, g2, 1e-5);
        assert_close(b, b2, 1e-5);
    }
}

#[test]
fn brightness_contrast_saturation_formulas() {
    let img = Image::from_planar(3, 1, 2, vec![0.2, 0.6, 0.4, 0.8, 0.1, 0.9]).unwrap();
    let mut b = img.clone();
    adjust_brightness(&mut b, 2.0);
    assert_eq!(b.data, vec![0.4, 1.0, 0.8, 1.0, 0.2, 1.0]);

    let luma: Vec<f32> = (0..2)
        .map(|i| LUMA[0] * img.data[i] + LUMA[1] * img.data[2 + i] + LUMA[2] * img.data[4 + i])
        .collect();
    let mean = (luma[0] + luma[1]) / 2.0;
    let mut c = img.clone();
    adjust_contrast(&mut c, 0.5);
    for (a, x) in c.data.iter().zip(&img.data) {
        assert_close(*a, 0.5 * x + 0.5 * mean, 1e-6);
    }

    let mut s = img.clone();
    adjust_saturation(&mut s, 0.0);
    for ch in 0..3 {
        for (i, &y) in luma.iter().enumerate() {
            assert_close(s.data[ch * 2 + i], y, 1e-6);
        }
    }
}

#[test]
fn colour_ops_on_grayscale_images() {
    let img = ramp(1, 4, 4);
    // Saturation, hue and grayscale are identities on one channel.
    let mut s = img.clone();
    adjust_saturation(&mut s, 0.0);
    assert_eq!(s, img);
    let mut h = img.clone();
    adjust_hue(&mut h, 0.3);
    assert_eq!(h, img);
    assert_eq!(
        RandomGrayscale::new(1.0)
            .unwrap()
            .apply(img.clone(), &mut rng()),
        img
    );
    // Brightness and contrast apply; contrast uses the plane's mean.
    let mean = img.data.iter().sum::<f32>() / 16.0;
    let mut c = img.clone();
    adjust_contrast(&mut c, 0.0);
    for &v in &c.data {
        assert_close(v, mean, 1e-6);
    }
    let j = ColorJitter::new(0.4, 0.4, 0.4, 0.1, 1.0).unwrap();
    let out = j.apply(img.clone(), &mut rng());
    assert_eq!(out.channels, 1);
    assert!(out.data.iter().all(|v| (0.0..=1.0).contains(v)));
}

#[test]
fn grayscale_keeps_three_equal_channels() {
    let img = ramp(3, 3, 3);
    let out = RandomGrayscale::new(1.0)
        .unwrap()
        .apply(img.clone(), &mut rng());
    assert_eq!(out.channels, 3);
    for i in 0..9 {
        let y = LUMA[0] * img.data[i] + LUMA[1] * img.data[9 + i] + LUMA[2] * img.data[18 + i];
        for c in 0..3 {
            assert_close(out.data[c * 9 + i], y, 1e-6);
        }
    }
}

#[test]
fn invalid_parameters_are_errors() {
    assert!(RandomResizedCrop::new((0, 32), (0.08, 1.0), (0.75, 1.33)).is_err());
    assert!(RandomResizedCrop::new((32, 32), (0.5, 0.1), (0.75, 1.33)).is_err());
    assert!(RandomResizedCrop::new((32, 32), (0.0, 1.0), (0.75, 1.33)).is_err());
    assert!(RandomResizedCrop::new((32, 32), (0.1, 1.5), (0.75, 1.33)).is_err());
    assert!(RandomResizedCrop::new((32, 32), (0.1, 1.0), (-1.0, 1.33)).is_err());
    assert!(RandomResizedCrop::new((32, 32), (0.1, f64::NAN), (0.75, 1.33)).is_err());
    assert!(HorizontalFlip::new(1.5).is_err());
    assert!(HorizontalFlip::new(f64::NAN).is_err());
    assert!(ColorJitter::new(-0.1, 0.4, 0.4, 0.1, 0.8).is_err());
    assert!(ColorJitter::new(0.4, 0.4, 0.4, 0.6, 0.8).is_err());
    assert!(ColorJitter::new(0.4, 0.4, 0.4, 0.1, -0.2).is_err());
    assert!(GaussianBlur::new((0.1, 2.0), 4, 0.5).is_err());
    assert!(GaussianBlur::new((0.0, 2.0), 5, 0.5).is_err());
    assert!(GaussianBlur::new((2.0, 0.1), 5, 0.5).is_err());
    assert!(Solarize::new(1.5, 0.2).is_err());
    assert!(Normalize::new(vec![0.5], vec![0.0]).is_err());
    assert!(Normalize::new(vec![0.5, 0.5], vec![0.2]).is_err());
    let msg = HorizontalFlip::new(2.0).unwrap_err().to_string();
    assert!(
        msg.contains("horizontal_flip") && msg.contains("`p`"),
        "{msg}"
    );
}

#[test]
fn torchvision_scalar_jitter_ranges() {
    let j = ColorJitter::new(0.4, 1.5, 0.0, 0.1, 0.8).unwrap();
    assert_eq!(j.brightness, Some((0.6, 1.4)));
    assert_eq!(j.contrast, Some((0.0, 2.5)));
    assert_eq!(j.saturation, None);
    assert_eq!(j.hue, Some((-0.1, 0.1)));
}

#[test]
fn default_blur_kernel_size_is_odd_tenth() {
    assert_eq!(GaussianBlur::default_kernel_size(224), 23);
    assert_eq!(GaussianBlur::default_kernel_size(96), 11);
    assert_eq!(GaussianBlur::default_kernel_size(32), 3);
    assert_eq!(GaussianBlur::default_kernel_size(8), 3);
}

#[test]
fn fast_hue_shift_matches_the_hsv_round_trip() {
    use rand::Rng;
    let mut r = ChaCha8Rng::seed_from_u64(11);
    let mut pixels: Vec<[f32; 3]> = (0..2000)
        .map(|_| [r.r#gen::<f32>(), r.r#gen::<f32>(), r.r#gen::<f32>()])
        .collect();
    // Ties between channels, grays, black, white and saturated primaries.
    pixels.extend([
        [0.0, 0.0, 0.0],
        [1.0, 1.0, 1.0],
        [0.5, 0.5, 0.2],
        [0.5, 0.2, 0.5],
        [0.2, 0.5, 0.5],
        [1.0, 0.0, 0.0],
        [0.0, 0.0, 1.0],
    ]);
    for shift in [-0.5f32, -0.1, -1e-9, 0.0, 0.05, 0.25, 0.5, 1.7] {
        let n = pixels.len();
        let mut data = vec![0.0; 3 * n];
        for (i, p) in pixels.iter().enumerate() {
            for c in 0..3 {
                data[c * n + i] = p[c];
            }
        }
        let mut img = Image::from_planar(3, 1, n, data).unwrap();
        adjust_hue(&mut img, shift);
        for (i, p) in pixels.iter().enumerate() {
            let (h, s, v) = rgb_to_hsv(p[0], p[1], p[2]);
            let (er, eg, eb) = hsv_to_rgb(h + shift, s, v);
            assert_close(img.data[i], er, 2e-5);
            assert_close(img.data[n + i], eg, 2e-5);
            assert_close(img.data[2 * n + i], eb, 2e-5);
        }
    }
}
