//! `recipe runs` and `recipe compare` through the binary: the status of finished,
//! interrupted and failed tiny runs (recorded in `status.json` by `recipe run`), the
//! side-by-side table and recipe diff of two runs that differ in one key, tables of
//! hand-written run directories, and the text of every error (insta snapshots).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

mod common;
use common::{recipe, text, tiny_recipe};

/// After [`common::TINY_START`]: SimCLR, two epochs, kNN and a linear probe.
const BASE_REST: &str = r#"loss: {method: simclr, temperature: 0.2}
optimizer: {name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 1.0e-4}
schedule: {kind: warmup_cosine, warmup_epochs: 1}
train: {epochs: 2, batch_size: 32, log_every: 1, checkpoint_every: 1, threads: 2, watch_samples: 64}
downstream:
  - {task: knn, k: 5, every_epochs: 1}
  - {task: linear_probe, epochs: 2, batch_size: 64}
"#;

/// The binary with `args`, run in `cwd`.
fn recipe_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_recipe"))
        .current_dir(cwd)
        .args(args)
        .output()
        .expect("the binary runs")
}

/// The one run directory `recipe run --out out` made.
fn only_dir(out: &Path) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    dirs[0].clone()
}

/// A tiny run of the base recipe with `sets`, under `out`; its exit code and directory.
fn tiny_run(file: &Path, out: &Path, sets: &[&str]) -> (Option<i32>, PathBuf, String) {
    let mut args = vec![
        "run",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    let o = recipe(&args);
    (o.status.code(), only_dir(out), text(&o.stderr))
}

fn status_of(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("status.json")).unwrap()).unwrap()
}

/// Two finished runs that differ in `loss.temperature`, an interrupted one and a
/// failed (diverged) one in a nested folder: `status.json`, `recipe runs` and
/// `recipe compare`.
#[test]
fn runs_and_compare_on_tiny_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("runs");
    let file = tmp.path().join("tiny.yaml");
    std::fs::write(&file, tiny_recipe(BASE_REST)).unwrap();

    let (code, a, err) = tiny_run(&file, &root.join("a"), &[]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(status_of(&a)["status"], "finished");
    assert_eq!(status_of(&a)["step"], 12);
    let (code, b, err) = tiny_run(&file, &root.join("b"), &["loss.temperature=0.5"]);
    assert_eq!(code, Some(0), "{err}");
    // Interrupted: stopped after 8 steps.
    let o = recipe(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        root.join("c").to_str().unwrap(),
        "--stop-after-steps",
        "8",
    ]);
    assert_eq!(o.status.code(), Some(130), "{}", text(&o.stderr));
    let c = only_dir(&root.join("c"));
    assert_eq!(status_of(&c)["status"], "interrupted");
    assert_eq!(status_of(&c)["step"], 8);
    // A refused resume (the recipe differs) leaves the status alone.
    let o = recipe(&[
        "run",
        file.to_str().unwrap(),
        "--resume",
        c.to_str().unwrap(),
        "--set",
        "train.epochs=5",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    assert_eq!(status_of(&c)["status"], "interrupted");
    // Failed: the loss diverges at once, before any checkpoint.
    let (code, d, err) = tiny_run(
        &file,
        &root.join("sweep").join("d"),
        &["optimizer.lr=1.0e+30", "schedule={kind: constant}"],
    );
    assert_eq!(code, Some(1), "{err}");
    let st = status_of(&d);
    assert_eq!(st["status"], "failed");
    assert!(st["error"].as_str().unwrap().contains("diverged"), "{st}");

    // `recipe runs`: every run found (the nested one too), oldest first, with status.
    let o = recipe(&["runs", root.to_str().unwrap(), "--format", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let listed: Vec<Value> = serde_json::from_str(&text(&o.stdout)).unwrap();
    let by_status: Vec<(String, String)> = listed
        .iter()
        .map(|r| {
            (
                r["name"]
                    .as_str()
                    .unwrap()
                    .split('/')
                    .next()
                    .unwrap()
                    .to_string(),
                r["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        by_status,
        [
            ("a".to_string(), "finished".to_string()),
            ("b".into(), "finished".into()),
            ("c".into(), "interrupted".into()),
            ("sweep".into(), "failed".into()),
        ]
    );
    let first = &listed[0];
    assert_eq!(first["method"], "simclr");
    assert_eq!(first["epochs_done"], 2);
    assert_eq!(first["epochs_total"], 2);
    assert!(first["knn_top1"].as_f64().is_some() && first["linear_top1"].as_f64().is_some());
    assert_eq!(listed[2]["epochs_done"], 1);
    assert_eq!(listed[2]["status_step"], 8);
    let o = recipe(&["runs", root.to_str().unwrap()]);
    let table = text(&o.stdout);
    assert!(table.starts_with("run "), "{table}");
    assert!(
        table.contains("interrupted") && table.contains("2/2"),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("sweep/") && l.contains("failed: ") && l.contains("diverged")),
        "{table}"
    );

    // `recipe compare a b`: both columns, every result, and only the differing key.
    let out = tmp.path().join("cmp");
    let o = recipe(&[
        "compare",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let shown = text(&o.stdout);
    let (an, bn) = (
        a.file_name().unwrap().to_str().unwrap(),
        b.file_name().unwrap().to_str().unwrap(),
    );
    let header = shown.lines().next().unwrap();
    assert!(header.contains(an) && header.contains(bn), "{shown}");
    for row in [
        "knn · trained",
        "knn · untrained_network",
        "knn · raw_pixels",
        "linear_probe · trained",
        "linear_probe · raw_pixels",
    ] {
        assert!(shown.lines().any(|l| l.starts_with(row)), "{row}:\n{shown}");
    }
    let diff: Vec<&str> = shown
        .split("\n\n")
        .nth(1)
        .unwrap()
        .lines()
        .skip(1)
        .collect();
    assert_eq!(diff.len(), 1, "{shown}");
    assert!(diff[0].starts_with("loss.temperature"), "{shown}");
    assert!(
        diff[0].contains("0.2") && diff[0].contains("0.5"),
        "{shown}"
    );
    let md = std::fs::read_to_string(out.join("compare.md")).unwrap();
    assert!(md.contains("| loss.temperature | 0.2 | 0.5 |"), "{md}");
    for png in ["compare_loss.png", "compare_knn.png"] {
        let img = image::open(out.join(png)).unwrap();
        assert!(img.width() > 0, "{png}");
    }
    let o = recipe(&[
        "compare",
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--format",
        "json",
    ]);
    let doc: Value = serde_json::from_str(&text(&o.stdout)).unwrap();
    assert_eq!(
        doc["recipe_diff"],
        json!([{"key": "loss.temperature", "values": [0.2, 0.5]}])
    );

    // With the interrupted run: its results are –, a note says why, exit 0.
    let o = recipe(&[
        "compare",
        a.to_str().unwrap(),
        c.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let shown = text(&o.stdout);
    let knn = shown
        .lines()
        .find(|l| l.starts_with("knn · trained"))
        .unwrap();
    assert!(knn.trim_end().ends_with('–'), "{shown}");
    assert!(text(&o.stderr).contains("is interrupted and has no readable results.json"));
    assert!(shown.contains("The recipes are the same."), "{shown}");
}

/// A hand-written run directory: recipe (with `temperature` and `epochs`), results,
/// epoch records, the first invocation's time and an optional status.
fn fake_run(dir: &Path, temperature: f64, epochs: u64, status: Option<Value>, results: bool) {
    std::fs::create_dir_all(dir.join("checkpoints")).unwrap();
    let recipe = format!(
        "name: fake\nloss:\n  method: simclr\n  temperature: {temperature}\ntrain:\n  epochs: {epochs}\n  batch_size: 32\n"
    );
    std::fs::write(dir.join("recipe.yaml"), recipe).unwrap();
    let mut metrics = String::new();
    for e in 0..epochs {
        let rec = json!({"kind": "epoch", "epoch": e, "step": (e + 1) * 10,
            "loss": 4.0 - e as f64 * temperature, "knn_top1": 50.0 + e as f64});
        metrics.push_str(&format!("{rec}\n"));
    }
    std::fs::write(dir.join("metrics.jsonl"), metrics).unwrap();
    let stamp = format!("2026120{}-10000{}", epochs, (temperature * 10.0) as u64);
    std::fs::write(
        dir.join("invocations.jsonl"),
        format!(
            "{}\n",
            json!({"time": stamp, "command": "recipe run x.yaml", "start_step": 0})
        ),
    )
    .unwrap();
    if results {
        let t = temperature * 10.0;
        let doc = json!({"training": {"epochs": epochs, "seconds": 12.0, "images_per_s": 100.0},
            "downstream": [
            {"task": "knn", "trained": {"top1": 60.0 + t}, "raw_pixels": {"top1": 70.0},
             "untrained_network": {"top1": 40.0},
             "label_fraction": [0.1, 1.0],
             "by_fraction": [
                {"fraction": 0.1, "labels": 20, "trained": {"top1": 50.0 + t}, "raw_pixels": {"top1": 55.0}},
                {"fraction": 1.0, "labels": 200, "trained": {"top1": 60.0 + t}, "raw_pixels": {"top1": 70.0},
                 "untrained_network": {"top1": 40.0}}]},
            {"task": "linear_probe", "trained": {"top1": 80.0 + t}, "raw_pixels": {"top1": 81.0}},
            {"task": "knn", "data": "mnist", "trained": {"top1": 90.0 - t}},
            {"task": "visualize", "files": []}]});
        std::fs::write(dir.join("results.json"), doc.to_string()).unwrap();
    }
    if let Some(s) = status {
        std::fs::write(dir.join("status.json"), s.to_string()).unwrap();
    }
}

/// `recipe runs` and `recipe compare` on hand-written directories: the tables as
/// printed.
#[test]
fn tables_of_hand_written_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    fake_run(&w.join("runs/low"), 0.1, 3, None, true);
    fake_run(&w.join("runs/sweep/high"), 0.5, 2, None, true);
    fake_run(
        &w.join("runs/cut"),
        0.5,
        1,
        Some(json!({"status": "interrupted", "step": 10})),
        false,
    );
    std::fs::write(w.join("runs/cut/checkpoints/last.safetensors"), "x").unwrap();
    fake_run(
        &w.join("runs/broken"),
        0.2,
        1,
        Some(json!({"status": "finished", "step": 10})),
        false,
    );
    std::fs::write(w.join("runs/broken/results.json"), "{\"downstream\": [").unwrap();
    // Killed before its first checkpoint (the process it names is gone): failed.
    fake_run(
        &w.join("runs/dead"),
        0.3,
        2,
        Some(json!({"status": "running", "pid": u32::MAX - 1,
            "host": recipe::runtime::hostname()})),
        false,
    );
    // Running on another machine: cannot be checked, taken as running.
    fake_run(
        &w.join("runs/far"),
        0.4,
        2,
        Some(json!({"status": "running", "pid": 12, "host": "elsewhere"})),
        false,
    );
    // Not run directories: skipped.
    std::fs::create_dir_all(w.join("runs/empty/deeper")).unwrap();
    std::fs::write(w.join("runs/notes.txt"), "x").unwrap();

    let o = recipe_in(w, &["runs"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    insta::assert_snapshot!("runs_table", text(&o.stdout));

    let o = recipe_in(
        w,
        &[
            "compare",
            "runs/low",
            "runs/sweep/high",
            "runs/cut",
            "--out",
            "cmp",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    insta::assert_snapshot!("compare_table", text(&o.stdout));
    insta::assert_snapshot!("compare_notes", text(&o.stderr));
    insta::assert_snapshot!(
        "compare_md",
        std::fs::read_to_string(w.join("cmp/compare.md")).unwrap()
    );
}

/// Every error of `recipe runs` and `recipe compare`: exit code 2 and the message.
#[test]
fn errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let w = tmp.path();
    fake_run(&w.join("a"), 0.1, 1, None, true);
    fake_run(&w.join("b"), 0.2, 1, None, true);
    std::fs::create_dir_all(w.join("plain")).unwrap();
    std::fs::write(w.join("file.txt"), "x").unwrap();
    let cases: &[(&str, &[&str])] = &[
        ("compare_none", &["compare"]),
        ("compare_one", &["compare", "a"]),
        ("compare_not_a_run", &["compare", "a", "plain"]),
        ("compare_missing", &["compare", "a", "nowhere"]),
        ("compare_twice", &["compare", "a", "./a"]),
        (
            "compare_unwritable_out",
            &["compare", "a", "b", "--out", "file.txt/cmp"],
        ),
        ("runs_missing", &["runs", "nowhere"]),
        ("runs_file", &["runs", "file.txt"]),
    ];
    let mut shown = String::new();
    for (name, args) in cases {
        let o = recipe_in(w, args);
        assert_eq!(o.status.code(), Some(2), "{name}: {}", text(&o.stderr));
        assert!(text(&o.stdout).is_empty(), "{name}");
        shown.push_str(&format!(
            "$ recipe {}\n{}\n",
            args.join(" "),
            text(&o.stderr)
        ));
    }
    insta::assert_snapshot!("errors", shown);
    // An empty folder is no error.
    let o = recipe_in(w, &["runs", "plain"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(text(&o.stdout), "no run directories under `plain`\n");
}
