//! The embedded Fashion-MNIST subset: size, class balance, and checksums of the decoded
//! pixels and labels (the values in `assets/fashion-mnist-subset/README.md`).

use recipe::data::{DataConfig, Source, builtin, load};
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
    let mut cfg = DataConfig::new(Source::Builtin);
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
    let mut bad = DataConfig::new(Source::Builtin);
    bad.holdout = Some(0.1);
    let err = load(&bad).unwrap_err().to_string();
    assert!(err.contains("own test split"), "{err}");
}
