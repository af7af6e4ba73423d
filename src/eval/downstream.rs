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

/// The rows of every table: the trained encoder and its two baselines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Row {
    /// The encoder as trained.
    Trained,
    /// The same architecture and seed before any training step.
    Untrained,
    /// The normalised pixels themselves.
    RawPixels,
}

impl Row {
    /// The rows in table order.
    pub const ALL: [Row; 3] = [Row::Trained, Row::Untrained, Row::RawPixels];

    /// The row's heading in the report.
    pub fn title(self) -> &'static str {
        match self {
            Row::Trained => "trained",
            Row::Untrained => "untrained network",
            Row::RawPixels => "raw pixels",
        }
    }

    /// The row's key in `results.json`.
    pub fn key(self) -> &'static str {
        match self {
            Row::Trained => "trained",
            Row::Untrained => "untrained_network",
            Row::RawPixels => "raw_pixels",
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
    pub values: [Option<f64>; 3],
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

/// The data and the encoders the tasks measure, with each row's features extracted
/// once (per feature kind) and shared by every task.
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
    cache: BTreeMap<(Row, u8), (FeatureMatrix, FeatureMatrix)>,
    raw: Option<(FeatureMatrix, FeatureMatrix)>,
}

impl<'a, D: EngineDevice> Encoders<'a, D> {
    /// The encoders of `model` in `store`, with the untrained baseline built from
    /// `untrained` (the same config) and `seed` before any step.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        model: &'a Model,
        store: &'a mut ParamStore<D>,
        untrained: &ModelConfig,
        seed: u64,
        train: &'a Dataset,
        test: Option<&'a Dataset>,
        norm: &'a Normalize,
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
            train,
            test,
            norm,
            dir,
            batch,
            cache: BTreeMap::new(),
            raw: None,
        })
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
                Row::Untrained | Row::RawPixels => {
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

    /// `measure` of every row (only the trained one unless `baselines`), on the rows'
    /// training and test features: one result per row, `None` for rows skipped.
    pub fn each_row<R>(
        &mut self,
        baselines: bool,
        w: Which,
        mut measure: impl FnMut(&FeatureMatrix, &FeatureMatrix) -> Result<R, EvalError>,
    ) -> Result<[Option<R>; 3], EvalError> {
        let mut out = [None, None, None];
        for row in Row::ALL {
            if row != Row::Trained && !baselines {
                continue;
            }
            let (a, b) = self.features(row, w)?;
            out[row.index()] = Some(measure(a, b)?);
        }
        Ok(out)
    }
}

/// Runs `tasks` on `enc` in order, writing each task's metrics record (epoch `epoch`,
/// step `step`) to `metrics`, and assembles the results.
pub fn run_all<D: EngineDevice>(
    tasks: &[Task],
    enc: &mut Encoders<'_, D>,
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
    for task in tasks {
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
        } = task.run(enc)?;
        for c in columns {
            out.table.columns.push(c.name);
            for (row, v) in out.table.rows.iter_mut().zip(c.values) {
                row.1.push(v);
            }
        }
        if !record.is_empty() {
            let mut rec = Record::new(Kind::Eval, epoch, step);
            for (k, v) in record {
                rec = rec.with(&k, v);
            }
            metrics.write(&rec)?;
        }
        json["seconds"] = serde_json::json!(t0.elapsed().as_secs_f64());
        out.json.push(json);
        out.notes.extend(notes);
        out.figures.extend(figures);
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
