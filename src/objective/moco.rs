//! MoCo (He et al. 2020, "Momentum Contrast for Unsupervised Visual Representation
//! Learning"; v2: Chen et al. 2020): a momentum key encoder and a FIFO queue of keys.

use dfdx::prelude::*;

use super::{
    BuildArgs, CommFacts, Encoder, Loss, Method, MethodPlan, ModelFacts, Objective, ObjectiveError,
    StateTensor, StepBatch, check_finite, check_rows, check_state, check_temperature,
    rows::normalize_rows, state_tensors,
};
use crate::nn::ops::{EngineDevice, T2};
use crate::nn::params::ParamStore;

/// A FIFO queue of `len` keys of `dim` features with its write pointer (MoCo's
/// `queue` and `queue_ptr` buffers; stored here key-major, row `j` = key `j`).
#[derive(Clone, Debug, PartialEq)]
pub struct KeyQueue {
    len: usize,
    dim: usize,
    keys: Vec<f32>,
    ptr: usize,
}

impl KeyQueue {
    /// A queue of random unit keys from `seed` (MoCo fills its queue with normalised
    /// Gaussian noise).
    pub fn new(len: usize, dim: usize, seed: u64) -> Result<KeyQueue, ObjectiveError> {
        let mut keys = crate::nn::init::Init::new(seed).normal(len * dim, 1.0);
        normalize_rows(&mut keys, dim.max(1));
        KeyQueue::from_keys(len, dim, keys, 0)
    }

    /// A queue holding `keys` (`len × dim`, row-major) with write pointer `ptr`.
    pub fn from_keys(
        len: usize,
        dim: usize,
        keys: Vec<f32>,
        ptr: usize,
    ) -> Result<KeyQueue, ObjectiveError> {
        if len == 0 || dim == 0 {
            return Err(ObjectiveError::Config(format!(
                "a key queue needs keys and features, got {len} × {dim}"
            )));
        }
        if keys.len() != len * dim {
            return Err(ObjectiveError::Shape(format!(
                "{} values for a queue of {len} keys × {dim}",
                keys.len()
            )));
        }
        if ptr >= len {
            return Err(ObjectiveError::Shape(format!(
                "queue pointer {ptr} outside a queue of {len}"
            )));
        }
        check_finite(&keys, "the key queue")?;
        Ok(KeyQueue {
            len,
            dim,
            keys,
            ptr,
        })
    }

    /// Replaces the oldest keys with `keys` (`n × dim`, already L2-normalised) and
    /// advances the pointer by `n` modulo the length. `n` must divide the length, as
    /// MoCo asserts, so a batch never wraps around the end.
    pub fn enqueue(&mut self, keys: &[f32]) -> Result<(), ObjectiveError> {
        if keys.is_empty() || !keys.len().is_multiple_of(self.dim) {
            return Err(ObjectiveError::Shape(format!(
                "{} values are not whole keys of {} features",
                keys.len(),
                self.dim
            )));
        }
        let n = keys.len() / self.dim;
        if !self.len.is_multiple_of(n) {
            return Err(ObjectiveError::Shape(format!(
                "a queue of {} keys is not a multiple of the {n} keys enqueued per step",
                self.len
            )));
        }
        check_finite(keys, "keys to enqueue")?;
        let at = self.ptr * self.dim;
        self.keys[at..at + keys.len()].copy_from_slice(keys);
        self.ptr = (self.ptr + n) % self.len;
        Ok(())
    }

    /// The keys, row-major `len × dim`.
    pub fn keys(&self) -> &[f32] {
        &self.keys
    }

    /// Where the next batch of keys is written.
    pub fn ptr(&self) -> usize {
        self.ptr
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a queue has at least one key.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Features per key.
    pub fn dim(&self) -> usize {
        self.dim
    }
}

/// MoCo's InfoNCE: `q` and `k` are `(N, d)` raw query and key embeddings (row `i` of
/// both from image `i`, `k` without a tape), both L2-normalised here; the logits of
/// query `i` are `[q_i·k_i, q_i·queue_0, …, q_i·queue_{K−1}] / τ` with the positive at
/// index 0, and the loss is the cross-entropy with target 0, averaged over the `N`
/// queries — facebookresearch/moco's `MoCo.forward` and its criterion. The queue is
/// read as it is (enqueueing the keys is the caller's next step).
pub fn loss<D: EngineDevice, T: Tape<f32, D>>(
    q: T2<D, T>,
    k: T2<D, NoneTape>,
    queue: &KeyQueue,
    temperature: f32,
) -> Result<Tensor<(), f32, D, T>, ObjectiveError> {
    check_temperature(temperature, "MoCo temperature")?;
    let (n, d) = *q.shape();
    check_rows(&q, "MoCo queries", n)?;
    check_rows(&k, "MoCo keys", n)?;
    if k.shape().1 != d || queue.dim != d {
        return Err(ObjectiveError::Shape(format!(
            "MoCo: queries have {d} features, keys {}, the queue {}",
            k.shape().1,
            queue.dim
        )));
    }
    // The keys carry no gradient: the queue is the shared negatives and key `i` is
    // query `i`'s positive, through the fused log-softmax (one product with the
    // table instead of dfdx's composed ops, which took 8% of the quick recipe's step).
    let mut table = Vec::with_capacity((queue.len + n) * d);
    table.extend_from_slice(&queue.keys);
    table.extend_from_slice(&D::l2_normalize(k, 1e-12).as_vec());
    super::rows::shared_rows_loss(q, &table, queue.len, d, temperature)
}

/// The key encoder's EMA step: every trainable entry of `query` (parameters, not
/// batch-norm statistics) moves `key ← m·key + (1 − m)·query`, as MoCo's
/// `_momentum_update_key_encoder`. Entries are matched by name; buffers of `key` are
/// its own.
pub fn ema_update<D: Device<f32>>(
    key: &mut ParamStore<D>,
    query: &ParamStore<D>,
    momentum: f64,
) -> Result<(), ObjectiveError> {
    if !(0.0..=1.0).contains(&momentum) {
        return Err(ObjectiveError::Config(format!(
            "EMA momentum must be in [0, 1], got {momentum}"
        )));
    }
    let m = momentum as f32;
    let c = (1.0 - momentum) as f32;
    for q in query.entries().iter().filter(|e| e.role.is_trainable()) {
        let Some(id) = key.id(&q.name) else {
            return Err(ObjectiveError::State(format!(
                "the key encoder has no `{}`",
                q.name
            )));
        };
        let k = key.get_mut(id);
        if k.shape != q.shape {
            return Err(ObjectiveError::State(format!(
                "`{}` has shape {:?} in the key encoder and {:?} in the query encoder",
                q.name, k.shape, q.shape
            )));
        }
        k.tensor = k.tensor.clone() * m + q.tensor.clone() * c;
    }
    Ok(())
}

/// MoCo's hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MocoConfig {
    /// Temperature τ.
    pub temperature: f32,
    /// EMA momentum m.
    pub momentum: f64,
    /// Keys in the queue.
    pub queue_size: usize,
    /// Swap the views too and average the two losses.
    pub symmetric: bool,
}

impl Method for MocoConfig {
    fn name(&self) -> &'static str {
        "moco"
    }

    fn state_layout(&self, dim: usize) -> Vec<(String, Vec<usize>)> {
        vec![
            ("queue".into(), vec![self.queue_size, dim]),
            ("queue_ptr".into(), vec![1]),
        ]
    }

    fn plan(&self, model: &ModelFacts) -> MethodPlan {
        let mut p = MethodPlan::from_layout(&self.state_layout(model.dim));
        // The key encoder runs forward only, on one view (two when symmetric).
        let keys = if self.symmetric { 2.0 } else { 1.0 };
        p.extra_step_flops = model.view_forward_flops * keys;
        p.parts.insert(
            0,
            format!("momentum encoder of {} values", model.encoder_floats),
        );
        p.state_bytes += 4 * model.encoder_floats;
        p
    }

    fn comm(&self, step: &CommFacts) -> (f64, usize) {
        // The keys of the whole global batch are gathered for the queue.
        let keys = if self.symmetric { 2.0 } else { 1.0 };
        (keys * step.embedding_bytes, keys as usize)
    }

    fn build<D: EngineDevice>(
        &self,
        on: &BuildArgs<'_, D>,
    ) -> Result<Box<dyn Objective<D>>, ObjectiveError> {
        Ok(Box::new(Moco::new(
            on.store, *self, on.dim, on.views, on.batch, on.seed,
        )?))
    }
}

/// MoCo v2 as an [`Objective`]: a key encoder (a copy of the query encoder's store,
/// never trained), its EMA, and the queue.
///
/// Per step, as facebookresearch/moco's `MoCo.forward`: queries `q = f_q(view 0)`; then
/// without gradient the EMA update and keys `k = f_k(view 1)` (the key encoder in
/// training mode, so its own batch-norm statistics move); the loss; then the keys are
/// enqueued. `symmetric` adds the loss with the views swapped, averages the two, and
/// enqueues both key batches (`[k from view 1; k from view 0]`), as the symmetric
/// variant of MoCo's CIFAR demo. One process: no shuffling BN.
#[derive(Clone, Debug)]
pub struct Moco<D: Device<f32>> {
    cfg: MocoConfig,
    key: ParamStore<D>,
    queue: KeyQueue,
}

impl<D: EngineDevice> Moco<D> {
    /// A key encoder copied from `store` and a random queue of `dim`-feature keys.
    pub fn new(
        store: &ParamStore<D>,
        cfg: MocoConfig,
        dim: usize,
        views: usize,
        batch: usize,
        seed: u64,
    ) -> Result<Self, ObjectiveError> {
        check_temperature(cfg.temperature, "MoCo temperature")?;
        if !(0.0..1.0).contains(&cfg.momentum) {
            return Err(ObjectiveError::Config(format!(
                "MoCo momentum must be in [0, 1), got {}",
                cfg.momentum
            )));
        }
        if views != 2 {
            return Err(ObjectiveError::Config(format!(
                "MoCo needs exactly 2 views per image (query and key), the recipe makes {views}"
            )));
        }
        let per_step = if cfg.symmetric { 2 * batch } else { batch };
        if batch == 0 || cfg.queue_size == 0 || !cfg.queue_size.is_multiple_of(per_step) {
            return Err(ObjectiveError::Shape(format!(
                "MoCo's queue of {} keys must be a positive multiple of the {per_step} keys enqueued per step",
                cfg.queue_size
            )));
        }
        let mut key = store.clone();
        for e in key.entries_mut() {
            e.trainable = false;
        }
        Ok(Moco {
            cfg,
            key,
            queue: KeyQueue::new(cfg.queue_size, dim, seed ^ 0x6d6f_636f)?,
        })
    }

    /// The queue.
    pub fn queue(&self) -> &KeyQueue {
        &self.queue
    }
}

impl<D: EngineDevice> Objective<D> for Moco<D> {
    fn loss(
        &mut self,
        encoder: &mut Encoder,
        store: &mut ParamStore<D>,
        batch: &StepBatch<'_>,
    ) -> Result<Loss<D>, ObjectiveError> {
        if batch.views.len() != 2 {
            return Err(ObjectiveError::Shape(format!(
                "MoCo needs 2 views, the batch has {}",
                batch.views.len()
            )));
        }
        let q0 = encoder.embed(store, &batch.views[..1], true)?;
        let q1 = if self.cfg.symmetric {
            Some(encoder.embed(store, &batch.views[1..], true)?)
        } else {
            None
        };
        // After both query passes, before the loss: the loss's backward is timed alone.
        super::timed_loss(q0, |q0| {
            super::timed("objective.state", || {
                ema_update(&mut self.key, store, self.cfg.momentum)
            })?;
            let k1 = encoder.embed_no_grad(&mut self.key, &batch.views[1..], true)?;
            let k0 = match q1 {
                Some(_) => Some(encoder.embed_no_grad(&mut self.key, &batch.views[..1], true)?),
                None => None,
            };
            let t = self.cfg.temperature;
            let queue = &self.queue;
            let total = super::timed("objective.loss.fwd", || -> Result<_, ObjectiveError> {
                let a = loss(q0, k1.clone(), queue, t)?;
                Ok(match (q1, &k0) {
                    (Some(q1), Some(k0)) => (a + loss(q1, k0.clone(), queue, t)?) * 0.5,
                    _ => a,
                })
            })?;
            let d = self.queue.dim;
            super::timed("objective.state", || {
                let mut all = Vec::new();
                for k in std::iter::once(k1).chain(k0) {
                    let mut v = k.as_vec();
                    normalize_rows(&mut v, d);
                    // Data-parallel: every rank enqueues the keys of the whole global batch.
                    if batch.dist.world() > 1 {
                        v = crate::dist::timed("comm.gather", || batch.dist.all_gather(&v));
                    }
                    all.extend(v);
                }
                self.queue.enqueue(&all)
            })?;
            Ok(total)
        })
    }

    fn state(&self) -> Vec<StateTensor> {
        state_tensors(
            Objective::<D>::state_layout(self),
            vec![self.queue.keys.clone(), vec![self.queue.ptr as f32]],
        )
    }

    fn load_state(&mut self, tensors: &[StateTensor]) -> Result<(), ObjectiveError> {
        check_state(&Objective::<D>::state_layout(self), tensors)?;
        let get = |n: &str| &tensors.iter().find(|t| t.name == n).expect("checked").data;
        let ptr = get("queue_ptr")[0];
        if ptr < 0.0 || ptr.fract() != 0.0 {
            return Err(ObjectiveError::State(format!("queue pointer {ptr}")));
        }
        self.queue = KeyQueue::from_keys(
            self.queue.len,
            self.queue.dim,
            get("queue").clone(),
            ptr as usize,
        )?;
        Ok(())
    }

    fn state_layout(&self) -> Vec<(String, Vec<usize>)> {
        self.cfg.state_layout(self.queue.dim)
    }

    fn key_encoder(&self) -> Option<&ParamStore<D>> {
        Some(&self.key)
    }

    fn key_encoder_mut(&mut self) -> Option<&mut ParamStore<D>> {
        Some(&mut self.key)
    }
}
