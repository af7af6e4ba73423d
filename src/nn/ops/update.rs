//! The device half of training's two non-op passes over the parameters: the
//! optimiser's per-entry update and the gradient transfer of the all-reduce.
//!
//! Both are [`EngineDevice`](super::EngineDevice) methods, so a device is chosen the
//! way every op's is, by the type parameter, never by a downcast:
//! - [`EngineDevice::update_entry`](super::EngineDevice::update_entry) moves one flat
//!   parameter by an [`EntryUpdate`]. The default is the tensor-op form
//!   ([`composed::update_entry`](super::composed::update_entry): dfdx ops that
//!   replace the parameter and state tensors); `Cpu` overrides it with one fused,
//!   multithreaded pass per entry in the tensors' own storage (`cpu/update.rs`).
//! - [`EngineDevice::gradient_to_host`](super::EngineDevice::gradient_to_host) and
//!   [`gradient_from_host`](super::EngineDevice::gradient_from_host) copy one
//!   parameter's gradient into a host bucket and the reduced sum back. The defaults
//!   go through dfdx tensors; `Cpu` overrides them with slices of the gradient's own
//!   buffer.
//!
//! The hook sits at the level of one entry's kernel on flat buffers, not of a whole
//! optimiser or collective, so that `nn` knows nothing of `optim` or `dist`: the
//! optimiser (`crate::optim`) resolves its configuration, the entry's decay flag,
//! the step's learning rate and the step count into an [`EntryUpdate`], owns the
//! state by name and hands the entry's state tensors in as `slots`; the all-reduce
//! (`crate::dist::grads`) owns the bucketing and the collective, and asks the
//! device only to move one gradient in or out. Each form keeps the arithmetic it has
//! always had, in the same order (f32, `1 − β` rounded from f64); the two forms
//! differ only in where reductions (LARS's norms) sum first, and
//! `tests/optim_numeric.rs` checks both against hand-computed values.

use dfdx::prelude::*;

use super::T1;

/// One trainable entry's update in one optimiser step, with the optimiser's
/// hyper-parameters resolved for that entry: its weight-decay flag applied (a
/// weight decay of 0, or no [`Trust`], where the flag is clear), the step's
/// learning rate `lr` and, for AdamW, the step count. The formulas are the
/// optimisers' (see `crate::optim`'s `SgdConfig`, `LarsConfig`, `AdamWConfig`);
/// `p` is the parameter, `g` its gradient.
///
/// State slots, in order: one momentum buffer for `Sgd` and `Lars` when
/// `momentum > 0`, none otherwise; `exp_avg` then `exp_avg_sq` for `AdamW`
/// ([`slots`](EntryUpdate::slots)). Each is as long as the parameter, zero before
/// the first step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum EntryUpdate {
    /// `d = g + wd·p` (where `weight_decay ≠ 0`), then heavy-ball or Nesterov
    /// momentum, then `p = p − lr·d`.
    Sgd {
        /// This step's learning rate.
        lr: f64,
        /// Momentum factor μ ≥ 0.
        momentum: f64,
        /// Nesterov momentum.
        nesterov: bool,
        /// Coupled weight decay; 0 for an entry that is not decayed.
        weight_decay: f64,
    },
    /// `d = g`, scaled by the trust ratio where `trust` is set and both norms are
    /// positive (`d = t·(g + wd·p)`), then momentum and `p = p − lr·d` as `Sgd`.
    Lars {
        /// This step's learning rate.
        lr: f64,
        /// Momentum factor μ ≥ 0.
        momentum: f64,
        /// Nesterov momentum.
        nesterov: bool,
        /// The layer-wise adaptation; `None` for an entry that is not decayed.
        trust: Option<Trust>,
    },
    /// `p = p·(1 − lr·wd)` (where `weight_decay ≠ 0`), the moment updates and the
    /// bias-corrected step.
    AdamW {
        /// This step's learning rate.
        lr: f64,
        /// The step count `t` (1 for the first step).
        step: u64,
        /// β1.
        beta1: f64,
        /// β2.
        beta2: f64,
        /// ε.
        eps: f64,
        /// Decoupled weight decay; 0 for an entry that is not decayed.
        weight_decay: f64,
    },
}

/// LARS's trust ratio `t = η·‖p‖ / (‖g‖ + wd·‖p‖ + ε)`, `min(t / lr, 1)` when
/// clipped.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Trust {
    /// Weight decay inside the ratio and the direction.
    pub weight_decay: f64,
    /// Trust coefficient η.
    pub eta: f64,
    /// ε in the denominator.
    pub eps: f64,
    /// LARC-style clipping.
    pub clip_lr: bool,
}

impl EntryUpdate {
    /// How many state slots the update reads and writes (see the type's docs).
    pub fn slots(&self) -> usize {
        match *self {
            EntryUpdate::Sgd { momentum, .. } | EntryUpdate::Lars { momentum, .. } => {
                usize::from(momentum != 0.0)
            }
            EntryUpdate::AdamW { .. } => 2,
        }
    }

    /// Errors unless `slots` are as many state tensors as the update keeps, each as
    /// long as the parameter (`n` values): a zip over mismatched buffers would
    /// silently truncate.
    pub(crate) fn check<D: Device<f32>>(
        &self,
        n: usize,
        slots: &[T1<D, NoneTape>],
    ) -> Result<(), String> {
        if slots.len() != self.slots() {
            return Err(format!(
                "{} state tensors for an update that keeps {}",
                slots.len(),
                self.slots()
            ));
        }
        match slots.iter().map(|s| s.shape().0).find(|&l| l != n) {
            Some(l) => Err(format!("a state tensor has {l} values, the parameter {n}")),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use dfdx::prelude::*;

    use crate::nn::ops::{EngineDevice, composed};

    /// The CPU's gradient transfer and the composed default read and write the same
    /// values, allocating a zero gradient for a tensor that has none.
    #[test]
    fn gradient_transfer_forms_agree() {
        let dev = Cpu::default();
        let p = dev.tensor_from_vec(vec![1.0f32, -2.0, 3.0], (3,));
        let q = dev.tensor_from_vec(vec![4.0f32, 5.0], (2,));
        let c = dev.tensor_from_vec(vec![0.5f32, -1.0, 2.0], (3,));
        let mut a = (p.clone().traced(Gradients::leaky()) * c)
            .sum::<Rank0, _>()
            .backward();
        let mut b = a.clone();
        let (mut ha, mut hb) = (Vec::new(), Vec::new());
        for t in [&p, &q] {
            Cpu::gradient_to_host(t, &mut a, &mut ha).unwrap();
            composed::gradient_to_host(t, &mut b, &mut hb).unwrap();
        }
        assert_eq!(ha, [0.5, -1.0, 2.0, 0.0, 0.0]);
        assert_eq!(ha, hb);
        let sum = [3.0f32, 1.0, -4.0, 2.0, 8.0];
        Cpu::gradient_from_host(&p, &mut a, &sum, 0.5).unwrap();
        composed::gradient_from_host(&p, &mut b, &sum, 0.5).unwrap();
        composed::gradient_from_host(&q, &mut b, &sum[3..], 0.5).unwrap();
        Cpu::gradient_from_host(&q, &mut a, &sum[3..], 0.5).unwrap();
        for g in [&a, &b] {
            assert_eq!(g.get(&p).as_vec(), [1.5, 0.5, -2.0]);
            assert_eq!(g.get(&q).as_vec(), [1.0, 4.0]);
        }
    }
}
