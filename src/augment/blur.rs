//! Gaussian blur: separable, reflect padding, random sigma.

use rand::Rng;

use super::error::{check_probability, check_range, invalid};
use super::{AugmentError, coin, uniform};
use crate::data::Image;

/// Blurs with a Gaussian kernel whose sigma is drawn uniformly from `sigma`, with
/// probability `p` (torchvision's `RandomApply([GaussianBlur(kernel_size, sigma)], p)`).
///
/// The 1-D kernel samples `exp(-x^2 / (2 sigma^2))` at the `kernel_size` integer offsets
/// `-(k-1)/2 ..= (k-1)/2` and is normalised to sum 1; it is applied along rows, then
/// columns, with reflect padding (the edge sample is not repeated). Deliberate
/// difference: torchvision rejects images no larger than the padding; here reflection
/// continues periodically, so any image size works.
#[derive(Clone, Debug, PartialEq)]
pub struct GaussianBlur {
    /// Range sigma is drawn from (positive).
    pub sigma: (f64, f64),
    /// Kernel length: odd and positive.
    pub kernel_size: usize,
    /// Probability of blurring.
    pub p: f64,
}

impl GaussianBlur {
    /// The op's name in recipes.
    pub const NAME: &'static str = "gaussian_blur";

    /// A validated blur.
    pub fn new(sigma: (f64, f64), kernel_size: usize, p: f64) -> Result<Self, AugmentError> {
        let op = GaussianBlur {
            sigma,
            kernel_size,
            p,
        };
        op.validate()?;
        Ok(op)
    }

    /// SimCLR's choice: the odd kernel size nearest to 10% of the image side, at least 3.
    pub fn default_kernel_size(image_side: usize) -> usize {
        let k = (image_side as f64 * 0.1).round() as usize;
        (k | 1).max(3)
    }

    /// Checks the parameters.
    pub fn validate(&self) -> Result<(), AugmentError> {
        check_probability(Self::NAME, self.p)?;
        check_range(Self::NAME, "sigma", self.sigma)?;
        if self.sigma.0 <= 0.0 {
            return Err(invalid(
                Self::NAME,
                "sigma",
                format!("must be positive, got [{}, {}]", self.sigma.0, self.sigma.1),
            ));
        }
        if self.kernel_size.is_multiple_of(2) {
            return Err(invalid(
                Self::NAME,
                "kernel_size",
                format!("must be odd and positive, got {}", self.kernel_size),
            ));
        }
        Ok(())
    }

    /// The normalised 1-D kernel for `sigma`.
    ///
    /// Taps below `1e-12` of the total are set to zero (and the rest renormalised): a
    /// small sigma would otherwise give subnormal `f32` taps, which make every multiply
    /// they touch dozens of times slower, for a change of at most 1e-11 per sample.
    pub fn kernel(&self, sigma: f64) -> Vec<f32> {
        let half = (self.kernel_size as f64 - 1.0) / 2.0;
        let mut raw: Vec<f64> = (0..self.kernel_size)
            .map(|i| {
                let x = (i as f64 - half) / sigma;
                (-0.5 * x * x).exp()
            })
            .collect();
        let total: f64 = raw.iter().sum();
        for v in &mut raw {
            if *v < 1e-12 * total {
                *v = 0.0;
            }
        }
        let total: f64 = raw.iter().sum();
        raw.iter().map(|&v| (v / total) as f32).collect()
    }

    /// Blurs `img` with a given sigma, unconditionally.
    pub fn blur(&self, img: Image, sigma: f64) -> Image {
        let kernel = self.kernel(sigma);
        convolve_separable(img, &kernel)
    }

    /// Blurs `img` with probability `p`, sigma drawn uniformly from the range.
    pub fn apply<R: Rng + ?Sized>(&self, img: Image, rng: &mut R) -> Image {
        if !coin(rng, self.p) {
            return img;
        }
        let sigma = uniform(rng, self.sigma.0, self.sigma.1);
        self.blur(img, sigma)
    }
}

/// Index `i` (possibly outside `0..n`) reflected into `0..n` without repeating the edge.
fn reflect(i: isize, n: usize) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n as isize - 1);
    let m = i.rem_euclid(period);
    if m < n as isize {
        m as usize
    } else {
        (period - m) as usize
    }
}

/// Convolves every channel with `kernel` along rows then columns, reflect-padded.
fn convolve_separable(mut img: Image, kernel: &[f32]) -> Image {
    let (h, w) = (img.height, img.width);
    if h == 0 || w == 0 || kernel.len() <= 1 {
        return img;
    }
    let k = kernel.len();
    let r = (k / 2) as isize;
    // Source index of each padded position, shared by all rows (and, for columns, rows).
    let col_src: Vec<usize> = (0..(w + k - 1))
        .map(|i| reflect(i as isize - r, w))
        .collect();
    let row_src: Vec<usize> = (0..(h + k - 1))
        .map(|i| reflect(i as isize - r, h))
        .collect();
    let mut padded = vec![0.0f32; w + k - 1];
    let mut tmp = vec![0.0f32; h * w];
    for c in 0..img.channels {
        let plane = img.plane_mut(c);
        // Rows: out[x] = sum_t kernel[t] * padded[x + t], as k shifted axpys that vectorise.
        for y in 0..h {
            let row = &plane[y * w..(y + 1) * w];
            for (p, &s) in padded.iter_mut().zip(&col_src) {
                *p = row[s];
            }
            let out = &mut tmp[y * w..(y + 1) * w];
            out.fill(0.0);
            for (t, &kt) in kernel.iter().enumerate() {
                if kt == 0.0 {
                    continue;
                }
                for (o, &v) in out.iter_mut().zip(&padded[t..t + w]) {
                    *o += kt * v;
                }
            }
        }
        // Columns: each output row is a weighted sum of k (reflected) rows.
        for y in 0..h {
            let out = &mut plane[y * w..(y + 1) * w];
            out.fill(0.0);
            for (t, &kt) in kernel.iter().enumerate() {
                if kt == 0.0 {
                    continue;
                }
                let sy = row_src[y + t];
                for (o, &v) in out.iter_mut().zip(&tmp[sy * w..(sy + 1) * w]) {
                    *o += kt * v;
                }
            }
        }
    }
    img
}
