//! The training curves of a run, drawn from its `metrics.jsonl` once training is over:
//! `loss.png` (logged steps and epoch means), `lr.png`, and `knn.png` when periodic kNN
//! recorded any epoch; `collapse.png` and `rank.png` from the collapse indicators.

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

/// Draws the collapse indicators recorded in `dir`'s epoch records: `collapse.png` (the
/// normalised-embedding std of the projector output and of the backbone features,
/// beside `healthy_std`, the `1/√d` of spread-out embeddings) and `rank.png` (the
/// backbone features' effective rank; at most `max_rank`). Returns `(title, file)` of
/// each picture, none when no epoch recorded them.
pub fn collapse_curves(
    dir: &Path,
    healthy_std: f64,
    max_rank: usize,
) -> Result<Vec<(String, String)>, ReportError> {
    let recs = read_jsonl(&dir.join(JSONL_FILE))?;
    let series = |field: &str, name: &str| Series {
        name: name.to_string(),
        points: recs
            .iter()
            .filter(|r| r.kind == Kind::Epoch)
            .filter_map(|r| r.get(field).map(|v| (r.step as f64, v)))
            .collect(),
    };
    let emb = series("embedding_std", "projector output");
    if emb.points.is_empty() {
        return Ok(Vec::new());
    }
    let (first, last) = (emb.points[0].0, emb.points[emb.points.len() - 1].0);
    let healthy = Series {
        name: format!("projector's 1/√d = {healthy_std:.4} (spread out)"),
        points: vec![(first, healthy_std), (last, healthy_std)],
    };
    line_chart(
        &dir.join("collapse.png"),
        "Std of L2-normalised embeddings (0 = collapsed)",
        "step",
        &[emb, series("feature_std", "backbone features"), healthy],
    )?;
    line_chart(
        &dir.join("rank.png"),
        &format!("Effective rank of the backbone features (RankMe; at most {max_rank})"),
        "step",
        &[series("feature_rank", "effective rank")],
    )?;
    Ok(vec![
        (
            "Collapse indicator: std of L2-normalised embeddings".into(),
            "collapse.png".into(),
        ),
        (
            "Effective rank of the backbone features".into(),
            "rank.png".into(),
        ),
    ])
}
