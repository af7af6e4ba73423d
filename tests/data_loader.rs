//! The batch loader: determinism across thread counts and prefetch, epoch coverage,
//! batching rules, labels and indices, and errors instead of panics.

use std::sync::Arc;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use recipe::data::{Batch, DataError, Dataset, Image, Loader, LoaderConfig, ViewMaker};

/// Two views: a noisy copy of the image, and a random 2x2 crop whose position is drawn
/// from the RNG, so any RNG mix-up between images shows in the batch.
struct TestViews;

impl ViewMaker for TestViews {
    fn view_shapes(&self) -> Vec<(usize, usize, usize)> {
        vec![(1, 4, 4), (1, 2, 2)]
    }
    fn make_views(&self, image: &Image, rng: &mut ChaCha8Rng) -> Vec<Image> {
        let noisy: Vec<f32> = image.data.iter().map(|v| v + rng.r#gen::<f32>()).collect();
        let (y, x) = (rng.gen_range(0..3), rng.gen_range(0..3));
        let mut crop = Vec::new();
        for dy in 0..2 {
            for dx in 0..2 {
                crop.push(image.get(0, y + dy, x + dx));
            }
        }
        vec![
            Image::from_planar(1, 4, 4, noisy).unwrap(),
            Image::from_planar(1, 2, 2, crop).unwrap(),
        ]
    }
}

/// 23 4x4 images; image i is filled with i (so views reveal which image they came from),
/// labels i % 3.
fn dataset(n: usize) -> Arc<Dataset> {
    let pixels: Vec<u8> = (0..n).flat_map(|i| vec![i as u8; 16]).collect();
    let labels = (0..n as u32).map(|i| i % 3).collect();
    let classes = vec!["a".into(), "b".into(), "c".into()];
    Arc::new(Dataset::from_parts("test", (1, 4, 4), pixels, Some(labels), classes).unwrap())
}

fn all_batches(threads: usize, prefetch: usize, epoch: u64) -> Vec<Batch> {
    let cfg = LoaderConfig {
        batch_size: 5,
        shuffle: true,
        drop_last: false,
        seed: 42,
        threads,
        prefetch,
    };
    let loader = Loader::new(dataset(23), Arc::new(TestViews), cfg).unwrap();
    loader.epoch(epoch).collect::<Result<_, _>>().unwrap()
}

#[test]
fn batches_identical_for_threads_and_prefetch() {
    let reference = all_batches(1, 0, 3);
    assert_eq!(reference, all_batches(2, 0, 3));
    assert_eq!(reference, all_batches(1, 2, 3));
    assert_eq!(reference, all_batches(2, 1, 3));
    assert_ne!(reference, all_batches(1, 0, 4), "another epoch differs");
}

#[test]
fn every_index_once_per_epoch_with_its_label_and_views() {
    for epoch in 0..3 {
        let batches = all_batches(2, 2, epoch);
        assert_eq!(batches.len(), 5); // 23 = 4 * 5 + 3
        assert_eq!(batches.last().unwrap().indices.len(), 3);
        let mut seen: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        seen.sort();
        assert_eq!(seen, (0..23).collect::<Vec<_>>());
        for b in &batches {
            let n = b.indices.len();
            assert_eq!(b.views[0].shape, [n, 1, 4, 4]);
            assert_eq!(b.views[1].shape, [n, 1, 2, 2]);
            assert_eq!(b.views[0].data.len(), n * 16);
            let labels = b.labels.as_ref().unwrap();
            for (k, &i) in b.indices.iter().enumerate() {
                assert_eq!(labels[k], i as u32 % 3);
                // The crop view of slot k comes from image i (constant i / 255).
                let crop = &b.views[1].data[k * 4..(k + 1) * 4];
                assert!(crop.iter().all(|&v| v == i as f32 / 255.0));
                // The noisy view is image i plus noise in [0, 1).
                let noisy = &b.views[0].data[k * 16..(k + 1) * 16];
                assert!(
                    noisy
                        .iter()
                        .all(|&v| (0.0..1.0).contains(&(v - i as f32 / 255.0)))
                );
            }
        }
    }
    // Shuffled: the first epoch is not the identity order, and epochs differ.
    let e0: Vec<usize> = all_batches(1, 0, 0)
        .iter()
        .flat_map(|b| b.indices.clone())
        .collect();
    let e1: Vec<usize> = all_batches(1, 0, 1)
        .iter()
        .flat_map(|b| b.indices.clone())
        .collect();
    assert_ne!(e0, (0..23).collect::<Vec<_>>());
    assert_ne!(e0, e1);
}

#[test]
fn drop_last_no_shuffle_and_unlabelled() {
    let ds = Arc::new((*dataset(23)).clone().without_labels());
    let cfg = LoaderConfig {
        batch_size: 5,
        shuffle: false,
        drop_last: true,
        seed: 1,
        threads: 1,
        prefetch: 0,
    };
    let loader = Loader::new(ds, Arc::new(TestViews), cfg).unwrap();
    assert_eq!(loader.batches_per_epoch(), 4);
    let batches: Vec<Batch> = loader.epoch(0).collect::<Result<_, _>>().unwrap();
    assert_eq!(batches.len(), 4);
    let order: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!(order, (0..20).collect::<Vec<_>>());
    assert!(batches.iter().all(|b| b.labels.is_none()));
}

#[test]
fn dropping_an_epoch_midway_stops_the_prefetch_thread() {
    let cfg = LoaderConfig {
        batch_size: 1,
        shuffle: true,
        drop_last: false,
        seed: 0,
        threads: 2,
        prefetch: 1,
    };
    let loader = Loader::new(dataset(23), Arc::new(TestViews), cfg).unwrap();
    let mut epoch = loader.epoch(0);
    assert!(epoch.next().unwrap().is_ok());
    drop(epoch); // must join without hanging on the full channel
    assert_eq!(loader.epoch(0).count(), 23);
}

struct WrongShape;
impl ViewMaker for WrongShape {
    fn view_shapes(&self) -> Vec<(usize, usize, usize)> {
        vec![(1, 3, 3)]
    }
    fn make_views(&self, image: &Image, _: &mut ChaCha8Rng) -> Vec<Image> {
        vec![image.clone()]
    }
}

struct Panics;
impl ViewMaker for Panics {
    fn view_shapes(&self) -> Vec<(usize, usize, usize)> {
        vec![(1, 4, 4)]
    }
    fn make_views(&self, image: &Image, _: &mut ChaCha8Rng) -> Vec<Image> {
        if image.data[0] == 7.0 / 255.0 {
            panic!("bad image 7");
        }
        vec![image.clone()]
    }
}

#[test]
fn errors_are_returned_not_panicked() {
    for prefetch in [0, 2] {
        let cfg = LoaderConfig {
            batch_size: 4,
            shuffle: false,
            drop_last: false,
            seed: 0,
            threads: 2,
            prefetch,
        };
        let loader = Loader::new(dataset(23), Arc::new(WrongShape), cfg.clone()).unwrap();
        let results: Vec<_> = loader.epoch(0).collect();
        assert_eq!(results.len(), 1, "iteration stops after the first error");
        assert!(matches!(
            results[0],
            Err(DataError::ViewShape { view: 0, .. })
        ));

        let loader = Loader::new(dataset(23), Arc::new(Panics), cfg).unwrap();
        let results: Vec<_> = loader.epoch(0).collect();
        assert_eq!(
            results.len(),
            2,
            "batch 0 fine, batch 1 (images 4..8) fails"
        );
        assert!(results[0].is_ok());
        match &results[1] {
            Err(DataError::WorkerPanic(m)) => assert!(m.contains("bad image 7"), "{m}"),
            other => panic!("expected a worker panic error, got {other:?}"),
        }
    }
}

#[test]
fn bad_loader_configs_are_errors() {
    let mut cfg = LoaderConfig::new(0);
    assert!(Loader::new(dataset(5), Arc::new(TestViews), cfg.clone()).is_err());
    cfg.batch_size = 8;
    cfg.drop_last = true;
    let err = Loader::new(dataset(5), Arc::new(TestViews), cfg.clone())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("fewer than one batch"), "{err}");
    cfg.drop_last = false;
    cfg.threads = 0;
    assert!(Loader::new(dataset(5), Arc::new(TestViews), cfg).is_err());
}
