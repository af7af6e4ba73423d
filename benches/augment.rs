//! Augmentation throughput: source images per second through the SimCLR chain
//! (two views each), on a 2-thread rayon pool, for 32x32 and 224x224 synthetic images.
//!
//! Run with `cargo bench --bench augment`. Blur is part of the chain at 224 only, as in
//! SimCLR's CIFAR versus ImageNet recipes.

use std::hint::black_box;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use recipe::augment::{
    Chain, ChainConfig, ColorJitter, GaussianBlur, HorizontalFlip, Normalize, Op, RandomGrayscale,
    RandomResizedCrop, ViewMaker, ViewPlan,
};
use recipe::data::Image;

fn simclr_chain(size: usize, blur: bool) -> Chain {
    let mut pipeline = vec![
        Op::RandomResizedCrop(
            RandomResizedCrop::new((size, size), (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0))
                .expect("valid crop"),
        ),
        Op::HorizontalFlip(HorizontalFlip::new(0.5).expect("valid flip")),
        Op::ColorJitter(ColorJitter::new(0.4, 0.4, 0.4, 0.1, 0.8).expect("valid jitter")),
        Op::Grayscale(RandomGrayscale::new(0.2).expect("valid grayscale")),
    ];
    if blur {
        pipeline.push(Op::GaussianBlur(
            GaussianBlur::new((0.1, 2.0), GaussianBlur::default_kernel_size(size), 0.5)
                .expect("valid blur"),
        ));
    }
    let normalize = Normalize::new(vec![0.485, 0.456, 0.406], vec![0.229, 0.224, 0.225])
        .expect("valid normalisation");
    Chain::new(
        ChainConfig {
            plan: ViewPlan::Shared { views: 2, pipeline },
            normalize: Some(normalize),
        },
        (3, size, size),
    )
    .expect("valid chain")
}

fn synthetic(n: usize, size: usize) -> Vec<Image> {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    (0..n)
        .map(|_| {
            let data = (0..3 * size * size).map(|_| rng.r#gen::<f32>()).collect();
            Image::from_planar(3, size, size, data).expect("consistent size")
        })
        .collect()
}

/// One pass over `images` in parallel, one RNG stream per image as the loader does.
fn pass(chain: &Chain, images: &[Image], epoch: u64) -> usize {
    images
        .par_iter()
        .enumerate()
        .map(|(i, img)| {
            let mut rng = ChaCha8Rng::seed_from_u64(epoch);
            rng.set_stream(i as u64);
            let views = chain.make_views(img, &mut rng);
            black_box(&views);
            views.len()
        })
        .sum()
}

fn bench(label: &str, size: usize, n: usize, blur: bool, threads: usize) {
    let chain = simclr_chain(size, blur);
    let images = synthetic(n, size);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("rayon pool");
    pool.install(|| {
        pass(&chain, &images, 0);
        let start = Instant::now();
        let (mut done, mut views, mut epoch) = (0usize, 0usize, 1u64);
        while start.elapsed() < Duration::from_secs(3) {
            views += pass(&chain, &images, epoch);
            done += images.len();
            epoch += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        println!(
            "{label:<34} threads={threads}  {:>9.0} images/s  {:>9.0} views/s  ({done} images in {secs:.2} s)",
            done as f64 / secs,
            views as f64 / secs,
        );
    });
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    for threads in [2, 1] {
        bench("simclr 32x32 (no blur)", 32, 2048, false, threads);
        bench("simclr 224x224 (blur k=23)", 224, 64, true, threads);
    }
}
