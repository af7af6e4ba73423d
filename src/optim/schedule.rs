//! Learning-rate schedules evaluated per optimiser step, and the learning-rate scaling
//! rule.
//!
//! A [`Schedule`] maps a global step `s` (0 for the first step of training) to the
//! learning rate of that step. It has an optional linear warmup followed by one decay
//! shape ([`Decay`]): constant, step (milestones in epochs) or cosine. With `W` warmup
//! steps, `T = epochs × steps_per_epoch` total steps and peak learning rate `lr`:
//!
//! ```text
//! warmup (s < W):  lr(s) = start + (lr − start) · s / W
//! constant:        lr(s) = lr
//! step:            lr(s) = lr · γ^k,  k = #milestones m with ⌊s / steps_per_epoch⌋ ≥ m
//! cosine:          lr(s) = final + (lr − final) · ½ · (1 + cos(π · (s − W) / (T − W)))
//! ```
//!
//! This is the SimCLR reference's schedule (google-research/simclr `model_util.py`,
//! `WarmUpAndCosineDecay`: linear warmup from 0 then `cosine_decay(lr, s − W, T − W)`)
//! generalised to a non-zero start and a non-zero final lr. The last step `T − 1`
//! therefore sits one step short of `final`; steps at or past `T` return `final`.
//!
//! Invariants: [`Schedule::new`] rejects every configuration it cannot honour (no
//! silent clamping): warmup must end before training does, milestones must lie inside
//! training and increase, learning rates must be finite and non-negative.
//!
//! Scaling: [`LrScaling::apply`] is the one place where the recipe's base lr is turned
//! into the peak lr (`none`, `linear`: lr × batch/256, `sqrt`: lr × √(batch/256)); the
//! returned [`ScaledLr`] prints the rule and both values so the run can report them.
//! Only the peak lr is scaled; the warmup start and the cosine final lr are absolute.

use std::fmt;

/// How long the warmup lasts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WarmupLength {
    /// In epochs (may be fractional); rounded to the nearest step.
    Epochs(f64),
    /// In optimiser steps.
    Steps(u64),
}

/// Linear warmup from `start_lr` up to the peak lr.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Warmup {
    /// Warmup duration.
    pub length: WarmupLength,
    /// Learning rate at step 0 (absolute, not scaled by the batch rule).
    pub start_lr: f64,
}

/// The shape of the schedule after warmup.
#[derive(Clone, Debug, PartialEq)]
pub enum Decay {
    /// The peak lr throughout.
    Constant,
    /// Multiply by `gamma` at each milestone epoch.
    Step {
        /// Epochs (counted from 0) at whose first step the lr is multiplied by `gamma`.
        milestones: Vec<u64>,
        /// Multiplicative factor per milestone.
        gamma: f64,
    },
    /// Half-cosine from the peak lr (at the end of warmup) to `final_lr` (at step `T`).
    Cosine {
        /// Learning rate the cosine reaches at the end of training (absolute).
        final_lr: f64,
    },
}

/// A schedule description, without the run's length or peak lr.
#[derive(Clone, Debug, PartialEq)]
pub struct ScheduleConfig {
    /// Optional linear warmup.
    pub warmup: Option<Warmup>,
    /// What follows the warmup.
    pub decay: Decay,
}

/// Errors from resolving a schedule or a scaling rule.
#[derive(Clone, Debug, PartialEq)]
pub enum ScheduleError {
    /// The configuration cannot be honoured (every problem listed).
    Invalid(Vec<String>),
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleError::Invalid(p) => {
                write!(f, "invalid learning-rate schedule: {}", p.join("; "))
            }
        }
    }
}

impl std::error::Error for ScheduleError {}

fn lr_ok(x: f64) -> bool {
    x.is_finite() && x >= 0.0
}

/// A resolved schedule: the learning rate of every step of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    peak_lr: f64,
    start_lr: f64,
    warmup_steps: u64,
    steps_per_epoch: u64,
    total_steps: u64,
    decay: Decay,
}

impl Schedule {
    /// Resolves `cfg` for a run of `epochs` epochs of `steps_per_epoch` steps with peak
    /// learning rate `peak_lr` (already scaled by [`LrScaling::apply`]).
    pub fn new(
        cfg: &ScheduleConfig,
        peak_lr: f64,
        epochs: u64,
        steps_per_epoch: u64,
    ) -> Result<Self, ScheduleError> {
        let mut problems = Vec::new();
        if !lr_ok(peak_lr) {
            problems.push(format!("lr must be finite and >= 0, got {peak_lr}"));
        }
        if epochs == 0 {
            problems.push("epochs must be at least 1".to_string());
        }
        if steps_per_epoch == 0 {
            problems.push("an epoch must have at least one step".to_string());
        }
        let total_steps = epochs.saturating_mul(steps_per_epoch);
        let (warmup_steps, start_lr) = match cfg.warmup {
            None => (0, peak_lr),
            Some(w) => {
                if !lr_ok(w.start_lr) {
                    problems.push(format!(
                        "warmup start lr must be finite and >= 0, got {}",
                        w.start_lr
                    ));
                }
                let steps = match w.length {
                    WarmupLength::Steps(s) => s,
                    WarmupLength::Epochs(e) => {
                        if !(e.is_finite() && e >= 0.0) {
                            problems
                                .push(format!("warmup epochs must be finite and >= 0, got {e}"));
                            0
                        } else {
                            (e * steps_per_epoch as f64).round() as u64
                        }
                    }
                };
                if total_steps > 0 && steps >= total_steps {
                    problems.push(format!(
                        "warmup lasts {steps} steps but training has only {total_steps}"
                    ));
                }
                (steps, w.start_lr)
            }
        };
        match &cfg.decay {
            Decay::Constant => {}
            Decay::Step { milestones, gamma } => {
                if !(gamma.is_finite() && *gamma > 0.0) {
                    problems.push(format!("gamma must be finite and > 0, got {gamma}"));
                }
                if milestones.windows(2).any(|w| w[0] >= w[1]) {
                    problems.push(format!(
                        "milestones must increase strictly, got {milestones:?}"
                    ));
                }
                for &m in milestones {
                    if m == 0 || m >= epochs {
                        problems.push(format!(
                            "milestone {m} is outside training (it must be in 1..{epochs})"
                        ));
                    }
                }
            }
            Decay::Cosine { final_lr } => {
                if !lr_ok(*final_lr) {
                    problems.push(format!("final lr must be finite and >= 0, got {final_lr}"));
                }
            }
        }
        if !problems.is_empty() {
            return Err(ScheduleError::Invalid(problems));
        }
        Ok(Schedule {
            peak_lr,
            start_lr,
            warmup_steps,
            steps_per_epoch,
            total_steps,
            decay: cfg.decay.clone(),
        })
    }

    /// The learning rate of step `step` (0-based, counted over the whole run).
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            let frac = step as f64 / self.warmup_steps as f64;
            return self.start_lr + (self.peak_lr - self.start_lr) * frac;
        }
        match &self.decay {
            Decay::Constant => self.peak_lr,
            Decay::Step { milestones, gamma } => {
                let epoch = step / self.steps_per_epoch;
                let k = milestones.iter().filter(|&&m| epoch >= m).count();
                self.peak_lr * gamma.powi(k as i32)
            }
            Decay::Cosine { final_lr } => {
                let span = (self.total_steps - self.warmup_steps) as f64;
                let progress = ((step - self.warmup_steps) as f64 / span).min(1.0);
                final_lr
                    + (self.peak_lr - final_lr)
                        * 0.5
                        * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        }
    }

    /// Number of warmup steps.
    pub fn warmup_steps(&self) -> u64 {
        self.warmup_steps
    }

    /// Total number of steps `T` of the run.
    pub fn total_steps(&self) -> u64 {
        self.total_steps
    }

    /// The peak learning rate (after scaling).
    pub fn peak_lr(&self) -> f64 {
        self.peak_lr
    }
}

/// The batch size the scaling rules are relative to (Goyal et al., SimCLR).
pub const REFERENCE_BATCH: usize = 256;

/// How the recipe's base learning rate grows with the batch size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LrScaling {
    /// Use the base lr as written.
    None,
    /// `lr × batch / 256` (Goyal et al., "Accurate, Large Minibatch SGD", 2017).
    Linear,
    /// `lr × √(batch / 256)` (SimCLR's choice for LARS at large batch).
    Sqrt,
}

impl LrScaling {
    /// Name as written in recipes.
    pub fn name(self) -> &'static str {
        match self {
            LrScaling::None => "none",
            LrScaling::Linear => "linear",
            LrScaling::Sqrt => "sqrt",
        }
    }

    /// Scales `base_lr` for a batch of `batch_size` images (samples, not views).
    pub fn apply(self, base_lr: f64, batch_size: usize) -> Result<ScaledLr, ScheduleError> {
        let mut problems = Vec::new();
        if !lr_ok(base_lr) {
            problems.push(format!("lr must be finite and >= 0, got {base_lr}"));
        }
        if batch_size == 0 {
            problems.push("batch size must be at least 1 to scale the lr".to_string());
        }
        if !problems.is_empty() {
            return Err(ScheduleError::Invalid(problems));
        }
        let ratio = batch_size as f64 / REFERENCE_BATCH as f64;
        let lr = match self {
            LrScaling::None => base_lr,
            LrScaling::Linear => base_lr * ratio,
            LrScaling::Sqrt => base_lr * ratio.sqrt(),
        };
        Ok(ScaledLr {
            rule: self,
            base_lr,
            batch_size,
            lr,
        })
    }
}

/// The outcome of [`LrScaling::apply`], printable for the run log.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScaledLr {
    /// The rule applied.
    pub rule: LrScaling,
    /// The lr written in the recipe.
    pub base_lr: f64,
    /// The batch size the rule used.
    pub batch_size: usize,
    /// The lr the schedule peaks at.
    pub lr: f64,
}

impl fmt::Display for ScaledLr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (b, r) = (self.batch_size, REFERENCE_BATCH);
        match self.rule {
            LrScaling::None => write!(f, "lr {} (no batch-size scaling)", self.lr),
            LrScaling::Linear => write!(
                f,
                "lr {} = {} × {b}/{r} (linear batch-size scaling)",
                self.lr, self.base_lr
            ),
            LrScaling::Sqrt => write!(
                f,
                "lr {} = {} × √({b}/{r}) (sqrt batch-size scaling)",
                self.lr, self.base_lr
            ),
        }
    }
}
