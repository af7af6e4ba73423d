//! `recipe run` and `recipe eval`: adapters over [`recipe::experiment`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use recipe::experiment::{self, ExperimentError, RunOutcome, RunRequest};
use recipe::train::fit::Progress;
use recipe::train::{rundir, signal};

use super::load_valid;

fn exit_for(e: &ExperimentError) -> ExitCode {
    ExitCode::from(e.exit_code())
}

/// `recipe run [FILE] [--set …] [--out DIR] [--resume RUN_DIR] [--force]`.
#[allow(clippy::too_many_arguments)]
pub fn run(
    file: Option<&Path>,
    sets: &[String],
    out: Option<PathBuf>,
    resume: Option<PathBuf>,
    force: bool,
    quiet: bool,
    stop_after_steps: Option<u64>,
) -> ExitCode {
    // Without a file, a resumed run reads the recipe it was started with.
    let file_arg = file;
    let file: PathBuf = match (file, &resume) {
        (Some(f), _) => f.to_path_buf(),
        (None, Some(dir)) => dir.join(rundir::RECIPE_FILE),
        (None, None) => {
            eprintln!("error: name a recipe file, or a run directory with --resume");
            return ExitCode::from(2);
        }
    };
    let r = match load_valid(&file, sets, true) {
        Ok((r, _)) => r,
        Err(code) => return code,
    };
    // Data-parallel under `mpirun`/`srun` when built with the `mpi` feature; the guard
    // keeps MPI initialised until this function returns.
    #[cfg(feature = "mpi")]
    let (_mpi, dist) = match recipe::dist::mpi::init() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    #[cfg(not(feature = "mpi"))]
    let dist = {
        if let Err(e) = recipe::dist::check_launcher(1, false) {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
        recipe::dist::solo()
    };
    let rank0 = dist.rank() == 0;
    signal::install();
    let args: Vec<String> = std::env::args().collect();
    let mut command = vec!["recipe".to_string()];
    command.extend(args.into_iter().skip(1));
    let req = RunRequest {
        recipe: r,
        // A resumed run without a file reads its own recipe: nothing new to record.
        recipe_path: file_arg.map(Path::to_path_buf),
        overrides: sets.to_vec(),
        command: recipe::train::resume::shell_line(&command),
        out,
        dir: None,
        resume,
        force,
        progress: if quiet {
            Progress::Quiet
        } else {
            Progress::Auto
        },
        stop_after_steps,
        dist: dist.clone(),
    };
    if rank0 {
        let with = if sets.is_empty() {
            String::new()
        } else {
            format!(" (with --set {})", sets.join(", --set "))
        };
        eprintln!(
            "run `{}`{with}: {} on {}, {} epochs of batches of {}",
            req.recipe.name,
            req.recipe.loss.method(),
            req.recipe.model.backbone.arch(),
            req.recipe.train.epochs,
            req.recipe.train.batch_size
        );
    }
    match experiment::run(&req) {
        Ok(RunOutcome::Finished { .. }) if !rank0 => ExitCode::SUCCESS,
        Ok(RunOutcome::Interrupted { .. }) if !rank0 => ExitCode::from(130),
        Ok(RunOutcome::Finished { dir, results }) => {
            print_summary(&results);
            println!("run directory: {}", dir.display());
            println!("report: {}", dir.join("report.md").display());
            ExitCode::SUCCESS
        }
        Ok(RunOutcome::Interrupted { dir, step }) => {
            eprintln!(
                "stopped after step {step}; the state is saved in {}",
                dir.join(rundir::CHECKPOINTS).join(rundir::LAST).display()
            );
            // The run's own recipe.yaml already holds every override, so the bare
            // `--resume` is the command that continues it unchanged.
            eprintln!(
                "resume with: recipe run --resume {}",
                recipe::train::resume::shell_line(&[dir.display().to_string()])
            );
            ExitCode::from(130)
        }
        Err(e) => {
            if dist.world() > 1 {
                // The other ranks may be waiting in a collective: stop the whole job.
                eprintln!("error (rank {}): {e}", dist.rank());
                dist.abort(i32::from(e.exit_code()));
            }
            eprintln!("error: {e}");
            if let ExperimentError::Changed { dir, .. } = &e {
                let d = recipe::train::resume::shell_line(&[dir.display().to_string()]);
                eprintln!(
                    "help: `recipe run --resume {d}` alone continues the run as started (it \
                     reads {d}/{})",
                    rundir::RECIPE_FILE
                );
                eprintln!(
                    "help: add --force to continue with these changes from the last \
                     checkpoint's step; the previous recipe and results are kept under \
                     {d}/{}/ and the change is recorded in {d}/{}",
                    recipe::train::resume::HISTORY,
                    recipe::train::resume::INVOCATIONS
                );
            }
            exit_for(&e)
        }
    }
}

fn print_summary(results: &serde_json::Value) {
    if let Some(t) = results.get("training") {
        println!(
            "trained {} epochs ({} steps) in {:.0} s at {:.0} images/s; final epoch loss {:.4}",
            t["epochs"],
            t["steps"],
            t["seconds"].as_f64().unwrap_or(f64::NAN),
            t["images_per_s"].as_f64().unwrap_or(f64::NAN),
            t["final_epoch_loss"].as_f64().unwrap_or(f64::NAN)
        );
    }
    print_downstream(results);
}

/// The collapse indicators' line (and warnings) of a run's or an evaluation's JSON.
fn print_watch(results: &serde_json::Value) {
    let Some(w) = results.get("watch").filter(|w| w.is_object()) else {
        return;
    };
    let num = |k: &str| w[k].as_f64().unwrap_or(f64::NAN);
    println!(
        "collapse indicators on {} training images: embedding std {:.4} (1/√d = {:.4} when \
         spread out, 0 when collapsed), backbone effective rank {:.1} of at most {}",
        w["samples"],
        num("embedding_std"),
        num("healthy_std"),
        num("feature_rank"),
        w["max_rank"]
    );
    for m in w["warnings"].as_array().into_iter().flatten() {
        println!("warning: {}", m.as_str().unwrap_or_default());
    }
}

fn print_downstream(results: &serde_json::Value) {
    print_watch(results);
    let Some(tasks) = results.get("downstream").and_then(|d| d.as_array()) else {
        return;
    };
    // One line per task, or per labelled fraction when the task measured several.
    let line = |label: &str, v: &serde_json::Value| {
        let mut parts = Vec::new();
        for row in ["trained", "untrained_network", "raw_pixels", "supervised"] {
            if let Some(x) = v
                .get(row)
                .and_then(|r| r.get("top1"))
                .and_then(|x| x.as_f64())
            {
                parts.push(format!("{} {x:.2}%", row.replace('_', " ")));
            }
        }
        if !parts.is_empty() {
            println!("{label} top-1: {}", parts.join(", "));
        }
    };
    for t in tasks {
        let task = t["task"].as_str().unwrap_or("?");
        // A task on its own data (transfer) names it.
        let name = match t.get("data").and_then(|d| d.as_str()) {
            Some(d) => format!("{task} on {d}"),
            None => task.to_string(),
        };
        match t.get("by_fraction").and_then(|b| b.as_array()) {
            Some(points) => {
                for p in points {
                    let f = p["fraction"].as_f64().unwrap_or(f64::NAN);
                    let label = format!(
                        "{name} at {} ({} labels)",
                        recipe::eval::subsets::percent(f),
                        p["labels"]
                    );
                    line(&label, p);
                }
            }
            None => line(&name, t),
        }
    }
}

/// `recipe eval RUN_DIR_OR_CHECKPOINT [--task …] [--set downstream…]`.
pub fn eval(target: &Path, tasks: &[String], sets: &[String]) -> ExitCode {
    let only = (!tasks.is_empty()).then_some(tasks);
    match experiment::evaluate(target, only, sets) {
        Ok(doc) => {
            print_downstream(&doc);
            let dir = if target.is_dir() {
                target.to_path_buf()
            } else {
                target
                    .parent()
                    .and_then(Path::parent)
                    .unwrap_or(target)
                    .to_path_buf()
            };
            println!(
                "results added to {} (earlier results are kept)",
                dir.join("eval.json").display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            exit_for(&e)
        }
    }
}
