//! `recipe compare RUN_DIR… [--out DIR] [--format human|json]`: an adapter over
//! [`recipe::runs::compare`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use recipe::runs;

use super::Format;

/// Compares `dirs`, writes `compare.md` and the curves into `out`, prints the tables
/// (or the JSON); exit 2 when a directory is not a run or the files cannot be written.
pub fn compare(dirs: &[PathBuf], out: &Path, format: Format) -> ExitCode {
    let result = runs::compare(dirs).and_then(|c| {
        let files = c.write(out)?;
        Ok((c, files))
    });
    let (c, files) = match result {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match format {
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&c.to_json()).unwrap_or_default()
        ),
        Format::Human => print!("{}", c.text()),
    }
    for n in &c.notes {
        eprintln!("note: {n}");
    }
    let shown: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    eprintln!("wrote {}", shown.join(", "));
    ExitCode::SUCCESS
}
