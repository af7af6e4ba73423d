//! One description per method: [`MethodConfig`] names the methods, each method's file
//! implements [`Method`] for its config, and everything the rest of the program asks of
//! a method comes from there — the objective it builds, the layout of its state (which
//! the objective's [`state_layout`](super::Objective::state_layout), its checkpoint
//! section and `recipe plan`'s memory all use), its extra costs for `recipe plan`, and
//! its communication for `recipe plan --world-size`.
//!
//! Every match over methods is `for_each_method!`'s, with no catch-all arm: a new
//! variant of [`MethodConfig`] is a compile error until it has its line there.

use super::{
    Encoder, Objective, ObjectiveError, barlow_twins, byol, dino, memory_bank, moco, nt_xent,
    rotation, simsiam, supcon, swav, vicreg,
};
use crate::nn::ops::EngineDevice;
use crate::nn::params::ParamStore;

/// What a method needs to know to be built, free of recipe types: one variant per
/// method, each holding that method's own config (which implements [`Method`]).
#[derive(Clone, Debug, PartialEq)]
pub enum MethodConfig {
    /// SimCLR's NT-Xent.
    Simclr(nt_xent::SimclrConfig),
    /// MoCo v2 with a momentum key encoder and a queue.
    Moco(moco::MocoConfig),
    /// InstDisc's memory bank.
    MemoryBank(memory_bank::MemoryBankConfig),
    /// SwAV.
    Swav(swav::SwavConfig),
    /// Supervised contrastive loss.
    Supcon(supcon::SupconConfig),
    /// RotNet's rotation prediction.
    Rotation(rotation::RotationConfig),
    /// BYOL with an EMA target network and a predictor.
    Byol(byol::ByolConfig),
    /// SimSiam with a predictor and a stop-gradient.
    Simsiam(simsiam::SimsiamConfig),
    /// Barlow Twins' cross-correlation loss.
    BarlowTwins(barlow_twins::BarlowTwinsConfig),
    /// VICReg's variance-invariance-covariance loss.
    Vicreg(vicreg::VicregConfig),
    /// DINO self-distillation with an EMA teacher.
    Dino(dino::DinoConfig),
}

/// `for_each_method!(cfg, c => expr)`: `expr` with `c` bound to the method's own config,
/// whatever the method — the one match over [`MethodConfig`]'s variants.
macro_rules! for_each_method {
    ($cfg:expr, $c:ident => $body:expr) => {
        match $cfg {
            MethodConfig::Simclr($c) => $body,
            MethodConfig::Moco($c) => $body,
            MethodConfig::MemoryBank($c) => $body,
            MethodConfig::Swav($c) => $body,
            MethodConfig::Supcon($c) => $body,
            MethodConfig::Rotation($c) => $body,
            MethodConfig::Byol($c) => $body,
            MethodConfig::Simsiam($c) => $body,
            MethodConfig::BarlowTwins($c) => $body,
            MethodConfig::Vicreg($c) => $body,
            MethodConfig::Dino($c) => $body,
        }
    };
}

/// What the rest of the program asks of a method; implemented by each method's config
/// in the method's own file.
pub trait Method {
    /// The method's name as a recipe writes it (`loss.method`).
    fn name(&self) -> &'static str;

    /// Names and shapes of the method's state tensors (not a key encoder) for
    /// embeddings of `dim` features: the one layout the objective's
    /// [`state`](super::Objective::state), its checkpoint section and `recipe plan`'s
    /// memory follow. None by default.
    fn state_layout(&self, _dim: usize) -> Vec<(String, Vec<usize>)> {
        Vec::new()
    }

    /// What `recipe plan` reports of the method beyond the encoder: its state and
    /// the FLOPs of any extra passes. By default the tensors of
    /// [`state_layout`](Self::state_layout) and nothing more.
    fn plan(&self, model: &ModelFacts) -> MethodPlan {
        MethodPlan::from_layout(&self.state_layout(model.dim))
    }

    /// Bytes one rank sends for the method per step, and the collective calls that
    /// takes, in a data-parallel job.
    fn comm(&self, step: &CommFacts) -> (f64, usize);

    /// The objective, checking every hyper-parameter it cannot use.
    fn build<D: EngineDevice>(
        &self,
        on: &BuildArgs<'_, D>,
    ) -> Result<Box<dyn Objective<D>>, ObjectiveError>;
}

/// What [`Method::build`] builds on.
pub struct BuildArgs<'a, D: EngineDevice> {
    /// The encoder (its model planned for the largest view).
    pub encoder: &'a Encoder,
    /// The encoder's parameters and buffers.
    pub store: &'a ParamStore<D>,
    /// Features of an embedding (the head's output, or the backbone's without a head).
    pub dim: usize,
    /// Views per image.
    pub views: usize,
    /// Images per step.
    pub batch: usize,
    /// Seeds the method's initial state and its per-step draws.
    pub seed: u64,
    /// Epochs of the run (the length a method's own schedules span: BYOL's and DINO's
    /// target momentum, DINO's teacher temperature warmup).
    pub epochs: u64,
    /// Optimiser steps per epoch.
    pub steps_per_epoch: u64,
}

/// What `recipe plan` knows of the model when it asks a method for its costs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelFacts {
    /// Features of an embedding.
    pub dim: usize,
    /// Values (parameters and buffers) of the encoder: the size of a copy of it.
    pub encoder_floats: usize,
    /// Values of the predictor (BYOL, SimSiam), part of `encoder_floats`: BYOL's
    /// target network copies everything else.
    pub predictor_floats: usize,
    /// FLOPs of one forward pass of one view of the batch through the encoder.
    pub view_forward_flops: f64,
    /// Prototypes of the model, when it has them.
    pub prototypes: Option<usize>,
    /// Images per step (the global batch).
    pub batch: usize,
}

/// A method's costs beyond the encoder's, as `recipe plan` reports them.
#[derive(Clone, Debug, PartialEq)]
pub struct MethodPlan {
    /// What the method keeps, one phrase each, in the order plan prints them.
    pub parts: Vec<String>,
    /// Bytes of the method's state (key encoder included).
    pub state_bytes: usize,
    /// FLOPs per step beyond the encoder's forward and backward over all views.
    pub extra_step_flops: f64,
    /// Peak bytes of the tensors the loss makes each step beyond the embeddings (Barlow
    /// Twins' and VICReg's `d×d` matrices), freed after the step.
    pub step_bytes: usize,
    /// What those tensors are, for `recipe plan` (`cross-correlation 512×512`).
    pub step_parts: Vec<String>,
    /// Images the encoder sees per view of each image, forward and backward (RotNet:
    /// one per rotation); 1 for every other method. Scales the step's encoder FLOPs
    /// and activation memory.
    pub encoder_copies: usize,
}

impl Default for MethodPlan {
    /// No state, no extra work, the encoder once per view.
    fn default() -> Self {
        MethodPlan::from_layout(&[])
    }
}

impl MethodPlan {
    /// The tensors of `layout`: one part per tensor of more than one value
    /// (`queue 4096×128`), 4 bytes a value.
    pub fn from_layout(layout: &[(String, Vec<usize>)]) -> MethodPlan {
        let parts = layout
            .iter()
            .filter(|(_, shape)| shape.iter().product::<usize>() > 1)
            .map(|(name, shape)| {
                let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
                format!("{name} {}", dims.join("×"))
            })
            .collect();
        MethodPlan {
            parts,
            state_bytes: 4 * layout_floats(layout),
            extra_step_flops: 0.0,
            encoder_copies: 1,
            step_bytes: 0,
            step_parts: Vec::new(),
        }
    }
}

/// Values in the tensors of `layout`.
pub(crate) fn layout_floats(layout: &[(String, Vec<usize>)]) -> usize {
    layout
        .iter()
        .map(|(_, s)| s.iter().product::<usize>())
        .sum()
}

/// One rank's share of a data-parallel step, for [`Method::comm`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CommFacts {
    /// Images per rank per step.
    pub images: usize,
    /// Views per image.
    pub views: usize,
    /// Bytes of one view's embeddings of this rank's images.
    pub embedding_bytes: f64,
    /// The share of a buffer each rank sends in a ring all-reduce, `2·(K−1)/K`.
    pub ring: f64,
    /// Prototypes of the model, when it has them.
    pub prototypes: Option<usize>,
}

impl MethodConfig {
    /// The method's name as a recipe writes it.
    pub fn name(&self) -> &'static str {
        for_each_method!(self, c => c.name())
    }

    /// Names and shapes of the method's state tensors (not the key encoder) for an
    /// embedding of `dim` features.
    pub fn state_layout(&self, dim: usize) -> Vec<(String, Vec<usize>)> {
        for_each_method!(self, c => c.state_layout(dim))
    }

    /// The method's state and extra FLOPs, for `recipe plan`.
    pub fn plan(&self, model: &ModelFacts) -> MethodPlan {
        for_each_method!(self, c => c.plan(model))
    }

    /// Bytes one rank sends for the method per step, and the collective calls.
    pub fn comm(&self, step: &CommFacts) -> (f64, usize) {
        for_each_method!(self, c => c.comm(step))
    }
}

/// Builds the objective `cfg` describes for `encoder`'s model in `store`.
///
/// `views` is the number of views per image, `batch` the images per step (MoCo's queue
/// must be a multiple of the keys it enqueues per step), `seed` seeds the initial queue
/// and bank and the negatives sampled each step; `epochs × steps_per_epoch` is the
/// run's length, over which a method's own schedules run.
#[allow(clippy::too_many_arguments)]
pub fn build<D: EngineDevice>(
    cfg: &MethodConfig,
    encoder: &Encoder,
    store: &ParamStore<D>,
    views: usize,
    batch: usize,
    seed: u64,
    epochs: u64,
    steps_per_epoch: u64,
) -> Result<Box<dyn Objective<D>>, ObjectiveError> {
    let model = encoder.model();
    let dim = model
        .head
        .as_ref()
        .map_or(model.backbone.out_dim, |h| h.out_dim);
    let on = BuildArgs {
        encoder,
        store,
        dim,
        views,
        batch,
        seed,
        epochs,
        steps_per_epoch,
    };
    for_each_method!(cfg, c => c.build(&on))
}

#[cfg(test)]
mod tests {
    use dfdx::prelude::Cpu;

    use super::*;
    use crate::nn::model::{
        BackboneConfig, BackboneKind, HeadConfig, Model, ModelConfig, PrototypesConfig,
    };

    /// One config of every method (and every state shape a method has).
    fn examples() -> Vec<MethodConfig> {
        let swav = |queue| {
            MethodConfig::Swav(swav::SwavConfig {
                temperature: 0.1,
                epsilon: 0.05,
                iterations: 3,
                freeze_prototypes_steps: 0,
                queue,
                assign_views: 2,
            })
        };
        vec![
            MethodConfig::Simclr(nt_xent::SimclrConfig { temperature: 0.5 }),
            MethodConfig::Supcon(supcon::SupconConfig {
                temperature: 0.5,
                base_temperature: 0.07,
                contrast_mode: supcon::ContrastMode::All,
            }),
            MethodConfig::Moco(moco::MocoConfig {
                temperature: 0.2,
                momentum: 0.9,
                queue_size: 32,
                symmetric: true,
            }),
            MethodConfig::MemoryBank(memory_bank::MemoryBankConfig {
                temperature: 0.5,
                momentum: 0.5,
                negatives: 16,
                shared_negatives: false,
                dataset_len: 40,
            }),
            swav(None),
            swav(Some((16, 0))),
            MethodConfig::Rotation(rotation::RotationConfig {
                rotations: vec![0, 90, 180, 270],
                all: true,
            }),
            MethodConfig::Byol(byol::ByolConfig { momentum: 0.99 }),
            MethodConfig::Simsiam(simsiam::SimsiamConfig),
            MethodConfig::BarlowTwins(barlow_twins::BarlowTwinsConfig {
                lambda: 0.0051,
                scale: 1.0,
            }),
            MethodConfig::Vicreg(vicreg::VicregConfig {
                invariance: 25.0,
                variance: 25.0,
                covariance: 1.0,
                epsilon: 1e-4,
            }),
            MethodConfig::Dino(dino::DinoConfig {
                out_dim: 7,
                ..dino::DinoConfig::default()
            }),
        ]
    }

    /// The position of `m`'s variant among [`VARIANTS`]: a new method fails to compile
    /// here until it has an arm, then fails [`every_method_describes_its_state_once`]
    /// until [`examples`] has a config of it.
    fn variant(m: &MethodConfig) -> usize {
        match m {
            MethodConfig::Simclr(_) => 0,
            MethodConfig::Moco(_) => 1,
            MethodConfig::MemoryBank(_) => 2,
            MethodConfig::Swav(_) => 3,
            MethodConfig::Supcon(_) => 4,
            MethodConfig::Rotation(_) => 5,
            MethodConfig::Byol(_) => 6,
            MethodConfig::Simsiam(_) => 7,
            MethodConfig::BarlowTwins(_) => 8,
            MethodConfig::Vicreg(_) => 9,
            MethodConfig::Dino(_) => 10,
        }
    }
    const VARIANTS: usize = 11;

    #[test]
    fn every_method_describes_its_state_once() {
        let mut seen = [false; VARIANTS];
        for cfg in examples() {
            seen[variant(&cfg)] = true;
            let name = cfg.name();
            // Rotation prediction's head is its 4-way classifier.
            let dim = if matches!(cfg, MethodConfig::Rotation(_)) {
                4
            } else {
                6
            };
            let model_cfg = ModelConfig {
                backbone: BackboneConfig {
                    kind: BackboneKind::SmallCnn {
                        channels: vec![4, 8],
                    },
                    in_channels: 1,
                },
                head: Some(HeadConfig {
                    in_dim: None,
                    hidden: vec![8],
                    out_dim: dim,
                    batch_norm: true,
                    last_bn: false,
                }),
                prototypes: matches!(cfg, MethodConfig::Swav(_)).then_some(PrototypesConfig {
                    count: 5,
                    dim: None,
                }),
                predictor: matches!(cfg, MethodConfig::Byol(_) | MethodConfig::Simsiam(_))
                    .then_some(HeadConfig {
                        in_dim: None,
                        hidden: vec![4],
                        out_dim: 6,
                        batch_norm: true,
                        last_bn: false,
                    }),
                last_layer: match &cfg {
                    MethodConfig::Dino(d) => Some(crate::nn::model::DinoLastLayerConfig {
                        out_dim: d.out_dim,
                        dim: None,
                        norm_last_layer: false,
                    }),
                    _ => None,
                },
                input_hw: (12, 12),
            };
            let mut store = crate::nn::params::ParamStore::new(Cpu::default());
            let model = Model::new(&mut store, &model_cfg, 3).unwrap();
            let encoder = Encoder::new(model);
            let views = if matches!(cfg, MethodConfig::MemoryBank(_)) {
                1
            } else {
                2
            };
            let mut obj = build(&cfg, &encoder, &store, views, 8, 5, 2, 10).unwrap();
            let layout = cfg.state_layout(dim);
            assert_eq!(obj.state_layout(), layout, "{name}: objective vs config");
            let state = obj.state();
            let shapes: Vec<(String, Vec<usize>)> = state
                .iter()
                .map(|t| (t.name.clone(), t.shape.clone()))
                .collect();
            assert_eq!(shapes, layout, "{name}: state() vs layout");
            for t in &state {
                assert_eq!(t.data.len(), t.shape.iter().product::<usize>(), "{name}");
            }
            obj.load_state(&state).unwrap();
            assert_eq!(obj.state(), state, "{name}: state round trip");
            // Plan's state bytes are what the objective really keeps: its tensors and
            // any copy of the encoder.
            let facts = ModelFacts {
                dim,
                encoder_floats: store.entries().iter().map(|e| e.numel()).sum(),
                predictor_floats: store
                    .entries()
                    .iter()
                    .filter(|e| Model::is_predictor_entry(&e.name))
                    .map(|e| e.numel())
                    .sum(),
                view_forward_flops: 1.0,
                prototypes: model_cfg.prototypes.as_ref().map(|p| p.count),
                batch: 8,
            };
            let key = obj
                .key_encoder()
                .map_or(0, |k| k.entries().iter().map(|e| e.numel()).sum::<usize>());
            assert_eq!(
                cfg.plan(&facts).state_bytes,
                4 * (layout_floats(&layout) + key),
                "{name}: plan's state bytes"
            );
        }
        assert!(
            seen.iter().all(|&s| s),
            "examples() lacks a method: {seen:?}"
        );
    }
}
