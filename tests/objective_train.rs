//! Each method driven through the training step: a few optimiser steps on one fixed
//! batch lower its loss; MoCo's key encoder and BYOL's target network move only by
//! their EMA (no gradient step), BYOL's at the reference's point with its schedule's
//! rate; SwAV's frozen prototypes stay untouched; a checkpoint round-trips the method
//! state.

use dfdx::prelude::Cpu;
use recipe::bench::{BenchConfig, synthetic_batch};
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
                    norm_last_layer: true,
                }),
                _ => None,
            },
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
                contrast_mode: supcon::ContrastMode::All,
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
            MethodConfig::Supcon(supcon::SupconConfig {
                temperature: 0.5,
                base_temperature: 0.5,
                contrast_mode: supcon::ContrastMode::One,
            }),
            2,
        ),
        (
            MethodConfig::Rotation(rotation::RotationConfig {
                rotations: vec![0, 90, 180, 270],
                all: true,
            }),
            1,
        ),
        (
            MethodConfig::Rotation(rotation::RotationConfig {
                rotations: vec![0, 180],
                all: false,
            }),
            1,
        ),
        (MethodConfig::Byol(byol::ByolConfig { momentum: 0.9 }), 2),
        (MethodConfig::Simsiam(simsiam::SimsiamConfig), 2),
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
        (MethodConfig::Dino(dino_cfg(0)), 4),
    ]
}

/// DINO with a small last layer, 2 global crops of 4 views, the last layer frozen for
/// `freeze` epochs.
fn dino_cfg(freeze: u64) -> dino::DinoConfig {
    dino::DinoConfig {
        out_dim: 16,
        teacher_momentum: 0.9,
        freeze_last_layer_epochs: freeze,
        ..dino::DinoConfig::default()
    }
}

#[test]
fn steps_on_a_fixed_batch_lower_each_loss() {
    for (m, views) in methods() {
        let name = m.name();
        // DINO's targets move with the centre (on one batch, the centre removing the
        // teacher's mean output makes them harder at first); with the default teacher
        // momentum and the centre held at 0 the teacher barely moves over 16 steps, so
        // the student's loss must fall toward it.
        let m = match m {
            MethodConfig::Dino(d) => MethodConfig::Dino(dino::DinoConfig {
                teacher_momentum: 0.996,
                center_momentum: 1.0,
                ..d
            }),
            m => m,
        };
        let mut t = Trainer::from_parts(Cpu::default(), &parts(m, views, 0.05)).unwrap();
        let batch = synthetic_batch(&bench_cfg(views), 0);
        // MoCo's queue (4 batches) and the bank fill with this batch's own keys first, so
        // compare once the state is stationary: steps 4–6 against the last three.
        let losses: Vec<f32> = (0..16).map(|_| t.step(&batch, 0).unwrap().loss).collect();
        // BYOL and SimSiam keep no queue: their loss falls from the first step (BYOL's
        // then rises a little as its target catches up with the online network).
        let from = if matches!(name, "byol" | "simsiam") {
            0
        } else {
            4
        };
        let early = losses[from..from + 3].iter().sum::<f32>() / 3.0;
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

#[test]
fn byol_target_follows_the_online_network_after_each_step() {
    let m = MethodConfig::Byol(byol::ByolConfig { momentum: 0.9 });
    let p = parts(m, 2, 0.5);
    let total = p.epochs * p.steps_per_epoch;
    let tau = |k| byol::target_momentum(0.9, k, total);
    let mut t = Trainer::from_parts(Cpu::default(), &p).unwrap();
    let batch = synthetic_batch(&bench_cfg(2), 0);
    let names: Vec<String> = t
        .objective
        .key_encoder()
        .unwrap()
        .entries()
        .iter()
        .filter(|e| e.role.is_trainable())
        .map(|e| e.name.clone())
        .collect();
    assert!(names.iter().any(|n| n == "projector.3.weight"));
    let online = |t: &Trainer<Cpu>, n: &str| t.store.data(t.store.id(n).unwrap());
    let target = |t: &Trainer<Cpu>, n: &str| {
        let k = t.objective.key_encoder().unwrap();
        k.data(k.id(n).unwrap())
    };
    assert!(
        t.objective
            .key_encoder()
            .unwrap()
            .entries()
            .iter()
            .all(|e| !e.trainable && !e.name.starts_with("predictor."))
    );
    // ξ₀ = θ₀; the reference updates after each optimiser step,
    // ξ_{k+1} = ξ_k + (1 − τ_k)(θ_{k+1} − ξ_k), which the next step's loss makes
    // before its forward: after step k+1's step, ξ is ξ_{k+1}.
    let mut xi: Vec<Vec<f32>> = names.iter().map(|n| online(&t, n)).collect();
    for k in 0..3u64 {
        let theta_k: Vec<Vec<f32>> = names.iter().map(|n| online(&t, n)).collect();
        t.step(&batch, 0).unwrap();
        if k > 0 {
            for (x, theta) in xi.iter_mut().zip(&theta_k) {
                let c = (1.0 - tau(k - 1)) as f32;
                for (a, b) in x.iter_mut().zip(theta) {
                    *a += (b - *a) * c;
                }
            }
        }
        for (x, n) in xi.iter().zip(&names) {
            let got = target(&t, n);
            let err = got
                .iter()
                .zip(x)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(err < 1e-6, "step {k}: `{n}` off by {err}");
        }
        assert_ne!(online(&t, &names[0]), target(&t, &names[0]), "step {k}");
    }
}

#[test]
fn dino_teacher_moves_only_by_its_ema_and_the_last_layer_waits_an_epoch() {
    // Two steps per epoch: the last layer is frozen for steps 0 and 1.
    let mut p = parts(MethodConfig::Dino(dino_cfg(1)), 4, 0.5);
    p.epochs = 3;
    p.steps_per_epoch = 2;
    let mut t = Trainer::from_parts(Cpu::default(), &p).unwrap();
    let batch = synthetic_batch(&bench_cfg(4), 0);
    let w = "projector.0.weight";
    let v = "last_layer.weight_v";
    let s0 = t.store.data(t.store.id(w).unwrap());
    let v0 = t.store.data(t.store.id(v).unwrap());
    let teacher = t.objective.key_encoder().unwrap();
    assert_eq!(teacher.data(teacher.id(w).unwrap()), s0, "a copy at first");
    assert_eq!(teacher.data(teacher.id(v).unwrap()), v0);
    assert!(teacher.entries().iter().all(|e| !e.trainable));
    t.step(&batch, 0).unwrap();
    let s1 = t.store.data(t.store.id(w).unwrap());
    assert_eq!(t.store.data(t.store.id(v).unwrap()), v0, "frozen at step 0");
    // Step 0 leaves the teacher alone (the reference's EMA after step 0 happens at the
    // start of step 1, before the teacher is read).
    let teacher = t.objective.key_encoder().unwrap();
    assert_eq!(teacher.data(teacher.id(w).unwrap()), s0);
    t.step(&batch, 0).unwrap();
    assert_eq!(t.store.data(t.store.id(v).unwrap()), v0, "frozen at step 1");
    let m0 = dino::teacher_momentum(0, 0.9, 6);
    let teacher = t.objective.key_encoder().unwrap();
    let k1 = teacher.data(teacher.id(w).unwrap());
    for ((k, a), b) in k1.iter().zip(&s0).zip(&s1) {
        let want = m0 as f32 * a + (1.0 - m0 as f32) * b;
        assert!((k - want).abs() < 1e-6, "{k} vs {want}");
    }
    let state = t.optimizer.state(&t.store);
    assert!(
        state
            .tensors
            .iter()
            .all(|s| !s.name.starts_with("last_layer"))
    );
    t.step(&batch, 1).unwrap();
    let moved = t
        .store
        .data(t.store.id(v).unwrap())
        .iter()
        .zip(&v0)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(moved > 1e-5, "trains from epoch 1 ({moved})");
    // The centre moved toward the teacher's mean output.
    let c = &t.objective.state()[0];
    assert_eq!((c.name.as_str(), c.shape.clone()), ("center", vec![1, 16]));
    assert!(c.data.iter().any(|x| *x != 0.0));
}
