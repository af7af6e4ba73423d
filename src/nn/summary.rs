//! The model summary behind `recipe plan`: per-layer output shape, parameter count
//! and forward FLOPs, computed from shapes alone (no tensors are allocated).

use std::fmt;

/// One row of the summary.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerSummary {
    /// Layer name (the parameter prefix, e.g. `layer1.0.conv1`).
    pub name: String,
    /// Layer kind (`conv2d`, `batch_norm`, `relu`, `linear`, …).
    pub kind: &'static str,
    /// Output shape of one sample.
    pub out_shape: Vec<usize>,
    /// Trainable parameters of this layer.
    pub params: usize,
    /// Forward FLOPs for one sample (a multiply-add counts 2).
    pub flops: usize,
}

/// A whole model's summary at a batch size.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSummary {
    /// Rows in forward order.
    pub layers: Vec<LayerSummary>,
    /// Images per step (all views).
    pub batch: usize,
    /// Sum of the layers' parameters.
    pub total_params: usize,
    /// Forward FLOPs of one batch.
    pub forward_flops: u64,
    /// Estimated FLOPs of one training step: forward + backward ≈ 3 × forward.
    pub train_step_flops: u64,
    /// Estimated peak activation memory in bytes: every layer output of the batch
    /// (f32) is kept for backward, plus the input.
    pub peak_activation_bytes: u64,
}

impl ModelSummary {
    /// Totals over `layers` for a batch of `batch` images of `input_numel` values.
    pub fn new(layers: Vec<LayerSummary>, batch: usize, input_numel: usize) -> Self {
        let total_params = layers.iter().map(|l| l.params).sum();
        let per_sample: u64 = layers.iter().map(|l| l.flops as u64).sum();
        let forward_flops = per_sample * batch as u64;
        let act: u64 = layers
            .iter()
            .map(|l| l.out_shape.iter().product::<usize>() as u64)
            .sum::<u64>()
            + input_numel as u64;
        ModelSummary {
            layers,
            batch,
            total_params,
            forward_flops,
            train_step_flops: 3 * forward_flops,
            peak_activation_bytes: act * batch as u64 * 4,
        }
    }
}

fn human(v: u64) -> String {
    let v = v as f64;
    if v >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}K", v / 1e3)
    } else {
        format!("{v}")
    }
}

impl fmt::Display for ModelSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<36} {:<11} {:>16} {:>11} {:>10}",
            "layer", "kind", "output", "params", "FLOPs"
        )?;
        for l in &self.layers {
            let shape = l
                .out_shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("x");
            writeln!(
                f,
                "{:<36} {:<11} {:>16} {:>11} {:>10}",
                l.name,
                l.kind,
                shape,
                l.params,
                human(l.flops as u64)
            )?;
        }
        writeln!(f, "total parameters: {}", self.total_params)?;
        writeln!(
            f,
            "forward FLOPs, one view of batch {}: {}",
            self.batch,
            human(self.forward_flops)
        )?;
        writeln!(
            f,
            "training step FLOPs, one view (~3x forward): {}",
            human(self.train_step_flops)
        )?;
        write!(
            f,
            "peak activation memory, one view (estimate): {:.1} MiB",
            self.peak_activation_bytes as f64 / (1024.0 * 1024.0)
        )
    }
}
