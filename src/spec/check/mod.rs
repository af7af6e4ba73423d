//! Rules a JSON Schema cannot express: relations between keys and sections, and
//! numeric conditions with a message a researcher understands.
//!
//! Every rule reports with the dotted recipe path of the value at fault; the loader
//! attaches spans. Checks never stop at the first problem.

use super::Recipe;
use super::augment::Op;
use super::data::Source;
use super::loss::Loss;
use super::optim::{Optimizer, Schedule};
use super::train::Device;
use crate::diag::Diagnostic;

mod method;
mod shapes;
mod tasks;

use method::*;
use shapes::*;
use tasks::*;

/// Whether this binary was built with the `cuda` feature.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// Runs every semantic rule and returns all problems found.
///
/// The rules also cover the schema's numeric bounds, so a recipe built in Rust is
/// checked completely; for a loaded recipe their messages replace the schema's. Rules
/// relating a value to `train.epochs` stay silent while `epochs` is 0 (the schema
/// reports that, and everything would look too long).
pub fn check(r: &Recipe) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    check_data(r, &mut out);
    check_augment(r, &mut out);
    check_model(r, &mut out);
    check_loss(r, &mut out);
    check_optim(r, &mut out);
    check_train(r, &mut out);
    check_downstream(r, &mut out);
    out
}

/// The key a rule about `path` compares it with, for pointing at something the user
/// wrote when `path` itself is a default (e.g. a default `schedule.warmup_epochs`
/// longer than a short `train.epochs`).
pub fn related(path: &str) -> Option<&'static str> {
    let segs: Vec<&str> = path.split('.').collect();
    Some(match segs.as_slice() {
        ["schedule", ..] | ["loss", "queue", "start_epoch"] => "train.epochs",
        ["downstream", _, "every_epochs"] => "train.epochs",
        ["loss", "warmup_teacher_temp_epochs" | "freeze_last_layer"] => "train.epochs",
        ["loss", "queue_size"] | ["loss", "queue", "size"] => "train.batch_size",
        ["loss", "negatives"] => "data.source",
        ["downstream", _, "task"] => "data.source",
        _ => return None,
    })
}

pub(super) fn err(
    out: &mut Vec<Diagnostic>,
    path: impl Into<String>,
    msg: impl Into<String>,
) -> &mut Diagnostic {
    out.push(Diagnostic::error(path, msg));
    out.last_mut().expect("just pushed")
}

pub(super) fn positive(out: &mut Vec<Diagnostic>, path: &str, what: &str, v: f64) {
    if v <= 0.0 {
        err(
            out,
            path,
            format!("{what} must be greater than 0, found {v}"),
        );
    }
}

pub(super) fn unit_open(out: &mut Vec<Diagnostic>, path: &str, what: &str, v: f64) {
    if !(0.0..1.0).contains(&v) {
        let e = err(out, path, format!("{what} must be in [0, 1), found {v}"));
        if v == 1.0 {
            e.help =
                Some("a momentum of 1 never updates; values like 0.9 or 0.99 are usual".into());
        }
    }
}

pub(super) fn ordered(
    out: &mut Vec<Diagnostic>,
    path: &str,
    what: &str,
    r: [f64; 2],
    hi: Option<f64>,
) {
    if r[0] > r[1] {
        err(
            out,
            path,
            format!(
                "{what} range must be `[min, max]` with min ≤ max, found [{}, {}]",
                r[0], r[1]
            ),
        )
        .help = Some(format!("did you mean [{}, {}]?", r[1], r[0]));
    } else if r[0] <= 0.0 || hi.is_some_and(|h| r[1] > h) {
        let bound = hi.map_or("greater than 0".to_string(), |h| format!("in (0, {h}]"));
        err(
            out,
            path,
            format!("{what} values must be {bound}, found [{}, {}]", r[0], r[1]),
        );
    }
}

/// Images the dataset yields for training (`held_out`: less the `test_fraction`
/// hold-out), when known without reading files. `None` while `subset` or
/// `test_fraction` is out of range: that is reported on its own, and sizes derived
/// from it would only add confusing errors.
pub(super) fn known_len(r: &Recipe, held_out: bool) -> Option<usize> {
    let d = &r.data;
    if !(d.subset > 0.0 && d.subset <= 1.0 && (0.0..1.0).contains(&d.test_fraction)) {
        return None;
    }
    let kept = if held_out { 1.0 - d.test_fraction } else { 1.0 };
    let n = d.source.known_train_len()? as f64 * d.subset * kept;
    Some(n.floor() as usize)
}

/// The positive multiple of `step` nearest to `n` (halves round up), so a queue of
/// 1000 with batches of 128 becomes 1024, not 896; `None` when `step` is 0.
pub(super) fn nearest_multiple(n: usize, step: usize) -> Option<usize> {
    let times = n.checked_add(step / 2)?.checked_div(step)?.max(1);
    times.checked_mul(step)
}

pub(super) fn check_data(r: &Recipe, out: &mut Vec<Diagnostic>) {
    check_data_section(&r.data, "data", out);
}

/// The rules of one `data` section (the top-level one, or a task's at
/// `downstream.N.data`); `at` is its recipe path.
pub(super) fn check_data_section(d: &super::data::Data, at: &str, out: &mut Vec<Diagnostic>) {
    if d.channels == 2 {
        err(
            out,
            format!("{at}.channels"),
            "channels must be 1 (grayscale) or 3 (RGB), found 2",
        );
    }
    if d.subset <= 0.0 {
        err(
            out,
            format!("{at}.subset"),
            format!("subset must be a fraction in (0, 1], found {}", d.subset),
        );
    }
    if d.test_fraction >= 1.0 {
        err(
            out,
            format!("{at}.test_fraction"),
            "test_fraction must be below 1, or nothing is left to train on",
        );
    }
    if d.test_fraction > 0.0 && d.source.has_test_split() {
        err(
            out,
            format!("{at}.test_fraction"),
            "this source has its own test split, so `test_fraction` would be ignored",
        )
        .help = Some("remove `test_fraction`".into());
    }
    if let Source::Idx {
        test_images,
        test_labels,
        ..
    } = &d.source
        && test_images.is_some() != test_labels.is_some()
    {
        let which = if test_images.is_some() {
            "test_labels"
        } else {
            "test_images"
        };
        err(
            out,
            format!("{at}.source.{which}"),
            "IDX test images and test labels must be given together",
        );
    }
    if let Some(n) = &d.normalize {
        for (key, vals) in [("mean", &n.mean), ("std", &n.std)] {
            if vals.len() != d.channels {
                err(
                    out,
                    format!("{at}.normalize.{key}"),
                    format!(
                        "`{key}` needs one value per channel ({}), found {}",
                        d.channels,
                        vals.len()
                    ),
                );
            }
        }
        for (i, s) in n.std.iter().enumerate() {
            if *s <= 0.0 {
                err(
                    out,
                    format!("{at}.normalize.std.{i}"),
                    format!("standard deviations must be greater than 0, found {s}"),
                );
            }
        }
    }
}

pub(super) fn check_train(r: &Recipe, out: &mut Vec<Diagnostic>) {
    let t = &r.train;
    if t.batch_size < 2 {
        err(
            out,
            "train.batch_size",
            format!(
                "batch_size must be at least 2 ({}), found {}",
                match r.loss {
                    Loss::BarlowTwins { .. } =>
                        "Barlow Twins normalises each feature over the batch; one image has no spread",
                    Loss::Vicreg { .. } =>
                        "VICReg's variance and covariance are over the batch, divided by N − 1",
                    _ => "contrastive losses need negatives in the batch",
                },
                t.batch_size
            ),
        );
    }
    if let Some(n) = known_len(r, true)
        && t.batch_size > n
    {
        err(
            out,
            "train.batch_size",
            format!(
                "batch_size {} is larger than the {n} training images",
                t.batch_size
            ),
        );
    }
    if t.epochs > 0 && t.checkpoint_every > t.epochs {
        out.push(Diagnostic::warning("train.checkpoint_every", format!("checkpoint_every ({}) is longer than training ({} epochs): only the final checkpoint is written", t.checkpoint_every, t.epochs)));
    }
    if t.watch_samples == 1 {
        err(
            out,
            "train.watch_samples",
            "the collapse indicators need at least 2 images (a spread over one image is always 0)",
        )
        .help = Some("use 0 to turn them off, or a sample such as 512".into());
    }
    if t.device == Device::Cuda && !CUDA_BUILT {
        err(out, "train.device", "`device: cuda` needs a binary built with CUDA support, and this one was built without it").help =
            Some("rebuild with `cargo build --release --features cuda` on a machine with the CUDA toolkit (see README, \"GPU\"), or use `device: cpu`".into());
    }
}
