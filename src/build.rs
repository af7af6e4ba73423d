//! The `build` arrow: a checked [`Recipe`] becomes the engine's plain configs.
//!
//! The spec layer knows nothing about the engine and the engine nothing about YAML;
//! this module is the one place that knows both. Every recipe key an engine part reads
//! is mapped here, so a key that is not mapped is visibly unused.

use crate::nn::params::DecayPolicy;
use crate::optim::schedule::{
    Decay, LrScaling, ScaledLr, ScheduleConfig, ScheduleError, Warmup, WarmupLength,
};
use crate::optim::{AdamWConfig, LarsConfig, OptimizerConfig, SgdConfig};
use crate::spec::Recipe;
use crate::spec::optim::{LrScaling as SpecScaling, Optimizer, Schedule};

/// The optimiser and the weight-decay policy a recipe asks for.
pub fn optimizer(o: &Optimizer) -> (OptimizerConfig, DecayPolicy) {
    let policy = |exclude: bool| DecayPolicy {
        exclude_bias: exclude,
        exclude_norm: exclude,
    };
    match *o {
        Optimizer::Sgd {
            weight_decay,
            momentum,
            nesterov,
            exclude_bias_and_norm,
            ..
        } => (
            OptimizerConfig::Sgd(SgdConfig {
                momentum,
                nesterov,
                weight_decay,
            }),
            policy(exclude_bias_and_norm),
        ),
        Optimizer::Lars {
            weight_decay,
            momentum,
            trust_coefficient,
            clip_lr,
            exclude_bias_and_norm,
            ..
        } => (
            OptimizerConfig::Lars(LarsConfig {
                momentum,
                nesterov: false,
                weight_decay,
                eta: trust_coefficient,
                clip_lr,
                ..LarsConfig::default()
            }),
            policy(exclude_bias_and_norm),
        ),
        Optimizer::Adamw {
            weight_decay,
            betas,
            eps,
            exclude_bias_and_norm,
            ..
        } => (
            OptimizerConfig::AdamW(AdamWConfig {
                beta1: betas[0],
                beta2: betas[1],
                eps,
                weight_decay,
            }),
            policy(exclude_bias_and_norm),
        ),
    }
}

/// The peak learning rate after the recipe's explicit batch-size scaling rule.
pub fn peak_lr(r: &Recipe) -> Result<ScaledLr, ScheduleError> {
    let rule = match r.optimizer.lr_scaling() {
        SpecScaling::None => LrScaling::None,
        SpecScaling::Linear => LrScaling::Linear,
        SpecScaling::Sqrt => LrScaling::Sqrt,
    };
    rule.apply(r.optimizer.lr(), r.train.batch_size)
}

/// The learning-rate schedule a recipe asks for.
pub fn schedule(s: &Schedule) -> ScheduleConfig {
    match s {
        Schedule::Constant => ScheduleConfig {
            warmup: None,
            decay: Decay::Constant,
        },
        Schedule::Step { milestones, gamma } => ScheduleConfig {
            warmup: None,
            decay: Decay::Step {
                milestones: milestones.iter().map(|&m| m as u64).collect(),
                gamma: *gamma,
            },
        },
        Schedule::WarmupCosine {
            warmup_epochs,
            warmup_start_lr,
            final_lr,
        } => ScheduleConfig {
            warmup: (*warmup_epochs > 0.0).then_some(Warmup {
                length: WarmupLength::Epochs(*warmup_epochs),
                start_lr: *warmup_start_lr,
            }),
            decay: Decay::Cosine {
                final_lr: *final_lr,
            },
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::schedule::Schedule as Resolved;
    use crate::spec::Loader;

    fn load(path: &str, sets: &[&str]) -> Recipe {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let l = Loader::new()
            .load_file(std::path::Path::new(path), &sets)
            .unwrap();
        l.valid_recipe()
            .cloned()
            .unwrap_or_else(|| panic!("{:?}", l.diagnostics))
    }

    #[test]
    fn lars_recipe_maps_every_key() {
        let r = load("recipes/cifar10/simclr.yaml", &["train.batch_size=512"]);
        let (cfg, policy) = optimizer(&r.optimizer);
        let OptimizerConfig::Lars(l) = cfg else {
            panic!("{cfg:?}")
        };
        assert_eq!(
            (l.momentum, l.weight_decay, l.eta, l.clip_lr),
            (0.9, 1e-5, 0.02, true)
        );
        assert_eq!(
            policy,
            DecayPolicy {
                exclude_bias: true,
                exclude_norm: true
            }
        );
        let lr = peak_lr(&r).unwrap();
        assert!((lr.lr - 0.8).abs() < 1e-12, "0.4 × 512/256");
        let s = Resolved::new(&schedule(&r.schedule), lr.lr, 1000, 97).unwrap();
        assert_eq!(s.warmup_steps(), 970);
        assert_eq!(s.lr(0), 0.0);
        assert!((s.lr(970) - 0.8).abs() < 1e-9);
    }

    #[test]
    fn sgd_and_adamw_and_step_schedules_map() {
        let r = load(
            "recipes/memory_bank.yaml",
            &["optimizer.exclude_bias_and_norm=false"],
        );
        let (cfg, policy) = optimizer(&r.optimizer);
        assert_eq!(
            cfg,
            OptimizerConfig::Sgd(SgdConfig {
                momentum: 0.9,
                nesterov: false,
                weight_decay: 5e-4
            })
        );
        assert!(!policy.exclude_bias && !policy.exclude_norm);
        assert_eq!(
            schedule(&r.schedule).decay,
            Decay::Step {
                milestones: vec![3, 4],
                gamma: 0.1
            }
        );
        let r = load(
            "tests/valid/minimal.yaml",
            &["optimizer={name: adamw, lr: 0.001, betas: [0.8, 0.99]}"],
        );
        let (cfg, _) = optimizer(&r.optimizer);
        assert_eq!(
            cfg,
            OptimizerConfig::AdamW(AdamWConfig {
                beta1: 0.8,
                beta2: 0.99,
                eps: 1e-8,
                weight_decay: 0.01
            })
        );
        assert_eq!(peak_lr(&r).unwrap().lr, 0.001);
    }
}
