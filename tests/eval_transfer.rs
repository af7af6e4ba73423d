//! Transfer: downstream tasks with their own `data` section, end to end through the
//! binary. A 1-channel 28×28 encoder is measured on an RGB 32×32 image folder (colour
//! to luma, resized), a 3-channel 32×32 encoder on the gray 28×28 built-in images
//! (gray replicated, resized), and `recipe eval --set` re-evaluates a saved encoder on
//! another dataset without retraining. The diagnostics for a shape mismatch without a
//! conversion key are snapshots in `tests/invalid/transfer_*.yaml`.

use std::path::{Path, PathBuf};

mod common;
use common::{recipe, run_dir, text};

/// The tiny pretraining recipe (2% of the built-in Fashion-MNIST, two short epochs) at
/// `channels` × `size`², with `downstream` appended.
fn tiny(dir: &Path, channels: usize, size: usize, downstream: &str) -> PathBuf {
    let norm = if channels == 1 {
        "{mean: [0.286], std: [0.353]}"
    } else {
        "{mean: [0.286, 0.286, 0.286], std: [0.353, 0.353, 0.353]}"
    };
    let text = format!(
        r#"version: 1
name: tiny
seed: 3
data:
  source: {{format: builtin}}
  image_size: {size}
  channels: {channels}
  subset: 0.02
  normalize: {norm}
augment:
  views: 2
  pipeline:
    - random_resized_crop: {{size: 16, scale: [0.3, 1.0]}}
    - horizontal_flip: {{p: 0.5}}
model:
  backbone: {{arch: small_cnn, channels: [8, 16]}}
  head: {{hidden: [16], out_dim: 8, batch_norm: true}}
loss: {{method: simclr, temperature: 0.5}}
optimizer: {{name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 1.0e-4}}
schedule: {{kind: warmup_cosine, warmup_epochs: 0}}
train: {{epochs: 1, batch_size: 32, threads: 2, watch_samples: 0}}
downstream:
{downstream}"#
    );
    let p = dir.join("tiny.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

/// An RGB 32×32 image folder with `train/` and `test/` splits of two classes:
/// horizontal and vertical stripes of random colour, nearly in phase.
fn stripes(root: &Path) {
    let mut seed = 7u32;
    let mut next = move || {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        seed >> 16
    };
    for (split, n) in [("train", 24), ("test", 12)] {
        for (class, horizontal) in [("horizontal", true), ("vertical", false)] {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..n {
                let colour = [
                    (next() % 256) as u8,
                    (next() % 256) as u8,
                    (next() % 256) as u8,
                ];
                let phase = next() % 2;
                let img = image::RgbImage::from_fn(32, 32, |x, y| {
                    let t = if horizontal { y } else { x };
                    if (t + phase) % 8 < 4 {
                        image::Rgb(colour)
                    } else {
                        image::Rgb([20, 20, 20])
                    }
                });
                img.save(dir.join(format!("{i}.png"))).unwrap();
            }
        }
    }
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn top1(entry: &serde_json::Value, row: &str) -> f64 {
    entry[row]["top1"]
        .as_f64()
        .unwrap_or_else(|| panic!("no {row} top-1 in {entry}"))
}

#[test]
fn gray_encoder_on_an_rgb_folder_converts_to_luma_and_resizes() {
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("stripes");
    stripes(&folder);
    let task_data = format!(
        "    data:\n      source: {{format: image_folder, train: {0}/train, test: {0}/test}}\n      \
         image_size: 28\n      channels: 1\n",
        folder.display()
    );
    let down = format!(
        "  - {{task: knn, k: 5}}\n  - task: knn\n    k: 5\n    label_fraction: [0.25, 1.0]\n{task_data}  \
         - task: linear_probe\n    epochs: 5\n{task_data}"
    );
    let file = tiny(tmp.path(), 1, 28, &down);
    // Validation reports the conversions loading makes for the task's data.
    let v = recipe(&["validate", file.to_str().unwrap()]);
    let err = text(&v.stderr) + &text(&v.stdout);
    assert!(v.status.success(), "{err}");
    assert!(
        err.contains("downstream.1.data.channels") && err.contains("to 1 channel"),
        "{err}"
    );
    assert!(
        err.contains("downstream.1.data.image_size") && err.contains("28×28"),
        "{err}"
    );
    let out = tmp.path().join("runs");
    let o = recipe(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    let stdout = text(&o.stdout);
    assert!(o.status.success(), "{}\n{stdout}", text(&o.stderr));
    assert!(
        stdout.contains("knn on stripes at 25% (12 labels)"),
        "{stdout}"
    );
    let dir = run_dir(&out);
    let res = json(&dir.join("results.json"));
    let tasks = res["downstream"].as_array().unwrap();
    assert_eq!(tasks.len(), 3);
    assert!(tasks[0].get("data").is_none(), "{}", tasks[0]);
    for t in &tasks[1..] {
        assert_eq!(t["data"], "stripes", "{t}");
        for row in ["trained", "untrained_network", "raw_pixels"] {
            let v = top1(t, row);
            assert!((0.0..=100.0).contains(&v), "{row}: {v}");
        }
    }
    // Stripes are easy for raw pixels: the images really are the folder's.
    assert!(top1(&tasks[2], "raw_pixels") > 80.0, "{}", tasks[2]);
    let by = tasks[1]["by_fraction"].as_array().unwrap();
    assert_eq!(by[0]["labels"], 12);
    assert_eq!(by[1]["labels"], 48);
    assert!(dir.join("label_efficiency_knn_stripes.png").is_file());
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(report.contains("kNN top-1 (k=5) · stripes"), "{report}");
    assert!(report.contains("Label efficiency: kNN top-1 (k=5) · stripes"));
    assert!(
        report.contains("48 training and 24 test images"),
        "{report}"
    );
    // Metrics records of a task on its own data carry its label.
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"knn_top1_stripes\""), "{metrics}");
}

#[test]
fn rgb_encoder_on_gray_images_replicates_and_resizes_and_eval_switches_data() {
    let tmp = tempfile::tempdir().unwrap();
    // A 3×32×32 encoder; its task data are the gray 28×28 built-in images.
    let down = "  - task: knn\n    k: 5\n    data:\n      source: {format: builtin}\n      \
                image_size: 32\n      channels: 3\n      subset: 0.05\n";
    let file = tiny(tmp.path(), 3, 32, down);
    let out = tmp.path().join("runs");
    let o = recipe(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let dir = run_dir(&out);
    let res = json(&dir.join("results.json"));
    let t = &res["downstream"][0];
    assert_eq!(t["data"], "fashion_mnist", "{t}");
    assert!(top1(t, "raw_pixels") > 40.0, "{t}");

    // Without `channels: 3` the task's default matches, but a 1-channel section is
    // refused with the key that fixes it, before any work.
    let bad = recipe(&[
        "eval",
        dir.to_str().unwrap(),
        "--set",
        "downstream=[{task: knn, data: {source: {format: builtin}, image_size: 28, channels: 1}}]",
    ]);
    let err = text(&bad.stderr);
    assert!(!bad.status.success());
    assert!(
        err.contains("the encoder takes 3-channel images") && err.contains("set `channels: 3`"),
        "{err}"
    );
    assert!(
        err.contains("the encoder takes 32×32 images") && err.contains("set `image_size: 32`"),
        "{err}"
    );

    // `recipe eval --set` measures the saved encoder on other data, without training.
    let ev = recipe(&[
        "eval",
        dir.to_str().unwrap(),
        "--set",
        "downstream=[{task: knn, k: 5, label_fraction: [0.1, 1.0], data: {source: {format: builtin}, \
         image_size: 32, channels: 3, subset: 0.03}}]",
    ]);
    assert!(ev.status.success(), "{}", text(&ev.stderr));
    let e = json(&dir.join("eval.json"));
    let entry = &e["downstream"][0];
    assert_eq!(entry["data"], "fashion_mnist");
    assert_eq!(entry["config"]["data"]["subset"], 0.03);
    assert_eq!(entry["by_fraction"][1]["labels"], 300);
    assert!(
        entry["overrides"][0]
            .as_str()
            .unwrap()
            .contains("subset: 0.03")
    );
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(report.contains("Override: `--set downstream=[{task: knn, k: 5"));
}
