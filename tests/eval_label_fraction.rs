//! Label efficiency end to end: `label_fraction` on kNN, the linear probe and
//! fine-tuning, the supervised baseline, and what the run directory shows of them.

use std::path::{Path, PathBuf};

mod common;
use common::{recipe, text};

const RECIPE: &str = r#"version: 1
name: fractions
seed: 5
data:
  source: {format: builtin}
  image_size: 28
  channels: 1
  subset: 0.02
  normalize: {mean: [0.286], std: [0.353]}
augment:
  views: 2
  pipeline:
    - random_resized_crop: {size: 28, scale: [0.3, 1.0]}
    - horizontal_flip: {p: 0.5}
model:
  backbone: {arch: small_cnn, channels: [8, 16]}
  head: {hidden: [16], out_dim: 8, batch_norm: true}
loss: {method: simclr, temperature: 0.5}
optimizer: {name: sgd, lr: 0.05, momentum: 0.9, weight_decay: 1.0e-4}
schedule: {kind: warmup_cosine, warmup_epochs: 1}
train: {epochs: 2, batch_size: 32, threads: 2}
downstream:
  - {task: knn, k: 5, label_fraction: [0.1, 1.0]}
  - {task: linear_probe, epochs: 2, batch_size: 64, weight_decay: [0.0, 1.0e-3], label_fraction: [0.1, 1.0]}
  - {task: fine_tune, epochs: [2, 1], batch_size: [4, 16], augment: first_view, head_norm: true,
     label_fraction: [0.1, 1.0],
     supervised: {epochs: [2, 1], lr: 0.05}}
"#;

fn run(dir: &Path) -> (PathBuf, String) {
    let file = dir.join("fractions.yaml");
    std::fs::write(&file, RECIPE).unwrap();
    let out = dir.join("out");
    let o = recipe(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let run = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    (run, text(&o.stdout))
}

#[test]
fn fractions_give_balanced_subsets_tables_plots_and_a_supervised_row() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, stdout) = run(tmp.path());
    let res: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    let tasks = res["downstream"].as_array().unwrap();
    let mut label_counts = Vec::new();
    for t in tasks {
        let name = t["task"].as_str().unwrap();
        let by = t["by_fraction"]
            .as_array()
            .unwrap_or_else(|| panic!("{name}: {t}"));
        assert_eq!(by.len(), 2, "{name}");
        assert_eq!(by[0]["fraction"], 0.1);
        assert_eq!(by[1]["fraction"], 1.0);
        // 10% of a class-balanced subset of 10 classes: the same per-class count.
        let small = by[0]["labels"].as_u64().unwrap();
        let all = by[1]["labels"].as_u64().unwrap();
        assert_eq!(small % 10, 0, "{name}: {small} labels");
        assert!(
            small * 10 <= all + 10 && small * 10 + 10 >= all,
            "{name}: {small} of {all}"
        );
        label_counts.push((small, all));
        // The largest fraction fills the row keys, as a task without fractions does.
        assert_eq!(t["trained"], by[1]["trained"], "{name}");
        for row in ["trained", "untrained_network"] {
            let v = by[0][row]["top1"].as_f64().unwrap();
            assert!((0.0..=100.0).contains(&v), "{name} {row}: {v}");
        }
    }
    // Every task saw the same number of labelled images at each fraction.
    assert!(
        label_counts.windows(2).all(|w| w[0] == w[1]),
        "{label_counts:?}"
    );
    let knn = &tasks[0];
    assert!(knn["by_fraction"][0]["raw_pixels"]["top1"].is_number());
    let probe = &tasks[1];
    // 2 images per class at 10%: the weight decay is cross-validated, still scored.
    assert!(
        probe["by_fraction"][0]["trained"]["held_out_top1"].is_number(),
        "{probe}"
    );
    let ft = &tasks[2];
    assert!(
        ft["by_fraction"][0]["supervised"]["top1"].is_number(),
        "{ft}"
    );
    assert!(
        ft["by_fraction"][1]["supervised"]["top1"].is_number(),
        "{ft}"
    );
    assert!(ft["by_fraction"][0].get("raw_pixels").is_none());
    assert_eq!(
        ft["supervised"]["config"]["epochs"],
        serde_json::json!([2, 1])
    );

    // Per-fraction batch sizes (4 images per step at 10%, 16 with every label) and the
    // recipe's first view for the fine-tuned networks, and a batch norm before the
    // classifiers, recorded with the results.
    assert_eq!(ft["batch_size"], serde_json::json!([4, 16]), "{ft}");
    assert_eq!(ft["augment"], "first_view", "{ft}");
    assert_eq!(ft["head_norm"], true, "{ft}");

    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    for heading in [
        "### Label efficiency: kNN top-1 (k=5) (%)",
        "### Label efficiency: linear top-1 (%)",
        "### Label efficiency: fine-tune top-1 (%)",
    ] {
        assert!(report.contains(heading), "{heading} missing:\n{report}");
    }
    let small = label_counts[0].0;
    assert!(
        report.contains(&format!("| 10% ({small} labels) |")),
        "{report}"
    );
    assert!(report.contains("supervised (from scratch)"), "{report}");
    for task in ["knn", "linear_probe", "fine_tune"] {
        let png = dir.join(format!("label_efficiency_{task}.png"));
        let bytes = std::fs::read(&png).unwrap_or_else(|_| panic!("{} missing", png.display()));
        assert!(bytes.starts_with(b"\x89PNG"), "{}", png.display());
        assert!(
            report.contains(&format!("label_efficiency_{task}.png")),
            "{report}"
        );
    }
    assert!(
        stdout.contains(&format!("knn at 10% ({small} labels) top-1: trained")),
        "{stdout}"
    );
}
