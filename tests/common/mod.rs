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
