//! `recipe run` and `recipe eval` end to end through the binary, on tiny recipes
//! (a 2% class-balanced subset of the built-in Fashion-MNIST, a two-stage CNN of 8 and
//! 16 channels, two short epochs): every method trains and evaluates, the run
//! directory holds what it should, an interrupted run resumes to the same bits, and bad
//! situations stop cleanly.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod common;
use common::{recipe, run_dir, text, tiny_recipe};

/// After [`common::TINY_START`]: two short epochs, a checkpoint each, kNN every epoch
/// and a linear probe; [`tiny`] adds the loss.
const BASE_REST: &str = r#"optimizer: {name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 1.0e-4}
schedule: {kind: warmup_cosine, warmup_epochs: 1}
train: {epochs: 2, batch_size: 32, log_every: 1, checkpoint_every: 1, threads: 2}
downstream:
  - {task: knn, k: 5, every_epochs: 1}
  - {task: linear_probe, epochs: 2, batch_size: 64}
"#;

/// The predictor BYOL and SimSiam need, as a `--set`.
const PREDICTOR: &str = "model.predictor={hidden: [16]}";

/// Writes the tiny base recipe with `loss` (and any extra top-level YAML) to `dir`.
fn tiny(dir: &Path, name: &str, loss: &str, extra: &str) -> PathBuf {
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &p,
        format!("{}loss: {loss}\n{extra}", tiny_recipe(BASE_REST)),
    )
    .unwrap();
    p
}

fn digest_of(checkpoint: &Path) -> String {
    let bytes = std::fs::read(checkpoint).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().as_ref().unwrap()["sha256"].clone()
}

/// Every tensor of a checkpoint (name, bytes): its state without the metadata.
fn tensors_of(checkpoint: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(checkpoint).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.data().to_vec()))
        .collect();
    out.sort();
    out
}

fn losses(dir: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "step")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].to_string()))
        .collect()
}

fn is_png(p: &Path) -> bool {
    image::open(p).is_ok_and(|i| i.width() > 0 && i.height() > 0)
}

fn check_finished(dir: &Path, method: &str) {
    for f in [
        "recipe.yaml",
        "metrics.jsonl",
        "metrics.csv",
        "results.json",
        "report.md",
        "backbone.safetensors",
        "checkpoints/last.safetensors",
        "checkpoints/epoch-0001.safetensors",
        "checkpoints/epoch-0002.safetensors",
    ] {
        assert!(
            dir.join(f).is_file(),
            "{method}: {f} missing in {}",
            dir.display()
        );
    }
    let res: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(res["method"], method);
    assert_eq!(res["training"]["epochs"], 2);
    let tasks = res["downstream"].as_array().unwrap();
    let knn = tasks.iter().find(|t| t["task"] == "knn").unwrap();
    for row in ["trained", "untrained_network", "raw_pixels"] {
        let v = knn[row]["top1"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&v), "{method} {row}: {v}");
    }
    let probe = tasks.iter().find(|t| t["task"] == "linear_probe").unwrap();
    assert!(
        probe["raw_pixels"]["top1"].as_f64().unwrap() > 30.0,
        "{probe}"
    );
    // kNN every epoch shows up in the epoch records.
    let epochs: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["kind"] == "epoch")
        .collect();
    assert_eq!(epochs.len(), 2, "{method}");
    assert!(epochs.iter().all(|e| e["knn_top1"].as_f64().is_some()));
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(
        report.contains("raw pixels") && report.contains("untrained network"),
        "{report}"
    );
    assert!(report.contains("| linear top-5 |"), "{report}");
    let csv = std::fs::read_to_string(dir.join("metrics.csv")).unwrap();
    assert!(csv.lines().next().unwrap().starts_with("kind,epoch,step"));
}

#[test]
fn every_method_runs_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = [
        ("simclr", "{method: simclr, temperature: 0.5}", ""),
        (
            "moco",
            "{method: moco, temperature: 0.2, momentum: 0.9, queue_size: 128, symmetric: true}",
            "",
        ),
        (
            "memory_bank",
            "{method: memory_bank, temperature: 0.1, negatives: 32}",
            "",
        ),
        (
            "swav",
            "{method: swav, prototypes: 10, freeze_prototypes_steps: 3, queue: {size: 64, start_epoch: 1}}",
            "",
        ),
        ("supcon", "{method: supcon, temperature: 0.1}", ""),
        ("rotation", "{method: rotation}", ""),
        ("byol", "{method: byol, momentum: 0.9}", ""),
        ("simsiam", "{method: simsiam}", ""),
        ("barlow_twins", "{method: barlow_twins, lambda: 0.01}", ""),
        ("vicreg", "{method: vicreg, covariance_coeff: 2}", ""),
        (
            "dino",
            "{method: dino, out_dim: 32, warmup_teacher_temp_epochs: 2, teacher_temp: 0.07}",
            "",
        ),
    ];
    for (method, loss, extra) in cases {
        let file = tiny(tmp.path(), method, loss, extra);
        let out = tmp.path().join(format!("out-{method}"));
        let mut args = vec![
            "run",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        if method == "rotation" {
            // The head is the 4-way rotation classifier; one view per image.
            args.extend(["--set", "model.head.out_dim=4", "--set", "augment.views=1"]);
        }
        if matches!(method, "byol" | "simsiam") {
            args.extend(["--set", PREDICTOR]);
        }
        let o = recipe(&args);
        assert_eq!(o.status.code(), Some(0), "{method}: {}", text(&o.stderr));
        check_finished(&run_dir(&out), method);
    }
}

#[test]
fn swav_multi_crop_and_pictures() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tiny(tmp.path(), "swav_mc", "{method: swav, prototypes: 10}", "");
    let out = tmp.path().join("out");
    let o = recipe(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--set",
        "augment={pipeline: [{horizontal_flip: {p: 0.5}}], multi_crop: {global: {count: 2, size: 16, scale: [0.4, 1.0]}, local: {count: 2, size: 8, scale: [0.1, 0.4]}}}",
        "--set",
        "downstream=[{task: knn, k: 5}, {task: fine_tune, epochs: 1, batch_size: 32}, {task: visualize, samples: 100, queries: 3, neighbors: 3}]",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let dir = run_dir(&out);
    let res: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    let ft = res["downstream"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task"] == "fine_tune")
        .unwrap();
    for row in ["trained", "untrained_network"] {
        let v = ft[row]["top1"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&v), "{row}: {ft}");
    }
    for png in [
        "filters.png",
        "feature_maps.png",
        "nearest_neighbors.png",
        "embedding_pca.png",
        "augmentation_views.png",
        "loss.png",
        "lr.png",
    ] {
        assert!(is_png(&dir.join(png)), "{png} is not a valid PNG");
        let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
        assert!(report.contains(png), "report.md does not link {png}");
    }
}

#[test]
fn interrupted_run_resumes_to_identical_bits() {
    let loss = "{method: moco, temperature: 0.2, momentum: 0.9, queue_size: 64}";
    // 6 steps per epoch: stop in the middle of the second epoch.
    resumes_to_identical_bits("moco", loss, &[], "8");
}

/// DINO: the teacher (key encoder section), the centre and the per-epoch teacher
/// temperature; stopped during the first epoch, while the last layer is frozen, so the
/// resumed run unfreezes it.
#[test]
fn interrupted_dino_run_resumes_to_identical_bits() {
    let loss = "{method: dino, out_dim: 32, warmup_teacher_temp_epochs: 2, teacher_temp: 0.07, teacher_momentum: 0.9}";
    let mc = "augment={pipeline: [{horizontal_flip: {p: 0.5}}], multi_crop: {global: {count: 2, size: 16, scale: [0.4, 1.0]}, local: {count: 2, size: 8, scale: [0.1, 0.4]}}}";
    resumes_to_identical_bits("dino", loss, &["--set", mc], "4");
}

/// Runs `loss` whole, then stopped after `stop` steps and resumed: the last checkpoints
/// digest alike and the logged losses are the same.
fn resumes_to_identical_bits(name: &str, loss: &str, sets: &[&str], stop: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let file = tiny(tmp.path(), name, loss, "");
    let f = file.to_str().unwrap();
    let whole = tmp.path().join("whole");
    let mut args = vec![
        "run",
        f,
        "--out",
        whole.to_str().unwrap(),
        "--set",
        "downstream=[]",
    ];
    args.extend_from_slice(sets);
    let o = recipe(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let whole = run_dir(&whole);

    let parts = tmp.path().join("parts");
    let mut args = vec![
        "run",
        f,
        "--out",
        parts.to_str().unwrap(),
        "--set",
        "downstream=[]",
        "--stop-after-steps",
        stop,
    ];
    args.extend_from_slice(sets);
    let o = recipe(&args);
    assert_eq!(o.status.code(), Some(130), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("resume with: recipe run"), "{err}");
    let parts = run_dir(&parts);
    assert!(!parts.join("results.json").exists());

    // A changed recipe is refused, naming the key.
    let mut args = vec![
        "run",
        f,
        "--resume",
        parts.to_str().unwrap(),
        "--set",
        "downstream=[]",
        "--set",
        "train.epochs=3",
    ];
    args.extend_from_slice(sets);
    let o = recipe(&args);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o.stderr).contains("train.epochs"),
        "{}",
        text(&o.stderr)
    );

    let mut args = vec![
        "run",
        f,
        "--resume",
        parts.to_str().unwrap(),
        "--set",
        "downstream=[]",
    ];
    args.extend_from_slice(sets);
    let o = recipe(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let last = |d: &Path| d.join("checkpoints/last.safetensors");
    assert_eq!(digest_of(&last(&whole)), digest_of(&last(&parts)), "{name}");
    assert_eq!(losses(&whole), losses(&parts), "{name}");
    assert_eq!(losses(&whole).len(), 12, "{name}");
}

#[test]
fn interrupted_byol_run_resumes_to_identical_bits() {
    // The target network is in the checkpoint one EMA step behind the online network
    // (the update is made at the start of the next step); the resumed run must make
    // that update exactly as the uninterrupted one.
    let tmp = tempfile::tempdir().unwrap();
    let file = tiny(tmp.path(), "byol", "{method: byol, momentum: 0.9}", "");
    let f = file.to_str().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec!["run", f, "--set", "downstream=[]", "--set", PREDICTOR];
        args.extend(extra);
        recipe(&args)
    };
    let whole = tmp.path().join("whole");
    let o = run(&["--out", whole.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let whole = run_dir(&whole);
    let parts = tmp.path().join("parts");
    let o = run(&["--out", parts.to_str().unwrap(), "--stop-after-steps", "8"]);
    assert_eq!(o.status.code(), Some(130), "{}", text(&o.stderr));
    let parts = run_dir(&parts);
    let o = run(&["--resume", parts.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let last = |d: &Path| d.join("checkpoints/last.safetensors");
    let tensors = tensors_of(&last(&whole));
    assert!(tensors.iter().any(|(n, _)| n.starts_with("key_encoder.")));
    assert!(tensors.iter().any(|(n, _)| n.starts_with("predictor.")));
    assert!(
        tensors
            .iter()
            .all(|(n, _)| !n.starts_with("key_encoder.predictor."))
    );
    assert_eq!(digest_of(&last(&whole)), digest_of(&last(&parts)));
    assert_eq!(losses(&whole), losses(&parts));
}

#[test]
fn sigterm_saves_a_checkpoint_and_says_how_to_resume() {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().unwrap();
    let file = tiny(tmp.path(), "s", "{method: simclr}", "");
    let out = tmp.path().join("out");
    let mut child = Command::new(env!("CARGO_BIN_EXE_recipe"))
        .args([
            "run",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--set",
            "train.epochs=50",
        ])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while err.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.contains("step 2/") {
            // SAFETY: sending a signal to our own child process.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        }
        line.clear();
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{seen}");
    assert!(seen.contains("resume with"), "{seen}");
    assert!(run_dir(&out).join("checkpoints/last.safetensors").is_file());
}

#[test]
fn diverging_loss_stops_with_the_step_and_keeps_the_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tiny(tmp.path(), "nan", "{method: simclr}", "");
    let f = file.to_str().unwrap();
    let out = tmp.path().join("out");
    let o = recipe(&[
        "run",
        f,
        "--out",
        out.to_str().unwrap(),
        "--stop-after-steps",
        "6",
    ]);
    assert_eq!(o.status.code(), Some(130), "{}", text(&o.stderr));
    let dir = run_dir(&out);
    let last = dir.join("checkpoints/last.safetensors");
    let before = tensors_of(&last);
    // An absurd learning rate from the second epoch on: the weights blow up at once.
    let o = recipe(&[
        "run",
        f,
        "--resume",
        dir.to_str().unwrap(),
        "--force",
        "--set",
        "optimizer.lr=1.0e+30",
        "--set",
        "schedule={kind: constant}",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(err.contains("diverged") && err.contains("epoch 2"), "{err}");
    let back = err
        .lines()
        .find_map(|l| l.split_once("to continue with the previous one: recipe "))
        .map(|(_, cmd)| cmd.split_whitespace().collect::<Vec<_>>())
        .unwrap_or_else(|| panic!("no way back in:\n{err}"));
    // The forced change re-stamps the checkpoint with the new recipe's hash; the state
    // in it is the last good one.
    assert_eq!(
        tensors_of(&last),
        before,
        "the last good checkpoint is kept"
    );
    assert!(!dir.join("results.json").exists());
    // The printed way back works: the previous recipe finishes the run.
    let o = recipe(&back);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let now = std::fs::read_to_string(dir.join("recipe.yaml")).unwrap();
    assert!(now.contains("lr: 0.05"), "{now}");
}

#[test]
fn unwritable_output_is_refused_before_training() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tiny(tmp.path(), "w", "{method: simclr}", "");
    let blocker = tmp.path().join("a-file");
    std::fs::write(&blocker, "not a directory").unwrap();
    let o = recipe(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        blocker.join("runs").to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("cannot create the output directory"));
    assert!(!text(&o.stderr).contains("step 1"));
}

#[test]
fn eval_reruns_tasks_on_a_saved_run() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tiny(tmp.path(), "e", "{method: simclr}", "");
    let out = tmp.path().join("out");
    let o = recipe(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--set",
        "train.epochs=1",
        "--set",
        "schedule={kind: constant}",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let dir = run_dir(&out);
    let d = dir.to_str().unwrap();
    let o = recipe(&["eval", d, "--task", "knn"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stdout).contains("knn top-1"), "{}", text(&o.stdout));
    let entries = || -> Vec<serde_json::Value> {
        let ev: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("eval.json")).unwrap()).unwrap();
        ev["downstream"].as_array().unwrap().clone()
    };
    assert_eq!(entries().len(), 1);
    assert_eq!(entries()[0]["config"]["k"], 5);
    let o = recipe(&["eval", tmp.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));

    // A typo is an error with a suggestion, and eval.json is left alone.
    let before = std::fs::read(dir.join("eval.json")).unwrap();
    let o = recipe(&["eval", d, "--task", "linear"]);
    assert_eq!(o.status.code(), Some(2));
    insta::assert_snapshot!("eval_unknown_task", text(&o.stderr));
    assert!(
        text(&o.stderr).contains("did you mean `linear_probe`"),
        "{}",
        text(&o.stderr)
    );
    // A task the recipe lacks says how to add it.
    let o = recipe(&["eval", d, "--task", "fine_tune"]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    insta::assert_snapshot!("eval_absent_task", err.replace(d, "<run>"));
    assert!(
        err.contains("has no `fine_tune` task (it has: knn, linear_probe)")
            && err.contains("--set 'downstream=[{task: fine_tune}]'"),
        "{err}"
    );
    // Training keys cannot change after training.
    let o = recipe(&["eval", d, "--set", "train.epochs=5"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("only `downstream`"));
    assert_eq!(std::fs::read(dir.join("eval.json")).unwrap(), before);

    // Another configuration adds an entry; the same one replaces its entry.
    let o = recipe(&["eval", d, "--set", "downstream=[{task: knn, k: 3}]"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(entries().len(), 2);
    let o = recipe(&["eval", d, "--task", "knn"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let e = entries();
    assert_eq!(e.len(), 2);
    assert_eq!(e[0]["config"]["k"], 5);
    assert_eq!(e[1]["config"]["k"], 3);
    assert_eq!(e[1]["overrides"][0], "downstream=[{task: knn, k: 3}]");
    // Other label fractions without retraining; the report records each evaluation.
    let set = "downstream=[{task: knn, k: 3, label_fraction: [0.5, 1.0]}]";
    let o = recipe(&["eval", d, "--set", set]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("knn at 50% ("),
        "{}",
        text(&o.stdout)
    );
    assert_eq!(entries()[2]["by_fraction"].as_array().unwrap().len(), 2);
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert_eq!(
        report.matches("## Evaluation with `recipe eval`").count(),
        4,
        "{report}"
    );
    assert!(
        report.contains(&format!("- Override: `--set {set}`")),
        "{report}"
    );
    assert!(
        report.contains("### Label efficiency: kNN top-1 (k=3) (%)"),
        "{report}"
    );
}

/// The `resume with:` line a stopped run printed, as arguments.
fn resume_args(stderr: &str) -> Vec<String> {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("resume with: recipe "))
        .unwrap_or_else(|| panic!("no resume line in:\n{stderr}"));
    line.split_whitespace().map(String::from).collect()
}

fn results(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap()
}

#[test]
fn the_printed_resume_command_works_after_overrides() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tiny(tmp.path(), "r", "{method: simclr}", "");
    let out = tmp.path().join("out");
    let o = recipe(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--set",
        "train.epochs=3",
        "--set",
        "downstream=[{task: knn, k: 5}]",
        "--stop-after-steps",
        "8",
    ]);
    assert_eq!(o.status.code(), Some(130), "{}", text(&o.stderr));
    let args = resume_args(&text(&o.stderr));
    assert_eq!(args[..2], ["run", "--resume"], "{args:?}");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = recipe(&args);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let dir = run_dir(&out);
    let res = results(&dir);
    // The whole run, not only the resumed part.
    assert_eq!(res["training"]["epochs"], 3);
    assert_eq!(res["training"]["steps"], 18);
    assert_eq!(res["training"]["this_invocation"]["steps"], 10);
    assert_eq!(res["training"]["images"], 18 * 32 * 2);
    assert!(
        res["training"]["seconds"].as_f64().unwrap()
            > res["training"]["this_invocation"]["seconds"]
                .as_f64()
                .unwrap()
    );
    // What made the run.
    assert_eq!(res["recipe"], file.to_str().unwrap());
    assert_eq!(res["overrides"][0], "train.epochs=3");
    assert_eq!(res["invocations"].as_array().unwrap().len(), 2);
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(
        report.starts_with("# tiny (with train.epochs=3, downstream=[{task: knn, k: 5}])"),
        "{report}"
    );
    assert!(report.contains("## How this run was made"), "{report}");
}

#[test]
fn forcing_more_epochs_continues_the_schedule_records_the_change_and_resumes_plainly() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tiny(tmp.path(), "x", "{method: simclr}", "");
    let f = file.to_str().unwrap();
    let out = tmp.path().join("out");
    let o = recipe(&["run", f, "--out", out.to_str().unwrap(), "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let dir = run_dir(&out);
    let d = dir.to_str().unwrap();
    let first = std::fs::read_to_string(dir.join("results.json")).unwrap();

    // A finished run is not silently retrained or re-evaluated.
    let o = recipe(&["run", "--resume", d]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("has finished"),
        "{}",
        text(&o.stderr)
    );

    // A change is refused with both values and the two ways on.
    let o = recipe(&["run", "--resume", d, "--set", "train.epochs=3"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    insta::assert_snapshot!("resume_refuses_a_changed_recipe", err.replace(d, "<run>"));
    assert!(err.contains("train.epochs: 2 → 3"), "{err}");
    assert!(
        err.contains(&format!("`recipe run --resume {d}` alone")),
        "{err}"
    );
    assert!(err.contains("add --force"), "{err}");

    // Forced: stopped two steps into the new epoch.
    let o = recipe(&[
        "run",
        "--resume",
        d,
        "--set",
        "train.epochs=3",
        "--force",
        "--stop-after-steps",
        "14",
    ]);
    assert_eq!(o.status.code(), Some(130), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("continues from step 12 (epoch 2) with a changed recipe")
            && err.contains("train.epochs: 2 → 3"),
        "{err}"
    );
    // recipe.yaml is the recipe in force; the earlier one and its results are kept.
    let now = std::fs::read_to_string(dir.join("recipe.yaml")).unwrap();
    assert!(now.contains("epochs: 3"), "{now}");
    let kept = dir.join("history/step-000012");
    assert_eq!(
        std::fs::read_to_string(kept.join("results.json")).unwrap(),
        first
    );
    assert!(
        std::fs::read_to_string(kept.join("recipe.yaml"))
            .unwrap()
            .contains("epochs: 2")
    );
    assert!(!dir.join("results.json").exists());
    let inv: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("invocations.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(inv.len(), 2);
    assert_eq!(inv[1]["start_step"], 12);
    assert_eq!(inv[1]["changes"][0]["key"], "train.epochs");
    assert_eq!(inv[1]["changes"][0]["old"], 2);
    assert_eq!(inv[1]["changes"][0]["new"], 3);

    // The schedule continues as if three epochs had been planned: the learning rates
    // of steps 13-14 are those a planned 3-epoch run logs there (no second warmup).
    let planned = tmp.path().join("planned");
    let o = recipe(&[
        "run",
        f,
        "--out",
        planned.to_str().unwrap(),
        "--set",
        "train.epochs=3",
        "--stop-after-steps",
        "14",
    ]);
    assert_eq!(o.status.code(), Some(130), "{}", text(&o.stderr));
    let lrs = |dir: &Path| -> Vec<String> {
        std::fs::read_to_string(dir.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["kind"] == "step" && v["step"].as_u64().unwrap() > 12)
            .map(|v| v["lr"].to_string())
            .collect()
    };
    assert_eq!(lrs(&dir), lrs(&run_dir(&planned)));
    assert_eq!(lrs(&dir).len(), 2);

    // A plain resume continues the changed run (the checkpoint carries its recipe).
    let o = recipe(&["run", "--resume", d, "-q"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let res = results(&dir);
    assert_eq!(res["training"]["epochs"], 3);
    assert_eq!(res["training"]["steps"], 18);
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(
        report.contains("changed from step 12: `train.epochs`: 2 → 3"),
        "{report}"
    );
}
