//! The shipped recipes, the schema file, rendering, and the invalid-recipe corpus
//! (one file per class of error, each with an insta snapshot of its diagnostics).

use std::fs;
use std::path::{Path, PathBuf};

use recipe::diag::render_human;
use recipe::spec::{Loader, Recipe, schema};

fn yaml_files(dir: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::from(dir)];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_shipped_recipe_is_valid() {
    let loader = Loader::new();
    let files = yaml_files("recipes");
    assert!(
        files.len() >= 11,
        "expected the quick and CIFAR-10 recipes, found {files:?}"
    );
    for f in files.iter().chain(yaml_files("tests/valid").iter()) {
        let loaded = loader.load_file(f, &[]).unwrap();
        let text = render_human(&loaded.diagnostics, &loaded.sources);
        assert!(
            loaded.valid_recipe().is_some(),
            "{} is invalid:\n{text}",
            f.display()
        );
        assert!(
            loaded.diagnostics.is_empty(),
            "{} has warnings:\n{text}",
            f.display()
        );
        let first = fs::read_to_string(f).unwrap();
        if f.starts_with("recipes") {
            assert!(
                first.starts_with("# yaml-language-server: $schema="),
                "{} lacks the schema modeline",
                f.display()
            );
            let rel = first
                .lines()
                .next()
                .unwrap()
                .split("$schema=")
                .nth(1)
                .unwrap();
            assert!(
                f.parent().unwrap().join(rel).exists(),
                "{}: schema path {rel} does not exist",
                f.display()
            );
        }
    }
}

#[test]
fn quick_recipes_use_the_builtin_dataset_and_each_method() {
    let loader = Loader::new();
    let mut methods = Vec::new();
    for name in [
        "simclr",
        "moco",
        "memory_bank",
        "swav",
        "supcon",
        "rotation",
        "byol",
        "simsiam",
        "barlow_twins",
        "vicreg",
        "dino",
    ] {
        let l = loader
            .load_file(Path::new(&format!("recipes/{name}.yaml")), &[])
            .unwrap();
        let r = l.valid_recipe().unwrap();
        assert!(matches!(
            r.data.source,
            recipe::spec::data::Source::Builtin { .. }
        ));
        methods.push(r.loss.method());
    }
    assert_eq!(
        methods,
        [
            "simclr",
            "moco",
            "memory_bank",
            "swav",
            "supcon",
            "rotation",
            "byol",
            "simsiam",
            "barlow_twins",
            "vicreg",
            "dino"
        ]
    );
}

#[test]
fn committed_schema_is_current() {
    let generated = schema::generate_pretty();
    let committed = fs::read_to_string("schemas/recipe.schema.json").unwrap();
    assert!(
        generated == committed,
        "schemas/recipe.schema.json is stale: run `cargo run -- schema > schemas/recipe.schema.json`"
    );
}

#[test]
fn schema_is_valid_draft7() {
    let s: serde_json::Value = serde_json::from_str(schema::COMMITTED).unwrap();
    assert_eq!(s["$schema"], "http://json-schema.org/draft-07/schema#");
    jsonschema::meta::validate(&s).expect("the schema is valid against the Draft 7 meta-schema");
    // A wrong type deep inside a tagged section is caught by a third-party validator.
    let bad = serde_json::json!({"version": 1, "name": "x", "data": {"source": {"format": "builtin"}, "image_size": 28},
        "model": {"backbone": {"arch": "small_cnn"}}, "loss": {"method": "moco", "queue_size": "big"},
        "optimizer": {"name": "sgd", "lr": 0.1}, "train": {"epochs": 1, "batch_size": 8}});
    let v = jsonschema::draft7::new(&s).unwrap();
    let errs: Vec<String> = v
        .iter_errors(&bad)
        .map(|e| e.instance_path().to_string())
        .collect();
    assert_eq!(errs, ["/loss/queue_size"]);
}

#[test]
fn render_fills_defaults_and_round_trips() {
    let loader = Loader::new();
    for f in yaml_files("recipes") {
        let l = loader.load_file(&f, &[]).unwrap();
        let r = l.valid_recipe().unwrap().clone();
        let text = serde_yaml::to_string(&serde_json::to_value(&r).unwrap()).unwrap();
        let again = loader
            .load_bytes("rendered.yaml", None, text.as_bytes(), &[])
            .unwrap();
        let r2: &Recipe = again.valid_recipe().unwrap_or_else(|| {
            panic!(
                "rendered {} is invalid: {:?}",
                f.display(),
                again.diagnostics
            )
        });
        assert_eq!(&r, r2, "{} does not round-trip", f.display());
    }
    let l = loader
        .load_file(Path::new("tests/valid/minimal.yaml"), &[])
        .unwrap();
    let r = l.valid_recipe().unwrap();
    assert_eq!(r.augment.pipeline.len(), 2);
    assert_eq!(r.model.head.out_dim, 128);
    assert_eq!(r.train.log_every, 10);
}

#[test]
fn extends_and_set_merge_in_order() {
    let loader = Loader::new();
    let l = loader
        .load_file(
            Path::new("tests/valid/extends_child.yaml"),
            &[
                "train.epochs=3".into(),
                "augment.pipeline.1.horizontal_flip.p=0.25".into(),
            ],
        )
        .unwrap();
    let r = l
        .valid_recipe()
        .unwrap_or_else(|| panic!("{:?}", l.diagnostics));
    assert_eq!(r.name, "child");
    assert_eq!((r.train.epochs, r.train.batch_size), (3, 32));
    assert_eq!(
        r.loss,
        recipe::spec::loss::Loss::Moco {
            temperature: 0.2,
            momentum: 0.99,
            queue_size: 256,
            symmetric: false
        }
    );
    let recipe::spec::augment::Op::HorizontalFlip(f) = &r.augment.pipeline[1] else {
        panic!()
    };
    assert_eq!(f.p, 0.25);
    assert_eq!(r.downstream.len(), 1, "inherited from the base");
}

/// `# set: path=value` lines at the top of a corpus file become `--set` arguments.
fn sets_of(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# set: "))
        .map(str::to_string)
        .collect()
}

#[test]
fn invalid_corpus_snapshots() {
    let loader = Loader::new();
    let mut files: Vec<PathBuf> = fs::read_dir("tests/invalid")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 40,
        "the corpus should cover at least 40 classes of error"
    );
    for f in files {
        let bytes = fs::read(&f).unwrap();
        let sets = sets_of(&String::from_utf8_lossy(&bytes));
        let loaded = loader.load_file(&f, &sets).unwrap();
        let text = render_human(&loaded.diagnostics, &loaded.sources);
        assert!(loaded.has_errors(), "{} should be invalid", f.display());
        assert!(
            loaded.diagnostics.iter().all(|d| d.span.is_some()),
            "{}: every diagnostic needs a location:\n{text}",
            f.display()
        );
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        insta::assert_snapshot!(name, text);
    }
}

/// Recipes that are valid but earn warnings (a setting that does nothing, …): one file
/// per class of warning, each with a snapshot.
#[test]
fn warning_corpus_snapshots() {
    let loader = Loader::new();
    let mut files: Vec<PathBuf> = fs::read_dir("tests/warnings")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for f in files {
        let bytes = fs::read(&f).unwrap();
        let sets = sets_of(&String::from_utf8_lossy(&bytes));
        let loaded = loader.load_file(&f, &sets).unwrap();
        let text = render_human(&loaded.diagnostics, &loaded.sources);
        assert!(
            loaded.valid_recipe().is_some() && !loaded.diagnostics.is_empty(),
            "{} should be valid with warnings:\n{text}",
            f.display()
        );
        assert!(
            loaded.diagnostics.iter().all(|d| d.span.is_some()),
            "{}: every diagnostic needs a location:\n{text}",
            f.display()
        );
        let name = f.file_stem().unwrap().to_string_lossy().into_owned();
        insta::assert_snapshot!(format!("warning_{name}"), text);
    }
}

fn load_with(path: &str, sets: &[&str]) -> Recipe {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let l = Loader::new().load_file(Path::new(path), &sets).unwrap();
    let text = render_human(&l.diagnostics, &l.sources);
    l.valid_recipe()
        .cloned()
        .unwrap_or_else(|| panic!("{path} {sets:?}:\n{text}"))
}

#[test]
fn set_on_a_tag_replaces_the_section_as_extends_does() {
    use recipe::spec::loss::Loss;
    // A dotted tag change and a whole-section value give the same recipe: the new
    // variant's defaults, not SimCLR's `temperature: 0.2`.
    let dotted = load_with("recipes/simclr.yaml", &["loss.method=memory_bank"]);
    let whole = load_with("recipes/simclr.yaml", &["loss={method: memory_bank}"]);
    assert_eq!(dotted, whole);
    let Loss::MemoryBank { temperature, .. } = dotted.loss else {
        panic!("{:?}", dotted.loss)
    };
    assert_eq!(temperature, 0.07);

    // Later dotted keys apply on top of the replaced section.
    let moco = load_with(
        "recipes/simclr.yaml",
        &["loss.method=moco", "loss.queue_size=4096"],
    );
    assert_eq!(
        moco.loss,
        Loss::Moco {
            temperature: 0.2,
            momentum: 0.99,
            queue_size: 4096,
            symmetric: false
        }
    );

    // The same tag keeps the section.
    let same = load_with("recipes/simclr.yaml", &["loss.method=simclr"]);
    assert_eq!(same.loss, Loss::Simclr { temperature: 0.2 });

    // Every tagged section behaves so: optimizer, schedule, backbone, data source.
    let r = load_with(
        "recipes/cifar10/simclr.yaml",
        &[
            "optimizer.name=adamw",
            "optimizer.lr=0.001",
            "schedule.kind=constant",
            "model.backbone.arch=small_cnn",
            "data.source.format=builtin",
            "data.channels=1",
            "data.image_size=28",
            "data.normalize.mean=[0.5]",
            "data.normalize.std=[0.5]",
            "augment.pipeline.0.random_resized_crop.size=28",
        ],
    );
    assert_eq!(r.optimizer.name(), "adamw");
    assert_eq!(r.model.backbone.arch(), "small_cnn");
    assert!(matches!(
        r.data.source,
        recipe::spec::data::Source::Builtin { .. }
    ));
}
