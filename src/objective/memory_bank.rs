//! The memory bank of instance discrimination (Wu et al. 2018, "Unsupervised Feature
//! Learning via Non-Parametric Instance Discrimination"): one feature per training
//! image, a non-parametric softmax over the image's own entry and sampled negatives.

use dfdx::prelude::*;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::{
    BuildArgs, CommFacts, Encoder, Loss, Method, MethodPlan, ModelFacts, Objective, ObjectiveError,
    StateTensor, StepBatch, check_finite, check_state, check_temperature,
    rows::{normalize_rows, rows_loss, shared_rows_loss},
    state_tensors,
};
use crate::nn::ops::{EngineDevice, T2};
use crate::nn::params::ParamStore;

/// `n` L2-normalised features of `dim` values, row `i` for training image `i`.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryBank {
    n: usize,
    dim: usize,
    data: Vec<f32>,
}

impl MemoryBank {
    /// A bank of random unit vectors from `seed`.
    pub fn new(n: usize, dim: usize, seed: u64) -> Result<MemoryBank, ObjectiveError> {
        let mut data = crate::nn::init::Init::new(seed).normal(n * dim, 1.0);
        normalize_rows(&mut data, dim.max(1));
        MemoryBank::from_data(n, dim, data)
    }

    /// A bank holding `data` (`n × dim`, row-major).
    pub fn from_data(n: usize, dim: usize, data: Vec<f32>) -> Result<MemoryBank, ObjectiveError> {
        if n == 0 || dim == 0 {
            return Err(ObjectiveError::Config(format!(
                "a memory bank needs rows and features, got {n} × {dim}"
            )));
        }
        if data.len() != n * dim {
            return Err(ObjectiveError::Shape(format!(
                "{} values for a bank of {n} × {dim}",
                data.len()
            )));
        }
        check_finite(&data, "the memory bank")?;
        Ok(MemoryBank { n, dim, data })
    }

    /// Rows (training images).
    pub fn len(&self) -> usize {
        self.n
    }

    /// Always false: a bank has at least one row.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Features per row.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The rows, `n × dim` row-major.
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    fn check_index(&self, i: usize) -> Result<(), ObjectiveError> {
        if i < self.n {
            Ok(())
        } else {
            Err(ObjectiveError::Shape(format!(
                "index {i} outside a memory bank of {} images (is the bank smaller than the dataset?)",
                self.n
            )))
        }
    }

    /// InstDisc's update: for each `indices[r]`, `v ← normalise(m·v + (1 − m)·f_r)` with
    /// `features` (`len(indices) × dim`, already L2-normalised) — `lemniscate`'s
    /// `index_copy_` of the momentum-averaged, re-normalised rows. A repeated index
    /// is updated once per occurrence, in order.
    pub fn update(
        &mut self,
        indices: &[usize],
        features: &[f32],
        momentum: f32,
    ) -> Result<(), ObjectiveError> {
        if features.len() != indices.len() * self.dim {
            return Err(ObjectiveError::Shape(format!(
                "{} feature values for {} indices of {} features",
                features.len(),
                indices.len(),
                self.dim
            )));
        }
        for &i in indices {
            self.check_index(i)?;
        }
        check_finite(features, "bank update features")?;
        let d = self.dim;
        for (r, &i) in indices.iter().enumerate() {
            let row = &mut self.data[i * d..(i + 1) * d];
            for (v, f) in row.iter_mut().zip(&features[r * d..(r + 1) * d]) {
                *v = momentum * *v + (1.0 - momentum) * f;
            }
            normalize_rows(row, d);
        }
        Ok(())
    }
}

/// InstDisc's non-parametric softmax: `f` is `(n, d)` raw embeddings (L2-normalised
/// here), row `r` of training image `positives[r]`; `negatives` holds `K` bank indices
/// per row (`n × K`, row-major). The logits of row `r` are
/// `[f_r·bank[positives[r]], f_r·bank[negatives[r][0]], …] / τ` and the loss is the
/// cross-entropy with target 0 averaged over rows. The bank gets no gradient.
///
/// The log-softmax comes from [`EngineDevice::bank_log_softmax`], which reads the bank
/// in place and never forms its gradient.
pub fn loss<D: EngineDevice, T: Tape<f32, D>>(
    f: T2<D, T>,
    positives: &[usize],
    negatives: &[usize],
    bank: &MemoryBank,
    temperature: f32,
) -> Result<Tensor<(), f32, D, T>, ObjectiveError> {
    let n = f.shape().0;
    if positives.len() != n {
        return Err(ObjectiveError::Shape(format!(
            "memory bank: {} dataset indices for {n} embeddings",
            positives.len()
        )));
    }
    if n == 0 || negatives.is_empty() || !negatives.len().is_multiple_of(n) {
        return Err(ObjectiveError::Shape(format!(
            "memory bank: {} negative indices are not the same number for each of {n} rows",
            negatives.len()
        )));
    }
    for &i in positives.iter().chain(negatives) {
        bank.check_index(i)?;
    }
    let k = negatives.len() / n;
    let mut idx = Vec::with_capacity(n * (k + 1));
    for (r, &p) in positives.iter().enumerate() {
        idx.push(p);
        idx.extend_from_slice(&negatives[r * k..(r + 1) * k]);
    }
    rows_loss(f, &idx, k + 1, &bank.data, bank.dim, temperature)
}

/// [`loss`] with one set of negatives for every row (the `shared_negatives` recipe
/// key): `f` is `(n, d)` raw embeddings (L2-normalised here), row `r` of training image
/// `positives[r]`; `negatives` holds `K` bank indices. The logits of row `r` are
/// `[f_r·bank[positives[r]], f_r·bank[negatives[0]], …, f_r·bank[negatives[K−1]]] / τ`
/// and the loss is the cross-entropy with target 0 averaged over rows: [`loss`] with
/// every row's negatives equal. The rows are gathered once into a table of
/// `K + n` rows, so the logits are one `(n, d) × (d, K + n)` product (the fused
/// log-softmax's dense path) instead of a gather per row. The bank gets no gradient.
pub fn shared_loss<D: EngineDevice, T: Tape<f32, D>>(
    f: T2<D, T>,
    positives: &[usize],
    negatives: &[usize],
    bank: &MemoryBank,
    temperature: f32,
) -> Result<Tensor<(), f32, D, T>, ObjectiveError> {
    let n = f.shape().0;
    if positives.len() != n {
        return Err(ObjectiveError::Shape(format!(
            "memory bank: {} dataset indices for {n} embeddings",
            positives.len()
        )));
    }
    if negatives.is_empty() {
        return Err(ObjectiveError::Shape(
            "memory bank: no negatives to share".into(),
        ));
    }
    for &i in positives.iter().chain(negatives) {
        bank.check_index(i)?;
    }
    let d = bank.dim;
    let mut table = Vec::with_capacity((negatives.len() + n) * d);
    for &i in negatives.iter().chain(positives) {
        table.extend_from_slice(&bank.data[i * d..(i + 1) * d]);
    }
    shared_rows_loss(f, &table, negatives.len(), d, temperature)
}

/// Words (`u64`) per block of [`Draws`]: the unit of parallel generation and counting.
const DRAW_BLOCK: usize = 8192;

/// The negatives' draws, made on all threads, with buffers kept between steps.
///
/// The draws must stay those of `k` calls of `rng.gen_range(0..bound)` per anchor, in
/// anchor order, on `ChaCha8Rng::seed_from_u64(seed)` (a resumed run draws them
/// again). rand 0.8 makes each such call from one `u64` word of the stream at a time,
/// by Lemire's widening multiply: a word is kept or rejected on its own value, so the
/// draws are the stream filtered. ChaCha can start at any word, so the words are
/// generated in blocks on all threads, each block counts the words it keeps, and
/// each run of anchors starts at the word its first draw comes from.
#[derive(Clone, Debug, Default)]
struct Draws {
    words: Vec<u64>,
    /// Kept words in all blocks before each block.
    kept_before: Vec<usize>,
}

impl Draws {
    /// `rng.gen_range(0..bound)`'s value from word `v`, or `None` where it rejects
    /// the word and takes the next (rand 0.8's `sample_single_inclusive` for `usize`;
    /// [`Draws::fill`] inlines the same test).
    #[inline(always)]
    fn value(v: u64, range: u64, zone: u64) -> Option<usize> {
        let p = u128::from(v) * u128::from(range);
        ((p as u64) <= zone).then_some((p >> 64) as usize)
    }

    /// Writes `idx` as rows of `1 + k`: `positive(a)`, then anchor `a`'s `k` draws in
    /// `[0, bound)`.
    fn fill(
        &mut self,
        seed: u64,
        bound: usize,
        k: usize,
        positive: impl Fn(usize) -> usize + Sync,
        idx: &mut [usize],
    ) {
        let anchors = idx.len() / (k + 1);
        let count = anchors * k;
        if cfg!(not(target_pointer_width = "64")) || bound == 0 || count == 0 {
            // Off 64-bit targets rand draws a `usize` from 32-bit words: its own loop
            // there (and for the trivial cases; the bank is never empty).
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            for (a, row) in idx.chunks_mut(k + 1).enumerate() {
                row[0] = positive(a);
                row[1..]
                    .iter_mut()
                    .for_each(|x| *x = rng.gen_range(0..bound));
            }
            return;
        }
        let range = bound as u64;
        let zone = (range << range.leading_zeros()).wrapping_sub(1);
        // Enough words for `count` kept ones with a wide margin (the kept count's
        // spread is about its square root); doubled in the rare case it falls short.
        let keep = (zone as f64 + 1.0) / 2f64.powi(64);
        let mut words = ((count as f64 / keep) * 1.02) as usize + 2 * DRAW_BLOCK;
        loop {
            words = words.div_ceil(DRAW_BLOCK) * DRAW_BLOCK;
            self.words.resize(words, 0);
            self.kept_before.clear();
            let kept: Vec<usize> = self
                .words
                .par_chunks_mut(DRAW_BLOCK)
                .enumerate()
                .map(|(b, block)| {
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                    // Word positions count 32-bit words.
                    rng.set_word_pos(2 * (b * DRAW_BLOCK) as u128);
                    rng.fill(block);
                    block
                        .iter()
                        .filter(|&&v| Self::value(v, range, zone).is_some())
                        .count()
                })
                .collect();
            let mut total = 0;
            for c in kept {
                self.kept_before.push(total);
                total += c;
            }
            if total >= count {
                break;
            }
            words *= 2;
        }
        let per_task = anchors.div_ceil(4 * rayon::current_num_threads()).max(1);
        let (all, kept_before) = (&self.words, &self.kept_before);
        idx.par_chunks_mut(per_task * (k + 1))
            .enumerate()
            .for_each(|(t, rows)| {
                let a0 = t * per_task;
                let first = a0 * k;
                let b = kept_before.partition_point(|&c| c <= first) - 1;
                // Words are kept at random: branch-free loops (a branch per word
                // would be mispredicted about every third word).
                let mut w = b * DRAW_BLOCK;
                let mut skip = first - kept_before[b];
                while skip > 0 {
                    skip -= usize::from(Self::value(all[w], range, zone).is_some());
                    w += 1;
                }
                for (a, row) in rows.chunks_mut(k + 1).enumerate() {
                    row[0] = positive(a0 + a);
                    let out = &mut row[1..];
                    let mut at = 0;
                    while at < k {
                        let p = u128::from(all[w]) * u128::from(range);
                        w += 1;
                        out[at] = (p >> 64) as usize;
                        at += usize::from((p as u64) <= zone);
                    }
                }
            });
    }
}

/// How a [`Bank`] draws its negatives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negatives {
    /// Negatives per anchor.
    pub count: usize,
    /// One draw per step for every anchor ([`shared_loss`]) instead of one per anchor.
    pub shared: bool,
}

/// The memory bank as an [`Objective`].
///
/// Every view of every image is an anchor whose positive is the image's bank entry;
/// each anchor draws its own `negatives` indices uniformly over the bank (with
/// replacement; the image itself may be drawn, as in InstDisc's alias sampler), from an
/// RNG seeded by `(seed, step)` so a resumed run draws the same. With shared negatives
/// the step draws `negatives` indices once, the same way, for all anchors (on every
/// rank of a data-parallel run, so the loss is the single process's). After the loss, each
/// image's entry takes the mean of its views' normalised features through
/// [`MemoryBank::update`] (one view: exactly InstDisc).
#[derive(Clone, Debug)]
pub struct Bank {
    temperature: f32,
    momentum: f32,
    negatives: usize,
    shared: bool,
    seed: u64,
    bank: MemoryBank,
    /// Each anchor's bank indices (positive, then negatives), reused across steps.
    idx: Vec<usize>,
    draws: Draws,
}

impl Bank {
    /// A bank of `dataset_len` random unit rows of `dim` features.
    pub fn new(
        temperature: f32,
        momentum: f32,
        negatives: Negatives,
        dataset_len: usize,
        dim: usize,
        seed: u64,
    ) -> Result<Bank, ObjectiveError> {
        let Negatives {
            count: negatives,
            shared,
        } = negatives;
        check_temperature(temperature, "memory-bank temperature")?;
        if !(0.0..1.0).contains(&momentum) {
            return Err(ObjectiveError::Config(format!(
                "bank momentum must be in [0, 1), got {momentum}"
            )));
        }
        if negatives == 0 {
            return Err(ObjectiveError::Config(
                "the memory bank needs at least one negative".into(),
            ));
        }
        Ok(Bank {
            temperature,
            momentum,
            negatives,
            shared,
            seed,
            bank: MemoryBank::new(dataset_len, dim, seed ^ 0x6261_6e6b)?,
            idx: Vec::new(),
            draws: Draws::default(),
        })
    }

    /// The bank.
    pub fn bank(&self) -> &MemoryBank {
        &self.bank
    }
}

impl<D: EngineDevice> Objective<D> for Bank {
    fn loss(
        &mut self,
        encoder: &mut Encoder,
        store: &mut ParamStore<D>,
        batch: &StepBatch<'_>,
    ) -> Result<Loss<D>, ObjectiveError> {
        let v = batch.views.len();
        let n = batch.indices.len();
        let z = encoder.embed(store, batch.views, true)?;
        if z.shape().0 != v * n {
            return Err(ObjectiveError::Shape(format!(
                "memory bank: {} embeddings for {v} views of {n} images",
                z.shape().0
            )));
        }
        super::timed_loss(z, |z| {
            let feats = z.as_vec();
            for &i in batch.indices {
                self.bank.check_index(i)?;
            }
            // Data-parallel: the global batch's indices, in global image order.
            let dist = batch.dist;
            let global: Vec<usize> = if dist.world() > 1 {
                let bits: Vec<f32> = batch
                    .indices
                    .iter()
                    .map(|&i| f32::from_bits(i as u32))
                    .collect();
                let all = crate::dist::timed("comm.gather", || dist.all_gather(&bits));
                all.into_iter().map(|b| b.to_bits() as usize).collect()
            } else {
                Vec::new()
            };
            let out = super::timed("objective.loss.fwd", || {
                // Anchor `a` (view `a / n` of image `a % n`): its positive, then its K
                // draws; the draws come in anchor order from one stream per step.
                let k = self.negatives;
                let seed = self.seed ^ batch.step.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                if self.shared {
                    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
                    let negatives: Vec<usize> =
                        (0..k).map(|_| rng.gen_range(0..self.bank.n)).collect();
                    let positives: Vec<usize> = if dist.world() > 1 {
                        let b = global.len();
                        crate::dist::layout::local_rows(dist.rank(), dist.world(), v, n)
                            .iter()
                            .map(|&g| global[g % b])
                            .collect()
                    } else {
                        (0..v * n).map(|a| batch.indices[a % n]).collect()
                    };
                    return shared_loss(z, &positives, &negatives, &self.bank, self.temperature);
                }
                if dist.world() > 1 {
                    // Every rank draws the global batch's rows and keeps its own anchors',
                    // so the negatives are the single process's.
                    let b = global.len();
                    self.idx.resize(v * b * (k + 1), 0);
                    self.draws
                        .fill(seed, self.bank.n, k, |a| global[a % b], &mut self.idx);
                    let rows = crate::dist::layout::local_rows(dist.rank(), dist.world(), v, n);
                    let mine: Vec<usize> = rows
                        .iter()
                        .flat_map(|&g| self.idx[g * (k + 1)..(g + 1) * (k + 1)].iter().copied())
                        .collect();
                    return rows_loss(
                        z,
                        &mine,
                        k + 1,
                        &self.bank.data,
                        self.bank.dim,
                        self.temperature,
                    );
                }
                self.idx.resize(v * n * (k + 1), 0);
                self.draws.fill(
                    seed,
                    self.bank.n,
                    k,
                    |a| batch.indices[a % n],
                    &mut self.idx,
                );
                rows_loss(
                    z,
                    &self.idx,
                    k + 1,
                    &self.bank.data,
                    self.bank.dim,
                    self.temperature,
                )
            })?;
            let d = self.bank.dim;
            super::timed("objective.state", || {
                let mut mean = vec![0.0f32; n * d];
                for (r, row) in feats.chunks(d).enumerate() {
                    let nrm = row.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                    for (m, x) in mean[(r % n) * d..(r % n + 1) * d].iter_mut().zip(row) {
                        *m += x / nrm / v as f32;
                    }
                }
                if dist.world() > 1 {
                    // Every rank applies the updates of all ranks: identical banks.
                    let all = crate::dist::timed("comm.gather", || dist.all_gather(&mean));
                    return self.bank.update(&global, &all, self.momentum);
                }
                self.bank.update(batch.indices, &mean, self.momentum)
            })?;
            Ok(out)
        })
    }

    fn state(&self) -> Vec<StateTensor> {
        state_tensors(
            Objective::<D>::state_layout(self),
            vec![self.bank.data.clone()],
        )
    }

    fn load_state(&mut self, tensors: &[StateTensor]) -> Result<(), ObjectiveError> {
        check_state(&Objective::<D>::state_layout(self), tensors)?;
        self.bank = MemoryBank::from_data(self.bank.n, self.bank.dim, tensors[0].data.clone())?;
        Ok(())
    }

    fn state_layout(&self) -> Vec<(String, Vec<usize>)> {
        layout(self.bank.n, self.bank.dim)
    }
}

/// The memory bank's state: one row of `dim` features per training image.
fn layout(rows: usize, dim: usize) -> Vec<(String, Vec<usize>)> {
    vec![("memory".into(), vec![rows, dim])]
}

/// The memory bank's hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryBankConfig {
    /// Temperature τ.
    pub temperature: f32,
    /// Bank update momentum.
    pub momentum: f32,
    /// Negatives sampled per anchor.
    pub negatives: usize,
    /// One draw of negatives per step, shared by every anchor.
    pub shared_negatives: bool,
    /// Training images (rows of the bank).
    pub dataset_len: usize,
}

impl Method for MemoryBankConfig {
    fn name(&self) -> &'static str {
        "memory_bank"
    }

    fn state_layout(&self, dim: usize) -> Vec<(String, Vec<usize>)> {
        layout(self.dataset_len, dim)
    }

    fn plan(&self, model: &ModelFacts) -> MethodPlan {
        let mut p = MethodPlan::from_layout(&self.state_layout(model.dim));
        let negatives = self.negatives;
        p.parts.push(if self.shared_negatives {
            format!("{negatives} negatives per step, shared by the batch")
        } else {
            format!("{negatives} negatives per image")
        });
        p
    }

    fn comm(&self, step: &CommFacts) -> (f64, usize) {
        // The global batch's indices, and every rank's bank updates.
        (step.embedding_bytes + (step.images * 4) as f64, 2)
    }

    fn build<D: EngineDevice>(
        &self,
        on: &BuildArgs<'_, D>,
    ) -> Result<Box<dyn Objective<D>>, ObjectiveError> {
        Ok(Box::new(Bank::new(
            self.temperature,
            self.momentum,
            Negatives {
                count: self.negatives,
                shared: self.shared_negatives,
            },
            self.dataset_len,
            on.dim,
            on.seed,
        )?))
    }
}
