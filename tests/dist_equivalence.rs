//! K data-parallel ranks reproduce one process, with the ranks as threads of this
//! process (`recipe::dist::threads`), so it runs in a plain `cargo test`; the same
//! comparison runs across MPI processes in `mpi_equivalence`. Also: the sharded loader
//! yields each rank's slice of the single-process batches with the same views.

mod dist_common;

use std::sync::Arc;

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use recipe::data::{Batch, Dataset, Image, Loader, LoaderConfig, ViewMaker};
use recipe::dist::{Dist, threads};

fn run_ranks(world: usize) {
    let handles: Vec<_> = threads::group(world)
        .into_iter()
        .map(|r| {
            std::thread::spawn(move || {
                let dist: Dist = std::rc::Rc::new(r);
                let mut problems = Vec::new();
                for (method, shapes) in dist_common::methods() {
                    problems.extend(dist_common::check(&method, &shapes, &dist));
                }
                problems
            })
        })
        .collect();
    let problems: Vec<String> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("rank thread"))
        .collect();
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn two_ranks_reproduce_one_process_for_every_method() {
    run_ranks(2);
}

#[test]
fn four_ranks_reproduce_one_process_for_every_method() {
    run_ranks(4);
}

/// A view that is the image plus noise from its RNG: any RNG mix-up shows.
struct Noisy;

impl ViewMaker for Noisy {
    fn view_shapes(&self) -> Vec<(usize, usize, usize)> {
        vec![(1, 2, 2); 2]
    }
    fn make_views(&self, image: &Image, rng: &mut ChaCha8Rng) -> Vec<Image> {
        (0..2)
            .map(|_| {
                let d = image.data.iter().map(|v| v + rng.r#gen::<f32>()).collect();
                Image::from_planar(1, 2, 2, d).unwrap()
            })
            .collect()
    }
}

fn loader(batch: usize, drop_last: bool) -> Loader {
    let n = 22;
    let pixels: Vec<u8> = (0..n).flat_map(|i| vec![i as u8; 4]).collect();
    let labels = (0..n as u32).map(|i| i % 2).collect();
    let ds = Dataset::from_parts(
        "t",
        (1, 2, 2),
        pixels,
        Some(labels),
        vec!["a".into(), "b".into()],
    )
    .unwrap();
    let cfg = LoaderConfig {
        batch_size: batch,
        shuffle: true,
        drop_last,
        seed: 3,
        threads: 1,
        prefetch: 0,
    };
    Loader::new(Arc::new(ds), Arc::new(Noisy), cfg).unwrap()
}

#[test]
fn sharded_loaders_split_each_batch_with_the_same_views() {
    let whole: Vec<Batch> = loader(8, true).epoch(1).map(Result::unwrap).collect();
    let ranks: Vec<Vec<Batch>> = (0..2)
        .map(|r| {
            let l = loader(8, true).sharded(r, 2).unwrap();
            assert_eq!(l.shard(), (r, 2));
            assert_eq!(l.batches_per_epoch(), 2);
            l.epoch(1).map(Result::unwrap).collect()
        })
        .collect();
    assert_eq!(whole.len(), 2);
    for (i, b) in whole.iter().enumerate() {
        for (r, rank) in ranks.iter().enumerate() {
            let want = recipe::dist::slice_batch(b, r, 2).unwrap();
            assert_eq!(rank[i], want, "batch {i}, rank {r}");
            // Global dataset indices, as the memory bank needs.
            assert_eq!(rank[i].indices, b.indices[r * 4..(r + 1) * 4]);
        }
    }
}

#[test]
fn sharding_needs_an_even_split_and_full_batches() {
    assert!(loader(8, true).sharded(0, 3).is_err());
    assert!(loader(8, false).sharded(0, 2).is_err());
    assert!(loader(8, true).sharded(2, 2).is_err());
    assert!(loader(8, false).sharded(0, 1).is_ok());
}
