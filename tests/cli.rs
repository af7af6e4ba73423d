//! The `recipe` binary: exit codes (0 valid, 1 invalid, 2 usage or I/O), output
//! formats, and the `schema` / `render` commands.

mod common;
use common::{recipe, text};

#[test]
fn validate_exit_codes() {
    let ok = recipe(&["validate", "recipes/simclr.yaml", "recipes/moco.yaml"]);
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).contains("recipes/moco.yaml: valid"));

    let bad = recipe(&[
        "validate",
        "recipes/simclr.yaml",
        "tests/invalid/many_errors.yaml",
    ]);
    assert_eq!(bad.status.code(), Some(1));
    let err = text(&bad.stderr);
    assert!(
        err.contains("tests/invalid/many_errors.yaml: 4 error(s)"),
        "{err}"
    );
    assert!(err.contains("help: did you mean `temperature`?"), "{err}");
    assert!(text(&bad.stdout).contains("recipes/simclr.yaml: valid"));

    let missing = recipe(&["validate", "no/such/recipe.yaml"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(text(&missing.stderr).contains("cannot read `no/such/recipe.yaml`"));

    let bad_set = recipe(&[
        "validate",
        "recipes/simclr.yaml",
        "--set",
        "loss.temperature",
    ]);
    assert_eq!(bad_set.status.code(), Some(2));
    assert!(text(&bad_set.stderr).contains("is not of the form `path.to.key=value`"));

    let usage = recipe(&["validate"]);
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn set_overrides_are_checked_too() {
    let out = recipe(&[
        "validate",
        "recipes/moco.yaml",
        "--set",
        "loss.queue_size=1000",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("--> --set:1:17"), "{err}");
    assert!(
        err.contains("queue_size must be a positive multiple of 2 × the batch size (512)"),
        "{err}"
    );
}

#[test]
fn validate_json_format() {
    let out = recipe(&[
        "validate",
        "--format",
        "json",
        "tests/invalid/unknown_nested_key.yaml",
        "recipes/swav.yaml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v[0]["valid"], false);
    let d = &v[0]["diagnostics"][0];
    assert_eq!(d["severity"], "error");
    assert_eq!(d["path"], "loss.temprature");
    assert_eq!(
        (d["line"].as_u64(), d["column"].as_u64()),
        (Some(14), Some(24))
    );
    assert_eq!(d["help"], "did you mean `temperature`?");
    assert_eq!(v[1]["valid"], true);
    assert_eq!(v[1]["diagnostics"], serde_json::json!([]));
}

#[test]
fn schema_prints_the_committed_schema() {
    let out = recipe(&["schema"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        text(&out.stdout),
        std::fs::read_to_string("schemas/recipe.schema.json").unwrap()
    );
}

#[test]
fn render_resolves_everything() {
    let out = recipe(&[
        "render",
        "recipes/cifar10/swav.yaml",
        "--set",
        "train.epochs=100",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(v["name"], "cifar10-swav");
    assert_eq!(v["train"]["epochs"], 100);
    assert_eq!(v["loss"]["method"], "swav");
    assert_eq!(v["loss"]["prototypes"], 3000);
    assert_eq!(
        v["model"]["backbone"]["width"], 1.0,
        "defaults are filled in"
    );
    assert!(v.get("extends").is_none());
    let dir = v["data"]["source"]["dir"].as_str().unwrap();
    assert!(
        dir.ends_with("data/cifar-10-batches-bin") && std::path::Path::new(dir).is_absolute(),
        "{dir}"
    );

    let json = recipe(&["render", "--format", "json", "recipes/simclr.yaml"]);
    let j: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        j["augment"]["pipeline"][0]["random_resized_crop"]["ratio"][0],
        0.75
    );

    let bad = recipe(&["render", "tests/invalid/temperature_zero.yaml"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(bad.stdout.is_empty());
}

#[test]
fn validate_checks_data_paths_unless_told_not_to() {
    // Missing data under a correct recipe is an I/O error: exit 2, as for `run`.
    let out = recipe(&["validate", "recipes/cifar10/simclr.yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("data/cifar-10-batches-bin` does not exist"),
        "{err}"
    );
    assert!(err.contains("--> recipes/cifar10/base.yaml:11:"), "{err}");
    let out = recipe(&["validate", "--no-data-check", "recipes/cifar10/simclr.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn plan_reports_model_and_schedule() {
    let out = recipe(&["plan", "recipes/simclr.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(
        s.contains("simclr on 10000 training / 2000 test images, 1×28×28"),
        "{s}"
    );
    assert!(
        s.contains("schedule: 1716 steps (22 epochs × 78 steps of 128 images"),
        "{s}"
    );
    assert!(
        s.contains("lr 0.15 = 0.3 × 128/256 (linear batch-size scaling)"),
        "{s}"
    );
    assert!(s.contains("features.0") && s.contains("projector.3"), "{s}");
    let swav = text(&recipe(&["plan", "recipes/swav.yaml"]).stdout);
    assert!(
        swav.contains("views: 6 per image (2 × 28×28 + 4 × 14×14)"),
        "{swav}"
    );
    assert!(swav.contains("prototypes"), "{swav}");
    let bad = recipe(&["plan", "tests/invalid/input_too_small.yaml"]);
    assert_eq!(bad.status.code(), Some(1));
}

#[test]
fn preview_writes_a_grid() {
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("views.png");
    let out = recipe(&[
        "preview",
        "recipes/moco.yaml",
        "-o",
        png.to_str().unwrap(),
        "--n",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("pixels enlarged 4×"),
        "{}",
        text(&out.stdout)
    );
    let img = image::open(&png).unwrap();
    // 3 rows and 3 columns (original + 2 views) of 28 px cells enlarged 4× (the smallest
    // factor that reaches 96 px), with 2 px separators.
    assert_eq!((img.width(), img.height()), (3 * 112 + 8, 3 * 112 + 8));
    let native = recipe(&[
        "preview",
        "recipes/moco.yaml",
        "-o",
        png.to_str().unwrap(),
        "--n",
        "3",
        "--scale",
        "1",
    ]);
    assert_eq!(native.status.code(), Some(0), "{}", text(&native.stderr));
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (3 * 28 + 8, 3 * 28 + 8));
    let zero = recipe(&["preview", "recipes/moco.yaml", "--scale", "0"]);
    assert_eq!(zero.status.code(), Some(2));
    assert!(
        text(&zero.stderr).contains("--scale"),
        "{}",
        text(&zero.stderr)
    );
    let unwritable = recipe(&[
        "preview",
        "recipes/moco.yaml",
        "-o",
        "/nonexistent-dir/x.png",
    ]);
    assert_eq!(unwritable.status.code(), Some(2));
}

#[test]
fn a_data_path_given_with_set_is_pointed_at_and_exits_2() {
    let out = recipe(&[
        "validate",
        "recipes/cifar10/simclr.yaml",
        "--set",
        "data.source.dir=/nope",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("`/nope` does not exist"), "{err}");
    assert!(err.contains("--> --set:1:17"), "{err}");
    assert!(
        err.contains("paths given with `--set` are relative to the current directory"),
        "{err}"
    );
    // A recipe error as well: the recipe is invalid, exit 1.
    let out = recipe(&[
        "validate",
        "recipes/cifar10/simclr.yaml",
        "--set",
        "data.source.dir=/nope",
        "--set",
        "loss.temperature=0",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    // `plan` and `run` stop at the same check with the same code.
    for cmd in ["plan", "run"] {
        let out = recipe(&[
            cmd,
            "recipes/simclr.yaml",
            "--set",
            "data.source={format: image_folder, train: /nope}",
            "--set",
            "data.test_fraction=0.1",
        ]);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("--> --set:1:"),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn validate_finds_a_flat_folder_with_labels_requested() {
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..2 {
        image::GrayImage::new(28, 28)
            .save(tmp.path().join(format!("{i}.png")))
            .unwrap();
    }
    let set = format!(
        "data.source={{format: image_folder, train: {}}}",
        tmp.path().display()
    );
    let out = recipe(&[
        "validate",
        "recipes/simclr.yaml",
        "--set",
        &set,
        "--set",
        "data.test_fraction=0.5",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(err.contains("set `data.labels: false`"), "{err}");
}

#[test]
fn set_on_a_tag_replaces_the_section_when_rendered() {
    let out = recipe(&[
        "render",
        "recipes/simclr.yaml",
        "--set",
        "loss.method=memory_bank",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(v["loss"]["method"], "memory_bank");
    assert_eq!(v["loss"]["temperature"], 0.07, "the memory bank's default");

    let out = recipe(&[
        "render",
        "recipes/simclr.yaml",
        "--set",
        "loss.method=moco",
        "--set",
        "loss.queue_size=4096",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    assert_eq!(v["loss"]["queue_size"], 4096);
    assert_eq!(v["loss"]["temperature"], 0.2, "MoCo's default");
}

#[test]
fn validate_and_plan_warn_of_settings_the_data_makes_pointless() {
    // A queue 45× the built-in training set: a warning, still valid (exit 0).
    let out = recipe(&[
        "validate",
        "recipes/moco.yaml",
        "--set",
        "loss.queue_size=450048",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("the queue holds 450048 keys but training has 10000 images (45.0× as many)"),
        "{err}"
    );
    assert!(err.contains("use at most 9728 (19 × 512)"), "{err}");
    assert!(text(&out.stdout).contains("valid (1 warning(s))"));
    // Without the data check the size is not looked up.
    let out = recipe(&[
        "validate",
        "--no-data-check",
        "recipes/moco.yaml",
        "--set",
        "loss.queue_size=450048",
    ]);
    assert!(
        !text(&out.stderr).contains("warning"),
        "{}",
        text(&out.stderr)
    );

    // Gray images made RGB: said once, with the count, by validate and plan alike.
    let sets = [
        "--set",
        "data.channels=3",
        "--set",
        "data.normalize={mean: [0.3, 0.3, 0.3], std: [0.35, 0.35, 0.35]}",
    ];
    for cmd in ["validate", "plan"] {
        let mut args = vec![cmd, "recipes/simclr.yaml"];
        args.extend(sets);
        let out = recipe(&args);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let err = text(&out.stderr);
        assert_eq!(
            err.matches("loading converts 12000 gray images to 3 channels (data.channels: 3)")
                .count(),
            1,
            "{cmd}: {err}"
        );
    }
}

#[test]
fn damage_past_an_image_header_is_found_by_plan_with_exit_2() {
    // The data check reads headers only: a PNG cut short after its header passes
    // `validate`, and loading (plan, run) reports it as an I/O error.
    let tmp = tempfile::tempdir().unwrap();
    for class in ["a", "b"] {
        std::fs::create_dir_all(tmp.path().join(class)).unwrap();
        for i in 0..4 {
            image::GrayImage::from_fn(28, 28, |x, y| image::Luma([(x * y + i) as u8]))
                .save(tmp.path().join(format!("{class}/{i}.png")))
                .unwrap();
        }
    }
    let whole = std::fs::read(tmp.path().join("a/0.png")).unwrap();
    std::fs::write(tmp.path().join("a/0.png"), &whole[..whole.len() - 30]).unwrap();
    let set = format!(
        "data.source={{format: image_folder, train: {}}}",
        tmp.path().display()
    );
    let args = |cmd| {
        vec![
            cmd,
            "recipes/simclr.yaml",
            "--set",
            &set,
            "--set",
            "data.test_fraction=0.5",
            "--set",
            "train.batch_size=2",
        ]
    };
    let out = recipe(&args("validate"));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = recipe(&args("plan"));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot decode image") && err.contains("0.png"),
        "{err}"
    );
}

#[test]
fn preview_enlarges_8x8_digits() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("digits");
    for class in 0..2u8 {
        std::fs::create_dir_all(data.join(class.to_string())).unwrap();
        for i in 0..4u8 {
            let img = image::GrayImage::from_fn(8, 8, |x, y| {
                image::Luma([(x * 30 + y * 3) as u8 ^ (i * 40 + class * 90)])
            });
            img.save(data.join(format!("{class}/{i}.png"))).unwrap();
        }
    }
    let file = dir.path().join("digits.yaml");
    std::fs::write(
        &file,
        "version: 1\nname: digits\ndata:\n  source: {format: image_folder, train: digits}\n  \
         image_size: 8\n  channels: 1\naugment:\n  views: 2\n  pipeline:\n    - \
         random_resized_crop: {size: 8, scale: [0.4, 1.0]}\nmodel:\n  backbone: {arch: \
         small_cnn}\nloss: {method: simclr}\noptimizer: {name: sgd, lr: 0.1}\ntrain: \
         {epochs: 20, batch_size: 4}\n",
    )
    .unwrap();
    let png = dir.path().join("views.png");
    let out = recipe(&[
        "preview",
        file.to_str().unwrap(),
        "-o",
        png.to_str().unwrap(),
        "--n",
        "2",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // 8 px cells enlarged 12× to 96 px: 3 columns and 2 rows with 2 px separators.
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (3 * 96 + 8, 2 * 96 + 6));
    let out = recipe(&[
        "preview",
        file.to_str().unwrap(),
        "-o",
        png.to_str().unwrap(),
        "--n",
        "2",
        "--scale",
        "3",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (3 * 24 + 8, 2 * 24 + 6));
}

#[test]
fn plan_counts_every_rotation_of_rotnet() {
    // Every view is fed at each of the 4 rotations: 4× the encoder's work and memory.
    let out = recipe(&["plan", "recipes/rotation.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(
        s.contains("128 images × 1 views × 4 copies = 512 images, 23.29 GFLOP"),
        "{s}"
    );
    assert!(s.contains("4-way rotation classifier (the head)"), "{s}");
    let one = text(
        &recipe(&[
            "plan",
            "recipes/rotation.yaml",
            "--set",
            "loss.all_rotations=false",
        ])
        .stdout,
    );
    assert!(
        one.contains("128 images × 1 views = 128 images, 5.82 GFLOP"),
        "{one}"
    );
}
