//! The rules of the downstream tasks (labels, `k`, probe settings, periodic kNN).

use super::*;

pub(super) fn check_downstream(r: &Recipe, out: &mut Vec<Diagnostic>) {
    use crate::spec::downstream::Task;
    for (i, t) in r.downstream.iter().enumerate() {
        let p = format!("downstream.{i}");
        // The data the task evaluates on: its own (transfer) or the pretraining data.
        let (d, dp) = match t.data() {
            Some(own) => {
                transfer(r, own, &p, t, out);
                (own, format!("{p}.data"))
            }
            None => (&r.data, "data".to_string()),
        };
        if t.needs_labels() && !d.labels {
            err(
                out,
                format!("{p}.task"),
                format!(
                    "`{}` needs labelled data, but `{dp}.labels` is false",
                    t.name()
                ),
            )
            .help = Some(format!(
                "set `{dp}.labels: true` with a labelled source, or remove this task"
            ));
        } else if t.needs_labels() && !d.source.has_test_split() && d.test_fraction == 0.0 {
            let (what, add) = match &d.source {
                Source::Idx { .. } => (
                    "these IDX files have no test images",
                    "add `test_images` and `test_labels` to",
                ),
                _ => (
                    "this image folder has no `test` folder",
                    "add `test:` (a folder with the same class subfolders) to",
                ),
            };
            err(
                out,
                format!("{p}.task"),
                format!(
                    "`{}` is measured on a test split, but {what} and `{dp}.test_fraction` is 0",
                    t.name()
                ),
            )
            .help = Some(format!(
                "set `{dp}.test_fraction: 0.1` to hold out 10% of the training images as the test split, or {add} `{dp}.source`"
            ));
        }
        match t {
            Task::Knn {
                k,
                temperature,
                every_epochs,
                label_fraction,
                ..
            } => {
                fractions(out, &p, label_fraction);
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
                label_fraction,
                ..
            } => {
                fractions(out, &p, label_fraction);
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
                label_fraction,
                supervised,
                ..
            } => {
                let n = fractions(out, &p, label_fraction);
                per_fraction_epochs(out, &format!("{p}.epochs"), epochs, n);
                let bs = format!("{p}.batch_size");
                per_fraction_counts(out, &bs, "batch_size", 2, batch_size, n);
                let first = epochs.values().first().copied().unwrap_or(1);
                // batch_size is checked above, per fraction.
                probe_common(out, &p, first, 2, *lr, *weight_decay);
                if let Some(s) = supervised {
                    per_fraction_epochs(out, &format!("{p}.supervised.epochs"), &s.epochs, n);
                    positive(out, &format!("{p}.supervised.lr"), "lr", s.lr);
                    if s.weight_decay.is_nan() || s.weight_decay < 0.0 {
                        err(
                            out,
                            format!("{p}.supervised.weight_decay"),
                            "weight_decay cannot be negative",
                        );
                    }
                }
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

/// The rules of a task's own `data` section (transfer): the section's own rules, and
/// that its images reach the encoder at the encoder's input shape. The conversions are
/// the section's `channels` (gray ↔ RGB) and `image_size` (resize) keys, so a mismatch
/// names the key to set rather than converting silently.
fn transfer(
    r: &Recipe,
    own: &crate::spec::data::Data,
    p: &str,
    t: &crate::spec::downstream::Task,
    out: &mut Vec<Diagnostic>,
) {
    use crate::spec::data::MixedSizes;
    use crate::spec::downstream::Task;
    let at = format!("{p}.data");
    check_data_section(own, &at, out);
    let enc = &r.data;
    if own.channels != enc.channels && matches!(own.channels, 1 | 3) {
        let how = if enc.channels == 3 {
            "a gray source is replicated to 3 channels"
        } else {
            "a colour source is converted to luma"
        };
        err(
            out,
            format!("{at}.channels"),
            format!(
                "the encoder takes {}-channel images (`data.channels: {}`), but this task's \
                 data gives it {}",
                enc.channels, enc.channels, own.channels
            ),
        )
        .help = Some(format!(
            "set `channels: {}` in this task's `data` ({how})",
            enc.channels
        ));
    }
    if own.image_size != enc.image_size {
        err(
            out,
            format!("{at}.image_size"),
            format!(
                "the encoder takes {0}×{0} images (`data.image_size: {0}`), but this task's \
                 data gives it {1}×{1}",
                enc.image_size, own.image_size
            ),
        )
        .help = Some(format!(
            "set `image_size: {}` in this task's `data` (images of another size are resized, \
             bilinear)",
            enc.image_size
        ));
    }
    // A source whose size is known here, at another size, with resizing refused.
    let native = match &own.source {
        // Every built-in dataset is 28×28.
        Source::Builtin { .. } => Some(28),
        Source::Cifar { .. } => Some(32),
        _ => None,
    };
    if let Some(n) = native
        && n != own.image_size
        && own.mixed_sizes == MixedSizes::Error
    {
        err(
            out,
            format!("{at}.mixed_sizes"),
            format!(
                "this source's images are {n}×{n}, `image_size` is {0}×{0}, and \
                 `mixed_sizes: error` refuses to resize them",
                own.image_size
            ),
        )
        .help = Some("set `mixed_sizes: resize` in this task's `data`".into());
    }
    if let Task::Knn { every_epochs, .. } = t
        && *every_epochs > 0
    {
        err(
            out,
            format!("{p}.every_epochs"),
            "`every_epochs` measures the pretraining data during training; a task with its \
             own `data` runs after training only",
        )
        .help = Some(
            "remove `every_epochs` here, or add a `knn` task without `data` that has it".into(),
        );
    }
}

/// The rules of a task's `label_fraction`; returns how many fractions it lists.
fn fractions(
    out: &mut Vec<Diagnostic>,
    p: &str,
    f: &crate::spec::downstream::LabelFraction,
) -> usize {
    let values = f.values();
    let path = format!("{p}.label_fraction");
    if values.is_empty() {
        err(out, path.clone(), "list at least one label fraction").help =
            Some("use `label_fraction: 1.0` for every label, or e.g. `[0.01, 0.1, 1.0]`".into());
    }
    for v in &values {
        if !(*v > 0.0 && *v <= 1.0) {
            err(
                out,
                path.clone(),
                format!("a label fraction must be in (0, 1], found {v}: it is the share of the training labels the task may use"),
            )
            .help = Some("write 1% as 0.01".into());
        }
    }
    let mut sorted = values.clone();
    sorted.sort_by(f64::total_cmp);
    if sorted.windows(2).any(|w| w[0] == w[1]) {
        err(out, path, "each label fraction may be listed once");
    }
    values.len()
}

/// `epochs` as one value or one per label fraction (`n` of them).
fn per_fraction_epochs(
    out: &mut Vec<Diagnostic>,
    path: &str,
    epochs: &crate::spec::downstream::Epochs,
    n: usize,
) {
    per_fraction_counts(out, path, "epochs", 1, epochs, n);
}

/// A count (`what`: epochs, batch_size) of at least `min`, as one value or one per
/// label fraction (`n` of them).
fn per_fraction_counts(
    out: &mut Vec<Diagnostic>,
    path: &str,
    what: &str,
    min: usize,
    counts: &crate::spec::downstream::Epochs,
    n: usize,
) {
    use crate::spec::downstream::Epochs;
    if counts.values().iter().any(|&v| v < min) {
        let why = if what == "batch_size" {
            " (fine-tuning's batch norm trains on batch statistics)"
        } else {
            ""
        };
        err(out, path, format!("{what} must be at least {min}{why}"));
    }
    if let Epochs::PerFraction(v) = counts
        && v.len() != n
    {
        err(
            out,
            path,
            format!(
                "a list of {what} gives one value per label fraction; there are {n} fraction(s) and {} value(s)",
                v.len()
            ),
        )
        .help = Some(format!(
            "list {n} value(s) in the order of `label_fraction`, or give one number for all"
        ));
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
