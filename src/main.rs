//! The `recipe` command line: a thin shell over the library. Each subcommand parses
//! its arguments, calls the library and maps the outcome to an exit code:
//! 0 success / valid, 1 invalid recipe or failed run, 2 usage or I/O error, 130
//! interrupted (state saved).

mod commands;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use commands::Format;
use recipe::spec::schema;

/// Declarative contrastive representation learning on images.
#[derive(Parser)]
#[command(name = "recipe", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check recipes against the schema and the semantic rules; report every problem.
    Validate {
        /// Recipe files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Override a key before checking: `--set loss.temperature=0.2` (value is YAML).
        #[arg(long = "set", value_name = "PATH=VALUE")]
        sets: Vec<String>,
        /// Diagnostic format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
        /// Do not check that the data files and folders exist.
        #[arg(long)]
        no_data_check: bool,
    },
    /// Validate, read the data, build the model, and print shapes, parameters, FLOPs,
    /// memory and the learning-rate plan.
    Plan {
        /// Recipe file.
        file: PathBuf,
        /// Override a key: `--set train.batch_size=128` (value is YAML).
        #[arg(long = "set", value_name = "PATH=VALUE")]
        sets: Vec<String>,
        /// Also plan a data-parallel run over K ranks (`mpirun -n K`): the per-rank
        /// batch, the bytes each rank sends per step and the communication time.
        #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..))]
        world_size: Option<u64>,
        /// Network bandwidth for that estimate, Gbit/s.
        #[arg(long, value_name = "GBIT", default_value_t = recipe::plan::DEFAULT_GBIT)]
        bandwidth_gbit: f64,
    },
    /// Measure training-step throughput and peak memory of the recipe's model on
    /// synthetic input, with a per-op time breakdown.
    Bench {
        /// Recipe file.
        file: PathBuf,
        /// Override a key (value is YAML).
        #[arg(long = "set", value_name = "PATH=VALUE")]
        sets: Vec<String>,
        /// Timed steps.
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Untimed warm-up steps.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Images per view per step (default: the recipe's batch size).
        #[arg(long)]
        batch: Option<usize>,
    },
    /// Write a PNG grid of images and their augmented views.
    Preview {
        /// Recipe file.
        file: PathBuf,
        /// Override a key (value is YAML).
        #[arg(long = "set", value_name = "PATH=VALUE")]
        sets: Vec<String>,
        /// Output PNG.
        #[arg(short, long, default_value = "views.png")]
        output: PathBuf,
        /// Number of images (rows).
        #[arg(long, default_value_t = 8)]
        n: usize,
        /// Enlarge every cell N times, nearest neighbour (1 = native size). Default:
        /// the smallest N that makes a cell at least 96 px on its longer side, lowered
        /// (not below 1) while the grid would be over 2048 px on its longer side.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        scale: Option<u64>,
    },
    /// Train what the recipe describes, run its downstream tasks, and write a run
    /// directory (resolved recipe, metrics, checkpoints, pictures, results, report).
    Run {
        /// Recipe file (optional with --resume: the run's own recipe).
        file: Option<PathBuf>,
        /// Override a key: `--set train.epochs=1` (value is YAML).
        #[arg(long = "set", value_name = "PATH=VALUE")]
        sets: Vec<String>,
        /// Parent of the run directory (default: the recipe's `output.dir`).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Continue a run directory from its last checkpoint.
        #[arg(long, value_name = "RUN_DIR")]
        resume: Option<PathBuf>,
        /// Resume even when the recipe differs from the run's.
        #[arg(long)]
        force: bool,
        /// No progress output.
        #[arg(long, short)]
        quiet: bool,
        /// Stop as if interrupted after this many steps (for tests and time limits).
        #[arg(long, value_name = "N", hide = true)]
        stop_after_steps: Option<u64>,
    },
    /// Run a recipe over a grid of values of some of its keys: every combination is
    /// validated first, runs as an ordinary run directory inside one sweep directory,
    /// and a summary sorted by the metric (Markdown, CSV, JSON) and plots end it. The
    /// same command again skips finished combinations and resumes an interrupted one.
    Sweep {
        /// Recipe file.
        file: PathBuf,
        /// A swept key and its values, a YAML list: `--grid loss.temperature=[0.1, 0.2]`
        /// (repeatable; every combination of the values runs).
        #[arg(long = "grid", value_name = "PATH=[V1,V2,…]", required = true)]
        grids: Vec<String>,
        /// Override a key in every combination (value is YAML).
        #[arg(long = "set", value_name = "PATH=VALUE")]
        sets: Vec<String>,
        /// Run N distinct combinations drawn from the grid instead of all of them.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        random: Option<u64>,
        /// The seed of `--random`'s draw.
        #[arg(long, value_name = "S", requires = "random", default_value_t = 0)]
        seed: u64,
        /// What the summary is sorted by: `TASK.top1` or `TASK.top5` of the trained
        /// encoder (`knn`, `linear_probe`, `fine_tune`) on the pretraining data.
        #[arg(long, value_name = "TASK.FIELD", default_value = "knn.top1")]
        metric: String,
        /// Parent of the sweep directory (default: the recipe's `output.dir`).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Do not check that the data files and folders exist.
        #[arg(long)]
        no_data_check: bool,
        /// No progress output from the runs.
        #[arg(long, short)]
        quiet: bool,
        /// Stop as if interrupted once the runs have trained this many steps in all
        /// (for tests).
        #[arg(long, value_name = "N", hide = true)]
        stop_after_steps: Option<u64>,
    },
    /// Run downstream tasks on a saved model: a run directory or a checkpoint in one.
    Eval {
        /// Run directory or checkpoint file.
        target: PathBuf,
        /// Only these tasks (`knn`, `linear_probe`, `fine_tune`, `visualize`); repeatable.
        #[arg(long = "task", value_name = "TASK")]
        tasks: Vec<String>,
        /// Override the run's downstream tasks: `--set 'downstream=[{task: fine_tune}]'`
        /// (only `downstream` keys; value is YAML).
        #[arg(long = "set", value_name = "PATH=VALUE")]
        sets: Vec<String>,
    },
    /// List the run directories under a folder, sweep folders included (up to three
    /// levels down): name, method, start time, status (running / finished / interrupted
    /// / failed), epochs done, kNN and linear top-1 of the trained encoder; oldest first.
    Runs {
        /// The folder to list (`output.dir` of the recipes: `runs` by default).
        #[arg(default_value = "runs")]
        dir: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Compare run directories side by side: every downstream result, the recipe keys
    /// that differ, and the loss and kNN curves overlaid. Prints the tables and writes
    /// compare.md, compare_loss.png and compare_knn.png into --out.
    Compare {
        /// Two or more run directories.
        #[arg(value_name = "RUN_DIR")]
        dirs: Vec<PathBuf>,
        /// Folder for compare.md and the pictures (created if needed).
        #[arg(long, value_name = "DIR", default_value = ".")]
        out: PathBuf,
        /// Output format of what is printed (`json`: the comparison as JSON).
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Write a starting recipe for a dataset: an image folder (one subfolder per class,
    /// or flat and unlabelled), MNIST-style IDX files or CIFAR binary batches. Detects
    /// size, channels, classes and the test split, measures the normalisation, sizes
    /// the augmentations and model to the images, and validates what it writes.
    Init {
        /// The dataset folder: class subfolders, a flat folder, `train/` beside `test/`
        /// (or `val/`), IDX files or CIFAR batches (an IDX or CIFAR file names its folder).
        #[arg(long, value_name = "DIR")]
        data: PathBuf,
        /// The training method, the recipe's `loss.method` (`supcon` needs labels).
        #[arg(long, value_enum, default_value_t = commands::init::MethodArg::Simclr)]
        method: commands::init::MethodArg,
        /// The recipe file to write.
        #[arg(short, long, value_name = "FILE", default_value = "recipe.yaml")]
        output: PathBuf,
        /// Overwrite the recipe file if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Print the recipe JSON Schema (Draft 7).
    Schema,
    /// Print the fully resolved recipe: `extends` merged, overrides applied, every default filled.
    Render {
        /// Recipe file.
        file: PathBuf,
        /// Override a key: `--set train.epochs=1` (value is YAML).
        #[arg(long = "set", value_name = "PATH=VALUE")]
        sets: Vec<String>,
        /// Output format (`human` prints YAML).
        #[arg(long, value_enum, default_value_t = Format::Human)]
        format: Format,
    },
    /// Run every op of the project's own on a device (`cpu` or `cuda`) in the form that
    /// device uses, against the CPU kernels on random inputs; fails above 1e-4 relative.
    DeviceCheck {
        /// The device to check.
        #[arg(long, value_enum, default_value_t = commands::device_check::CheckedDevice::Cpu)]
        device: commands::device_check::CheckedDevice,
    },
}

/// Clears dfdx's large gradient buffers on every kernel thread (see `recipe::alloc`).
#[global_allocator]
static ALLOC: recipe::alloc::ParallelZero = recipe::alloc::ParallelZero;

fn main() -> ExitCode {
    recipe::alloc::tune_allocator();
    let cli = Cli::parse();
    match cli.command {
        Command::Validate {
            files,
            sets,
            format,
            no_data_check,
        } => commands::validate::validate(&files, &sets, format, !no_data_check),
        Command::Plan {
            file,
            sets,
            world_size,
            bandwidth_gbit,
        } => commands::plan::plan(&file, &sets, world_size.map(|k| k as usize), bandwidth_gbit),
        Command::Bench {
            file,
            sets,
            steps,
            warmup,
            batch,
        } => commands::bench::bench(&file, &sets, steps, warmup, batch),
        Command::Preview {
            file,
            sets,
            output,
            n,
            scale,
        } => commands::preview::preview(&file, &sets, &output, n, scale),
        Command::Run {
            file,
            sets,
            out,
            resume,
            force,
            quiet,
            stop_after_steps,
        } => commands::run::run(
            file.as_deref(),
            &sets,
            out,
            resume,
            force,
            quiet,
            stop_after_steps,
        ),
        Command::Sweep {
            file,
            grids,
            sets,
            random,
            seed,
            metric,
            out,
            no_data_check,
            quiet,
            stop_after_steps,
        } => commands::sweep::sweep(commands::sweep::SweepArgs {
            file,
            grids,
            sets,
            random: random.map(|n| n as usize),
            seed,
            metric,
            out,
            no_data_check,
            quiet,
            stop_after_steps,
        }),
        Command::Eval {
            target,
            tasks,
            sets,
        } => commands::run::eval(&target, &tasks, &sets),
        Command::Runs { dir, format } => commands::runs::runs(&dir, format),
        Command::Compare { dirs, out, format } => commands::compare::compare(&dirs, &out, format),
        Command::Init {
            data,
            method,
            output,
            force,
        } => commands::init::init(&data, method, &output, force),
        Command::Schema => {
            print!("{}", schema::generate_pretty());
            ExitCode::SUCCESS
        }
        Command::Render { file, sets, format } => commands::render::render(&file, &sets, format),
        Command::DeviceCheck { device } => commands::device_check::device_check(device),
    }
}
