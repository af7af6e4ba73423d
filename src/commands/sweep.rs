//! `recipe sweep`: an adapter over [`recipe::sweep`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use recipe::diag::render_human;
use recipe::spec::Loader;
use recipe::spec::load::Override;
use recipe::sweep::summary::{Metric, RowStatus};
use recipe::sweep::{self, SweepRequest, grid};
use recipe::train::fit::Progress;
use recipe::train::resume::shell_line;
use recipe::train::signal;

/// The arguments of `recipe sweep`.
pub struct SweepArgs {
    /// Recipe file.
    pub file: PathBuf,
    /// `--grid PATH=[…]`, in order.
    pub grids: Vec<String>,
    /// `--set PATH=VALUE` for every combination.
    pub sets: Vec<String>,
    /// `--random N`.
    pub random: Option<usize>,
    /// `--seed S`.
    pub seed: u64,
    /// `--metric TASK.top1`.
    pub metric: String,
    /// `--out DIR`.
    pub out: Option<PathBuf>,
    /// `--no-data-check`.
    pub no_data_check: bool,
    /// `-q`.
    pub quiet: bool,
    /// Hidden: stop as if interrupted after this many steps in all.
    pub stop_after_steps: Option<u64>,
}

/// The command line that continues this sweep: the one typed, less the hidden
/// `--stop-after-steps` (which only simulates an interruption).
fn continue_command() -> String {
    let mut out = vec!["recipe".to_string()];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--stop-after-steps" {
            args.next();
            continue;
        }
        if a.starts_with("--stop-after-steps=") {
            continue;
        }
        out.push(a);
    }
    shell_line(&out)
}

/// `recipe sweep FILE --grid PATH=[…]… [--set …] [--random N --seed S] [--metric M]
/// [--out DIR]`: 0 when every combination finished, 1 for an invalid recipe or a failed
/// combination, 2 for bad arguments or unreadable data, 130 when interrupted.
pub fn sweep(a: SweepArgs) -> ExitCode {
    // Every problem with the arguments at once.
    let mut bad = false;
    let metric = match Metric::parse(&a.metric) {
        Ok(m) => Some(m),
        Err(e) => {
            eprintln!("error: {e}");
            bad = true;
            None
        }
    };
    let mut sets = Vec::new();
    for s in &a.sets {
        match Override::set(s) {
            Ok(o) => sets.push(o),
            Err(e) => {
                eprintln!("error: {e}");
                bad = true;
            }
        }
    }
    let axes = match grid::parse_axes(&a.grids) {
        Ok(axes) => Some(axes),
        Err(g) => {
            eprint!("{}", render_human(&g.diagnostics, &g.sources));
            bad = true;
            None
        }
    };
    let choices = match &axes {
        Some(axes) => match grid::expand(axes, a.random.map(|n| (n, a.seed))) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("error: {e}");
                bad = true;
                None
            }
        },
        None => None,
    };
    let (false, Some(metric), Some(axes), Some(choices)) = (bad, metric, axes, choices) else {
        eprintln!("error: the sweep's arguments are wrong; nothing ran");
        return ExitCode::from(2);
    };
    let combos = sweep::combinations(&axes, &choices, &sets);
    let checked = match sweep::validate(&Loader::new(), &a.file, &combos, &metric, !a.no_data_check)
    {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    eprint!("{}", checked.report);
    let Some(recipes) = checked.recipes else {
        eprintln!(
            "{}: {} error(s) in the {} combination(s) of the sweep; nothing ran",
            a.file.display(),
            checked.errors,
            combos.len()
        );
        return ExitCode::from(if checked.errors > checked.data_errors {
            1
        } else {
            2
        });
    };
    if let Err(e) = recipe::dist::check_launcher(1, false) {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let first = recipes[0].clone();
    let parent = a
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(&first.output.dir));
    let dir = sweep::sweep_dir(&parent, &first.name, &axes, &recipes);
    let command = continue_command();
    let req = SweepRequest {
        recipe_path: a.file.clone(),
        dir: dir.clone(),
        axes,
        sets: a.sets.clone(),
        random: a.random.map(|n| (n, a.seed)),
        combinations: combos.into_iter().zip(recipes).collect(),
        metric,
        command: command.clone(),
        progress: if a.quiet {
            Progress::Quiet
        } else {
            Progress::Auto
        },
        stop_after_steps: a.stop_after_steps,
    };
    let total = grid::product_size(&req.axes).unwrap_or(u64::MAX);
    let drawn = match a.random {
        Some(_) if (req.combinations.len() as u64) < total => {
            format!(" (drawn from {total} with seed {})", a.seed)
        }
        _ => String::new(),
    };
    eprintln!(
        "sweep `{}`: {} combination(s){drawn} of {} in {}",
        first.name,
        req.combinations.len(),
        req.axes
            .iter()
            .map(|x| match x.values.len() {
                1 => format!("{} (1 value)", x.path),
                n => format!("{} ({n} values)", x.path),
            })
            .collect::<Vec<_>>()
            .join(" × "),
        dir.display()
    );
    signal::install();
    let out = match sweep::run(&req) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(e.exit_code());
        }
    };
    println!("{}", out.table.trim_end());
    print_files(&dir, &out.plots);
    let total = out.rows.len();
    let failed = out.failed();
    if out.interrupted {
        let kept = out
            .rows
            .iter()
            .find(|r| r.status == RowStatus::Interrupted)
            .map(|r| format!("; {} keeps its checkpoint and resumes from it", r.dir))
            .unwrap_or_default();
        eprintln!(
            "sweep stopped: {} of {total} combination(s) finished ({} by this command, {} \
             earlier){kept}",
            out.finished(),
            out.ran,
            out.skipped
        );
        eprintln!("continue with: {command}");
        return ExitCode::from(130);
    }
    if !failed.is_empty() {
        eprintln!("{} of {total} combination(s) failed:", failed.len());
        for r in &failed {
            eprintln!(
                "  {} ({}): {}",
                r.number,
                r.dir,
                r.error.as_deref().unwrap_or_default()
            );
        }
        eprintln!("rerun the same command to retry them (finished ones are skipped): {command}");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

fn print_files(dir: &Path, plots: &[PathBuf]) {
    println!(
        "summary: {} (also {}, {})",
        dir.join(sweep::summary::MARKDOWN_FILE).display(),
        sweep::summary::CSV_FILE,
        sweep::summary::JSON_FILE
    );
    for p in plots {
        println!("plot: {}", p.display());
    }
}
