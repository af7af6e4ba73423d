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
//! - The optimiser resolves its configuration per entry and step into an
//!   [`EntryUpdate`] ([`OptimizerConfig::entry_update`]) and keeps the state by name;
//!   the device runs the update ([`EngineDevice::update_entry`], see
//!   `crate::nn::ops::update`). Its default, the tensor-op form, runs on any dfdx
//!   device (CPU and CUDA); on `Cpu` the same formulas run as one fused multithreaded
//!   pass per entry. The tensor-op form *replaces* an entry's tensor (a new tensor id),
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

pub mod schedule;

use std::collections::BTreeMap;
use std::fmt;

use dfdx::prelude::*;

use crate::nn::EngineDevice;
use crate::nn::ops::composed;
use crate::nn::ops::update::{EntryUpdate, Trust};
use crate::nn::params::{Flat, ParamStore};

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

    /// The update of one trainable entry at this step, for the device kernels
    /// ([`EngineDevice::update_entry`]): `decay` is the entry's weight-decay flag
    /// (clear: no decay, and for LARS no adaptation), `lr` the step's learning rate,
    /// `step` the step count after this step (AdamW's `t`).
    pub fn entry_update(&self, decay: bool, lr: f64, step: u64) -> EntryUpdate {
        let wd = |w: f64| if decay { w } else { 0.0 };
        match *self {
            OptimizerConfig::Sgd(c) => EntryUpdate::Sgd {
                lr,
                momentum: c.momentum,
                nesterov: c.nesterov,
                weight_decay: wd(c.weight_decay),
            },
            OptimizerConfig::Lars(c) => EntryUpdate::Lars {
                lr,
                momentum: c.momentum,
                nesterov: c.nesterov,
                trust: decay.then_some(Trust {
                    weight_decay: c.weight_decay,
                    eta: c.eta,
                    eps: c.eps,
                    clip_lr: c.clip_lr,
                }),
            },
            OptimizerConfig::AdamW(c) => EntryUpdate::AdamW {
                lr,
                step,
                beta1: c.beta1,
                beta2: c.beta2,
                eps: c.eps,
                weight_decay: wd(c.weight_decay),
            },
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
    /// Move entries by the device's update ([`EngineDevice::update_entry`]: the fused
    /// kernel on `Cpu`) rather than always by the tensor-op form.
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

    /// Chooses between the device's update (the default: on `Cpu` the fused
    /// multithreaded kernel) and the device-generic tensor-op form
    /// ([`composed::update_entry`]), which is what every other device runs and serves
    /// as the reference in tests.
    pub fn set_fused(&mut self, fused: bool) {
        self.fused = fused;
    }

    /// Steps taken so far.
    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// A slot's tensor taken out of the state (zeros when the slot does not exist
    /// yet), so that an update in place finds its storage unshared; the caller puts
    /// it back with [`put_slots`](Self::put_slots).
    fn take_slot(
        &mut self,
        dev: &D,
        name: &str,
        slot: &str,
        n: usize,
    ) -> Result<Flat<D>, OptimError> {
        let key = slot_name(name, slot);
        let t = self
            .state
            .remove(&key)
            .unwrap_or_else(|| dev.zeros_like(&(n,)));
        if t.shape().0 != n {
            let found = t.shape().0;
            self.state.insert(key, t);
            return Err(OptimError::Device(format!(
                "state `{slot}` of `{name}` has {found} values, the parameter {n}"
            )));
        }
        Ok(t)
    }

    /// Puts the slots [`take_slot`](Self::take_slot) took for entry `name` back,
    /// in the configuration's slot order.
    fn put_slots(&mut self, name: &str, slots: Vec<Flat<D>>) {
        for (slot, t) in self.cfg.slots().iter().zip(slots) {
            self.state.insert(slot_name(name, slot), t);
        }
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

impl<D: EngineDevice> Optimizer<D> {
    /// Takes one step with learning rate `lr` on every trainable entry of `store`.
    ///
    /// `grads` is taken mutably only so that an entry without a gradient can be given a
    /// zero one (see the module invariants). Each entry moves by
    /// [`EngineDevice::update_entry`] (on `Cpu`, the fused kernel), or by the tensor-op
    /// form ([`composed::update_entry`]) when [`set_fused`](Self::set_fused) turned
    /// that off. A device error (allocation failure) can leave the step half-applied.
    pub fn step(
        &mut self,
        store: &mut ParamStore<D>,
        grads: &mut Gradients<f32, D>,
        lr: f64,
    ) -> Result<(), OptimError> {
        if !lr.is_finite() || lr < 0.0 {
            return Err(OptimError::LearningRate(lr));
        }
        self.step += 1;
        let dev = store.device().clone();
        let names = self.cfg.slots();
        for e in store.entries_mut().iter_mut().filter(|e| e.trainable) {
            let update = self.cfg.entry_update(e.decay, lr, self.step);
            let mut slots = Vec::with_capacity(names.len());
            for slot in names {
                match self.take_slot(&dev, &e.name, slot, e.numel()) {
                    Ok(t) => slots.push(t),
                    Err(err) => {
                        self.put_slots(&e.name, slots);
                        return Err(err);
                    }
                }
            }
            let moved = if self.fused {
                D::update_entry(&update, &mut e.tensor, grads, &mut slots)
            } else {
                composed::update_entry(&update, &mut e.tensor, grads, &mut slots)
            };
            self.put_slots(&e.name, slots);
            moved.map_err(|err| OptimError::Device(format!("`{}`: {err}", e.name)))?;
        }
        Ok(())
    }
}
