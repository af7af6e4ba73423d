//! Optimisers and learning-rate schedules over the parameter store.
//!
//! An [`Optimizer`] updates the entries of a [`ParamStore`] from dfdx [`Gradients`]:
//! SGD ([`SgdConfig`]), LARS ([`LarsConfig`]) and AdamW ([`AdamWConfig`]). The learning
//! rate is not part of any optimiser config: the caller passes it to every
//! [`Optimizer::step`], taken from a [`schedule::Schedule`]. The recipe's learning-rate
//! scaling rule ([`schedule::LrScaling`]) is applied once, when the schedule's peak lr is
//! resolved, and the result ([`schedule::ScaledLr`]) is printable so the run reports it.
//!
//! Invariants:
//! - Only entries with `trainable == true` are read or written; buffers and frozen
//!   parameters are never touched, and no state is kept for them.
//! - Weight decay (and, for LARS, the trust-ratio adaptation) applies only to entries
//!   whose `decay` flag is set; the flag comes from the store's
//!   [`DecayPolicy`](crate::nn::params::DecayPolicy) (biases and norm parameters
//!   excluded by default).
//! - Updates are written with dfdx tensor ops, so they run on any dfdx device (CPU and
//!   CUDA); on `Cpu` the same formulas run as one fused multithreaded pass per entry
//!   (`cpu.rs`). The tensor-op form *replaces* an entry's tensor (a new tensor id),
//!   exactly like [`ParamStore::set_data`]; the `Cpu` pass updates it in place (same
//!   id, its storage made unique first). Gradients must therefore be computed afresh
//!   every step: a persistent `Gradients` would miss the new tensors on one path and
//!   add old gradients on the other.
//! - A trainable entry that has no gradient in the `Gradients` is treated as having a
//!   zero gradient (PyTorch's `zero_grad(set_to_none=False)`): momentum and weight decay
//!   still move it. To hold a parameter still, make it non-trainable.
//! - All optimiser state (momentum buffers, Adam moments, the step count) is exported by
//!   [`Optimizer::state`] under stable names (`<param>.momentum_buffer`,
//!   `<param>.exp_avg`, `<param>.exp_avg_sq`; PyTorch's state names) and restored by
//!   [`Optimizer::load_state`], which validates everything before changing anything.
//!
//! `dfdx::prelude::*` also exports an `Optimizer` trait and an `SgdConfig`; import this
//! module's names explicitly (`use recipe::optim::{Optimizer, SgdConfig}`), which
//! shadows the glob.

mod cpu;
pub mod schedule;

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;

use dfdx::prelude::*;

use crate::nn::params::{Entry, Flat, ParamStore};

/// SGD with momentum as PyTorch's `torch.optim.SGD` with `dampening = 0`.
///
/// Per trainable entry with gradient `g`, weight `p`, momentum buffer `b` (zero at
/// first) and learning rate `lr`:
///
/// ```text
/// g' = g + wd·p                  (only if the entry's decay flag is set; coupled L2)
/// b  = μ·b + g'                  (only if μ > 0)
/// d  = g' + μ·b  if nesterov, else b   (d = g' when μ = 0)
/// p  = p − lr·d
/// ```
///
/// Starting `b` at zero gives PyTorch's first step (`b = g'`) exactly, because
/// dampening is zero.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    /// Momentum factor μ ≥ 0 (0 disables momentum and its buffer).
    pub momentum: f64,
    /// Nesterov momentum (requires μ > 0).
    pub nesterov: bool,
    /// Coupled L2 weight decay, added to the gradient of decayed entries.
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    fn default() -> Self {
        SgdConfig {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        }
    }
}

/// LARS: SGD with a layer-wise trust ratio, as solo-learn's `solo/utils/lars.py`
/// (itself from PyTorch Lightning Bolts) with `dampening = 0`, following You et al.,
/// "Large Batch Training of Convolutional Networks" (arXiv:1708.03888), Eq. 6.
///
/// For a trainable entry whose `decay` flag is set, with `‖·‖` the L2 norm of the whole
/// entry:
///
/// ```text
/// if ‖p‖ > 0 and ‖g‖ > 0:
///     t = η·‖p‖ / (‖g‖ + wd·‖p‖ + ε)
///     t = min(t / lr, 1)                (only if clip_lr)
///     d = t·(g + wd·p)
/// else:
///     d = g                             (no decay either, as in solo-learn)
/// ```
///
/// An entry whose `decay` flag is clear (biases and norm parameters under the default
/// policy: solo-learn's `exclude_bias_n_norm`, the SimCLR reference's
/// `exclude_from_weight_decay` = `exclude_from_layer_adaptation`) gets `d = g`: no
/// decay and no adaptation. Then, as in SGD with buffer `b` (zero at first):
///
/// ```text
/// b = μ·b + d;   d = d + μ·b if nesterov, else b;   p = p − lr·d
/// ```
///
/// The learning rate multiplies outside the momentum buffer (PyTorch convention); the
/// TensorFlow SimCLR reference puts it inside, which differs only while lr changes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LarsConfig {
    /// Momentum factor μ ≥ 0.
    pub momentum: f64,
    /// Nesterov momentum (requires μ > 0).
    pub nesterov: bool,
    /// Weight decay of adapted entries (inside the trust ratio and the update).
    pub weight_decay: f64,
    /// Trust coefficient η (solo-learn and SimCLR use 1e-3).
    pub eta: f64,
    /// ε in the trust-ratio denominator.
    pub eps: f64,
    /// Clip the trust ratio to `min(t / lr, 1)` (LARC-style clipping).
    pub clip_lr: bool,
}

impl Default for LarsConfig {
    fn default() -> Self {
        LarsConfig {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
            eta: 1e-3,
            eps: 1e-8,
            clip_lr: false,
        }
    }
}

/// AdamW as PyTorch's `torch.optim.AdamW` (`amsgrad = False`), after Loshchilov &
/// Hutter, "Decoupled Weight Decay Regularization" (arXiv:1711.05101).
///
/// At step `t` (1 for the first step), per trainable entry:
///
/// ```text
/// p = p·(1 − lr·wd)                          (only if the entry's decay flag is set)
/// m = β1·m + (1 − β1)·g
/// v = β2·v + (1 − β2)·g²
/// p = p − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + ε)
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// β1, the first-moment decay, in [0, 1).
    pub beta1: f64,
    /// β2, the second-moment decay, in [0, 1).
    pub beta2: f64,
    /// ε added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        // PyTorch's defaults.
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 1e-2,
        }
    }
}

/// Which optimiser to run, with its hyper-parameters (the learning rate comes from the
/// schedule at every step).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerConfig {
    /// Stochastic gradient descent.
    Sgd(SgdConfig),
    /// Layer-wise adaptive rate scaling.
    Lars(LarsConfig),
    /// Adam with decoupled weight decay.
    AdamW(AdamWConfig),
}

impl OptimizerConfig {
    /// Short name, also written into checkpoints (`sgd`, `lars`, `adamw`).
    pub fn kind(&self) -> &'static str {
        match self {
            OptimizerConfig::Sgd(_) => "sgd",
            OptimizerConfig::Lars(_) => "lars",
            OptimizerConfig::AdamW(_) => "adamw",
        }
    }

    /// Names of the per-parameter state slots this optimiser keeps.
    pub fn slots(&self) -> &'static [&'static str] {
        match self {
            OptimizerConfig::Sgd(SgdConfig { momentum, .. })
            | OptimizerConfig::Lars(LarsConfig { momentum, .. }) => {
                if *momentum > 0.0 {
                    &["momentum_buffer"]
                } else {
                    &[]
                }
            }
            OptimizerConfig::AdamW(_) => &["exp_avg", "exp_avg_sq"],
        }
    }

    /// Checks every hyper-parameter and returns all problems at once.
    pub fn validate(&self) -> Result<(), OptimError> {
        let mut problems = Vec::new();
        let mut check = |ok: bool, field: &str, what: &str, value: f64| {
            if !ok {
                problems.push(format!("`{field}` must be {what}, got {value}"));
            }
        };
        let nonneg = |x: f64| x.is_finite() && x >= 0.0;
        let unit = |x: f64| x.is_finite() && (0.0..1.0).contains(&x);
        // SGD and LARS share their momentum and decay rules.
        let momentum_checks = |check: &mut dyn FnMut(bool, &str, &str, f64),
                               momentum: f64,
                               wd: f64,
                               nesterov: bool| {
            check(nonneg(momentum), "momentum", "finite and >= 0", momentum);
            check(nonneg(wd), "weight_decay", "finite and >= 0", wd);
            check(
                !nesterov || momentum > 0.0,
                "momentum",
                "> 0 when nesterov is on",
                momentum,
            );
        };
        match *self {
            OptimizerConfig::Sgd(c) => {
                momentum_checks(&mut check, c.momentum, c.weight_decay, c.nesterov);
            }
            OptimizerConfig::Lars(c) => {
                momentum_checks(&mut check, c.momentum, c.weight_decay, c.nesterov);
                check(c.eta.is_finite() && c.eta > 0.0, "eta", "> 0", c.eta);
                check(nonneg(c.eps), "eps", "finite and >= 0", c.eps);
            }
            OptimizerConfig::AdamW(c) => {
                check(unit(c.beta1), "beta1", "in [0, 1)", c.beta1);
                check(unit(c.beta2), "beta2", "in [0, 1)", c.beta2);
                check(nonneg(c.eps), "eps", "finite and >= 0", c.eps);
                check(
                    nonneg(c.weight_decay),
                    "weight_decay",
                    "finite and >= 0",
                    c.weight_decay,
                );
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(OptimError::Config {
                optimizer: self.kind(),
                problems,
            })
        }
    }
}

/// Errors from building or stepping an optimiser, or restoring its state.
#[derive(Debug, Clone, PartialEq)]
pub enum OptimError {
    /// Hyper-parameters out of range (every problem listed).
    Config {
        /// `sgd`, `lars` or `adamw`.
        optimizer: &'static str,
        /// One line per bad field.
        problems: Vec<String>,
    },
    /// The learning rate passed to a step is negative or not finite.
    LearningRate(f64),
    /// Restored state was written by a different optimiser.
    Kind {
        /// The optimiser being restored.
        expected: &'static str,
        /// The optimiser named in the state.
        found: String,
    },
    /// Restored state does not match the store (every mismatch listed by name).
    State(Vec<String>),
    /// The device failed to allocate a buffer.
    Device(String),
}

impl fmt::Display for OptimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OptimError::Config {
                optimizer,
                problems,
            } => write!(f, "invalid {optimizer} settings: {}", problems.join("; ")),
            OptimError::LearningRate(lr) => {
                write!(f, "learning rate must be finite and >= 0, got {lr}")
            }
            OptimError::Kind { expected, found } => write!(
                f,
                "optimiser state was saved by `{found}` but the recipe uses `{expected}`"
            ),
            OptimError::State(problems) => write!(
                f,
                "optimiser state does not match the model: {}",
                problems.join("; ")
            ),
            OptimError::Device(e) => write!(f, "device error during the optimiser step: {e}"),
        }
    }
}

impl std::error::Error for OptimError {}

/// One named state tensor, host side (for checkpoints).
#[derive(Clone, Debug, PartialEq)]
pub struct StateTensor {
    /// `<param>.<slot>`, e.g. `layer1.0.conv1.weight.momentum_buffer`.
    pub name: String,
    /// The parameter's logical shape.
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// Everything an optimiser needs to resume exactly.
#[derive(Clone, Debug, PartialEq)]
pub struct OptimizerState {
    /// `sgd`, `lars` or `adamw`.
    pub kind: String,
    /// Number of steps taken (AdamW's bias-correction `t`).
    pub step: u64,
    /// Per-parameter state, one tensor per trainable entry and slot, in store order.
    pub tensors: Vec<StateTensor>,
}

/// An optimiser bound to one configuration; it keeps state per parameter name.
#[derive(Clone, Debug)]
pub struct Optimizer<D: Device<f32>> {
    cfg: OptimizerConfig,
    step: u64,
    /// `<param>.<slot>` -> state tensor (flat, like the store's entries).
    state: BTreeMap<String, Flat<D>>,
    /// Use the fused multithreaded kernel when the device is `Cpu`.
    fused: bool,
}

fn slot_name(param: &str, slot: &str) -> String {
    format!("{param}.{slot}")
}

/// A host copy of a flat tensor (`copy_into` is a `memcpy` on `Cpu`, where `as_vec`
/// walks a strided index).
pub(crate) fn host_copy<D: Device<f32>>(t: &Flat<D>) -> Vec<f32> {
    let mut v = vec![0.0; t.shape().0];
    t.copy_into(&mut v);
    v
}

fn norm<D: Device<f32>>(t: &Flat<D>) -> f32 {
    t.clone().square().sum::<Rank0, _>().as_vec()[0].sqrt()
}

impl<D: Device<f32>> Optimizer<D> {
    /// An optimiser with fresh (zero) state; fails on out-of-range hyper-parameters.
    pub fn new(cfg: OptimizerConfig) -> Result<Self, OptimError> {
        cfg.validate()?;
        Ok(Optimizer {
            cfg,
            step: 0,
            state: BTreeMap::new(),
            fused: true,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &OptimizerConfig {
        &self.cfg
    }

    /// Chooses between the fused multithreaded CPU kernel (the default, used only when
    /// the device is `Cpu`) and the device-generic tensor-op form, which is what runs on
    /// every other device and serves as the reference in tests.
    pub fn set_fused(&mut self, fused: bool) {
        self.fused = fused;
    }

    /// Steps taken so far.
    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// Takes one step with learning rate `lr` on every trainable entry of `store`.
    ///
    /// `grads` is taken mutably only so that an entry without a gradient can be given a
    /// zero one (see the module invariants). On `Cpu` this runs the fused kernel of
    /// [`set_fused`](Self::set_fused); elsewhere, dfdx tensor ops. A device error
    /// (allocation failure) can leave the step half-applied.
    pub fn step(
        &mut self,
        store: &mut ParamStore<D>,
        grads: &mut Gradients<f32, D>,
        lr: f64,
    ) -> Result<(), OptimError>
    where
        D: 'static,
    {
        if !lr.is_finite() || lr < 0.0 {
            return Err(OptimError::LearningRate(lr));
        }
        self.step += 1;
        if self.fused {
            let cpu = (
                (self as &mut dyn Any).downcast_mut::<Optimizer<Cpu>>(),
                (store as &mut dyn Any).downcast_mut::<ParamStore<Cpu>>(),
                (grads as &mut dyn Any).downcast_mut::<Gradients<f32, Cpu>>(),
            );
            if let (Some(opt), Some(store), Some(grads)) = cpu {
                return opt.step_cpu(store, grads, lr);
            }
        }
        let t = self.step;
        let cfg = self.cfg;
        let dev = store.device().clone();
        for e in store.entries_mut().iter_mut().filter(|e| e.trainable) {
            grads
                .try_alloc_for(&e.tensor)
                .map_err(|err| OptimError::Device(format!("{err:?}")))?;
            let g = grads.get(&e.tensor);
            match cfg {
                OptimizerConfig::Sgd(c) => {
                    let mut d = g;
                    if e.decay && c.weight_decay != 0.0 {
                        d = d + e.tensor.clone() * c.weight_decay as f32;
                    }
                    let d = self.momentum(&dev, e, d, c.momentum, c.nesterov);
                    e.tensor = e.tensor.clone() - d * lr as f32;
                }
                OptimizerConfig::Lars(c) => {
                    let mut d = g;
                    if e.decay {
                        let p_norm = norm(&e.tensor);
                        let g_norm = norm(&d);
                        if p_norm > 0.0 && g_norm > 0.0 {
                            let wd = c.weight_decay as f32;
                            let mut trust =
                                c.eta as f32 * p_norm / (g_norm + p_norm * wd + c.eps as f32);
                            if c.clip_lr {
                                trust = (trust / lr as f32).min(1.0);
                            }
                            if wd != 0.0 {
                                d = d + e.tensor.clone() * wd;
                            }
                            d = d * trust;
                        }
                    }
                    let d = self.momentum(&dev, e, d, c.momentum, c.nesterov);
                    e.tensor = e.tensor.clone() - d * lr as f32;
                }
                OptimizerConfig::AdamW(c) => {
                    if e.decay && c.weight_decay != 0.0 {
                        e.tensor = e.tensor.clone() * (1.0 - lr * c.weight_decay) as f32;
                    }
                    // 1 − β in f64 then rounded, as PyTorch does with its Python scalars
                    // (rounding β first makes 1 − β off by ~5e-5 relative for β2 = 0.999).
                    let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
                    let (c1, c2) = ((1.0 - c.beta1) as f32, (1.0 - c.beta2) as f32);
                    let m = self.slot(&dev, e, "exp_avg") * b1 + g.clone() * c1;
                    let v = self.slot(&dev, e, "exp_avg_sq") * b2 + g.square() * c2;
                    let bc1 = 1.0 - c.beta1.powf(t as f64);
                    let bc2 = 1.0 - c.beta2.powf(t as f64);
                    let denom = v.clone().sqrt() * (1.0 / bc2.sqrt()) as f32 + c.eps as f32;
                    let upd = (m.clone() / denom) * (lr / bc1) as f32;
                    e.tensor = e.tensor.clone() - upd;
                    self.state.insert(slot_name(&e.name, "exp_avg"), m);
                    self.state.insert(slot_name(&e.name, "exp_avg_sq"), v);
                }
            }
        }
        Ok(())
    }

    /// The state tensor `slot` of `e`, zero if it does not exist yet.
    fn slot(&self, dev: &D, e: &Entry<D>, slot: &str) -> Flat<D> {
        match self.state.get(&slot_name(&e.name, slot)) {
            Some(t) => t.clone(),
            None => dev.zeros_like(&(e.numel(),)),
        }
    }

    /// The heavy-ball / Nesterov part shared by SGD and LARS; returns the direction.
    fn momentum(
        &mut self,
        dev: &D,
        e: &Entry<D>,
        d: Flat<D>,
        momentum: f64,
        nesterov: bool,
    ) -> Flat<D> {
        if momentum == 0.0 {
            return d;
        }
        let mu = momentum as f32;
        let buf = self.slot(dev, e, "momentum_buffer") * mu + d.clone();
        self.state
            .insert(slot_name(&e.name, "momentum_buffer"), buf.clone());
        if nesterov { d + buf * mu } else { buf }
    }

    /// Names and shapes of the state tensors this optimiser has for `store`, in store
    /// order: one per trainable entry and slot.
    pub fn state_layout(&self, store: &ParamStore<D>) -> Vec<(String, Vec<usize>)> {
        let slots = self.cfg.slots();
        store
            .entries()
            .iter()
            .filter(|e| e.trainable)
            .flat_map(|e| {
                slots
                    .iter()
                    .map(move |s| (slot_name(&e.name, s), e.shape.clone()))
            })
            .collect()
    }

    /// A host copy of the whole state (slots not yet used are exported as zeros, which is
    /// what a fresh slot holds).
    pub fn state(&self, store: &ParamStore<D>) -> OptimizerState {
        let tensors = self
            .state_layout(store)
            .into_iter()
            .map(|(name, shape)| {
                let data = match self.state.get(&name) {
                    Some(t) => host_copy(t),
                    None => vec![0.0; shape.iter().product()],
                };
                StateTensor { name, shape, data }
            })
            .collect();
        OptimizerState {
            kind: self.cfg.kind().to_string(),
            step: self.step,
            tensors,
        }
    }

    /// Restores state saved by [`Optimizer::state`]. Every tensor must be present with
    /// the right shape and nothing extra may be given; all mismatches are reported
    /// together and, on error, the optimiser is left unchanged.
    pub fn load_state(
        &mut self,
        store: &ParamStore<D>,
        state: &OptimizerState,
    ) -> Result<(), OptimError> {
        if state.kind != self.cfg.kind() {
            return Err(OptimError::Kind {
                expected: self.cfg.kind(),
                found: state.kind.clone(),
            });
        }
        let layout = self.state_layout(store);
        let expected: BTreeMap<&str, &Vec<usize>> =
            layout.iter().map(|(n, s)| (n.as_str(), s)).collect();
        let mut given = BTreeMap::new();
        let mut problems = Vec::new();
        for t in &state.tensors {
            if given.insert(t.name.as_str(), t).is_some() {
                problems.push(format!("`{}` given twice", t.name));
            }
        }
        for (name, shape) in &expected {
            match given.get(name) {
                None => problems.push(format!("missing `{name}`")),
                Some(t) if &&t.shape != shape => problems.push(format!(
                    "`{name}` has shape {:?}, expected {:?}",
                    t.shape, shape
                )),
                Some(t) if t.data.len() != t.shape.iter().product::<usize>() => {
                    problems.push(format!(
                        "`{name}` has {} values for shape {:?}",
                        t.data.len(),
                        t.shape
                    ))
                }
                Some(_) => {}
            }
        }
        for name in given.keys() {
            if !expected.contains_key(name) {
                problems.push(format!("unexpected `{name}`"));
            }
        }
        if !problems.is_empty() {
            return Err(OptimError::State(problems));
        }
        let dev = store.device();
        self.state = state
            .tensors
            .iter()
            .map(|t| {
                let n = t.data.len();
                (t.name.clone(), dev.tensor_from_vec(t.data.clone(), (n,)))
            })
            .collect();
        self.step = state.step;
        Ok(())
    }
}
