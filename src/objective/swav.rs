//! SwAV (Caron et al. 2020, "Unsupervised Learning of Visual Features by Contrasting
//! Cluster Assignments"): Sinkhorn-Knopp codes and the swapped-prediction loss.

use dfdx::prelude::*;

use super::{
    BuildArgs, CommFacts, Encoder, Loss, Method, MethodPlan, ModelFacts, Objective, ObjectiveError,
    StateTensor, StepBatch, check_rows, check_state, check_temperature, per_view, state_tensors,
};
use crate::nn::model::{Model, Prototypes};
use crate::nn::ops::{EngineDevice, T2};
use crate::nn::params::ParamStore;

/// Sinkhorn-Knopp codes of `scores` (`n × k`, row-major: sample `i`'s scores against
/// the `k` prototypes), as facebookresearch/swav's `distributed_sinkhorn` on one process:
/// `Q = exp(scores / ε)ᵀ`, divided by its sum, then `iterations` times rows (prototypes)
/// scaled to sum `1/k` and columns (samples) to `1/n`, finally `× n`, transposed back.
/// Each returned row (sample) sums to 1; prototypes receive equal mass `n/k` up to the
/// last iteration's row step.
///
/// Computed in `f64`. When `(max − min) / ε` of the scores is at most 300, as for
/// cosine scores at the usual ε, it runs the reference's multiplicative updates with
/// the largest score subtracted first (the constant factor cancels in the first
/// normalisation): every entry then stays a normal `f64` through all iterations. A
/// wider span (a small ε, or scores that are not cosines) would underflow whole
/// prototypes or samples to 0 and give NaN codes, so there the same updates run on
/// `log Q`, which is exact at any scale. No gradient.
pub fn sinkhorn(scores: &[f32], n: usize, k: usize, epsilon: f64, iterations: usize) -> Vec<f32> {
    assert_eq!(scores.len(), n * k, "sinkhorn: scores are not n × k");
    if n == 0 || k == 0 {
        return Vec::new();
    }
    let (lo, hi) = scores
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &s| {
            (lo.min(s), hi.max(s))
        });
    if (hi as f64 - lo as f64) / epsilon > SINKHORN_LINEAR_SPAN {
        return sinkhorn_log(scores, n, k, epsilon, iterations);
    }
    let max = hi as f64;
    let mut q: Vec<f64> = scores
        .iter()
        .map(|&s| ((s as f64 - max) / epsilon).exp())
        .collect();
    let total: f64 = q.iter().sum();
    q.iter_mut().for_each(|x| *x /= total);
    let mut proto = vec![0.0f64; k];
    for _ in 0..iterations {
        // Rows of Q in the reference are prototypes: our columns.
        proto.iter_mut().for_each(|p| *p = 0.0);
        for row in q.chunks(k) {
            for (p, x) in proto.iter_mut().zip(row) {
                *p += x;
            }
        }
        for row in q.chunks_mut(k) {
            for (x, p) in row.iter_mut().zip(&proto) {
                *x /= p * k as f64;
            }
        }
        for row in q.chunks_mut(k) {
            let s: f64 = row.iter().sum();
            row.iter_mut().for_each(|x| *x /= s * n as f64);
        }
    }
    q.iter().map(|&x| (x * n as f64) as f32).collect()
}

/// The widest score span, in units of ε, that `sinkhorn` runs multiplicatively.
///
/// With `R` = span / ε every entry of `exp((s − max) / ε)` lies in `[e^−R, 1]`; each
/// scaling step keeps the ratio of two entries of one row or column within `e^2R`, so
/// every entry stays above `e^−2R / (n·k)`: a normal `f64` (> 1e−308) for `R ≤ 300`
/// and `n·k` up to 1e10.
const SINKHORN_LINEAR_SPAN: f64 = 300.0;

/// [`sinkhorn`]'s updates on `log Q`: each normalisation subtracts a log-sum-exp.
fn sinkhorn_log(scores: &[f32], n: usize, k: usize, epsilon: f64, iterations: usize) -> Vec<f32> {
    let mut l: Vec<f64> = scores.iter().map(|&s| s as f64 / epsilon).collect();
    let total = log_sum_exp(&l);
    l.iter_mut().for_each(|x| *x -= total);
    let (ln_k, ln_n) = ((k as f64).ln(), (n as f64).ln());
    let mut max = vec![0.0f64; k];
    let mut sum = vec![0.0f64; k];
    for _ in 0..iterations {
        // Prototypes (our columns) to mass 1/k.
        max.fill(f64::NEG_INFINITY);
        for row in l.chunks(k) {
            for (m, &x) in max.iter_mut().zip(row) {
                *m = m.max(x);
            }
        }
        sum.fill(0.0);
        for row in l.chunks(k) {
            for ((s, &m), &x) in sum.iter_mut().zip(&max).zip(row) {
                *s += (x - m).exp();
            }
        }
        for (m, s) in max.iter_mut().zip(&sum) {
            *m += s.ln() + ln_k;
        }
        for row in l.chunks_mut(k) {
            for (x, &m) in row.iter_mut().zip(&max) {
                *x -= m;
            }
        }
        // Samples (our rows) to mass 1/n.
        for row in l.chunks_mut(k) {
            let c = log_sum_exp(row) + ln_n;
            row.iter_mut().for_each(|x| *x -= c);
        }
    }
    l.iter().map(|&x| (x + ln_n).exp() as f32).collect()
}

/// `log Σ exp(x)`, shifted by the maximum.
fn log_sum_exp(x: &[f64]) -> f64 {
    let m = x.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
    if !m.is_finite() {
        return m;
    }
    m + x.iter().map(|&v| (v - m).exp()).sum::<f64>().ln()
}

/// SwAV's swapped-prediction loss: `scores` is `(V·N, K)`, view-major (row `v·N + i`:
/// view `v` of image `i` against the prototypes, from L2-normalised embeddings);
/// `codes[a]` are the Sinkhorn codes (`N × K`) of view `a` for the first `codes.len()`
/// views (the global crops). For each such view `a`, every other view `v` (global or
/// local) predicts its codes: `−mean_i Σ_k q_a[i,k] · log softmax(scores_v[i] / τ)[k]`,
/// summed over `v ≠ a` and divided by `V − 1`; the result is averaged over the
/// assigned views — main_swav.py's loss on one process.
pub fn loss<D: EngineDevice, T: Tape<f32, D>>(
    scores: T2<D, T>,
    n: usize,
    codes: &[Vec<f32>],
    temperature: f32,
) -> Result<Tensor<(), f32, D, T>, ObjectiveError> {
    check_temperature(temperature, "SwAV temperature")?;
    let (m, k) = *scores.shape();
    if n == 0 {
        return Err(ObjectiveError::Shape("SwAV: a batch of no images".into()));
    }
    let views = per_view(m, m / n.max(1), "SwAV scores")?;
    let v_count = m / n;
    if views != n || v_count < 2 {
        return Err(ObjectiveError::Shape(format!(
            "SwAV: {m} score rows are not at least 2 views of {n} images"
        )));
    }
    if codes.is_empty() || codes.len() > v_count {
        return Err(ObjectiveError::Shape(format!(
            "SwAV: codes for {} views of {v_count}",
            codes.len()
        )));
    }
    if let Some(c) = codes.iter().find(|c| c.len() != n * k) {
        return Err(ObjectiveError::Shape(format!(
            "SwAV: codes of {} values for {n} images × {k} prototypes",
            c.len()
        )));
    }
    check_rows(&scores, "SwAV scores", m)?;
    let dev = scores.device().clone();
    let a_count = codes.len();
    let scale = 1.0 / (n as f32 * (v_count - 1) as f32 * a_count as f32);
    let mut w = vec![0.0f32; m * k];
    for (a, q) in codes.iter().enumerate() {
        for v in (0..v_count).filter(|&v| v != a) {
            let dst = &mut w[v * n * k..(v + 1) * n * k];
            for (d, s) in dst.iter_mut().zip(q) {
                *d += s * scale;
            }
        }
    }
    let lsm = (scores * (1.0 / temperature)).log_softmax::<Axis<1>>();
    Ok((lsm * dev.tensor_from_vec(w, (m, k)))
        .sum::<(), _>()
        .negate())
}

/// SwAV's hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SwavConfig {
    /// Temperature τ of the scores.
    pub temperature: f32,
    /// Sinkhorn ε.
    pub epsilon: f64,
    /// Sinkhorn iterations.
    pub iterations: usize,
    /// Optimiser steps at the start during which the prototypes stay untouched.
    pub freeze_prototypes_steps: u64,
    /// Feature queue `(size per assigned view, first epoch)`.
    pub queue: Option<(usize, usize)>,
    /// Views whose codes are computed: the first ones (global crops).
    pub assign_views: usize,
}

impl Method for SwavConfig {
    fn name(&self) -> &'static str {
        "swav"
    }

    fn state_layout(&self, dim: usize) -> Vec<(String, Vec<usize>)> {
        match self.queue {
            None => Vec::new(),
            Some((size, _)) => vec![
                ("queue".into(), vec![self.assign_views, size, dim]),
                ("queue_filled".into(), vec![1]),
            ],
        }
    }

    fn plan(&self, model: &ModelFacts) -> MethodPlan {
        let mut p = MethodPlan::from_layout(&self.state_layout(model.dim));
        if let Some(prototypes) = model.prototypes {
            p.parts
                .insert(0, format!("{prototypes} prototypes (parameters)"));
        }
        p
    }

    fn comm(&self, step: &CommFacts) -> (f64, usize) {
        // Per assigned view: the embeddings for the queue, and Sinkhorn's sums.
        let assign = 2.0;
        let prototypes = step.prototypes.unwrap_or(0);
        let sums = (self.iterations as f64 + 2.0) * prototypes as f64 * 8.0 * step.ring;
        (
            assign * (step.embedding_bytes + sums),
            2 * (self.iterations + 3),
        )
    }

    fn build<D: EngineDevice>(
        &self,
        on: &BuildArgs<'_, D>,
    ) -> Result<Box<dyn Objective<D>>, ObjectiveError> {
        Ok(Box::new(Swav::new(
            on.encoder.model(),
            *self,
            on.dim,
            on.views,
            on.batch,
        )?))
    }
}

#[derive(Clone, Debug)]
struct FeatureQueue {
    size: usize,
    start_epoch: usize,
    /// `assign_views × size × dim`, newest first, as SwAV's `queue[i]`.
    data: Vec<f32>,
    /// Rows written so far (capped at `size`); the queue is used once it is full.
    filled: usize,
}

/// SwAV as an [`Objective`].
///
/// Before every step the prototypes are L2-normalised in place in the store, and held
/// untouched (not trainable: no gradient step, no momentum, no weight decay) for the
/// first `freeze_prototypes_steps` steps. The loss: head outputs of every view
/// (consecutive same-size crops as one batch), L2-normalised; scores against the
/// prototypes; codes without gradient from each global view's scores — with the queue
/// (from `start_epoch`, once it has filled) its stored embeddings' scores are prepended
/// and only the batch's rows kept; then the queue shifts the batch's embeddings in.
#[derive(Clone, Debug)]
pub struct Swav {
    cfg: SwavConfig,
    prototypes: Prototypes,
    views: usize,
    dim: usize,
    queue: Option<FeatureQueue>,
}

impl Swav {
    /// SwAV for `model` (which must have prototypes), `views` views per image with the
    /// first `cfg.assign_views` assigned, `batch` images per step.
    pub fn new(
        model: &Model,
        cfg: SwavConfig,
        dim: usize,
        views: usize,
        batch: usize,
    ) -> Result<Swav, ObjectiveError> {
        check_temperature(cfg.temperature, "SwAV temperature")?;
        if !(cfg.epsilon.is_finite() && cfg.epsilon > 0.0) {
            return Err(ObjectiveError::Config(format!(
                "Sinkhorn epsilon must be positive, got {}",
                cfg.epsilon
            )));
        }
        let Some(prototypes) = model.prototypes.clone() else {
            return Err(ObjectiveError::Config(
                "SwAV needs a model with prototypes".into(),
            ));
        };
        if views < 2 || cfg.assign_views == 0 || cfg.assign_views > views {
            return Err(ObjectiveError::Config(format!(
                "SwAV needs at least 2 views and 1 to {views} of them assigned, got {} assigned",
                cfg.assign_views
            )));
        }
        let queue = match cfg.queue {
            None => None,
            Some((size, start_epoch)) => {
                if batch == 0 || size == 0 || size % batch != 0 {
                    return Err(ObjectiveError::Shape(format!(
                        "SwAV's queue of {size} embeddings must be a positive multiple of the batch of {batch}"
                    )));
                }
                Some(FeatureQueue {
                    size,
                    start_epoch,
                    data: vec![0.0; cfg.assign_views * size * dim],
                    filled: 0,
                })
            }
        };
        Ok(Swav {
            cfg,
            prototypes,
            views,
            dim,
            queue,
        })
    }
}

impl Swav {
    /// The codes of this rank's images when the batch is spread over ranks: the
    /// Sinkhorn of the whole global batch (and the queue, split between the ranks) with
    /// its sums all-reduced, as facebookresearch/swav's `distributed_sinkhorn`; the
    /// queue takes the gathered embeddings of every rank, so it is the same everywhere.
    fn distributed_codes<D: EngineDevice>(
        &mut self,
        store: &ParamStore<D>,
        batch: &StepBatch<'_>,
        emb_host: &[f32],
        scores_host: &[f32],
        n: usize,
        k: usize,
    ) -> Result<Vec<Vec<f32>>, ObjectiveError> {
        let dist = batch.dist;
        let (world, rank) = (dist.world(), dist.rank());
        let d = self.dim;
        let dev = store.device().clone();
        let mut codes = Vec::with_capacity(self.cfg.assign_views);
        for a in 0..self.cfg.assign_views {
            let own = &scores_host[a * n * k..(a + 1) * n * k];
            let mut out = Vec::new();
            let mut queue_rows = 0;
            if let Some(q) = &mut self.queue
                && batch.epoch >= q.start_epoch
            {
                let qa = &mut q.data[a * q.size * d..(a + 1) * q.size * d];
                if q.filled >= q.size {
                    // This rank scores its share of the queue.
                    let per = q.size / world;
                    let w = store
                        .get(self.prototypes.weight_id())
                        .tensor
                        .clone()
                        .reshape_like(&(k, d));
                    let part = qa[rank * per * d..(rank + 1) * per * d].to_vec();
                    let qt = dev.tensor_from_vec(part, (per, d));
                    out = qt.matmul(w.permute::<_, Axes2<1, 0>>()).as_vec();
                    queue_rows = q.size;
                }
                let all = crate::dist::timed("comm.gather", || {
                    dist.all_gather(&emb_host[a * n * d..(a + 1) * n * d])
                });
                let b = all.len() / d;
                qa.copy_within(0..(q.size - b) * d, b * d);
                qa[..b * d].copy_from_slice(&all);
            }
            out.extend_from_slice(own);
            let global_rows = queue_rows + n * world;
            let c = sinkhorn_distributed(
                &out,
                global_rows,
                k,
                self.cfg.epsilon,
                self.cfg.iterations,
                dist,
            );
            codes.push(c[c.len() - n * k..].to_vec());
        }
        if let Some(q) = &mut self.queue
            && batch.epoch >= q.start_epoch
        {
            q.filled = (q.filled + n * world).min(q.size);
        }
        Ok(codes)
    }
}

/// [`sinkhorn`] over rows spread across the ranks of `dist`: `scores` holds this
/// rank's rows (`· × k`), `n` is the number of rows over all ranks. The prototype
/// (column) sums, the total and the extreme scores are all-reduced; row sums are local.
/// Returns this rank's rows of the codes.
pub fn sinkhorn_distributed(
    scores: &[f32],
    n: usize,
    k: usize,
    epsilon: f64,
    iterations: usize,
    dist: &dyn crate::dist::Collective,
) -> Vec<f32> {
    if n == 0 || k == 0 {
        return Vec::new();
    }
    let (lo, hi) = scores
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &s| {
            (lo.min(s), hi.max(s))
        });
    let mut ext = [hi as f64, -(lo as f64)];
    dist.all_reduce_max_f64(&mut ext);
    let (hi, lo) = (ext[0], -ext[1]);
    let all_sum =
        |v: &mut [f64]| crate::dist::timed("comm.sinkhorn", || dist.all_reduce_sum_f64(v));
    let all_max =
        |v: &mut [f64]| crate::dist::timed("comm.sinkhorn", || dist.all_reduce_max_f64(v));
    if (hi - lo) / epsilon > SINKHORN_LINEAR_SPAN {
        let mut l: Vec<f64> = scores.iter().map(|&s| s as f64 / epsilon).collect();
        let mut m = [l.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b))];
        all_max(&mut m);
        let mut t = [l.iter().map(|&x| (x - m[0]).exp()).sum::<f64>()];
        all_sum(&mut t);
        let total = m[0] + t[0].ln();
        l.iter_mut().for_each(|x| *x -= total);
        let (ln_k, ln_n) = ((k as f64).ln(), (n as f64).ln());
        let mut max = vec![0.0f64; k];
        let mut sum = vec![0.0f64; k];
        for _ in 0..iterations {
            max.fill(f64::NEG_INFINITY);
            for row in l.chunks(k) {
                for (m, &x) in max.iter_mut().zip(row) {
                    *m = m.max(x);
                }
            }
            all_max(&mut max);
            sum.fill(0.0);
            for row in l.chunks(k) {
                for ((s, &m), &x) in sum.iter_mut().zip(&max).zip(row) {
                    *s += (x - m).exp();
                }
            }
            all_sum(&mut sum);
            for (m, s) in max.iter_mut().zip(&sum) {
                *m += s.ln() + ln_k;
            }
            for row in l.chunks_mut(k) {
                for (x, &m) in row.iter_mut().zip(&max) {
                    *x -= m;
                }
            }
            for row in l.chunks_mut(k) {
                let c = log_sum_exp(row) + ln_n;
                row.iter_mut().for_each(|x| *x -= c);
            }
        }
        return l.iter().map(|&x| (x + ln_n).exp() as f32).collect();
    }
    let mut q: Vec<f64> = scores
        .iter()
        .map(|&s| ((s as f64 - hi) / epsilon).exp())
        .collect();
    let mut total = [q.iter().sum::<f64>()];
    all_sum(&mut total);
    q.iter_mut().for_each(|x| *x /= total[0]);
    let mut proto = vec![0.0f64; k];
    for _ in 0..iterations {
        proto.iter_mut().for_each(|p| *p = 0.0);
        for row in q.chunks(k) {
            for (p, x) in proto.iter_mut().zip(row) {
                *p += x;
            }
        }
        all_sum(&mut proto);
        for row in q.chunks_mut(k) {
            for (x, p) in row.iter_mut().zip(&proto) {
                *x /= p * k as f64;
            }
        }
        for row in q.chunks_mut(k) {
            let s: f64 = row.iter().sum();
            row.iter_mut().for_each(|x| *x /= s * n as f64);
        }
    }
    q.iter().map(|&x| (x * n as f64) as f32).collect()
}

impl<D: EngineDevice> Objective<D> for Swav {
    fn prepare(
        &mut self,
        _encoder: &Encoder,
        store: &mut ParamStore<D>,
        step: u64,
        _epoch: usize,
    ) -> Result<(), ObjectiveError> {
        super::timed("objective.state", || {
            self.prototypes.normalize_weights(store)
        });
        Objective::<D>::sync_flags(self, store, step);
        Ok(())
    }

    fn sync_flags(&self, store: &mut ParamStore<D>, step: u64) {
        store.get_mut(self.prototypes.weight_id()).trainable =
            step >= self.cfg.freeze_prototypes_steps;
    }

    fn loss(
        &mut self,
        encoder: &mut Encoder,
        store: &mut ParamStore<D>,
        batch: &StepBatch<'_>,
    ) -> Result<Loss<D>, ObjectiveError> {
        super::check_views("SwAV", self.views, batch)?;
        let n = batch.indices.len();
        let z = encoder.embed(store, batch.views, true)?;
        let m = z.shape().0;
        if m != self.views * n || z.shape().1 != self.dim {
            return Err(ObjectiveError::Shape(format!(
                "SwAV: embeddings {:?} for {} views of {n} images with {} features",
                z.shape(),
                self.views,
                self.dim
            )));
        }
        super::timed_loss(z, |z| {
            let started = std::time::Instant::now();
            let emb = D::l2_normalize(z, 1e-12);
            let emb_host = emb.as_vec();
            let scores = self.prototypes.scores(store, emb)?;
            let k = scores.shape().1;
            let scores_host = scores.as_vec();
            let d = self.dim;
            let dev = store.device().clone();
            if let Some(q) = &mut self.queue
                && batch.epoch >= q.start_epoch
                && q.filled >= q.size
            {
                // Once full the queue stays in use, as SwAV's `use_the_queue`.
                q.filled = q.size;
            }
            if batch.dist.world() > 1 {
                let codes = self.distributed_codes(store, batch, &emb_host, &scores_host, n, k)?;
                let out = loss(scores, n, &codes, self.cfg.temperature)?;
                crate::nn::ops::timing::record("objective.loss.fwd", started.elapsed());
                return Ok(out);
            }
            let mut codes = Vec::with_capacity(self.cfg.assign_views);
            for a in 0..self.cfg.assign_views {
                let own = &scores_host[a * n * k..(a + 1) * n * k];
                let mut out = Vec::new();
                let mut rows = n;
                if let Some(q) = &mut self.queue
                    && batch.epoch >= q.start_epoch
                {
                    let qa = &mut q.data[a * q.size * d..(a + 1) * q.size * d];
                    if q.filled >= q.size {
                        let w = store
                            .get(self.prototypes.weight_id())
                            .tensor
                            .clone()
                            .reshape_like(&(k, d));
                        let qt = dev.tensor_from_vec(qa.to_vec(), (q.size, d));
                        out = qt.matmul(w.permute::<_, Axes2<1, 0>>()).as_vec();
                        rows += q.size;
                    }
                    // Shift: the batch's embeddings become the newest rows.
                    qa.copy_within(0..(q.size - n) * d, n * d);
                    qa[..n * d].copy_from_slice(&emb_host[a * n * d..(a + 1) * n * d]);
                }
                out.extend_from_slice(own);
                let c = sinkhorn(&out, rows, k, self.cfg.epsilon, self.cfg.iterations);
                codes.push(c[(rows - n) * k..].to_vec());
            }
            if let Some(q) = &mut self.queue
                && batch.epoch >= q.start_epoch
            {
                q.filled = (q.filled + n).min(q.size);
            }
            let out = loss(scores, n, &codes, self.cfg.temperature)?;
            crate::nn::ops::timing::record("objective.loss.fwd", started.elapsed());
            Ok(out)
        })
    }

    fn state(&self) -> Vec<StateTensor> {
        let data = match &self.queue {
            None => Vec::new(),
            Some(q) => vec![q.data.clone(), vec![q.filled as f32]],
        };
        state_tensors(Objective::<D>::state_layout(self), data)
    }

    fn load_state(&mut self, tensors: &[StateTensor]) -> Result<(), ObjectiveError> {
        check_state(&Objective::<D>::state_layout(self), tensors)?;
        if let Some(q) = &mut self.queue {
            let get = |n: &str| &tensors.iter().find(|t| t.name == n).expect("checked").data;
            let filled = get("queue_filled")[0];
            if filled < 0.0 || filled.fract() != 0.0 || filled as usize > q.size {
                return Err(ObjectiveError::State(format!("queue fill {filled}")));
            }
            super::check_finite(get("queue"), "the SwAV queue")?;
            q.data = get("queue").clone();
            q.filled = filled as usize;
        }
        Ok(())
    }

    fn state_layout(&self) -> Vec<(String, Vec<usize>)> {
        self.cfg.state_layout(self.dim)
    }
}
