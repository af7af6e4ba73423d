//! The embedded Fashion-MNIST and MNIST subsets: size, class balance, and checksums of
//! the decoded pixels and labels (the values in `assets/fashion-mnist-subset/README.md`
//! and `assets/mnist-subset/README.md`).

use recipe::data::{Builtin, DataConfig, Source, builtin, load};
use sha2::{Digest, Sha256};

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn digests(ds: &recipe::data::Dataset) -> (String, String) {
    let mut px = Sha256::new();
    for i in 0..ds.len() {
        px.update(ds.pixels(i));
    }
    let labels: Vec<u8> = ds.labels().unwrap().iter().map(|&y| y as u8).collect();
    (hex(&px.finalize()), hex(&Sha256::digest(&labels)))
}

#[test]
fn builtin_is_balanced_and_matches_its_checksums() {
    let (train, test) = builtin::fashion_mnist_subset().unwrap();
    assert_eq!(train.shape(), (1, 28, 28));
    assert_eq!(test.shape(), (1, 28, 28));
    assert_eq!(train.len(), 10_000);
    assert_eq!(test.len(), 2_000);
    assert_eq!(train.class_counts(), vec![1000; 10]);
    assert_eq!(test.class_counts(), vec![200; 10]);
    assert_eq!(train.classes()[9], "Ankle boot");
    assert_eq!(
        digests(&train),
        (
            "e1427044c614fabc29feeff0f27e6b68f88a9ee2f2cfe7d783b9157159864883".to_string(),
            "2c02745d4ad8b4511333d0eca662ac5664a371860abaa4588b1670e7be59fbdf".to_string()
        )
    );
    assert_eq!(
        digests(&test),
        (
            "96315b1732ab731e68b8def3c284f34b605f7deb7a61e683c7d786265c827c83".to_string(),
            "b2095bc797d1201e84da76c94012c02d0e6f07af0938df4e00120a3b42d1aa4c".to_string()
        )
    );
    // Images are the pixels / 255, planar.
    let img = train.image(123);
    assert_eq!((img.channels, img.height, img.width), (1, 28, 28));
    for (f, &p) in img.data.iter().zip(train.pixels(123)) {
        assert_eq!(*f, p as f32 / 255.0);
    }
    assert!(
        img.data.iter().any(|&v| v > 0.5),
        "a real garment, not blank"
    );
}

#[test]
fn builtin_through_load_with_subset_and_rgb() {
    let mut cfg = DataConfig::new(Source::Builtin(Builtin::FashionMnist));
    cfg.subset = Some(0.05);
    cfg.channels = Some(3);
    cfg.image_size = Some((32, 32));
    cfg.resize = recipe::data::Resize::Bilinear;
    cfg.seed = 7;
    let data = load(&cfg).unwrap();
    assert_eq!(data.train.len(), 500);
    assert_eq!(data.train.class_counts(), vec![50; 10]);
    assert_eq!(data.train.shape(), (3, 32, 32));
    let test = data.test.unwrap();
    assert_eq!(test.len(), 2000);
    assert_eq!(test.shape(), (3, 32, 32));
    // Gray replicated: the three planes are equal.
    let p = data.train.pixels(3);
    assert_eq!(&p[..1024], &p[1024..2048]);
    assert_eq!(&p[..1024], &p[2048..]);
    // The built-in source has a test split, so a hold-out is refused.
    let mut bad = DataConfig::new(Source::Builtin(Builtin::FashionMnist));
    bad.holdout = Some(0.1);
    let err = load(&bad).unwrap_err().to_string();
    assert!(err.contains("own test split"), "{err}");
}

#[test]
fn mnist_is_balanced_and_matches_its_checksums() {
    let (train, test) = builtin::mnist_subset().unwrap();
    assert_eq!(train.shape(), (1, 28, 28));
    assert_eq!(test.shape(), (1, 28, 28));
    assert_eq!(train.len(), builtin::TRAIN_LEN);
    assert_eq!(test.len(), builtin::TEST_LEN);
    assert_eq!(train.class_counts(), vec![1000; 10]);
    assert_eq!(test.class_counts(), vec![200; 10]);
    assert_eq!(train.classes(), builtin::MNIST_CLASSES.map(String::from));
    assert_eq!(test.classes(), train.classes());
    assert_eq!(train.origin(), "builtin:mnist-subset/train");
    assert_eq!(test.origin(), "builtin:mnist-subset/t10k");
    assert_eq!(
        digests(&train),
        (
            "f83ddfb6346264b52ed4a5c96f7891bb59b5b151c2cb216648d82f22e3c85195".to_string(),
            "81018dafcfe18151c97046f4634773cc19464ce01f34c11a89a445656fa5599c".to_string()
        )
    );
    assert_eq!(
        digests(&test),
        (
            "e4b06aa7d06a546c5a606533ecb3e3f39cb8dfb1e76da47a92a3ca261a79302e".to_string(),
            "6ef716f0c2574b8aefde1819960be0672f42dd393741e1b8182410ad15658864".to_string()
        )
    );
    // MNIST's first training images are 5, 0, 4, 1, 9 (all kept: the subset starts
    // with the source's first image).
    let first: Vec<u32> = train.labels().unwrap()[..5].to_vec();
    assert_eq!(first, vec![5, 0, 4, 1, 9]);
    // The pixel statistics are close to the usual MNIST normalisation.
    let (mean, std) = Builtin::Mnist.mean_std();
    let (m, s) = pixel_stats(&train);
    assert!(
        (m - mean).abs() < 0.002 && (s - std).abs() < 0.002,
        "{m} {s}"
    );
}

fn pixel_stats(ds: &recipe::data::Dataset) -> (f64, f64) {
    let (mut sum, mut sq, mut n) = (0.0f64, 0.0f64, 0usize);
    for i in 0..ds.len() {
        for &p in ds.pixels(i) {
            let v = p as f64 / 255.0;
            sum += v;
            sq += v * v;
            n += 1;
        }
    }
    let mean = sum / n as f64;
    (mean, (sq / n as f64 - mean * mean).sqrt())
}

#[test]
fn fashion_mnist_statistics_match_its_usual_normalisation() {
    let (train, _) = builtin::fashion_mnist_subset().unwrap();
    let (mean, std) = Builtin::FashionMnist.mean_std();
    let (m, s) = pixel_stats(&train);
    assert!(
        (m - mean).abs() < 0.002 && (s - std).abs() < 0.002,
        "{m} {s}"
    );
}

#[test]
fn the_recipe_names_each_builtin() {
    for (name, want) in [
        ("fashion_mnist", Builtin::FashionMnist),
        ("mnist", Builtin::Mnist),
    ] {
        let yaml =
            format!("source: {{format: builtin, name: {name}}}\nimage_size: 28\nchannels: 1\n");
        let d: recipe::spec::data::Data = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(d.source.known_train_len(), Some(builtin::TRAIN_LEN));
        let cfg = recipe::build::data::config(&d, 1);
        assert_eq!(cfg.source, Source::Builtin(want));
    }
    // The name defaults to Fashion-MNIST.
    let d: recipe::spec::data::Data =
        serde_yaml::from_str("source: {format: builtin}\nimage_size: 28\n").unwrap();
    let cfg = recipe::build::data::config(&d, 1);
    assert_eq!(cfg.source, Source::Builtin(Builtin::FashionMnist));
}

#[test]
fn mnist_through_load_with_subset() {
    let mut cfg = DataConfig::new(Source::Builtin(Builtin::Mnist));
    cfg.subset = Some(0.1);
    cfg.channels = Some(1);
    cfg.image_size = Some((28, 28));
    cfg.seed = 3;
    let data = load(&cfg).unwrap();
    assert_eq!(data.train.len(), 1000);
    assert_eq!(data.train.class_counts(), vec![100; 10]);
    assert_eq!(data.test.unwrap().class_counts(), vec![200; 10]);
    // A hold-out is refused, naming the dataset.
    let mut bad = DataConfig::new(Source::Builtin(Builtin::Mnist));
    bad.holdout = Some(0.1);
    let err = load(&bad).unwrap_err().to_string();
    assert!(
        err.contains("builtin:mnist-subset") && err.contains("own test split"),
        "{err}"
    );
}
