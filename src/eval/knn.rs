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

use std::collections::BinaryHeap;

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
const QUERY_BLOCK: usize = 128;

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

/// NaN counts as the worst similarity.
fn key(s: f32) -> f32 {
    if s.is_nan() { f32::NEG_INFINITY } else { s }
}

/// A candidate neighbour in the top-k heap. The heap's top is the *worst* candidate:
/// lowest score, and among equal scores the highest index, so that the kept set is
/// the first `k` of the order "score descending, then index ascending".
#[derive(Clone, Copy, PartialEq)]
struct Cand {
    score: f32,
    index: usize,
}

impl Eq for Cand {}

impl Ord for Cand {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Greater = worse.
        other
            .score
            .total_cmp(&self.score)
            .then(self.index.cmp(&other.index))
    }
}

impl PartialOrd for Cand {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The `k` best `(index, score)` of `scores`, best first. One comparison rejects most
/// entries; the heap holds at most `k`.
fn top_k(scores: impl Iterator<Item = f32>, k: usize, heap: &mut BinaryHeap<Cand>) -> Vec<Cand> {
    heap.clear();
    // Once the heap is full, a candidate enters only with a score strictly above the
    // worst kept one: indices arrive in increasing order, so an equal score loses the
    // tie. NaN fails the comparison, as the worst score should.
    let mut threshold = f32::INFINITY;
    for (index, s) in scores.enumerate() {
        if heap.len() < k {
            heap.push(Cand {
                score: key(s),
                index,
            });
            if heap.len() == k {
                threshold = heap.peek().map_or(f32::INFINITY, |c| c.score);
            }
        } else if s > threshold {
            if let Some(mut worst) = heap.peek_mut() {
                *worst = Cand { score: s, index };
            }
            threshold = heap.peek().map_or(f32::INFINITY, |c| c.score);
        }
    }
    let mut out: Vec<Cand> = heap.drain().collect();
    out.sort_unstable();
    out
}

/// The `k` training rows most similar to each query row, best first (larger
/// similarity, then lower training index), as `(training index, similarity)`.
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
            let mut heap = BinaryHeap::with_capacity(k + 1);
            (0..rows)
                .map(|r| {
                    let row = &sim[r * n..(r + 1) * n];
                    match (&t_sq, &q_sq) {
                        // −‖q − t‖² = 2·q·t − ‖t‖² − ‖q‖²: rank by the first two terms,
                        // take the square root for the k kept only.
                        (Some(ts), Some(qs)) => {
                            let qn = qs[start + r];
                            let scores = row.iter().zip(ts).map(|(&dot, &tn)| 2.0 * dot - tn);
                            top_k(scores, k, &mut heap)
                                .into_iter()
                                .map(|c| (c.index, -(qn - c.score).max(0.0).sqrt()))
                                .collect()
                        }
                        _ => top_k(row.iter().copied(), k, &mut heap)
                            .into_iter()
                            .map(|c| (c.index, c.score))
                            .collect(),
                    }
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

/// The `knn` downstream task: [`knn`] on one kind of features of every row.
#[derive(Clone, Debug, PartialEq)]
pub struct KnnTask {
    /// The classifier's settings.
    pub cfg: KnnConfig,
    /// Backbone or head features.
    pub features: super::features::Which,
    /// Also measure the untrained network and the raw pixels.
    pub baselines: bool,
    /// Also measure the trained encoder every this many epochs during training (0:
    /// only at the end).
    pub every_epochs: usize,
    /// The labelled fractions of the training split to measure at (`[1.0]`: all).
    pub fractions: Vec<f64>,
}

impl KnnTask {
    /// Top-1 and top-5 of every row at each labelled fraction: one `results.json`
    /// entry, two report columns (the largest fraction), the trained row's
    /// `knn_top1`/`knn_top5` record, and the label-efficiency table with several
    /// fractions.
    pub fn run<D: crate::nn::EngineDevice>(
        &self,
        enc: &mut super::downstream::Encoders<'_, D>,
    ) -> Result<super::downstream::TaskOutput, super::downstream::DownstreamError> {
        let k = self.cfg.k;
        let json = serde_json::json!({"task": "knn", "k": k,
            "temperature": self.cfg.temperature,
            "features": format!("{:?}", self.features).to_lowercase()});
        let mut by = Vec::new();
        for &f in &self.fractions {
            let res = enc.each_row(self.baselines, self.features, f, |a, b| {
                knn(a, b, &self.cfg)
            })?;
            by.push((f, enc.labelled(f)?.len(), res));
        }
        Ok(super::downstream::fraction_output(
            json,
            &format!("kNN top-1 (k={k})"),
            "knn",
            true,
            &by,
            |r| (r.top1, r.top5),
            |_, _| {},
        ))
    }
}
