//! The training curves of a run, drawn from its `metrics.jsonl` once training is over:
//! `loss.png` (logged steps and epoch means), `lr.png`, and `knn.png` when periodic kNN
//! recorded any epoch.

use std::path::Path;

use super::ReportError;
use super::metrics::{JSONL_FILE, Kind, read_jsonl};
use super::plots::{Series, line_chart};

/// Draws the curves into `dir` and returns `(title, file name)` of each picture.
pub fn training_curves(dir: &Path) -> Result<Vec<(String, String)>, ReportError> {
    let recs = read_jsonl(&dir.join(JSONL_FILE))?;
    let series = |kind: Kind, field: &str, name: &str| Series {
        name: name.to_string(),
        points: recs
            .iter()
            .filter(|r| r.kind == kind)
            .filter_map(|r| r.get(field).map(|v| (r.step as f64, v)))
            .collect(),
    };
    let mut figs = Vec::new();
    line_chart(
        &dir.join("loss.png"),
        "Training loss",
        "step",
        &[
            series(Kind::Step, "loss", "loss (logged steps)"),
            series(Kind::Epoch, "loss", "epoch mean"),
        ],
    )?;
    figs.push(("Training loss".into(), "loss.png".into()));
    line_chart(
        &dir.join("lr.png"),
        "Learning rate",
        "step",
        &[series(Kind::Step, "lr", "learning rate")],
    )?;
    figs.push(("Learning rate".into(), "lr.png".into()));
    let knn_pts = series(Kind::Epoch, "knn_top1", "kNN top-1 (%)");
    if !knn_pts.points.is_empty() {
        line_chart(
            &dir.join("knn.png"),
            "kNN accuracy during training",
            "step",
            &[knn_pts],
        )?;
        figs.push(("kNN top-1 over training".into(), "knn.png".into()));
    }
    Ok(figs)
}
