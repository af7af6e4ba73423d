//! Helpers shared by the tests that drive the `recipe` binary.

use std::process::{Command, Output};

/// Runs the binary with `args` and waits for it.
pub fn recipe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_recipe"))
        .args(args)
        .output()
        .expect("the binary runs")
}

/// Bytes of a captured stream as text.
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The start of the tests' tiny recipe: 2% of the built-in Fashion-MNIST subset, views
/// cropped to 16 px, a two-stage CNN of 8 and 16 channels with a 16 → 8 head (name
/// `tiny`, seed 3). Each test adds its own loss, optimiser, schedule, `train` and
/// `downstream` with [`tiny_recipe`].
#[allow(dead_code)]
pub const TINY_START: &str = r#"version: 1
name: tiny
seed: 3
data:
  source: {format: builtin}
  image_size: 28
  channels: 1
  subset: 0.02
  normalize: {mean: [0.286], std: [0.353]}
augment:
  views: 2
  pipeline:
    - random_resized_crop: {size: 16, scale: [0.3, 1.0]}
    - horizontal_flip: {p: 0.5}
model:
  backbone: {arch: small_cnn, channels: [8, 16]}
  head: {hidden: [16], out_dim: 8, batch_norm: true}
"#;

/// [`TINY_START`] followed by the rest of a recipe.
#[allow(dead_code)]
pub fn tiny_recipe(rest: &str) -> String {
    format!("{TINY_START}{rest}")
}

/// The one run directory a finished or stopped run made under `out`.
#[allow(dead_code)]
pub fn run_dir(out: &std::path::Path) -> std::path::PathBuf {
    let mut dirs: Vec<std::path::PathBuf> = std::fs::read_dir(out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert_eq!(
        dirs.len(),
        1,
        "one run directory in {}: {dirs:?}",
        out.display()
    );
    dirs.pop().unwrap()
}
