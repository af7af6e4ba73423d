//! The downstream tasks of a run: each task measures the trained encoder next to its
//! baselines (the same network untrained, and the raw pixels) and returns what the run
//! directory shows of it.
//!
//! A task is one [`Task`] variant with an engine-side config (built from the recipe by
//! `build::downstream`) and one `run` function in its own file (`knn.rs`,
//! `linear_probe.rs`, `fine_tune.rs`, `visualize.rs`). It gets the [`Encoders`] (the
//! three rows, with features extracted once and shared between tasks) and returns a
//! [`TaskOutput`]: its `results.json` entry, its columns of the report's table, its
//! metrics record, its remarks and its figures. [`run_all`] runs a list of tasks and
//! assembles their outputs; nothing here knows recipe types.
//!
//! Invariants: features of a row are extracted at most once per feature kind; the
//! trained parameters are never changed (features run batch norm in evaluation mode,
//! fine-tuning works on a copy); a task that needs labels fails before any work when the
//! data has no test split.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Instant;

use serde_json::Value;

use super::EvalError;
use super::features::{FeatureMatrix, Normalize, Which, extract, raw_pixels};
use crate::data::Dataset;
use crate::nn::EngineDevice;
use crate::nn::model::{Model, ModelConfig};
use crate::nn::params::ParamStore;
use crate::report::ReportError;
use crate::report::markdown::MetricsTable;
use crate::report::metrics::{Kind, MetricsWriter, Record};

/// The rows of every table: the trained encoder, its two baselines, and the
/// supervised network trained from scratch on the labels (`fine_tune` only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Row {
    /// The encoder as trained.
    Trained,
    /// The same architecture and seed before any training step.
    Untrained,
    /// The normalised pixels themselves.
    RawPixels,
    /// The backbone trained from scratch with cross-entropy on the labelled images.
    Supervised,
}

impl Row {
    /// The rows in table order.
    pub const ALL: [Row; 4] = [
        Row::Trained,
        Row::Untrained,
        Row::RawPixels,
        Row::Supervised,
    ];

    /// The rows a frozen-feature task measures.
    pub const FEATURES: [Row; 3] = [Row::Trained, Row::Untrained, Row::RawPixels];

    /// The row's heading in the report.
    pub fn title(self) -> &'static str {
        match self {
            Row::Trained => "trained",
            Row::Untrained => "untrained network",
            Row::RawPixels => "raw pixels",
            Row::Supervised => "supervised (from scratch)",
        }
    }

    /// The row's key in `results.json`.
    pub fn key(self) -> &'static str {
        match self {
            Row::Trained => "trained",
            Row::Untrained => "untrained_network",
            Row::RawPixels => "raw_pixels",
            Row::Supervised => "supervised",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A downstream task with its engine-side configuration.
#[derive(Clone, Debug)]
pub enum Task {
    /// Weighted kNN on frozen features ([`super::knn::KnnTask`]).
    Knn(super::knn::KnnTask),
    /// A linear classifier on frozen features ([`super::linear_probe::ProbeTask`]).
    LinearProbe(super::linear_probe::ProbeTask),
    /// The backbone and a fresh classifier trained end to end
    /// ([`super::fine_tune::FineTuneTask`]).
    FineTune(super::fine_tune::FineTuneTask),
    /// Pictures of what the encoder learned ([`super::visualize::VisualizeTask`]).
    Visualize(super::visualize::VisualizeTask),
}

impl Task {
    /// The task's name (`knn`, `linear_probe`, `fine_tune`, `visualize`).
    pub fn name(&self) -> &'static str {
        match self {
            Task::Knn(_) => "knn",
            Task::LinearProbe(_) => "linear_probe",
            Task::FineTune(_) => "fine_tune",
            Task::Visualize(_) => "visualize",
        }
    }

    /// Whether the task needs a labelled test split.
    pub fn needs_labels(&self) -> bool {
        match self {
            Task::Knn(_) | Task::LinearProbe(_) | Task::FineTune(_) => true,
            Task::Visualize(_) => false,
        }
    }

    fn run<D: EngineDevice>(
        &self,
        enc: &mut Encoders<'_, D>,
    ) -> Result<TaskOutput, DownstreamError> {
        match self {
            Task::Knn(t) => t.run(enc),
            Task::LinearProbe(t) => t.run(enc),
            Task::FineTune(t) => t.run(enc),
            Task::Visualize(t) => t.run(enc),
        }
    }
}

/// One column of the report's table: its heading and a value per [`Row`].
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    /// The heading (`kNN top-1 (k=20)`).
    pub name: String,
    /// Percent per row (`None`: not measured for that row).
    pub values: [Option<f64>; 4],
}

/// One labelled fraction's top-1 accuracies, per [`Row`].
#[derive(Clone, Debug, PartialEq)]
pub struct FractionPoint {
    /// The fraction of the training labels.
    pub fraction: f64,
    /// How many labelled images that is.
    pub labels: usize,
    /// Top-1 percent per row (`None`: not measured).
    pub top1: [Option<f64>; 4],
}

/// A task's accuracy against the labelled fraction: its report table and plot.
#[derive(Clone, Debug, PartialEq)]
pub struct Efficiency {
    /// What is measured (`kNN top-1 (k=20)`).
    pub metric: String,
    /// One point per fraction, in the recipe's order.
    pub points: Vec<FractionPoint>,
}

/// What one task produced.
#[derive(Clone, Debug, Default)]
pub struct TaskOutput {
    /// Its `results.json` entry (`"task"` first; `"seconds"` is added by [`run_all`]).
    pub json: Value,
    /// Its columns of the report's table.
    pub columns: Vec<Column>,
    /// Fields of its `eval` record in the metrics files (none: no record).
    pub record: Vec<(String, f64)>,
    /// Remarks for the report.
    pub notes: Vec<String>,
    /// `(title, file name)` of the pictures it wrote into the run directory.
    pub figures: Vec<(String, String)>,
    /// Its accuracy per labelled fraction, when it measured more than the full set.
    pub efficiency: Option<Efficiency>,
}

/// What the downstream tasks produced together.
#[derive(Clone, Debug, Default)]
pub struct DownstreamResults {
    /// One entry per task (results.json's `downstream`).
    pub json: Vec<Value>,
    /// The report's table.
    pub table: MetricsTable,
    /// The report's remarks.
    pub notes: Vec<String>,
    /// `(title, file name)` of the pictures written.
    pub figures: Vec<(String, String)>,
    /// The label-efficiency tables, `(title, table)`: fractions as rows, encoders as
    /// columns.
    pub tables: Vec<(String, MetricsTable)>,
}

/// Why the downstream tasks stopped.
#[derive(Debug)]
pub enum DownstreamError {
    /// A task needs a labelled test split the data does not have.
    NoTestSplit(&'static str),
    /// A task could not evaluate.
    Eval(EvalError),
    /// A picture or the metrics file could not be written.
    Report(ReportError),
    /// The augmentation-views picture could not be made or written.
    Views(crate::augment::AugmentError),
}

impl fmt::Display for DownstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DownstreamError::NoTestSplit(task) => write!(
                f,
                "the `{task}` task needs a labelled test split; set data.test_fraction"
            ),
            DownstreamError::Eval(e) => write!(f, "{e}"),
            DownstreamError::Report(e) => write!(f, "{e}"),
            DownstreamError::Views(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for DownstreamError {}

impl From<EvalError> for DownstreamError {
    fn from(e: EvalError) -> Self {
        DownstreamError::Eval(e)
    }
}

impl From<ReportError> for DownstreamError {
    fn from(e: ReportError) -> Self {
        DownstreamError::Report(e)
    }
}

impl From<crate::nn::ModelError> for DownstreamError {
    fn from(e: crate::nn::ModelError) -> Self {
        DownstreamError::Eval(EvalError::Model(e))
    }
}

/// A dataset the downstream tasks evaluate on: the pretraining data, or a task's own
/// (transfer), already at the encoder's input shape.
#[derive(Clone, Copy)]
pub struct EvalData<'a> {
    /// Its name in results, report columns, metrics fields and file names (`mnist`);
    /// `None` for the pretraining data.
    pub label: Option<&'a str>,
    /// Training split (kNN memory, probe and fine-tune training set, picture samples).
    pub train: &'a Dataset,
    /// Test split (`None`: the data has none; labelled tasks refuse to run).
    pub test: Option<&'a Dataset>,
    /// Normalisation for every image.
    pub norm: &'a Normalize,
}

/// Features and labelled subsets of one dataset, kept while another is in use.
#[derive(Default)]
struct Caches {
    features: BTreeMap<(Row, u8), (FeatureMatrix, FeatureMatrix)>,
    raw: Option<(FeatureMatrix, FeatureMatrix)>,
    subsets: BTreeMap<u64, std::sync::Arc<Vec<usize>>>,
}

/// The file name of a picture `stem` of the data labelled `label`: `stem.png`, or
/// `stem_<label>.png` for a task's own data ([`Encoders::file`] of the data in use).
pub fn labelled_file(label: Option<&str>, stem: &str) -> String {
    match label {
        Some(l) => format!("{stem}_{l}.png"),
        None => format!("{stem}.png"),
    }
}

/// The data and the encoders the tasks measure, with each row's features extracted
/// once per dataset (and feature kind) and shared by every task.
pub struct Encoders<'a, D: EngineDevice> {
    /// The trained encoder.
    pub model: &'a Model,
    /// Its parameters.
    pub store: &'a mut ParamStore<D>,
    untrained_model: Model,
    untrained_store: ParamStore<D>,
    /// Training split (kNN memory, probe training set, picture samples).
    pub train: &'a Dataset,
    /// Test split (`None`: the data has none; labelled tasks refuse to run).
    pub test: Option<&'a Dataset>,
    /// Normalisation for every image.
    pub norm: &'a Normalize,
    /// Where pictures go.
    pub dir: &'a Path,
    /// Images per forward pass.
    pub batch: usize,
    /// The run's seed (the untrained network, the labelled subsets).
    pub seed: u64,
    /// The name of the data in use (`None`: the pretraining data); see [`EvalData`].
    pub label: Option<&'a str>,
    cache: BTreeMap<(Row, u8), (FeatureMatrix, FeatureMatrix)>,
    raw: Option<(FeatureMatrix, FeatureMatrix)>,
    subsets: BTreeMap<u64, std::sync::Arc<Vec<usize>>>,
    /// The caches of the datasets not in use, by label.
    stash: BTreeMap<Option<String>, Caches>,
}

impl<'a, D: EngineDevice> Encoders<'a, D> {
    /// The encoders of `model` in `store`, with the untrained baseline built from
    /// `untrained` (the same config) and `seed` before any step, measuring on `data`
    /// until [`Encoders::use_data`] says otherwise.
    pub fn new(
        model: &'a Model,
        store: &'a mut ParamStore<D>,
        untrained: &ModelConfig,
        seed: u64,
        data: EvalData<'a>,
        dir: &'a Path,
        batch: usize,
    ) -> Result<Self, DownstreamError> {
        let mut untrained_store = ParamStore::new(store.device().clone());
        let untrained_model = Model::new(&mut untrained_store, untrained, seed)?;
        Ok(Encoders {
            model,
            store,
            untrained_model,
            untrained_store,
            train: data.train,
            test: data.test,
            norm: data.norm,
            dir,
            batch,
            seed,
            label: data.label,
            cache: BTreeMap::new(),
            raw: None,
            subsets: BTreeMap::new(),
            stash: BTreeMap::new(),
        })
    }

    /// Measures on `data` from now on; the features and subsets of the data in use
    /// are kept for when it comes back, so each dataset's features are extracted once.
    pub fn use_data(&mut self, data: EvalData<'a>) {
        if data.label == self.label {
            return;
        }
        let current = Caches {
            features: std::mem::take(&mut self.cache),
            raw: self.raw.take(),
            subsets: std::mem::take(&mut self.subsets),
        };
        self.stash.insert(self.label.map(str::to_string), current);
        let next = self
            .stash
            .remove(&data.label.map(str::to_string))
            .unwrap_or_default();
        self.cache = next.features;
        self.raw = next.raw;
        self.subsets = next.subsets;
        self.train = data.train;
        self.test = data.test;
        self.norm = data.norm;
        self.label = data.label;
    }

    /// The file name of a picture `stem` of the data in use: `stem.png`, or
    /// `stem_<label>.png` for a task's own data.
    pub fn file(&self, stem: &str) -> String {
        labelled_file(self.label, stem)
    }

    /// A title or heading `t` naming the data in use when it is a task's own.
    pub fn titled(&self, t: &str) -> String {
        match self.label {
            Some(l) => format!("{t} · {l}"),
            None => t.to_string(),
        }
    }

    /// The training images that keep their labels at `fraction`
    /// ([`balanced_subset`](super::subsets::balanced_subset) from the run's seed), the
    /// same for every row and task.
    pub fn labelled(&mut self, fraction: f64) -> Result<std::sync::Arc<Vec<usize>>, EvalError> {
        if let Some(s) = self.subsets.get(&fraction.to_bits()) {
            return Ok(s.clone());
        }
        let labels = self
            .train
            .labels()
            .ok_or_else(|| EvalError::Data("the training split has no labels".into()))?;
        let s = std::sync::Arc::new(super::subsets::balanced_subset(
            labels,
            self.train.num_classes(),
            fraction,
            self.seed,
        )?);
        self.subsets.insert(fraction.to_bits(), s.clone());
        Ok(s)
    }

    /// The test split of a labelled task (checked by [`run_all`] before the task runs).
    pub fn test(&self) -> Result<&'a Dataset, EvalError> {
        self.test
            .ok_or_else(|| EvalError::Data("this task needs a labelled test split".into()))
    }

    /// The untrained baseline network and its parameters.
    pub fn untrained(&self) -> (&Model, &ParamStore<D>) {
        (&self.untrained_model, &self.untrained_store)
    }

    /// `row`'s features of the training and the test split (`w`: which output; raw
    /// pixels ignore it).
    pub fn features(
        &mut self,
        row: Row,
        w: Which,
    ) -> Result<(&FeatureMatrix, &FeatureMatrix), EvalError> {
        let test = self.test()?;
        if row == Row::RawPixels {
            if self.raw.is_none() {
                self.raw = Some((
                    raw_pixels(self.train, self.norm)?,
                    raw_pixels(test, self.norm)?,
                ));
            }
            let (a, b) = self.raw.as_ref().expect("just filled");
            return Ok((a, b));
        }
        let k = (row, w as u8);
        if let std::collections::btree_map::Entry::Vacant(slot) = self.cache.entry(k) {
            let (m, s) = match row {
                Row::Trained => (self.model, &mut *self.store),
                // Raw pixels returned above; the supervised row has no frozen features.
                Row::Untrained | Row::RawPixels | Row::Supervised => {
                    (&self.untrained_model, &mut self.untrained_store)
                }
            };
            let a = extract(m, s, self.train, self.norm, w, self.batch)?;
            let b = extract(m, s, test, self.norm, w, self.batch)?;
            slot.insert((a, b));
        }
        let (a, b) = &self.cache[&k];
        Ok((a, b))
    }

    /// `measure` of every feature row (only the trained one unless `baselines`), on the
    /// rows' training features (only the images labelled at `fraction`) and test
    /// features: one result per row, `None` for rows skipped.
    pub fn each_row<R>(
        &mut self,
        baselines: bool,
        w: Which,
        fraction: f64,
        mut measure: impl FnMut(&FeatureMatrix, &FeatureMatrix) -> Result<R, EvalError>,
    ) -> Result<[Option<R>; 4], EvalError> {
        let subset = self.labelled(fraction)?;
        let mut out = [None, None, None, None];
        for row in Row::FEATURES {
            if row != Row::Trained && !baselines {
                continue;
            }
            let (a, b) = self.features(row, w)?;
            out[row.index()] = Some(if fraction == 1.0 {
                measure(a, b)?
            } else {
                measure(&a.select(&subset), b)?
            });
        }
        Ok(out)
    }
}

/// A task measured at each labelled fraction: per fraction the fraction, its number
/// of labelled images and one result per [`Row`].
pub type ByFraction<R> = Vec<(f64, usize, [Option<R>; 4])>;

/// What a task reports of [`ByFraction`] results with top-1 and top-5 per row: the
/// largest fraction's results fill `json`'s row keys (as a task at the full set always
/// did) and the report columns (named with the fraction when it is below 1); with
/// several fractions, `json["by_fraction"]` lists every one and the output carries the
/// label-efficiency table. `extra` adds a row's task-specific fields to its JSON.
pub fn fraction_output<R>(
    mut json: Value,
    metric: &str,
    short: &str,
    top5_column: bool,
    by: &ByFraction<R>,
    top: impl Fn(&R) -> (f64, f64),
    extra: impl Fn(&R, &mut Value),
) -> TaskOutput {
    let row_json = |r: &R| {
        let (t1, t5) = top(r);
        let mut v = serde_json::json!({"top1": t1, "top5": t5});
        extra(r, &mut v);
        v
    };
    let fractions: Vec<f64> = by.iter().map(|b| b.0).collect();
    let main = by
        .iter()
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .expect("at least one fraction");
    for row in Row::ALL {
        if let Some(r) = &main.2[row.index()] {
            json[row.key()] = row_json(r);
        }
    }
    let suffix = if main.0 < 1.0 {
        format!(" @{}", super::subsets::percent(main.0))
    } else {
        String::new()
    };
    let top1 = main.2.each_ref().map(|r| r.as_ref().map(|r| top(r).0));
    let top5 = main.2.each_ref().map(|r| r.as_ref().map(|r| top(r).1));
    let mut efficiency = None;
    if by.len() > 1 || main.0 < 1.0 {
        json["label_fraction"] = serde_json::json!(fractions);
        json["by_fraction"] = by
            .iter()
            .map(|(f, n, res)| {
                let mut e = serde_json::json!({"fraction": f, "labels": n});
                for row in Row::ALL {
                    if let Some(r) = &res[row.index()] {
                        e[row.key()] = row_json(r);
                    }
                }
                e
            })
            .collect();
    }
    if by.len() > 1 {
        efficiency = Some(Efficiency {
            metric: metric.to_string(),
            points: by
                .iter()
                .map(|(f, n, res)| FractionPoint {
                    fraction: *f,
                    labels: *n,
                    top1: res.each_ref().map(|r| r.as_ref().map(|r| top(r).0)),
                })
                .collect(),
        });
    }
    let mut columns = vec![Column {
        name: format!("{metric}{suffix}"),
        values: top1,
    }];
    if top5_column {
        columns.push(Column {
            name: format!("{}{suffix}", metric.replace("top-1", "top-5")),
            values: top5,
        });
    }
    TaskOutput {
        json,
        columns,
        record: vec![
            (format!("{short}_top1"), top1[0].unwrap_or(f64::NAN)),
            (format!("{short}_top5"), top5[0].unwrap_or(f64::NAN)),
        ],
        efficiency,
        ..Default::default()
    }
}

/// Runs `tasks` on `enc` in order, each on its data, writing each task's metrics
/// record (epoch `epoch`, step `step`) to `metrics`, and assembles the results. A task
/// on a task's own data gets its label in its results entry (`"data"`), its report
/// columns, its metrics fields and its file names.
pub fn run_all<'a, D: EngineDevice>(
    tasks: &[(&Task, EvalData<'a>)],
    enc: &mut Encoders<'a, D>,
    metrics: &mut MetricsWriter,
    epoch: u64,
    step: u64,
) -> Result<DownstreamResults, DownstreamError> {
    let mut out = DownstreamResults {
        table: MetricsTable {
            columns: Vec::new(),
            rows: Row::ALL
                .iter()
                .map(|r| (r.title().to_string(), Vec::new()))
                .collect(),
        },
        ..Default::default()
    };
    let mut described: Vec<&str> = Vec::new();
    for (task, data) in tasks {
        enc.use_data(*data);
        if let Some(l) = data.label
            && !described.contains(&l)
        {
            described.push(l);
            out.notes.push(format!(
                "Columns and pictures marked *· {l}* measure the encoder on another dataset, \
                 `{}` ({} training and {} test images, at the encoder's input shape); \
                 their untrained-network and raw-pixel rows are measured on it too.",
                enc.train.origin(),
                enc.train.len(),
                enc.test.map_or(0, Dataset::len),
            ));
        }
        if task.needs_labels() && enc.test.is_none() {
            return Err(DownstreamError::NoTestSplit(task.name()));
        }
        let t0 = Instant::now();
        let TaskOutput {
            mut json,
            columns,
            record,
            notes,
            figures,
            efficiency,
        } = task.run(enc)?;
        if let Some(l) = data.label {
            json["data"] = serde_json::json!(l);
        }
        if let Some(e) = efficiency {
            let (table, figure) = efficiency_outputs(task.name(), &e, enc)?;
            out.tables.push((
                format!("Label efficiency: {} (%)", enc.titled(&e.metric)),
                table,
            ));
            out.figures.push(figure);
        }
        for c in columns {
            out.table.columns.push(enc.titled(&c.name));
            for (row, v) in out.table.rows.iter_mut().zip(c.values) {
                row.1.push(v);
            }
        }
        if !record.is_empty() {
            let mut rec = Record::new(Kind::Eval, epoch, step);
            for (k, v) in record {
                let k = match data.label {
                    Some(l) => format!("{k}_{l}"),
                    None => k,
                };
                rec = rec.with(&k, v);
            }
            metrics.write(&rec)?;
        }
        json["seconds"] = serde_json::json!(t0.elapsed().as_secs_f64());
        out.json.push(json);
        // A task's remarks about its own data say which data they are about.
        out.notes
            .extend(notes.into_iter().map(|n| match data.label {
                Some(l) => format!("*· {l}*: {n}"),
                None => n,
            }));
        // A task's pictures of its own data say which data they show.
        out.figures
            .extend(figures.into_iter().map(|(t, f)| (enc.titled(&t), f)));
    }
    out.notes.push(
        "Baselines: *untrained network* is the same architecture with the recipe's seed \
         before any training step; *raw pixels* classifies the normalised pixels directly. \
         Linear probes standardise every feature with training-set statistics unless the \
         recipe turns that off."
            .into(),
    );
    out.table
        .rows
        .retain(|(_, v)| v.iter().any(Option::is_some));
    Ok(out)
}

/// A tick of a log10 axis of fractions, labelled as a percentage only where it falls
/// on 1, 2 or 5 times a power of ten (the axis ticks are spaced evenly in log10).
fn log_percent_tick(v: &f64) -> String {
    let x = 10f64.powf(*v);
    let decade = 10f64.powf(x.log10().floor());
    let nice = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .any(|m| ((x / decade) - m).abs() < 1e-3 * m);
    if nice {
        super::subsets::percent((x * 1e6).round() / 1e6)
    } else {
        String::new()
    }
}

/// A task's label-efficiency table (fractions as rows, encoders as columns, only the
/// columns measured) and its plot `label_efficiency_<task>[_<data>].png` (top-1
/// against the fraction on a log axis), written into the run directory.
fn efficiency_outputs<D: EngineDevice>(
    task: &str,
    e: &Efficiency,
    enc: &Encoders<'_, D>,
) -> Result<(MetricsTable, (String, String)), DownstreamError> {
    let used: Vec<Row> = Row::ALL
        .into_iter()
        .filter(|r| e.points.iter().any(|p| p.top1[r.index()].is_some()))
        .collect();
    let table = MetricsTable {
        columns: used.iter().map(|r| r.title().to_string()).collect(),
        rows: e
            .points
            .iter()
            .map(|p| {
                (
                    format!(
                        "{} ({} labels)",
                        super::subsets::percent(p.fraction),
                        p.labels
                    ),
                    used.iter().map(|r| p.top1[r.index()]).collect(),
                )
            })
            .collect(),
    };
    let series: Vec<crate::report::plots::Series> = used
        .iter()
        .map(|r| crate::report::plots::Series {
            name: r.title().to_string(),
            points: e
                .points
                .iter()
                .filter_map(|p| p.top1[r.index()].map(|v| (p.fraction.log10(), v)))
                .collect(),
        })
        .collect();
    let file = enc.file(&format!("label_efficiency_{task}"));
    let metric = enc.titled(&e.metric);
    crate::report::plots::line_chart_with_x(
        &enc.dir.join(&file),
        &format!("{metric} against the labelled fraction"),
        "labelled fraction of the training split (log scale)",
        &series,
        &log_percent_tick,
    )?;
    Ok((table, (format!("Label efficiency: {metric}"), file)))
}

#[cfg(test)]
mod tests {
    use super::log_percent_tick;

    #[test]
    fn log_ticks_label_only_round_fractions() {
        assert_eq!(log_percent_tick(&-2.0), "1%");
        assert_eq!(log_percent_tick(&-1.0), "10%");
        assert_eq!(log_percent_tick(&0.0), "100%");
        assert_eq!(log_percent_tick(&0.5f64.log10()), "50%");
        assert_eq!(log_percent_tick(&0.02f64.log10()), "2%");
        assert_eq!(log_percent_tick(&-1.8), "");
    }
}
