//! `recipe preview`: a PNG grid of images and their augmented views.

use std::path::Path;
use std::process::ExitCode;

use recipe::{augment, data};

use super::{load_valid, set_threads};

/// Writes `n` training images and their views to `output`, enlarged `scale` times
/// (`None`: the automatic [`augment::Scale`]).
pub fn preview(
    file: &Path,
    sets: &[String],
    output: &Path,
    n: usize,
    scale: Option<u64>,
) -> ExitCode {
    let r = match load_valid(file, sets, true) {
        Ok((r, _)) => r,
        Err(code) => return code,
    };
    set_threads(r.train.threads);
    let loaded = match data::load(&recipe::build::data::config(&r.data, r.seed)) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: cannot read the data: {e}");
            return ExitCode::from(2);
        }
    };
    let chain = match recipe::build::augment::chain(&r.augment, &r.data) {
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
    let scale = match scale {
        // Clap keeps N at 1 or more; a factor beyond usize could not be drawn anyway.
        Some(s) => augment::Scale::Times(usize::try_from(s).unwrap_or(usize::MAX)),
        None => augment::Scale::Auto,
    };
    match augment::write_preview(&chain, &images, r.seed, scale, output) {
        Ok(factor) => {
            println!(
                "wrote {} ({count} images × {} views, pixels enlarged {factor}×)",
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
