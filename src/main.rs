//! The `recipe` command line: a thin shell over the library. Each subcommand parses
//! its arguments, calls the library and maps the outcome to an exit code:
//! 0 success / valid, 1 invalid recipe, 2 usage or I/O error.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use recipe::diag::{render_human, render_json};
use recipe::spec::{Loaded, Loader, Recipe, schema};
use recipe::{augment, build, data};

/// Declarative contrastive representation learning on images.
#[derive(Parser)]
#[command(name = "recipe", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Output format of diagnostics and rendered recipes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// rustc-style text (YAML for `render`).
    Human,
    /// JSON for machines.
    Json,
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
}

fn main() -> ExitCode {
    recipe::tune_allocator();
    let cli = Cli::parse();
    match cli.command {
        Command::Validate {
            files,
            sets,
            format,
            no_data_check,
        } => validate(&files, &sets, format, !no_data_check),
        Command::Plan { file, sets } => plan(&file, &sets),
        Command::Bench {
            file,
            sets,
            steps,
            warmup,
            batch,
        } => bench(&file, &sets, steps, warmup, batch),
        Command::Preview {
            file,
            sets,
            output,
            n,
        } => preview(&file, &sets, &output, n),
        Command::Schema => {
            print!("{}", schema::generate_pretty());
            ExitCode::SUCCESS
        }
        Command::Render { file, sets, format } => render(&file, &sets, format),
    }
}

fn load(loader: &Loader, file: &Path, sets: &[String]) -> Result<Loaded, ExitCode> {
    loader.load_file(file, sets).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

fn validate(files: &[PathBuf], sets: &[String], format: Format, data_check: bool) -> ExitCode {
    let loader = Loader::new();
    let mut code = 0u8;
    let mut json_out = Vec::new();
    for file in files {
        let mut loaded = match load(&loader, file, sets) {
            Ok(l) => l,
            Err(_) => {
                code = 2;
                continue;
            }
        };
        if data_check {
            build::check_data_paths(&mut loaded);
        }
        let errors = loaded.diagnostics.iter().filter(|d| d.is_error()).count();
        let warnings = loaded.diagnostics.len() - errors;
        match format {
            Format::Human => {
                eprint!("{}", render_human(&loaded.diagnostics, &loaded.sources));
                if errors == 0 {
                    let w = if warnings > 0 {
                        format!(" ({warnings} warning(s))")
                    } else {
                        String::new()
                    };
                    println!("{}: valid{w}", file.display());
                } else {
                    eprintln!(
                        "{}: {errors} error(s), {warnings} warning(s)",
                        file.display()
                    );
                }
            }
            Format::Json => json_out.push(serde_json::json!({
                "file": file.display().to_string(),
                "valid": errors == 0,
                "diagnostics": render_json(&loaded.diagnostics, &loaded.sources),
            })),
        }
        if errors > 0 && code == 0 {
            code = 1;
        }
    }
    if format == Format::Json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json_out).unwrap_or_default()
        );
    }
    ExitCode::from(code)
}

fn render(file: &Path, sets: &[String], format: Format) -> ExitCode {
    let loader = Loader::new();
    let loaded = match load(&loader, file, sets) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let Some(recipe) = loaded.valid_recipe() else {
        eprint!("{}", render_human(&loaded.diagnostics, &loaded.sources));
        eprintln!("{}: not rendered, the recipe is invalid", file.display());
        return ExitCode::from(1);
    };
    eprint!("{}", render_human(&loaded.diagnostics, &loaded.sources));
    let text = match format {
        // Through JSON, so op lists render as plain one-key mappings, not YAML tags.
        Format::Human => serde_json::to_value(recipe)
            .ok()
            .and_then(|v| serde_yaml::to_string(&v).ok())
            .unwrap_or_default(),
        Format::Json => serde_json::to_string_pretty(recipe).unwrap_or_default() + "\n",
    };
    let mut out = std::io::stdout().lock();
    if out.write_all(text.as_bytes()).is_err() {
        return ExitCode::from(2);
    }
    ExitCode::SUCCESS
}

/// Loads a recipe that must be valid (data paths too, when `data_check`), printing its diagnostics;
/// on failure returns the exit code.
fn load_valid(
    file: &Path,
    sets: &[String],
    data_check: bool,
) -> Result<(Recipe, Loaded), ExitCode> {
    let loader = Loader::new();
    let mut loaded = load(&loader, file, sets)?;
    if data_check {
        build::check_data_paths(&mut loaded);
    }
    eprint!("{}", render_human(&loaded.diagnostics, &loaded.sources));
    match loaded.valid_recipe().cloned() {
        Some(r) => Ok((r, loaded)),
        None => {
            eprintln!("{}: invalid recipe", file.display());
            Err(ExitCode::from(1))
        }
    }
}

/// Sizes rayon's pool (used by the engine's kernels and the augmentation) from
/// `train.threads`; 0 keeps rayon's default of one thread per core.
fn set_threads(threads: usize) {
    if threads > 0 {
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global();
    }
}

fn plan(file: &Path, sets: &[String]) -> ExitCode {
    let (r, loaded) = match load_valid(file, sets, true) {
        Ok(v) => v,
        Err(code) => return code,
    };
    set_threads(r.train.threads);
    match recipe::plan::plan(&r) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(diags) => {
            let located: Vec<_> = diags
                .into_iter()
                .map(|d| {
                    let span = loaded
                        .document
                        .as_ref()
                        .and_then(|doc| recipe::spec::load::span_of(doc, &d.path));
                    d.with_span(span)
                })
                .collect();
            eprint!("{}", render_human(&located, &loaded.sources));
            eprintln!("{}: the recipe cannot be planned", file.display());
            ExitCode::from(1)
        }
    }
}

fn bench(
    file: &Path,
    sets: &[String],
    steps: usize,
    warmup: usize,
    batch: Option<usize>,
) -> ExitCode {
    use recipe::bench::{BenchConfig, run};
    use recipe::train::step::Trainer;
    let mut r = match load_valid(file, sets, false) {
        Ok((r, _)) => r,
        Err(code) => return code,
    };
    set_threads(r.train.threads);
    if let Some(b) = batch {
        r.train.batch_size = b;
    }
    let batch = r.train.batch_size;
    // The memory bank needs the real training-set size; synthetic labels use its classes.
    let (dataset_len, classes) = match data::load(&data::DataConfig::from_spec(&r.data, r.seed)) {
        Ok(d) => (d.train.len(), d.train.num_classes().max(2) as u32),
        Err(e) => {
            eprintln!(
                "warning: cannot read the data ({e}); benchmarking with a training set of {} images",
                10 * batch
            );
            (10 * batch, 10)
        }
    };
    let steps_per_epoch = dataset_len.div_ceil(batch.max(1)) as u64;
    let mut trainer = match Trainer::new(
        &r,
        dfdx::prelude::Cpu::default(),
        dataset_len,
        steps_per_epoch,
    ) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let view_shapes: Vec<_> = r
        .augment
        .view_sizes(r.data.image_size)
        .into_iter()
        .map(|s| (r.data.channels, s, s))
        .collect();
    let cfg = BenchConfig {
        batch,
        view_shapes: view_shapes.clone(),
        steps: steps.max(1),
        warmup,
        dataset_len,
        classes,
        seed: r.seed,
        per_op: true,
    };
    let sizes: Vec<String> = build::view_sizes(&r)
        .iter()
        .map(|(s, n)| format!("{n}×{s}²"))
        .collect();
    eprintln!(
        "bench `{}`: {} {} at views {}, {batch} images per step, {} timed step(s) after {warmup} warm-up, {} thread(s)",
        r.name,
        r.loss.method(),
        r.model.backbone.arch(),
        sizes.join(" + "),
        cfg.steps,
        rayon::current_num_threads()
    );
    match run(&mut trainer, &cfg) {
        Ok(rep) => {
            println!("images/s: {:.1}", rep.images_per_s);
            println!("step: {:.1} ms", rep.step_ms);
            println!(
                "objective ({}): {:.2} ms per step, {:.1}% of the step",
                r.loss.method(),
                rep.objective_ms,
                100.0 * rep.objective_ms / rep.step_ms.max(1e-9)
            );
            match rep.peak_rss_mib {
                Some(m) => println!("peak RSS: {m:.0} MiB"),
                None => println!("peak RSS: unavailable (no /proc)"),
            }
            println!("loss after the last step: {:.4}", rep.last_loss);
            // The loader must stay well ahead of training, or it becomes the bottleneck.
            if let Some(aug) = augmentation_rate(&r) {
                println!(
                    "augmentation: {aug:.0} images/s with the recipe's chain on {} thread(s), {:.1}× the training rate",
                    rayon::current_num_threads(),
                    aug / (rep.images_per_s / view_shapes.len() as f64)
                );
            }
            println!(
                "\n{:<28} {:>12} {:>10} {:>8}",
                "op", "ms/step", "calls", "share"
            );
            let total: f64 = rep.ops.iter().map(|o| o.ms_per_step).sum::<f64>().max(1e-9);
            for o in &rep.ops {
                println!(
                    "{:<28} {:>12.2} {:>10.1} {:>7.1}%",
                    o.name,
                    o.ms_per_step,
                    o.calls_per_step,
                    100.0 * o.ms_per_step / total
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Images/s the recipe's augmentation chain produces on its own data, when both load.
fn augmentation_rate(r: &Recipe) -> Option<f64> {
    let loaded = data::load(&data::DataConfig::from_spec(&r.data, r.seed)).ok()?;
    let chain = augment::Chain::from_spec(&r.augment, &r.data).ok()?;
    let images: Vec<_> = (0..loaded.train.len().min(512))
        .map(|i| loaded.train.image(i))
        .collect();
    Some(recipe::bench::augment_throughput(
        &chain,
        &images,
        std::time::Duration::from_secs(2),
    ))
}

fn preview(file: &Path, sets: &[String], output: &Path, n: usize) -> ExitCode {
    let r = match load_valid(file, sets, true) {
        Ok((r, _)) => r,
        Err(code) => return code,
    };
    set_threads(r.train.threads);
    let loaded = match data::load(&data::DataConfig::from_spec(&r.data, r.seed)) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: cannot read the data: {e}");
            return ExitCode::from(2);
        }
    };
    let chain = match augment::Chain::from_spec(&r.augment, &r.data) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let count = n.clamp(1, loaded.train.len());
    // Spread the rows over the dataset rather than showing its first few images.
    let step = (loaded.train.len() / count).max(1);
    let images: Vec<_> = (0..count).map(|i| loaded.train.image(i * step)).collect();
    match augment::write_preview(&chain, &images, r.seed, output) {
        Ok(()) => {
            println!(
                "wrote {} ({count} images × {} views)",
                output.display(),
                augment::ViewMaker::view_shapes(&chain).len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
