//! The small CNN family: plain conv3×3-BN-ReLU layers (stride 1 for the first, 2
//! after), named as a torch `nn.Sequential` called `features` (`features.0` conv,
//! `features.1` batch norm, `features.2` ReLU, `features.3` the next conv, …).

use dfdx::prelude::*;

use super::{BackboneNet, StageHook, relu_row, v3};
use crate::nn::error::ModelError;
use crate::nn::init::Init;
use crate::nn::layers::{BatchNorm, Chw, Conv2d};
use crate::nn::ops::{EngineDevice, T4, Window};
use crate::nn::params::ParamStore;
use crate::nn::summary::LayerSummary;

/// A built small CNN: one conv-BN pair per layer, each followed by a ReLU.
#[derive(Clone, Debug)]
pub struct SmallCnn {
    layers: Vec<(Conv2d, BatchNorm)>,
    /// Stage names for the hook, one per layer: `layer1`, `layer2`, ….
    stages: Vec<String>,
}

impl SmallCnn {
    /// Registers `features.{3i}` (conv) and `features.{3i+1}` (batch norm) for each
    /// width in `channels`, on `cin` input channels.
    pub fn new<D: Device<f32>>(
        store: &mut ParamStore<D>,
        init: &mut Init,
        channels: &[usize],
        cin: usize,
    ) -> Result<Self, ModelError> {
        if channels.is_empty() || channels.contains(&0) {
            return Err(ModelError::Config(
                "a small CNN needs positive stage widths".into(),
            ));
        }
        let mut layers = Vec::new();
        let mut c = cin;
        for (i, &w) in channels.iter().enumerate() {
            let stride = if i == 0 { 1 } else { 2 };
            let mut conv = Conv2d::new(
                store,
                init,
                &format!("features.{}", 3 * i),
                c,
                w,
                Window::new(3, stride, 1),
                false,
            )?;
            conv.data_input = i == 0;
            let bn = BatchNorm::new(store, &format!("features.{}", 3 * i + 1), w)?;
            layers.push((conv, bn));
            c = w;
        }
        let stages = (1..=layers.len()).map(|i| format!("layer{i}")).collect();
        Ok(SmallCnn { layers, stages })
    }
}

impl BackboneNet for SmallCnn {
    fn out_channels(&self) -> usize {
        self.layers.last().map_or(0, |(c, _)| c.cout)
    }

    fn first_conv(&self) -> &Conv2d {
        &self.layers[0].0
    }

    fn describe(&self, input: Chw, rows: &mut Vec<LayerSummary>) -> Result<Chw, ModelError> {
        let mut s = input;
        for (i, (c, b)) in self.layers.iter().enumerate() {
            s = c.describe(s, rows)?;
            b.describe(v3(s), rows);
            relu_row(&format!("features.{}", 3 * i + 2), s, rows);
        }
        Ok(s)
    }

    /// Every conv-BN-ReLU layer is a stage for `hook`: `layer1`, `layer2`, ….
    fn walk<D: EngineDevice, T: Tape<f32, D>>(
        &self,
        store: &mut ParamStore<D>,
        x: T4<D, T>,
        train: bool,
        hook: &mut StageHook<'_, D, T>,
    ) -> T4<D, T> {
        let mut x = x;
        for ((c, b), stage) in self.layers.iter().zip(&self.stages) {
            x = b.forward2d_relu(store, c.forward(store, x), train);
            hook.stage(stage, &x);
        }
        x
    }
}
