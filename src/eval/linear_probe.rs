//! The linear probe: a softmax classifier trained on frozen features.
//!
//! Features are first standardised per dimension with the mean and standard deviation
//! of the *training* features (the test features get the same affine map, so nothing is
//! learned from the test set); a dimension that is constant on the training set is only
//! centred. Standardising puts every encoder's features on one scale, so one learning
//! rate fits them all; [`ProbeConfig::standardize`] turns it off.
//!
//! The classifier `logits = W·x + b` (`W` starts at zero: the problem is convex, and
//! zero needs no seed) is trained with cross-entropy by SGD with momentum 0.9 (PyTorch's
//! form: `buf = 0.9·buf + g; p −= lr·buf`), coupled L2 weight decay on `W` only (biases
//! are not decayed, as the engine's default decay policy), and a per-step cosine decay
//! of the learning rate from `lr` to 0 over all epochs ([`Schedule`]). Each epoch visits
//! the training features in an order shuffled from the seed; the last batch may be
//! smaller. The products run single-threaded in a fixed order, so a seed gives the same
//! result on every run.

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::features::FeatureMatrix;
use super::linalg::{View, matmul};
use super::{EvalError, class_count, labels_of, topk_accuracy};
use crate::optim::schedule::{Decay, Schedule, ScheduleConfig};

/// Linear-probe settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProbeConfig {
    /// Passes over the training features (≥ 1).
    pub epochs: usize,
    /// Features per SGD step (≥ 1).
    pub batch_size: usize,
    /// Peak learning rate (start of the cosine decay).
    pub lr: f64,
    /// L2 weight decay on the weights (not the bias).
    pub weight_decay: f64,
    /// Standardise each dimension with the training features' mean and std.
    pub standardize: bool,
    /// Seed of the shuffling.
    pub seed: u64,
}

impl Default for ProbeConfig {
    /// 20 epochs of batches of 256 at lr 0.1, no weight decay, standardised, seed 0.
    fn default() -> Self {
        ProbeConfig {
            epochs: 20,
            batch_size: 256,
            lr: 0.1,
            weight_decay: 0.0,
            standardize: true,
            seed: 0,
        }
    }
}

/// Linear-probe accuracies in percent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ProbeResult {
    /// Top-1 accuracy on the test features.
    pub top1: f64,
    /// Top-5 accuracy on the test features (100 with at most five classes).
    pub top5: f64,
    /// Top-1 accuracy on the training features (how well the classifier fits).
    pub train_top1: f64,
}

/// Per-dimension mean and standard deviation (population, f64 sums) of `m`'s rows; a
/// dimension whose std is below 1e-8 gets std 1 (centred only).
pub(crate) fn column_stats(m: &FeatureMatrix) -> (Vec<f32>, Vec<f32>) {
    let (n, d) = (m.n.max(1) as f64, m.dim);
    let mut mean = vec![0.0f64; d];
    for r in m.data.chunks_exact(d.max(1)) {
        mean.iter_mut().zip(r).for_each(|(a, &v)| *a += v as f64);
    }
    mean.iter_mut().for_each(|a| *a /= n);
    let mut var = vec![0.0f64; d];
    for r in m.data.chunks_exact(d.max(1)) {
        var.iter_mut()
            .zip(r)
            .zip(&mean)
            .for_each(|((a, &v), &mu)| *a += (v as f64 - mu).powi(2));
    }
    let std = var
        .iter()
        .map(|&v| {
            let s = (v / n).sqrt();
            if s < 1e-8 { 1.0 } else { s as f32 }
        })
        .collect();
    (mean.iter().map(|&v| v as f32).collect(), std)
}

fn standardized(m: &FeatureMatrix, mean: &[f32], std: &[f32]) -> Vec<f32> {
    let mut out = m.data.clone();
    for r in out.chunks_exact_mut(m.dim.max(1)) {
        for ((v, &mu), &s) in r.iter_mut().zip(mean).zip(std) {
            *v = (*v - mu) / s;
        }
    }
    out
}

/// `x · Wᵀ + b` for `n` rows of `x`.
fn logits(x: &[f32], n: usize, d: usize, w: &[f32], b: &[f32], parallel: bool) -> Vec<f32> {
    let c = b.len();
    let mut out = vec![0.0f32; n * c];
    for r in out.chunks_exact_mut(c.max(1)) {
        r.copy_from_slice(b);
    }
    matmul(
        &mut out,
        View::new(x, n, d),
        View::new(w, c, d).t(),
        true,
        parallel,
    );
    out
}

fn check(cfg: &ProbeConfig) -> Result<(), EvalError> {
    if cfg.epochs == 0 || cfg.batch_size == 0 {
        return Err(EvalError::Config(format!(
            "the linear probe needs at least one epoch and a batch of at least 1 (got {} \
             epochs, batch {})",
            cfg.epochs, cfg.batch_size
        )));
    }
    if !(cfg.lr.is_finite() && cfg.lr >= 0.0) {
        return Err(EvalError::Config(format!(
            "the probe's learning rate must be finite and >= 0, not {}",
            cfg.lr
        )));
    }
    if !(cfg.weight_decay.is_finite() && cfg.weight_decay >= 0.0) {
        return Err(EvalError::Config(format!(
            "the probe's weight decay must be finite and >= 0, not {}",
            cfg.weight_decay
        )));
    }
    Ok(())
}

/// Trains a linear classifier on `train` and reports its accuracy on `test`; both need
/// labels and the same dimension.
pub fn linear_probe(
    train: &FeatureMatrix,
    test: &FeatureMatrix,
    cfg: &ProbeConfig,
) -> Result<ProbeResult, EvalError> {
    check(cfg)?;
    let ytrain = labels_of(train, "training")?;
    let ytest = labels_of(test, "test")?;
    if train.n == 0 || test.n == 0 {
        return Err(EvalError::Data(
            "the linear probe needs training and test features".into(),
        ));
    }
    if train.dim != test.dim {
        return Err(EvalError::Data(format!(
            "training features have {} values but the test features have {}",
            train.dim, test.dim
        )));
    }
    let (n, d) = (train.n, train.dim);
    let (xtrain, xtest) = if cfg.standardize {
        let (mean, std) = column_stats(train);
        (
            standardized(train, &mean, &std),
            standardized(test, &mean, &std),
        )
    } else {
        (train.data.clone(), test.data.clone())
    };
    let c = class_count(ytrain, ytest);
    let steps_per_epoch = n.div_ceil(cfg.batch_size) as u64;
    let schedule = Schedule::new(
        &ScheduleConfig {
            warmup: None,
            decay: Decay::Cosine { final_lr: 0.0 },
        },
        cfg.lr,
        cfg.epochs as u64,
        steps_per_epoch,
    )?;
    let (mut w, mut b) = (vec![0.0f32; c * d], vec![0.0f32; c]);
    let (mut w_buf, mut b_buf) = (vec![0.0f32; c * d], vec![0.0f32; c]);
    let (mut gw, mut gb) = (vec![0.0f32; c * d], vec![0.0f32; c]);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = (0..n).collect();
    let mut xb = Vec::with_capacity(cfg.batch_size * d);
    let (wd, mu) = (cfg.weight_decay as f32, 0.9f32);
    let mut step = 0u64;
    for _ in 0..cfg.epochs {
        order.shuffle(&mut rng);
        for batch in order.chunks(cfg.batch_size) {
            let bs = batch.len();
            xb.clear();
            for &i in batch {
                xb.extend_from_slice(&xtrain[i * d..(i + 1) * d]);
            }
            // Softmax minus one-hot, over the batch size: dLoss/dlogits of the mean
            // cross-entropy.
            let mut g = logits(&xb, bs, d, &w, &b, false);
            for (row, &i) in g.chunks_exact_mut(c).zip(batch) {
                let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
                for (j, v) in row.iter_mut().enumerate() {
                    let p = ((*v - max) as f64).exp() / sum;
                    let y = f64::from(u8::from(j == ytrain[i] as usize));
                    *v = ((p - y) / bs as f64) as f32;
                }
            }
            matmul(
                &mut gw,
                View::new(&g, bs, c).t(),
                View::new(&xb, bs, d),
                false,
                false,
            );
            gb.fill(0.0);
            for row in g.chunks_exact(c) {
                gb.iter_mut().zip(row).for_each(|(a, &v)| *a += v);
            }
            let lr = schedule.lr(step) as f32;
            for ((p, &gr), buf) in w.iter_mut().zip(&gw).zip(&mut w_buf) {
                *buf = mu * *buf + (gr + wd * *p);
                *p -= lr * *buf;
            }
            for ((p, &gr), buf) in b.iter_mut().zip(&gb).zip(&mut b_buf) {
                *buf = mu * *buf + gr;
                *p -= lr * *buf;
            }
            step += 1;
        }
    }
    let (top1, top5) = topk_accuracy(&logits(&xtest, test.n, d, &w, &b, true), c, ytest);
    let (train_top1, _) = topk_accuracy(&logits(&xtrain, n, d, &w, &b, true), c, ytrain);
    Ok(ProbeResult {
        top1,
        top5,
        train_top1,
    })
}

/// The probe with its weight decay chosen from `candidates`; the best (the first on a
/// tie) is retrained on all of `train` and tested on `test`. Returns the result, the
/// chosen weight decay and the top-1 it was chosen by (`None` with a single candidate,
/// which is used directly, or when no choice is possible).
///
/// How candidates are scored depends on how many labelled images there are:
/// - when a held-out 10% keeps at least [`HOLDOUT_PER_CLASS`] images per class on
///   average, each candidate is trained on a seeded 90% and scored on the other 10%;
/// - otherwise (the few labels of a small label fraction, where 10% is one image per
///   class or none) by stratified k-fold cross-validation: `k = min(5, smallest class
///   size)` folds, each class's images dealt round-robin to the folds after a seeded
///   shuffle; a candidate's score is its mean top-1 over the folds;
/// - when some class has a single image, no split can score a candidate: the first
///   candidate is used and the returned score is `None`.
pub fn linear_probe_select(
    train: &FeatureMatrix,
    test: &FeatureMatrix,
    cfg: &ProbeConfig,
    candidates: &[f64],
) -> Result<(ProbeResult, f64, Option<f64>), EvalError> {
    let with = |wd: f64| ProbeConfig {
        weight_decay: wd,
        ..*cfg
    };
    let Some(&first) = candidates.first() else {
        return Err(EvalError::Config(
            "the linear probe needs at least one weight decay to choose from".into(),
        ));
    };
    if candidates.len() == 1 {
        return Ok((linear_probe(train, test, &with(first))?, first, None));
    }
    let labels = labels_of(train, "training")?;
    let classes = labels.iter().map(|&l| l as usize + 1).max().unwrap_or(0);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l as usize].push(i);
    }
    let present = by_class.iter().filter(|c| !c.is_empty()).count().max(1);
    // The held-out and the fold draws: a stream apart from the probe's own shuffling.
    let split_seed = cfg.seed ^ 0x5eed_0f5e_1ec7;
    // Each candidate's score: mean top-1 over the (fit, validation) splits.
    let splits: Vec<(Vec<usize>, Vec<usize>)> = if train.n / 10 >= HOLDOUT_PER_CLASS * present {
        let mut order: Vec<usize> = (0..train.n).collect();
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(split_seed));
        let (val, fit) = order.split_at(train.n / 10);
        vec![(fit.to_vec(), val.to_vec())]
    } else {
        let smallest = by_class
            .iter()
            .filter(|c| !c.is_empty())
            .map(Vec::len)
            .min()
            .unwrap_or(0);
        let k = smallest.min(5);
        if k < 2 {
            return Ok((linear_probe(train, test, &with(first))?, first, None));
        }
        let mut fold_of = vec![0usize; train.n];
        for (c, members) in by_class.iter_mut().enumerate() {
            let mut rng = ChaCha8Rng::seed_from_u64(split_seed);
            rng.set_stream(c as u64);
            members.shuffle(&mut rng);
            for (j, &i) in members.iter().enumerate() {
                fold_of[i] = j % k;
            }
        }
        (0..k)
            .map(|f| {
                let (val, fit): (Vec<usize>, Vec<usize>) =
                    (0..train.n).partition(|&i| fold_of[i] == f);
                (fit, val)
            })
            .collect()
    };
    // Each split's rows are copied once, not once per candidate.
    let splits: Vec<(FeatureMatrix, FeatureMatrix)> = splits
        .iter()
        .map(|(fit, val)| (train.select(fit), train.select(val)))
        .collect();
    let mut best: Option<(f64, f64)> = None;
    for &wd in candidates {
        let mut sum = 0.0;
        for (fit, val) in &splits {
            sum += linear_probe(fit, val, &with(wd))?.top1;
        }
        let score = sum / splits.len() as f64;
        if best.is_none_or(|(_, acc)| score > acc) {
            best = Some((wd, score));
        }
    }
    let (wd, acc) = best.expect("at least two candidates");
    Ok((linear_probe(train, test, &with(wd))?, wd, Some(acc)))
}

/// Average images per class a held-out 10% must keep for the weight decay to be chosen
/// on it; with fewer, [`linear_probe_select`] cross-validates.
pub const HOLDOUT_PER_CLASS: usize = 5;

/// The `linear_probe` downstream task: [`linear_probe_select`] on one kind of features
/// of every row, the weight decay chosen per row.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeTask {
    /// The probe's settings (its `weight_decay` is ignored: see `weight_decays`).
    pub cfg: ProbeConfig,
    /// The weight decays to choose from (one: used as is).
    pub weight_decays: Vec<f64>,
    /// Backbone or head features.
    pub features: super::features::Which,
    /// Also measure the untrained network and the raw pixels.
    pub baselines: bool,
    /// The labelled fractions of the training split to measure at (`[1.0]`: all).
    pub fractions: Vec<f64>,
}

impl ProbeTask {
    /// Top-1 and top-5 of every row with the chosen weight decays, at each labelled
    /// fraction: one `results.json` entry, two report columns (the largest fraction),
    /// the trained row's `linear_top1`/`linear_top5` record, a remark naming the chosen
    /// weight decays when there was a choice, and the label-efficiency table with
    /// several fractions.
    pub fn run<D: crate::nn::EngineDevice>(
        &self,
        enc: &mut super::downstream::Encoders<'_, D>,
    ) -> Result<super::downstream::TaskOutput, super::downstream::DownstreamError> {
        use super::downstream::Row;
        let wds = &self.weight_decays;
        let json = serde_json::json!({"task": "linear_probe", "epochs": self.cfg.epochs,
            "lr": self.cfg.lr,
            "weight_decay": wds,
            "standardize": self.cfg.standardize,
            "features": format!("{:?}", self.features).to_lowercase()});
        let mut by = Vec::new();
        let mut chosen = Vec::new();
        for &f in &self.fractions {
            let res = enc.each_row(self.baselines, self.features, f, |a, b| {
                linear_probe_select(a, b, &self.cfg, wds)
            })?;
            let at = if self.fractions.len() > 1 || f < 1.0 {
                format!(" at {}", super::subsets::percent(f))
            } else {
                String::new()
            };
            for row in Row::ALL {
                if let Some((_, wd, _)) = &res[row as usize] {
                    chosen.push(format!("{}{at} {wd}", row.title()));
                }
            }
            by.push((f, enc.labelled(f)?.len(), res));
        }
        let mut out = super::downstream::fraction_output(
            json,
            "linear top-1",
            "linear",
            true,
            &by,
            |(r, _, _)| (r.top1, r.top5),
            |(r, wd, held_out), v| {
                v["train_top1"] = serde_json::json!(r.train_top1);
                v["weight_decay"] = serde_json::json!(wd);
                v["held_out_top1"] = serde_json::json!(held_out);
            },
        );
        if wds.len() > 1 {
            out.notes.push(format!(
                "Linear probe: weight decay chosen from {wds:?} on a held-out 10% of the \
                 training split (by stratified k-fold cross-validation when that would \
                 keep fewer than {HOLDOUT_PER_CLASS} images per class), per feature set: {}.",
                chosen.join(", ")
            ));
        }
        Ok(out)
    }
}
