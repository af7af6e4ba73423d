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
                        // Drawn from the metrics file after the run (`wants_curves`).
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

/// Whether a `visualize` task asks for the training curves (`loss.png`, `lr.png`,
/// `knn.png`), which are drawn from the metrics file once training is over.
pub fn wants_curves(r: &Recipe) -> bool {
    use crate::spec::downstream::{Plot, Task as SpecTask};
    r.downstream.iter().any(|t| match t {
        SpecTask::Visualize { plots, .. } => plots.contains(&Plot::TrainingCurves),
        SpecTask::Knn { .. } | SpecTask::LinearProbe { .. } | SpecTask::FineTune { .. } => false,
    })
}
