//! Training-step throughput harness behind `recipe bench`: N steps of backbone +
//! head with an NT-Xent loss (as `shared/bench/torch_baseline.py`) and an SGD
//! momentum update on synthetic input, with images/s, peak RSS and a per-op breakdown.

use std::time::{Duration, Instant};

use dfdx::prelude::*;

use crate::nn::ModelError;
use crate::nn::init::Init;
use crate::nn::model::{
    BackboneConfig, BackboneKind, HeadConfig, Model, ModelConfig, ResNetSpec, Stem,
};
use crate::nn::ops::{EngineDevice, T2, timing};
use crate::nn::params::{DecayPolicy, ParamStore};
use crate::optim::{Optimizer, OptimizerConfig, SgdConfig};

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// The model (its `input_hw` sets the synthetic image size).
    pub model: ModelConfig,
    /// Images per view; a step sees `2 × batch` images.
    pub batch: usize,
    /// Timed steps.
    pub steps: usize,
    /// Untimed steps first.
    pub warmup: usize,
    /// NT-Xent temperature.
    pub tau: f32,
    /// SGD learning rate (momentum 0.9, weight decay 1e-6 as the torch baseline).
    pub lr: f32,
    /// Seed for parameters and input.
    pub seed: u64,
    /// Record the per-op breakdown.
    pub per_op: bool,
}

/// One op's share of the timed steps.
#[derive(Clone, Debug, PartialEq)]
pub struct OpTime {
    /// Op name (`conv2d.bwd`, …).
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
    /// Loss after the last step.
    pub last_loss: f32,
    /// Per-op times, slowest first (empty unless requested).
    pub ops: Vec<OpTime>,
}

/// The architectures of `torch_baseline.py`: `smallW` (e.g. `small16`) and `resnet18`
/// (CIFAR stem, head 512→512→128), with 3×32×32 input.
pub fn preset(name: &str) -> Option<ModelConfig> {
    let (spec, hidden) = if let Some(w) = name.strip_prefix("small") {
        let w: usize = w.parse().ok().filter(|w| *w > 0)?;
        (ResNetSpec::small(w), 2 * w)
    } else if name == "resnet18" {
        (ResNetSpec::standard(18, Stem::Cifar, 1.0).ok()?, 512)
    } else {
        return None;
    };
    Some(ModelConfig {
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
        input_hw: (32, 32),
    })
}

/// SimCLR's NT-Xent loss on `z = [view1; view2]` of shape `(2n, d)`.
pub fn nt_xent<D: EngineDevice, T: Tape<f32, D>>(z: T2<D, T>, tau: f32) -> Tensor<(), f32, D, T> {
    let b2 = z.shape().0;
    let n = b2 / 2;
    let dev = z.device().clone();
    let zn = D::l2_normalize(z, 1e-12);
    // Scaling one side gives it a new id: matmul of a tensor with itself is not allowed.
    let zs = zn.retaped::<T>() * (1.0 / tau);
    let sim = zs.matmul(zn.permute::<_, Axes2<1, 0>>());
    let mut mask = vec![0.0f32; b2 * b2];
    for i in 0..b2 {
        mask[i * b2 + i] = -1e9;
    }
    let sim = sim + dev.tensor_from_vec(mask, (b2, b2));
    let lsm = sim.log_softmax::<Axis<1>>();
    let idx = dev.tensor_from_vec((0..b2).map(|i| (i + n) % b2).collect(), (b2,));
    let picked: Tensor<(usize,), f32, D, T> = lsm.select(idx);
    picked.mean::<(), _>().negate()
}

/// Peak resident set size of this process in MiB (Linux `VmHWM`).
pub fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Runs the benchmark on `dev`.
pub fn run<D: EngineDevice>(dev: D, cfg: &BenchConfig) -> Result<BenchReport, ModelError> {
    if cfg.batch < 2 {
        return Err(ModelError::Config(
            "bench batch must be at least 2 per view".into(),
        ));
    }
    let mut store = ParamStore::new(dev.clone());
    let model = Model::new(&mut store, &cfg.model, cfg.seed)?;
    let (c, h, w) = model.input;
    let n = cfg.batch;
    let mut init = Init::new(cfg.seed ^ 0x5eed);
    let a = init.normal(n * c * h * w, 1.0);
    let noise = init.normal(n * c * h * w, 0.1);
    let mut data = a.clone();
    data.extend(a.iter().zip(&noise).map(|(x, e)| x + e));
    let x = dev.tensor_from_vec(data, (2 * n, c, h, w));
    // The baseline's `torch.optim.SGD(momentum=0.9, weight_decay=1e-6)` decays every
    // parameter, so no exclusions here.
    store.apply_decay_policy(DecayPolicy {
        exclude_bias: false,
        exclude_norm: false,
    });
    let mut opt = Optimizer::new(OptimizerConfig::Sgd(SgdConfig {
        momentum: 0.9,
        nesterov: false,
        weight_decay: 1e-6,
    }))
    .map_err(|e| ModelError::Config(e.to_string()))?;

    let mut step = |store: &mut ParamStore<D>| -> Result<f32, ModelError> {
        let z = model.project(store, x.trace(Gradients::leaky()), true)?;
        let loss = nt_xent(z, cfg.tau);
        let value = loss.as_vec()[0];
        let mut grads = loss.backward();
        let t = Instant::now();
        opt.step(store, &mut grads, cfg.lr as f64)
            .map_err(|e| ModelError::Config(e.to_string()))?;
        timing::record("sgd_update", t.elapsed());
        Ok(value)
    };
    for _ in 0..cfg.warmup {
        step(&mut store)?;
    }
    timing::reset();
    timing::set_enabled(cfg.per_op);
    let start = Instant::now();
    let mut last = f32::NAN;
    for _ in 0..cfg.steps {
        last = step(&mut store)?;
    }
    let elapsed = start.elapsed().max(Duration::from_nanos(1));
    timing::set_enabled(false);
    let steps = cfg.steps.max(1) as f64;
    let ops = if cfg.per_op {
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
    let secs = elapsed.as_secs_f64();
    Ok(BenchReport {
        images_per_s: (2 * n * cfg.steps) as f64 / secs,
        step_ms: secs * 1e3 / steps,
        peak_rss_mib: peak_rss_mib(),
        last_loss: last,
        ops,
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
