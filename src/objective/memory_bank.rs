//! The memory bank of instance discrimination (Wu et al. 2018, "Unsupervised Feature
//! Learning via Non-Parametric Instance Discrimination"): one feature per training
//! image, a non-parametric softmax over the image's own entry and sampled negatives.

use dfdx::prelude::*;
use rand::{Rng, SeedableRng};

use super::{
    Encoder, Loss, Objective, ObjectiveError, StateTensor, StepBatch, check_finite, check_rows,
    check_state, check_temperature, moco::normalize_rows,
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
/// Computed as `f · bankᵀ` over the whole bank, then gathered: `n × len(bank)` floats,
/// which for the datasets this tool trains on is less than gathering `n × (K + 1)` rows
/// of `d` features, and one matrix product.
pub fn loss<D: EngineDevice, T: Tape<f32, D>>(
    f: T2<D, T>,
    positives: &[usize],
    negatives: &[usize],
    bank: &MemoryBank,
    temperature: f32,
) -> Result<Tensor<(), f32, D, T>, ObjectiveError> {
    check_temperature(temperature, "memory-bank temperature")?;
    let (n, d) = *f.shape();
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
    if d != bank.dim {
        return Err(ObjectiveError::Shape(format!(
            "memory bank: embeddings have {d} features, the bank {}",
            bank.dim
        )));
    }
    check_rows(&f, "memory-bank embeddings", n)?;
    for &i in positives.iter().chain(negatives) {
        bank.check_index(i)?;
    }
    let k = negatives.len() / n;
    let dev = f.device().clone();
    let fnorm = D::l2_normalize(f, 1e-12) * (1.0 / temperature);
    let b = dev.tensor_from_vec(bank.data.clone(), (bank.n, d));
    let all = fnorm.matmul(b.permute::<_, Axes2<1, 0>>());
    let mut idx = Vec::with_capacity(n * (k + 1));
    for r in 0..n {
        idx.push(positives[r]);
        idx.extend_from_slice(&negatives[r * k..(r + 1) * k]);
    }
    let logits: T2<D, T> = all.gather(dev.tensor_from_vec(idx, (n, k + 1)));
    let lsm = logits.log_softmax::<Axis<1>>();
    let zeros = dev.tensor_from_vec(vec![0usize; n], (n,));
    let picked: Tensor<(usize,), f32, D, T> = lsm.select(zeros);
    Ok(picked.mean::<(), _>().negate())
}

/// The memory bank as an [`Objective`].
///
/// Every view of every image is an anchor whose positive is the image's bank entry;
/// each anchor draws its own `negatives` indices uniformly over the bank (with
/// replacement; the image itself may be drawn, as in InstDisc's alias sampler), from an
/// RNG seeded by `(seed, step)` so a resumed run draws the same. After the loss, each
/// image's entry takes the mean of its views' normalised features through
/// [`MemoryBank::update`] (one view: exactly InstDisc).
#[derive(Clone, Debug)]
pub struct Bank {
    temperature: f32,
    momentum: f32,
    negatives: usize,
    seed: u64,
    bank: MemoryBank,
}

impl Bank {
    /// A bank of `dataset_len` random unit rows of `dim` features.
    pub fn new(
        temperature: f32,
        momentum: f32,
        negatives: usize,
        dataset_len: usize,
        dim: usize,
        seed: u64,
    ) -> Result<Bank, ObjectiveError> {
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
            seed,
            bank: MemoryBank::new(dataset_len, dim, seed ^ 0x6261_6e6b)?,
        })
    }

    /// The bank.
    pub fn bank(&self) -> &MemoryBank {
        &self.bank
    }
}

impl<D: EngineDevice> Objective<D> for Bank {
    fn method(&self) -> &'static str {
        "memory_bank"
    }

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
        let timer = super::BackwardTimer::default();
        let z = timer.begin(z);
        let feats = z.as_vec();
        let out = super::timed("objective.loss.fwd", || {
            let positives: Vec<usize> =
                (0..v).flat_map(|_| batch.indices.iter().copied()).collect();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(
                self.seed ^ batch.step.wrapping_mul(0x9e37_79b9_7f4a_7c15),
            );
            let negatives: Vec<usize> = (0..v * n * self.negatives)
                .map(|_| rng.gen_range(0..self.bank.n))
                .collect();
            loss(z, &positives, &negatives, &self.bank, self.temperature)
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
            self.bank.update(batch.indices, &mean, self.momentum)
        })?;
        Ok(timer.end(out))
    }

    fn state(&self) -> Vec<StateTensor> {
        vec![StateTensor {
            name: "memory".into(),
            shape: vec![self.bank.n, self.bank.dim],
            data: self.bank.data.clone(),
        }]
    }

    fn load_state(&mut self, tensors: &[StateTensor]) -> Result<(), ObjectiveError> {
        check_state(
            &[("memory".into(), vec![self.bank.n, self.bank.dim])],
            tensors,
        )?;
        self.bank = MemoryBank::from_data(self.bank.n, self.bank.dim, tensors[0].data.clone())?;
        Ok(())
    }

    fn state_layout(&self) -> Vec<(String, Vec<usize>)> {
        vec![("memory".into(), vec![self.bank.n, self.bank.dim])]
    }
}
