//! The fused, multithreaded CPU form of the optimiser updates.
//!
//! dfdx's elementwise ops allocate a tensor per op and run single-threaded, so the
//! tensor-op form in `mod.rs` makes ~7–12 passes over every parameter. On `Cpu` the
//! same formulas run here as one parallel pass per entry, reading the gradient in place
//! (`Gradients::get_or_alloc_mut` derefs to the buffer) and updating parameters and
//! state in their own storage (`view_mut`: no copies, which on ResNet-50 were 5% of
//! the step). The arithmetic is the same, in the same order, as
//! the tensor-op form (f32, with `1 − β` rounded from f64); `tests/optim_numeric.rs`
//! checks both forms against the hand-computed values.

use dfdx::prelude::*;
use rayon::prelude::*;

use super::{Flat, OptimError, Optimizer, OptimizerConfig, slot_name};
use crate::nn::ops::cpu::view_mut;
use crate::nn::params::ParamStore;

/// Elements per parallel work item; small entries run as a single item.
const CHUNK: usize = 1 << 15;

fn par2(p: &mut [f32], g: &[f32], f: impl Fn(&mut f32, f32) + Sync) {
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .for_each(|(p, g)| p.iter_mut().zip(g).for_each(|(p, &g)| f(p, g)));
}

fn par3(p: &mut [f32], g: &[f32], b: &mut [f32], f: impl Fn(&mut f32, f32, &mut f32) + Sync) {
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(b.par_chunks_mut(CHUNK))
        .for_each(|((p, g), b)| {
            for ((p, &g), b) in p.iter_mut().zip(g).zip(b.iter_mut()) {
                f(p, g, b)
            }
        });
}

type Kernel4<'a> = &'a (dyn Fn(&mut f32, f32, &mut f32, &mut f32) + Sync);

fn par4(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], f: Kernel4<'_>) {
    p.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK))
        .for_each(|(((p, g), m), v)| {
            for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                f(p, g, m, v)
            }
        });
}

fn sum_sq(x: &[f32]) -> f32 {
    x.par_chunks(CHUNK)
        .map(|c| c.iter().map(|&v| v * v).sum::<f32>())
        .sum::<f32>()
}

impl Optimizer<Cpu> {
    /// A slot's tensor taken out of the state (zeros when the slot does not exist
    /// yet); the caller updates it in place and puts it back.
    fn take_slot(
        &mut self,
        dev: &Cpu,
        name: &str,
        slot: &str,
        n: usize,
    ) -> Result<Flat<Cpu>, OptimError> {
        let t = self
            .state
            .remove(&slot_name(name, slot))
            .unwrap_or_else(|| dev.zeros_like(&(n,)));
        if t.shape().0 != n {
            // The zips below would silently truncate.
            return Err(OptimError::Device(format!(
                "state `{slot}` of `{name}` has {} values, the parameter {n}",
                t.shape().0
            )));
        }
        Ok(t)
    }

    /// One step on `Cpu` (the caller has validated `lr` and counted the step).
    pub(super) fn step_cpu(
        &mut self,
        store: &mut ParamStore<Cpu>,
        grads: &mut Gradients<f32, Cpu>,
        lr: f64,
    ) -> Result<(), OptimError> {
        let dev = store.device().clone();
        let t = self.step;
        let cfg = self.cfg;
        let lr32 = lr as f32;
        for e in store.entries_mut().iter_mut().filter(|e| e.trainable) {
            let n = e.numel();
            let g: &[f32] = grads
                .get_or_alloc_mut(&e.tensor)
                .map_err(|err| OptimError::Device(format!("{err:?}")))?;
            if g.len() != n {
                // The zips below would silently truncate.
                return Err(OptimError::Device(format!(
                    "gradient of `{}` has {} values, the parameter {n}",
                    e.name,
                    g.len()
                )));
            }
            let p = view_mut(&mut e.tensor);
            let (momentum, nesterov, wd, scale) = match cfg {
                OptimizerConfig::Sgd(c) => (
                    c.momentum,
                    c.nesterov,
                    if e.decay { c.weight_decay as f32 } else { 0.0 },
                    1.0f32,
                ),
                OptimizerConfig::Lars(c) => {
                    // d = t·(g + wd·p) for adapted entries with non-zero norms, else g.
                    let (mut wd, mut trust) = (0.0f32, 1.0f32);
                    if e.decay {
                        let p_norm = sum_sq(p).sqrt();
                        let g_norm = sum_sq(g).sqrt();
                        if p_norm > 0.0 && g_norm > 0.0 {
                            wd = c.weight_decay as f32;
                            trust = c.eta as f32 * p_norm / (g_norm + p_norm * wd + c.eps as f32);
                            if c.clip_lr {
                                trust = (trust / lr32).min(1.0);
                            }
                        }
                    }
                    (c.momentum, c.nesterov, wd, trust)
                }
                OptimizerConfig::AdamW(c) => {
                    let decay = if e.decay {
                        (1.0 - lr * c.weight_decay) as f32
                    } else {
                        1.0
                    };
                    let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
                    let (c1, c2) = ((1.0 - c.beta1) as f32, (1.0 - c.beta2) as f32);
                    let step_size = (lr / (1.0 - c.beta1.powf(t as f64))) as f32;
                    let inv_bc2 = (1.0 / (1.0 - c.beta2.powf(t as f64)).sqrt()) as f32;
                    let eps = c.eps as f32;
                    let mut m = self.take_slot(&dev, &e.name, "exp_avg", n)?;
                    let mut v = self.take_slot(&dev, &e.name, "exp_avg_sq", n)?;
                    par4(p, g, view_mut(&mut m), view_mut(&mut v), &|p, g, m, v| {
                        if decay != 1.0 {
                            *p *= decay;
                        }
                        *m = *m * b1 + g * c1;
                        *v = *v * b2 + g * g * c2;
                        *p -= *m / (v.sqrt() * inv_bc2 + eps) * step_size;
                    });
                    self.state.insert(slot_name(&e.name, "exp_avg"), m);
                    self.state.insert(slot_name(&e.name, "exp_avg_sq"), v);
                    continue;
                }
            };
            let direction = move |p: f32, g: f32| {
                if scale == 1.0 {
                    if wd != 0.0 { g + p * wd } else { g }
                } else if wd != 0.0 {
                    (g + p * wd) * scale
                } else {
                    g * scale
                }
            };
            if momentum == 0.0 {
                par2(p, g, |p, g| *p -= direction(*p, g) * lr32);
            } else {
                let mu = momentum as f32;
                let mut b = self.take_slot(&dev, &e.name, "momentum_buffer", n)?;
                par3(p, g, view_mut(&mut b), |p, g, b| {
                    let d = direction(*p, g);
                    *b = *b * mu + d;
                    let step = if nesterov { d + *b * mu } else { *b };
                    *p -= step * lr32;
                });
                self.state.insert(slot_name(&e.name, "momentum_buffer"), b);
            }
        }
        Ok(())
    }
}
