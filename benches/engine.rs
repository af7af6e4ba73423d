//! Engine throughput: `cargo bench --bench engine -- [MODEL] [BATCH] [STEPS] [THREADS]
//! [WARMUP]` (defaults `small16 64 20 2 1`; with WARMUP 0 and STEPS 1 the loss is
//! the untrained network's, which isolates the forward pass when comparing paths). MODEL is `smallW`, `resnet18` or `resnet50`, as in
//! `benches/torch_baseline.py`; BATCH is images per view (a step sees 2×BATCH).
//! Prints a `RESULT` line in the baseline's format (plus `cpu_per_wall`, the cores
//! the step kept busy) and the per-op breakdown.

use dfdx::prelude::Cpu;
use recipe::bench::{BenchConfig, preset, run};
use recipe::train::step::Trainer;

/// Clears dfdx's large gradient buffers on every kernel thread (see `recipe::alloc`).
#[global_allocator]
static ALLOC: recipe::alloc::ParallelZero = recipe::alloc::ParallelZero;

fn main() {
    recipe::alloc::tune_allocator();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let name = args.first().map_or("small16", String::as_str);
    let batch: usize = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(64);
    let steps: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(20);
    let threads: usize = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(2);
    let warmup: usize = args.get(4).and_then(|v| v.parse().ok()).unwrap_or(1);
    let Some(parts) = preset(name, batch) else {
        eprintln!("unknown model `{name}` (use smallW, e.g. small16, resnet18 or resnet50)");
        std::process::exit(2);
    };
    if let Err(e) = recipe::runtime::configure_threads(threads) {
        eprintln!("{e}");
        std::process::exit(2);
    }
    let cfg = BenchConfig {
        batch,
        view_shapes: vec![(3, parts.model.input_hw.0, parts.model.input_hw.1); 2],
        steps,
        warmup,
        dataset_len: 50_000,
        classes: 10,
        seed: 0,
        per_op: std::env::var_os("NO_PER_OP").is_none(),
    };
    let mut trainer = match Trainer::from_parts(Cpu::default(), &parts) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    match run(&mut trainer, &cfg) {
        Ok(r) => {
            println!(
                "RESULT recipe {name} batch=2x{batch} step_ms={:.1} img_per_s={:.1} peak_rss_mb={:.0} loss={:.4} threads={threads} cpu_per_wall={:.2}",
                r.step_ms,
                r.images_per_s,
                r.peak_rss_mib.unwrap_or(f64::NAN),
                r.last_loss,
                r.cpu_per_wall.unwrap_or(f64::NAN)
            );
            for op in &r.ops {
                println!(
                    "  {:<18} {:>9.2} ms/step {:>7.1} calls/step",
                    op.name, op.ms_per_step, op.calls_per_step
                );
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
