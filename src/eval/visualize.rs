//! The `visualize` downstream task: pictures of what the trained encoder learned —
//! first-layer filters, activation maps per stage, nearest neighbours, a PCA and a
//! t-SNE map of the embeddings — and of the augmentation chain's views, written into the run directory.
//! (The training curves are drawn from the metrics file after the run, by
//! `report::curves`.)

use std::sync::Arc;

use super::EvalError;
use super::downstream::{DownstreamError, Encoders, Row, TaskOutput};
use super::features::FeatureMatrix;
use super::features::{Which, extract};
use super::knn::{Metric, nearest};
use super::pca::pca_2d;
use super::tsne::{TsneConfig, max_perplexity, tsne_2d};
use crate::augment::{self, Chain};
use crate::nn::EngineDevice;
use crate::report::{grid, plots};

/// One picture of the `visualize` task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Figure {
    /// `filters.png`: the first convolution's kernels.
    Filters,
    /// `feature_maps.png`: each stage's activations for a few images.
    FeatureMaps,
    /// `nearest_neighbors.png`: test images and their nearest training images.
    NearestNeighbors,
    /// `embedding_pca.png`: a 2-D PCA of test embeddings coloured by class.
    EmbeddingPca,
    /// `embedding_tsne.png`: a 2-D t-SNE map of the same test embeddings.
    EmbeddingTsne,
    /// `augmentation_views.png`: training images and their augmented views.
    AugmentationViews,
}

/// The `visualize` task's settings.
#[derive(Clone, Debug)]
pub struct VisualizeTask {
    /// The pictures, in order.
    pub figures: Vec<Figure>,
    /// Images in the PCA and t-SNE plots.
    pub samples: usize,
    /// Images shown in the activation-map, neighbour and views pictures.
    pub queries: usize,
    /// Neighbours per query.
    pub neighbors: usize,
    /// t-SNE's perplexity (lowered to what the test set allows, with a note).
    pub perplexity: f64,
    /// Seed of the t-SNE map.
    pub seed: u64,
    /// The training views' chain and seed (for [`Figure::AugmentationViews`]).
    pub views: Option<(Arc<Chain>, u64)>,
}

/// The perplexity a t-SNE map of `n` points uses: `requested`, or the most `n` points
/// allow (`(n − 1) / 3`) with a note for the report when that is less.
pub fn fit_perplexity(requested: f64, n: usize) -> (f64, Option<String>) {
    let max = max_perplexity(n);
    if requested <= max {
        return (requested, None);
    }
    let note = format!(
        "The t-SNE picture uses perplexity {max:.2} instead of {requested}: its {n} test \
         images allow at most (n − 1) / 3."
    );
    (max, Some(note))
}

/// `n` indices spread evenly over `0..len`.
fn spread(len: usize, n: usize) -> Vec<usize> {
    let n = n.min(len);
    (0..n).map(|i| i * len / n.max(1)).collect()
}

impl VisualizeTask {
    /// Writes the pictures; one `results.json` entry listing the files, and the
    /// figures for the report.
    pub fn run<D: EngineDevice>(
        &self,
        enc: &mut Encoders<'_, D>,
    ) -> Result<TaskOutput, DownstreamError> {
        let mut figs: Vec<(String, String)> = Vec::new();
        let mut notes: Vec<String> = Vec::new();
        let mut json = serde_json::Map::new();
        let eval_set = enc.test.unwrap_or(enc.train);
        let dir = enc.dir;
        // On a task's own data, file names carry its label (`run_all` adds it to titles).
        let label = enc.label;
        let file = |stem: &str| super::downstream::labelled_file(label, stem);
        let queries = self.queries;
        // The embedded images and their features, shared by the PCA and t-SNE pictures.
        let mut embedded: Option<(crate::data::Dataset, FeatureMatrix)> = None;
        let mut embed = |enc: &mut Encoders<'_, D>| -> Result<_, DownstreamError> {
            if embedded.is_none() {
                let n = self.samples.min(eval_set.len()).max(2);
                let sub = eval_set.select(&spread(eval_set.len(), n));
                let f = extract(
                    enc.model,
                    enc.store,
                    &sub,
                    enc.norm,
                    Which::Backbone,
                    enc.batch,
                )?;
                embedded = Some((sub, f));
            }
            Ok(embedded.clone().expect("just set"))
        };
        for figure in &self.figures {
            match figure {
                Figure::Filters => {
                    let name = enc.model.backbone.first_conv_weight_name();
                    let id = enc
                        .store
                        .id(&name)
                        .ok_or_else(|| EvalError::Data(format!("no `{name}` in the model")))?;
                    let shape = &enc.store.get(id).shape;
                    let shape = [shape[0], shape[1], shape[2], shape[3]];
                    grid::filters_png(&dir.join(file("filters")), &enc.store.data(id), shape)?;
                    figs.push(("First-layer filters".into(), file("filters")));
                }
                Figure::FeatureMaps => {
                    let n = queries.min(eval_set.len()).max(1);
                    let idx = spread(eval_set.len(), n);
                    let imgs: Vec<_> = idx.iter().map(|&i| eval_set.image(i)).collect();
                    let (c, h, w) = eval_set.shape();
                    let mut x = Vec::with_capacity(n * c * h * w);
                    for im in &imgs {
                        let im = enc.norm.apply(im.clone()).map_err(EvalError::from)?;
                        x.extend_from_slice(&im.data);
                    }
                    let dev = enc.store.device().clone();
                    let t = dfdx::prelude::TensorFromVec::tensor_from_vec(&dev, x, (n, c, h, w));
                    let stages = enc.model.backbone.stage_outputs(enc.store, t)?;
                    let stages: Vec<(String, Vec<f32>, [usize; 4])> = stages
                        .into_iter()
                        .map(|(name, t)| {
                            let s = *dfdx::prelude::HasShape::shape(&t);
                            (name, t.as_vec(), [s.0, s.1, s.2, s.3])
                        })
                        .collect();
                    grid::feature_maps_png(&dir.join(file("feature_maps")), &imgs, &stages, 8)?;
                    figs.push(("Activation maps per stage".into(), file("feature_maps")));
                }
                Figure::NearestNeighbors => {
                    let Some(test) = enc.test else { continue };
                    let train = enc.train;
                    let (a, b) = enc.features(Row::Trained, Which::Backbone)?;
                    let q = spread(b.n, queries.min(b.n).max(1));
                    let qm = b.select(&q);
                    let nn = nearest(a, &qm, self.neighbors, Metric::Cosine)?;
                    let qimgs: Vec<_> = q.iter().map(|&i| test.image(i)).collect();
                    let nimgs: Vec<Vec<_>> = nn
                        .iter()
                        .map(|row| row.iter().map(|(j, _)| train.image(*j)).collect())
                        .collect();
                    let correct: Vec<Vec<bool>> = nn
                        .iter()
                        .zip(&q)
                        .map(|(row, &qi)| {
                            row.iter()
                                .map(|(j, _)| train.label(*j) == test.label(qi))
                                .collect()
                        })
                        .collect();
                    grid::neighbors_png(
                        &dir.join(file("nearest_neighbors")),
                        &qimgs,
                        &nimgs,
                        &correct,
                    )?;
                    figs.push((
                        "Test images and their nearest training images (green: same class)".into(),
                        file("nearest_neighbors"),
                    ));
                }
                Figure::EmbeddingPca => {
                    let (sub, f) = embed(enc)?;
                    let n = sub.len();
                    let p = pca_2d(&f)?;
                    let classes: Vec<u32> =
                        (0..sub.len()).map(|i| sub.label(i).unwrap_or(0)).collect();
                    plots::scatter(
                        &dir.join(file("embedding_pca")),
                        &format!(
                            "PCA of {} test embeddings ({:.0}% + {:.0}% of the variance)",
                            n,
                            100.0 * p.variance_ratio[0],
                            100.0 * p.variance_ratio[1]
                        ),
                        &p.coords,
                        &classes,
                        sub.classes(),
                    )?;
                    figs.push(("Embedding PCA".into(), file("embedding_pca")));
                }
                Figure::EmbeddingTsne => {
                    let (sub, f) = embed(enc)?;
                    let n = sub.len();
                    if n < 4 {
                        notes.push(format!(
                            "No t-SNE picture: the test set has {n} images, fewer than 4."
                        ));
                        continue;
                    }
                    let (perplexity, note) = fit_perplexity(self.perplexity, n);
                    notes.extend(note);
                    let clock = std::time::Instant::now();
                    let t = tsne_2d(
                        &f,
                        &TsneConfig {
                            perplexity,
                            seed: self.seed,
                        },
                    )?;
                    let secs = clock.elapsed().as_secs_f64();
                    let classes: Vec<u32> =
                        (0..sub.len()).map(|i| sub.label(i).unwrap_or(0)).collect();
                    plots::scatter(
                        &dir.join(file("embedding_tsne")),
                        &format!(
                            "t-SNE of {n} test embeddings (perplexity {}, KL {:.3})",
                            // 30, or 13.33 when lowered to fit the points.
                            format!("{perplexity:.2}")
                                .trim_end_matches('0')
                                .trim_end_matches('.'),
                            t.kl
                        ),
                        &t.coords,
                        &classes,
                        sub.classes(),
                    )?;
                    json.insert(
                        "tsne".into(),
                        serde_json::json!({"points": n, "perplexity": perplexity,
                            "kl_divergence": t.kl, "seconds": secs}),
                    );
                    figs.push(("Embedding t-SNE".into(), file("embedding_tsne")));
                }
                Figure::AugmentationViews => {
                    let Some((chain, seed)) = &self.views else {
                        continue;
                    };
                    let train = enc.train;
                    let idx = spread(train.len(), queries.min(train.len()).max(1));
                    let imgs: Vec<_> = idx.iter().map(|&i| train.image(i)).collect();
                    augment::write_preview(
                        chain,
                        &imgs,
                        *seed,
                        augment::Scale::Auto,
                        &dir.join(file("augmentation_views")),
                    )
                    .map_err(DownstreamError::Views)?;
                    figs.push((
                        "Training images and their augmented views".into(),
                        file("augmentation_views"),
                    ));
                }
            }
        }
        let mut out = serde_json::Map::new();
        out.insert("task".into(), "visualize".into());
        out.insert(
            "files".into(),
            figs.iter().map(|f| f.1.clone()).collect::<Vec<_>>().into(),
        );
        out.extend(json);
        Ok(TaskOutput {
            json: serde_json::Value::Object(out),
            figures: figs,
            notes,
            ..Default::default()
        })
    }
}
