//! The command line of data-parallel training: `recipe plan --world-size`, the
//! `train.sync_batch_norm` key, and the refusal to train when the launcher started more
//! processes than this binary can join.

use std::process::{Command, Output};

fn recipe(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_recipe"));
    c.args(args);
    for k in ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_STEP_NUM_TASKS"] {
        c.env_remove(k);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("the binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn plan_prints_the_per_rank_batch_and_the_traffic() {
    let out = recipe(
        &[
            "plan",
            "recipes/simclr.yaml",
            "--world-size",
            "4",
            "--bandwidth-gbit",
            "100",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("data-parallel over 4 ranks"), "{s}");
    assert!(s.contains("per rank: 32 images × 2 views"), "{s}");
    assert!(s.contains("at 100 Gbit/s"), "{s}");
    assert!(s.contains("gradient all-reduce"), "{s}");
    // Without the flag, no such section.
    let plain = text(&recipe(&["plan", "recipes/simclr.yaml"], &[]).stdout);
    assert!(!plain.contains("data-parallel"), "{plain}");
}

#[test]
fn plan_refuses_a_batch_that_does_not_split() {
    let out = recipe(&["plan", "recipes/simclr.yaml", "--world-size", "3"], &[]);
    assert_eq!(out.status.code(), Some(1));
    let e = text(&out.stderr);
    assert!(e.contains("must split evenly over 3 ranks"), "{e}");
    let zero = recipe(&["plan", "recipes/simclr.yaml", "--world-size", "0"], &[]);
    assert_eq!(zero.status.code(), Some(2));
}

#[test]
fn sync_batch_norm_is_a_recipe_key() {
    let out = recipe(
        &[
            "render",
            "recipes/simclr.yaml",
            "--set",
            "train.sync_batch_norm=true",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("sync_batch_norm: true"));
    let bad = recipe(
        &[
            "validate",
            "recipes/simclr.yaml",
            "--set",
            "train.sync_batch_nrom=true",
        ],
        &[],
    );
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad.stderr).contains("sync_batch_norm"));
}

#[test]
fn a_launcher_with_more_processes_than_the_binary_joins_stops_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = recipe(
        &[
            "run",
            "recipes/simclr.yaml",
            "--out",
            dir.path().to_str().unwrap(),
            "-q",
        ],
        &[("PMI_SIZE", "2")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let e = text(&out.stderr);
    if cfg!(feature = "mpi") {
        assert!(e.contains("different MPI"), "{e}");
    } else {
        assert!(e.contains("--features mpi"), "{e}");
    }
    // Nothing was trained or written.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
