//! Training-step throughput harness behind `recipe bench` and `cargo bench --bench
//! engine`: N steps of [`Trainer::step`] — the step `recipe run` takes, with the
//! recipe's objective, optimiser and schedule — on synthetic batches, with images/s,
//! peak RSS and a per-op breakdown (the objective's own time under `objective.*`).

use std::time::{Duration, Instant};

use crate::data::{Batch, ViewBatch};
use crate::nn::init::Init;
use crate::nn::model::{BackboneConfig, BackboneKind, HeadConfig, ModelConfig, ResNetSpec, Stem};
use crate::nn::ops::{EngineDevice, timing};
use crate::nn::params::DecayPolicy;
use crate::objective::MethodConfig;
use crate::optim::schedule::{Decay, ScheduleConfig};
use crate::optim::{OptimizerConfig, SgdConfig};
use crate::train::TrainError;
use crate::train::step::{Trainer, TrainerParts};

/// How to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Images per step (each yields one view per view shape).
    pub batch: usize,
    /// `(c, h, w)` of each view, in the augmentation's order.
    pub view_shapes: Vec<(usize, usize, usize)>,
    /// Timed steps.
    pub steps: usize,
    /// Untimed steps first.
    pub warmup: usize,
    /// Training images the dataset indices are drawn from (the memory bank's rows).
    pub dataset_len: usize,
    /// Classes of the synthetic labels (SupCon).
    pub classes: u32,
    /// Seed of the synthetic input.
    pub seed: u64,
    /// Record the per-op breakdown.
    pub per_op: bool,
}

/// One op's share of the timed steps.
#[derive(Clone, Debug, PartialEq)]
pub struct OpTime {
    /// Op name (`conv2d.bwd`, `objective.loss.fwd`, …).
    pub name: String,
    /// Milliseconds per training step.
    pub ms_per_step: f64,
    /// Calls per training step.
    pub calls_per_step: f64,
}

/// Result of a bench run.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchReport {
    /// Training images per second (each view counts as one image).
    pub images_per_s: f64,
    /// Mean wall time of one step in milliseconds.
    pub step_ms: f64,
    /// Peak resident memory of the process (VmHWM), in MiB, where /proc is readable.
    pub peak_rss_mib: Option<f64>,
    /// Loss of the last step.
    pub last_loss: f32,
    /// Per-op times, slowest first (empty unless requested).
    pub ops: Vec<OpTime>,
    /// Milliseconds per step spent in the objective's own work (loss forward and
    /// backward, state updates), a part of `step_ms`.
    pub objective_ms: f64,
    /// Milliseconds per step in communication between data-parallel ranks (the
    /// `comm.*` rows: gradient all-reduce, gathers, synchronised batch norm); 0 in one
    /// process.
    pub comm_ms: f64,
    /// Payload bytes this rank sent through collectives per step.
    pub comm_bytes_per_step: f64,
    /// Process CPU time (user + system, all threads) over wall time during the timed
    /// steps: how many cores the step kept busy (at most the thread count). `None`
    /// where the CPU time cannot be read.
    pub cpu_per_wall: Option<f64>,
}

/// The architectures of `torch_baseline.py` as a trainer: `smallW` (e.g. `small16`)
/// and `resnet18` (CIFAR stem, head 512→512→128) on 3×32×32 input, `resnet50`
/// (torchvision layout: 7×7 stride-2 stem and 3×3 max pool, bottlenecks [3, 4, 6, 3],
/// head 2048→2048→128) on 3×64×64; two views, NT-Xent at τ = 0.5, SGD with momentum
/// 0.9 and weight decay 1e-6 on every parameter at a constant learning rate of 0.05 —
/// the baseline's training step. The input size is `model.input_hw`.
pub fn preset(name: &str, batch: usize) -> Option<TrainerParts> {
    let (spec, hidden, hw) = if let Some(w) = name.strip_prefix("small") {
        let w: usize = w.parse().ok().filter(|w| *w > 0)?;
        (ResNetSpec::small(w), 2 * w, 32)
    } else if name == "resnet18" {
        (ResNetSpec::standard(18, Stem::Cifar, 1.0).ok()?, 512, 32)
    } else if name == "resnet50" {
        (
            ResNetSpec::standard(50, Stem::ImageNet, 1.0).ok()?,
            2048,
            64,
        )
    } else {
        return None;
    };
    Some(TrainerParts {
        model: ModelConfig {
            backbone: BackboneConfig {
                kind: BackboneKind::ResNet(spec),
                in_channels: 3,
            },
            head: Some(HeadConfig {
                in_dim: None,
                hidden: vec![hidden],
                out_dim: 128,
                batch_norm: false,
                last_bn: false,
            }),
            prototypes: None,
            predictor: None,
            last_layer: None,
            input_hw: (hw, hw),
        },
        seed: 0,
        optimizer: OptimizerConfig::Sgd(SgdConfig {
            momentum: 0.9,
            nesterov: false,
            weight_decay: 1e-6,
        }),
        // The baseline's `torch.optim.SGD(weight_decay=1e-6)` decays every parameter.
        decay: DecayPolicy {
            exclude_bias: false,
            exclude_norm: false,
        },
        schedule: ScheduleConfig {
            warmup: None,
            decay: Decay::Constant,
        },
        peak_lr: 0.05,
        epochs: 1,
        steps_per_epoch: 1_000_000,
        method: MethodConfig::Simclr(crate::objective::nt_xent::SimclrConfig { temperature: 0.5 }),
        views: 2,
        batch,
    })
}

/// A synthetic batch: standard-normal images whose later views of the same shape are
/// the first view plus a little noise (so the loss can fall), distinct dataset indices
/// and labels in `0..classes`.
pub fn synthetic_batch(cfg: &BenchConfig, step: u64) -> Batch {
    let mut init = Init::new(cfg.seed ^ 0x5eed ^ step.wrapping_mul(0x9e37_79b9));
    let n = cfg.batch;
    let mut views: Vec<ViewBatch> = Vec::new();
    for &(c, h, w) in &cfg.view_shapes {
        let len = n * c * h * w;
        let data = match views.iter().find(|v| v.shape[1..] == [c, h, w]) {
            Some(first) => {
                let noise = init.normal(len, 0.1);
                first.data.iter().zip(noise).map(|(x, e)| x + e).collect()
            }
            None => init.normal(len, 1.0),
        };
        views.push(ViewBatch {
            data,
            shape: [n, c, h, w],
        });
    }
    let stride = (cfg.dataset_len / n.max(1)).max(1);
    let offset = step as usize % stride;
    let indices: Vec<usize> = (0..n)
        .map(|i| (i * stride + offset) % cfg.dataset_len.max(1))
        .collect();
    let labels = Some(
        indices
            .iter()
            .map(|&i| (i as u32).wrapping_mul(2_654_435_761) % cfg.classes.max(1))
            .collect(),
    );
    Batch {
        views,
        indices,
        labels,
    }
}

/// Times `cfg.steps` steps of `trainer` on synthetic batches after `cfg.warmup`
/// untimed ones. The trainer's schedule advances as in a run.
pub fn run<D: EngineDevice>(
    trainer: &mut Trainer<D>,
    cfg: &BenchConfig,
) -> Result<BenchReport, TrainError> {
    if cfg.batch < 2 {
        return Err(TrainError::Other(
            "bench batch must be at least 2 images".into(),
        ));
    }
    // Batches are made before the clock starts: the loader's cost is reported apart.
    let total = cfg.warmup + cfg.steps;
    // Data-parallel: each rank trains its slice of the global batch.
    let dist = trainer.collective().clone();
    let batches: Vec<Batch> = (0..total.min(4))
        .map(|i| {
            let b = synthetic_batch(cfg, i as u64);
            if dist.world() == 1 {
                return Ok(b);
            }
            crate::dist::slice_batch(&b, dist.rank(), dist.world())
                .map_err(|e| TrainError::Other(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    for i in 0..cfg.warmup {
        trainer.step(&batches[i % batches.len()], 0)?;
    }
    timing::reset();
    timing::set_enabled(cfg.per_op);
    crate::dist::take_bytes_sent();
    let cpu0 = crate::runtime::cpu_time();
    let start = Instant::now();
    let mut last = f32::NAN;
    for i in 0..cfg.steps {
        last = trainer
            .step(&batches[(cfg.warmup + i) % batches.len()], 0)?
            .loss;
    }
    let elapsed = start.elapsed().max(Duration::from_nanos(1));
    let comm_bytes = crate::dist::take_bytes_sent();
    let cpu_per_wall = cpu0
        .zip(crate::runtime::cpu_time())
        .map(|(a, b)| (b - a).as_secs_f64() / elapsed.as_secs_f64());
    timing::set_enabled(false);
    let steps = cfg.steps.max(1) as f64;
    let ops: Vec<OpTime> = if cfg.per_op {
        timing::snapshot()
            .into_iter()
            .map(|(name, d, calls)| OpTime {
                name: name.to_string(),
                ms_per_step: d.as_secs_f64() * 1e3 / steps,
                calls_per_step: calls as f64 / steps,
            })
            .collect()
    } else {
        Vec::new()
    };
    let objective_ms = ops
        .iter()
        .filter(|o| o.name.starts_with("objective."))
        .map(|o| o.ms_per_step)
        .sum();
    let comm_ms = ops
        .iter()
        .filter(|o| o.name.starts_with("comm."))
        .map(|o| o.ms_per_step)
        .sum();
    let secs = elapsed.as_secs_f64();
    let images = cfg.batch * cfg.view_shapes.len();
    Ok(BenchReport {
        images_per_s: (images * cfg.steps) as f64 / secs,
        step_ms: secs * 1e3 / steps,
        peak_rss_mib: crate::runtime::peak_rss_mib(),
        last_loss: last,
        ops,
        objective_ms,
        comm_ms,
        comm_bytes_per_step: comm_bytes as f64 / steps,
        cpu_per_wall,
    })
}

/// Augmentation throughput: images per second that `maker` turns into views (all its
/// views per image, the way the loader calls it), spread over rayon's global pool, over
/// at least `min_time`. Images are taken round-robin from `images`.
pub fn augment_throughput(
    maker: &dyn crate::augment::ViewMaker,
    images: &[crate::data::Image],
    min_time: Duration,
) -> f64 {
    use rand::SeedableRng;
    use rayon::prelude::*;
    if images.is_empty() {
        return 0.0;
    }
    let chunk = 256usize;
    let start = Instant::now();
    let mut done = 0usize;
    while start.elapsed() < min_time {
        (done..done + chunk).into_par_iter().for_each(|i| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(i as u64);
            std::hint::black_box(maker.make_views(&images[i % images.len()], &mut rng));
        });
        done += chunk;
    }
    done as f64 / start.elapsed().as_secs_f64()
}
