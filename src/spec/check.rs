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
        ["loss", "queue_size"] | ["loss", "queue", "size"] => "train.batch_size",
        ["loss", "negatives"] => "data.source",
        ["downstream", _, "task"] => "data.source",
        _ => return None,
    })
}

fn err(
    out: &mut Vec<Diagnostic>,
    path: impl Into<String>,
    msg: impl Into<String>,
) -> &mut Diagnostic {
    out.push(Diagnostic::error(path, msg));
    out.last_mut().expect("just pushed")
}

fn positive(out: &mut Vec<Diagnostic>, path: &str, what: &str, v: f64) {
    if v <= 0.0 {
        err(
            out,
            path,
            format!("{what} must be greater than 0, found {v}"),
        );
    }
}

fn unit_open(out: &mut Vec<Diagnostic>, path: &str, what: &str, v: f64) {
    if !(0.0..1.0).contains(&v) {
        let e = err(out, path, format!("{what} must be in [0, 1), found {v}"));
        if v == 1.0 {
            e.help =
                Some("a momentum of 1 never updates; values like 0.9 or 0.99 are usual".into());
        }
    }
}

fn ordered(out: &mut Vec<Diagnostic>, path: &str, what: &str, r: [f64; 2], hi: Option<f64>) {
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
fn known_len(r: &Recipe, held_out: bool) -> Option<usize> {
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
fn nearest_multiple(n: usize, step: usize) -> Option<usize> {
    let times = n.checked_add(step / 2)?.checked_div(step)?.max(1);
    times.checked_mul(step)
}

fn check_data(r: &Recipe, out: &mut Vec<Diagnostic>) {
    let d = &r.data;
    if d.channels == 2 {
        err(
            out,
            "data.channels",
            "channels must be 1 (grayscale) or 3 (RGB), found 2",
        );
    }
    if d.subset <= 0.0 {
        err(
            out,
            "data.subset",
            format!("subset must be a fraction in (0, 1], found {}", d.subset),
        );
    }
    if d.test_fraction >= 1.0 {
        err(
            out,
            "data.test_fraction",
            "test_fraction must be below 1, or nothing is left to train on",
        );
    }
    if d.test_fraction > 0.0 && d.source.has_test_split() {
        err(
            out,
            "data.test_fraction",
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
            format!("data.source.{which}"),
            "IDX test images and test labels must be given together",
        );
    }
    if let Some(n) = &d.normalize {
        for (key, vals) in [("mean", &n.mean), ("std", &n.std)] {
            if vals.len() != d.channels {
                err(
                    out,
                    format!("data.normalize.{key}"),
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
                    format!("data.normalize.std.{i}"),
                    format!("standard deviations must be greater than 0, found {s}"),
                );
            }
        }
    }
}

fn check_ops(ops: &[Op], base: &str, data: &super::data::Data, out: &mut Vec<Diagnostic>) {
    let image_size = data.image_size;
    for (i, op) in ops.iter().enumerate() {
        let p = format!("{base}.{i}.{}", op.name());
        match op {
            Op::RandomResizedCrop(c) => {
                ordered(out, &format!("{p}.scale"), "scale", c.scale, Some(1.0));
                ordered(out, &format!("{p}.ratio"), "ratio", c.ratio, None);
                if let Some(s) = c.size
                    && s > image_size
                {
                    err(
                        out,
                        format!("{p}.size"),
                        format!(
                            "crop size {s} is larger than the image ({image_size}×{image_size})"
                        ),
                    )
                    .help = Some(format!(
                        "use a size of at most {image_size}, or raise `data.image_size`"
                    ));
                }
            }
            Op::GaussianBlur(b) => {
                ordered(out, &format!("{p}.sigma"), "sigma", b.sigma, None);
                if b.kernel_size % 2 == 0 {
                    err(
                        out,
                        format!("{p}.kernel_size"),
                        format!("kernel_size must be odd, found {}", b.kernel_size),
                    )
                    .help = Some(match b.kernel_size {
                        0 => "use 1, 3 or a larger odd size".to_string(),
                        k => format!("use {} or {}", k - 1, k + 1),
                    });
                }
            }
            Op::ColorJitter(j) if data.channels == 1 => {
                // The op runs, but on one channel these two are identities (see
                // `augment::color`): the recipe likely meant colour data.
                for (key, v) in [("saturation", j.saturation), ("hue", j.hue)] {
                    if v > 0.0 {
                        out.push(
                            Diagnostic::warning(
                                format!("{p}.{key}"),
                                format!(
                                    "`{key}: {v}` does nothing on one-channel data (`data.channels: 1`): {key} jitter needs colour"
                                ),
                            )
                            .with_help(format!(
                                "set `{key}: 0.0`, or `data.channels: 3` for colour images"
                            )),
                        );
                    }
                }
            }
            Op::HorizontalFlip(_) | Op::ColorJitter(_) | Op::Grayscale(_) | Op::Solarize(_) => {}
        }
    }
    let crops = ops
        .iter()
        .filter(|o| matches!(o, Op::RandomResizedCrop(_)))
        .count();
    if crops > 1 {
        err(
            out,
            base,
            format!("the pipeline has {crops} `random_resized_crop` ops; a view is cropped once"),
        );
    }
    if let Some(pos) = ops
        .iter()
        .position(|o| matches!(o, Op::RandomResizedCrop(_)))
        && pos != 0
    {
        out.push(Diagnostic::warning(format!("{base}.{pos}"), "`random_resized_crop` is not the first op, so the ops before it run at full resolution and are then cropped").with_help("torchvision and solo-learn crop first"));
    }
}

fn check_augment(r: &Recipe, out: &mut Vec<Diagnostic>) {
    let a = &r.augment;
    let size = r.data.image_size;
    match &a.per_view {
        Some(pv) => {
            if pv.len() != a.views {
                err(
                    out,
                    "augment.per_view",
                    format!(
                        "`per_view` has {} pipeline(s) but `views` is {}",
                        pv.len(),
                        a.views
                    ),
                )
                .help = Some("give one pipeline per view".into());
            }
            for (v, ops) in pv.iter().enumerate() {
                check_ops(ops, &format!("augment.per_view.{v}"), &r.data, out);
            }
        }
        None => check_ops(&a.pipeline, "augment.pipeline", &r.data, out),
    }
    if let Some(mc) = &a.multi_crop {
        if a.per_view.is_some() {
            err(
                out,
                "augment.multi_crop",
                "`multi_crop` and `per_view` cannot be combined",
            );
        }
        if mc.global.count < 2 {
            err(
                out,
                "augment.multi_crop.global.count",
                format!(
                    "multi-crop needs at least 2 global crops, found {}",
                    mc.global.count
                ),
            );
        }
        for (g, grp) in [("global", &mc.global), ("local", &mc.local)] {
            let p = format!("augment.multi_crop.{g}");
            ordered(out, &format!("{p}.scale"), "scale", grp.scale, Some(1.0));
            ordered(out, &format!("{p}.ratio"), "ratio", grp.ratio, None);
            if grp.size > size {
                err(
                    out,
                    format!("{p}.size"),
                    format!(
                        "crop size {} is larger than the image ({size}×{size})",
                        grp.size
                    ),
                );
            }
        }
        if mc.local.size > mc.global.size {
            err(
                out,
                "augment.multi_crop.local.size",
                format!(
                    "local crops ({}) must not be larger than global crops ({})",
                    mc.local.size, mc.global.size
                ),
            );
        }
        if a.pipeline
            .iter()
            .any(|o| matches!(o, Op::RandomResizedCrop(_)))
        {
            out.push(Diagnostic::warning("augment.pipeline", "with `multi_crop`, the pipeline's `random_resized_crop` is replaced by the global and local crops").with_help("remove it from the pipeline to make that explicit"));
        }
    }
    // Views are stacked per view index, so views of one pipeline must agree in size
    // with the model's expectations only through global pooling; sizes must be positive.
    let sizes = a.view_sizes(size);
    let min_side = 1usize << r.model.backbone.downsamplings();
    if let Some((v, s)) = sizes.iter().enumerate().find(|(_, s)| **s < min_side) {
        let at = if *s == size {
            "data.image_size".to_string()
        } else {
            crop_size_path(a, *s).unwrap_or_else(|| "augment".into())
        };
        let e = err(
            out,
            at,
            format!(
                "view {v} is {s}×{s}, smaller than the {min_side}×{min_side} that `{}` needs for its {} stride-2 stages",
                r.model.backbone.arch(),
                r.model.backbone.downsamplings()
            ),
        );
        e.help = Some(too_small_help(r, *s, *s == size, min_side));
    }
}

/// The recipe key that sets a view size `side` smaller than the image: a multi-crop
/// group's `size`, or the `size` of a pipeline's crop op.
fn crop_size_path(a: &super::augment::Augment, side: usize) -> Option<String> {
    if let Some(mc) = &a.multi_crop {
        for (g, grp) in [("local", &mc.local), ("global", &mc.global)] {
            if grp.size == side {
                return Some(format!("augment.multi_crop.{g}.size"));
            }
        }
    }
    let pipelines: Vec<(String, &Vec<Op>)> = match &a.per_view {
        Some(pv) => pv
            .iter()
            .enumerate()
            .map(|(v, ops)| (format!("augment.per_view.{v}"), ops))
            .collect(),
        None => vec![("augment.pipeline".into(), &a.pipeline)],
    };
    pipelines.into_iter().find_map(|(base, ops)| {
        ops.iter().enumerate().find_map(|(i, op)| match op {
            Op::RandomResizedCrop(c) if c.size == Some(side) => {
                Some(format!("{base}.{i}.random_resized_crop.size"))
            }
            _ => None,
        })
    })
}

/// How to make a view of side `side` fit the backbone: the CIFAR stem (two fewer
/// stride-2 stages) when the backbone is a ResNet with the ImageNet stem and that
/// would fit, else larger images or crops.
fn too_small_help(r: &Recipe, side: usize, whole_image: bool, min_side: usize) -> String {
    use super::model::{Backbone, Stem};
    let imagenet_stem = matches!(
        r.model.backbone,
        Backbone::Resnet18 {
            stem: Stem::Imagenet,
            ..
        } | Backbone::Resnet34 {
            stem: Stem::Imagenet,
            ..
        } | Backbone::Resnet50 {
            stem: Stem::Imagenet,
            ..
        }
    );
    let cifar_side = 1usize << r.model.backbone.downsamplings().saturating_sub(2);
    let bigger = if whole_image {
        format!("set `data.image_size` to at least {min_side}")
    } else {
        format!("make the crop at least {min_side}×{min_side}")
    };
    if imagenet_stem && side >= cifar_side {
        format!(
            "for small images use `model.backbone.stem: cifar` (3×3 stride-1 stem, no max pool; it needs {cifar_side}×{cifar_side}), or {bigger}"
        )
    } else {
        format!("{bigger}, or use a backbone with fewer stride-2 stages (`arch: small_cnn`)")
    }
}

fn check_model(r: &Recipe, out: &mut Vec<Diagnostic>) {
    use super::model::Backbone;
    match &r.model.backbone {
        Backbone::Resnet18 { width, .. }
        | Backbone::Resnet34 { width, .. }
        | Backbone::Resnet50 { width, .. } => {
            if *width <= 0.0 || *width > 16.0 {
                err(
                    out,
                    "model.backbone.width",
                    format!("width multiplier must be in (0, 16], found {width}"),
                );
            } else if (64.0 * width).round() < 1.0 {
                err(
                    out,
                    "model.backbone.width",
                    format!("width {width} leaves the first stage with no channels"),
                );
            }
        }
        Backbone::SmallCnn { channels } => {
            if channels.is_empty() {
                err(
                    out,
                    "model.backbone.channels",
                    "a small CNN needs at least one stage",
                );
            }
            for (i, c) in channels.iter().enumerate() {
                if *c == 0 {
                    err(
                        out,
                        format!("model.backbone.channels.{i}"),
                        "a stage needs at least one channel",
                    );
                }
            }
        }
    }
    for (i, h) in r.model.head.hidden.iter().enumerate() {
        if *h == 0 {
            err(
                out,
                format!("model.head.hidden.{i}"),
                "a hidden layer needs at least one unit",
            );
        }
    }
}

fn check_loss(r: &Recipe, out: &mut Vec<Diagnostic>) {
    let batch = r.train.batch_size;
    let views = r.augment.total_views();
    let multi_crop_ok = matches!(r.loss, Loss::Swav { .. });
    if r.augment.multi_crop.is_some() && !multi_crop_ok {
        err(
            out,
            "augment.multi_crop",
            format!(
                "`{}` does not use multi-crop; only `swav` does",
                r.loss.method()
            ),
        )
        .help = Some("remove `multi_crop`, or use `method: swav`".into());
    }
    match &r.loss {
        Loss::Simclr { temperature } => {
            positive(out, "loss.temperature", "temperature", *temperature);
            if views < 2 {
                err(
                    out,
                    "augment.views",
                    format!(
                        "SimCLR contrasts views of one image, so it needs at least 2 views, found {views}"
                    ),
                );
            }
        }
        Loss::Moco {
            temperature,
            momentum,
            queue_size,
            symmetric,
        } => {
            positive(out, "loss.temperature", "temperature", *temperature);
            unit_open(out, "loss.momentum", "momentum", *momentum);
            // The symmetric loss enqueues the keys of both views every step.
            let per_step = if *symmetric {
                batch.saturating_mul(2)
            } else {
                batch
            };
            if *queue_size == 0 || per_step == 0 || queue_size % per_step != 0 {
                let msg = if *symmetric {
                    format!(
                        "queue_size must be a positive multiple of 2 × the batch size ({per_step}), because the symmetric loss enqueues the keys of both views each step; found {queue_size}"
                    )
                } else {
                    format!(
                        "queue_size must be a positive multiple of the batch size ({batch}), found {queue_size}"
                    )
                };
                let e = err(out, "loss.queue_size", msg);
                if let Some(size) = nearest_multiple(*queue_size, per_step) {
                    e.help = Some(format!("use {size} ({} × {per_step})", size / per_step));
                }
            }
            if views != 2 {
                err(
                    out,
                    "augment.views",
                    format!(
                        "MoCo uses a query and a key view, so it needs exactly 2 views, found {views}"
                    ),
                );
            }
        }
        Loss::MemoryBank {
            temperature,
            bank_momentum,
            negatives,
            shared_negatives: _,
        } => {
            positive(out, "loss.temperature", "temperature", *temperature);
            unit_open(out, "loss.bank_momentum", "bank_momentum", *bank_momentum);
            if *negatives == 0 {
                err(
                    out,
                    "loss.negatives",
                    "the memory bank needs at least one negative",
                );
            }
            if let Some(n) = known_len(r, false)
                && *negatives >= n
            {
                err(
                    out,
                    "loss.negatives",
                    format!(
                        "{negatives} negatives cannot be drawn from a bank of {n} training images"
                    ),
                )
                .help = Some(format!("use fewer than {n}"));
            }
        }
        Loss::Swav {
            temperature,
            prototypes,
            epsilon,
            sinkhorn_iterations,
            queue,
            ..
        } => {
            positive(out, "loss.temperature", "temperature", *temperature);
            positive(out, "loss.epsilon", "epsilon", *epsilon);
            if *prototypes < 2 {
                err(
                    out,
                    "loss.prototypes",
                    format!("SwAV needs at least 2 prototypes, found {prototypes}"),
                );
            }
            if *sinkhorn_iterations == 0 {
                err(
                    out,
                    "loss.sinkhorn_iterations",
                    "Sinkhorn-Knopp needs at least one iteration",
                );
            }
            if views < 2 {
                err(
                    out,
                    "augment.views",
                    format!(
                        "SwAV predicts the code of one view from another, so it needs at least 2 views, found {views}"
                    ),
                );
            }
            if let Some(q) = queue {
                if batch > 0 && q.size % batch != 0 {
                    let e = err(
                        out,
                        "loss.queue.size",
                        format!(
                            "the SwAV queue size must be a multiple of the batch size ({batch}), found {}",
                            q.size
                        ),
                    );
                    if let Some(size) = nearest_multiple(q.size, batch) {
                        e.help = Some(format!("use {size} ({} × {batch})", size / batch));
                    }
                }
                if r.train.epochs > 0 && q.start_epoch >= r.train.epochs {
                    err(
                        out,
                        "loss.queue.start_epoch",
                        format!(
                            "the queue starts at epoch {} but training has only {} epoch(s)",
                            q.start_epoch, r.train.epochs
                        ),
                    );
                }
            }
        }
        Loss::Supcon {
            temperature,
            base_temperature,
        } => {
            positive(out, "loss.temperature", "temperature", *temperature);
            positive(
                out,
                "loss.base_temperature",
                "base_temperature",
                *base_temperature,
            );
            if !r.data.labels {
                err(out, "loss.method", "SupCon needs labels, but `data.labels` is false").help = Some("set `data.labels: true` with a labelled source, or use a self-supervised method".into());
            }
        }
    }
}

fn check_optim(r: &Recipe, out: &mut Vec<Diagnostic>) {
    let o = &r.optimizer;
    positive(out, "optimizer.lr", "the learning rate", o.lr());
    if o.weight_decay() < 0.0 {
        err(
            out,
            "optimizer.weight_decay",
            format!("weight_decay must be ≥ 0, found {}", o.weight_decay()),
        );
    }
    match o {
        Optimizer::Sgd {
            momentum, nesterov, ..
        } => {
            unit_open(out, "optimizer.momentum", "momentum", *momentum);
            if *nesterov && *momentum == 0.0 {
                err(
                    out,
                    "optimizer.nesterov",
                    "Nesterov momentum needs a momentum above 0",
                );
            }
        }
        Optimizer::Lars {
            momentum,
            trust_coefficient,
            ..
        } => {
            unit_open(out, "optimizer.momentum", "momentum", *momentum);
            positive(
                out,
                "optimizer.trust_coefficient",
                "trust_coefficient",
                *trust_coefficient,
            );
        }
        Optimizer::Adamw { betas, eps, .. } => {
            for (i, b) in betas.iter().enumerate() {
                unit_open(out, &format!("optimizer.betas.{i}"), "beta", *b);
            }
            positive(out, "optimizer.eps", "eps", *eps);
        }
    }
    let epochs = r.train.epochs;
    match &r.schedule {
        Schedule::Constant => {}
        Schedule::Step { milestones, gamma } => {
            if *gamma <= 0.0 || *gamma > 1.0 {
                err(
                    out,
                    "schedule.gamma",
                    format!("gamma must be in (0, 1], found {gamma}"),
                );
            }
            for (i, m) in milestones.iter().enumerate() {
                if (epochs > 0 && *m >= epochs) || *m == 0 {
                    err(
                        out,
                        format!("schedule.milestones.{i}"),
                        format!("milestone {m} is outside the training run (epochs 1..{epochs})"),
                    );
                }
                if i > 0 && *m <= milestones[i - 1] {
                    err(
                        out,
                        format!("schedule.milestones.{i}"),
                        "milestones must be strictly increasing",
                    );
                }
            }
        }
        Schedule::WarmupCosine {
            warmup_epochs,
            warmup_start_lr,
            final_lr,
        } => {
            if *warmup_epochs < 0.0 {
                err(
                    out,
                    "schedule.warmup_epochs",
                    format!("warmup_epochs cannot be negative, found {warmup_epochs}"),
                );
            } else if epochs > 0 && *warmup_epochs >= epochs as f64 {
                err(out, "schedule.warmup_epochs", format!("warmup ({warmup_epochs} epochs) must be shorter than training ({epochs} epochs)")).help = Some(format!("use fewer than {epochs} warmup epochs, or train longer"));
            }
            if *warmup_start_lr < 0.0 {
                err(
                    out,
                    "schedule.warmup_start_lr",
                    "learning rates cannot be negative",
                );
            }
            if *final_lr < 0.0 {
                err(
                    out,
                    "schedule.final_lr",
                    "learning rates cannot be negative",
                );
            }
        }
    }
}

fn check_train(r: &Recipe, out: &mut Vec<Diagnostic>) {
    let t = &r.train;
    if t.batch_size < 2 {
        err(
            out,
            "train.batch_size",
            format!(
                "batch_size must be at least 2 (contrastive losses need negatives in the batch), found {}",
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
    if t.device == Device::Cuda && !CUDA_BUILT {
        err(out, "train.device", "`device: cuda` needs a binary built with CUDA support, and this one was built without it").help =
            Some("rebuild with `cargo build --release --features cuda` on a machine with the CUDA toolkit (see README, \"GPU\"), or use `device: cpu`".into());
    }
}

fn check_downstream(r: &Recipe, out: &mut Vec<Diagnostic>) {
    use super::downstream::Task;
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
            Task::Visualize { plots, samples, .. } => {
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
            }
        }
    }
}

fn probe_common(out: &mut Vec<Diagnostic>, p: &str, epochs: usize, batch: usize, lr: f64, wd: f64) {
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
