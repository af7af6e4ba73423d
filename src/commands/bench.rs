//! `recipe bench`: training-step throughput of the recipe's real step.

use std::path::Path;
use std::process::ExitCode;

use recipe::nn::EngineDevice;
use recipe::nn::device::OnDevice;
use recipe::spec::Recipe;
use recipe::{build, data};

use super::{load_valid, set_threads};

pub fn bench(
    file: &Path,
    sets: &[String],
    steps: usize,
    warmup: usize,
    batch: Option<usize>,
) -> ExitCode {
    let mut r = match load_valid(file, sets, false) {
        Ok((r, _)) => r,
        Err(code) => return code,
    };
    // Under a launcher, "every core" is shared by the ranks on this machine.
    set_threads(r.train.threads);
    if let Some(b) = batch {
        r.train.batch_size = b;
    }
    let batch = r.train.batch_size;
    // The memory bank needs the real training-set size; synthetic labels use its classes.
    let (dataset_len, classes) = match data::load(&recipe::build::data::config(&r.data, r.seed)) {
        Ok(d) => (d.train.len(), d.train.num_classes().max(2) as u32),
        Err(e) => {
            eprintln!(
                "warning: cannot read the data ({e}); benchmarking with a training set of {} images",
                10 * batch
            );
            (10 * batch, 10)
        }
    };
    let (device, note) = match build::device(r.train.device, r.seed) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(note) = note {
        eprintln!("note: {note}");
    }
    struct Bench<'a>(&'static str, &'a Recipe, usize, u32, usize, usize);
    impl OnDevice for Bench<'_> {
        type Output = ExitCode;
        fn run<D: EngineDevice>(self, dev: D) -> ExitCode {
            let Bench(name, r, dataset_len, classes, steps, warmup) = self;
            bench_on(dev, name, r, dataset_len, classes, steps, warmup)
        }
    }
    let name = device.name();
    device.dispatch(Bench(name, &r, dataset_len, classes, steps, warmup))
}

/// The benchmark proper, on the device the recipe resolved to.
fn bench_on<D: EngineDevice>(
    dev: D,
    device: &str,
    r: &Recipe,
    dataset_len: usize,
    classes: u32,
    steps: usize,
    warmup: usize,
) -> ExitCode {
    use recipe::bench::{BenchConfig, run};
    use recipe::train::step::Trainer;
    let batch = r.train.batch_size;
    let steps_per_epoch = dataset_len.div_ceil(batch.max(1)) as u64;
    let parts = build::trainer_parts(r, dataset_len, steps_per_epoch);
    let mut trainer = match parts.and_then(|p| Trainer::from_parts(dev, &p)) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    // Under `mpirun` (with the `mpi` feature) every rank times its slice of the step.
    #[cfg(feature = "mpi")]
    let (_mpi, dist) = match recipe::dist::mpi::init() {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    #[cfg(not(feature = "mpi"))]
    let dist = recipe::dist::solo();
    let world = dist.world();
    if let Err(e) = recipe::dist::shard_range(batch, dist.rank(), world)
        .map_err(|e| e.to_string())
        .and_then(|_| {
            trainer
                .set_collective(dist.clone(), r.train.sync_batch_norm)
                .map_err(|e| e.to_string())
        })
    {
        eprintln!("error: {e}");
        return ExitCode::from(1);
    }
    if dist.rank() != 0 {
        // The other ranks take part in every step and print nothing.
        return match run(
            &mut trainer,
            &BenchConfig {
                batch,
                view_shapes: r
                    .augment
                    .view_sizes(r.data.image_size)
                    .into_iter()
                    .map(|s| (r.data.channels, s, s))
                    .collect(),
                steps: steps.max(1),
                warmup,
                dataset_len,
                classes,
                seed: r.seed,
                per_op: true,
            },
        ) {
            Ok(_) => {
                dist.wait_for_all();
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error (rank {}): {e}", dist.rank());
                dist.abort(1)
            }
        };
    }
    let view_shapes: Vec<_> = r
        .augment
        .view_sizes(r.data.image_size)
        .into_iter()
        .map(|s| (r.data.channels, s, s))
        .collect();
    let cfg = BenchConfig {
        batch,
        view_shapes: view_shapes.clone(),
        steps: steps.max(1),
        warmup,
        dataset_len,
        classes,
        seed: r.seed,
        per_op: true,
    };
    let sizes: Vec<String> = build::view_sizes(r)
        .iter()
        .map(|(s, n)| format!("{n}×{s}²"))
        .collect();
    eprintln!(
        "bench `{}`: {} {} at views {}, {batch} images per step, {} timed step(s) after {warmup} warm-up, {} thread(s){}, on the {device}",
        r.name,
        r.loss.method(),
        r.model.backbone.arch(),
        sizes.join(" + "),
        cfg.steps,
        rayon::current_num_threads(),
        if world > 1 {
            format!(
                " per rank, {} ({} images per rank)",
                dist.describe(),
                batch / world
            )
        } else {
            String::new()
        }
    );
    match run(&mut trainer, &cfg) {
        Ok(rep) => {
            println!("images/s: {:.1}", rep.images_per_s);
            println!("step: {:.1} ms", rep.step_ms);
            // Below the thread count: serial passes (or a busy machine) leave cores idle.
            match rep.cpu_per_wall {
                Some(r) => println!(
                    "CPU time / wall time over the timed steps: {r:.2} on {} thread(s)",
                    rayon::current_num_threads()
                ),
                None => println!("CPU time / wall time: unavailable (no getrusage)"),
            }
            println!(
                "objective ({}): {:.2} ms per step, {:.1}% of the step",
                r.loss.method(),
                rep.objective_ms,
                100.0 * rep.objective_ms / rep.step_ms.max(1e-9)
            );
            match rep.peak_rss_mib {
                Some(m) => println!("peak RSS: {m:.0} MiB"),
                None => println!("peak RSS: unavailable (no /proc)"),
            }
            println!("loss after the last step: {:.4}", rep.last_loss);
            if world > 1 {
                println!(
                    "communication: {:.2} ms per step ({:.1}% of the step), {:.2} MB sent per rank per step",
                    rep.comm_ms,
                    100.0 * rep.comm_ms / rep.step_ms.max(1e-9),
                    rep.comm_bytes_per_step / 1e6
                );
            }
            // The loader must stay well ahead of training, or it becomes the bottleneck.
            if let Some(aug) = augmentation_rate(r) {
                println!(
                    "augmentation: {aug:.0} images/s with the recipe's chain on {} thread(s), {:.1}× the training rate",
                    rayon::current_num_threads(),
                    aug / (rep.images_per_s / view_shapes.len() as f64)
                );
            }
            println!(
                "\n{:<28} {:>12} {:>10} {:>8}",
                "op", "ms/step", "calls", "share"
            );
            let total: f64 = rep.ops.iter().map(|o| o.ms_per_step).sum::<f64>().max(1e-9);
            for o in &rep.ops {
                println!(
                    "{:<28} {:>12.2} {:>10.1} {:>7.1}%",
                    o.name,
                    o.ms_per_step,
                    o.calls_per_step,
                    100.0 * o.ms_per_step / total
                );
            }
            dist.wait_for_all();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            if world > 1 {
                dist.abort(1);
            }
            ExitCode::from(1)
        }
    }
}

/// Images/s the recipe's augmentation chain produces on its own data, when both load.
fn augmentation_rate(r: &Recipe) -> Option<f64> {
    let loaded = data::load(&recipe::build::data::config(&r.data, r.seed)).ok()?;
    let chain = recipe::build::augment::chain(&r.augment, &r.data).ok()?;
    let images: Vec<_> = (0..loaded.train.len().min(512))
        .map(|i| loaded.train.image(i))
        .collect();
    Some(recipe::bench::augment_throughput(
        &chain,
        &images,
        std::time::Duration::from_secs(2),
    ))
}
