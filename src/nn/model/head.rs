//! The projection head (an MLP, torch `nn.Sequential` names `projector.{i}`), the
//! BYOL/SimSiam predictor (the same MLP, named `predictor.{i}`) and SwAV prototypes
//! (`prototypes.weight`), with their configs.

use dfdx::prelude::*;

use crate::nn::error::ModelError;
use crate::nn::init::Init;
use crate::nn::layers::{BatchNorm, Linear};
use crate::nn::ops::{EngineDevice, T2};
use crate::nn::params::{ParamId, ParamStore};
use crate::nn::summary::LayerSummary;

/// Projection head configuration: `Linear → [BN] → ReLU` per hidden size, then a
/// final `Linear → [BN if last_bn]`.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadConfig {
    /// Input features; `None` takes the backbone's output, `Some` must match it.
    pub in_dim: Option<usize>,
    /// Hidden sizes.
    pub hidden: Vec<usize>,
    /// Output features.
    pub out_dim: usize,
    /// Batch norm after each hidden linear layer.
    pub batch_norm: bool,
    /// Batch norm (affine) after the last linear layer.
    pub last_bn: bool,
}

/// SwAV prototypes configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct PrototypesConfig {
    /// Number of prototypes.
    pub count: usize,
    /// Input features; `None` takes the head's output, `Some` must match it.
    pub dim: Option<usize>,
}

/// MLP projection head.
#[derive(Clone, Debug)]
pub struct Head {
    layers: Vec<(Linear, Option<BatchNorm>, bool)>,
    /// Input features.
    pub in_dim: usize,
    /// Output features.
    pub out_dim: usize,
}

impl Head {
    /// Registers `projector.{i}` entries (indices as in a torch `nn.Sequential`).
    pub fn new<D: Device<f32>>(
        store: &mut ParamStore<D>,
        init: &mut Init,
        cfg: &HeadConfig,
        in_dim: usize,
    ) -> Result<Self, ModelError> {
        Head::named(store, init, cfg, in_dim, "projector")
    }

    /// Registers `{prefix}.{i}` entries: the same MLP under another name (the
    /// predictor).
    pub fn named<D: Device<f32>>(
        store: &mut ParamStore<D>,
        init: &mut Init,
        cfg: &HeadConfig,
        in_dim: usize,
        prefix: &str,
    ) -> Result<Self, ModelError> {
        if let Some(d) = cfg.in_dim {
            ModelError::check_dim("projection head", d, in_dim)?;
        }
        if cfg.out_dim == 0 || cfg.hidden.contains(&0) {
            return Err(ModelError::Config("head sizes must be positive".into()));
        }
        let mut layers = Vec::new();
        let mut idx = 0;
        let mut d = in_dim;
        let sizes: Vec<usize> = cfg.hidden.iter().copied().chain([cfg.out_dim]).collect();
        for (i, &out) in sizes.iter().enumerate() {
            let last = i + 1 == sizes.len();
            let lin = Linear::new(store, init, &format!("{prefix}.{idx}"), d, out, true)?;
            idx += 1;
            let bn = if (!last && cfg.batch_norm) || (last && cfg.last_bn) {
                let b = BatchNorm::new(store, &format!("{prefix}.{idx}"), out)?;
                idx += 1;
                Some(b)
            } else {
                None
            };
            if !last {
                idx += 1; // the ReLU's slot
            }
            layers.push((lin, bn, !last));
            d = out;
        }
        Ok(Head {
            layers,
            in_dim,
            out_dim: d,
        })
    }

    /// Summary rows.
    pub fn describe(&self, rows: &mut Vec<LayerSummary>) {
        for (lin, bn, relu) in &self.layers {
            lin.describe(rows);
            if let Some(b) = bn {
                b.describe(vec![lin.fout], rows);
            }
            if *relu {
                // Named by its `nn.Sequential` slot (after the linear and the batch
                // norm), as the parameters are.
                let name = match lin.name.rsplit_once('.') {
                    Some((prefix, i)) => match i.parse::<usize>() {
                        Ok(i) => format!("{prefix}.{}", i + 1 + usize::from(bn.is_some())),
                        Err(_) => format!("{}.relu", lin.name),
                    },
                    None => format!("{}.relu", lin.name),
                };
                rows.push(LayerSummary {
                    name,
                    kind: "relu",
                    out_shape: vec![lin.fout],
                    params: 0,
                    flops: lin.fout,
                });
            }
        }
    }

    /// Projects features `(n, in_dim)` to `(n, out_dim)`.
    pub fn forward<D: EngineDevice, T: Tape<f32, D>>(
        &self,
        store: &mut ParamStore<D>,
        x: T2<D, T>,
        train: bool,
    ) -> Result<T2<D, T>, ModelError> {
        ModelError::check_dim("projection head", self.in_dim, x.shape().1)?;
        let mut x = x;
        for (lin, bn, relu) in &self.layers {
            x = lin.forward(store, x);
            if let Some(b) = bn {
                x = b.forward1d(store, x, train);
            }
            if *relu {
                x = D::relu2(x);
            }
        }
        Ok(x)
    }
}

/// SwAV prototypes: scores `z · normalize(W)ᵀ`, no bias.
#[derive(Clone, Debug)]
pub struct Prototypes {
    lin: Linear,
}

impl Prototypes {
    /// Registers `prototypes.weight` `(count, dim)`.
    pub fn new<D: Device<f32>>(
        store: &mut ParamStore<D>,
        init: &mut Init,
        cfg: &PrototypesConfig,
        dim: usize,
    ) -> Result<Self, ModelError> {
        if let Some(d) = cfg.dim {
            ModelError::check_dim("prototypes", d, dim)?;
        }
        if cfg.count == 0 {
            return Err(ModelError::Config(
                "prototype count must be positive".into(),
            ));
        }
        Ok(Prototypes {
            lin: Linear::new(store, init, "prototypes", dim, cfg.count, false)?,
        })
    }

    /// Number of prototypes.
    pub fn count(&self) -> usize {
        self.lin.fout
    }

    /// Rescales every prototype to unit norm in the store (SwAV does this before each
    /// step, without gradient).
    pub fn normalize_weights<D: EngineDevice>(&self, store: &mut ParamStore<D>) {
        let w = self.lin.weight::<D, NoneTape>(store);
        let n = D::l2_normalize(w, 1e-12);
        let len = self.lin.fin * self.lin.fout;
        store.get_mut(self.lin.weight_id()).tensor = n.reshape_like(&(len,));
    }

    /// Summary row.
    pub fn describe(&self, rows: &mut Vec<LayerSummary>) {
        self.lin.describe(rows);
    }

    /// Id of the `(count, dim)` weight entry.
    pub fn weight_id(&self) -> ParamId {
        self.lin.weight_id()
    }

    /// Scores `z · Wᵀ` with the stored weight as it is, on tape `T`: SwAV normalises the
    /// prototypes in place before each step ([`normalize_weights`](Self::normalize_weights))
    /// instead of inside the graph, so the gradient is that of a plain linear layer.
    pub fn scores<D: EngineDevice, T: Tape<f32, D>>(
        &self,
        store: &ParamStore<D>,
        z: T2<D, T>,
    ) -> Result<T2<D, T>, ModelError> {
        ModelError::check_dim("prototypes", self.lin.fin, z.shape().1)?;
        Ok(D::linear(z, self.lin.weight::<D, T>(store), None))
    }

    /// Scores `(n, count)` of features `(n, dim)` against the L2-normalised prototypes.
    pub fn forward<D: EngineDevice, T: Tape<f32, D>>(
        &self,
        store: &ParamStore<D>,
        z: T2<D, T>,
    ) -> Result<T2<D, T>, ModelError> {
        ModelError::check_dim("prototypes", self.lin.fin, z.shape().1)?;
        let w = D::l2_normalize(self.lin.weight::<D, T>(store), 1e-12);
        Ok(D::linear(z, w, None))
    }
}
