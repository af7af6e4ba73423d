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
use crate::data::{DataConfig, load};
use crate::diag::Diagnostic;
use crate::nn::model::Model;
use crate::nn::params::ParamStore;
use crate::nn::{ModelError, ModelSummary};
use crate::optim::schedule::Schedule;
use crate::spec::Recipe;
use crate::spec::loss::Loss;

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

/// Works out the plan of a valid recipe as text, or the diagnostics that stop it.
pub fn plan(r: &Recipe) -> Result<String, Vec<Diagnostic>> {
    let mut out = String::new();
    let data = load(&DataConfig::from_spec(&r.data, r.seed)).map_err(|e| {
        vec![Diagnostic::error(
            "data.source",
            format!("cannot read the data: {e}"),
        )]
    })?;
    let n_train = data.train.len();
    let n_test = data.test.as_ref().map_or(0, |t| t.len());
    let _ = writeln!(
        out,
        "recipe `{}`: {} on {} training / {} test images, {}×{}×{}",
        r.name,
        r.loss.method(),
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
    for &(size, count) in &sizes {
        let cfg = build::model(r, size)
            .map_err(|e| vec![Diagnostic::error(model_error_path(&e), e.to_string())])?;
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
    let activations: f64 = summaries
        .iter()
        .map(|(_, n, s)| s.peak_activation_bytes as f64 * *n as f64)
        .sum();
    // The method's state, from the objective's own layout (what a checkpoint holds).
    let method = build::method(r, n_train);
    let dim = r.model.head.out_dim;
    let mut parts: Vec<String> = method
        .state_layout(dim)
        .iter()
        .filter(|(_, shape)| shape.iter().product::<usize>() > 1)
        .map(|(name, shape)| {
            let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
            format!("{name} {}", dims.join("×"))
        })
        .collect();
    let encoder_floats = params + buffers;
    if let Loss::Moco { symmetric, .. } = &r.loss {
        // The key encoder runs forward only, on one view (two when symmetric).
        let keys = if *symmetric { 2.0 } else { 1.0 };
        step_flops += first.forward_flops as f64 * keys;
        parts.insert(0, format!("momentum encoder of {encoder_floats} values"));
    }
    if let Loss::MemoryBank { negatives, .. } = &r.loss {
        parts.push(format!("{negatives} negatives per image"));
    }
    if let Loss::Swav { prototypes, .. } = &r.loss {
        parts.insert(0, format!("{prototypes} prototypes (parameters)"));
    }
    let state_bytes = method.state_bytes(dim, encoder_floats);
    let state =
        (!parts.is_empty()).then(|| format!("{} ({})", parts.join(", "), mib(state_bytes as f64)));
    let images = batch * views;
    let _ = writeln!(
        out,
        "\ntraining step: {batch} images × {views} views = {images} images, {} (≈ 3 × forward per view)",
        flops(step_flops)
    );
    let _ = writeln!(
        out,
        "peak activation memory (estimate): {}",
        mib(activations)
    );
    if let Some(s) = state {
        let _ = writeln!(out, "method state: {s}");
    }
    let _ = writeln!(
        out,
        "whole run: {} over {} steps",
        flops(step_flops * sched.total_steps() as f64),
        sched.total_steps()
    );
    Ok(out)
}
