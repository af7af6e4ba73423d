//! `recipe validate`: check recipes and report every problem.
//!
//! Exit codes: 0 every recipe valid, 1 a recipe invalid, 2 a recipe file unreadable or
//! (with the data check) its data missing or unreadable under an otherwise valid recipe.

use std::path::PathBuf;
use std::process::ExitCode;

use recipe::build;
use recipe::diag::{render_human, render_json};
use recipe::spec::Loader;

use super::{Format, load};

pub fn validate(files: &[PathBuf], sets: &[String], format: Format, data_check: bool) -> ExitCode {
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
        let data_errors = if data_check {
            build::check_data_paths(&mut loaded)
        } else {
            0
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
        // A recipe that is wrong is 1 even when its data is missing too; data that
        // cannot be read under a correct recipe is an I/O error, 2, as `run` says.
        if errors > data_errors {
            if code == 0 {
                code = 1;
            }
        } else if errors > 0 {
            code = 2;
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
