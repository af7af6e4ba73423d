//! The `build` arrow: a checked [`Recipe`] becomes the engine's plain configs.
//!
//! The spec layer knows nothing about the engine and the engine nothing about YAML;
//! this module is the one place that knows both. Every recipe key an engine part reads
//! is mapped here, so a key that is not mapped is visibly unused.

pub mod augment;
mod check;
pub mod data;
mod downstream;

pub use check::check_data_paths;
pub use downstream::{data_label, downstream, task_data};

use crate::nn::ModelError;
use crate::nn::device::{DeviceChoice, NoCuda};
use crate::nn::model::{
    BackboneConfig, BackboneKind, DinoLastLayerConfig, HeadConfig, ModelConfig, PrototypesConfig,
    ResNetSpec, Stem,
};
use crate::nn::params::DecayPolicy;
use crate::objective::{
    MethodConfig, barlow_twins, byol, dino, memory_bank, moco, nt_xent, rotation, simsiam, supcon,
    swav, vicreg,
};
use crate::optim::schedule::{
    Decay, LrScaling, ScaledLr, ScheduleConfig, ScheduleError, Warmup, WarmupLength,
};
use crate::optim::{AdamWConfig, LarsConfig, OptimizerConfig, SgdConfig};
use crate::spec::Recipe;
use crate::spec::loss::{ContrastMode as SpecContrastMode, Loss};
use crate::spec::model::{Backbone, Stem as SpecStem};
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

/// The encoder a recipe describes, planned for square `size`×`size` inputs: backbone,
/// projection head, and SwAV prototypes or DINO's last layer when the loss uses them.
pub fn model(r: &Recipe, size: usize) -> Result<ModelConfig, ModelError> {
    let stem = |s: SpecStem| match s {
        SpecStem::Cifar => Stem::Cifar,
        SpecStem::Imagenet => Stem::ImageNet,
    };
    let kind = match &r.model.backbone {
        Backbone::Resnet18 { stem: s, width } => {
            BackboneKind::ResNet(ResNetSpec::standard(18, stem(*s), *width as f32)?)
        }
        Backbone::Resnet34 { stem: s, width } => {
            BackboneKind::ResNet(ResNetSpec::standard(34, stem(*s), *width as f32)?)
        }
        Backbone::Resnet50 { stem: s, width } => {
            BackboneKind::ResNet(ResNetSpec::standard(50, stem(*s), *width as f32)?)
        }
        Backbone::SmallCnn { channels } => BackboneKind::SmallCnn {
            channels: channels.clone(),
        },
    };
    let head = &r.model.head;
    let prototypes = match r.loss {
        Loss::Swav { prototypes, .. } => Some(PrototypesConfig {
            count: prototypes,
            dim: None,
        }),
        Loss::Simclr { .. }
        | Loss::Moco { .. }
        | Loss::MemoryBank { .. }
        | Loss::Supcon { .. }
        | Loss::Rotation { .. }
        | Loss::Byol { .. }
        | Loss::Simsiam { .. }
        | Loss::BarlowTwins { .. }
        | Loss::Vicreg { .. }
        | Loss::Dino { .. } => None,
    };
    // DINO's weight-normalised last layer after the head (the head is DINOHead's MLP).
    let last_layer = match r.loss {
        Loss::Dino {
            out_dim,
            norm_last_layer,
            ..
        } => Some(DinoLastLayerConfig {
            out_dim,
            dim: None,
            norm_last_layer,
        }),
        _ => None,
    };
    // The predictor (BYOL, SimSiam) maps the projection back to its own width.
    let predictor = r.model.predictor.as_ref().map(|p| HeadConfig {
        in_dim: None,
        hidden: p.hidden_for(r.loss.method()),
        out_dim: p.out_dim.unwrap_or(head.out_dim),
        batch_norm: p.batch_norm,
        last_bn: false,
    });
    Ok(ModelConfig {
        backbone: BackboneConfig {
            kind,
            in_channels: r.data.channels,
        },
        head: Some(HeadConfig {
            in_dim: None,
            hidden: head.hidden.clone(),
            out_dim: head.out_dim,
            batch_norm: head.batch_norm,
            last_bn: false,
        }),
        prototypes,
        predictor,
        last_layer,
        input_hw: (size, size),
    })
}

/// The objective a recipe's `loss` section describes, for a training set of
/// `dataset_len` images (the memory bank's rows).
///
/// SwAV computes codes for the global crops of `augment.multi_crop` (SwAV's
/// `crops_for_assign`); without multi-crop every view is a global crop.
pub fn method(r: &Recipe, dataset_len: usize) -> MethodConfig {
    match &r.loss {
        Loss::Simclr { temperature } => MethodConfig::Simclr(nt_xent::SimclrConfig {
            temperature: *temperature as f32,
        }),
        Loss::Moco {
            temperature,
            momentum,
            queue_size,
            symmetric,
        } => MethodConfig::Moco(moco::MocoConfig {
            temperature: *temperature as f32,
            momentum: *momentum,
            queue_size: *queue_size,
            symmetric: *symmetric,
        }),
        Loss::MemoryBank {
            temperature,
            bank_momentum,
            negatives,
            shared_negatives,
        } => MethodConfig::MemoryBank(memory_bank::MemoryBankConfig {
            temperature: *temperature as f32,
            momentum: *bank_momentum as f32,
            negatives: *negatives,
            shared_negatives: *shared_negatives,
            dataset_len,
        }),
        Loss::Swav {
            temperature,
            epsilon,
            sinkhorn_iterations,
            freeze_prototypes_steps,
            queue,
            ..
        } => MethodConfig::Swav(swav::SwavConfig {
            temperature: *temperature as f32,
            epsilon: *epsilon,
            iterations: *sinkhorn_iterations,
            freeze_prototypes_steps: *freeze_prototypes_steps as u64,
            queue: queue.as_ref().map(|q| (q.size, q.start_epoch)),
            assign_views: r
                .augment
                .multi_crop
                .as_ref()
                .map_or(r.augment.total_views(), |mc| mc.global.count),
        }),
        Loss::Supcon {
            temperature,
            base_temperature,
            contrast_mode,
        } => MethodConfig::Supcon(supcon::SupconConfig {
            temperature: *temperature as f32,
            base_temperature: *base_temperature as f32,
            contrast_mode: match contrast_mode {
                SpecContrastMode::All => supcon::ContrastMode::All,
                SpecContrastMode::One => supcon::ContrastMode::One,
            },
        }),
        Loss::Rotation {
            rotations,
            all_rotations,
        } => MethodConfig::Rotation(rotation::RotationConfig {
            rotations: rotations.clone(),
            all: *all_rotations,
        }),
        Loss::Byol { momentum } => MethodConfig::Byol(byol::ByolConfig {
            momentum: *momentum,
        }),
        Loss::Simsiam {} => MethodConfig::Simsiam(simsiam::SimsiamConfig),
        Loss::BarlowTwins { lambda, scale_loss } => {
            MethodConfig::BarlowTwins(barlow_twins::BarlowTwinsConfig {
                lambda: *lambda as f32,
                scale: *scale_loss as f32,
            })
        }
        Loss::Vicreg {
            invariance_coeff,
            variance_coeff,
            covariance_coeff,
            variance_epsilon,
        } => MethodConfig::Vicreg(vicreg::VicregConfig {
            invariance: *invariance_coeff as f32,
            variance: *variance_coeff as f32,
            covariance: *covariance_coeff as f32,
            epsilon: *variance_epsilon as f32,
        }),
        Loss::Dino {
            out_dim,
            student_temp,
            teacher_temp,
            warmup_teacher_temp,
            warmup_teacher_temp_epochs,
            teacher_momentum,
            center_momentum,
            freeze_last_layer,
            ..
        } => MethodConfig::Dino(dino::DinoConfig {
            out_dim: *out_dim,
            student_temp: *student_temp as f32,
            teacher_temp: *teacher_temp,
            warmup_teacher_temp: *warmup_teacher_temp,
            warmup_teacher_temp_epochs: *warmup_teacher_temp_epochs,
            teacher_momentum: *teacher_momentum,
            center_momentum: *center_momentum,
            freeze_last_layer_epochs: *freeze_last_layer as u64,
            global_views: r
                .augment
                .multi_crop
                .as_ref()
                .map_or(r.augment.total_views(), |mc| mc.global.count),
        }),
    }
}

/// Everything [`Trainer`](crate::train::step::Trainer) needs from a recipe, for a
/// training set of `dataset_len` images and `steps_per_epoch` steps per epoch: the
/// model planned for the largest view, optimiser, decay policy, schedule, scaled peak
/// learning rate and objective.
pub fn trainer_parts(
    r: &Recipe,
    dataset_len: usize,
    steps_per_epoch: u64,
) -> Result<crate::train::step::TrainerParts, crate::train::TrainError> {
    let size = view_sizes(r).first().map_or(r.data.image_size, |(s, _)| *s);
    let (optimizer, decay) = optimizer(&r.optimizer);
    Ok(crate::train::step::TrainerParts {
        model: model(r, size)?,
        seed: r.seed,
        optimizer,
        decay,
        schedule: schedule(&r.schedule),
        peak_lr: peak_lr(r)?.lr,
        epochs: r.train.epochs as u64,
        steps_per_epoch,
        method: method(r, dataset_len),
        views: r.augment.total_views(),
        batch: r.train.batch_size,
    })
}

/// The distinct view sizes a recipe's augmentation produces, with how many views of
/// each size every image yields, largest first.
pub fn view_sizes(r: &Recipe) -> Vec<(usize, usize)> {
    let sizes = r.augment.view_sizes(r.data.image_size);
    let mut out: Vec<(usize, usize)> = Vec::new();
    for s in sizes {
        match out.iter_mut().find(|(size, _)| *size == s) {
            Some((_, n)) => *n += 1,
            None => out.push((s, 1)),
        }
    }
    out.sort_by_key(|&(size, _)| std::cmp::Reverse(size));
    out
}

/// Opens the device `train.device` asks for. `cuda` that cannot be opened is an error,
/// never a silent fall-back; `auto` takes the GPU when this binary was built with CUDA
/// and one opens, else the CPU, and then says why in the returned note. The caller
/// runs its work on the device with [`DeviceChoice::dispatch`].
pub fn device(
    d: crate::spec::train::Device,
    seed: u64,
) -> Result<(DeviceChoice, Option<String>), String> {
    use crate::spec::train::Device;
    match d {
        Device::Cpu => Ok((DeviceChoice::cpu(), None)),
        Device::Cuda => match DeviceChoice::cuda(seed) {
            Ok(c) => Ok((c, None)),
            Err(NoCuda::NotBuilt) => Err(
                "train.device: cuda — this binary was built without CUDA; rebuild with \
                 `--features cuda` (see README, \"GPU\") or use `device: cpu`"
                    .into(),
            ),
            Err(NoCuda::Failed(e)) => Err(format!(
                "train.device: cuda — no usable CUDA device: {e}; check the NVIDIA \
                 driver (`nvidia-smi`) and CUDA_VISIBLE_DEVICES, or use `device: cpu`"
            )),
        },
        Device::Auto => Ok(match DeviceChoice::cuda(seed) {
            Ok(c) => (c, None),
            Err(NoCuda::NotBuilt) => (DeviceChoice::cpu(), None),
            Err(NoCuda::Failed(e)) => (
                DeviceChoice::cpu(),
                Some(format!(
                    "device: auto — no usable CUDA device ({e}); training on the CPU"
                )),
            ),
        }),
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
                milestones: vec![12, 16],
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
