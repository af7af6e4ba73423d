//! 2-D t-SNE of features, for the `embedding_tsne` picture (van der Maaten & Hinton
//! 2008, "Visualizing Data using t-SNE"; the sparse input affinities of van der Maaten
//! 2014, "Accelerating t-SNE using Tree-Based Algorithms").
//!
//! - **Input affinities.** Each point's conditional distribution `p(j|i) ∝
//!   exp(−β_i ‖x_i − x_j‖²)` is restricted to its `⌊3·perplexity⌋` nearest neighbours
//!   (2014, §4.1: beyond them the probabilities are negligible) and `β_i` is found by
//!   bisection so that its entropy is `ln(perplexity)`; then `p_ij = (p(j|i) +
//!   p(i|j)) / 2n`. Distances are summed in `f64`.
//! - **Map.** The gradient `4 Σ_j (p_ij − q_ij)(1 + ‖y_i − y_j‖²)⁻¹ (y_i − y_j)` has
//!   its attractive part over the sparse `p` and its repulsive part computed exactly
//!   over all pairs (no Barnes–Hut approximation): `O(n²)` per iteration, about a
//!   second for 1,000 points on two cores.
//! - **Optimisation** as the reference implementation `bhtsne` (and openTSNE): 1,000
//!   iterations of gradient descent with momentum 0.5 for the first 250 and 0.8 after,
//!   early exaggeration ×12 for the first 250, per-coordinate gains (+0.2 when the
//!   gradient changes sign against the update, ×0.8 otherwise, at least 0.01), and the
//!   learning rate `max(200, n / 12)` (Belkina et al. 2019, openTSNE's `auto`); the
//!   initial map is Gaussian with standard deviation 10⁻⁴ from the seed, recentred
//!   every iteration.
//!
//! Deterministic: the start comes from the seed, every sum runs in a fixed order (rows
//! in parallel, each row in one thread), ties between neighbours go to the lower index.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr_free::normal;
use rayon::prelude::*;

use super::EvalError;
use super::features::FeatureMatrix;

/// Iterations of the optimisation.
const ITERATIONS: usize = 1000;
/// Iterations with early exaggeration and the lower momentum.
const EARLY: usize = 250;
/// Early exaggeration factor.
const EXAGGERATION: f64 = 12.0;

/// t-SNE settings.
#[derive(Clone, Debug, PartialEq)]
pub struct TsneConfig {
    /// The effective number of neighbours each point's affinities reach (5–50; 30 is
    /// the usual default). At most `(n − 1) / 3` for `n` points.
    pub perplexity: f64,
    /// Seed of the initial map.
    pub seed: u64,
}

/// The largest perplexity `n` points allow: each point needs `3·perplexity`
/// neighbours.
pub fn max_perplexity(n: usize) -> f64 {
    n.saturating_sub(1) as f64 / 3.0
}

/// A t-SNE map.
#[derive(Clone, Debug, PartialEq)]
pub struct Tsne {
    /// Each row's 2-D position.
    pub coords: Vec<(f32, f32)>,
    /// The Kullback–Leibler divergence `KL(P ‖ Q)` of the final map (over the sparse
    /// `P`), the objective t-SNE minimises.
    pub kl: f64,
}

/// Normal draws from the uniform generator (Box–Muller), so no extra crate is needed.
mod rand_distr_free {
    use rand::Rng;

    /// A standard normal draw.
    pub fn normal(rng: &mut impl Rng) -> f64 {
        let u1: f64 = rng.gen_range(f64::MIN_POSITIVE..1.0);
        let u2: f64 = rng.r#gen();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// Each row's `k` nearest other rows by squared Euclidean distance, as `(index,
/// distance)` in increasing distance (ties by index).
fn neighbours(f: &FeatureMatrix, k: usize) -> Vec<Vec<(usize, f64)>> {
    let (n, d) = (f.n, f.dim);
    let x: Vec<f64> = f.data.iter().map(|&v| f64::from(v)).collect();
    (0..n)
        .into_par_iter()
        .map(|i| {
            let a = &x[i * d..(i + 1) * d];
            let mut all: Vec<(usize, f64)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| {
                    let b = &x[j * d..(j + 1) * d];
                    let dist = a.iter().zip(b).map(|(p, q)| (p - q) * (p - q)).sum();
                    (j, dist)
                })
                .collect();
            let cmp = |p: &(usize, f64), q: &(usize, f64)| p.1.total_cmp(&q.1).then(p.0.cmp(&q.0));
            if k < all.len() {
                all.select_nth_unstable_by(k, cmp);
                all.truncate(k);
            }
            all.sort_by(cmp);
            all
        })
        .collect()
}

/// `p(j|i)` over `row`'s neighbours with the entropy `ln(perplexity)`, by bisection on
/// the precision `β` (distances shifted by the nearest one, which cancels).
fn conditional(row: &[(usize, f64)], perplexity: f64) -> Vec<f64> {
    let target = perplexity.ln();
    let d0 = row.first().map_or(0.0, |r| r.1);
    let (mut beta, mut lo, mut hi) = (1.0f64, 0.0f64, f64::INFINITY);
    let mut p = vec![0.0; row.len()];
    for _ in 0..200 {
        let mut sum = 0.0;
        for (pj, &(_, dist)) in p.iter_mut().zip(row) {
            *pj = (-beta * (dist - d0)).exp();
            sum += *pj;
        }
        // H = ln Σ e^{−βd} + β Σ p d (with the shifted distances).
        let mean_d: f64 = p
            .iter()
            .zip(row)
            .map(|(pj, r)| pj * (r.1 - d0))
            .sum::<f64>()
            / sum;
        let h = sum.ln() + beta * mean_d;
        p.iter_mut().for_each(|pj| *pj /= sum);
        let diff = h - target;
        if diff.abs() < 1e-5 {
            break;
        }
        // Entropy falls as β grows.
        if diff > 0.0 {
            lo = beta;
            beta = if hi.is_finite() {
                (beta + hi) / 2.0
            } else {
                beta * 2.0
            };
        } else {
            hi = beta;
            beta = (beta + lo) / 2.0;
        }
    }
    p
}

/// The symmetric sparse affinities `p_ij` as rows of `(j, p_ij)` sorted by `j`.
fn affinities(f: &FeatureMatrix, perplexity: f64) -> Vec<Vec<(usize, f64)>> {
    let n = f.n;
    let k = ((3.0 * perplexity).floor() as usize).clamp(1, n - 1);
    let nb = neighbours(f, k);
    let cond: Vec<Vec<f64>> = nb.par_iter().map(|r| conditional(r, perplexity)).collect();
    let mut triplets: Vec<(usize, usize, f64)> = Vec::with_capacity(2 * n * k);
    for (i, (row, p)) in nb.iter().zip(&cond).enumerate() {
        for (&(j, _), &pj) in row.iter().zip(p) {
            triplets.push((i, j, pj));
            triplets.push((j, i, pj));
        }
    }
    triplets.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut rows: Vec<Vec<(usize, f64)>> = vec![Vec::new(); n];
    let scale = 1.0 / (2.0 * n as f64);
    for (i, j, v) in triplets {
        match rows[i].last_mut() {
            Some(last) if last.0 == j => last.1 += v * scale,
            _ => rows[i].push((j, v * scale)),
        }
    }
    rows
}

/// Row `i`'s `(Σ_j w_ij, Σ_j w_ij² (y_i − y_j))` over all `j` (including `i`, whose
/// `w_ii = 1` the caller removes), `w = (1 + ‖y_i − y_j‖²)⁻¹`, in four fixed lanes so
/// the loop vectorises and the order stays fixed.
fn repulsion(i: usize, xs: &[f64], ys: &[f64]) -> (f64, f64, f64) {
    let (xi, yi) = (xs[i], ys[i]);
    let mut s = [0.0f64; 4];
    let mut rx = [0.0f64; 4];
    let mut ry = [0.0f64; 4];
    let cx = xs.chunks_exact(4);
    let cy = ys.chunks_exact(4);
    let (tx, ty) = (cx.remainder(), cy.remainder());
    for (bx, by) in cx.zip(cy) {
        for l in 0..4 {
            let dx = xi - bx[l];
            let dy = yi - by[l];
            let w = 1.0 / (1.0 + dx * dx + dy * dy);
            s[l] += w;
            let w2 = w * w;
            rx[l] += w2 * dx;
            ry[l] += w2 * dy;
        }
    }
    for (l, (&bx, &by)) in tx.iter().zip(ty).enumerate() {
        let dx = xi - bx;
        let dy = yi - by;
        let w = 1.0 / (1.0 + dx * dx + dy * dy);
        s[l] += w;
        rx[l] += w * w * dx;
        ry[l] += w * w * dy;
    }
    (
        (s[0] + s[1]) + (s[2] + s[3]),
        (rx[0] + rx[1]) + (rx[2] + rx[3]),
        (ry[0] + ry[1]) + (ry[2] + ry[3]),
    )
}

/// The 2-D t-SNE map of the rows of `f` (at least 4 rows; `perplexity` in `(0,
/// (n − 1) / 3]`).
pub fn tsne_2d(f: &FeatureMatrix, cfg: &TsneConfig) -> Result<Tsne, EvalError> {
    let n = f.n;
    if n < 4 || f.dim == 0 {
        return Err(EvalError::Data(format!(
            "t-SNE needs at least 4 feature rows of at least one value (got {n} × {})",
            f.dim
        )));
    }
    if f.data.iter().any(|v| !v.is_finite()) {
        return Err(EvalError::Data(
            "the features for t-SNE have a non-finite value".into(),
        ));
    }
    let max = max_perplexity(n);
    if !(cfg.perplexity.is_finite() && cfg.perplexity > 0.0 && cfg.perplexity <= max) {
        return Err(EvalError::Config(format!(
            "t-SNE's perplexity must be in (0, {max:.2}] for {n} points (each point needs \
             3 × perplexity neighbours); got {}",
            cfg.perplexity
        )));
    }
    let p = affinities(f, cfg.perplexity);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut xs: Vec<f64> = Vec::with_capacity(n);
    let mut ys: Vec<f64> = Vec::with_capacity(n);
    for _ in 0..n {
        xs.push(1e-4 * normal(&mut rng));
        ys.push(1e-4 * normal(&mut rng));
    }
    let eta = (n as f64 / EXAGGERATION).max(200.0);
    let mut gains = vec![1.0f64; 2 * n];
    let mut update = vec![0.0f64; 2 * n];
    for it in 0..ITERATIONS {
        let (exaggeration, momentum) = if it < EARLY {
            (EXAGGERATION, 0.5)
        } else {
            (1.0, 0.8)
        };
        let rep: Vec<(f64, f64, f64)> = (0..n)
            .into_par_iter()
            .map(|i| repulsion(i, &xs, &ys))
            .collect();
        // Z = Σ_{i≠j} w_ij, in row order.
        let z = rep
            .iter()
            .map(|r| r.0 - 1.0)
            .sum::<f64>()
            .max(f64::MIN_POSITIVE);
        let grad: Vec<(f64, f64)> = (0..n)
            .into_par_iter()
            .map(|i| {
                let (mut ax, mut ay) = (0.0, 0.0);
                for &(j, pij) in &p[i] {
                    let dx = xs[i] - xs[j];
                    let dy = ys[i] - ys[j];
                    let w = 1.0 / (1.0 + dx * dx + dy * dy);
                    ax += pij * w * dx;
                    ay += pij * w * dy;
                }
                (
                    4.0 * (exaggeration * ax - rep[i].1 / z),
                    4.0 * (exaggeration * ay - rep[i].2 / z),
                )
            })
            .collect();
        for (i, g) in grad.iter().enumerate() {
            for (c, gc) in [(2 * i, g.0), (2 * i + 1, g.1)] {
                gains[c] = if (gc > 0.0) != (update[c] > 0.0) {
                    gains[c] + 0.2
                } else {
                    gains[c] * 0.8
                }
                .max(0.01);
                update[c] = momentum * update[c] - eta * gains[c] * gc;
            }
            xs[i] += update[2 * i];
            ys[i] += update[2 * i + 1];
        }
        let (mx, my) = (
            xs.iter().sum::<f64>() / n as f64,
            ys.iter().sum::<f64>() / n as f64,
        );
        xs.iter_mut().for_each(|x| *x -= mx);
        ys.iter_mut().for_each(|y| *y -= my);
    }
    // KL(P‖Q) of the final map.
    let z: f64 = (0..n)
        .into_par_iter()
        .map(|i| repulsion(i, &xs, &ys).0 - 1.0)
        .collect::<Vec<f64>>()
        .iter()
        .sum::<f64>()
        .max(f64::MIN_POSITIVE);
    let kl: f64 = (0..n)
        .map(|i| {
            p[i].iter()
                .filter(|(_, pij)| *pij > 0.0)
                .map(|&(j, pij)| {
                    let dx = xs[i] - xs[j];
                    let dy = ys[i] - ys[j];
                    let q = 1.0 / (1.0 + dx * dx + dy * dy) / z;
                    pij * (pij / q.max(f64::MIN_POSITIVE)).ln()
                })
                .sum::<f64>()
        })
        .sum();
    Ok(Tsne {
        coords: xs
            .iter()
            .zip(&ys)
            .map(|(&x, &y)| (x as f32, y as f32))
            .collect(),
        kl,
    })
}
