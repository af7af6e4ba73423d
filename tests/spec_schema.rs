//! The committed schema as an editor sees it (a recipe file on its own, before any
//! `extends` is resolved), and agreement between the schema's numeric bounds and
//! `recipe validate`.

use std::fs;
use std::path::Path;

use recipe::spec::Loader;
use recipe::spec::downstream::{Epochs, FineTuneAugment, Plot, Task};
use recipe::spec::schema;
use serde_json::{Value, json};

fn committed() -> Value {
    serde_json::from_str(schema::COMMITTED).unwrap()
}

fn validator() -> jsonschema::Validator {
    jsonschema::draft7::new(&committed()).unwrap()
}

/// A recipe file as an editor reads it: YAML → JSON, nothing merged.
fn raw(path: &str) -> Value {
    let text = fs::read_to_string(path).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

/// `(instance path, keyword)` of every error.
fn errors(doc: &Value) -> Vec<(String, String)> {
    validator()
        .iter_errors(doc)
        .map(|e| {
            (
                e.instance_path().to_string(),
                e.kind().keyword().to_string(),
            )
        })
        .collect()
}

const CHILDREN: [&str; 5] = [
    "recipes/cifar10/simclr.yaml",
    "recipes/cifar10/moco.yaml",
    "recipes/cifar10/memory_bank.yaml",
    "recipes/cifar10/swav.yaml",
    "recipes/cifar10/supcon.yaml",
];

#[test]
fn a_recipe_that_extends_a_base_is_not_asked_for_the_base_keys() {
    for f in CHILDREN {
        let doc = raw(f);
        assert!(doc.get("extends").is_some(), "{f} should extend the base");
        assert_eq!(errors(&doc), Vec::<(String, String)>::new(), "{f}");
        // Without `extends` the same file is incomplete, and the schema says so.
        let mut alone = doc.clone();
        alone.as_object_mut().unwrap().remove("extends");
        let missing: Vec<_> = errors(&alone)
            .into_iter()
            .filter(|(_, k)| k == "required")
            .collect();
        assert!(!missing.is_empty(), "{f} without extends should miss keys");
    }
}

#[test]
fn required_keys_still_apply_without_extends_and_in_replaced_sequences() {
    let doc = json!({"version": 1, "name": "x", "data": {"image_size": 28},
        "model": {"backbone": {"channels": [8]}}, "loss": {"method": "simclr"},
        "optimizer": {"name": "sgd"}, "train": {"epochs": 1}});
    let mut got = errors(&doc);
    got.sort();
    assert_eq!(
        got,
        [
            ("/data".to_string(), "required".to_string()),
            ("/model/backbone".into(), "required".into()),
            ("/optimizer".into(), "required".into()),
            ("/train".into(), "required".into()),
        ]
    );
    // `extends` replaces sequences whole, so a child's downstream task needs its tag.
    let child = json!({"extends": "base.yaml", "downstream": [{"k": 3}]});
    assert_eq!(
        errors(&child),
        [("/downstream/0".to_string(), "required".to_string())]
    );
    // Everything else is still checked in a partial recipe.
    let child = json!({"extends": "base.yaml", "train": {"batch_size": 1}, "loss": {"method": "simclr", "temperature": 0}});
    let mut got = errors(&child);
    got.sort();
    assert_eq!(
        got,
        [
            (
                "/loss/temperature".to_string(),
                "exclusiveMinimum".to_string()
            ),
            ("/train/batch_size".into(), "minimum".into()),
        ]
    );
}

/// The schema object at a JSON pointer of the committed schema, following `$ref`.
fn at<'a>(root: &'a Value, pointer: &str) -> &'a Value {
    let mut s = root.pointer(pointer).unwrap_or_else(|| panic!("{pointer}"));
    while let Some(r) = s.get("$ref").and_then(Value::as_str) {
        s = root.pointer(r.trim_start_matches('#')).unwrap();
    }
    s
}

#[test]
fn every_tag_and_choice_is_described() {
    let root = committed();
    let tags = [
        ("/definitions/Source", "format", 4),
        ("/definitions/Backbone", "arch", 4),
        ("/definitions/Loss", "method", 11),
        ("/definitions/Optimizer", "name", 3),
        ("/definitions/Schedule", "kind", 3),
        ("/definitions/Task", "task", 4),
    ];
    for (def, tag, n) in tags {
        let t = &at(&root, def)["properties"][tag];
        assert!(
            t["description"].as_str().is_some_and(|d| d.len() > 20),
            "{def}.{tag} lacks a description"
        );
        let values = t["enum"].as_array().unwrap();
        let docs = t["enumDescriptions"].as_array().unwrap();
        assert_eq!((values.len(), docs.len()), (n, n), "{def}.{tag}");
        assert!(
            docs.iter()
                .all(|d| d.as_str().is_some_and(|d| d.len() > 20)),
            "{def}.{tag}: {docs:?}"
        );
        // The variant text lives on the tag; the arm keeps none, so hovering the
        // section shows the field's own description.
        for arm in at(&root, def)["allOf"].as_array().unwrap() {
            assert!(arm["then"].get("description").is_none(), "{def}");
        }
    }
    let plots = at(&root, "/definitions/Plot");
    assert_eq!(plots["enum"].as_array().unwrap().len(), Plot::ALL.len());
    assert_eq!(
        plots["enumDescriptions"].as_array().unwrap().len(),
        Plot::ALL.len()
    );
}

/// Visits every schema object of `v`, with its JSON pointer.
fn walk<'a>(v: &'a Value, ptr: String, f: &mut dyn FnMut(&str, &'a Value)) {
    match v {
        Value::Object(o) => {
            f(&ptr, v);
            for (k, c) in o {
                walk(c, format!("{ptr}/{k}"), f);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                walk(c, format!("{ptr}/{i}"), f);
            }
        }
        _ => {}
    }
}

#[test]
fn fields_of_a_named_type_carry_their_own_description_next_to_the_ref() {
    let root = committed();
    let mut described = 0;
    walk(&root, String::new(), &mut |ptr, s| {
        if let Some(all) = s.get("allOf").and_then(Value::as_array) {
            assert!(
                !(all.len() == 1 && all[0].get("$ref").is_some()),
                "{ptr}: a lone `allOf: [{{$ref}}]` hides the field's description in editors"
            );
        }
        let is_property = ptr.rsplit('/').nth(1) == Some("properties") && !ptr.contains("/else");
        if is_property && s.get("$ref").is_some() {
            assert!(s.get("description").is_some(), "{ptr} has no description");
            described += 1;
        }
    });
    assert!(described >= 15, "only {described} `$ref` fields found");
}

#[test]
fn numeric_rules_are_in_the_schema_and_reported_once() {
    let base = "tests/valid/minimal.yaml";
    let cases: [(&[&str], &str, &str); 9] = [
        (
            &["loss.temperature=0"],
            "/loss/temperature",
            "exclusiveMinimum",
        ),
        (&["optimizer.lr=-0.3"], "/optimizer/lr", "exclusiveMinimum"),
        (&["train.batch_size=1"], "/train/batch_size", "minimum"),
        (
            &["augment.pipeline.1.horizontal_flip.p=1.5"],
            "/augment/pipeline/1/horizontal_flip/p",
            "maximum",
        ),
        (
            &["loss={method: moco, momentum: 1, queue_size: 64}"],
            "/loss/momentum",
            "exclusiveMaximum",
        ),
        (
            &["optimizer.momentum=1"],
            "/optimizer/momentum",
            "exclusiveMaximum",
        ),
        (&["data.subset=0"], "/data/subset", "exclusiveMinimum"),
        (
            &["optimizer.weight_decay=-1"],
            "/optimizer/weight_decay",
            "minimum",
        ),
        (
            &["downstream=[{task: visualize, neighbors: 0}]"],
            "/downstream/0/neighbors",
            "minimum",
        ),
    ];
    let loader = Loader::new();
    for (sets, pointer, keyword) in cases {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let loaded = loader.load_file(Path::new(base), &sets).unwrap();
        // What an editor sees: the merged document against the schema alone.
        let doc = serde_json::to_value(loaded.recipe.as_ref().unwrap()).unwrap();
        assert_eq!(
            errors(&doc),
            [(pointer.to_string(), keyword.to_string())],
            "{sets:?}"
        );
        // What `validate` says: one error, at that value.
        let dotted = pointer.trim_start_matches('/').replace('/', ".");
        let errs: Vec<_> = loaded.diagnostics.iter().filter(|d| d.is_error()).collect();
        assert_eq!(errs.len(), 1, "{sets:?}: {errs:?}");
        assert_eq!(errs[0].path, dotted, "{sets:?}");
    }
}

#[test]
fn new_downstream_keys_have_their_documented_defaults() {
    let loader = Loader::new();
    let sets = ["downstream=[{task: knn}, {task: linear_probe}, {task: visualize}]".to_string()];
    let loaded = loader
        .load_file(Path::new("tests/valid/minimal.yaml"), &sets)
        .unwrap();
    let r = loaded.valid_recipe().expect("valid");
    match &r.downstream[..] {
        [
            Task::Knn {
                every_epochs: 0,
                baselines: true,
                ..
            },
            Task::LinearProbe {
                standardize: true,
                baselines: true,
                ..
            },
            Task::Visualize {
                plots,
                queries: 8,
                neighbors: 8,
                perplexity: 30.0,
                ..
            },
        ] => assert_eq!(plots, &Plot::ALL.to_vec()),
        other => panic!("{other:?}"),
    }
    // `recipe render` writes them out.
    let rendered = serde_json::to_value(r).unwrap();
    assert_eq!(rendered["downstream"][0]["every_epochs"], 0);
    assert_eq!(rendered["downstream"][1]["standardize"], true);
    assert_eq!(
        rendered["downstream"][2]["plots"],
        json!([
            "filters",
            "feature_maps",
            "embedding_pca",
            "embedding_tsne",
            "nearest_neighbors",
            "training_curves",
            "augmentation_views"
        ])
    );

    // fine_tune: batches of 256 at every fraction, flips only; a list of batch sizes
    // and the recipe's first view when asked.
    let sets = [
        "downstream=[{task: fine_tune}, {task: fine_tune, label_fraction: [0.01, 1.0], \
         batch_size: [16, 256], augment: first_view, head_norm: true}]"
            .to_string(),
    ];
    let loaded = loader
        .load_file(Path::new("tests/valid/minimal.yaml"), &sets)
        .unwrap();
    let r = loaded.valid_recipe().expect("valid");
    match &r.downstream[..] {
        [
            Task::FineTune {
                batch_size: Epochs::One(256),
                augment: FineTuneAugment::Flip,
                head_norm: false,
                ..
            },
            Task::FineTune {
                batch_size: Epochs::PerFraction(b),
                augment: FineTuneAugment::FirstView,
                head_norm: true,
                ..
            },
        ] => assert_eq!(b, &[16, 256]),
        other => panic!("{other:?}"),
    }
    let rendered = serde_json::to_value(r).unwrap();
    assert_eq!(rendered["downstream"][0]["batch_size"], 256);
    assert_eq!(rendered["downstream"][0]["augment"], "flip");
    assert_eq!(rendered["downstream"][1]["augment"], "first_view");
    assert_eq!(rendered["downstream"][0]["head_norm"], false);
}
