//! Shared by the data-parallel equivalence tests (`dist_equivalence`: ranks as
//! threads; `mpi_equivalence`: ranks as MPI processes): every rank trains the same tiny
//! model twice from the same seed — alone on the whole global batch (the single-process
//! reference) and as one rank of the job on its slice, with synchronised batch norm —
//! and compares, for each method, the loss of every step, the final
//! parameters, the method state (within 1e-5 relative) and any key encoder or teacher,
//! and that all ranks agree.

#![allow(dead_code)]

use dfdx::prelude::Cpu;
use recipe::bench::{BenchConfig, synthetic_batch};
use recipe::dist::Dist;
use recipe::nn::model::{
    BackboneConfig, BackboneKind, DinoLastLayerConfig, HeadConfig, ModelConfig, PrototypesConfig,
};
use recipe::nn::params::DecayPolicy;
use recipe::objective::{
    MethodConfig, barlow_twins, byol, dino, memory_bank, moco, nt_xent, rotation, simsiam, supcon,
    swav, vicreg,
};
use recipe::optim::schedule::{Decay, ScheduleConfig};
use recipe::optim::{OptimizerConfig, SgdConfig};
use recipe::train::step::{Trainer, TrainerParts};

const BATCH: usize = 8;
const STEPS: u64 = 4;
const TOL: f64 = 1e-5;
/// Per tensor. BYOL over 4 ranks (2 images per view on each) moves the first batch
/// norm's shift `features.1.bias` (largest value 0.17) by 1.7e-4 of it from the
/// single-process run after 4 steps at lr 0.1 (float rounding: the sums run in another
/// order), while the whole model stays within `TOL`; 2 ranks are within 1e-4.
const TENSOR_TOL: f64 = 3e-4;

fn parts(method: MethodConfig, views: usize) -> TrainerParts {
    TrainerParts {
        model: ModelConfig {
            backbone: BackboneConfig {
                kind: BackboneKind::SmallCnn {
                    channels: vec![8, 16],
                },
                in_channels: 1,
            },
            head: Some(HeadConfig {
                in_dim: None,
                hidden: vec![16],
                // Rotation prediction's head is its classifier: one output per rotation.
                out_dim: match &method {
                    MethodConfig::Rotation(r) => r.rotations.len(),
                    _ => 8,
                },
                batch_norm: true,
                last_bn: false,
            }),
            prototypes: matches!(method, MethodConfig::Swav { .. }).then_some(PrototypesConfig {
                count: 6,
                dim: None,
            }),
            // BYOL and SimSiam predict through a predictor (registered last).
            predictor: matches!(method, MethodConfig::Byol(_) | MethodConfig::Simsiam(_))
                .then_some(HeadConfig {
                    in_dim: None,
                    hidden: vec![16],
                    out_dim: 8,
                    batch_norm: true,
                    last_bn: false,
                }),
            last_layer: match &method {
                MethodConfig::Dino(d) => Some(DinoLastLayerConfig {
                    out_dim: d.out_dim,
                    dim: None,
                    norm_last_layer: false,
                }),
                _ => None,
            },
            input_hw: (12, 12),
        },
        seed: 1,
        optimizer: OptimizerConfig::Sgd(SgdConfig {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 1e-4,
        }),
        decay: DecayPolicy::default(),
        schedule: ScheduleConfig {
            warmup: None,
            decay: Decay::Constant,
        },
        peak_lr: 0.1,
        epochs: 1,
        steps_per_epoch: 100,
        method,
        views,
        batch: BATCH,
    }
}

/// `(method, view shapes)`: SwAV with a smaller third crop and a queue that fills
/// after two steps; MoCo symmetric (both views enqueue); the memory bank with
/// negatives per anchor and shared.
pub fn methods() -> Vec<(MethodConfig, Vec<Shape>)> {
    let two = vec![(1, 12, 12); 2];
    vec![
        (
            MethodConfig::Simclr(nt_xent::SimclrConfig { temperature: 0.5 }),
            two.clone(),
        ),
        (
            MethodConfig::Supcon(supcon::SupconConfig {
                temperature: 0.5,
                base_temperature: 0.07,
                contrast_mode: supcon::ContrastMode::All,
            }),
            two.clone(),
        ),
        (
            MethodConfig::Moco(moco::MocoConfig {
                temperature: 0.2,
                momentum: 0.9,
                queue_size: 32,
                symmetric: true,
            }),
            two.clone(),
        ),
        (
            MethodConfig::MemoryBank(memory_bank::MemoryBankConfig {
                temperature: 0.5,
                momentum: 0.5,
                negatives: 16,
                shared_negatives: false,
                dataset_len: 40,
            }),
            vec![(1, 12, 12)],
        ),
        (
            MethodConfig::MemoryBank(memory_bank::MemoryBankConfig {
                temperature: 0.5,
                momentum: 0.5,
                negatives: 16,
                shared_negatives: true,
                dataset_len: 40,
            }),
            vec![(1, 12, 12)],
        ),
        (
            MethodConfig::Swav(swav::SwavConfig {
                temperature: 0.1,
                epsilon: 0.05,
                iterations: 3,
                freeze_prototypes_steps: 1,
                queue: Some((16, 0)),
                assign_views: 2,
            }),
            vec![(1, 12, 12), (1, 12, 12), (1, 8, 8)],
        ),
        // SupCon with only the first view's rows as anchors: each rank's anchors are
        // its first-view rows of the gathered batch.
        (
            MethodConfig::Supcon(supcon::SupconConfig {
                temperature: 0.5,
                base_temperature: 0.07,
                contrast_mode: supcon::ContrastMode::One,
            }),
            two.clone(),
        ),
        // Rotation prediction: a per-image loss, nothing gathered; every rotation of
        // every image, and one drawn per image (the draw follows the image, not the rank).
        (
            MethodConfig::Rotation(rotation::RotationConfig {
                rotations: vec![0, 90, 180, 270],
                all: true,
            }),
            vec![(1, 12, 12)],
        ),
        (
            MethodConfig::Rotation(rotation::RotationConfig {
                rotations: vec![0, 90, 270],
                all: false,
            }),
            vec![(1, 12, 12)],
        ),
        (
            MethodConfig::Byol(byol::ByolConfig { momentum: 0.9 }),
            two.clone(),
        ),
        (MethodConfig::Simsiam(simsiam::SimsiamConfig), two.clone()),
        (
            MethodConfig::BarlowTwins(barlow_twins::BarlowTwinsConfig {
                lambda: 0.05,
                scale: 0.5,
            }),
            two.clone(),
        ),
        // VICReg's 25 : 25 : 1 divided by 25: at the full weights this tiny model's
        // loss climbs from step 2 (17.9, 9.6, 14.5, 30.8 at lr 0.1), and the unstable
        // steps amplify rounding noise (2.7e-4 apart after 4 steps, 1e-5 after 1).
        (
            MethodConfig::Vicreg(vicreg::VicregConfig {
                invariance: 1.0,
                variance: 1.0,
                covariance: 0.04,
                epsilon: 1e-4,
            }),
            two.clone(),
        ),
        (
            // The last layer trains from step 0 (with its magnitude), so its gradient
            // is compared too; two local crops of another size.
            MethodConfig::Dino(dino::DinoConfig {
                out_dim: 16,
                teacher_momentum: 0.9,
                freeze_last_layer_epochs: 0,
                ..dino::DinoConfig::default()
            }),
            vec![(1, 12, 12), (1, 12, 12), (1, 8, 8), (1, 8, 8)],
        ),
    ]
}

/// `(channels, height, width)` of a view.
pub type Shape = (usize, usize, usize);

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / a.abs().max(b.abs()).max(1e-12)
}

/// Largest difference between `a` and `b` relative to the larger magnitude of the
/// tensor (elementwise relative error is meaningless for values near 0).
fn rel_vec(a: &[f32], b: &[f32]) -> f64 {
    let scale = a
        .iter()
        .chain(b)
        .fold(0.0f64, |m, x| m.max(x.abs() as f64))
        .max(1e-12);
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((*x as f64 - *y as f64).abs()))
        / scale
}

pub fn check(method: &MethodConfig, shapes: &[Shape], dist: &Dist) -> Vec<String> {
    let name = method.name();
    let (rank, world) = (dist.rank(), dist.world());
    let p = parts(method.clone(), shapes.len());
    let mut solo = Trainer::from_parts(Cpu::default(), &p).expect("reference trainer");
    let mut rank_t = Trainer::from_parts(Cpu::default(), &p).expect("rank trainer");
    rank_t
        .set_collective(dist.clone(), true)
        .expect("collective");
    let cfg = BenchConfig {
        batch: BATCH,
        view_shapes: shapes.to_vec(),
        steps: 1,
        warmup: 0,
        dataset_len: 40,
        classes: 3,
        seed: 7,
        per_op: false,
    };
    let mut problems = Vec::new();
    for step in 0..STEPS {
        let global = synthetic_batch(&cfg, step);
        let a = solo.step(&global, 0).expect("reference step").loss as f64;
        let b = rank_t
            .step(
                &recipe::dist::slice_batch(&global, rank, world).expect("slice"),
                0,
            )
            .expect("rank step")
            .loss as f64;
        if rel(a, b) > TOL {
            problems.push(format!(
                "{name}: step {step} loss {b} on rank {rank}, {a} in one process"
            ));
        }
    }
    // Parameters: the whole model within TOL of its largest value, and every tensor
    // within TENSOR_TOL of its own. (A bias just before a batch norm has a gradient that
    // is exactly zero in exact arithmetic, so it moves only by rounding noise, which
    // differs with the summation order; its running mean follows it.)
    let (mut all_a, mut all_b) = (Vec::new(), Vec::new());
    for (x, y) in solo.store.entries().iter().zip(rank_t.store.entries()) {
        let (a, b) = (x.tensor.as_vec(), y.tensor.as_vec());
        let e = rel_vec(&a, &b);
        if e > TENSOR_TOL {
            let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            problems.push(format!(
                "{name}: `{}` differs by {e:.2e} (relative to its largest value, {scale:.3e})",
                x.name
            ));
        }
        all_a.extend(a);
        all_b.extend(b);
    }
    let e = rel_vec(&all_a, &all_b);
    if e > TOL {
        problems.push(format!(
            "{name}: the parameters differ by {e:.2e} (relative)"
        ));
    }
    // The key encoder (MoCo) or target network (BYOL): parameters and its own
    // batch-norm statistics.
    if let (Some(ka), Some(kb)) = (solo.objective.key_encoder(), rank_t.objective.key_encoder()) {
        for (x, y) in ka.entries().iter().zip(kb.entries()) {
            let e = rel_vec(&x.tensor.as_vec(), &y.tensor.as_vec());
            if e > TENSOR_TOL {
                problems.push(format!(
                    "{name}: key encoder `{}` differs by {e:.2e} (relative)",
                    x.name
                ));
            }
        }
    }
    for (x, y) in solo.objective.state().iter().zip(rank_t.objective.state()) {
        let e = rel_vec(&x.data, &y.data);
        if e > TOL {
            problems.push(format!("{name}: state `{}` differs by {e:.2e}", x.name));
        }
    }
    // A key encoder or teacher (moved by the EMA of the parameters, and its own
    // batch-norm statistics).
    if let (Some(ka), Some(kb)) = (solo.objective.key_encoder(), rank_t.objective.key_encoder()) {
        for (x, y) in ka.entries().iter().zip(kb.entries()) {
            let e = rel_vec(&x.tensor.as_vec(), &y.tensor.as_vec());
            if e > TENSOR_TOL {
                problems.push(format!(
                    "{name}: key encoder `{}` differs by {e:.2e} (relative)",
                    x.name
                ));
            }
        }
    }
    if let Err(e) = rank_t.check_ranks_agree() {
        problems.push(format!("{name}: {e}"));
    }
    problems
}
