//! The recipe's `downstream` section as engine-side [`eval::downstream::Task`]s.

use crate::eval;
use crate::spec::Recipe;

/// The recipe's downstream tasks as engine-side [`eval::downstream::Task`]s (in recipe
/// order). `augment`'s chain is built only when a `visualize` task draws the views.
pub fn downstream(r: &Recipe) -> Result<Vec<eval::downstream::Task>, String> {
    use crate::spec::downstream::{
        Features, FineTuneAugment, Metric as SpecMetric, Plot, Task as SpecTask,
    };
    use eval::downstream::Task;
    let which = |f: Features| match f {
        Features::Backbone => eval::Which::Backbone,
        Features::Head => eval::Which::Head,
    };
    let mut out = Vec::with_capacity(r.downstream.len());
    for t in &r.downstream {
        out.push(match t {
            SpecTask::Knn {
                k,
                temperature,
                metric,
                features,
                baselines,
                every_epochs,
                label_fraction,
                data: _,
            } => Task::Knn(eval::knn::KnnTask {
                cfg: eval::KnnConfig {
                    k: *k,
                    temperature: *temperature,
                    metric: match metric {
                        SpecMetric::Cosine => eval::Metric::Cosine,
                        SpecMetric::Euclidean => eval::Metric::Euclidean,
                    },
                },
                features: which(*features),
                baselines: *baselines,
                every_epochs: *every_epochs,
                fractions: label_fraction.values(),
            }),
            SpecTask::LinearProbe {
                epochs,
                batch_size,
                lr,
                weight_decay,
                features,
                standardize,
                baselines,
                label_fraction,
                data: _,
            } => Task::LinearProbe(eval::linear_probe::ProbeTask {
                cfg: eval::ProbeConfig {
                    epochs: *epochs,
                    batch_size: *batch_size,
                    lr: *lr,
                    weight_decay: 0.0,
                    standardize: *standardize,
                    seed: r.seed,
                },
                weight_decays: weight_decay.candidates(),
                features: which(*features),
                baselines: *baselines,
                fractions: label_fraction.values(),
            }),
            SpecTask::FineTune {
                epochs,
                batch_size,
                lr,
                backbone_lr_scale,
                weight_decay,
                label_fraction,
                augment,
                head_norm,
                supervised,
                data: _,
            } => {
                let fractions = label_fraction.values();
                // The supervised baseline trains on the recipe's first view, and so do
                // the fine-tuned networks with `augment: first_view`.
                let first_view = || -> Result<_, String> {
                    let chain = crate::build::augment::chain(&r.augment, &r.data)
                        .map_err(|e| e.to_string())?;
                    Ok(std::sync::Arc::new(chain.pipelines()[0].clone()))
                };
                let supervised = match supervised {
                    Some(s) => Some(eval::fine_tune::SupervisedConfig {
                        epochs: s.epochs.per_fraction(fractions.len()),
                        lr: s.lr,
                        weight_decay: s.weight_decay,
                        augment: first_view()?,
                    }),
                    None => None,
                };
                let augment = match augment {
                    FineTuneAugment::Flip => eval::fine_tune::Augmentation::Flip,
                    FineTuneAugment::FirstView => {
                        eval::fine_tune::Augmentation::Pipeline(first_view()?)
                    }
                };
                let batch_sizes = batch_size.per_fraction(fractions.len());
                Task::FineTune(eval::fine_tune::FineTuneTask {
                    cfg: eval::FineTuneConfig {
                        epochs: epochs.per_fraction(1)[0],
                        batch_size: batch_size.per_fraction(1)[0],
                        lr: *lr,
                        backbone_lr_scale: *backbone_lr_scale,
                        weight_decay: *weight_decay,
                        seed: r.seed,
                        head_norm: *head_norm,
                    },
                    epochs: epochs.per_fraction(fractions.len()),
                    batch_sizes,
                    augment,
                    fractions,
                    supervised,
                })
            }
            SpecTask::Visualize {
                plots,
                samples,
                queries,
                neighbors,
                perplexity,
                data: _,
            } => {
                use eval::visualize::Figure;
                let figures: Vec<Figure> = plots
                    .iter()
                    .filter_map(|p| match p {
                        Plot::Filters => Some(Figure::Filters),
                        Plot::FeatureMaps => Some(Figure::FeatureMaps),
                        Plot::NearestNeighbors => Some(Figure::NearestNeighbors),
                        Plot::EmbeddingPca => Some(Figure::EmbeddingPca),
                        Plot::EmbeddingTsne => Some(Figure::EmbeddingTsne),
                        Plot::AugmentationViews => Some(Figure::AugmentationViews),
                        // Drawn from the metrics file after every run.
                        Plot::TrainingCurves => None,
                    })
                    .collect();
                let views = if figures.contains(&Figure::AugmentationViews) {
                    let chain = crate::build::augment::chain(&r.augment, &r.data)
                        .map_err(|e| e.to_string())?;
                    Some((std::sync::Arc::new(chain), r.seed))
                } else {
                    None
                };
                Task::Visualize(eval::visualize::VisualizeTask {
                    figures,
                    samples: *samples,
                    queries: *queries,
                    neighbors: *neighbors,
                    perplexity: *perplexity,
                    seed: r.seed,
                    views,
                })
            }
        });
    }
    Ok(out)
}

/// The downstream tasks' own `data` sections (transfer): each distinct section once,
/// with its label, and for each task (in recipe order) the index of its section or
/// `None` for the pretraining data. A section equal to the top-level one is the
/// pretraining data.
///
/// Labels name the dataset (`mnist`, `cifar10`, the folder's name), in lowercase
/// letters, digits and `_`, so they fit metrics fields and file names; a second
/// section with the same name gets `_2`, and so on.
pub fn task_data(r: &Recipe) -> (Vec<(String, crate::spec::data::Data)>, Vec<Option<usize>>) {
    let mut sets: Vec<(String, crate::spec::data::Data)> = Vec::new();
    let mut of_task = Vec::with_capacity(r.downstream.len());
    for t in &r.downstream {
        let Some(d) = t.data().filter(|d| **d != r.data) else {
            of_task.push(None);
            continue;
        };
        if let Some(i) = sets.iter().position(|(_, s)| s == d) {
            of_task.push(Some(i));
            continue;
        }
        let base = data_label(d);
        let mut label = base.clone();
        let mut n = 1;
        while sets.iter().any(|(l, _)| *l == label) {
            n += 1;
            label = format!("{base}_{n}");
        }
        of_task.push(Some(sets.len()));
        sets.push((label, d.clone()));
    }
    (sets, of_task)
}

/// A short name of a `data` section's dataset (see [`task_data`]).
pub fn data_label(d: &crate::spec::data::Data) -> String {
    use crate::spec::data::{CifarVariant, Source};
    let name = match &d.source {
        Source::Builtin { name } => serde_json::to_value(name)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "builtin".into()),
        Source::Cifar { variant, .. } => match variant {
            CifarVariant::Cifar10 => "cifar10".into(),
            CifarVariant::Cifar100 => "cifar100".into(),
        },
        Source::Idx { train_images, .. } => folder_name(train_images, true, "idx"),
        Source::ImageFolder { train, .. } => folder_name(train, false, "folder"),
    };
    let clean: String = name
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let clean = clean.trim_matches('_').to_string();
    if clean.is_empty() {
        "data".into()
    } else {
        clean
    }
}

/// The name of the folder a dataset path points into: a file's folder (`file`), or the
/// folder itself, skipping split names such as `train`.
fn folder_name(path: &str, file: bool, fallback: &str) -> String {
    let mut p = std::path::Path::new(path);
    if file {
        p = p.parent().unwrap_or(p);
    }
    while let Some(n) = p.file_name().and_then(|n| n.to_str()) {
        if !matches!(
            n.to_lowercase().as_str(),
            "train" | "training" | "images" | "raw"
        ) {
            return n.to_string();
        }
        match p.parent() {
            Some(q) => p = q,
            None => break,
        }
    }
    fallback.to_string()
}
