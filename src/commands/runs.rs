//! `recipe runs [DIR] [--format human|json]`: an adapter over [`recipe::runs::list`].

use std::path::Path;
use std::process::ExitCode;

use recipe::runs;

use super::Format;

/// Lists the run directories under `dir`; exit 2 when `dir` cannot be read.
pub fn runs(dir: &Path, format: Format) -> ExitCode {
    let list = match runs::list(dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match format {
        Format::Json => {
            let doc: Vec<serde_json::Value> = list.iter().map(runs::RunInfo::to_json).collect();
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        }
        Format::Human if list.is_empty() => {
            println!("no run directories under `{}`", dir.display());
        }
        Format::Human => print!("{}", runs::runs_table(&list)),
    }
    ExitCode::SUCCESS
}
