//! DINO's last layer (Caron et al. 2021, "Emerging Properties in Self-Supervised
//! Vision Transformers"; facebookresearch/dino `vision_transformer.py`, `DINOHead`):
//! the projection head's output, L2-normalised, through a weight-normalised linear
//! layer without bias to `out_dim` scores.
//!
//! The reference wraps `nn.Linear(bottleneck, out_dim, bias=False)` in
//! `nn.utils.weight_norm`: the weight is `w = g · v / ‖v‖` per output row, with the
//! magnitude `g` filled with 1 and, with `norm_last_layer` (the default), frozen, so
//! `w = v / ‖v‖` and the gradient reaches `v` through the normalisation. Names follow
//! the reference's `last_layer.weight_v` (`(out_dim, dim)`, initialised as
//! `nn.Linear`'s weight) and `last_layer.weight_g` (`(out_dim, 1)`, registered only
//! when it trains, i.e. without `norm_last_layer`; frozen it is identically 1).
//! The MLP before it is the model's projection head (`model.head`).

use dfdx::prelude::*;

use crate::nn::error::ModelError;
use crate::nn::init::Init;
use crate::nn::ops::{EngineDevice, T2};
use crate::nn::params::{ParamId, ParamStore, Role};
use crate::nn::summary::LayerSummary;

/// DINO's last layer configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct DinoLastLayerConfig {
    /// Output scores (the reference's `out_dim`, 65536 on ImageNet).
    pub out_dim: usize,
    /// Input features; `None` takes the head's output, `Some` must match it.
    pub dim: Option<usize>,
    /// Fix the weight-norm magnitude `g` to 1 (`w = v/‖v‖`); otherwise `g` trains.
    pub norm_last_layer: bool,
}

/// The weight-normalised last layer: scores `normalize(z) · wᵀ`, `w = g·v/‖v‖` per row.
#[derive(Clone, Debug)]
pub struct DinoLastLayer {
    v: ParamId,
    g: Option<ParamId>,
    /// Input features.
    pub dim: usize,
    /// Output scores.
    pub out_dim: usize,
}

/// Name prefix of the layer's entries.
pub const LAST_LAYER_PREFIX: &str = "last_layer.";

impl DinoLastLayer {
    /// Registers `last_layer.weight_v` `(out_dim, dim)` (uniform in `±1/√dim`, as
    /// `nn.Linear`) and, without `norm_last_layer`, `last_layer.weight_g`
    /// `(out_dim, 1)` filled with 1.
    pub fn new<D: Device<f32>>(
        store: &mut ParamStore<D>,
        init: &mut Init,
        cfg: &DinoLastLayerConfig,
        dim: usize,
    ) -> Result<Self, ModelError> {
        if let Some(d) = cfg.dim {
            ModelError::check_dim("DINO last layer", d, dim)?;
        }
        if cfg.out_dim < 2 || dim == 0 {
            return Err(ModelError::Config(format!(
                "DINO's last layer needs at least 2 outputs and 1 input, got {} × {dim}",
                cfg.out_dim
            )));
        }
        let v = store.add(
            format!("{LAST_LAYER_PREFIX}weight_v"),
            &[cfg.out_dim, dim],
            init.linear(cfg.out_dim * dim, dim),
            Role::Weight,
        )?;
        let g = if cfg.norm_last_layer {
            None
        } else {
            // `weight_g` is 2-D in the reference, so DINO's parameter groups decay it.
            Some(store.add(
                format!("{LAST_LAYER_PREFIX}weight_g"),
                &[cfg.out_dim, 1],
                vec![1.0; cfg.out_dim],
                Role::Weight,
            )?)
        };
        Ok(DinoLastLayer {
            v,
            g,
            dim,
            out_dim: cfg.out_dim,
        })
    }

    /// Ids of the layer's parameters (`weight_v`, then `weight_g` when it trains): what
    /// DINO freezes during its first epoch(s).
    pub fn param_ids(&self) -> Vec<ParamId> {
        std::iter::once(self.v).chain(self.g).collect()
    }

    /// Summary row (the normalisations' FLOPs are negligible next to the product).
    pub fn describe(&self, rows: &mut Vec<LayerSummary>) {
        rows.push(LayerSummary {
            name: "last_layer".into(),
            kind: "linear",
            out_shape: vec![self.out_dim],
            params: self.out_dim * self.dim + self.g.map_or(0, |_| self.out_dim),
            flops: 2 * self.dim * self.out_dim,
        });
    }

    /// The effective weight `g · v/‖v‖` `(out_dim, dim)` on tape `T`.
    pub fn weight<D: EngineDevice, T: Tape<f32, D>>(&self, store: &ParamStore<D>) -> T2<D, T> {
        let shape = (self.out_dim, self.dim);
        let v = store
            .get(self.v)
            .tensor
            .clone()
            .reshape_like(&shape)
            .retaped::<T>();
        // No epsilon in `weight_norm`; 1e-12 only guards an all-zero row.
        let w = D::l2_normalize(v, 1e-12);
        match self.g {
            None => w,
            Some(g) => {
                let g = store
                    .get(g)
                    .tensor
                    .clone()
                    .reshape_like(&(self.out_dim,))
                    .retaped::<T>();
                w * g.broadcast_like::<_, Axis<1>>(&shape)
            }
        }
    }

    /// Scores `(n, out_dim)` of head outputs `z` `(n, dim)`: `normalize(z) · wᵀ`
    /// (DINOHead's forward after its MLP).
    pub fn forward<D: EngineDevice, T: Tape<f32, D>>(
        &self,
        store: &ParamStore<D>,
        z: T2<D, T>,
    ) -> Result<T2<D, T>, ModelError> {
        ModelError::check_dim("DINO last layer", self.dim, z.shape().1)?;
        let zn = D::l2_normalize(z, 1e-12);
        let w = self.weight::<D, T>(store);
        Ok(D::linear(zn, w, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `Σ c ⊙ forward(z)` for fixed coefficients, in f64 from the f32 forward.
    fn objective(store: &ParamStore<Cpu>, layer: &DinoLastLayer, z: &[f32], c: &[f32]) -> f64 {
        let dev = store.device().clone();
        let zt = dev.tensor_from_vec(z.to_vec(), (z.len() / layer.dim, layer.dim));
        let s = layer.forward(store, zt).unwrap().as_vec();
        s.iter().zip(c).map(|(a, b)| *a as f64 * *b as f64).sum()
    }

    /// Finite differences of a weighted sum of the scores against dfdx's gradient of
    /// `weight_v`, `weight_g` and the input, with and without a trainable magnitude.
    #[test]
    fn weight_norm_gradient_matches_finite_differences() {
        for norm_last_layer in [true, false] {
            let dev = Cpu::default();
            let mut store = ParamStore::new(dev.clone());
            let mut init = Init::new(7);
            let cfg = DinoLastLayerConfig {
                out_dim: 5,
                dim: None,
                norm_last_layer,
            };
            let layer = DinoLastLayer::new(&mut store, &mut init, &cfg, 4).unwrap();
            if let Some(&g) = layer.param_ids().get(1) {
                // A magnitude away from 1, so its gradient is not the trivial one.
                store
                    .set_data(g, (0..5).map(|i| 0.5 + 0.3 * i as f32).collect())
                    .unwrap();
            }
            let n = 3;
            let z: Vec<f32> = init.normal(n * 4, 1.0);
            let c: Vec<f32> = init.normal(n * 5, 1.0);
            let zt = dev.tensor_from_vec(z.clone(), (n, 4));
            let s = layer.forward(&store, zt.leaky_trace()).unwrap();
            let loss = (s * dev.tensor_from_vec(c.clone(), (n, 5))).sum::<(), _>();
            let grads = loss.backward();
            let eps = 1e-2f32;
            let mut checked = 0;
            for id in layer.param_ids() {
                let analytic = grads.get(&store.get(id).tensor).as_vec();
                let base = store.data(id);
                for j in 0..base.len() {
                    let mut p = base.clone();
                    p[j] += eps;
                    store.set_data(id, p.clone()).unwrap();
                    let up = objective(&store, &layer, &z, &c);
                    p[j] -= 2.0 * eps;
                    store.set_data(id, p).unwrap();
                    let down = objective(&store, &layer, &z, &c);
                    store.set_data(id, base.clone()).unwrap();
                    let fd = (up - down) / (2.0 * eps as f64);
                    assert!(
                        (fd - analytic[j] as f64).abs() < 2e-3,
                        "{}[{j}]: fd {fd} vs {}",
                        store.get(id).name,
                        analytic[j]
                    );
                    checked += 1;
                }
            }
            let gz = grads.get(&zt).as_vec();
            for j in 0..z.len() {
                let mut p = z.clone();
                p[j] += eps;
                let up = objective(&store, &layer, &p, &c);
                p[j] -= 2.0 * eps;
                let down = objective(&store, &layer, &p, &c);
                let fd = (up - down) / (2.0 * eps as f64);
                assert!(
                    (fd - gz[j] as f64).abs() < 2e-3,
                    "z[{j}]: {fd} vs {}",
                    gz[j]
                );
            }
            assert_eq!(checked, 20 + if norm_last_layer { 0 } else { 5 });
            // Scores of a unit input against unit rows are cosines (times g).
            let w = layer.weight::<Cpu, NoneTape>(&store).as_vec();
            for row in w.chunks(4) {
                let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
                assert!(norm_last_layer == ((norm - 1.0).abs() < 1e-6), "{norm}");
            }
        }
    }

    #[test]
    fn bad_sizes_are_errors() {
        let mut store = ParamStore::new(Cpu::default());
        let mut init = Init::new(0);
        let cfg = |out_dim, dim| DinoLastLayerConfig {
            out_dim,
            dim,
            norm_last_layer: true,
        };
        assert!(DinoLastLayer::new(&mut store, &mut init, &cfg(1, None), 4).is_err());
        assert!(DinoLastLayer::new(&mut store, &mut init, &cfg(8, Some(3)), 4).is_err());
        let l = DinoLastLayer::new(&mut store, &mut init, &cfg(8, None), 4).unwrap();
        let z = store.device().tensor_from_vec(vec![0.0f32; 6], (2, 3));
        assert!(l.forward(&store, z).is_err());
    }
}
