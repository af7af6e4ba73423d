//! `recipe plan`: what a checked recipe will do, worked out before anything trains.
//!
//! The plan reads the data (sizes, classes, unreadable files), builds the model on the
//! CPU from the recipe seed (so every shape is checked), and reports per-layer shapes,
//! parameter counts and FLOPs, the cost of one training step over all views, the
//! memory of the method's state (queues, banks, momentum encoders), and the learning
//! rate after the recipe's explicit scaling rule. A recipe whose shapes cannot work
//! becomes a diagnostic with the recipe path at fault.

use std::fmt::Write;

use dfdx::prelude::Cpu;

use crate::build;
use crate::data::load;
use crate::diag::Diagnostic;
use crate::nn::model::Model;
use crate::nn::params::ParamStore;
use crate::nn::{ModelError, ModelSummary};
use crate::objective::{CommFacts, MethodConfig, ModelFacts};
use crate::optim::schedule::Schedule;
use crate::spec::Recipe;

/// The recipe path a model-building error is about.
fn model_error_path(e: &ModelError) -> &'static str {
    match e {
        ModelError::DimMismatch { part, .. } if part.starts_with("proto") => "loss.prototypes",
        ModelError::DimMismatch { .. } => "model.head",
        ModelError::InputTooSmall { .. } => "data.image_size",
        ModelError::Channels { .. } => "data.channels",
        _ => "model.backbone",
    }
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

fn flops(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.2} GFLOP", v / 1e9)
    } else {
        format!("{:.1} MFLOP", v / 1e6)
    }
}

/// The path of the diagnostic [`plan_with`] returns when the data cannot be read (an
/// I/O problem, not a recipe one: the CLI exits with 2 for it).
pub const DATA_READ_PATH: &str = "data.source";

/// Whether a diagnostic from [`plan_with`] says the data could not be read.
pub fn is_data_error(d: &Diagnostic) -> bool {
    d.path == DATA_READ_PATH
}

/// Works out the plan of a valid recipe as text, or the diagnostics that stop it.
pub fn plan(r: &Recipe) -> Result<String, Vec<Diagnostic>> {
    plan_with(r, None, DEFAULT_GBIT)
}

/// The network bandwidth `recipe plan --world-size` assumes unless told (Gbit/s).
pub const DEFAULT_GBIT: f64 = 10.0;

/// What one rank of a `world`-rank data-parallel job moves per training step.
#[derive(Clone, Debug, PartialEq)]
pub struct CommPlan {
    /// Images per rank per step.
    pub per_rank_batch: usize,
    /// Bytes of the gradient all-reduce payload (every trainable value, f32).
    pub gradient_bytes: f64,
    /// Bytes each rank sends for the gradient all-reduce with a ring algorithm
    /// (`2·(K−1)/K` of the payload).
    pub gradient_sent: f64,
    /// Bytes each rank contributes to the method's gathers per step (embeddings and
    /// their gradient, keys, bank rows, queue rows, Sinkhorn sums).
    pub method_sent: f64,
    /// Bytes each rank sends for synchronised batch norm (0 when off).
    pub sync_bn_sent: f64,
    /// Collective calls per step (each pays the network latency about `2·log2 K` times).
    pub collectives: usize,
}

impl CommPlan {
    /// Total bytes each rank sends per step.
    pub fn sent(&self) -> f64 {
        self.gradient_sent + self.method_sent + self.sync_bn_sent
    }

    /// Estimated communication seconds per step at `gbit` Gbit/s and `latency_s` per
    /// message hop, for `world` ranks.
    pub fn seconds(&self, world: usize, gbit: f64, latency_s: f64) -> f64 {
        let hops = (world.max(2) as f64).log2().ceil() * 2.0;
        self.sent() * 8.0 / (gbit * 1e9) + self.collectives as f64 * hops * latency_s
    }
}

/// The communication of one step of `r` (training `method`) over `world` ranks, for a
/// model of `params` trainable values with batch-norm layers of `norms` channels and
/// embeddings of `model.dim` features, `views` views per image.
pub fn comm_plan(
    r: &Recipe,
    method: &MethodConfig,
    world: usize,
    params: usize,
    norms: &[usize],
    model: &ModelFacts,
    views: usize,
) -> Result<CommPlan, String> {
    let (bn_layers, bn_channels) = (norms.len(), norms.iter().sum::<usize>());
    let dim = model.dim;
    let (lo, hi) = crate::dist::shard_range(r.train.batch_size, 0, world).map_err(|e| e.0)?;
    let n = hi - lo;
    let k = world as f64;
    let ring = 2.0 * (k - 1.0) / k;
    let gradient_bytes = params as f64 * 4.0;
    let emb = (n * dim * 4) as f64;
    // Gathers send the rank's block once; reduce-scatter (the gather's backward) sends
    // the full buffer's (K−1)/K in a ring.
    let (method_sent, calls) = method.comm(&CommFacts {
        images: n,
        views,
        embedding_bytes: emb,
        ring,
        prototypes: model.prototypes,
    });
    let sync_bn_sent = if r.train.sync_batch_norm {
        // Forward: every rank's (mean, var, count) per layer; backward: two sums.
        bn_channels as f64 * 4.0 * (2.0 + 2.0 * ring)
    } else {
        0.0
    };
    let buckets = (params.div_ceil(crate::dist::grads::BUCKET_FLOATS)).max(1);
    Ok(CommPlan {
        per_rank_batch: n,
        gradient_bytes,
        gradient_sent: gradient_bytes * ring,
        method_sent,
        sync_bn_sent,
        collectives: buckets
            + calls
            + 1
            + if r.train.sync_batch_norm {
                2 * bn_layers
            } else {
                0
            },
    })
}

/// [`plan`], plus with `world` the data-parallel section of `recipe plan --world-size`:
/// the per-rank batch, the bytes each rank sends per step and the estimated
/// communication time at `gbit` Gbit/s.
pub fn plan_with(r: &Recipe, world: Option<usize>, gbit: f64) -> Result<String, Vec<Diagnostic>> {
    let mut out = String::new();
    let data = load(&crate::build::data::config(&r.data, r.seed)).map_err(|e| {
        vec![Diagnostic::error(
            DATA_READ_PATH,
            format!("cannot read the data: {e}"),
        )]
    })?;
    let n_train = data.train.len();
    // The method, described by its objective config: name, state, extra passes, traffic.
    let method = build::method(r, n_train);
    let n_test = data.test.as_ref().map_or(0, |t| t.len());
    let _ = writeln!(
        out,
        "recipe `{}`: {} on {} training / {} test images, {}×{}×{}",
        r.name,
        method.name(),
        n_train,
        n_test,
        r.data.channels,
        r.data.image_size,
        r.data.image_size
    );
    if !data.skipped.is_empty() {
        let _ = writeln!(out, "  skipped {} unreadable image(s)", data.skipped.len());
    }
    let classes = data.train.classes().len();
    if classes > 0 {
        let _ = writeln!(out, "  {classes} classes");
    }

    let batch = r.train.batch_size;
    if batch > n_train {
        return Err(vec![Diagnostic::error(
            "train.batch_size",
            format!("batch_size {batch} is larger than the {n_train} training images"),
        )]);
    }
    let steps_per_epoch = (n_train / batch) as u64; // the loader drops the last partial batch
    let sizes = build::view_sizes(r);
    let views: usize = sizes.iter().map(|(_, n)| n).sum();
    let desc: Vec<String> = sizes
        .iter()
        .map(|(s, n)| format!("{n} × {s}×{s}"))
        .collect();
    let _ = writeln!(out, "views: {} per image ({})", views, desc.join(" + "));

    let lr =
        build::peak_lr(r).map_err(|e| vec![Diagnostic::error("optimizer.lr", e.to_string())])?;
    let sched = Schedule::new(
        &build::schedule(&r.schedule),
        lr.lr,
        r.train.epochs as u64,
        steps_per_epoch,
    )
    .map_err(|e| vec![Diagnostic::error("schedule", e.to_string())])?;
    let _ = writeln!(out, "optimizer: {}, {}", r.optimizer.name(), lr);
    let _ = writeln!(
        out,
        "schedule: {} steps ({} epochs × {} steps of {} images, last partial batch dropped), {} warmup steps",
        sched.total_steps(),
        r.train.epochs,
        steps_per_epoch,
        batch,
        sched.warmup_steps()
    );

    // One model per distinct view size, so every size is checked against every layer.
    let mut summaries: Vec<(usize, usize, ModelSummary)> = Vec::new();
    let mut params = 0usize;
    let mut buffers = 0usize;
    let mut prototypes = None;
    let mut predictor = 0usize;
    for &(size, count) in &sizes {
        let cfg = build::model(r, size)
            .map_err(|e| vec![Diagnostic::error(model_error_path(&e), e.to_string())])?;
        prototypes = cfg.prototypes.as_ref().map(|p| p.count);
        let mut store = ParamStore::new(Cpu::default());
        let model = Model::new(&mut store, &cfg, r.seed).map_err(|e| {
            vec![Diagnostic::error(
                model_error_path(&e),
                format!("{e} (for {size}×{size} views)"),
            )]
        })?;
        let summary = model
            .summary(batch)
            .map_err(|e| vec![Diagnostic::error(model_error_path(&e), e.to_string())])?;
        params = store.num_params();
        buffers = store
            .entries()
            .iter()
            .filter(|e| !e.role.is_trainable())
            .map(|e| e.numel())
            .sum();
        predictor = store
            .entries()
            .iter()
            .filter(|e| Model::is_predictor_entry(&e.name))
            .map(|e| e.numel())
            .sum();
        summaries.push((size, count, summary));
    }
    let (first_size, _, first) = &summaries[0];
    let _ = writeln!(
        out,
        "\nmodel at {first_size}×{first_size} (per-layer FLOPs are per image):"
    );
    let _ = writeln!(out, "{first}");
    let _ = writeln!(
        out,
        "parameters: {params} ({}), buffers: {buffers}",
        mib(params as f64 * 4.0)
    );

    let mut step_flops: f64 = summaries
        .iter()
        .map(|(_, n, s)| s.train_step_flops as f64 * *n as f64)
        .sum();
    let mut activations: f64 = summaries
        .iter()
        .map(|(_, n, s)| s.peak_activation_bytes as f64 * *n as f64)
        .sum();
    // The method's state and extra passes (its state layout is what a checkpoint holds).
    let facts = ModelFacts {
        dim: r.model.head.out_dim,
        encoder_floats: params + buffers,
        predictor_floats: predictor,
        view_forward_flops: first.forward_flops as f64,
        prototypes,
        batch,
    };
    let costs = method.plan(&facts);
    // A method that feeds the encoder several copies of each view (RotNet's rotations)
    // multiplies its work and activations.
    let copies = costs.encoder_copies.max(1);
    step_flops = step_flops * copies as f64 + costs.extra_step_flops;
    activations *= copies as f64;
    let state = (!costs.parts.is_empty()).then(|| {
        format!(
            "{} ({})",
            costs.parts.join(", "),
            mib(costs.state_bytes as f64)
        )
    });
    let images = batch * views * copies;
    let copies_text = if copies > 1 {
        format!(" × {copies} copies")
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "\ntraining step, all views: {batch} images × {views} views{copies_text} = {images} images, {} (≈ 3 × forward per view)",
        flops(step_flops)
    );
    let _ = writeln!(
        out,
        "peak activation memory, all views (estimate): {}",
        mib(activations)
    );
    if let Some(s) = state {
        let _ = writeln!(out, "method state: {s}");
    }
    if !costs.step_parts.is_empty() {
        let _ = writeln!(
            out,
            "method tensors per step: {} ({}, freed after the step)",
            costs.step_parts.join(", "),
            mib(costs.step_bytes as f64)
        );
    }
    let _ = writeln!(
        out,
        "whole run: {} over {} steps",
        flops(step_flops * sched.total_steps() as f64),
        sched.total_steps()
    );
    if let Some(k) = world {
        let norms: Vec<usize> = first_store_norms(r, first_size)?;
        let cp = comm_plan(r, &method, k, params, &norms, &facts, views)
            .map_err(|e| vec![Diagnostic::error("train.batch_size", e)])?;
        let latency = 5e-6;
        let secs = cp.seconds(k, gbit, latency);
        let _ = writeln!(
            out,
            "\ndata-parallel over {k} ranks (mpirun -n {k}):\n  per rank: {} images × {views} views, {} of compute, activations {}\n  sent per rank per step: {} = gradient all-reduce {} (ring: 2·(K−1)/K of {}) + {} {} + sync batch norm {}\n  estimated communication: {:.1} ms per step at {gbit} Gbit/s and {:.0} µs latency ({} collectives per step)",
            cp.per_rank_batch,
            flops(step_flops / k as f64),
            mib(activations / k as f64),
            mib(cp.sent()),
            mib(cp.gradient_sent),
            mib(cp.gradient_bytes),
            method.name(),
            mib(cp.method_sent),
            mib(cp.sync_bn_sent),
            secs * 1e3,
            latency * 1e6,
            cp.collectives
        );
    }
    Ok(out)
}

/// Channel counts of the batch-norm layers of the model at `size`.
fn first_store_norms(r: &Recipe, size: &usize) -> Result<Vec<usize>, Vec<Diagnostic>> {
    let cfg = build::model(r, *size)
        .map_err(|e| vec![Diagnostic::error(model_error_path(&e), e.to_string())])?;
    let mut store = ParamStore::new(Cpu::default());
    Model::new(&mut store, &cfg, r.seed)
        .map_err(|e| vec![Diagnostic::error(model_error_path(&e), e.to_string())])?;
    Ok(store
        .entries()
        .iter()
        .filter(|e| e.role == crate::nn::params::Role::NormWeight)
        .map(|e| e.numel())
        .collect())
}
