//! The rules of the views and the network: augmentation ops and their bounds, crops
//! that fit the image, and views that survive the backbone's stride-2 stages.

use super::*;

pub(super) fn check_ops(
    ops: &[Op],
    base: &str,
    data: &crate::spec::data::Data,
    out: &mut Vec<Diagnostic>,
) {
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

pub(super) fn check_augment(r: &Recipe, out: &mut Vec<Diagnostic>) {
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
pub(super) fn crop_size_path(a: &crate::spec::augment::Augment, side: usize) -> Option<String> {
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
pub(super) fn too_small_help(
    r: &Recipe,
    side: usize,
    whole_image: bool,
    min_side: usize,
) -> String {
    use crate::spec::model::{Backbone, Stem};
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

pub(super) fn check_model(r: &Recipe, out: &mut Vec<Diagnostic>) {
    use crate::spec::model::Backbone;
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
