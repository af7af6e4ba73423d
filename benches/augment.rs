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

/// Mean time per application of each op of the 224 chain, on one thread, with p = 1
/// so the op always runs; shows where a view's time goes.
fn breakdown() {
    let size = 224;
    // Every timed closure below runs over these 8 images.
    let images = synthetic(8, size);
    let crop = RandomResizedCrop::new((size, size), (0.08, 1.0), (3.0 / 4.0, 4.0 / 3.0))
        .expect("valid crop");
    let cropped: Vec<Image> = {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        images.iter().map(|i| crop.apply_ref(i, &mut rng)).collect()
    };
    let ops: Vec<(&str, Op)> = vec![
        (
            "horizontal_flip",
            Op::HorizontalFlip(HorizontalFlip::new(1.0).expect("flip")),
        ),
        (
            "color_jitter",
            Op::ColorJitter(ColorJitter::new(0.4, 0.4, 0.4, 0.1, 1.0).expect("jitter")),
        ),
        (
            "grayscale",
            Op::Grayscale(RandomGrayscale::new(1.0).expect("gray")),
        ),
        (
            "gaussian_blur k=23",
            Op::GaussianBlur(GaussianBlur::new((0.1, 2.0), 23, 1.0).expect("blur")),
        ),
    ];
    let time = |label: &str, f: &mut dyn FnMut(&mut ChaCha8Rng)| {
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let start = Instant::now();
        let mut n = 0u32;
        while start.elapsed() < Duration::from_millis(700) {
            f(&mut rng);
            n += 1;
        }
        println!(
            "  {label:<32} {:>8.1} us per 3x224x224 image",
            start.elapsed().as_secs_f64() * 1e6 / f64::from(n * 8)
        );
    };
    println!("per-op cost at 224 (1 thread, p = 1):");
    time("random_resized_crop", &mut |rng| {
        for img in &images {
            black_box(crop.apply_ref(img, rng));
        }
    });
    for (label, op) in &ops {
        time(label, &mut |rng| {
            for img in &cropped {
                black_box(op.apply(img.clone(), rng));
            }
        });
    }
    time("clone (baseline)", &mut |_| {
        for img in &cropped {
            black_box(img.clone());
        }
    });
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to parse.
    for threads in [2, 1] {
        bench("simclr 32x32 (no blur)", 32, 2048, false, threads);
        bench("simclr 224x224 (blur k=23)", 224, 64, true, threads);
    }
    breakdown();
}
