//! `recipe init`: the recipe it writes for class folders (gray and RGB), a train/test
//! folder layout, a flat folder, mixed sizes and IDX files is valid and says what the
//! data is; the measured normalisation matches the data; the `$schema` modeline
//! resolves; SupCon without labels and an existing file are refused; every `--method`
//! writes a valid recipe with the keys its method needs, and DINO's and rotation's train.

mod common;
use common::{recipe, text};

use std::io::Write;
use std::path::{Path, PathBuf};

use recipe::init::{InitOptions, Method};
use recipe::spec::augment::Op;
use recipe::spec::model::{Backbone, Stem};
use recipe::spec::{Loader, Recipe};

/// The sample values every generated 1-channel image holds, in some order: the mean
/// and standard deviation of any set of such images are those of this list, whichever
/// images the hold-out takes.
fn palette(channel: usize) -> Vec<u8> {
    (0..64u32)
        .map(|p| ((p * 4 + channel as u32 * 60) % 256) as u8)
        .collect()
}

/// Mean and population std of a palette on the [0, 1] scale.
fn stats(values: &[u8]) -> (f64, f64) {
    let n = values.len() as f64;
    let m = values.iter().map(|&v| v as f64 / 255.0).sum::<f64>() / n;
    let var = values
        .iter()
        .map(|&v| (v as f64 / 255.0 - m).powi(2))
        .sum::<f64>()
        / n;
    (m, var.sqrt())
}

/// Image `i` of side `side`: every `side²/64`-pixel block cycles through the palette,
/// rotated by `i` so images differ.
fn sample(channel: usize, i: usize, side: u32, x: u32, y: u32) -> u8 {
    let p = palette(channel);
    let k = (y * side + x) as usize;
    p[(k + i * 7) % 64]
}

/// A labelled folder `root/<class>/<i>.png` of `side`² images with `channels` channels.
fn class_folder(root: &Path, classes: &[&str], per_class: usize, side: u32, channels: usize) {
    for (c, name) in classes.iter().enumerate() {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        for i in 0..per_class {
            let idx = c * per_class + i;
            save(&dir.join(format!("{i}.png")), idx, side, side, channels);
        }
    }
}

fn save(path: &Path, idx: usize, w: u32, h: u32, channels: usize) {
    if channels == 1 {
        image::GrayImage::from_fn(w, h, |x, y| image::Luma([sample(0, idx, w, x, y)]))
            .save(path)
            .unwrap();
    } else {
        image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([0, 1, 2].map(|c| sample(c, idx, w, x, y)))
        })
        .save(path)
        .unwrap();
    }
}

/// Loads a recipe file, checks its data as `recipe validate` does, and requires it to
/// be valid without warnings.
fn load(path: &Path) -> Recipe {
    load_warned(path, &[])
}

/// [`load`], where the recipe's data has exactly the warnings that contain `expected`
/// (conversions the recipe says it makes).
fn load_warned(path: &Path, expected: &[&str]) -> Recipe {
    let mut loaded = Loader::new().load_file(path, &[]).unwrap();
    recipe::build::check_data_paths(&mut loaded);
    let text = std::fs::read_to_string(path).unwrap();
    let messages: Vec<&str> = loaded
        .diagnostics
        .iter()
        .map(|d| d.message.as_str())
        .collect();
    assert_eq!(messages.len(), expected.len(), "{messages:#?}\n{text}");
    for (m, e) in messages.iter().zip(expected) {
        assert!(m.contains(e), "{messages:#?}\n{text}");
    }
    loaded.valid_recipe().cloned().unwrap()
}

fn init(args: &[&str]) -> std::process::Output {
    let mut all = vec!["init"];
    all.extend_from_slice(args);
    recipe(&all)
}

fn ok(out: &std::process::Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

fn close(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-3, "{a:?} vs {b:?}");
    }
}

/// The path the `$schema` modeline names, resolved against the recipe's folder.
fn modeline_target(recipe_file: &Path) -> PathBuf {
    let text = std::fs::read_to_string(recipe_file).unwrap();
    let first = text.lines().next().unwrap();
    let rel = first
        .strip_prefix("# yaml-language-server: $schema=")
        .unwrap_or_else(|| panic!("no modeline: {first}"));
    recipe_file.parent().unwrap().join(rel)
}

fn ops(r: &Recipe) -> Vec<&'static str> {
    r.augment.pipeline.iter().map(Op::name).collect()
}

#[test]
fn gray_class_folder() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("digits");
    class_folder(&data, &["one", "three", "two"], 10, 8, 1);
    let file = dir.path().join("out/digits.yaml");
    let out = init(&[
        "--data",
        data.to_str().unwrap(),
        "-o",
        file.to_str().unwrap(),
    ]);
    let stdout = ok(&out);
    assert!(stdout.contains("size: 8×8"), "{stdout}");
    assert!(stdout.contains("channels: 1"), "{stdout}");
    assert!(stdout.contains("classes: 3"), "{stdout}");
    assert!(
        stdout.contains(&format!("recipe run {}", file.display())),
        "{stdout}"
    );
    assert!(stdout.contains("recipe preview"), "{stdout}");

    let r = load(&file);
    assert_eq!(r.data.image_size, 8);
    assert_eq!(r.data.channels, 1);
    assert_eq!(r.data.mixed_sizes, recipe::spec::data::MixedSizes::Error);
    assert!(r.data.labels);
    // 30 images and no test folder: 20% held out, stratified (2 per class).
    assert_eq!(r.data.test_fraction, 0.2);
    let (m, s) = stats(&palette(0));
    let n = r.data.normalize.as_ref().unwrap();
    close(&n.mean, &[m]);
    close(&n.std, &[s]);
    assert!(matches!(r.model.backbone, Backbone::SmallCnn { .. }));
    // One channel: no grayscale op, and jitter without saturation or hue.
    assert_eq!(
        ops(&r),
        ["random_resized_crop", "horizontal_flip", "color_jitter"]
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("saturation: 0.0, hue: 0.0"), "{text}");
    assert!(text.contains("size: 8,"), "{text}");
    assert!(
        text.contains("# 24 training images (test split excluded)"),
        "{text}"
    );
    assert!(text.contains("3 classes: one, three, two"), "{text}");
    assert!(
        text.contains("source: {format: image_folder, train: \"../digits\"}"),
        "{text}"
    );
    let tasks: Vec<_> = r.downstream.iter().map(|t| t.name()).collect();
    assert_eq!(tasks, ["knn", "linear_probe", "visualize"]);
    // The modeline names the project's schema, relative to the recipe.
    let schema = modeline_target(&file);
    assert!(schema.is_file(), "{}", schema.display());
    assert!(schema.ends_with("schemas/recipe.schema.json"));
    assert!(!text.lines().next().unwrap().contains("=/"), "{text}");
}

#[test]
fn rgb_train_test_layout() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shapes");
    class_folder(&data.join("train"), &["circle", "square"], 6, 32, 3);
    class_folder(&data.join("test"), &["circle", "square"], 2, 32, 3);
    let file = dir.path().join("shapes.yaml");
    let stdout = ok(&init(&[
        "--data",
        data.to_str().unwrap(),
        "-o",
        file.to_str().unwrap(),
    ]));
    assert!(stdout.contains("channels: 3"), "{stdout}");
    assert!(stdout.contains("the source's own, 4 images"), "{stdout}");
    let r = load(&file);
    assert_eq!((r.data.image_size, r.data.channels), (32, 3));
    assert_eq!(r.data.test_fraction, 0.0);
    assert_eq!(r.name, "shapes-simclr");
    let n = r.data.normalize.as_ref().unwrap();
    let (m, s): (Vec<f64>, Vec<f64>) = (0..3).map(|c| stats(&palette(c))).unzip();
    close(&n.mean, &m);
    close(&n.std, &s);
    assert_eq!(
        r.model.backbone,
        Backbone::Resnet18 {
            stem: Stem::Cifar,
            width: 1.0
        }
    );
    assert_eq!(
        ops(&r),
        [
            "random_resized_crop",
            "horizontal_flip",
            "color_jitter",
            "grayscale"
        ]
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        text.contains("train: \"shapes/train\", test: \"shapes/test\""),
        "{text}"
    );
}

/// Every `--method` value.
const METHODS: [&str; 11] = [
    "simclr",
    "moco",
    "memory_bank",
    "swav",
    "supcon",
    "byol",
    "simsiam",
    "barlow_twins",
    "vicreg",
    "dino",
    "rotation",
];

/// The keys a recipe for its method needs beyond the loss itself: a predictor of the
/// projection's width for BYOL and SimSiam (and none elsewhere), one view and a 4-way
/// head for rotation, a wide projector and LARS for Barlow Twins and VICReg, DINO's
/// last layer and teacher-temperature warmup within the run.
fn method_keys(r: &Recipe, text: &str) {
    use recipe::spec::loss::Loss;
    use recipe::spec::optim::Optimizer;
    let method = r.loss.method();
    let predictor = r.model.predictor.as_ref();
    assert_eq!(
        predictor.is_some(),
        matches!(method, "byol" | "simsiam"),
        "{text}"
    );
    if let Some(p) = predictor {
        let hidden = p.hidden.clone().expect("predictor.hidden is written");
        let head = &r.model.head;
        if method == "byol" {
            assert_eq!(hidden, head.hidden, "{text}");
        } else {
            assert_eq!(hidden, [head.out_dim / 4], "{text}");
        }
    }
    match &r.loss {
        Loss::Rotation { rotations, .. } => {
            assert_eq!(rotations.len(), 4);
            assert_eq!(r.model.head.out_dim, 4, "{text}");
            assert_eq!(r.augment.total_views(), 1, "{text}");
            assert_eq!(ops(r), ["random_resized_crop", "horizontal_flip"], "{text}");
        }
        Loss::BarlowTwins { .. } | Loss::Vicreg { .. } => {
            assert!(r.model.head.out_dim >= 512, "{text}");
            assert_eq!(r.model.head.hidden.len(), 2, "{text}");
            assert!(matches!(r.optimizer, Optimizer::Lars { .. }), "{text}");
            assert_eq!(r.augment.total_views(), 2, "{text}");
        }
        Loss::Byol { momentum } => assert_eq!(*momentum, 0.99, "{text}"),
        Loss::Dino {
            out_dim,
            warmup_teacher_temp_epochs,
            teacher_momentum,
            ..
        } => {
            assert!(out_dim.is_power_of_two() && *out_dim >= 64, "{text}");
            assert!(*warmup_teacher_temp_epochs < r.train.epochs, "{text}");
            assert_eq!(*teacher_momentum, 0.99, "{text}");
        }
        _ => {}
    }
    // Every value the method adds under `loss` and `model` says what it is.
    let new = matches!(
        method,
        "byol" | "simsiam" | "barlow_twins" | "vicreg" | "dino" | "rotation"
    );
    let mut section = "";
    for l in text.lines() {
        if !l.starts_with(' ') {
            section = l;
            continue;
        }
        if new && section == "loss:" && !l.trim_start().starts_with("method:") {
            assert!(l.contains(" # "), "no comment on `{l}`\n{text}");
        }
    }
}

#[test]
fn every_method_writes_a_valid_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let gray = dir.path().join("gray");
    class_folder(&gray, &["a", "b"], 20, 8, 1);
    let rgb = dir.path().join("rgb");
    class_folder(&rgb, &["a", "b"], 12, 96, 3);
    for data in [&gray, &rgb] {
        for method in METHODS {
            let file = dir.path().join(format!(
                "{}-{method}.yaml",
                data.file_name().unwrap().to_string_lossy()
            ));
            ok(&init(&[
                "--data",
                data.to_str().unwrap(),
                "--method",
                method,
                "-o",
                file.to_str().unwrap(),
            ]));
            let r = load(&file);
            assert_eq!(r.loss.method(), method);
            if matches!(method, "swav" | "dino") {
                let mc = r.augment.multi_crop.as_ref().expect("multi-crop");
                assert_eq!((mc.global.count, mc.global.size), (2, r.data.image_size));
                assert!(mc.local.size < mc.global.size);
            }
            method_keys(&r, &std::fs::read_to_string(&file).unwrap());
        }
    }
    // 96 px: ImageNet stem and a blur of about 10% of the side (odd).
    let r = load(&dir.path().join("rgb-simclr.yaml"));
    assert_eq!(
        r.model.backbone,
        Backbone::Resnet18 {
            stem: Stem::Imagenet,
            width: 1.0
        }
    );
    let blur = r.augment.pipeline.iter().find_map(|o| match o {
        Op::GaussianBlur(b) => Some(b.kernel_size),
        _ => None,
    });
    assert_eq!(blur, Some(9));
    assert!(
        load(&dir.path().join("gray-simclr.yaml"))
            .augment
            .pipeline
            .iter()
            .all(|o| !matches!(o, Op::GaussianBlur(_)))
    );
}

/// What `init` writes trains: one short epoch of DINO (multi-crop, an EMA teacher) and
/// of rotation (one view, the 4-way head) on a small unlabelled folder.
#[test]
fn new_method_recipes_train() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("flat");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..16 {
        save(&data.join(format!("{i:02}.png")), i, 8, 8, 1);
    }
    for method in ["dino", "rotation"] {
        let file = dir.path().join(format!("{method}.yaml"));
        ok(&init(&[
            "--data",
            data.to_str().unwrap(),
            "--method",
            method,
            "-o",
            file.to_str().unwrap(),
        ]));
        let runs = dir.path().join(format!("runs-{method}"));
        let out = recipe(&[
            "run",
            file.to_str().unwrap(),
            "--out",
            runs.to_str().unwrap(),
            "--set",
            "train.epochs=1",
            "--set",
            "schedule.warmup_epochs=0",
            "--set",
            "data.subset=0.5",
            "--set",
            "downstream=[]",
        ]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{method}\nstdout:\n{}\nstderr:\n{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let run = std::fs::read_dir(&runs).unwrap().next().unwrap().unwrap();
        let results = std::fs::read_to_string(run.path().join("results.json")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&results).unwrap();
        assert!(v.is_object(), "{method}: {results}");
    }
}

#[test]
fn flat_folder_is_unlabelled() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("flat");
    std::fs::create_dir_all(&data).unwrap();
    for i in 0..12 {
        save(&data.join(format!("{i:02}.png")), i, 16, 16, 3);
    }
    let file = dir.path().join("flat.yaml");
    let stdout = ok(&init(&[
        "--data",
        data.to_str().unwrap(),
        "-o",
        file.to_str().unwrap(),
    ]));
    assert!(stdout.contains("classes: none"), "{stdout}");
    let r = load(&file);
    assert!(!r.data.labels);
    assert_eq!(r.data.test_fraction, 0.0);
    assert!(r.downstream.iter().all(|t| !t.needs_labels()));
    let n = r.data.normalize.as_ref().unwrap();
    let (m, s): (Vec<f64>, Vec<f64>) = (0..3).map(|c| stats(&palette(c))).unzip();
    close(&n.mean, &m);
    close(&n.std, &s);

    let supcon = dir.path().join("supcon.yaml");
    let out = init(&[
        "--data",
        data.to_str().unwrap(),
        "--method",
        "supcon",
        "-o",
        supcon.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("`--method supcon` needs labels"), "{err}");
    assert!(!supcon.exists());
}

#[test]
fn mixed_sizes_use_the_most_common() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("mixed");
    class_folder(&data, &["a", "b"], 5, 16, 1);
    save(&data.join("a/big.png"), 0, 20, 20, 1);
    save(&data.join("b/wide.png"), 0, 24, 16, 1);
    let file = dir.path().join("mixed.yaml");
    let stdout = ok(&init(&[
        "--data",
        data.to_str().unwrap(),
        "-o",
        file.to_str().unwrap(),
    ]));
    assert!(stdout.contains("mixed sizes: 2 image(s)"), "{stdout}");
    let r = load_warned(&file, &["loading resizes 2 of 12 images to 16×16"]);
    assert_eq!(r.data.image_size, 16);
    assert_eq!(r.data.mixed_sizes, recipe::spec::data::MixedSizes::Resize);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("10 of 12 images are 16×16"), "{text}");
    assert!(text.contains("1× 16×24, 1× 20×20"), "{text}");
}

#[test]
fn rgb_files_of_gray_pictures_are_one_channel() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("grayrgb");
    for c in ["x", "y"] {
        std::fs::create_dir_all(data.join(c)).unwrap();
        for i in 0..5u8 {
            image::RgbImage::from_fn(10, 10, |x, _| image::Rgb([x as u8 * 20 + i; 3]))
                .save(data.join(format!("{c}/{i}.png")))
                .unwrap();
        }
    }
    let file = dir.path().join("g.yaml");
    let stdout = ok(&init(&[
        "--data",
        data.to_str().unwrap(),
        "-o",
        file.to_str().unwrap(),
    ]));
    assert!(stdout.contains("every pixel is gray"), "{stdout}");
    let r = load_warned(&file, &["loading converts 10 RGB images to 1 channel"]);
    assert_eq!(r.data.channels, 1);
}

fn idx_images(n: usize, rows: usize, cols: usize) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3];
    for d in [n, rows, cols] {
        b.extend_from_slice(&(d as u32).to_be_bytes());
    }
    for i in 0..n {
        for k in 0..rows * cols {
            b.push(palette(0)[(k + i * 7) % 64]);
        }
    }
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

#[test]
fn idx_files_with_and_without_a_test_split() {
    let dir = tempfile::tempdir().unwrap();
    let mnist = dir.path().join("mnist");
    std::fs::create_dir_all(&mnist).unwrap();
    let labels: Vec<u8> = (0..40).map(|i| (i % 4) as u8).collect();
    std::fs::write(
        mnist.join("train-images-idx3-ubyte.gz"),
        gz(&idx_images(40, 8, 8)),
    )
    .unwrap();
    std::fs::write(
        mnist.join("train-labels-idx1-ubyte.gz"),
        gz(&idx_labels(&labels)),
    )
    .unwrap();
    let file = dir.path().join("no-test.yaml");
    let stdout = ok(&init(&[
        "--data",
        mnist.to_str().unwrap(),
        "-o",
        file.to_str().unwrap(),
    ]));
    assert!(stdout.contains("IDX"), "{stdout}");
    let r = load(&file);
    assert_eq!((r.data.image_size, r.data.channels), (8, 1));
    assert_eq!(r.data.test_fraction, 0.2);
    let (m, s) = stats(&palette(0));
    let n = r.data.normalize.as_ref().unwrap();
    close(&n.mean, &[m]);
    close(&n.std, &[s]);
    assert!(matches!(
        r.data.source,
        recipe::spec::data::Source::Idx {
            test_images: None,
            ..
        }
    ));

    // Raw test files beside them: the source's own test split.
    std::fs::write(mnist.join("t10k-images-idx3-ubyte"), idx_images(8, 8, 8)).unwrap();
    std::fs::write(
        mnist.join("t10k-labels-idx1-ubyte"),
        idx_labels(&labels[..8]),
    )
    .unwrap();
    let file = dir.path().join("test.yaml");
    let stdout = ok(&init(&[
        "--data",
        mnist.to_str().unwrap(),
        "-o",
        file.to_str().unwrap(),
    ]));
    assert!(stdout.contains("classes: 4"), "{stdout}");
    assert!(stdout.contains("the source's own, 8 images"), "{stdout}");
    let r = load(&file);
    assert_eq!(r.data.test_fraction, 0.0);
    let recipe::spec::data::Source::Idx {
        train_images,
        test_images,
        ..
    } = &r.data.source
    else {
        panic!("{:?}", r.data.source)
    };
    assert!(train_images.ends_with("train-images-idx3-ubyte.gz"));
    assert!(
        test_images
            .as_deref()
            .unwrap()
            .ends_with("t10k-images-idx3-ubyte")
    );
}

#[test]
fn refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    class_folder(&data, &["a", "b"], 5, 8, 1);
    let file = dir.path().join("r.yaml");
    std::fs::write(&file, "mine\n").unwrap();
    let args = [
        "--data",
        data.to_str().unwrap(),
        "-o",
        file.to_str().unwrap(),
    ];
    let out = init(&args);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("already exists"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine\n");
    let mut forced = args.to_vec();
    forced.push("--force");
    ok(&init(&forced));
    load(&file);
}

#[test]
fn bad_input_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r.yaml");
    let missing = init(&["--data", "/no/such/folder", "-o", file.to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("/no/such/folder"));
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let out = init(&[
        "--data",
        empty.to_str().unwrap(),
        "-o",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no class subfolders"),
        "{}",
        text(&out.stderr)
    );
    let usage = init(&["--data", empty.to_str().unwrap(), "--method", "byol"]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(!file.exists());
}

/// Without a project schema above the recipe or in the project folder, the schema is
/// written beside the recipe and the modeline names it.
#[test]
fn schema_is_written_beside_the_recipe_when_none_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("shapes");
    class_folder(&data, &["circle", "square", "triangle"], 4, 12, 3);
    let file = dir.path().join("shapes.yaml");
    let w = recipe::init::init(&InitOptions {
        data: data.clone(),
        method: Method::Simclr,
        output: file.clone(),
        force: false,
        project_dir: None,
    })
    .unwrap();
    assert!(w.wrote_schema);
    assert_eq!(
        modeline_target(&file),
        dir.path().join("recipe.schema.json")
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("recipe.schema.json")).unwrap(),
        recipe::spec::schema::generate_pretty()
    );
    load(&file);
    insta::assert_snapshot!(std::fs::read_to_string(&file).unwrap());
}

#[test]
fn modeline_finds_a_schemas_folder_above_the_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("project");
    std::fs::create_dir_all(project.join("schemas")).unwrap();
    std::fs::write(project.join("schemas/recipe.schema.json"), "{}").unwrap();
    let data = dir.path().join("d");
    class_folder(&data, &["a", "b"], 5, 8, 1);
    let file = project.join("recipes/deep/r.yaml");
    let w = recipe::init::init(&InitOptions {
        data,
        method: Method::Moco,
        output: file.clone(),
        force: false,
        project_dir: None,
    })
    .unwrap();
    assert!(!w.wrote_schema);
    let first = std::fs::read_to_string(&file).unwrap();
    assert!(
        first.starts_with("# yaml-language-server: $schema=../../schemas/recipe.schema.json\n"),
        "{first}"
    );
    assert!(modeline_target(&file).is_file());
}

#[test]
fn cifar_batches() {
    let dir = tempfile::tempdir().unwrap();
    let cifar = dir.path().join("cifar-10-batches-bin");
    std::fs::create_dir_all(&cifar).unwrap();
    // Two records per batch (label byte + 3×32×32 planar pixels); every image holds
    // each channel's palette 16 times.
    let record = |label: u8, i: usize| {
        let mut r = vec![label];
        for c in 0..3 {
            r.extend((0..1024).map(|k| palette(c)[(k + i * 7) % 64]));
        }
        r
    };
    let batch = |first: usize| -> Vec<u8> {
        (0..2)
            .flat_map(|j| record(((first + j) % 10) as u8, first + j))
            .collect()
    };
    for b in 1..=5 {
        std::fs::write(cifar.join(format!("data_batch_{b}.bin")), batch(2 * b)).unwrap();
    }
    std::fs::write(cifar.join("test_batch.bin"), batch(0)).unwrap();
    let file = dir.path().join("cifar.yaml");
    let stdout = ok(&init(&[
        "--data",
        cifar.to_str().unwrap(),
        "--method",
        "moco",
        "-o",
        file.to_str().unwrap(),
    ]));
    assert!(stdout.contains("CIFAR-10"), "{stdout}");
    assert!(stdout.contains("classes: 10"), "{stdout}");
    assert!(stdout.contains("the source's own, 2 images"), "{stdout}");
    let r = load(&file);
    assert_eq!((r.data.image_size, r.data.channels), (32, 3));
    assert!(matches!(
        r.data.source,
        recipe::spec::data::Source::Cifar { .. }
    ));
    let n = r.data.normalize.as_ref().unwrap();
    let (m, s): (Vec<f64>, Vec<f64>) = (0..3).map(|c| stats(&palette(c))).unzip();
    close(&n.mean, &m);
    close(&n.std, &s);
}

#[test]
fn unreadable_files_are_skipped_and_said() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    class_folder(&data, &["a", "b"], 5, 8, 1);
    std::fs::write(data.join("a/broken.png"), b"not a png").unwrap();
    let file = dir.path().join("r.yaml");
    let stdout = ok(&init(&[
        "--data",
        data.to_str().unwrap(),
        "-o",
        file.to_str().unwrap(),
    ]));
    assert!(stdout.contains("1 file(s) skipped"), "{stdout}");
    let r = load(&file);
    assert!(r.data.skip_unreadable);
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("e.g. broken.png"), "{text}");
}

/// Data that shares no folder with the recipe but the root is named by its absolute
/// path; otherwise the path is relative to the recipe.
#[test]
fn data_paths_are_relative_unless_only_the_root_is_shared() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("d");
    class_folder(&data, &["a", "b"], 5, 8, 1);
    let out_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let file = out_dir.path().join("r.yaml");
    ok(&init(&[
        "--data",
        data.to_str().unwrap(),
        "-o",
        file.to_str().unwrap(),
    ]));
    let text = std::fs::read_to_string(&file).unwrap();
    fn first(p: &Path) -> Option<std::path::Component<'_>> {
        p.components().nth(1)
    }
    let written = if first(&data) == first(out_dir.path()) {
        "train: \"../".to_string()
    } else {
        format!("train: \"{}\"", data.display())
    };
    assert!(text.contains(&written), "{written}\n{text}");
    let r = load(&file);
    let recipe::spec::data::Source::ImageFolder { train, .. } = &r.data.source else {
        panic!()
    };
    assert_eq!(
        std::fs::canonicalize(train).unwrap(),
        std::fs::canonicalize(&data).unwrap()
    );
}
