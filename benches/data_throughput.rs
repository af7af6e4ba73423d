//! Dataset decoding and loader throughput (images/s). Not a test: prints numbers.
//!
//! `cargo bench --bench data_throughput` (optionally `-- THREADS`, default 2). Measures:
//! decoding the built-in dataset (gunzip + IDX parse), decoding a folder of 32x32 PNGs,
//! and the loader alone (u8 -> f32, two identity views, stacking, prefetch) so the cost
//! of the data layer can be told apart from the augmentations'.

use std::sync::Arc;
use std::time::Instant;

use rand_chacha::ChaCha8Rng;
use recipe::augment::ViewMaker;
use recipe::data::{DataConfig, Image, Loader, LoaderConfig, Source, builtin, load};

struct Identity(usize, usize, usize);

impl ViewMaker for Identity {
    fn view_shapes(&self) -> Vec<(usize, usize, usize)> {
        vec![(self.0, self.1, self.2); 2]
    }
    fn make_views(&self, image: &Image, _: &mut ChaCha8Rng) -> Vec<Image> {
        vec![image.clone(), image.clone()]
    }
}

fn rate(n: usize, secs: f64) -> String {
    format!(
        "{:>10.0} images/s ({n} images in {secs:.3} s)",
        n as f64 / secs
    )
}

fn main() {
    let threads: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2);

    let t = Instant::now();
    let (train, test) = builtin::fashion_mnist_subset().expect("built-in dataset decodes");
    let n = train.len() + test.len();
    println!(
        "builtin decode (gunzip + IDX):      {}",
        rate(n, t.elapsed().as_secs_f64())
    );

    let dir = tempfile::tempdir().expect("temp dir");
    let files = 2000;
    for i in 0..files {
        let class = dir.path().join(format!("c{}", i % 10));
        std::fs::create_dir_all(&class).expect("class dir");
        image::RgbImage::from_fn(32, 32, |x, y| {
            image::Rgb([(x * 8) as u8, (y * 8) as u8, (i % 256) as u8])
        })
        .save(class.join(format!("{i}.png")))
        .expect("png written");
    }
    let t = Instant::now();
    let data = load(&DataConfig::new(Source::ImageFolder {
        train: dir.path().to_path_buf(),
        test: None,
    }))
    .expect("folder loads");
    println!(
        "PNG folder decode (32x32 RGB):      {} (rayon global pool)",
        rate(data.train.len(), t.elapsed().as_secs_f64())
    );

    let train = Arc::new(train);
    let (c, h, w) = train.shape();
    let cfg = LoaderConfig {
        batch_size: 256,
        shuffle: true,
        drop_last: false,
        seed: 0,
        threads,
        prefetch: 2,
    };
    let loader = Loader::new(train.clone(), Arc::new(Identity(c, h, w)), cfg).expect("loader");
    let t = Instant::now();
    let mut images = 0;
    for epoch in 0..3 {
        for batch in loader.epoch(epoch) {
            images += batch.expect("batch").indices.len();
        }
    }
    println!(
        "loader, 2 identity views, {threads} threads: {}",
        rate(images, t.elapsed().as_secs_f64())
    );
}
