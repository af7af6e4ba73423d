//! The rules of the downstream tasks (labels, `k`, probe settings, periodic kNN).

use super::*;

pub(super) fn check_downstream(r: &Recipe, out: &mut Vec<Diagnostic>) {
    use crate::spec::downstream::Task;
    for (i, t) in r.downstream.iter().enumerate() {
        let p = format!("downstream.{i}");
        if t.needs_labels() && !r.data.labels {
            err(
                out,
                format!("{p}.task"),
                format!(
                    "`{}` needs labelled data, but `data.labels` is false",
                    t.name()
                ),
            )
            .help =
                Some("set `data.labels: true` with a labelled source, or remove this task".into());
        } else if t.needs_labels() && !r.data.source.has_test_split() && r.data.test_fraction == 0.0
        {
            let (what, add) = match &r.data.source {
                Source::Idx { .. } => (
                    "these IDX files have no test images",
                    "add `test_images` and `test_labels` to `data.source`",
                ),
                _ => (
                    "this image folder has no `test` folder",
                    "add `test:` (a folder with the same class subfolders) to `data.source`",
                ),
            };
            err(
                out,
                format!("{p}.task"),
                format!(
                    "`{}` is measured on a test split, but {what} and `data.test_fraction` is 0",
                    t.name()
                ),
            )
            .help = Some(format!(
                "set `data.test_fraction: 0.1` to hold out 10% of the training images as the test split, or {add}"
            ));
        }
        match t {
            Task::Knn {
                k,
                temperature,
                every_epochs,
                ..
            } => {
                if *k == 0 {
                    err(out, format!("{p}.k"), "k must be at least 1");
                }
                if r.train.epochs > 0 && *every_epochs > r.train.epochs {
                    err(
                        out,
                        format!("{p}.every_epochs"),
                        format!(
                            "every_epochs ({every_epochs}) is longer than training ({} epochs), so the kNN would never run during training",
                            r.train.epochs
                        ),
                    )
                    .help = Some(format!(
                        "use at most {}, or 0 to run it only after training",
                        r.train.epochs
                    ));
                }
                positive(
                    out,
                    &format!("{p}.temperature"),
                    "temperature",
                    *temperature,
                );
            }
            Task::LinearProbe {
                epochs,
                batch_size,
                lr,
                weight_decay,
                ..
            } => {
                let wds = weight_decay.candidates();
                probe_common(out, &p, *epochs, *batch_size, *lr, 0.0);
                if wds.is_empty() {
                    err(
                        out,
                        format!("{p}.weight_decay"),
                        "list at least one weight decay to choose from",
                    );
                }
                if wds.iter().any(|w| w.is_nan() || *w < 0.0) {
                    err(
                        out,
                        format!("{p}.weight_decay"),
                        "weight_decay cannot be negative",
                    );
                }
            }
            Task::FineTune {
                epochs,
                batch_size,
                lr,
                backbone_lr_scale,
                weight_decay,
            } => {
                probe_common(out, &p, *epochs, *batch_size, *lr, *weight_decay);
                if *backbone_lr_scale < 0.0 {
                    err(
                        out,
                        format!("{p}.backbone_lr_scale"),
                        "backbone_lr_scale cannot be negative",
                    );
                }
            }
            Task::Visualize {
                plots,
                samples,
                perplexity,
                ..
            } => {
                if plots.is_empty() {
                    err(out, format!("{p}.plots"), "list at least one plot");
                }
                if *samples < 2 {
                    err(
                        out,
                        format!("{p}.samples"),
                        "an embedding plot needs at least 2 samples",
                    );
                }
                check_perplexity(out, &p, plots, *samples, *perplexity);
            }
        }
    }
}

pub(super) fn probe_common(
    out: &mut Vec<Diagnostic>,
    p: &str,
    epochs: usize,
    batch: usize,
    lr: f64,
    wd: f64,
) {
    if epochs == 0 {
        err(out, format!("{p}.epochs"), "epochs must be at least 1");
    }
    if batch == 0 {
        err(
            out,
            format!("{p}.batch_size"),
            "batch_size must be at least 1",
        );
    }
    positive(out, &format!("{p}.lr"), "the learning rate", lr);
    if wd < 0.0 {
        err(
            out,
            format!("{p}.weight_decay"),
            "weight_decay cannot be negative",
        );
    }
}

/// t-SNE's perplexity: positive, and small enough for `samples` points to give every
/// point its 3 × perplexity neighbours.
fn check_perplexity(
    out: &mut Vec<Diagnostic>,
    p: &str,
    plots: &[crate::spec::downstream::Plot],
    samples: usize,
    perplexity: f64,
) {
    use crate::spec::downstream::Plot;
    if perplexity <= 0.0 {
        err(
            out,
            format!("{p}.perplexity"),
            format!("t-SNE's perplexity must be positive, found {perplexity}"),
        )
        .help = Some("30 is the usual value; 5–50 the usual range".into());
        return;
    }
    if !plots.contains(&Plot::EmbeddingTsne) || samples < 2 {
        return;
    }
    let max = (samples - 1) as f64 / 3.0;
    if perplexity > max {
        err(
            out,
            format!("{p}.perplexity"),
            format!(
                "perplexity {perplexity} is more than {samples} samples allow: t-SNE gives \
                 each point 3 × perplexity neighbours, so at most (samples − 1) / 3 = {max:.2}"
            ),
        )
        .help = Some(format!(
            "lower `perplexity` to at most {}, or raise `samples` to at least {}",
            max.floor(),
            (3.0 * perplexity).ceil() as usize + 1
        ));
    }
}
