//! Device selection and op parity from the command line (no GPU needed).

use std::process::Output;

mod common;
use common::recipe;

/// Standard output and error together.
fn text(o: &Output) -> String {
    format!("{}{}", common::text(&o.stdout), common::text(&o.stderr))
}

#[test]
fn composed_ops_match_the_cpu_kernels() {
    let o = recipe(&["device-check"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    for op in [
        "conv2d",
        "max_pool2d",
        "global_avg_pool",
        "batch_norm2d+relu",
        "add_relu",
        "linear",
        "l2_normalize",
        "bank_log_softmax",
    ] {
        assert!(t.contains(op), "{op} missing from:\n{t}");
    }
    assert!(t.contains("all 14 ops within 1e-4"), "{t}");
}

#[cfg(not(feature = "cuda"))]
#[test]
fn cuda_on_a_binary_without_it_is_a_clear_error() {
    let o = recipe(&["device-check", "--device", "cuda"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("built without CUDA"), "{}", text(&o));
    // `recipe run` refuses before any work, with the way out.
    let o = recipe(&[
        "run",
        "recipes/simclr.yaml",
        "--set",
        "train.device=cuda",
        "--quiet",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("train.device") && t.contains("--features cuda"),
        "{t}"
    );
}
