//! Statistical tests of the random ops, with fixed seeds and tolerances from the
//! binomial / uniform standard deviations (about 5 sd, so a correct op fails with
//! negligible probability and a wrong rate fails reliably).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use recipe::augment::color::Adjust;
use recipe::augment::{
    ColorJitter, GaussianBlur, HorizontalFlip, RandomGrayscale, RandomResizedCrop, Solarize,
};
use recipe::data::Image;

const N: usize = 4000;

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// Asserts that `hits` out of `n` trials is consistent with probability `p`.
fn assert_rate(hits: usize, n: usize, p: f64, what: &str) {
    let rate = hits as f64 / n as f64;
    let sd = (p * (1.0 - p) / n as f64).sqrt().max(1e-9);
    assert!(
        (rate - p).abs() <= 5.0 * sd + 1e-12,
        "{what}: rate {rate} vs p {p} (sd {sd})"
    );
}

/// A 1x1xW row whose samples are all different, to detect flips and changes.
fn row(channels: usize) -> Image {
    let w = 6;
    let data = (0..channels * w)
        .map(|i| (i % w) as f32 / 10.0 + 0.05 * (i / w) as f32)
        .collect();
    Image::from_planar(channels, 1, w, data).unwrap()
}

#[test]
fn crop_area_and_ratio_stay_in_bounds() {
    let (scale, ratio) = ((0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0));
    let crop = RandomResizedCrop::new((32, 32), scale, ratio).unwrap();
    let (h, w) = (200usize, 300usize);
    let mut r = rng(1);
    let mut fallbacks = 0;
    let mut area_sum = 0.0;
    let mut accepted = 0;
    for _ in 0..N {
        let p = crop.sample_params(h, w, &mut r);
        assert!(p.top + p.height <= h && p.left + p.width <= w);
        assert!(p.height >= 1 && p.width >= 1);
        if p.fallback {
            fallbacks += 1;
            continue;
        }
        accepted += 1;
        // Rounding moves each side by at most 0.5 pixel.
        let (ph, pw) = (p.height as f64, p.width as f64);
        let max_area = (pw + 0.5) * (ph + 0.5) / (h * w) as f64;
        let min_area = (pw - 0.5) * (ph - 0.5) / (h * w) as f64;
        assert!(max_area >= scale.0 && min_area <= scale.1, "{p:?}");
        let max_ratio = (pw + 0.5) / (ph - 0.5);
        let min_ratio = (pw - 0.5) / (ph + 0.5);
        assert!(max_ratio >= ratio.0 && min_ratio <= ratio.1, "{p:?}");
        area_sum += pw * ph / (h * w) as f64;
    }
    // A 3:2 image: some large crops with extreme ratios do not fit, but 10 attempts
    // nearly always succeed.
    assert!(fallbacks < N / 100, "{fallbacks} fallbacks");
    // Accepted crops are biased small (large ones fail more often), so the mean area is
    // below the uniform mean 0.54 but well above the minimum.
    let mean = area_sum / accepted as f64;
    assert!((0.35..0.54).contains(&mean), "mean area fraction {mean}");
}

#[test]
fn crop_ratio_is_log_uniform() {
    // With scale small enough that every window fits, ln(ratio) is uniform on
    // [ln 1/2, ln 2]: its mean is 0 and half the crops are wider than tall.
    let crop = RandomResizedCrop::new((8, 8), (0.01, 0.02), (0.5, 2.0)).unwrap();
    let mut r = rng(2);
    let mut wider = 0;
    let mut log_sum = 0.0;
    for _ in 0..N {
        let p = crop.sample_params(1000, 1000, &mut r);
        assert!(!p.fallback);
        let lr = (p.width as f64 / p.height as f64).ln();
        log_sum += lr;
        if p.width > p.height {
            wider += 1;
        }
    }
    // Uniform on [-ln 2, ln 2] has sd ln2 / sqrt(3) ~ 0.4; the mean's sd is 0.4 / sqrt(N).
    let mean = log_sum / N as f64;
    assert!(
        mean.abs() < 5.0 * 0.4 / (N as f64).sqrt(),
        "mean ln ratio {mean}"
    );
    assert_rate(wider, N, 0.5, "wider crops");
}

#[test]
fn crop_position_is_uniform() {
    // Half-size crops (fixed area and ratio) of a 100x100 image: the top row is uniform
    // in 0..=50, mean 25.
    let crop = RandomResizedCrop::new((8, 8), (0.25, 0.25), (1.0, 1.0)).unwrap();
    let mut r = rng(3);
    let mut sum = 0.0;
    for _ in 0..N {
        let p = crop.sample_params(100, 100, &mut r);
        assert_eq!((p.height, p.width), (50, 50));
        sum += p.top as f64;
    }
    let sd = (51.0f64 * 51.0 - 1.0).sqrt() / 12f64.sqrt() / (N as f64).sqrt();
    assert!((sum / N as f64 - 25.0).abs() < 5.0 * sd);
}

#[test]
fn flip_rate_matches_p() {
    let img = row(3);
    for p in [0.5, 0.2] {
        let flip = HorizontalFlip::new(p).unwrap();
        let mut r = rng(4);
        let flips = (0..N)
            .filter(|_| flip.apply(img.clone(), &mut r) != img)
            .count();
        assert_rate(flips, N, p, "flip");
    }
}

#[test]
fn jitter_factors_stay_in_their_ranges() {
    let jitter = ColorJitter::new(0.4, 0.4, 0.4, 0.1, 0.8).unwrap();
    let mut r = rng(5);
    let mut applied = 0;
    let mut first = [0usize; 4];
    let mut sums = [0.0f64; 4];
    for _ in 0..N {
        let Some(p) = jitter.sample(&mut r) else {
            continue;
        };
        applied += 1;
        let b = p.brightness.unwrap();
        let c = p.contrast.unwrap();
        let s = p.saturation.unwrap();
        let h = p.hue.unwrap();
        assert!((0.6..=1.4).contains(&b) && (0.6..=1.4).contains(&c));
        assert!((0.6..=1.4).contains(&s) && (-0.1..=0.1).contains(&h));
        sums[0] += b as f64;
        sums[1] += c as f64;
        sums[2] += s as f64;
        sums[3] += h as f64;
        let mut order = p.order.to_vec();
        let idx = |a: Adjust| match a {
            Adjust::Brightness => 0,
            Adjust::Contrast => 1,
            Adjust::Saturation => 2,
            Adjust::Hue => 3,
        };
        first[idx(order[0])] += 1;
        order.sort_by_key(|&a| idx(a));
        assert_eq!(
            order,
            [
                Adjust::Brightness,
                Adjust::Contrast,
                Adjust::Saturation,
                Adjust::Hue
            ]
        );
    }
    assert_rate(applied, N, 0.8, "jitter applied");
    // Uniform means: 1 for the factors, 0 for hue; sd of a uniform on width w is w/sqrt(12).
    let n = applied as f64;
    for (k, (mean, width)) in [(1.0, 0.8), (1.0, 0.8), (1.0, 0.8), (0.0, 0.2)]
        .into_iter()
        .enumerate()
    {
        let m = sums[k] / n;
        let sd = width / 12f64.sqrt() / n.sqrt();
        assert!((m - mean).abs() < 5.0 * sd, "factor {k}: mean {m}");
    }
    // Each adjustment comes first a quarter of the time.
    for (k, &f) in first.iter().enumerate() {
        assert_rate(f, applied, 0.25, &format!("adjustment {k} first"));
    }
}

#[test]
fn grayscale_rate_matches_p() {
    let img = row(3);
    let gray = RandomGrayscale::new(0.2).unwrap();
    let mut r = rng(6);
    let hits = (0..N)
        .filter(|_| {
            let out = gray.apply(img.clone(), &mut r);
            out.plane(0) == out.plane(1) && out.plane(1) == out.plane(2)
        })
        .count();
    assert_rate(hits, N, 0.2, "grayscale");
}

#[test]
fn blur_and_solarize_rates_and_sigma_range() {
    let img = Image::from_planar(1, 1, 7, vec![0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]).unwrap();
    let blur = GaussianBlur::new((0.5, 2.0), 7, 0.5).unwrap();
    let mut r = rng(7);
    let mut hits = 0;
    // The centre tap after blurring an impulse is kernel[3]; it decreases with sigma,
    // so it pins sigma between the range's ends.
    let (k_hi, k_lo) = (blur.kernel(0.5)[3], blur.kernel(2.0)[3]);
    for _ in 0..N {
        let out = blur.apply(img.clone(), &mut r);
        if out != img {
            hits += 1;
            assert!(out.data[3] <= k_hi + 1e-6 && out.data[3] >= k_lo - 1e-6);
        }
    }
    assert_rate(hits, N, 0.5, "blur");

    let sol = Solarize::new(0.5, 0.2).unwrap();
    let bright = Image::filled(1, 2, 2, 0.9);
    let hits = (0..N)
        .filter(|_| sol.apply(bright.clone(), &mut r) != bright)
        .count();
    assert_rate(hits, N, 0.2, "solarize");
}
