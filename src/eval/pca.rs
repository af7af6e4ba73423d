//! 2-D principal-component projection of features, for the embedding picture.
//!
//! The covariance matrix is never formed (`dim²` values for ResNet-50's 2,048
//! features): block power iteration (subspace iteration) multiplies a block of `p = 4`
//! orthonormal vectors by `Xcᵀ·(Xc·V)` (`Xc` the centred features), orthonormalises it
//! (Gram–Schmidt) and rotates it onto the block's own eigenvectors (Rayleigh–Ritz, a
//! `p × p` Jacobi eigen-decomposition), until the two leading vectors stop moving. The
//! extra two vectors make the leading pair converge at the rate `λ₅/λ₂` rather than
//! `λ₃/λ₂`. The start block comes from a fixed seed and every sum runs in a fixed
//! order, so the result is deterministic; each component's sign is chosen so that its
//! largest-magnitude entry is positive.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::EvalError;
use super::features::FeatureMatrix;
use super::linalg::{View, matmul};

/// Block size of the subspace iteration.
const BLOCK: usize = 4;
/// Most iterations; stops earlier once the two leading vectors converge. Reaching it
/// means the leading eigenvalues are (nearly) tied, where any basis of their span is
/// an equally good answer.
const MAX_ITERS: usize = 200;
/// Convergence: `1 − |cos|` between a leading vector and its previous value.
const TOL: f64 = 1e-10;

/// The first two principal components of a set of features.
#[derive(Clone, Debug, PartialEq)]
pub struct Pca {
    /// Each row's coordinates on the two components (centred on the mean).
    pub coords: Vec<(f32, f32)>,
    /// The components (unit vectors of `dim` values), largest variance first.
    pub components: [Vec<f32>; 2],
    /// Variance (sample, `n − 1`) along each component.
    pub variance: [f64; 2],
    /// Fraction of the total variance along each component (0 when there is none).
    pub variance_ratio: [f64; 2],
    /// The mean that was subtracted.
    pub mean: Vec<f32>,
}

/// Orthonormalises the columns of `v` (`d × p`, row-major) by modified Gram–Schmidt; a
/// column that is (numerically) in the span of the previous ones is replaced by the
/// matching column of `fallback`, orthogonalised too, or zero when that fails as well.
fn orthonormalize(v: &mut [f64], d: usize, p: usize, fallback: &[f64]) {
    for j in 0..p {
        for attempt in 0..2 {
            for i in 0..j {
                let dot: f64 = (0..d).map(|r| v[r * p + i] * v[r * p + j]).sum();
                (0..d).for_each(|r| v[r * p + j] -= dot * v[r * p + i]);
            }
            let norm = (0..d).map(|r| v[r * p + j].powi(2)).sum::<f64>().sqrt();
            if norm > 1e-150 {
                (0..d).for_each(|r| v[r * p + j] /= norm);
                break;
            }
            (0..d).for_each(|r| {
                v[r * p + j] = if attempt == 0 {
                    fallback[r * p + j]
                } else {
                    0.0
                }
            });
        }
    }
}

/// Eigen-decomposition of the symmetric `p × p` matrix `a` by cyclic Jacobi rotations:
/// returns the eigenvalues and the eigenvectors as the columns of a `p × p` matrix.
fn jacobi_eigen(mut a: Vec<f64>, p: usize) -> (Vec<f64>, Vec<f64>) {
    let mut q = vec![0.0; p * p];
    (0..p).for_each(|i| q[i * p + i] = 1.0);
    for _ in 0..100 {
        let off: f64 = (0..p)
            .flat_map(|i| (0..p).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * p + j].powi(2))
            .sum();
        let scale: f64 = (0..p).map(|i| a[i * p + i].powi(2)).sum::<f64>();
        if off <= 1e-30 * scale.max(1e-300) {
            break;
        }
        for k in 0..p {
            for l in k + 1..p {
                let akl = a[k * p + l];
                if akl == 0.0 {
                    continue;
                }
                let theta = (a[l * p + l] - a[k * p + k]) / (2.0 * akl);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for i in 0..p {
                    let (aik, ail) = (a[i * p + k], a[i * p + l]);
                    a[i * p + k] = c * aik - s * ail;
                    a[i * p + l] = s * aik + c * ail;
                }
                for i in 0..p {
                    let (aki, ali) = (a[k * p + i], a[l * p + i]);
                    a[k * p + i] = c * aki - s * ali;
                    a[l * p + i] = s * aki + c * ali;
                }
                for i in 0..p {
                    let (qik, qil) = (q[i * p + k], q[i * p + l]);
                    q[i * p + k] = c * qik - s * qil;
                    q[i * p + l] = s * qik + c * qil;
                }
            }
        }
    }
    ((0..p).map(|i| a[i * p + i]).collect(), q)
}

/// `Xc · V` (`n × p`) for `V` given in f64 (`d × p`).
fn project(xc: &[f32], n: usize, d: usize, v: &[f64], p: usize) -> Vec<f32> {
    let v32: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    let mut z = vec![0.0f32; n * p];
    matmul(
        &mut z,
        View::new(xc, n, d),
        View::new(&v32, d, p),
        false,
        true,
    );
    z
}

/// The 2-D PCA of `features` (at least two rows).
pub fn pca_2d(features: &FeatureMatrix) -> Result<Pca, EvalError> {
    let (n, d) = (features.n, features.dim);
    if n < 2 || d == 0 {
        return Err(EvalError::Data(format!(
            "PCA needs at least two feature rows of at least one value (got {n} × {d})"
        )));
    }
    let mut mean = vec![0.0f64; d];
    for r in features.data.chunks_exact(d) {
        mean.iter_mut().zip(r).for_each(|(m, &v)| *m += v as f64);
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let mut xc = features.data.clone();
    for r in xc.chunks_exact_mut(d) {
        r.iter_mut()
            .zip(&mean)
            .for_each(|(v, &m)| *v = (*v as f64 - m) as f32);
    }
    let total: f64 = xc.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / (n - 1) as f64;

    let p = BLOCK.min(d);
    let mut rng = ChaCha8Rng::seed_from_u64(0x9ca0);
    let start: Vec<f64> = (0..d * p).map(|_| rng.gen_range(-1.0..1.0)).collect();
    let mut v = start.clone();
    orthonormalize(&mut v, d, p, &start);
    let mut eig = vec![0.0; p];
    for _ in 0..MAX_ITERS {
        // W = Xcᵀ (Xc V), then orthonormalise and rotate onto the Ritz vectors.
        let z = project(&xc, n, d, &v, p);
        let mut w32 = vec![0.0f32; d * p];
        matmul(
            &mut w32,
            View::new(&xc, n, d).t(),
            View::new(&z, n, p),
            false,
            true,
        );
        let mut w: Vec<f64> = w32.into_iter().map(f64::from).collect();
        orthonormalize(&mut w, d, p, &start);
        let zw = project(&xc, n, d, &w, p);
        let mut h = vec![0.0f64; p * p];
        for i in 0..p {
            for j in 0..p {
                h[i * p + j] = (0..n)
                    .map(|r| zw[r * p + i] as f64 * zw[r * p + j] as f64)
                    .sum::<f64>()
                    / (n - 1) as f64;
            }
        }
        let (vals, vecs) = jacobi_eigen(h, p);
        let mut idx: Vec<usize> = (0..p).collect();
        idx.sort_by(|&a, &b| vals[b].total_cmp(&vals[a]).then(a.cmp(&b)));
        let mut next = vec![0.0f64; d * p];
        for r in 0..d {
            for (jn, &j) in idx.iter().enumerate() {
                next[r * p + jn] = (0..p).map(|i| w[r * p + i] * vecs[i * p + j]).sum();
            }
        }
        eig = idx.iter().map(|&j| vals[j].max(0.0)).collect();
        let moved = (0..p.min(2)).any(|j| {
            let cos: f64 = (0..d).map(|r| v[r * p + j] * next[r * p + j]).sum();
            1.0 - cos.abs() > TOL
        });
        v = next;
        if !moved {
            break;
        }
    }
    let mut components = [vec![0.0f32; d], vec![0.0f32; d]];
    for (j, comp) in components.iter_mut().enumerate().take(p.min(2)) {
        let col: Vec<f64> = (0..d).map(|r| v[r * p + j]).collect();
        let big = col
            .iter()
            .copied()
            .fold(0.0f64, |m, x| if x.abs() > m.abs() { x } else { m });
        let sign = if big < 0.0 { -1.0 } else { 1.0 };
        comp.iter_mut()
            .zip(&col)
            .for_each(|(c, &x)| *c = (sign * x) as f32);
    }
    let mut basis = vec![0.0f64; d * 2];
    for r in 0..d {
        basis[r * 2] = components[0][r] as f64;
        basis[r * 2 + 1] = components[1][r] as f64;
    }
    let z = project(&xc, n, d, &basis, 2);
    let coords = z.chunks_exact(2).map(|c| (c[0], c[1])).collect();
    let variance = [eig[0], eig.get(1).copied().unwrap_or(0.0)];
    let ratio = |v: f64| if total > 0.0 { v / total } else { 0.0 };
    Ok(Pca {
        coords,
        components,
        variance,
        variance_ratio: [ratio(variance[0]), ratio(variance[1])],
        mean: mean.iter().map(|&m| m as f32).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jacobi_diagonalises_a_symmetric_matrix() {
        // Eigenvalues of [[2, 1], [1, 2]] are 3 and 1.
        let (vals, vecs) = jacobi_eigen(vec![2.0, 1.0, 1.0, 2.0], 2);
        let mut sorted = vals.clone();
        sorted.sort_by(f64::total_cmp);
        assert!((sorted[0] - 1.0).abs() < 1e-12 && (sorted[1] - 3.0).abs() < 1e-12);
        let k = if vals[0] > vals[1] { 0 } else { 1 };
        assert!((vecs[k].abs() - 0.5f64.sqrt()).abs() < 1e-12);
        assert!((vecs[2 + k].abs() - 0.5f64.sqrt()).abs() < 1e-12);
    }
}
