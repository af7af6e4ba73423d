//! Weighted k-nearest-neighbour classification of frozen features, as in InstDisc
//! (Wu et al., "Unsupervised Feature Learning via Non-Parametric Instance
//! Discrimination", CVPR 2018, §3.4).
//!
//! For a test feature, the `k` training features most similar to it vote for their
//! class with weight `exp(sim / T)`; the class with the largest total wins (top-1), and
//! a hit among the five largest counts for top-5. Similarity is the cosine of the
//! L2-normalised features (InstDisc's) or the negative Euclidean distance.
//!
//! The weights are computed as `exp((sim − sim_max) / T)` with `sim_max` the query's
//! best neighbour: the same votes up to one positive factor per query, so the same
//! ranking, without overflow or underflow at small temperatures or large distances.

use rayon::prelude::*;

use super::features::FeatureMatrix;
use super::linalg::{View, matmul};
use super::{EvalError, class_count, labels_of, topk_accuracy};

/// How similar two features are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Metric {
    /// Cosine similarity (dot product of L2-normalised features).
    #[default]
    Cosine,
    /// Negative Euclidean distance.
    Euclidean,
}

/// kNN settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KnnConfig {
    /// Neighbours that vote (≥ 1; at most the number of training features are used).
    pub k: usize,
    /// Temperature `T > 0` of the vote weights `exp(sim / T)`.
    pub temperature: f64,
    /// Similarity.
    pub metric: Metric,
}

impl Default for KnnConfig {
    /// k = 20, T = 0.07 (InstDisc's temperature), cosine.
    fn default() -> Self {
        KnnConfig {
            k: 20,
            temperature: 0.07,
            metric: Metric::Cosine,
        }
    }
}

/// kNN accuracy on the test features.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KnnResult {
    /// Top-1 accuracy in percent.
    pub top1: f64,
    /// Top-5 accuracy in percent (100 when there are at most five classes).
    pub top5: f64,
    /// Neighbours actually used: `min(k, training features)`.
    pub k: usize,
}

/// Query rows handled together: one block's similarities (`QUERY_BLOCK × n_train`)
/// stay small, and blocks spread over rayon's threads.
const QUERY_BLOCK: usize = 64;

fn l2_normalized(m: &FeatureMatrix) -> Vec<f32> {
    let mut out = m.data.clone();
    if m.dim == 0 {
        return out;
    }
    out.par_chunks_mut(m.dim).for_each(|row| {
        let norm = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
        // F.normalize's eps: an all-zero row stays zero.
        let inv = 1.0 / norm.max(1e-12);
        row.iter_mut().for_each(|v| *v = (*v as f64 * inv) as f32);
    });
    out
}

fn squared_norms(m: &FeatureMatrix) -> Vec<f32> {
    if m.dim == 0 {
        return vec![0.0; m.n];
    }
    m.data
        .par_chunks(m.dim)
        .map(|r| r.iter().map(|&v| v * v).sum())
        .collect()
}

/// Orders `(index, similarity)` pairs best first: larger similarity, then lower index;
/// NaN counts as the worst similarity.
fn better(a: &(usize, f32), b: &(usize, f32)) -> std::cmp::Ordering {
    let key = |s: f32| if s.is_nan() { f32::NEG_INFINITY } else { s };
    key(b.1).total_cmp(&key(a.1)).then(a.0.cmp(&b.0))
}

/// The `k` training rows most similar to each query row, best first, as
/// `(training index, similarity)`.
pub fn nearest(
    train: &FeatureMatrix,
    queries: &FeatureMatrix,
    k: usize,
    metric: Metric,
) -> Result<Vec<Vec<(usize, f32)>>, EvalError> {
    if k == 0 {
        return Err(EvalError::Config("k must be at least 1".into()));
    }
    if train.n == 0 {
        return Err(EvalError::Data("there are no training features".into()));
    }
    if train.dim != queries.dim {
        return Err(EvalError::Data(format!(
            "training features have {} values but the queries have {}",
            train.dim, queries.dim
        )));
    }
    let k = k.min(train.n);
    let (n, d) = (train.n, train.dim);
    let (t, q, t_sq, q_sq) = match metric {
        Metric::Cosine => (l2_normalized(train), l2_normalized(queries), None, None),
        Metric::Euclidean => (
            train.data.clone(),
            queries.data.clone(),
            Some(squared_norms(train)),
            Some(squared_norms(queries)),
        ),
    };
    let blocks: Vec<usize> = (0..queries.n).step_by(QUERY_BLOCK).collect();
    let per_block: Vec<Vec<Vec<(usize, f32)>>> = blocks
        .par_iter()
        .map(|&start| {
            let rows = QUERY_BLOCK.min(queries.n - start);
            let mut sim = vec![0.0f32; rows * n];
            let qb = View::new(&q[start * d..(start + rows) * d], rows, d);
            matmul(&mut sim, qb, View::new(&t, n, d).t(), false, false);
            let mut cand: Vec<(usize, f32)> = Vec::with_capacity(n);
            (0..rows)
                .map(|r| {
                    let row = &sim[r * n..(r + 1) * n];
                    cand.clear();
                    match (&t_sq, &q_sq) {
                        (Some(ts), Some(qs)) => {
                            let qn = qs[start + r];
                            cand.extend(row.iter().zip(ts).enumerate().map(|(j, (&dot, &tn))| {
                                (j, -(qn + tn - 2.0 * dot).max(0.0).sqrt())
                            }));
                        }
                        _ => cand.extend(row.iter().copied().enumerate()),
                    }
                    if k < cand.len() {
                        cand.select_nth_unstable_by(k - 1, better);
                        cand.truncate(k);
                    }
                    cand.sort_unstable_by(better);
                    cand.clone()
                })
                .collect()
        })
        .collect();
    Ok(per_block.into_iter().flatten().collect())
}

/// Classifies every test feature by a weighted vote of its `cfg.k` nearest training
/// features; both matrices need labels.
pub fn knn(
    train: &FeatureMatrix,
    test: &FeatureMatrix,
    cfg: &KnnConfig,
) -> Result<KnnResult, EvalError> {
    if !(cfg.temperature.is_finite() && cfg.temperature > 0.0) {
        return Err(EvalError::Config(format!(
            "the kNN temperature must be positive, not {}",
            cfg.temperature
        )));
    }
    let train_labels = labels_of(train, "training")?;
    let test_labels = labels_of(test, "test")?;
    if test.n == 0 {
        return Err(EvalError::Data("there are no test features".into()));
    }
    let neighbours = nearest(train, test, cfg.k, cfg.metric)?;
    let classes = class_count(train_labels, test_labels);
    let mut scores = vec![0.0f32; test.n * classes];
    scores
        .par_chunks_mut(classes)
        .zip(neighbours.par_iter())
        .for_each(|(row, nb)| {
            let best = nb.first().map_or(0.0, |&(_, s)| s as f64);
            let mut acc = vec![0.0f64; classes];
            for &(j, s) in nb {
                let w = ((s as f64 - best) / cfg.temperature).exp();
                if w.is_finite() {
                    acc[train_labels[j] as usize] += w;
                }
            }
            row.iter_mut().zip(&acc).for_each(|(d, &a)| *d = a as f32);
        });
    let (top1, top5) = topk_accuracy(&scores, classes, test_labels);
    Ok(KnnResult {
        top1,
        top5,
        k: cfg.k.min(train.n),
    })
}
