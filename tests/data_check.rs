//! The data check `validate`, `plan` and `run` share (`build::check_data_paths`): what
//! loading would stop at, found cheaply from listings and headers, what it would
//! convert, and method state sized beyond the dataset; each message class has a
//! snapshot.

use std::path::Path;

use recipe::build::check_data_paths;
use recipe::diag::{Severity, render_human};
use recipe::spec::Loader;

/// A `w`×`h` PNG, gray or RGB.
fn png(path: &Path, w: u32, h: u32, rgb: bool) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    if rgb {
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 7]))
            .save(path)
            .unwrap();
    } else {
        image::GrayImage::from_fn(w, h, |x, y| image::Luma([(x + y) as u8]))
            .save(path)
            .unwrap();
    }
}

/// A recipe over the image folder `train` (absolute), with `extra` lines appended to
/// the `data` section and `loss` as given.
fn recipe_text(train: &Path, extra: &str, loss: &str, batch: usize) -> String {
    format!(
        "version: 1\nname: t\ndata:\n  source: {{format: image_folder, train: {}}}\n  image_size: 8\n  channels: 1\n  test_fraction: 0.25\n{extra}augment:\n  views: 2\n  pipeline:\n    - random_resized_crop: {{size: 8}}\nmodel:\n  backbone: {{arch: small_cnn, channels: [4]}}\nloss: {loss}\noptimizer: {{name: sgd, lr: 0.1}}\nschedule: {{kind: constant}}\ntrain: {{epochs: 1, batch_size: {batch}}}\n",
        train.display()
    )
}

/// Loads `text`, runs the data check, and returns (data errors, rendered diagnostics
/// with the temporary folder written `<tmp>`, severities).
fn check(text: &str, sets: &[&str], tmp: &Path) -> (usize, String, Vec<Severity>) {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let mut l = Loader::new()
        .load_bytes(
            &tmp.join("recipe.yaml").display().to_string(),
            Some(tmp),
            text.as_bytes(),
            &sets,
        )
        .unwrap();
    assert!(
        !l.has_errors(),
        "the recipe itself should be valid:\n{}",
        render_human(&l.diagnostics, &l.sources)
    );
    let before = l.diagnostics.len();
    let errors = check_data_paths(&mut l);
    // The temporary folder's path differs by machine, and so would the carets under it.
    let out = render_human(&l.diagnostics, &l.sources)
        .replace(&tmp.display().to_string(), "<tmp>")
        .lines()
        .map(|line| match line.split_once("| ") {
            Some((gutter, marks))
                if gutter.trim().is_empty()
                    && marks.contains('^')
                    && marks.trim().chars().all(|c| c == '^') =>
            {
                format!("{gutter}| {}^…", &marks[..marks.find('^').unwrap_or(0)])
            }
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    let severities = l.diagnostics[before..].iter().map(|d| d.severity).collect();
    (errors, out, severities)
}

#[test]
fn flat_folder_with_labels_requested_says_labels_false() {
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..4 {
        png(&tmp.path().join(format!("flat/{i}.png")), 8, 8, false);
    }
    let text = recipe_text(&tmp.path().join("flat"), "", "{method: simclr}", 2);
    let (errors, out, _) = check(&text, &[], tmp.path());
    assert_eq!(errors, 1, "{out}");
    assert!(out.contains("`data.labels: false`"), "{out}");
    insta::assert_snapshot!("flat_folder_with_labels", out);
}

#[test]
fn empty_class_folder_is_found_without_loading() {
    let tmp = tempfile::tempdir().unwrap();
    png(&tmp.path().join("tr/cat/0.png"), 8, 8, false);
    std::fs::create_dir_all(tmp.path().join("tr/dog")).unwrap();
    let text = recipe_text(&tmp.path().join("tr"), "", "{method: simclr}", 2);
    let (errors, out, _) = check(&text, &[], tmp.path());
    assert_eq!(errors, 1, "{out}");
    insta::assert_snapshot!("empty_class_folder", out);
}

#[test]
fn corrupt_image_mentions_skip_unreadable_and_is_skipped_when_asked() {
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..4 {
        png(&tmp.path().join(format!("tr/a/{i}.png")), 8, 8, false);
    }
    std::fs::write(tmp.path().join("tr/a/broken.png"), b"not a png at all").unwrap();
    let text = recipe_text(&tmp.path().join("tr"), "", "{method: simclr}", 2);
    let (errors, out, _) = check(&text, &[], tmp.path());
    assert_eq!(errors, 1, "{out}");
    assert!(out.contains("`data.skip_unreadable: true`"), "{out}");
    insta::assert_snapshot!("corrupt_image", out);

    let text = recipe_text(
        &tmp.path().join("tr"),
        "  skip_unreadable: true\n",
        "{method: simclr}",
        2,
    );
    let (errors, out, _) = check(&text, &[], tmp.path());
    assert_eq!((errors, out.as_str()), (0, ""));
}

#[test]
fn conversions_are_counted_once() {
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..5 {
        png(&tmp.path().join(format!("tr/a/{i}.png")), 8, 8, true);
    }
    for i in 0..3 {
        png(&tmp.path().join(format!("tr/b/{i}.png")), 10, 6, false);
    }
    let text = recipe_text(&tmp.path().join("tr"), "", "{method: simclr}", 2);
    let (errors, out, sev) = check(&text, &[], tmp.path());
    assert_eq!(errors, 0, "{out}");
    assert_eq!(sev, [Severity::Warning, Severity::Warning], "{out}");
    assert!(
        out.contains("loading converts 5 of 8 RGB images to 1 channel (data.channels: 1)"),
        "{out}"
    );
    assert!(
        out.contains("loading resizes 3 of 8 images to 8×8"),
        "{out}"
    );
    insta::assert_snapshot!("conversions", out);

    // With `mixed_sizes: error`, the odd size is the error loading would stop at.
    let text = recipe_text(
        &tmp.path().join("tr"),
        "  mixed_sizes: error\n",
        "{method: simclr}",
        2,
    );
    let (errors, out, _) = check(&text, &[], tmp.path());
    assert_eq!(errors, 1, "{out}");
    assert!(out.contains("is 6x10 (HxW)"), "{out}");
}

#[test]
fn method_state_larger_than_the_dataset_warns() {
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..8 {
        png(&tmp.path().join(format!("tr/a/{i}.png")), 8, 8, false);
    }
    let tr = tmp.path().join("tr");
    // 8 images, a quarter held out: 6 train; a queue of 32 keys is 5.3× that.
    let text = recipe_text(&tr, "", "{method: moco, queue_size: 32}", 2);
    let (errors, out, sev) = check(&text, &[], tmp.path());
    assert_eq!((errors, sev), (0, vec![Severity::Warning]), "{out}");
    assert!(
        out.contains("the queue holds 32 keys but training has 6 images"),
        "{out}"
    );
    insta::assert_snapshot!("moco_queue_larger_than_dataset", out);

    let text = recipe_text(&tr, "", "{method: memory_bank, negatives: 6}", 2);
    let (_, out, _) = check(&text, &[], tmp.path());
    insta::assert_snapshot!("bank_negatives_larger_than_dataset", out);

    let text = recipe_text(
        &tr,
        "",
        "{method: swav, prototypes: 10, queue: {size: 8, start_epoch: 0}}",
        2,
    );
    let (_, out, _) = check(&text, &["train.epochs=2"], tmp.path());
    insta::assert_snapshot!("swav_state_larger_than_dataset", out);

    // The built-in dataset's size is known: a queue 45× its 10,000 images.
    let builtin = "version: 1\nname: t\ndata: {source: {format: builtin}, image_size: 28, channels: 1}\naugment: {views: 2, pipeline: [{random_resized_crop: {size: 28}}]}\nmodel: {backbone: {arch: small_cnn}}\nloss: {method: moco, queue_size: 450048}\noptimizer: {name: sgd, lr: 0.1}\nschedule: {kind: constant}\ntrain: {epochs: 1, batch_size: 128}\n";
    let (errors, out, _) = check(builtin, &[], tmp.path());
    assert_eq!(errors, 0, "{out}");
    assert!(out.contains("(45.0× as many)"), "{out}");
    assert!(out.contains("use at most 9984 (78 × 128)"), "{out}");
}

#[test]
fn a_data_path_from_set_is_pointed_at_in_the_argument() {
    let tmp = tempfile::tempdir().unwrap();
    png(&tmp.path().join("tr/a/0.png"), 8, 8, false);
    let text = recipe_text(&tmp.path().join("tr"), "", "{method: simclr}", 2);
    let (errors, out, _) = check(&text, &["data.source.train=/no/such/folder"], tmp.path());
    assert_eq!(errors, 1, "{out}");
    assert!(out.contains("--> --set:1:19"), "{out}");
    insta::assert_snapshot!("missing_folder_from_set", out);

    // A flat folder named by `--set` is pointed at there too.
    for i in 0..2 {
        png(&tmp.path().join(format!("flat/{i}.png")), 8, 8, false);
    }
    let flat = format!("data.source.train={}", tmp.path().join("flat").display());
    let (errors, out, _) = check(&text, &[&flat], tmp.path());
    assert_eq!(errors, 1, "{out}");
    assert!(out.contains("--> --set:1:19"), "{out}");
}

#[test]
fn idx_and_cifar_sizes_come_from_headers() {
    let tmp = tempfile::tempdir().unwrap();
    // An IDX images file of 12 items of 4×4, gzipped, with labels.
    let mut img = vec![0u8, 0, 8, 3];
    for d in [12u32, 4, 4] {
        img.extend_from_slice(&d.to_be_bytes());
    }
    img.extend(std::iter::repeat_n(0u8, 12 * 16));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &img).unwrap();
    std::fs::write(tmp.path().join("img.gz"), gz.finish().unwrap()).unwrap();
    let mut lab = vec![0u8, 0, 8, 1];
    lab.extend_from_slice(&12u32.to_be_bytes());
    lab.extend(std::iter::repeat_n(0u8, 12));
    std::fs::write(tmp.path().join("lab"), lab).unwrap();
    let idx = "version: 1\nname: t\ndata: {source: {format: idx, train_images: img.gz, train_labels: lab}, image_size: 4, channels: 1, test_fraction: 0.5}\naugment: {views: 2, pipeline: [{random_resized_crop: {size: 4}}]}\nmodel: {backbone: {arch: small_cnn, channels: [4]}}\nloss: {method: moco, queue_size: 8}\noptimizer: {name: sgd, lr: 0.1}\nschedule: {kind: constant}\ntrain: {epochs: 1, batch_size: 2}\n";
    let (errors, out, _) = check(idx, &[], tmp.path());
    assert_eq!(errors, 0, "{out}");
    assert!(out.contains("training has 6 images"), "{out}");
    assert!(out.contains("use at most 6 (3 × 2)"), "{out}");

    // One CIFAR-10 batch of 3 records, resized and made gray.
    let dir = tmp.path().join("cifar");
    std::fs::create_dir_all(&dir).unwrap();
    for name in (1..=5)
        .map(|i| format!("data_batch_{i}.bin"))
        .chain(["test_batch.bin".to_string()])
    {
        std::fs::write(dir.join(name), vec![0u8; 3 * 3073]).unwrap();
    }
    let cifar = format!(
        "version: 1\nname: t\ndata: {{source: {{format: cifar, dir: {}}}, image_size: 28, channels: 1}}\naugment: {{views: 2, pipeline: [{{random_resized_crop: {{size: 28}}}}]}}\nmodel: {{backbone: {{arch: small_cnn, channels: [4]}}}}\nloss: {{method: simclr}}\noptimizer: {{name: sgd, lr: 0.1}}\nschedule: {{kind: constant}}\ntrain: {{epochs: 1, batch_size: 2}}\n",
        dir.display()
    );
    let (errors, out, _) = check(&cifar, &[], tmp.path());
    assert_eq!(errors, 0, "{out}");
    assert!(
        out.contains("loading converts 18 RGB images to 1 channel"),
        "{out}"
    );
    assert!(out.contains("loading resizes 18 images to 28×28"), "{out}");
}
