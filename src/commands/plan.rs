//! `recipe plan`: shapes, FLOPs, memory and schedule before anything trains.

use std::path::Path;
use std::process::ExitCode;

use recipe::diag::render_human;

use super::{load_valid, set_threads};

pub fn plan(file: &Path, sets: &[String], world: Option<usize>, gbit: f64) -> ExitCode {
    if !(gbit.is_finite() && gbit > 0.0) {
        eprintln!("error: --bandwidth-gbit must be a positive number, got {gbit}");
        return ExitCode::from(2);
    }
    let (r, loaded) = match load_valid(file, sets, true) {
        Ok(v) => v,
        Err(code) => return code,
    };
    set_threads(r.train.threads);
    match recipe::plan::plan_with(&r, world, gbit) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(diags) => {
            // Data that cannot be read is an I/O error (2), as for `run`.
            let code = if diags.iter().any(recipe::plan::is_data_error) {
                2
            } else {
                1
            };
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
            ExitCode::from(code)
        }
    }
}
