//! `build::augment::chain`: every shipped recipe maps to a chain whose view shapes match the
//! spec's own view count and sizes, and bad sections are errors naming their path.

use std::path::Path;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use recipe::augment::{Op, ViewMaker};
use recipe::data::Image;
use recipe::spec::augment::Augment;
use recipe::spec::data::Data;

/// Parses YAML through a JSON value, as the recipe loader does (serde_yaml alone
/// expects YAML tags for enums).
fn parse<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
    let value: serde_json::Value = serde_yaml::from_str(yaml).unwrap();
    serde_json::from_value(value).unwrap()
}

fn data(yaml: &str) -> Data {
    parse(yaml)
}

fn augment(yaml: &str) -> Augment {
    parse(yaml)
}

const RGB32: &str = "
source: {format: builtin}
image_size: 32
channels: 3
normalize: {mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}
";

#[test]
fn shipped_recipes_map_to_chains() {
    let loader = recipe::spec::Loader::new();
    let mut files = Vec::new();
    for dir in ["recipes", "recipes/cifar10"] {
        for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    assert!(files.len() >= 5, "{files:?}");
    for path in files {
        let loaded = loader.load_file(&path, &[]).unwrap();
        let Some(r) = loaded.recipe else {
            panic!("{} does not load", path.display());
        };
        let chain = recipe::build::augment::chain(&r.augment, &r.data)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let shapes = chain.view_shapes();
        assert_eq!(shapes.len(), r.augment.total_views(), "{}", path.display());
        assert!(shapes.iter().all(|s| s.0 == r.data.channels));
        let img = Image::filled(r.data.channels, r.data.image_size, r.data.image_size, 0.5);
        let views = chain.make_views(&img, &mut ChaCha8Rng::seed_from_u64(r.seed));
        let got: Vec<_> = views
            .iter()
            .map(|v| (v.channels, v.height, v.width))
            .collect();
        assert_eq!(got, shapes, "{}", path.display());
    }
}

#[test]
fn defaults_give_two_simclr_views_at_image_size() {
    let chain = recipe::build::augment::chain(&augment("{}"), &data(RGB32)).unwrap();
    assert_eq!(chain.view_shapes(), vec![(3, 32, 32); 2]);
    assert_eq!(chain.normalize().unwrap().mean, vec![0.5; 3]);
    let names: Vec<_> = chain.pipelines()[0].iter().map(Op::name).collect();
    assert_eq!(
        names,
        [
            "random_resized_crop",
            "horizontal_flip",
            "color_jitter",
            "grayscale"
        ]
    );
}

#[test]
fn multi_crop_replaces_the_pipeline_crop() {
    let a = augment(
        "
pipeline:
  - random_resized_crop: {size: 32}
  - horizontal_flip: {p: 0.5}
  - solarize: {threshold: 0.5, p: 0.2}
multi_crop:
  global: {count: 2, size: 24, scale: [0.3, 1.0]}
  local: {count: 3, size: 8, scale: [0.05, 0.3]}
",
    );
    let chain = recipe::build::augment::chain(&a, &data(RGB32)).unwrap();
    let mut expected = vec![(3, 24, 24); 2];
    expected.extend([(3, 8, 8); 3]);
    assert_eq!(chain.view_shapes(), expected);
    for (v, p) in chain.pipelines().iter().enumerate() {
        let names: Vec<_> = p.iter().map(Op::name).collect();
        assert_eq!(
            names,
            ["random_resized_crop", "horizontal_flip", "solarize"],
            "view {v}"
        );
        let Op::RandomResizedCrop(c) = &p[0] else {
            unreachable!()
        };
        let scale = if v < 2 { (0.3, 1.0) } else { (0.05, 0.3) };
        assert_eq!(c.scale, scale);
    }
}

#[test]
fn per_view_and_gray_images() {
    let a = augment(
        "
views: 2
per_view:
  - [{random_resized_crop: {size: 16}}, {gaussian_blur: {sigma: [0.1, 2.0], kernel_size: 3, p: 1.0}}]
  - [{random_resized_crop: {size: 12}}, {solarize: {threshold: 0.5, p: 0.2}}]
",
    );
    let gray = data("{source: {format: builtin}, image_size: 28, channels: 1}");
    let chain = recipe::build::augment::chain(&a, &gray).unwrap();
    assert_eq!(chain.view_shapes(), vec![(1, 16, 16), (1, 12, 12)]);
    assert!(chain.normalize().is_none());
}

#[test]
fn bad_sections_name_their_path() {
    let even =
        augment("pipeline: [{horizontal_flip: {p: 0.5}}, {gaussian_blur: {kernel_size: 4}}]");
    let msg = recipe::build::augment::chain(&even, &data(RGB32))
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("augment.pipeline.1: ") && msg.contains("kernel_size"),
        "{msg}"
    );

    let count = augment("{views: 3, per_view: [[], []]}");
    let msg = recipe::build::augment::chain(&count, &data(RGB32))
        .unwrap_err()
        .to_string();
    assert!(msg.starts_with("augment.per_view: "), "{msg}");

    let wrong_len = data(
        "{source: {format: builtin}, image_size: 32, channels: 3, normalize: {mean: [0.5], std: [0.5]}}",
    );
    let msg = recipe::build::augment::chain(&augment("{}"), &wrong_len)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("normalisation"), "{msg}");

    let both = augment(
        "
per_view: [[], []]
multi_crop:
  global: {count: 2, size: 24, scale: [0.3, 1.0]}
  local: {count: 0, size: 8, scale: [0.05, 0.3]}
",
    );
    assert!(recipe::build::augment::chain(&both, &data(RGB32)).is_err());
}
