//! Models built at run time from plain config structs: ResNet-18/34/50 (or any
//! stage list), a small CNN, an MLP projection head and SwAV prototypes.
//!
//! A model is a description (sizes + parameter ids); the values live in a
//! [`ParamStore`]. Building the same config into two stores gives the same ids, which
//! is what a momentum encoder needs.

use dfdx::prelude::*;

use super::error::ModelError;
use super::init::Init;
use super::layers::{BatchNorm, Chw, Conv2d, Linear, window_out};
use super::ops::{EngineDevice, T2, T4, Window};
use super::params::{ParamId, ParamStore};
use super::summary::{LayerSummary, ModelSummary};

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

/// Which backbone to build.
#[derive(Clone, Debug, PartialEq)]
pub enum BackboneKind {
    /// A ResNet (use [`ResNetSpec::standard`] for 18/34/50).
    ResNet(ResNetSpec),
    /// Plain conv3×3-BN-ReLU stages (stride 1 for the first, 2 after), then global
    /// average pooling.
    SmallCnn {
        /// Channels of each stage.
        channels: Vec<usize>,
    },
}

/// Backbone configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct BackboneConfig {
    /// Architecture.
    pub kind: BackboneKind,
    /// Input channels (1 or 3).
    pub in_channels: usize,
}

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

/// A whole encoder configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Backbone.
    pub backbone: BackboneConfig,
    /// Optional projection head.
    pub head: Option<HeadConfig>,
    /// Optional SwAV prototypes (after the head).
    pub prototypes: Option<PrototypesConfig>,
    /// Input height and width the model is planned for.
    pub input_hw: (usize, usize),
}

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
        let v = |s: Chw| vec![s.0, s.1, s.2];
        let mut s = self.conv1.describe(input, rows)?;
        self.bn1.describe(v(s), rows);
        s = self.conv2.describe(s, rows)?;
        self.bn2.describe(v(s), rows);
        if let Some((c, b)) = &self.conv3 {
            s = c.describe(s, rows)?;
            b.describe(v(s), rows);
        }
        if let Some((c, b)) = &self.down {
            let d = c.describe(input, rows)?;
            b.describe(v(d), rows);
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

#[derive(Clone, Debug)]
enum BackboneNet {
    ResNet {
        // Boxed: the stem conv is most of the variant's size.
        conv1: Box<Conv2d>,
        bn1: BatchNorm,
        pool: Option<Window>,
        blocks: Vec<(String, Block)>,
    },
    Cnn(Vec<(Conv2d, BatchNorm)>),
}

/// One backbone stage's activation maps, named (`stem`, `layer1`, …).
pub type StageOutput<D> = (String, T4<D, NoneTape>);

/// A feature extractor: image batch `(n, c, h, w)` → features `(n, out_dim)`.
#[derive(Clone, Debug)]
pub struct Backbone {
    net: BackboneNet,
    /// Input channels.
    pub in_channels: usize,
    /// Output features.
    pub out_dim: usize,
}

impl Backbone {
    /// Registers the backbone's parameters (torchvision names) in `store`.
    pub fn new<D: Device<f32>>(
        store: &mut ParamStore<D>,
        init: &mut Init,
        cfg: &BackboneConfig,
    ) -> Result<Self, ModelError> {
        let cin = cfg.in_channels;
        if cin == 0 {
            return Err(ModelError::Config(
                "input channels must be at least 1".into(),
            ));
        }
        match &cfg.kind {
            BackboneKind::ResNet(spec) => {
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
                let mut blocks = Vec::new();
                let mut c = spec.stem_width;
                for (si, st) in spec.stages.iter().enumerate() {
                    if st.width == 0 || st.blocks == 0 || st.stride == 0 {
                        return Err(ModelError::Config(format!(
                            "stage {} needs a positive width, stride and block count",
                            si + 1
                        )));
                    }
                    for bi in 0..st.blocks {
                        let name = format!("layer{}.{bi}", si + 1);
                        let stride = if bi == 0 { st.stride } else { 1 };
                        let (b, cout) =
                            Block::new(store, init, &name, c, st.width, stride, spec.bottleneck)?;
                        blocks.push((name, b));
                        c = cout;
                    }
                }
                Ok(Backbone {
                    net: BackboneNet::ResNet {
                        conv1: Box::new(conv1),
                        bn1,
                        pool,
                        blocks,
                    },
                    in_channels: cin,
                    out_dim: c,
                })
            }
            BackboneKind::SmallCnn { channels } => {
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
                Ok(Backbone {
                    net: BackboneNet::Cnn(layers),
                    in_channels: cin,
                    out_dim: c,
                })
            }
        }
    }

    /// Summary rows for one `input` sample; errors when a layer does not fit.
    pub fn describe(&self, input: Chw, rows: &mut Vec<LayerSummary>) -> Result<usize, ModelError> {
        let v = |s: Chw| vec![s.0, s.1, s.2];
        let relu = |name: &str, s: Chw, rows: &mut Vec<LayerSummary>| {
            rows.push(LayerSummary {
                name: name.to_string(),
                kind: "relu",
                out_shape: v(s),
                params: 0,
                flops: s.0 * s.1 * s.2,
            })
        };
        let mut s = input;
        match &self.net {
            BackboneNet::ResNet {
                conv1,
                bn1,
                pool,
                blocks,
            } => {
                s = conv1.describe(s, rows)?;
                bn1.describe(v(s), rows);
                relu("relu", s, rows);
                if let Some(p) = pool {
                    let (ho, wo) = window_out("maxpool", *p, s.1, s.2)?;
                    s = (s.0, ho, wo);
                    rows.push(LayerSummary {
                        name: "maxpool".into(),
                        kind: "max_pool",
                        out_shape: v(s),
                        params: 0,
                        flops: s.0 * s.1 * s.2 * p.kernel * p.kernel,
                    });
                }
                for (name, b) in blocks {
                    s = b.describe(s, rows)?;
                    relu(&format!("{name}.relu"), s, rows);
                }
            }
            BackboneNet::Cnn(layers) => {
                for (i, (c, b)) in layers.iter().enumerate() {
                    s = c.describe(s, rows)?;
                    b.describe(v(s), rows);
                    relu(&format!("features.{}", 3 * i + 2), s, rows);
                }
            }
        }
        rows.push(LayerSummary {
            name: "avgpool".into(),
            kind: "avg_pool",
            out_shape: vec![s.0],
            params: 0,
            flops: s.0 * s.1 * s.2,
        });
        Ok(s.0)
    }

    /// Features of a batch. Errors when the input does not fit the network.
    pub fn forward<D: EngineDevice, T: Tape<f32, D>>(
        &self,
        store: &mut ParamStore<D>,
        x: T4<D, T>,
        train: bool,
    ) -> Result<T2<D, T>, ModelError> {
        let (_, c, h, w) = *x.shape();
        self.describe((c, h, w), &mut Vec::new())?;
        let mut x = x;
        match &self.net {
            BackboneNet::ResNet {
                conv1,
                bn1,
                pool,
                blocks,
            } => {
                x = bn1.forward2d_relu(store, conv1.forward(store, x), train);
                if let Some(p) = pool {
                    x = D::max_pool2d(x, *p);
                }
                for (_, b) in blocks {
                    x = b.forward(store, x, train);
                }
            }
            BackboneNet::Cnn(layers) => {
                for (c, b) in layers {
                    x = b.forward2d_relu(store, c.forward(store, x), train);
                }
            }
        }
        Ok(D::global_avg_pool(x))
    }

    /// Store name of the first convolution's weight `(out, in, k, k)` (`conv1.weight`
    /// for a ResNet, `features.0.weight` for the small CNN): the filters picture.
    pub fn first_conv_weight_name(&self) -> String {
        match &self.net {
            BackboneNet::ResNet { conv1, .. } => format!("{}.weight", conv1.name),
            BackboneNet::Cnn(layers) => format!("{}.weight", layers[0].0.name),
        }
    }

    /// The activation maps after the stem and after each stage (ResNet: the stem, then
    /// `layer1`…`layer4`; small CNN: every conv-BN-ReLU layer), in evaluation mode and
    /// without a tape, each named as torchvision names the module that produced it.
    /// For pictures of what the network sees.
    pub fn stage_outputs<D: EngineDevice>(
        &self,
        store: &mut ParamStore<D>,
        x: T4<D, NoneTape>,
    ) -> Result<Vec<StageOutput<D>>, ModelError> {
        let (_, c, h, w) = *x.shape();
        self.describe((c, h, w), &mut Vec::new())?;
        let mut out = Vec::new();
        let mut x = x;
        match &self.net {
            BackboneNet::ResNet {
                conv1,
                bn1,
                pool,
                blocks,
            } => {
                x = bn1.forward2d_relu(store, conv1.forward(store, x), false);
                if let Some(p) = pool {
                    x = D::max_pool2d(x, *p);
                }
                out.push(("stem".to_string(), x.clone()));
                for (i, (name, b)) in blocks.iter().enumerate() {
                    x = b.forward(store, x, false);
                    let stage = name.split('.').next().unwrap_or(name).to_string();
                    let last = blocks
                        .get(i + 1)
                        .is_none_or(|(n, _)| n.split('.').next() != Some(stage.as_str()));
                    if last {
                        out.push((stage, x.clone()));
                    }
                }
            }
            BackboneNet::Cnn(layers) => {
                for (i, (c, b)) in layers.iter().enumerate() {
                    x = b.forward2d_relu(store, c.forward(store, x), false);
                    out.push((format!("layer{}", i + 1), x.clone()));
                }
            }
        }
        Ok(out)
    }
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
            let lin = Linear::new(store, init, &format!("projector.{idx}"), d, out, true)?;
            idx += 1;
            let bn = if (!last && cfg.batch_norm) || (last && cfg.last_bn) {
                let b = BatchNorm::new(store, &format!("projector.{idx}"), out)?;
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

/// Backbone + optional head + optional prototypes, planned for one input size.
#[derive(Clone, Debug)]
pub struct Model {
    /// Feature extractor.
    pub backbone: Backbone,
    /// Projection head.
    pub head: Option<Head>,
    /// SwAV prototypes.
    pub prototypes: Option<Prototypes>,
    /// `(c, h, w)` the model was checked for.
    pub input: Chw,
}

impl Model {
    /// Builds the model into `store`, initialised from `seed`, and checks that the
    /// planned input fits every layer.
    pub fn new<D: Device<f32>>(
        store: &mut ParamStore<D>,
        cfg: &ModelConfig,
        seed: u64,
    ) -> Result<Self, ModelError> {
        let mut init = Init::new(seed);
        let backbone = Backbone::new(store, &mut init, &cfg.backbone)?;
        let mut dim = backbone.out_dim;
        let head = match &cfg.head {
            Some(h) => {
                let h = Head::new(store, &mut init, h, dim)?;
                dim = h.out_dim;
                Some(h)
            }
            None => None,
        };
        let prototypes = match &cfg.prototypes {
            Some(p) => Some(Prototypes::new(store, &mut init, p, dim)?),
            None => None,
        };
        let model = Model {
            backbone,
            head,
            prototypes,
            input: (cfg.backbone.in_channels, cfg.input_hw.0, cfg.input_hw.1),
        };
        model.summary(1)?;
        Ok(model)
    }

    /// Per-layer shapes, parameters and FLOPs at `batch` images per step.
    pub fn summary(&self, batch: usize) -> Result<ModelSummary, ModelError> {
        let mut rows = Vec::new();
        self.backbone.describe(self.input, &mut rows)?;
        if let Some(h) = &self.head {
            h.describe(&mut rows);
        }
        if let Some(p) = &self.prototypes {
            p.describe(&mut rows);
        }
        let (c, h, w) = self.input;
        Ok(ModelSummary::new(rows, batch, c * h * w))
    }

    fn check_input<D: Device<f32>, T>(&self, x: &T4<D, T>) -> Result<(), ModelError> {
        let (_, c, h, w) = *x.shape();
        if (c, h, w) != self.input {
            return Err(ModelError::InputShape {
                expected: self.input,
                found: (c, h, w),
            });
        }
        Ok(())
    }

    /// The same model (same parameter ids) planned for another input size: SwAV's
    /// smaller crops and evaluation at the full image size run through one store.
    pub fn with_input(&self, hw: (usize, usize)) -> Result<Model, ModelError> {
        let mut m = self.clone();
        m.input = (self.input.0, hw.0, hw.1);
        m.summary(1)?;
        Ok(m)
    }

    /// Backbone features `(n, out_dim)` (for kNN / linear probes).
    pub fn features<D: EngineDevice, T: Tape<f32, D>>(
        &self,
        store: &mut ParamStore<D>,
        x: T4<D, T>,
        train: bool,
    ) -> Result<T2<D, T>, ModelError> {
        self.check_input(&x)?;
        self.backbone.forward(store, x, train)
    }

    /// Head output (or backbone features when there is no head).
    pub fn project<D: EngineDevice, T: Tape<f32, D>>(
        &self,
        store: &mut ParamStore<D>,
        x: T4<D, T>,
        train: bool,
    ) -> Result<T2<D, T>, ModelError> {
        let f = self.features(store, x, train)?;
        match &self.head {
            Some(h) => h.forward(store, f, train),
            None => Ok(f),
        }
    }

    /// Names of the backbone's entries (torchvision names; head and prototypes excluded).
    pub fn backbone_entry_names<D: Device<f32>>(&self, store: &ParamStore<D>) -> Vec<String> {
        store
            .entries()
            .iter()
            .filter(|e| !e.name.starts_with("projector.") && !e.name.starts_with("prototypes."))
            .map(|e| e.name.clone())
            .collect()
    }
}
