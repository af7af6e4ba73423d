//! `recipe sweep`: grid expansion (product order, seeded sampling), the `--grid`
//! argument errors, every combination validated at once (snapshots of the rendered
//! errors), the summary's order and files, and end to end through the binary on a tiny
//! recipe: two combinations, an interrupted sweep, and the same command again skipping
//! the finished combination and resuming the interrupted one.

use std::path::{Path, PathBuf};

use recipe::diag::render_human;
use recipe::sweep::grid::{self, MAX_COMBINATIONS, expand, parse_axes};
use recipe::sweep::summary::{self, Metric, Row, RowStatus};

mod common;
use common::{recipe, text, tiny_recipe};

/// After [`common::TINY_START`]: one epoch of SimCLR and a kNN.
const TINY_REST: &str = r#"loss: {method: simclr, temperature: 0.5}
optimizer: {name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 1.0e-4}
schedule: {kind: constant}
train: {epochs: 1, batch_size: 32, log_every: 1, checkpoint_every: 1, threads: 2}
downstream:
  - {task: knn, k: 5}
"#;

fn args(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn tiny(dir: &Path) -> PathBuf {
    let p = dir.join("tiny.yaml");
    std::fs::write(&p, tiny_recipe(TINY_REST)).unwrap();
    p
}

#[test]
fn the_product_runs_in_nested_loop_order_with_values_as_typed() {
    let axes = parse_axes(&args(&[
        "loss.temperature=[0.1, 0.2]",
        "loss=[{method: simclr}, {method: moco, queue_size: 64}, 'a,b']",
    ]))
    .unwrap();
    assert_eq!(axes[0].texts(), ["0.1", "0.2"]);
    assert_eq!(
        axes[1].texts(),
        [
            "{method: simclr}",
            "{method: moco, queue_size: 64}",
            "'a,b'"
        ]
    );
    // Each value points at its place in the argument (characters, 0-based).
    assert_eq!(axes[1].values[1].value.0, "loss=[{method: simclr}, ".len());
    let c = expand(&axes, None).unwrap();
    assert_eq!(
        c,
        vec![
            vec![0, 0],
            vec![0, 1],
            vec![0, 2],
            vec![1, 0],
            vec![1, 1],
            vec![1, 2]
        ]
    );
    assert_eq!(
        grid::dir_name(5, &axes, &c[4]),
        "0005-temperature=0.2-loss=method_moco_queue_size_64"
    );
    assert_eq!(
        grid::label(&axes, &c[4]),
        "loss.temperature=0.2, loss={method: moco, queue_size: 64}"
    );
    let combos = recipe::sweep::combinations(&axes, &c, &[]);
    assert_eq!(combos[2].number, 3);
    let sets: Vec<String> = combos[2].overrides.iter().map(|o| o.as_set()).collect();
    assert_eq!(sets, ["loss.temperature=0.1", "loss='a,b'"]);
}

#[test]
fn random_samples_are_distinct_deterministic_and_in_product_order() {
    let axes = parse_axes(&args(&[
        "a=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]",
        "b=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]",
        "c=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]",
    ]))
    .unwrap();
    // 1,000 combinations: the whole product is allowed, one more axis value is not.
    assert_eq!(expand(&axes, None).unwrap().len(), MAX_COMBINATIONS);
    let one = expand(&axes, Some((20, 7))).unwrap();
    assert_eq!(one, expand(&axes, Some((20, 7))).unwrap());
    assert_eq!(one.len(), 20);
    let mut sorted = one.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, one, "distinct and in product order");
    assert_ne!(one, expand(&axes, Some((20, 8))).unwrap());
    // Asking for at least the whole grid runs the whole grid.
    let small = parse_axes(&args(&["a=[1, 2]", "b=[x, y]"])).unwrap();
    assert_eq!(expand(&small, Some((9, 0))).unwrap().len(), 4);
    let big = parse_axes(&args(&[
        "a=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]",
        "b=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]",
        "c=[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]",
    ]))
    .unwrap();
    let e = expand(&big, None).unwrap_err();
    assert!(
        e.contains("1100 combinations") && e.contains("--random"),
        "{e}"
    );
    assert_eq!(expand(&big, Some((5, 1))).unwrap().len(), 5);
    assert!(expand(&[], None).unwrap_err().contains("no combinations"));
}

#[test]
fn grid_argument_errors_are_reported_at_once() {
    let e = parse_axes(&args(&[
        "loss.temperature",
        "loss.temperature=0.1",
        "optimizer.lr=[]",
        "train.epochs=[1, 2, 1]",
        "augment.views=[2, 3]",
        "augment.views=[4]",
        "model.head.out_dim=[8, {]",
    ]))
    .unwrap_err();
    insta::assert_snapshot!(
        "grid_argument_errors",
        render_human(&e.diagnostics, &e.sources)
    );
}

#[test]
fn the_summary_is_sorted_by_the_metric_with_missing_values_last() {
    let m = Metric::parse("knn.top1").unwrap();
    let row = |n: usize, v: &str, metric: Option<f64>, status| Row {
        number: n,
        values: vec![v.into()],
        status,
        dir: format!("000{n}-t={v}"),
        metric,
        others: metric
            .map(|x| vec![("knn.top1".into(), x), ("final_loss".into(), 1.5)])
            .unwrap_or_default(),
        error: (status == RowStatus::Failed).then(|| "it broke".into()),
    };
    let mut rows = vec![
        row(1, "0.1", Some(40.0), RowStatus::Finished),
        row(2, "0.2", None, RowStatus::Failed),
        row(3, "0.5", Some(55.5), RowStatus::Finished),
        row(4, "a,b", None, RowStatus::Pending),
    ];
    summary::sort(&mut rows);
    let order: Vec<usize> = rows.iter().map(|r| r.number).collect();
    assert_eq!(order, [3, 1, 2, 4]);
    let paths = vec!["loss.temperature".to_string()];
    insta::assert_snapshot!("summary_markdown", summary::markdown(&paths, &m, &rows));
    insta::assert_snapshot!("summary_csv", summary::csv(&paths, &m, &rows));
    let j = summary::json(&paths, &m, &rows);
    assert_eq!(j["rows"][0]["values"]["loss.temperature"], "0.5");
    assert_eq!(j["rows"][2]["error"], "it broke");
}

#[test]
fn the_metric_is_the_trained_row_of_the_first_task_on_the_pretraining_data() {
    let results = serde_json::json!({"downstream": [
        {"task": "knn", "data": "mnist", "trained": {"top1": 90.0}},
        {"task": "knn", "trained": {"top1": 41.5, "top5": 80.0}},
        {"task": "linear_probe", "trained": {"top1": 50.0}},
    ], "training": {"final_epoch_loss": 3.25}});
    assert_eq!(
        Metric::parse("knn.top1").unwrap().value(&results),
        Some(41.5)
    );
    assert_eq!(
        Metric::parse("knn.top5").unwrap().value(&results),
        Some(80.0)
    );
    assert_eq!(
        Metric::parse("linear_probe.top1").unwrap().value(&results),
        Some(50.0)
    );
    assert_eq!(
        Metric::parse("fine_tune.top1").unwrap().value(&results),
        None
    );
    assert_eq!(
        summary::headline(&results),
        vec![
            ("knn[mnist].top1".to_string(), 90.0),
            ("knn.top1".to_string(), 41.5),
            ("linear_probe.top1".to_string(), 50.0),
            ("final_loss".to_string(), 3.25)
        ]
    );
    assert!(Metric::parse("knn").is_err());
    assert!(
        Metric::parse("knm.top1")
            .unwrap_err()
            .contains("did you mean `knn`")
    );
    assert!(Metric::parse("knn.top3").is_err());
}

#[test]
fn cli_argument_errors_are_all_reported_before_anything_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = recipe(&[
        "sweep",
        "missing.yaml",
        "--grid",
        "loss.temperature=[]",
        "--grid",
        "optimizer.lr",
        "--set",
        "train.epochs",
        "--metric",
        "knn.top3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    insta::assert_snapshot!("cli_argument_errors", text(&o.stderr));
    let o = recipe(&[
        "sweep",
        "missing.yaml",
        "--grid",
        "a=[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]",
        "--grid",
        "b=[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]",
        "--grid",
        "c=[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]",
    ]);
    assert_eq!(o.status.code(), Some(2));
    insta::assert_snapshot!("cli_too_many_combinations", text(&o.stderr));
    // clap's own: --seed needs --random, --random needs N ≥ 1, --grid is required.
    let o = recipe(&["sweep", "r.yaml", "--grid", "a=[1]", "--seed", "3"]);
    assert_eq!(o.status.code(), Some(2));
    insta::assert_snapshot!("cli_seed_without_random", text(&o.stderr));
    let o = recipe(&["sweep", "r.yaml", "--grid", "a=[1]", "--random", "0"]);
    assert_eq!(o.status.code(), Some(2));
    insta::assert_snapshot!("cli_random_zero", text(&o.stderr));
    let o = recipe(&["sweep", "r.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    insta::assert_snapshot!("cli_no_grid", text(&o.stderr));
    assert!(!out.exists(), "nothing is written");
}

#[test]
fn every_combination_is_validated_and_every_error_reported_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tiny(tmp.path());
    let out = tmp.path().join("out");
    let o = recipe(&[
        "sweep",
        file.to_str().unwrap(),
        "--grid",
        "loss.temperature=[0.5, 0]",
        "--grid",
        "optimizer.lr=[0.05, -1]",
        "--metric",
        "linear_probe.top1",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let err = text(&o.stderr).replace(tmp.path().to_str().unwrap(), "<tmp>");
    insta::assert_snapshot!("every_combination_validated", err);
    assert!(!out.exists(), "nothing ran");
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn lines(p: &Path) -> usize {
    read(p).lines().count()
}

#[test]
fn a_tiny_sweep_is_interrupted_then_the_same_command_skips_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tiny(tmp.path());
    let out = tmp.path().join("out");
    let sweep = |extra: &[&str]| {
        let mut a = vec![
            "sweep",
            file.to_str().unwrap(),
            "--grid",
            "loss.temperature=[0.1, 0.5]",
            "--out",
            out.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        recipe(&a)
    };
    // 200 images in batches of 32: 6 steps per combination; stopping after 8 steps
    // in all finishes the first and stops the second at its step 2.
    let o = sweep(&["--stop-after-steps", "8"]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(err.contains("stopped at step 2"), "{err}");
    assert!(
        err.contains(&format!(
            "continue with: recipe sweep {} --grid 'loss.temperature=[0.1, 0.5]' --out {}\n",
            file.display(),
            out.display()
        )),
        "{err}"
    );
    let dirs: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let sweep_dir = dirs[0].clone();
    let name = sweep_dir.file_name().unwrap().to_str().unwrap().to_string();
    assert!(name.starts_with("tiny-sweep-") && name.len() == "tiny-sweep-".len() + 8);
    let first = sweep_dir.join("0001-temperature=0.1");
    let second = sweep_dir.join("0002-temperature=0.5");
    assert!(first.join("results.json").is_file());
    assert!(!second.join("results.json").exists());
    assert!(second.join("checkpoints/last.safetensors").is_file());
    let csv = read(&sweep_dir.join("summary.csv"));
    assert!(csv.contains(",interrupted,0002-temperature=0.5"), "{csv}");

    // The same command again: the first is skipped, the second resumed and finished.
    let o = sweep(&[]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("combination 1/2 (loss.temperature=0.1): finished earlier, skipped"),
        "{err}"
    );
    assert!(
        err.contains("combination 2/2 (loss.temperature=0.5): resuming from step 2"),
        "{err}"
    );
    assert_eq!(lines(&first.join("invocations.jsonl")), 1, "not rerun");
    assert_eq!(lines(&second.join("invocations.jsonl")), 2, "resumed once");
    let res: serde_json::Value = serde_json::from_str(&read(&second.join("results.json"))).unwrap();
    assert_eq!(res["training"]["steps"], 6);
    assert_eq!(res["overrides"][0], "loss.temperature=0.5");

    // The summary: both finished, sorted by kNN top-1, highest first.
    let csv = read(&sweep_dir.join("summary.csv"));
    let mut rows = csv.lines();
    assert_eq!(
        rows.next().unwrap(),
        "number,loss.temperature,knn.top1,final_loss,status,run_dir"
    );
    let metric: Vec<f64> = rows
        .map(|l| {
            assert!(l.contains(",finished,"), "{l}");
            l.split(',').nth(2).unwrap().parse().unwrap()
        })
        .collect();
    assert_eq!(metric.len(), 2);
    assert!(metric[0] >= metric[1], "{csv}");
    let stdout = text(&o.stdout);
    assert!(
        stdout.contains("| # | `loss.temperature` | **knn.top1** |"),
        "{stdout}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&read(&sweep_dir.join("summary.json"))).unwrap();
    assert_eq!(json["metric"], "knn.top1");
    assert_eq!(json["rows"].as_array().unwrap().len(), 2);
    assert!(read(&sweep_dir.join("summary.md")).contains("Sorted by knn.top1"));
    let def: serde_json::Value =
        serde_json::from_str(&read(&sweep_dir.join("sweep.json"))).unwrap();
    assert_eq!(def["combinations"][1]["dir"], "0002-temperature=0.5");
    let png = sweep_dir.join("metric_loss.temperature.png");
    assert!(
        image::open(&png).is_ok_and(|i| i.width() > 0),
        "{}",
        png.display()
    );

    // Once more: nothing left to run.
    let o = sweep(&[]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        text(&o.stderr).matches("finished earlier, skipped").count(),
        2
    );
}

#[test]
fn a_failed_combination_does_not_stop_the_others_and_is_listed() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tiny(tmp.path());
    let out = tmp.path().join("out");
    let sweep = || {
        recipe(&[
            "sweep",
            file.to_str().unwrap(),
            "--grid",
            "optimizer.lr=[1.0e+30, 0.05]",
            "--out",
            out.to_str().unwrap(),
            "-q",
        ])
    };
    // A learning rate of 1e30 passes validation and diverges in the first epoch.
    let o = sweep();
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("combination 1/2 (optimizer.lr=1.0e+30): failed: the loss diverged"),
        "{err}"
    );
    assert!(
        err.contains("combination 2/2 (optimizer.lr=0.05): finished"),
        "{err}"
    );
    assert!(err.contains("1 of 2 combination(s) failed:"), "{err}");
    let sweep_dir = std::fs::read_dir(&out)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let csv = read(&sweep_dir.join("summary.csv"));
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert!(
        rows[0].starts_with("2,0.05,") && rows[0].contains(",finished,"),
        "{csv}"
    );
    assert!(
        rows[1].starts_with("1,1.0e+30,,") && rows[1].contains(",failed,"),
        "{csv}"
    );
    let md = read(&sweep_dir.join("summary.md"));
    assert!(
        md.contains("## Failed") && md.contains("the loss diverged"),
        "{md}"
    );
    // Again: the finished one is skipped; the failed one, which left no checkpoint, is
    // kept aside and started afresh (and fails again).
    let o = sweep();
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("combination 2/2 (optimizer.lr=0.05): finished earlier, skipped"),
        "{err}"
    );
    assert!(err.contains("had no checkpoint; kept as"), "{err}");
}

#[test]
fn ctrl_c_stops_the_sweep_and_prints_the_command_that_continues() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let tmp = tempfile::tempdir().unwrap();
    let file = tiny(tmp.path());
    let out = tmp.path().join("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_recipe"))
        .args([
            "sweep",
            file.to_str().unwrap(),
            "--grid",
            "loss.temperature=[0.1, 0.5]",
            "--set",
            "train.epochs=50",
            "--out",
            out.to_str().unwrap(),
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let (mut seen, mut line) = (String::new(), String::new());
    while err.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.contains("step 2/") {
            // SAFETY: sending a signal to our own child process.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        }
        line.clear();
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{seen}");
    assert!(
        seen.contains("sweep stopped: 0 of 2 combination(s) finished"),
        "{seen}"
    );
    assert!(seen.contains("continue with: recipe sweep "), "{seen}");
    assert!(
        !seen.contains("combination 2/2"),
        "the second never started: {seen}"
    );
    let sweep_dir = std::fs::read_dir(&out)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(
        sweep_dir
            .join("0001-temperature=0.1/checkpoints/last.safetensors")
            .is_file()
    );
    assert!(!sweep_dir.join("0002-temperature=0.5").exists());
}
