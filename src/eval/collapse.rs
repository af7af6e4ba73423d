//! Watching training for collapse: two indicators computed every epoch on a fixed
//! sample of training images (un-augmented, evaluation mode) and written to the epoch
//! records of `metrics.jsonl`.
//!
//! - **Normalised-embedding standard deviation** (SimSiam, Chen & He 2021, §4.1 and
//!   Fig. 2): every row is L2-normalised, the standard deviation of each dimension is
//!   taken over the sample and averaged over the dimensions. Isotropic Gaussian
//!   embeddings of `d` dimensions give about `1/√d`; a collapsed encoder, whose outputs
//!   are all the same vector, gives 0. It is measured on the projector output (the
//!   embedding the loss sees; the backbone features when the model has no head) —
//!   `embedding_std` — and on the backbone features — `feature_std`. The warning reads
//!   the projector's: backbone features follow a ReLU, so they share a large mean
//!   direction and sit well below `1/√d` even when healthy.
//! - **Effective rank** (RankMe, Garrido et al. 2023, eq. 1): `exp(−Σ pₖ log pₖ)` with
//!   `pₖ = σₖ / ‖σ‖₁ + ε`, `ε = 1e-7`, over the singular values `σ` of the (uncentred)
//!   `n × d` backbone feature matrix — `feature_rank`. It is `min(n, d)` when every
//!   singular value is equal and 1 when the features span one direction. The singular
//!   values are the square roots of the eigenvalues of the smaller Gram matrix (`ZᵀZ`
//!   or `ZZᵀ`, summed in `f64`), found by cyclic Jacobi rotations
//!   ([`symmetric_eigenvalues`]).
//!
//! A warning ([`Indicators::warnings`]) says collapse when `embedding_std · √d` falls
//! below [`STD_COLLAPSE`] (a tenth of the healthy value) or `feature_rank` below
//! [`RANK_COLLAPSE`] of `min(n, d)` (at least 2: one direction, or a handful out of
//! hundreds). Everything here is deterministic: the sample comes from the seed, the
//! sums run in a fixed order and the forward pass writes nothing back (batch norm in
//! evaluation mode), so resuming a run reproduces the same values and training the
//! same bits.

use dfdx::prelude::*;
use rand::SeedableRng;
use rand::seq::index::sample;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::EvalError;
use super::features::{FeatureMatrix, Normalize, check_normalize, pack_batch};
use crate::data::Dataset;
use crate::nn::model::Model;
use crate::nn::ops::EngineDevice;
use crate::nn::params::ParamStore;

/// RankMe's ε (Garrido et al. 2023, eq. 1), added to every normalised singular value.
pub const RANKME_EPS: f64 = 1e-7;

/// Collapse when the projector's normalised-embedding std is below this fraction of
/// the healthy `1/√d`.
pub const STD_COLLAPSE: f64 = 0.1;

/// Collapse when the backbone's effective rank is below this fraction of `min(n, d)`
/// (and in any case below 2).
pub const RANK_COLLAPSE: f64 = 0.01;

/// Names of the epoch-record fields this module writes, in order.
pub const FIELDS: [&str; 4] = [
    "embedding_std",
    "feature_std",
    "feature_rank",
    "watch_seconds",
];

/// Eigenvalues of the symmetric `n × n` matrix `a` (row-major; only symmetry is
/// assumed, the lower triangle is read), largest first, by the cyclic Jacobi method:
/// sweeps of plane rotations that zero each off-diagonal element in turn until the
/// off-diagonal mass is negligible against the diagonal (quadratic convergence, a
/// handful of sweeps). Deterministic; accurate to a few ulps of the largest
/// eigenvalue.
pub fn symmetric_eigenvalues(a: &[f64], n: usize) -> Result<Vec<f64>, EvalError> {
    if a.len() != n * n {
        return Err(EvalError::Data(format!(
            "{} values do not make a {n} × {n} matrix",
            a.len()
        )));
    }
    if a.iter().any(|v| !v.is_finite()) {
        return Err(EvalError::Data("the matrix has a non-finite value".into()));
    }
    // Symmetrise from the lower triangle, so rounding in the caller's upper half
    // cannot matter.
    let mut m = vec![0.0f64; n * n];
    for i in 0..n {
        for j in 0..=i {
            m[i * n + j] = a[i * n + j];
            m[j * n + i] = a[i * n + j];
        }
    }
    for _sweep in 0..64 {
        let off: f64 = (0..n)
            .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
            .map(|(i, j)| m[i * n + j] * m[i * n + j])
            .sum();
        let diag: f64 = (0..n).map(|i| m[i * n + i] * m[i * n + i]).sum();
        if off <= 1e-30 * diag || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = m[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let (app, aqq) = (m[p * n + p], m[q * n + q]);
                // An element below an ulp of both diagonal entries changes neither.
                if apq.abs() * 1e17 < app.abs().min(aqq.abs()) {
                    m[p * n + q] = 0.0;
                    m[q * n + p] = 0.0;
                    continue;
                }
                // The rotation angle φ with cot 2φ = θ; t = tan φ, the smaller root.
                let theta = (aqq - app) / (2.0 * apq);
                let t = if theta.is_infinite() {
                    0.5 / theta
                } else {
                    theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt())
                };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                m[p * n + p] = app - t * apq;
                m[q * n + q] = aqq + t * apq;
                m[p * n + q] = 0.0;
                m[q * n + p] = 0.0;
                for r in 0..n {
                    if r == p || r == q {
                        continue;
                    }
                    let (g, h) = (m[r * n + p], m[r * n + q]);
                    let (gp, hq) = (c * g - s * h, s * g + c * h);
                    m[r * n + p] = gp;
                    m[p * n + r] = gp;
                    m[r * n + q] = hq;
                    m[q * n + r] = hq;
                }
            }
        }
    }
    let mut ev: Vec<f64> = (0..n).map(|i| m[i * n + i]).collect();
    ev.sort_by(|x, y| y.total_cmp(x));
    Ok(ev)
}

/// SimSiam's collapse indicator: the mean over dimensions of the per-dimension
/// standard deviation (over rows, `n − 1` in the denominator as `torch.std`) of the
/// L2-normalised rows of `f` (a zero row stays zero, as `F.normalize`). About `1/√d`
/// for isotropic embeddings, 0 when every row points the same way.
pub fn normalized_std(f: &FeatureMatrix) -> Result<f64, EvalError> {
    let (n, d) = (f.n, f.dim);
    if n < 2 || d == 0 {
        return Err(EvalError::Data(format!(
            "the embedding spread needs at least two rows of at least one value (got {n} × {d})"
        )));
    }
    let mut sum = vec![0.0f64; d];
    let mut sq = vec![0.0f64; d];
    for r in f.data.chunks_exact(d) {
        let norm = r.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
        let inv = 1.0 / norm.max(1e-12);
        for ((s, q), &v) in sum.iter_mut().zip(&mut sq).zip(r) {
            let x = f64::from(v) * inv;
            *s += x;
            *q += x * x;
        }
    }
    let nf = n as f64;
    let std: f64 = sum
        .iter()
        .zip(&sq)
        .map(|(&s, &q)| ((q - s * s / nf) / (nf - 1.0)).max(0.0).sqrt())
        .sum();
    Ok(std / d as f64)
}

/// The Gram matrix of `f` in `f64`: `ZᵀZ` (`d × d`) when `d ≤ n`, else `ZZᵀ`
/// (`n × n`) — both have the squared singular values of `Z` as eigenvalues. Each
/// entry is one sum in row order (deterministic for any thread count).
fn gram(f: &FeatureMatrix) -> (Vec<f64>, usize) {
    let (n, d) = (f.n, f.dim);
    let z: Vec<f64> = f.data.iter().map(|&v| f64::from(v)).collect();
    if d <= n {
        // Columns as contiguous rows of the transpose.
        let mut zt = vec![0.0f64; d * n];
        for i in 0..n {
            for j in 0..d {
                zt[j * n + i] = z[i * d + j];
            }
        }
        let mut g = vec![0.0f64; d * d];
        g.par_chunks_mut(d).enumerate().for_each(|(i, row)| {
            let a = &zt[i * n..(i + 1) * n];
            for (j, out) in row.iter_mut().enumerate().take(i + 1) {
                let b = &zt[j * n..(j + 1) * n];
                *out = a.iter().zip(b).map(|(x, y)| x * y).sum();
            }
        });
        (g, d)
    } else {
        let mut g = vec![0.0f64; n * n];
        g.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
            let a = &z[i * d..(i + 1) * d];
            for (j, out) in row.iter_mut().enumerate().take(i + 1) {
                let b = &z[j * d..(j + 1) * d];
                *out = a.iter().zip(b).map(|(x, y)| x * y).sum();
            }
        });
        (g, n)
    }
}

/// RankMe (Garrido et al. 2023): the effective rank `exp(−Σ pₖ log pₖ)`,
/// `pₖ = σₖ / ‖σ‖₁ + ε`, of the singular values `σ` of `f` (uncentred, as the paper).
/// Between about 1 (one direction) and `min(n, d)` (all singular values equal); 0 for
/// an all-zero matrix, which has no direction at all.
pub fn effective_rank(f: &FeatureMatrix) -> Result<f64, EvalError> {
    if f.n == 0 || f.dim == 0 {
        return Err(EvalError::Data(format!(
            "the effective rank needs at least one row of at least one value (got {} × {})",
            f.n, f.dim
        )));
    }
    let (g, m) = gram(f);
    let sigma: Vec<f64> = symmetric_eigenvalues(&g, m)?
        .into_iter()
        .map(|l| l.max(0.0).sqrt())
        .collect();
    let total: f64 = sigma.iter().sum();
    if total <= 0.0 {
        return Ok(0.0);
    }
    let entropy: f64 = sigma
        .iter()
        .map(|s| s / total + RANKME_EPS)
        .map(|p| -p * p.ln())
        .sum();
    Ok(entropy.exp())
}

/// `n` training-image indices (all when the set is smaller), drawn once from `seed`
/// and sorted: the fixed sample the indicators are measured on every epoch.
pub fn sample_indices(len: usize, n: usize, seed: u64) -> Vec<usize> {
    if n >= len {
        return (0..len).collect();
    }
    // A stream of its own, so the sample does not depend on any other use of the seed.
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5741_5443_485f_5331);
    let mut idx = sample(&mut rng, len, n).into_vec();
    idx.sort_unstable();
    idx
}

/// The indicators of one measurement.
#[derive(Clone, Debug, PartialEq)]
pub struct Indicators {
    /// Images measured.
    pub samples: usize,
    /// [`normalized_std`] of the projector output (the backbone features without a
    /// head).
    pub embedding_std: f64,
    /// Dimensions of the projector output.
    pub embedding_dim: usize,
    /// [`normalized_std`] of the backbone features.
    pub feature_std: f64,
    /// [`effective_rank`] of the backbone features.
    pub feature_rank: f64,
    /// Dimensions of the backbone features.
    pub feature_dim: usize,
}

impl Indicators {
    /// The indicators of backbone features `features` and projector outputs
    /// `embeddings` of the same images.
    pub fn of(features: &FeatureMatrix, embeddings: &FeatureMatrix) -> Result<Self, EvalError> {
        if features.n != embeddings.n {
            return Err(EvalError::Data(format!(
                "{} feature rows but {} embedding rows",
                features.n, embeddings.n
            )));
        }
        Ok(Indicators {
            samples: features.n,
            embedding_std: normalized_std(embeddings)?,
            embedding_dim: embeddings.dim,
            feature_std: normalized_std(features)?,
            feature_rank: effective_rank(features)?,
            feature_dim: features.dim,
        })
    }

    /// The healthy `1/√d` of the projector output.
    pub fn healthy_std(&self) -> f64 {
        1.0 / (self.embedding_dim.max(1) as f64).sqrt()
    }

    /// The largest effective rank the sample allows, `min(n, d)`.
    pub fn max_rank(&self) -> usize {
        self.samples.min(self.feature_dim)
    }

    /// The rank below which the backbone counts as collapsed.
    pub fn rank_threshold(&self) -> f64 {
        (RANK_COLLAPSE * self.max_rank() as f64).max(2.0)
    }

    /// The epoch-record fields ([`FIELDS`] without the time).
    pub fn fields(&self) -> Vec<(String, f64)> {
        vec![
            (FIELDS[0].into(), self.embedding_std),
            (FIELDS[1].into(), self.feature_std),
            (FIELDS[2].into(), self.feature_rank),
        ]
    }

    /// The indicators an epoch record holds (`None` without them), given the sizes
    /// the record does not repeat.
    pub fn from_fields(
        get: impl Fn(&str) -> Option<f64>,
        samples: usize,
        embedding_dim: usize,
        feature_dim: usize,
    ) -> Option<Self> {
        Some(Indicators {
            samples,
            embedding_std: get(FIELDS[0])?,
            embedding_dim,
            feature_std: get(FIELDS[1])?,
            feature_rank: get(FIELDS[2])?,
            feature_dim,
        })
    }

    /// One short line for the progress output: `emb std 0.085×√d 0.68, rank 41.2/128`.
    pub fn summary(&self) -> String {
        format!(
            "embedding std {:.4} (healthy {:.4}), feature rank {:.1}/{}",
            self.embedding_std,
            self.healthy_std(),
            self.feature_rank,
            self.max_rank()
        )
    }

    /// What indicates collapse, one sentence each (empty when healthy).
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let ratio = self.embedding_std / self.healthy_std();
        if ratio.is_nan() || ratio < STD_COLLAPSE {
            out.push(format!(
                "the projector's L2-normalised outputs have a per-dimension std of {}, \
                 {:.1}% of the 1/√d = {:.4} of spread-out embeddings (below {:.0}%): the \
                 embeddings are collapsing to one point (SimSiam's indicator)",
                small(self.embedding_std),
                100.0 * ratio,
                self.healthy_std(),
                100.0 * STD_COLLAPSE
            ));
        }
        if self.feature_rank.is_nan() || self.feature_rank < self.rank_threshold() {
            out.push(format!(
                "the backbone features' effective rank is {:.2} of at most {} (below {:.2}): \
                 they span almost no directions (RankMe)",
                self.feature_rank,
                self.max_rank(),
                self.rank_threshold()
            ));
        }
        out
    }
}

/// A small non-negative number: 4 decimals, exponent form below 10⁻³, `0` for zero.
fn small(v: f64) -> String {
    match v {
        0.0 => "0".into(),
        v if v.abs() < 1e-3 => format!("{v:.2e}"),
        v => format!("{v:.4}"),
    }
}

/// Measures the indicators on `data` (the fixed sample): one forward pass in
/// evaluation mode, without a tape, in batches of `batch`, reading the backbone
/// features and the projector output of the same images.
pub fn measure<D: EngineDevice>(
    model: &Model,
    store: &mut ParamStore<D>,
    data: &Dataset,
    norm: &Normalize,
    batch: usize,
) -> Result<Indicators, EvalError> {
    if batch == 0 {
        return Err(EvalError::Config(
            "the feature batch size must be at least 1".into(),
        ));
    }
    if data.len() < 2 {
        return Err(EvalError::Data(format!(
            "the collapse indicators need at least 2 images (got {})",
            data.len()
        )));
    }
    check_normalize(norm, data)?;
    let (c, h, w) = data.shape();
    let model = model.with_input((h, w))?;
    let dev = store.device().clone();
    let n = data.len();
    let (mut feats, mut embs) = (Vec::new(), Vec::new());
    let (mut fd, mut ed) = (0, 0);
    let indices: Vec<usize> = (0..n).collect();
    for chunk in indices.chunks(batch) {
        let px = pack_batch(data, chunk, norm, |_, img| img)?;
        let x = dev.tensor_from_vec(px, (chunk.len(), c, h, w));
        let f = model.features(store, x, false)?;
        fd = f.shape().1;
        let fv = f.as_vec();
        let e = match &model.head {
            Some(head) => {
                let e = head.forward(store, f, false)?;
                ed = e.shape().1;
                e.as_vec()
            }
            None => {
                ed = fd;
                fv.clone()
            }
        };
        feats.extend(fv);
        embs.extend(e);
    }
    let f = FeatureMatrix::new(n, fd, feats, None)?;
    let e = FeatureMatrix::new(n, ed, embs, None)?;
    Indicators::of(&f, &e)
}
