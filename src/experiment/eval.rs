//! `recipe eval`: the downstream tasks of a run again, on a saved model.

use std::path::Path;

use serde_json::{Value, json};

use super::{ExperimentError, data_err, env_err, files_err, normalization, recipe_err, usage_err};
use crate::checkpoint;
use crate::data;
use crate::eval::collapse;
use crate::eval::downstream::{Encoders, EvalData, Task as DTask, run_all};
use crate::nn::EngineDevice;
use crate::nn::device::OnDevice;
use crate::nn::model::Model;
use crate::nn::params::ParamStore;
use crate::report::metrics::MetricsWriter;
use crate::runtime;
use crate::spec::Recipe;
use crate::spec::downstream::Task;
use crate::train::resume;
use crate::train::rundir;

/// `recipe eval`: the downstream tasks (all, or those in `only`) on a saved model —
/// a run directory (its `checkpoints/last.safetensors`) or a checkpoint file inside
/// one — writing pictures and `eval.json` into the run directory.
///
/// `sets` are `--set` overrides of the run's recipe; only `downstream` may change
/// (training is over). Task names are checked before anything runs: an unknown name
/// is an error with a suggestion, a task the recipe lacks an error that says how to
/// add it. `eval.json` keeps earlier results: an entry is replaced only by a new
/// result for the same task configuration.
pub fn evaluate(
    target: &Path,
    only: Option<&[String]>,
    sets: &[String],
) -> Result<Value, ExperimentError> {
    for name in only.unwrap_or_default() {
        if !Task::NAMES.contains(&name.as_str()) {
            let hint = crate::diag::did_you_mean(name, Task::NAMES)
                .map(|m| format!("did you mean `{m}`? "))
                .unwrap_or_default();
            return Err(usage_err(format!(
                "unknown task `{name}`\nhelp: {hint}the tasks are {}",
                Task::NAMES.join(", ")
            )));
        }
    }
    for set in sets {
        let path = set.split_once('=').map_or(set.as_str(), |(p, _)| p).trim();
        if path != "downstream" && !path.starts_with("downstream.") {
            return Err(usage_err(format!(
                "`--set {set}`: `recipe eval` can change only `downstream` (the model is \
                 trained); to change training, continue the run with `recipe run --resume`"
            )));
        }
    }
    let (dir, ckpt) = if target.is_dir() {
        (
            target.to_path_buf(),
            target.join(rundir::CHECKPOINTS).join(rundir::LAST),
        )
    } else {
        let dir = target.parent().and_then(Path::parent).ok_or_else(|| {
            usage_err(format!(
                "`{}` is not inside a run directory",
                target.display()
            ))
        })?;
        (dir.to_path_buf(), target.to_path_buf())
    };
    if !dir.join(rundir::RECIPE_FILE).is_file() {
        return Err(usage_err(format!(
            "`{}` is not a run directory (it has no {})",
            dir.display(),
            rundir::RECIPE_FILE
        )));
    }
    let loaded = crate::spec::Loader::new()
        .load_file(&dir.join(rundir::RECIPE_FILE), sets)
        .map_err(files_err)?;
    let Some(r) = loaded.valid_recipe().cloned() else {
        return Err(recipe_err(format!(
            "the run's recipe{} is not valid:\n{}",
            if sets.is_empty() {
                ""
            } else {
                " with these overrides"
            },
            crate::diag::render_human(&loaded.diagnostics, &loaded.sources).trim_end()
        )));
    };
    let present: Vec<&str> = r.downstream.iter().map(Task::name).collect();
    for name in only.unwrap_or_default() {
        if !present.contains(&name.as_str()) {
            let d = resume::shell_line(&[dir.display().to_string()]);
            return Err(usage_err(format!(
                "this run's recipe has no `{name}` task (it has: {})\nhelp: to evaluate it \
                 with the task's defaults (`recipe render` shows them): recipe eval {d} --task \
                 {name} --set 'downstream=[{{task: {name}}}]'",
                if present.is_empty() {
                    "none".to_string()
                } else {
                    present.join(", ")
                }
            )));
        }
    }
    if r.downstream.is_empty() {
        return Err(usage_err(format!(
            "this run's recipe has no downstream tasks; add some with --set, e.g. \
             recipe eval {} --set 'downstream=[{{task: knn}}]'",
            resume::shell_line(&[dir.display().to_string()])
        )));
    }
    runtime::configure_threads(runtime::threads(r.train.threads, runtime::launcher_ranks()))
        .map_err(env_err)?;
    let size = crate::build::view_sizes(&r)
        .first()
        .map_or(r.data.image_size, |(s, _)| *s);
    let (device, note) = crate::build::device(r.train.device, r.seed).map_err(env_err)?;
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    struct Evaluate<'a>(
        &'a Recipe,
        usize,
        &'a Path,
        &'a Path,
        Option<&'a [String]>,
        &'a [String],
    );
    impl OnDevice for Evaluate<'_> {
        type Output = Result<Value, ExperimentError>;
        fn run<D: EngineDevice>(self, dev: D) -> Self::Output {
            let Evaluate(r, size, dir, ckpt, only, sets) = self;
            evaluate_on(dev, r, size, dir, ckpt, only, sets)
        }
    }
    device.dispatch(Evaluate(&r, size, &dir, &ckpt, only, sets))
}

fn evaluate_on<D: EngineDevice>(
    dev: D,
    r: &Recipe,
    size: usize,
    dir: &Path,
    ckpt: &Path,
    only: Option<&[String]>,
    sets: &[String],
) -> Result<Value, ExperimentError> {
    let data = data::load(&crate::build::data::config(&r.data, r.seed)).map_err(data_err)?;
    let mut store = ParamStore::new(dev);
    let model = Model::new(
        &mut store,
        &crate::build::model(r, size).map_err(recipe_err)?,
        r.seed,
    )
    .map_err(recipe_err)?;
    checkpoint::load_training(ckpt, &mut store, None, None, None)?;
    let norm = normalization(r);
    let mut metrics = MetricsWriter::resume(dir, &[], u64::MAX)?.0;
    let meta = checkpoint::read_meta(ckpt)?;
    // The recipe's tasks (or the named ones), with the recipe form of each for the
    // merge key of `eval.json`.
    let keep = |name: &str| only.is_none_or(|names| names.iter().any(|n| n == name));
    // `build::downstream` maps the recipe's tasks one to one, in order: pair them
    // before choosing, so each result keeps its own recipe form.
    let built = crate::build::downstream(r).map_err(recipe_err)?;
    debug_assert_eq!(built.len(), r.downstream.len());
    let (ran, (tasks, indices)): (Vec<&Task>, (Vec<DTask>, Vec<usize>)) = r
        .downstream
        .iter()
        .zip(built)
        .enumerate()
        .filter(|(_, (t, _))| keep(t.name()))
        .map(|(i, (t, b))| (t, (b, i)))
        .unzip();
    let task_sets = super::TaskDatasets::load(r)?;
    let main = EvalData {
        label: None,
        train: &data.train,
        test: data.test.as_ref(),
        norm: &norm,
    };
    let paired = task_sets.pair(&tasks, &indices, main);
    let untrained = crate::build::model(r, model.input.1).map_err(recipe_err)?;
    let mut enc = Encoders::new(
        &model,
        &mut store,
        &untrained,
        r.seed,
        main,
        dir,
        r.train.batch_size.max(64),
    )?;
    let res = run_all(
        &paired,
        &mut enc,
        &mut metrics,
        r.train.epochs as u64,
        meta.step,
    )?;
    drop(enc);
    // The collapse indicators of this checkpoint, on the run's fixed sample.
    let watch = if r.train.watch_samples > 0 {
        let sample = data.train.select(&collapse::sample_indices(
            data.train.len(),
            r.train.watch_samples,
            r.seed,
        ));
        let ind = collapse::measure(
            &model,
            &mut store,
            &sample,
            &norm,
            r.train.batch_size.max(64),
        )
        .map_err(|e| recipe_err(format!("collapse indicators: {e}")))?;
        Some(json!({
            "checkpoint": ckpt.display().to_string(),
            "step": meta.step,
            "samples": ind.samples,
            "embedding_dim": ind.embedding_dim,
            "embedding_std": ind.embedding_std,
            "healthy_std": ind.healthy_std(),
            "feature_dim": ind.feature_dim,
            "feature_std": ind.feature_std,
            "feature_rank": ind.feature_rank,
            "max_rank": ind.max_rank(),
            "collapsed": !ind.warnings().is_empty(),
            "warnings": ind.warnings(),
        }))
    } else {
        None
    };
    let when = rundir::timestamp(std::time::SystemTime::now());
    let fresh: Vec<Value> = res
        .json
        .iter()
        .zip(&ran)
        .map(|(entry, task)| {
            let mut e = entry.clone();
            e["config"] = serde_json::to_value(task).unwrap_or(Value::Null);
            e["checkpoint"] = json!(ckpt.display().to_string());
            e["step"] = json!(meta.step);
            e["time"] = json!(when);
            if !sets.is_empty() {
                e["overrides"] = json!(sets);
            }
            e
        })
        .collect();
    let path = dir.join("eval.json");
    let earlier: Vec<Value> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v.get("downstream").and_then(Value::as_array).cloned())
        .unwrap_or_default();
    let merged = merge_evaluations(earlier, &fresh);
    // The report keeps every evaluation, newest last, beside the training's own results.
    let mut facts = vec![
        format!("Checkpoint: `{}` (step {})", ckpt.display(), meta.step),
        format!(
            "Tasks: {}",
            ran.iter().map(|t| t.name()).collect::<Vec<_>>().join(", ")
        ),
    ];
    facts.extend(
        sets.iter()
            .map(|s| format!("Override: `--set {}`", s.replace('`', "'"))),
    );
    let section = crate::report::markdown::render_evaluation(
        &format!("Evaluation with `recipe eval` ({when})"),
        &facts,
        &res.table,
        &res.tables,
        &res.notes,
        &res.figures,
    );
    let report = dir.join("report.md");
    let before = std::fs::read_to_string(&report).unwrap_or_default();
    rundir::write_text(&report, &(before + &section)).map_err(ExperimentError::Files)?;
    let mut doc = json!({"downstream": merged});
    // One indicator entry per checkpoint (a re-evaluation replaces its own).
    let mut watches: Vec<Value> = std::fs::read_to_string(&path)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v.get("watch").and_then(Value::as_array).cloned())
        .unwrap_or_default();
    if let Some(w) = &watch {
        watches.retain(|e| e.get("checkpoint") != w.get("checkpoint"));
        watches.push(w.clone());
    }
    if !watches.is_empty() {
        doc["watch"] = Value::Array(watches);
    }
    rundir::write_text(
        &path,
        &(serde_json::to_string_pretty(&doc).unwrap_or_default() + "\n"),
    )
    .map_err(ExperimentError::Files)?;
    Ok(
        json!({"checkpoint": ckpt.display().to_string(), "step": meta.step,
        "downstream": fresh, "watch": watch}),
    )
}

/// `earlier` entries of `eval.json` with `fresh` ones merged in: a fresh entry
/// replaces an earlier one with the same task configuration and checkpoint, and is
/// appended otherwise. Earlier entries without a configuration (older files) are kept.
pub fn merge_evaluations(mut earlier: Vec<Value>, fresh: &[Value]) -> Vec<Value> {
    for f in fresh {
        let same = |e: &Value| {
            e.get("config").is_some()
                && e.get("config") == f.get("config")
                && e.get("checkpoint") == f.get("checkpoint")
        };
        match earlier.iter().position(same) {
            Some(i) => earlier[i] = f.clone(),
            None => earlier.push(f.clone()),
        }
    }
    earlier
}
