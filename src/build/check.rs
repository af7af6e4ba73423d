//! The data check of `recipe validate`, `plan` and `run`: what `data::survey` finds,
//! as located diagnostics (missing paths, folder layout, undecodable headers), and the
//! warnings for settings the data makes pointless (conversions, method state larger
//! than the training set).

use crate::spec::Recipe;
use crate::spec::loss::Loss;

/// Checks a loaded recipe's data the way `plan` and `run` will read it, cheaply, and
/// adds located diagnostics; returns how many of them are errors (data errors are I/O
/// problems, exit code 2, where recipe errors are 1).
///
/// - Errors: a path that does not exist or has the wrong kind (file vs folder), and
///   what [`crate::data::survey`] finds loading would stop at (a flat folder with
///   labels requested, an empty class folder, a file whose image header does not
///   decode, bad IDX headers, truncated CIFAR batches, mixed sizes with
///   `mixed_sizes: error`).
/// - Warnings: conversions loading makes (channel count, resizing), with counts; and
///   method state sized beyond the training set (a MoCo queue or SwAV queue holding
///   more keys than there are images, more SwAV prototypes than images, memory-bank
///   negatives drawn from a smaller bank).
///
/// The work is bounded: headers only, at most [`crate::data::check::MAX_HEADERS`]
/// image files per folder, never a full decode.
pub fn check_data_paths(loaded: &mut crate::spec::Loaded) -> usize {
    use crate::diag::Diagnostic;
    let (Some(r), Some(doc)) = (&loaded.recipe, &loaded.document) else {
        return 0;
    };
    let span = |field: &str| crate::spec::load::span_of(doc, field);
    // `--set` paths are not made absolute (see `spec::load`): they are relative to the
    // current directory, unlike paths in recipe files.
    let help_for = |field: &str| {
        let source = span(field).map(|s| loaded.sources.get(s.file).name.as_str());
        match source {
            Some(flag) if crate::spec::load::is_argument_source(flag) => format!(
                "paths given with `{flag}` are relative to the current directory; `--no-data-check` skips this check"
            ),
            _ => "paths are relative to the recipe file that names them; `--no-data-check` skips this check".to_string(),
        }
    };
    let mut out = Vec::new();
    // The pretraining data, then each task's own (transfer).
    let mut sections = vec![("data".to_string(), &r.data)];
    for (i, t) in r.downstream.iter().enumerate() {
        if let Some(d) = t.data() {
            sections.push((format!("downstream.{i}.data"), d));
        }
    }
    for (at, d) in sections {
        let problems = crate::build::data::path_problems(d, &at);
        for p in &problems {
            out.push(
                Diagnostic::error(
                    p.field.clone(),
                    format!("`{}` {}", p.path.display(), p.problem),
                )
                .with_span(span(&p.field))
                .with_help(help_for(&p.field)),
            );
        }
        if !problems.is_empty() {
            continue;
        }
        let survey = crate::data::survey(&crate::build::data::config(d, r.seed));
        // A task's size that `mixed_sizes: error` refuses is already reported at the
        // key that fixes it (`spec::check`).
        let refused = format!("{at}.mixed_sizes");
        if at != "data" && loaded.diagnostics.iter().any(|e| e.path == refused) {
            continue;
        }
        for (field, e) in &survey.errors {
            let field = crate::build::data::recipe_field(d, &at, field);
            out.push(Diagnostic::error(field.clone(), e.to_string()).with_span(span(&field)));
        }
        out.extend(conversion_warnings(d, &at, &survey.conversions));
        if at == "data"
            && let Some(n) = survey.train_len
        {
            out.extend(state_warnings(r, training_len(r, n)));
        }
    }
    // A rule the recipe check already reported with a statically known size stays one.
    out.retain(|d| !loaded.diagnostics.iter().any(|e| e.path == d.path));
    for d in &mut out {
        if d.span.is_none() {
            d.span = span(&d.path);
        }
    }
    let errors = out.iter().filter(|d| d.is_error()).count();
    loaded.diagnostics.extend(out);
    errors
}

/// Images of a source of `n` training images left for training after the recipe's
/// hold-out and subset (about: both round per class).
fn training_len(r: &Recipe, n: usize) -> usize {
    let d = &r.data;
    let held = if d.source.has_test_split() {
        1.0
    } else {
        1.0 - d.test_fraction.clamp(0.0, 1.0)
    };
    ((n as f64) * held * d.subset.clamp(0.0, 1.0)).round() as usize
}

/// One warning per kind of conversion, counted over both splits.
fn conversion_warnings(
    d: &crate::spec::data::Data,
    at: &str,
    conversions: &[crate::data::Conversion],
) -> Vec<crate::diag::Diagnostic> {
    use crate::data::ConversionKind;
    use crate::diag::Diagnostic;
    let mut kinds: Vec<(ConversionKind, usize, usize)> = Vec::new();
    for c in conversions {
        match kinds.iter_mut().find(|(k, _, _)| *k == c.kind) {
            Some((_, count, of)) => {
                *count += c.count;
                *of += c.of;
            }
            None => kinds.push((c.kind, c.count, c.of)),
        }
    }
    let name = |c: usize| if c == 1 { "gray" } else { "RGB" };
    kinds
        .into_iter()
        .map(|(kind, count, of)| {
            let of = if of > count {
                format!(" of {of}")
            } else {
                String::new()
            };
            match kind {
                ConversionKind::Channels { from, to } => Diagnostic::warning(
                    format!("{at}.channels"),
                    format!(
                        "loading converts {count}{of} {} images to {to} channel{} ({at}.channels: {})",
                        name(from),
                        if to == 1 { "" } else { "s" },
                        d.channels
                    ),
                )
                .with_help(if at != "data" {
                    "the encoder's channel count (`data.channels`) decides this one".to_string()
                } else if to == 1 {
                    "colour is dropped (luma); set `data.channels: 3` to keep it".to_string()
                } else {
                    "the gray plane is copied to all three channels; set `data.channels: 1` to train on one".to_string()
                }),
                ConversionKind::Resize { to } => Diagnostic::warning(
                    format!("{at}.image_size"),
                    format!(
                        "loading resizes {count}{of} images to {}×{} ({at}.image_size: {}, mixed_sizes: resize)",
                        to.0, to.1, d.image_size
                    ),
                )
                .with_help(if at != "data" {
                    "antialiased bilinear, to the encoder's input size (`data.image_size`)".to_string()
                } else {
                    "antialiased bilinear; set `data.image_size` to the images' own size to keep them as they are, or `mixed_sizes: error` to refuse other sizes".to_string()
                }),
            }
        })
        .collect()
}

/// Warnings for method state sized beyond a training set of `n` images.
fn state_warnings(r: &Recipe, n: usize) -> Vec<crate::diag::Diagnostic> {
    use crate::diag::Diagnostic;
    let mut out = Vec::new();
    let batch = r.train.batch_size.max(1);
    // The largest multiple of `step` that fits in the training set, for the help line.
    let fit = |step: usize| (n / step.max(1)) * step.max(1);
    match &r.loss {
        Loss::Moco {
            queue_size,
            symmetric,
            ..
        } if *queue_size > n => {
            let step = if *symmetric { 2 * batch } else { batch };
            let mut d = Diagnostic::warning(
                "loss.queue_size",
                format!(
                    "the queue holds {queue_size} keys but training has {n} images ({:.1}× as many): every image has keys in the queue more than once, and a query meets its own image's older keys as negatives",
                    *queue_size as f64 / n.max(1) as f64
                ),
            );
            if fit(step) > 0 {
                d = d.with_help(format!(
                    "use at most {} ({} × {step}), the largest multiple that fits the training set",
                    fit(step),
                    fit(step) / step
                ));
            }
            out.push(d);
        }
        Loss::MemoryBank { negatives, .. } if *negatives >= n => {
            out.push(
                Diagnostic::warning(
                    "loss.negatives",
                    format!(
                        "{negatives} negatives are drawn from a bank of {n} training images, so each draw repeats images (and can draw the anchor itself)"
                    ),
                )
                .with_help(format!("use fewer than {n}")),
            );
        }
        Loss::Swav {
            prototypes, queue, ..
        } => {
            if *prototypes > n {
                out.push(
                    Diagnostic::warning(
                        "loss.prototypes",
                        format!(
                            "{prototypes} prototypes for {n} training images: Sinkhorn spreads the images evenly over the prototypes, so most prototypes get no image"
                        ),
                    )
                    .with_help(format!("use fewer prototypes than images (at most {n})")),
                );
            }
            if let Some(q) = queue
                && q.size > n
            {
                let mut d = Diagnostic::warning(
                    "loss.queue.size",
                    format!(
                        "the SwAV queue holds {} embeddings but training has {n} images: it repeats images",
                        q.size
                    ),
                );
                if fit(batch) > 0 {
                    d = d.with_help(format!(
                        "use at most {} ({} × {batch})",
                        fit(batch),
                        fit(batch) / batch
                    ));
                }
                out.push(d);
            }
        }
        Loss::Moco { .. }
        | Loss::MemoryBank { .. }
        | Loss::Simclr { .. }
        | Loss::Supcon { .. }
        | Loss::Rotation { .. }
        | Loss::Byol { .. }
        | Loss::Simsiam { .. }
        | Loss::BarlowTwins { .. }
        | Loss::Vicreg { .. }
        | Loss::Dino { .. } => {}
    }
    out
}
