//! The `recipe` command line: a thin shell over the library. Each subcommand parses
//! its arguments, calls the library and maps the outcome to an exit code:
//! 0 success / valid, 1 invalid recipe, 2 usage or I/O error.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use recipe::diag::{render_human, render_json};
use recipe::spec::{Loaded, Loader, schema};

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
    let cli = Cli::parse();
    match cli.command {
        Command::Validate {
            files,
            sets,
            format,
        } => validate(&files, &sets, format),
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

fn validate(files: &[PathBuf], sets: &[String], format: Format) -> ExitCode {
    let loader = Loader::new();
    let mut code = 0u8;
    let mut json_out = Vec::new();
    for file in files {
        let loaded = match load(&loader, file, sets) {
            Ok(l) => l,
            Err(_) => {
                code = 2;
                continue;
            }
        };
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
