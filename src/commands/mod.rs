//! The subcommands: each a thin adapter from parsed arguments to the library, which
//! prints what the user asked for and returns the exit code (0 success / valid,
//! 1 invalid recipe or failed run, 2 usage or I/O error, 130 interrupted).

pub mod bench;
pub mod compare;
pub mod device_check;
pub mod init;
pub mod plan;
pub mod preview;
pub mod render;
pub mod run;
pub mod runs;
pub mod sweep;
pub mod validate;

use std::path::Path;
use std::process::ExitCode;

use clap::ValueEnum;
use recipe::build;
use recipe::diag::render_human;
use recipe::spec::{Loaded, Loader, Recipe};

/// Output format of diagnostics and rendered recipes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// rustc-style text (YAML for `render`).
    Human,
    /// JSON for machines.
    Json,
}

/// Loads a recipe, printing a hard load error (unreadable file, malformed `--set`) and
/// returning exit code 2 for it.
pub fn load(loader: &Loader, file: &Path, sets: &[String]) -> Result<Loaded, ExitCode> {
    loader.load_file(file, sets).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })
}

/// Loads a recipe that must be valid (and its data readable, when `data_check`: see
/// [`build::check_data_paths`]), printing its diagnostics; on failure returns the exit
/// code, 1 for an invalid recipe and 2 when only the data is at fault.
pub fn load_valid(
    file: &Path,
    sets: &[String],
    data_check: bool,
) -> Result<(Recipe, Loaded), ExitCode> {
    let loader = Loader::new();
    let mut loaded = load(&loader, file, sets)?;
    let data_errors = if data_check {
        build::check_data_paths(&mut loaded)
    } else {
        0
    };
    eprint!("{}", render_human(&loaded.diagnostics, &loaded.sources));
    match loaded.valid_recipe().cloned() {
        Some(r) => Ok((r, loaded)),
        None => {
            let errors = loaded.diagnostics.iter().filter(|d| d.is_error()).count();
            if errors > data_errors {
                eprintln!("{}: invalid recipe", file.display());
                Err(ExitCode::from(1))
            } else {
                // The recipe is right; its data cannot be read: an I/O error.
                eprintln!("{}: the data cannot be read", file.display());
                Err(ExitCode::from(2))
            }
        }
    }
}

/// Sizes rayon's pool (used by the engine's kernels and the augmentation) from
/// `train.threads` by [`recipe::runtime::threads`]: 0 means every core, shared by the
/// ranks a launcher placed on this machine.
pub fn set_threads(threads: usize) {
    let n = recipe::runtime::threads(threads, recipe::runtime::launcher_ranks());
    if let Err(e) = recipe::runtime::configure_threads(n) {
        eprintln!("warning: {e}");
    }
}
