//! The ResNet family: torchvision's ResNet-18/34/50 (basic or bottleneck blocks,
//! CIFAR or ImageNet stem, width multiplier) or any stage list ([`ResNetSpec`]).
//!
//! Entry names and shapes are exactly torchvision's minus `fc` (`conv1`, `bn1`,
//! `layer1.0.conv1`, …, `layer1.0.downsample.{0,1}`), registered in torchvision's
//! `state_dict` order.

use dfdx::prelude::*;

use super::{BackboneNet, StageHook, relu_row, v3};
use crate::nn::error::ModelError;
use crate::nn::init::Init;
use crate::nn::layers::{BatchNorm, Chw, Conv2d, window_out};
use crate::nn::ops::{EngineDevice, T4, Window};
use crate::nn::params::ParamStore;
use crate::nn::summary::LayerSummary;

/// The stem of a ResNet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stem {
    /// 3×3 stride-1 conv, no max pool (for 32×32 inputs).
    Cifar,
    /// 7×7 stride-2 conv, then 3×3 stride-2 max pool.
    ImageNet,
}

/// One stage of a ResNet: `blocks` residual blocks of base width `width`, the first
/// with stride `stride`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stage {
    /// Base width (a bottleneck block outputs 4× this).
    pub width: usize,
    /// Stride of the first block.
    pub stride: usize,
    /// Number of blocks.
    pub blocks: usize,
}

/// A ResNet fully described by its stages.
#[derive(Clone, Debug, PartialEq)]
pub struct ResNetSpec {
    /// Stem type.
    pub stem: Stem,
    /// Channels of the stem conv.
    pub stem_width: usize,
    /// Stages in order (torchvision's `layer1`, `layer2`, …).
    pub stages: Vec<Stage>,
    /// Bottleneck (1×1, 3×3, 1×1, expansion 4) instead of basic blocks.
    pub bottleneck: bool,
}

impl ResNetSpec {
    /// torchvision's ResNet-18/34/50 with every width multiplied by `width_multiplier`.
    pub fn standard(depth: usize, stem: Stem, width_multiplier: f32) -> Result<Self, ModelError> {
        let (blocks, bottleneck) = match depth {
            18 => ([2, 2, 2, 2], false),
            34 => ([3, 4, 6, 3], false),
            50 => ([3, 4, 6, 3], true),
            d => {
                return Err(ModelError::Config(format!(
                    "ResNet depth must be 18, 34 or 50, not {d}"
                )));
            }
        };
        if !(width_multiplier.is_finite() && width_multiplier > 0.0) {
            return Err(ModelError::Config(format!(
                "width multiplier must be positive, not {width_multiplier}"
            )));
        }
        let scale = |c: usize| ((c as f32 * width_multiplier).round() as usize).max(1);
        Ok(ResNetSpec {
            stem,
            stem_width: scale(64),
            stages: [64, 128, 256, 512]
                .iter()
                .zip(blocks)
                .enumerate()
                .map(|(i, (&w, b))| Stage {
                    width: scale(w),
                    stride: if i == 0 { 1 } else { 2 },
                    blocks: b,
                })
                .collect(),
            bottleneck,
        })
    }

    /// The `smallW` network of `benches/torch_baseline.py`: CIFAR stem of width
    /// `w`, stages (w, s1, 1 block) and (2w, s2, 1 block).
    pub fn small(w: usize) -> Self {
        ResNetSpec {
            stem: Stem::Cifar,
            stem_width: w,
            stages: vec![
                Stage {
                    width: w,
                    stride: 1,
                    blocks: 1,
                },
                Stage {
                    width: 2 * w,
                    stride: 2,
                    blocks: 1,
                },
            ],
            bottleneck: false,
        }
    }
}

/// A residual block (torchvision's `BasicBlock` or `Bottleneck`).
#[derive(Clone, Debug)]
struct Block {
    conv1: Conv2d,
    bn1: BatchNorm,
    conv2: Conv2d,
    bn2: BatchNorm,
    conv3: Option<(Conv2d, BatchNorm)>,
    down: Option<(Conv2d, BatchNorm)>,
}

impl Block {
    fn new<D: Device<f32>>(
        store: &mut ParamStore<D>,
        init: &mut Init,
        name: &str,
        cin: usize,
        width: usize,
        stride: usize,
        bottleneck: bool,
    ) -> Result<(Self, usize), ModelError> {
        let n = |s: &str| format!("{name}.{s}");
        let (conv1, bn1, conv2, bn2, conv3, cout);
        if bottleneck {
            cout = width * 4;
            conv1 = Conv2d::new(
                store,
                init,
                &n("conv1"),
                cin,
                width,
                Window::new(1, 1, 0),
                false,
            )?;
            bn1 = BatchNorm::new(store, &n("bn1"), width)?;
            conv2 = Conv2d::new(
                store,
                init,
                &n("conv2"),
                width,
                width,
                Window::new(3, stride, 1),
                false,
            )?;
            bn2 = BatchNorm::new(store, &n("bn2"), width)?;
            let c3 = Conv2d::new(
                store,
                init,
                &n("conv3"),
                width,
                cout,
                Window::new(1, 1, 0),
                false,
            )?;
            let b3 = BatchNorm::new(store, &n("bn3"), cout)?;
            conv3 = Some((c3, b3));
        } else {
            cout = width;
            conv1 = Conv2d::new(
                store,
                init,
                &n("conv1"),
                cin,
                width,
                Window::new(3, stride, 1),
                false,
            )?;
            bn1 = BatchNorm::new(store, &n("bn1"), width)?;
            conv2 = Conv2d::new(
                store,
                init,
                &n("conv2"),
                width,
                width,
                Window::new(3, 1, 1),
                false,
            )?;
            bn2 = BatchNorm::new(store, &n("bn2"), width)?;
            conv3 = None;
        }
        let down = if stride != 1 || cin != cout {
            let c = Conv2d::new(
                store,
                init,
                &n("downsample.0"),
                cin,
                cout,
                Window::new(1, stride, 0),
                false,
            )?;
            let b = BatchNorm::new(store, &n("downsample.1"), cout)?;
            Some((c, b))
        } else {
            None
        };
        Ok((
            Block {
                conv1,
                bn1,
                conv2,
                bn2,
                conv3,
                down,
            },
            cout,
        ))
    }

    fn describe(&self, input: Chw, rows: &mut Vec<LayerSummary>) -> Result<Chw, ModelError> {
        let mut s = self.conv1.describe(input, rows)?;
        self.bn1.describe(v3(s), rows);
        s = self.conv2.describe(s, rows)?;
        self.bn2.describe(v3(s), rows);
        if let Some((c, b)) = &self.conv3 {
            s = c.describe(s, rows)?;
            b.describe(v3(s), rows);
        }
        if let Some((c, b)) = &self.down {
            let d = c.describe(input, rows)?;
            b.describe(v3(d), rows);
        }
        Ok(s)
    }

    fn forward<D: EngineDevice, T: Tape<f32, D>>(
        &self,
        store: &mut ParamStore<D>,
        x: T4<D, T>,
        train: bool,
    ) -> T4<D, T> {
        // The block input is used twice: the shortcut takes `x` with its tape, the
        // main path an untaped alias, so the tape is merged exactly once.
        let h = x.retaped::<T>();
        let shortcut = match &self.down {
            Some((c, b)) => {
                let d = c.forward(store, x);
                b.forward2d(store, d, train)
            }
            None => x,
        };
        let h = self.conv1.forward(store, h);
        let h = self.bn1.forward2d_relu(store, h, train);
        let h = self.conv2.forward(store, h);
        let h = match &self.conv3 {
            Some((c, b)) => {
                let h = self.bn2.forward2d_relu(store, h, train);
                b.forward2d(store, c.forward(store, h), train)
            }
            None => self.bn2.forward2d(store, h, train),
        };
        D::add_relu(h, shortcut)
    }
}

/// A built ResNet: stem (`conv1`, `bn1`, ReLU, optional max pool), then the stages'
/// blocks.
#[derive(Clone, Debug)]
pub struct ResNet {
    conv1: Conv2d,
    bn1: BatchNorm,
    pool: Option<Window>,
    /// Per stage: its name (`layer1`, …) and its blocks with their names (`layer1.0`, …).
    stages: Vec<(String, Vec<(String, Block)>)>,
    out_channels: usize,
}

impl ResNet {
    /// Registers the stem and every block, in torchvision's order, for `cin` input
    /// channels.
    pub fn new<D: Device<f32>>(
        store: &mut ParamStore<D>,
        init: &mut Init,
        spec: &ResNetSpec,
        cin: usize,
    ) -> Result<Self, ModelError> {
        if spec.stem_width == 0 || spec.stages.is_empty() {
            return Err(ModelError::Config(
                "a ResNet needs a stem and at least one stage".into(),
            ));
        }
        let (k, s, p) = match spec.stem {
            Stem::Cifar => (3, 1, 1),
            Stem::ImageNet => (7, 2, 3),
        };
        let mut conv1 = Conv2d::new(
            store,
            init,
            "conv1",
            cin,
            spec.stem_width,
            Window::new(k, s, p),
            false,
        )?;
        conv1.data_input = true;
        let bn1 = BatchNorm::new(store, "bn1", spec.stem_width)?;
        let pool = (spec.stem == Stem::ImageNet).then(|| Window::new(3, 2, 1));
        let mut stages = Vec::new();
        let mut c = spec.stem_width;
        for (si, st) in spec.stages.iter().enumerate() {
            if st.width == 0 || st.blocks == 0 || st.stride == 0 {
                return Err(ModelError::Config(format!(
                    "stage {} needs a positive width, stride and block count",
                    si + 1
                )));
            }
            let stage = format!("layer{}", si + 1);
            let mut blocks = Vec::new();
            for bi in 0..st.blocks {
                let name = format!("{stage}.{bi}");
                let stride = if bi == 0 { st.stride } else { 1 };
                let (b, cout) =
                    Block::new(store, init, &name, c, st.width, stride, spec.bottleneck)?;
                blocks.push((name, b));
                c = cout;
            }
            stages.push((stage, blocks));
        }
        Ok(ResNet {
            conv1,
            bn1,
            pool,
            stages,
            out_channels: c,
        })
    }
}

impl BackboneNet for ResNet {
    fn out_channels(&self) -> usize {
        self.out_channels
    }

    fn first_conv(&self) -> &Conv2d {
        &self.conv1
    }

    fn describe(&self, input: Chw, rows: &mut Vec<LayerSummary>) -> Result<Chw, ModelError> {
        let mut s = self.conv1.describe(input, rows)?;
        self.bn1.describe(v3(s), rows);
        relu_row("relu", s, rows);
        if let Some(p) = self.pool {
            let (ho, wo) = window_out("maxpool", p, s.1, s.2)?;
            s = (s.0, ho, wo);
            rows.push(LayerSummary {
                name: "maxpool".into(),
                kind: "max_pool",
                out_shape: v3(s),
                params: 0,
                flops: s.0 * s.1 * s.2 * p.kernel * p.kernel,
            });
        }
        for (name, b) in self.stages.iter().flat_map(|(_, blocks)| blocks) {
            s = b.describe(s, rows)?;
            relu_row(&format!("{name}.relu"), s, rows);
        }
        Ok(s)
    }

    /// Stages reported to `hook`: `stem` (after the max pool, if any), then each
    /// `layer{i}` after its last block.
    fn walk<D: EngineDevice, T: Tape<f32, D>>(
        &self,
        store: &mut ParamStore<D>,
        x: T4<D, T>,
        train: bool,
        hook: &mut StageHook<'_, D, T>,
    ) -> T4<D, T> {
        let mut x = self
            .bn1
            .forward2d_relu(store, self.conv1.forward(store, x), train);
        if let Some(p) = self.pool {
            x = D::max_pool2d(x, p);
        }
        hook.stage("stem", &x);
        for (stage, blocks) in &self.stages {
            for (_, b) in blocks {
                x = b.forward(store, x, train);
            }
            hook.stage(stage, &x);
        }
        x
    }
}
