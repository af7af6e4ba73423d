//! `recipe render`: the fully resolved recipe.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use recipe::diag::render_human;
use recipe::spec::Loader;

use super::{Format, load};

pub fn render(file: &Path, sets: &[String], format: Format) -> ExitCode {
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
