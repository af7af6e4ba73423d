//! The rules of the loss and the optimisation: each method's keys (queues that are
//! multiples of the batch, momenta, temperatures), the optimiser and the schedule.

use super::*;
use crate::spec::loss::ContrastMode;

pub(super) fn check_loss(r: &Recipe, out: &mut Vec<Diagnostic>) {
    let batch = r.train.batch_size;
    let views = r.augment.total_views();
    let multi_crop_ok = matches!(r.loss, Loss::Swav { .. } | Loss::Dino { .. });
    if r.augment.multi_crop.is_some() && !multi_crop_ok {
        err(
            out,
            "augment.multi_crop",
            format!(
                "`{}` does not use multi-crop; only `swav` and `dino` do",
                r.loss.method()
            ),
        )
        .help = Some("remove `multi_crop`, or use `method: swav` or `method: dino`".into());
    }
    check_predictor(r, out);
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
            contrast_mode,
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
            if *contrast_mode == ContrastMode::One && views < 2 {
                out.push(
                    Diagnostic::warning(
                        "loss.contrast_mode",
                        "with 1 view, `contrast_mode: one` takes the same anchors as `all` (the first view is every row)",
                    )
                    .with_help("use 2 or more views, or leave `contrast_mode` at `all`"),
                );
            }
        }
        Loss::Rotation {
            rotations,
            all_rotations: _,
        } => check_rotation(r, rotations, out),
        Loss::Byol { momentum } => {
            unit_open(out, "loss.momentum", "momentum", *momentum);
            two_views(out, "BYOL", views);
        }
        Loss::Simsiam {} => two_views(out, "SimSiam", views),
        Loss::BarlowTwins { lambda, scale_loss } => {
            if !(lambda.is_finite() && *lambda >= 0.0) {
                err(
                    out,
                    "loss.lambda",
                    format!("lambda weighs the off-diagonal term and must be ≥ 0, found {lambda}"),
                )
                .help = Some(
                    "a negative λ rewards correlated features; the reference uses 0.0051".into(),
                );
            }
            positive(out, "loss.scale_loss", "scale_loss", *scale_loss);
            two_views_why(
                out,
                "Barlow Twins correlates the embeddings of two views",
                views,
            );
        }
        Loss::Vicreg {
            invariance_coeff,
            variance_coeff,
            covariance_coeff,
            variance_epsilon,
        } => {
            let coeffs = [
                ("invariance_coeff", *invariance_coeff),
                ("variance_coeff", *variance_coeff),
                ("covariance_coeff", *covariance_coeff),
            ];
            for (key, c) in coeffs {
                if !(c.is_finite() && c >= 0.0) {
                    err(
                        out,
                        format!("loss.{key}"),
                        format!("{key} weighs a term of the loss and must be ≥ 0, found {c}"),
                    );
                }
            }
            if coeffs.iter().all(|(_, c)| *c == 0.0) {
                err(
                    out,
                    "loss.invariance_coeff",
                    "all three VICReg coefficients are 0, so the loss is 0 and nothing trains",
                )
                .help = Some("the reference uses 25, 25 and 1".into());
            }
            positive(
                out,
                "loss.variance_epsilon",
                "variance_epsilon",
                *variance_epsilon,
            );
            if r.augment.multi_crop.is_none() {
                two_views_why(out, "VICReg compares the embeddings of two views", views);
            }
        }
        Loss::Dino { .. } => check_dino(r, out),
    }
}

/// RotNet's rules: the rotations are distinct right angles, at least 2, and the head
/// (the rotation classifier) has one output per rotation.
fn check_rotation(r: &Recipe, rotations: &[u32], out: &mut Vec<Diagnostic>) {
    let mut seen: Vec<u32> = Vec::new();
    for (i, &a) in rotations.iter().enumerate() {
        if !matches!(a, 0 | 90 | 180 | 270) {
            err(
                out,
                format!("loss.rotations.{i}"),
                format!("rotations are right angles: 0, 90, 180 or 270 degrees, found {a}"),
            )
            .help = Some(
                "other angles need interpolation and leave corners empty, which betrays the rotation (RotNet uses multiples of 90°)".into(),
            );
        } else if seen.contains(&a) {
            err(
                out,
                format!("loss.rotations.{i}"),
                format!("rotation {a} is listed twice: each class must be a different rotation"),
            )
            .help = Some("remove the repeated angle".into());
        }
        seen.push(a);
    }
    if rotations.len() < 2 {
        err(
            out,
            "loss.rotations",
            format!(
                "rotation prediction is a classification over at least 2 rotations, found {}",
                rotations.len()
            ),
        )
        .help = Some("use `[0, 90, 180, 270]` (RotNet), or `[0, 180]`".into());
    }
    let classes = rotations.len();
    if classes >= 2 && r.model.head.out_dim != classes {
        err(
            out,
            "model.head.out_dim",
            format!(
                "with `method: rotation` the projection head is the rotation classifier, so it needs one output per rotation ({classes}), found {}",
                r.model.head.out_dim
            ),
        )
        .help = Some(format!("set `model.head.out_dim: {classes}`"));
    }
}

/// BYOL and SimSiam predict one view's projection from the other's.
fn two_views(out: &mut Vec<Diagnostic>, method: &str, views: usize) {
    if views != 2 {
        err(
            out,
            "augment.views",
            format!(
                "{method} predicts each of two views from the other, so it needs exactly 2 views, found {views}"
            ),
        )
        .help = Some("set `augment.views: 2`".into());
    }
}

/// `model.predictor`: required by the methods that predict (BYOL, SimSiam), meaningless
/// for the others, and its output must be the projection's width.
fn check_predictor(r: &Recipe, out: &mut Vec<Diagnostic>) {
    let method = r.loss.method();
    let wants = matches!(r.loss, Loss::Byol { .. } | Loss::Simsiam { .. });
    match (&r.model.predictor, wants) {
        (Some(_), false) => {
            err(
                out,
                "model.predictor",
                format!("`{method}` has no predictor; only `byol` and `simsiam` use one"),
            )
            .help = Some("remove `model.predictor`, or use `method: byol` or `simsiam`".into());
        }
        (None, true) => {
            let hidden = if method == "byol" { 4096 } else { 512 };
            err(
                out,
                "loss.method",
                format!(
                    "`{method}` predicts the other view's projection through a predictor MLP, but the recipe has no `model.predictor`"
                ),
            )
            .help = Some(format!(
                "add `predictor: {{hidden: [{hidden}]}}` under `model` (the paper's width; a small network wants a smaller one)"
            ));
        }
        (Some(p), true) => {
            let head = r.model.head.out_dim;
            if let Some(d) = p.out_dim
                && d != head
            {
                err(
                    out,
                    "model.predictor.out_dim",
                    format!(
                        "the predictor's output ({d}) is compared with the projection, which has model.head.out_dim = {head} features"
                    ),
                )
                .help = Some(format!("use {head}, or leave `out_dim` out"));
            }
        }
        (None, false) => {}
    }
}

/// The error for a method that takes exactly two views (`why` says what it does with
/// them), unless `views` is 2. (With multi-crop, the multi-crop rule says it instead.)
fn two_views_why(out: &mut Vec<Diagnostic>, why: &str, views: usize) {
    if views != 2 {
        err(
            out,
            "augment.views",
            format!("{why}, so it needs exactly 2 views, found {views}"),
        )
        .help = Some("set `augment.views: 2`".into());
    }
}

/// DINO's keys: temperatures, momenta, the global crops the teacher needs, and the
/// schedules' lengths against the run's.
fn check_dino(r: &Recipe, out: &mut Vec<Diagnostic>) {
    let Loss::Dino {
        out_dim,
        norm_last_layer: _,
        student_temp,
        teacher_temp,
        warmup_teacher_temp,
        warmup_teacher_temp_epochs,
        teacher_momentum,
        center_momentum,
        freeze_last_layer,
    } = &r.loss
    else {
        return;
    };
    positive(out, "loss.student_temp", "student_temp", *student_temp);
    positive(out, "loss.teacher_temp", "teacher_temp", *teacher_temp);
    positive(
        out,
        "loss.warmup_teacher_temp",
        "warmup_teacher_temp",
        *warmup_teacher_temp,
    );
    unit_open(
        out,
        "loss.teacher_momentum",
        "teacher_momentum",
        *teacher_momentum,
    );
    if !(0.0..=1.0).contains(center_momentum) {
        err(
            out,
            "loss.center_momentum",
            format!("center_momentum must be in [0, 1], found {center_momentum}"),
        )
        .help = Some("DINO uses 0.9; 1 keeps the centre at 0 (no centring)".into());
    }
    if *out_dim < 2 {
        err(
            out,
            "loss.out_dim",
            format!(
                "DINO's last layer needs at least 2 outputs (a softmax over them), found {out_dim}"
            ),
        )
        .help = Some("the reference uses 65536; a few thousand suit small data sets".into());
    }
    // The teacher sees the global crops: every view without multi-crop (multi-crop's
    // own rule already asks for at least 2 global crops).
    let views = r.augment.total_views();
    if r.augment.multi_crop.is_none() && views < 2 {
        err(
            out,
            "augment.views",
            format!(
                "DINO's teacher sees the global views and each is predicted from the other views, so it needs at least 2, found {views}"
            ),
        )
        .help = Some("use 2 views, or `multi_crop` with 2 global crops, as the reference does".into());
    }
    let temps_ok = *student_temp > 0.0 && *teacher_temp > 0.0 && *warmup_teacher_temp > 0.0;
    if temps_ok && teacher_temp.max(*warmup_teacher_temp) >= *student_temp {
        let which = if warmup_teacher_temp > teacher_temp {
            "loss.warmup_teacher_temp"
        } else {
            "loss.teacher_temp"
        };
        out.push(
            Diagnostic::warning(
                which,
                format!(
                    "the teacher temperature ({}) is not below the student's ({student_temp}): the teacher's targets are no sharper than the student's predictions, which is how DINO collapses to a uniform output",
                    teacher_temp.max(*warmup_teacher_temp)
                ),
            )
            .with_help("DINO uses a teacher temperature of 0.04–0.07 with a student's of 0.1"),
        );
    }
    let epochs = r.train.epochs;
    if epochs > 0 && *warmup_teacher_temp_epochs > epochs && warmup_teacher_temp != teacher_temp {
        out.push(
            Diagnostic::warning(
                "loss.warmup_teacher_temp_epochs",
                format!(
                    "the teacher temperature warms up over {warmup_teacher_temp_epochs} epochs but training has {epochs}: it never reaches teacher_temp ({teacher_temp})"
                ),
            )
            .with_help(format!("use at most {epochs} warmup epochs, or train longer")),
        );
    }
    if epochs > 0 && *freeze_last_layer >= epochs {
        out.push(
            Diagnostic::warning(
                "loss.freeze_last_layer",
                format!(
                    "the last layer stays frozen for {freeze_last_layer} epoch(s) but training has {epochs}: it never trains"
                ),
            )
            .with_help(format!("use fewer than {epochs} (DINO freezes it for 1 epoch)")),
        );
    }
}

pub(super) fn check_optim(r: &Recipe, out: &mut Vec<Diagnostic>) {
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
