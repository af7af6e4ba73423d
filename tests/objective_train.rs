//! Each method driven through the training step: a few optimiser steps on one fixed
//! batch lower its loss; MoCo's key encoder moves only by its EMA (no gradient step);
//! SwAV's frozen prototypes stay untouched; a checkpoint round-trips the method state.

use dfdx::prelude::Cpu;
use recipe::bench::{BenchConfig, synthetic_batch};
use recipe::nn::model::{BackboneConfig, BackboneKind, HeadConfig, ModelConfig, PrototypesConfig};
use recipe::nn::params::DecayPolicy;
use recipe::objective::{
    MethodConfig, barlow_twins, memory_bank, moco, nt_xent, supcon, swav, vicreg,
};
use recipe::optim::schedule::{Decay, ScheduleConfig};
use recipe::optim::{OptimizerConfig, SgdConfig};
use recipe::train::step::{Trainer, TrainerParts};

fn parts(method: MethodConfig, views: usize, lr: f64) -> TrainerParts {
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
                out_dim: 8,
                batch_norm: true,
                last_bn: false,
            }),
            prototypes: matches!(method, MethodConfig::Swav { .. }).then_some(PrototypesConfig {
                count: 6,
                dim: None,
            }),
            input_hw: (12, 12),
        },
        seed: 1,
        optimizer: OptimizerConfig::Sgd(SgdConfig {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 0.0,
        }),
        decay: DecayPolicy::default(),
        schedule: ScheduleConfig {
            warmup: None,
            decay: Decay::Constant,
        },
        peak_lr: lr,
        epochs: 1,
        steps_per_epoch: 100,
        method,
        views,
        batch: 8,
    }
}

fn bench_cfg(views: usize) -> BenchConfig {
    BenchConfig {
        batch: 8,
        view_shapes: vec![(1, 12, 12); views],
        steps: 1,
        warmup: 0,
        dataset_len: 40,
        classes: 3,
        seed: 7,
        per_op: false,
    }
}

fn methods() -> Vec<(MethodConfig, usize)> {
    vec![
        (
            MethodConfig::Simclr(nt_xent::SimclrConfig { temperature: 0.5 }),
            2,
        ),
        (
            MethodConfig::Supcon(supcon::SupconConfig {
                temperature: 0.5,
                base_temperature: 0.5,
            }),
            2,
        ),
        (
            MethodConfig::Moco(moco::MocoConfig {
                temperature: 0.5,
                momentum: 0.9,
                queue_size: 32,
                symmetric: false,
            }),
            2,
        ),
        (
            MethodConfig::MemoryBank(memory_bank::MemoryBankConfig {
                temperature: 0.5,
                momentum: 0.5,
                negatives: 16,
                shared_negatives: false,
                dataset_len: 40,
            }),
            1,
        ),
        (
            MethodConfig::Swav(swav::SwavConfig {
                temperature: 0.5,
                epsilon: 0.05,
                iterations: 3,
                freeze_prototypes_steps: 0,
                queue: None,
                assign_views: 2,
            }),
            3,
        ),
        (
            MethodConfig::BarlowTwins(barlow_twins::BarlowTwinsConfig {
                lambda: 0.0051,
                scale: 1.0,
            }),
            2,
        ),
        (
            MethodConfig::Vicreg(vicreg::VicregConfig {
                invariance: 25.0,
                variance: 25.0,
                covariance: 1.0,
                epsilon: 1e-4,
            }),
            2,
        ),
    ]
}

#[test]
fn steps_on_a_fixed_batch_lower_each_loss() {
    for (m, views) in methods() {
        let name = m.name();
        let mut t = Trainer::from_parts(Cpu::default(), &parts(m, views, 0.05)).unwrap();
        let batch = synthetic_batch(&bench_cfg(views), 0);
        // MoCo's queue (4 batches) and the bank fill with this batch's own keys first, so
        // compare once the state is stationary: steps 4–6 against the last three.
        let losses: Vec<f32> = (0..16).map(|_| t.step(&batch, 0).unwrap().loss).collect();
        let early = losses[4..7].iter().sum::<f32>() / 3.0;
        let late = losses[13..].iter().sum::<f32>() / 3.0;
        assert!(late < 0.97 * early, "{name}: loss did not fall: {losses:?}");
    }
}

#[test]
fn moco_key_encoder_moves_only_by_its_ema() {
    let (m, views) = methods().remove(2);
    let mut t = Trainer::from_parts(Cpu::default(), &parts(m, views, 0.5)).unwrap();
    let batch = synthetic_batch(&bench_cfg(views), 0);
    let name = "projector.0.weight";
    let q0 = t.store.data(t.store.id(name).unwrap());
    let key = t.objective.key_encoder().unwrap();
    let k0 = key.data(key.id(name).unwrap());
    assert_eq!(q0, k0, "the key encoder starts as a copy");
    assert!(key.entries().iter().all(|e| !e.trainable));
    t.step(&batch, 0).unwrap();
    t.step(&batch, 0).unwrap();
    // Step 2's EMA used the query weights after step 1: k = m(m k0 + (1-m) q0) + (1-m) q1.
    let q1_store = {
        let mut t2 =
            Trainer::from_parts(Cpu::default(), &parts(methods().remove(2).0, 2, 0.5)).unwrap();
        t2.step(&batch, 0).unwrap();
        t2.store.data(t2.store.id(name).unwrap())
    };
    let key = t.objective.key_encoder().unwrap();
    let k2 = key.data(key.id(name).unwrap());
    for ((k, a), b) in k2.iter().zip(&k0).zip(&q1_store) {
        let want = 0.9 * (0.9 * a + 0.1 * a) + 0.1 * b;
        assert!((k - want).abs() < 1e-5, "{k} vs {want}");
    }
}

#[test]
fn frozen_swav_prototypes_are_untouched_then_train() {
    let m = MethodConfig::Swav(swav::SwavConfig {
        temperature: 0.5,
        epsilon: 0.05,
        iterations: 3,
        freeze_prototypes_steps: 2,
        queue: Some((16, 0)),
        assign_views: 2,
    });
    let mut t = Trainer::from_parts(Cpu::default(), &parts(m, 2, 0.5)).unwrap();
    let batch = synthetic_batch(&bench_cfg(2), 0);
    let id = t.store.id("prototypes.weight").unwrap();
    t.step(&batch, 0).unwrap();
    // Normalised in place before the step, then left alone by the optimiser.
    let after1 = t.store.data(id);
    t.step(&batch, 0).unwrap();
    let after2 = t.store.data(id);
    // Only the in-place re-normalisation (a rounding step) touched them.
    let moved = after1
        .iter()
        .zip(&after2)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(
        moved < 1e-6,
        "frozen: no gradient step, no momentum, no decay ({moved})"
    );
    for row in after2.chunks(8) {
        let n: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-5, "prototypes are unit rows: {n}");
    }
    let state = t.optimizer.state(&t.store);
    assert!(
        state
            .tensors
            .iter()
            .all(|s| !s.name.starts_with("prototypes"))
    );
    t.step(&batch, 0).unwrap();
    let moved = t
        .store
        .data(id)
        .iter()
        .zip(&after2)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(moved > 1e-4, "unfrozen at step 2 ({moved})");
}

#[test]
fn checkpoints_round_trip_the_method_state() {
    let tmp = tempfile::tempdir().unwrap();
    for (m, views) in methods() {
        let name = m.name();
        let p = parts(m, views, 0.05);
        let mut a = Trainer::from_parts(Cpu::default(), &p).unwrap();
        let batch = synthetic_batch(&bench_cfg(views), 0);
        for _ in 0..3 {
            a.step(&batch, 0).unwrap();
        }
        let path = tmp.path().join(format!("{name}.safetensors"));
        a.save(&path, &Default::default()).unwrap();
        let sections = recipe::checkpoint::read_sections(&path).unwrap();
        assert!(
            sections.contains(&"optimizer".to_string()),
            "{name}: {sections:?}"
        );
        let mut b = Trainer::from_parts(Cpu::default(), &p).unwrap();
        b.load(&path).unwrap();
        assert_eq!(b.step, 3);
        assert_eq!(a.objective.state(), b.objective.state(), "{name}");
        // Both continue identically.
        let la = a.step(&batch, 0).unwrap().loss;
        let lb = b.step(&batch, 0).unwrap().loss;
        assert_eq!(la.to_bits(), lb.to_bits(), "{name}");
    }
}
