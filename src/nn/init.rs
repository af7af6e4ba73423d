//! Seeded initialisation following PyTorch's defaults.
//!
//! - Convolutions: Kaiming normal with `mode="fan_out"`, `nonlinearity="relu"`
//!   (std = √(2 / (out·k·k))), as torchvision's ResNet does to its convs.
//! - Linear layers: PyTorch's `nn.Linear` default, Kaiming uniform with a = √5, which is
//!   U(-1/√fan_in, 1/√fan_in) for the weight, and the same bound for the bias.
//! - Normalisation: scale 1, shift 0, running mean 0, running variance 1.
//!
//! Draws come from one ChaCha8 stream in registration order, so the same seed and the
//! same architecture give bit-identical parameters.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The random source for a model's initial parameters.
pub struct Init {
    rng: ChaCha8Rng,
}

impl Init {
    /// A source seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Init {
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// `n` draws from U(-bound, bound).
    pub fn uniform(&mut self, n: usize, bound: f32) -> Vec<f32> {
        (0..n)
            .map(|_| self.rng.gen_range(-1.0f32..1.0) * bound)
            .collect()
    }

    /// `n` draws from N(0, std²) (Box–Muller).
    pub fn normal(&mut self, n: usize, std: f32) -> Vec<f32> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let u1: f64 = 1.0 - self.rng.r#gen::<f64>();
            let u2: f64 = self.rng.r#gen::<f64>();
            let r = (-2.0 * u1.ln()).sqrt();
            let t = std::f64::consts::TAU * u2;
            out.push((r * t.cos()) as f32 * std);
            if out.len() < n {
                out.push((r * t.sin()) as f32 * std);
            }
        }
        out
    }

    /// A conv weight `(out, in, k, k)`: Kaiming normal, fan-out mode, ReLU gain.
    pub fn conv_weight(&mut self, out: usize, cin: usize, k: usize) -> Vec<f32> {
        let fan_out = (out * k * k).max(1) as f32;
        self.normal(out * cin * k * k, (2.0 / fan_out).sqrt())
    }

    /// A linear weight `(out, in)` or bias `(out,)`: U(-1/√in, 1/√in).
    pub fn linear(&mut self, n: usize, fan_in: usize) -> Vec<f32> {
        self.uniform(n, 1.0 / (fan_in.max(1) as f32).sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_moments_and_uniform_bounds() {
        let mut i = Init::new(3);
        let v = i.normal(20000, 2.0);
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / v.len() as f32;
        assert!(mean.abs() < 0.05, "{mean}");
        assert!((var - 4.0).abs() < 0.15, "{var}");
        let u = i.uniform(5000, 0.5);
        assert!(u.iter().all(|x| x.abs() <= 0.5));
        let umean = u.iter().sum::<f32>() / u.len() as f32;
        let uvar = u.iter().map(|x| x * x).sum::<f32>() / u.len() as f32;
        assert!(umean.abs() < 0.02 && (uvar - 0.25 / 3.0).abs() < 0.01);
    }
}
