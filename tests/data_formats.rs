//! Dataset formats on small files the tests write themselves: IDX (raw and gzip),
//! CIFAR-10/100 batches, image folders (PNG, JPEG, labelled and flat), conversions,
//! splits and subsets, and the errors for bad data and bad paths.

use std::io::Write;
use std::path::{Path, PathBuf};

use recipe::data::{
    Builtin, CifarFiles, CifarKind, DataConfig, DataError, IdxFiles, Resize, Source, check_paths,
    load,
};

// ---------- helpers that write files ----------

fn idx_images(n: usize, rows: usize, cols: usize, f: impl Fn(usize) -> u8) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3];
    for d in [n, rows, cols] {
        b.extend_from_slice(&(d as u32).to_be_bytes());
    }
    b.extend((0..n * rows * cols).map(f));
    b
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 1];
    b.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    b.extend_from_slice(labels);
    b
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn write(path: &Path, bytes: &[u8]) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
    path.to_path_buf()
}

fn idx_source(dir: &Path) -> Source {
    Source::Idx(IdxFiles::in_dir(dir))
}

/// MNIST-like files in `dir`: 20 train (labels i % 4), 8 test, 3x2 images, pixel = item*10 + k.
fn write_mnist(dir: &Path, compress: bool) {
    let z = |b: Vec<u8>| if compress { gz(&b) } else { b };
    let ext = if compress { ".gz" } else { "" };
    let tr: Vec<u8> = (0..20).map(|i| (i % 4) as u8).collect();
    let te: Vec<u8> = (0..8).map(|i| (i % 4) as u8).collect();
    write(
        &dir.join(format!("train-images-idx3-ubyte{ext}")),
        &z(idx_images(20, 3, 2, |p| (p / 6 * 10 + p % 6) as u8)),
    );
    write(
        &dir.join(format!("train-labels-idx1-ubyte{ext}")),
        &z(idx_labels(&tr)),
    );
    write(
        &dir.join(format!("t10k-images-idx3-ubyte{ext}")),
        &z(idx_images(8, 3, 2, |p| (p % 251) as u8)),
    );
    write(
        &dir.join(format!("t10k-labels-idx1-ubyte{ext}")),
        &z(idx_labels(&te)),
    );
}

fn err_of(cfg: &DataConfig) -> String {
    load(cfg).unwrap_err().to_string()
}

// ---------- IDX ----------

#[test]
fn idx_raw_and_gz_decode_identically() {
    let tmp = tempfile::tempdir().unwrap();
    let (raw, gzd) = (tmp.path().join("raw"), tmp.path().join("gz"));
    write_mnist(&raw, false);
    write_mnist(&gzd, true);
    let a = load(&DataConfig::new(idx_source(&raw))).unwrap();
    let b = load(&DataConfig::new(idx_source(&gzd))).unwrap();
    assert_eq!(a.train.len(), 20);
    assert_eq!(a.train.shape(), (1, 3, 2));
    assert_eq!(a.train.pixels(2), &[20, 21, 22, 23, 24, 25]);
    assert_eq!(a.train.labels().unwrap()[..5], [0, 1, 2, 3, 0]);
    assert_eq!(a.train.num_classes(), 4);
    assert_eq!(a.test.as_ref().unwrap().len(), 8);
    for i in 0..20 {
        assert_eq!(a.train.pixels(i), b.train.pixels(i));
    }
    assert_eq!(a.train.labels(), b.train.labels());
    let img = a.train.image(2);
    assert_eq!(img.data[5], 25.0 / 255.0);
}

#[test]
fn idx_bad_magic_sizes_and_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    write_mnist(d, false);
    let files = IdxFiles::in_dir(d);

    // Labels file where the images file should be: wrong magic.
    let mut f = files.clone();
    f.train_images = files.train_labels.clone().unwrap();
    let e = err_of(&DataConfig::new(Source::Idx(f)));
    assert!(e.contains("wrong magic number 0x00000801"), "{e}");
    assert!(e.contains("train-labels-idx1-ubyte"), "{e}");

    // Truncated images file.
    let mut bytes = idx_images(20, 3, 2, |_| 0);
    bytes.truncate(bytes.len() - 7);
    write(&files.train_images, &bytes);
    let e = err_of(&DataConfig::new(Source::Idx(files.clone())));
    assert!(
        e.contains("size mismatch (truncated)") && e.contains("113"),
        "{e}"
    );

    // Truncated gzip stream.
    let gz_path = d.join("cut.gz");
    let full = gz(&idx_images(20, 3, 2, |_| 0));
    write(&gz_path, &full[..full.len() / 2]);
    let mut f = files.clone();
    f.train_images = gz_path;
    let e = err_of(&DataConfig::new(Source::Idx(f)));
    assert!(e.contains("cut.gz") && e.contains("gzip"), "{e}");

    // 20 images, 19 labels.
    write(&files.train_images, &idx_images(20, 3, 2, |_| 0));
    write(files.train_labels.as_ref().unwrap(), &idx_labels(&[0; 19]));
    match load(&DataConfig::new(Source::Idx(files.clone()))) {
        Err(DataError::IdxCountMismatch {
            n_images: 20,
            n_labels: 19,
            ..
        }) => {}
        other => panic!("expected a count mismatch, got {other:?}"),
    }

    // No images at all.
    write(&files.train_images, &idx_images(0, 3, 2, |_| 0));
    write(files.train_labels.as_ref().unwrap(), &idx_labels(&[]));
    let e = err_of(&DataConfig::new(Source::Idx(files.clone())));
    assert!(e.contains("has no training images"), "{e}");

    // Missing file.
    write(&files.train_images, &idx_images(20, 3, 2, |_| 0));
    write(files.train_labels.as_ref().unwrap(), &idx_labels(&[0; 20]));
    let mut f = files.clone();
    f.test_images = Some(d.join("nope-idx3-ubyte"));
    let e = err_of(&DataConfig::new(Source::Idx(f)));
    assert!(
        e.contains("IDX images file") && e.contains("does not exist"),
        "{e}"
    );
}

#[test]
fn idx_without_labels_is_unlabelled_and_holdout_splits_it() {
    let tmp = tempfile::tempdir().unwrap();
    write_mnist(tmp.path(), true);
    let mut files = IdxFiles::in_dir(tmp.path());
    files.train_labels = None;
    files.test_images = None;
    files.test_labels = None;
    let mut cfg = DataConfig::new(Source::Idx(files));
    let e = err_of(&cfg);
    assert!(e.contains("labels were requested"), "{e}");
    cfg.use_labels = false;
    cfg.holdout = Some(0.25);
    cfg.seed = 3;
    let data = load(&cfg).unwrap();
    assert_eq!(data.train.len(), 15);
    assert_eq!(data.test.as_ref().unwrap().len(), 5);
    assert!(data.train.labels().is_none());
    // The hold-out is a partition of the original images.
    let mut firsts: Vec<u8> = (0..15).map(|i| data.train.pixels(i)[0]).collect();
    firsts.extend((0..5).map(|i| data.test.as_ref().unwrap().pixels(i)[0]));
    firsts.sort();
    assert_eq!(firsts, (0..20).map(|i| i * 10).collect::<Vec<u8>>());
    // Same seed, same split; another seed, another.
    let again = load(&cfg).unwrap();
    assert_eq!(
        again.test.unwrap().pixels(0),
        data.test.as_ref().unwrap().pixels(0)
    );
    cfg.seed = 4;
    let other = load(&cfg).unwrap().test.unwrap();
    let same = (0..5).all(|i| other.pixels(i) == data.test.as_ref().unwrap().pixels(i));
    assert!(!same);
}

#[test]
fn subsets_and_holdouts_are_class_balanced() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    // 400 images, labels i % 4 (100 per class), pixel value encodes the item.
    let labels: Vec<u8> = (0..400).map(|i| (i % 4) as u8).collect();
    // Image i stores i as two bytes (high, low).
    let enc = |p: usize| {
        if p.is_multiple_of(2) {
            (p / 2 / 256) as u8
        } else {
            (p / 2 % 256) as u8
        }
    };
    write(
        &d.join("train-images-idx3-ubyte"),
        &idx_images(400, 1, 2, enc),
    );
    write(&d.join("train-labels-idx1-ubyte"), &idx_labels(&labels));
    let files = IdxFiles {
        train_images: d.join("train-images-idx3-ubyte"),
        train_labels: Some(d.join("train-labels-idx1-ubyte")),
        test_images: None,
        test_labels: None,
    };
    let mut cfg = DataConfig::new(Source::Idx(files));
    cfg.holdout = Some(0.2);
    cfg.subset = Some(0.5);
    cfg.test_subset = Some(0.5);
    let data = load(&cfg).unwrap();
    assert_eq!(data.train.class_counts(), vec![40; 4]);
    assert_eq!(data.test.unwrap().class_counts(), vec![10; 4]);
    // Each subset keeps the source order.
    let ids: Vec<usize> = (0..data.train.len())
        .map(|i| data.train.pixels(i)[0] as usize * 256 + data.train.pixels(i)[1] as usize)
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    // Bad fractions are configuration errors.
    cfg.subset = Some(0.0);
    assert!(err_of(&cfg).contains("subset must be in (0, 1]"));
    cfg.subset = None;
    cfg.holdout = Some(1.0);
    assert!(err_of(&cfg).contains("holdout must be in (0, 1)"));
}

// ---------- CIFAR ----------

fn cifar_record(label: &[u8], seed: u8) -> Vec<u8> {
    let mut r = label.to_vec();
    r.extend((0..3072).map(|k| (k as u8).wrapping_mul(7).wrapping_add(seed)));
    r
}

#[test]
fn cifar10_and_cifar100_batches() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let b1: Vec<u8> = [cifar_record(&[3], 0), cifar_record(&[9], 1)].concat();
    let b2: Vec<u8> = cifar_record(&[0], 2);
    let files = CifarFiles {
        kind: CifarKind::Cifar10,
        train: vec![
            write(&d.join("data_batch_1.bin"), &b1),
            write(&d.join("data_batch_2.bin"), &b2),
        ],
        test: vec![write(&d.join("test_batch.bin"), &cifar_record(&[5], 3))],
    };
    write(
        &d.join("batches.meta.txt"),
        b"airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n",
    );
    let data = load(&DataConfig::new(Source::Cifar(files.clone()))).unwrap();
    assert_eq!(data.train.len(), 3);
    assert_eq!(data.train.shape(), (3, 32, 32));
    assert_eq!(data.train.labels().unwrap(), &[3, 9, 0]);
    assert_eq!(data.train.classes()[3], "cat");
    assert_eq!(data.train.pixels(1), &b1[3073 + 1..]);
    assert_eq!(data.test.unwrap().labels().unwrap(), &[5]);

    // Gray: PIL's L = (19595 R + 38470 G + 7471 B + 32768) >> 16.
    let mut cfg = DataConfig::new(Source::Cifar(files.clone()));
    cfg.channels = Some(1);
    let gray = load(&cfg).unwrap().train;
    assert_eq!(gray.shape(), (1, 32, 32));
    let rgb = &b1[1..3073];
    for k in [0usize, 17, 1023] {
        let (r, g, b) = (rgb[k] as u32, rgb[1024 + k] as u32, rgb[2048 + k] as u32);
        let l = ((19595 * r + 38470 * g + 7471 * b + 32768) >> 16) as u8;
        assert_eq!(gray.pixels(0)[k], l);
    }

    // CIFAR-100: coarse then fine label; fine is the default choice.
    let c100: Vec<u8> = [cifar_record(&[4, 77], 0), cifar_record(&[19, 99], 5)].concat();
    let p = write(&d.join("c100").join("train.bin"), &c100);
    for (kind, want, k) in [
        (CifarKind::Cifar100Fine, [77, 99], 100),
        (CifarKind::Cifar100Coarse, [4, 19], 20),
    ] {
        let files = CifarFiles {
            kind,
            train: vec![p.clone()],
            test: vec![],
        };
        let ds = load(&DataConfig::new(Source::Cifar(files))).unwrap().train;
        assert_eq!(ds.labels().unwrap(), &want);
        assert_eq!(ds.num_classes(), k);
        assert_eq!(ds.pixels(1), &c100[3074 + 2..]);
    }
    assert_eq!(
        CifarFiles::in_dir(d, CifarKind::Cifar10).train[4],
        d.join("data_batch_5.bin")
    );
}

#[test]
fn cifar_errors_name_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut truncated = [cifar_record(&[1], 0), cifar_record(&[2], 0)].concat();
    truncated.truncate(3073 + 1000);
    let p = write(&d.join("data_batch_1.bin"), &truncated);
    let cfg = |kind, p: &PathBuf| {
        DataConfig::new(Source::Cifar(CifarFiles {
            kind,
            train: vec![p.clone()],
            test: vec![],
        }))
    };
    let e = err_of(&cfg(CifarKind::Cifar10, &p));
    assert!(
        e.contains("data_batch_1.bin") && e.contains("truncated") && e.contains("1 complete"),
        "{e}"
    );
    // A CIFAR-100 file read as CIFAR-10.
    let c100 = write(
        &d.join("train.bin"),
        &[
            cifar_record(&[1, 2], 0),
            cifar_record(&[1, 2], 0),
            cifar_record(&[1, 2], 0),
        ]
        .concat(),
    );
    let e = err_of(&cfg(CifarKind::Cifar10, &c100));
    assert!(e.contains("is this a CIFAR-100 batch?"), "{e}");
    let bad_label = write(&d.join("b.bin"), &cifar_record(&[10], 0));
    let e = err_of(&cfg(CifarKind::Cifar10, &bad_label));
    assert!(e.contains("record 0 has label 10"), "{e}");
    let empty = write(&d.join("e.bin"), &[]);
    assert!(err_of(&cfg(CifarKind::Cifar10, &empty)).contains("empty"));
    let e = err_of(&cfg(CifarKind::Cifar10, &d.join("missing.bin")));
    assert!(
        e.contains("missing.bin") && e.contains("does not exist"),
        "{e}"
    );
}

// ---------- image folders ----------

fn save_rgb(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)))
        .save(path)
        .unwrap();
}

fn save_gray(path: &Path, w: u32, h: u32, v: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_pixel(w, h, image::Luma([v]))
        .save(path)
        .unwrap();
}

#[test]
fn labelled_folder_with_png_and_jpeg() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("train");
    save_rgb(&root.join("zebra/b.png"), 4, 3, |x, y| {
        [x as u8 * 10, y as u8 * 20, 200]
    });
    save_rgb(&root.join("zebra/a.png"), 4, 3, |_, _| [1, 2, 3]);
    save_rgb(&root.join("ant/deep/x.jpg"), 4, 3, |_, _| [120, 60, 30]);
    save_gray(&root.join("ant/g.png"), 4, 3, 77);
    write(&root.join("ant/notes.txt"), b"not an image");
    write(&root.join(".hidden/x.png"), b"ignored");
    let data = load(&DataConfig::new(Source::ImageFolder {
        train: root.clone(),
        test: None,
    }))
    .unwrap();
    let ds = data.train;
    assert_eq!(ds.classes(), &["ant".to_string(), "zebra".to_string()]);
    assert_eq!(
        ds.shape(),
        (3, 3, 4),
        "any colour image makes the dataset colour"
    );
    // Sorted paths: ant/deep/x.jpg, ant/g.png, zebra/a.png, zebra/b.png.
    assert_eq!(ds.labels().unwrap(), &[0, 0, 1, 1]);
    assert_eq!(ds.pixels(1), &[77u8; 36][..], "gray replicated to RGB");
    assert_eq!(&ds.pixels(2)[..12], &[1u8; 12][..]);
    let b = ds.pixels(3);
    assert_eq!(
        (b[5], b[12 + 5], b[24 + 5]),
        (10, 20, 200),
        "planar CHW at (y=1, x=1)"
    );
    // JPEG is lossy: close to the colour written.
    let j = ds.pixels(0);
    assert!(
        (j[0] as i32 - 120).abs() <= 3 && (j[12] as i32 - 60).abs() <= 3,
        "{j:?}"
    );

    // Gray on request: luma of the colour images, the gray one unchanged.
    let mut cfg = DataConfig::new(Source::ImageFolder {
        train: root,
        test: None,
    });
    cfg.channels = Some(1);
    let g = load(&cfg).unwrap().train;
    assert_eq!(g.shape(), (1, 3, 4));
    assert_eq!(g.pixels(1), &[77u8; 12][..]);
    assert_eq!(
        g.pixels(2)[0],
        ((19595 + 38470 * 2 + 7471 * 3 + 32768) >> 16) as u8
    );
}

#[test]
fn flat_folder_is_unlabelled_and_gray_stays_gray() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("flat");
    for (i, v) in [10u8, 20, 30].iter().enumerate() {
        save_gray(&root.join(format!("{i}.png")), 5, 5, *v);
    }
    let mut cfg = DataConfig::new(Source::ImageFolder {
        train: root,
        test: None,
    });
    let e = err_of(&cfg);
    assert!(
        e.contains("labels were requested") && e.contains("set `data.labels: false`"),
        "{e}"
    );
    cfg.use_labels = false;
    let ds = load(&cfg).unwrap().train;
    assert_eq!(ds.shape(), (1, 5, 5));
    assert!(ds.labels().is_none());
    assert_eq!(ds.pixels(2)[0], 30);
}

#[test]
fn mixed_sizes_error_or_resize() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("mixed");
    save_gray(&root.join("c/a.png"), 8, 8, 100);
    save_gray(&root.join("c/b.png"), 4, 6, 50);
    let mut cfg = DataConfig::new(Source::ImageFolder {
        train: root.clone(),
        test: None,
    });
    let e = err_of(&cfg);
    assert!(
        e.contains("b.png") && e.contains("6x4") && e.contains("a.png"),
        "{e}"
    );
    cfg.image_size = Some((4, 4));
    let e = err_of(&cfg);
    assert!(
        e.contains("a.png") && e.contains("configured image size"),
        "{e}"
    );
    cfg.resize = Resize::Bilinear;
    let ds = load(&cfg).unwrap().train;
    assert_eq!(ds.shape(), (1, 4, 4));
    // A constant image stays constant under bilinear resizing.
    assert_eq!(ds.pixels(0), &[100u8; 16][..]);
    assert_eq!(ds.pixels(1), &[50u8; 16][..]);
    // Minimum size check (e.g. the crop size).
    assert!(ds.check_min_size(4, 4, "the crop size").is_ok());
    let e = ds
        .check_min_size(8, 2, "the crop size")
        .unwrap_err()
        .to_string();
    assert!(e.contains("smaller than the crop size (8x2)"), "{e}");
    // Resizing without a size is refused.
    cfg.image_size = None;
    assert!(err_of(&cfg).contains("resizing needs an image size"));
}

#[test]
fn bilinear_resize_matches_pil() {
    // Reference: Pillow 12, `Image.resize(size, Image.BILINEAR)` on this 5x3 "L" image.
    let src: Vec<u8> = (0..3)
        .flat_map(|y| (0..5).map(move |x| ((x * 37 + y * 91) % 256) as u8))
        .collect();
    let ds = recipe::data::Dataset::from_parts("t", (1, 3, 5), src, None, vec![]).unwrap();
    let cases: [((usize, usize), &[u8]); 3] = [
        ((2, 3), &[50, 108, 166, 164, 98, 120]),
        (
            (6, 8),
            &[
                0, 16, 39, 62, 86, 109, 132, 148, 23, 39, 62, 85, 109, 132, 155, 171, 68, 84, 107,
                130, 154, 177, 200, 216, 114, 130, 149, 132, 136, 159, 182, 198, 159, 175, 186, 89,
                53, 76, 99, 115, 182, 198, 205, 68, 12, 35, 58, 74,
            ],
        ),
        (
            (3, 5),
            &[
                0, 37, 74, 111, 148, 91, 128, 165, 202, 239, 182, 219, 0, 37, 74,
            ],
        ),
    ];
    for ((h, w), want) in cases {
        let got = ds.clone().resize(h, w);
        assert_eq!(got.shape(), (1, h, w));
        for (g, p) in got.pixels(0).iter().zip(want) {
            assert!(
                (*g as i32 - *p as i32).abs() <= 1,
                "{h}x{w}: got {:?}, PIL {:?}",
                got.pixels(0),
                want
            );
        }
    }
}

#[test]
fn corrupt_images_error_or_are_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    save_rgb(&root.join("cat/ok.png"), 3, 3, |_, _| [9, 9, 9]);
    save_rgb(&root.join("dog/ok.png"), 3, 3, |_, _| [8, 8, 8]);
    write(&root.join("cat/garbage.jpg"), b"this is not a jpeg at all");
    // A truncated PNG: a real file cut in half.
    let good = std::fs::read(root.join("cat/ok.png")).unwrap();
    write(&root.join("dog/cut.png"), &good[..good.len() / 2]);
    // A dangling link: listed as an image, but the file cannot be opened.
    #[cfg(unix)]
    std::os::unix::fs::symlink(root.join("gone.png"), root.join("dog/link.png")).unwrap();
    let mut cfg = DataConfig::new(Source::ImageFolder {
        train: root.clone(),
        test: None,
    });
    let e = err_of(&cfg);
    assert!(
        e.contains("cannot decode image")
            && e.contains("garbage.jpg")
            && e.contains("set `data.skip_unreadable: true`"),
        "{e}"
    );
    cfg.skip_unreadable = true;
    let data = load(&cfg).unwrap();
    assert_eq!(data.train.len(), 2);
    assert_eq!(data.train.labels().unwrap(), &[0, 1]);
    let mut skipped: Vec<_> = data
        .skipped
        .iter()
        .map(|s| s.path.file_name().unwrap().to_owned())
        .collect();
    skipped.sort();
    let mut want = vec!["cut.png", "garbage.jpg"];
    if cfg!(unix) {
        want.push("link.png");
    }
    assert_eq!(skipped, want);
    let link = data.skipped.iter().find(|s| s.path.ends_with("link.png"));
    if let Some(link) = link {
        assert!(link.reason.contains("does not exist"), "{}", link.reason);
    }
    // Skipping is on already, so a skipped file's reason does not suggest it.
    assert!(
        data.skipped
            .iter()
            .all(|s| !s.reason.contains("skip_unreadable")),
        "{:?}",
        data.skipped
    );
}

#[test]
fn folder_layout_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let cfg = |p: PathBuf| {
        DataConfig::new(Source::ImageFolder {
            train: p,
            test: None,
        })
    };
    std::fs::create_dir_all(t.join("empty")).unwrap();
    write(&t.join("empty/readme.txt"), b"x");
    let e = err_of(&cfg(t.join("empty")));
    assert!(e.contains("empty") && e.contains("no image files"), "{e}");
    save_gray(&t.join("classes/a/1.png"), 2, 2, 0);
    std::fs::create_dir_all(t.join("classes/b")).unwrap();
    let e = err_of(&cfg(t.join("classes")));
    assert!(
        e.contains("classes/b") && e.contains("no image files"),
        "{e}"
    );
    save_gray(&t.join("mixed/a/1.png"), 2, 2, 0);
    save_gray(&t.join("mixed/loose.png"), 2, 2, 0);
    let e = err_of(&cfg(t.join("mixed")));
    assert!(
        e.contains("loose.png") && e.contains("class subfolders"),
        "{e}"
    );
    let e = err_of(&cfg(t.join("absent")));
    assert!(
        e.contains("image folder") && e.contains("absent") && e.contains("does not exist"),
        "{e}"
    );
}

#[test]
fn train_and_test_folders_must_agree() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    save_gray(&t.join("train/a/1.png"), 3, 3, 1);
    save_gray(&t.join("train/b/1.png"), 3, 3, 2);
    save_gray(&t.join("test/a/1.png"), 3, 3, 3);
    save_gray(&t.join("test/c/1.png"), 3, 3, 4);
    let mut cfg = DataConfig::new(Source::ImageFolder {
        train: t.join("train"),
        test: Some(t.join("test")),
    });
    let e = err_of(&cfg);
    assert!(
        e.contains("`b` only in train") && e.contains("`c` only in test"),
        "{e}"
    );
    std::fs::rename(t.join("test/c"), t.join("test/b")).unwrap();
    save_rgb(&t.join("test/b/2.png"), 3, 3, |_, _| [255, 0, 0]);
    let data = load(&cfg).unwrap();
    let test = data.test.unwrap();
    assert_eq!(test.shape(), (1, 3, 3), "test follows the train channels");
    assert_eq!(test.labels().unwrap(), &[0, 1, 1]);
    assert_eq!(test.pixels(2)[0], 76, "pure red to luma");
    save_gray(&t.join("test/b/3.png"), 4, 4, 0);
    let e = err_of(&cfg);
    assert!(e.contains("3.png") && e.contains("training images"), "{e}");
    cfg.holdout = Some(0.5);
    assert!(err_of(&cfg).contains("own test split"));
}

#[test]
fn check_paths_reports_each_field() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    write_mnist(t, true);
    let mut files = IdxFiles::in_dir(t);
    assert!(check_paths(&DataConfig::new(Source::Idx(files.clone()))).is_empty());
    files.test_labels = Some(t.join("gone.gz"));
    files.train_images = t.to_path_buf();
    let problems = check_paths(&DataConfig::new(Source::Idx(files)));
    assert_eq!(problems.len(), 2);
    assert_eq!(problems[0].field, "source.train_images");
    assert!(problems[0].problem.contains("is a folder"));
    assert_eq!(problems[1].field, "source.test_labels");
    assert_eq!(problems[1].problem, "does not exist");

    let c = CifarFiles::in_dir(t, CifarKind::Cifar10);
    let problems = check_paths(&DataConfig::new(Source::Cifar(c)));
    assert_eq!(problems.len(), 6);
    assert_eq!(problems[5].field, "source.test[0]");
    let f = Source::ImageFolder {
        train: t.join("train-images-idx3-ubyte.gz"),
        test: Some(t.join("nope")),
    };
    let problems = check_paths(&DataConfig::new(f));
    assert_eq!(problems[0].problem, "is a file, expected a folder");
    assert_eq!(problems[1].field, "source.test");
    assert!(check_paths(&DataConfig::new(Source::Builtin(Builtin::FashionMnist))).is_empty());
}

// ---------- the recipe adapter ----------

fn spec_data(yaml: &str) -> recipe::spec::data::Data {
    serde_yaml::from_str(yaml).unwrap()
}

#[test]
fn recipe_data_section_maps_onto_the_config() {
    let d = spec_data(
        "source: {format: builtin}\nimage_size: 28\nchannels: 1\nmixed_sizes: error\n\
         labels: false\nsubset: 0.1\n",
    );
    let cfg = recipe::build::data::config(&d, 5);
    assert_eq!(cfg.source, Source::Builtin(Builtin::FashionMnist));
    assert_eq!(
        (cfg.channels, cfg.image_size, cfg.resize),
        (Some(1), Some((28, 28)), Resize::Error)
    );
    assert_eq!(
        (cfg.subset, cfg.holdout, cfg.use_labels, cfg.seed),
        (Some(0.1), None, false, 5)
    );
    let data = load(&cfg).unwrap();
    assert_eq!(data.train.len(), 1000);
    assert!(data.train.labels().is_none());
    assert_eq!(
        data.test.unwrap().len(),
        2000,
        "test labels kept for evaluation"
    );
    assert!(recipe::build::data::path_problems(&d, "data").is_empty());

    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("cifar");
    let d = spec_data(&format!(
        "source: {{format: cifar, variant: cifar100, dir: '{}'}}\nimage_size: 32\n",
        missing.display()
    ));
    let cfg = recipe::build::data::config(&d, 0);
    match &cfg.source {
        Source::Cifar(f) => {
            assert_eq!(f.kind, CifarKind::Cifar100Fine);
            assert_eq!(f.train, vec![missing.join("train.bin")]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!((cfg.channels, cfg.resize), (Some(3), Resize::Bilinear));
    let problems = recipe::build::data::path_problems(&d, "data");
    assert_eq!(problems.len(), 1);
    assert_eq!(
        (problems[0].field.as_str(), problems[0].problem.as_str()),
        ("data.source.dir", "does not exist")
    );
    std::fs::create_dir_all(&missing).unwrap();
    write(&missing.join("train.bin"), &cifar_record(&[0, 1], 0));
    let problems = recipe::build::data::path_problems(&d, "data");
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].path, missing.join("test.bin"));

    let d = spec_data(&format!(
        "source: {{format: image_folder, train: '{}'}}\nimage_size: 8\ntest_fraction: 0.25\n",
        tmp.path().join("nope").display()
    ));
    let cfg = recipe::build::data::config(&d, 0);
    assert_eq!(cfg.holdout, Some(0.25));
    let problems = recipe::build::data::path_problems(&d, "data");
    assert_eq!(problems[0].field, "data.source.train");
}

#[test]
fn every_image_format_of_the_build_decodes() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("formats");
    let exts = ["bmp", "gif", "jpeg", "png", "tif", "webp"];
    for ext in exts {
        save_rgb(&root.join(format!("img.{ext}")), 4, 4, |_, _| {
            [200, 100, 50]
        });
    }
    let mut cfg = DataConfig::new(Source::ImageFolder {
        train: root,
        test: None,
    });
    cfg.use_labels = false;
    let ds = load(&cfg).unwrap().train;
    assert_eq!(ds.len(), exts.len());
    assert_eq!(ds.shape(), (3, 4, 4));
    for (i, ext) in exts.iter().enumerate() {
        let p = ds.pixels(i);
        for (c, want) in [200i32, 100, 50].into_iter().enumerate() {
            let got = p[c * 16 + 5] as i32;
            assert!(
                (got - want).abs() <= 3,
                "{ext}: channel {c} is {got}, want {want}"
            );
        }
    }
}
