//! Data-parallel equivalence, run under MPI:
//!
//! ```text
//! cargo build --features mpi --tests
//! mpirun --allow-run-as-root --bind-to none -n 2 target/debug/deps/mpi_equivalence-*
//! ```
//!
//! (`.ci/run` does this.) What is compared is in `dist_common`. Without MPI
//! (`world == 1`) it says so and fails: a run that could not compare anything must not
//! pass.

mod dist_common;

use dist_common::{check, methods};

fn main() {
    let (_guard, dist) = match recipe::dist::mpi::init() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("mpi_equivalence: {e}");
            std::process::exit(2);
        }
    };
    if dist.world() < 2 {
        eprintln!(
            "mpi_equivalence: world of {} — run under `mpirun -n 2` (nothing was compared)",
            dist.world()
        );
        std::process::exit(1);
    }
    let mut failed = false;
    for (method, shapes) in methods() {
        let problems = check(&method, &shapes, &dist);
        if dist.rank() == 0 || !problems.is_empty() {
            println!(
                "rank {}: {} {}",
                dist.rank(),
                method.name(),
                if problems.is_empty() { "ok" } else { "FAILED" }
            );
        }
        for p in &problems {
            println!("  {p}");
        }
        failed |= !problems.is_empty();
    }
    let mut any = [f64::from(u8::from(failed))];
    dist.all_reduce_max_f64(&mut any);
    if any[0] > 0.0 {
        std::process::exit(1);
    }
    if dist.rank() == 0 {
        println!(
            "mpi_equivalence: {} ranks reproduce one process for every method",
            dist.world()
        );
    }
}
