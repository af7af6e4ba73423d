//! Feature extraction and fine-tuning on a tiny CNN and a synthetic two-class set.

use dfdx::prelude::Cpu;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recipe::data::Dataset;
use recipe::eval::fine_tune::Augmentation;
use recipe::eval::{EvalError, FineTuneConfig, Normalize, Which, extract, fine_tune, raw_pixels};
use recipe::nn::model::{BackboneConfig, BackboneKind, HeadConfig, Model, ModelConfig};
use recipe::nn::params::ParamStore;

/// `n` gray 8×8 images: class 0 is bright in the top half, class 1 in the bottom half
/// (a horizontal flip keeps the class), with pixel noise.
fn halves(n: usize, seed: u64) -> Dataset {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let y = (i % 2) as u32;
        for r in 0..8 {
            let bright = (r < 4) == (y == 0);
            for _ in 0..8 {
                let base: f32 = if bright { 170.0 } else { 70.0 };
                pixels.push((base + rng.gen_range(-60.0..60.0)).clamp(0.0, 255.0) as u8);
            }
        }
        labels.push(y);
    }
    Dataset::from_parts(
        "synthetic",
        (1, 8, 8),
        pixels,
        Some(labels),
        vec!["top".into(), "bottom".into()],
    )
    .unwrap()
}

/// A two-stage small CNN (4, 8 channels) with a 8→16→4 head, planned for 16×16 input
/// (the data is 8×8: evaluation re-plans it).
fn tiny_model(store: &mut ParamStore<Cpu>) -> Model {
    let cfg = ModelConfig {
        backbone: BackboneConfig {
            kind: BackboneKind::SmallCnn {
                channels: vec![4, 8],
            },
            in_channels: 1,
        },
        head: Some(HeadConfig {
            in_dim: None,
            hidden: vec![16],
            out_dim: 4,
            batch_norm: true,
            last_bn: false,
        }),
        prototypes: None,
        predictor: None,
        last_layer: None,
        input_hw: (16, 16),
    };
    Model::new(store, &cfg, 5).unwrap()
}

fn norm() -> Normalize {
    Normalize::new(vec![0.5], vec![0.25]).unwrap()
}

fn snapshot(store: &ParamStore<Cpu>) -> Vec<(String, Vec<f32>)> {
    store
        .entries()
        .iter()
        .map(|e| (e.name.clone(), e.tensor.as_vec()))
        .collect()
}

#[test]
fn extract_gives_one_row_per_image_and_leaves_the_store_alone() {
    let mut store = ParamStore::new(Cpu::default());
    let model = tiny_model(&mut store);
    let data = halves(10, 1);
    let before = snapshot(&store);
    let f = extract(&model, &mut store, &data, &norm(), Which::Backbone, 4).unwrap();
    assert_eq!((f.n, f.dim), (10, 8));
    assert_eq!(f.labels.as_deref(), data.labels());
    assert_eq!(snapshot(&store), before, "evaluation mode must not write");
    // The batch size does not change the features.
    let g = extract(&model, &mut store, &data, &norm(), Which::Backbone, 10).unwrap();
    for (a, b) in f.data.iter().zip(&g.data) {
        assert!((a - b).abs() < 1e-5);
    }
    let h = extract(&model, &mut store, &data, &norm(), Which::Head, 3).unwrap();
    assert_eq!((h.n, h.dim), (10, 4));
    assert!(
        f.data.iter().all(|v| v.is_finite() && *v >= 0.0),
        "pooled ReLU output"
    );
}

#[test]
fn extract_and_raw_pixels_reject_bad_input() {
    let mut store = ParamStore::new(Cpu::default());
    let model = tiny_model(&mut store);
    let data = halves(4, 1);
    let rgb = Normalize::new(vec![0.5; 3], vec![0.25; 3]).unwrap();
    assert!(matches!(
        extract(&model, &mut store, &data, &rgb, Which::Backbone, 2),
        Err(EvalError::Data(_))
    ));
    assert!(matches!(
        extract(&model, &mut store, &data, &norm(), Which::Backbone, 0),
        Err(EvalError::Config(_))
    ));
    assert!(raw_pixels(&data, &rgb).is_err());
    let raw = raw_pixels(&data, &norm()).unwrap();
    assert_eq!((raw.n, raw.dim), (4, 64));
    let first = data.image(0).data[0];
    assert!((raw.data[0] - (first - 0.5) / 0.25).abs() < 1e-6);
}

#[test]
fn fine_tuning_learns_the_task_on_a_copy_of_the_store() {
    let mut store = ParamStore::new(Cpu::default());
    let model = tiny_model(&mut store);
    let (train, test) = (halves(64, 1), halves(40, 2));
    let before = snapshot(&store);
    let cfg = FineTuneConfig {
        epochs: 8,
        batch_size: 16,
        lr: 0.1,
        backbone_lr_scale: 0.5,
        weight_decay: 1e-4,
        seed: 9,
        head_norm: false,
    };
    let untrained = fine_tune(
        &model,
        &store,
        &train,
        &test,
        &norm(),
        &FineTuneConfig { lr: 0.0, ..cfg },
        &Augmentation::Flip,
    )
    .unwrap();
    let tuned = fine_tune(
        &model,
        &store,
        &train,
        &test,
        &norm(),
        &cfg,
        &Augmentation::Flip,
    )
    .unwrap();
    assert!(tuned.top1 >= 95.0, "fine-tuned top-1 {}", tuned.top1);
    assert!(
        tuned.top1 > untrained.top1,
        "{} vs {}",
        tuned.top1,
        untrained.top1
    );
    assert!(tuned.train_loss < untrained.train_loss);
    assert_eq!(
        snapshot(&store),
        before,
        "the caller's store must not change"
    );
    // Deterministic for a seed.
    let again = fine_tune(
        &model,
        &store,
        &train,
        &test,
        &norm(),
        &cfg,
        &Augmentation::Flip,
    )
    .unwrap();
    assert_eq!(again, tuned);
    // With a batch norm before the classifier: it learns the task too (the test
    // features go through the running statistics), differently from without one.
    let normed = fine_tune(
        &model,
        &store,
        &train,
        &test,
        &norm(),
        &FineTuneConfig {
            head_norm: true,
            ..cfg
        },
        &Augmentation::Flip,
    )
    .unwrap();
    assert!(normed.top1 >= 95.0, "with head_norm: top-1 {}", normed.top1);
    assert_ne!(normed, tuned);
    assert_eq!(snapshot(&store), before);
}

#[test]
fn fine_tuning_rejects_bad_settings() {
    let mut store = ParamStore::new(Cpu::default());
    let model = tiny_model(&mut store);
    let data = halves(8, 1);
    let cfg = FineTuneConfig {
        batch_size: 4,
        ..FineTuneConfig::default()
    };
    for bad in [
        FineTuneConfig { epochs: 0, ..cfg },
        FineTuneConfig {
            batch_size: 1,
            ..cfg
        },
        FineTuneConfig {
            backbone_lr_scale: -0.1,
            ..cfg
        },
    ] {
        assert!(matches!(
            fine_tune(
                &model,
                &store,
                &data,
                &data,
                &norm(),
                &bad,
                &Augmentation::Flip
            ),
            Err(EvalError::Config(_))
        ));
    }
    let unlabelled = data.clone().without_labels();
    assert!(matches!(
        fine_tune(
            &model,
            &store,
            &unlabelled,
            &data,
            &norm(),
            &cfg,
            &Augmentation::Flip
        ),
        Err(EvalError::Data(_))
    ));
}
