//! Models built at run time from plain config structs: a backbone from one of the
//! families below, an optional MLP projection head, optional SwAV prototypes and an
//! optional predictor MLP (BYOL, SimSiam).
//!
//! A model is a description (sizes + parameter ids); the values live in a
//! [`ParamStore`]. Building the same config into two stores gives the same ids, which
//! is what a momentum encoder needs.
//!
//! # Backbone families
//!
//! Each family is one file implementing [`BackboneNet`]: [`resnet`] (ResNet-18/34/50
//! or any stage list) and [`small_cnn`]. A family's `walk` is the only code that runs
//! its layers: the features ([`Backbone::forward`]) and the activation maps per stage
//! ([`Backbone::stage_outputs`], the `feature_maps.png` picture) both come from it,
//! the latter through a [`StageHook`]. Families are registered in this file: a
//! [`BackboneKind`] variant (the config), a `Net` variant (the built network), and
//! one arm each in `Backbone::new` and the `with_net!` macro; the compiler points at
//! each of these once the `BackboneKind` variant exists.

use dfdx::prelude::*;

use super::error::ModelError;
use super::init::Init;
use super::layers::{Chw, Conv2d};
use super::ops::{EngineDevice, T2, T4};
use super::params::ParamStore;
use super::summary::{LayerSummary, ModelSummary};

pub mod dino_head;
pub mod head;
pub mod resnet;
pub mod small_cnn;

pub use dino_head::{DinoLastLayer, DinoLastLayerConfig};
pub use head::{Head, HeadConfig, Prototypes, PrototypesConfig};
pub use resnet::{ResNet, ResNetSpec, Stage, Stem};
pub use small_cnn::SmallCnn;

/// Which backbone to build: one variant per family.
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

/// A whole encoder configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Backbone.
    pub backbone: BackboneConfig,
    /// Optional projection head.
    pub head: Option<HeadConfig>,
    /// Optional SwAV prototypes (after the head).
    pub prototypes: Option<PrototypesConfig>,
    /// Optional predictor MLP on the head's output (BYOL, SimSiam), named
    /// `predictor.{i}`; registered last, so a store without its entries keeps every
    /// other entry's id (BYOL's target network).
    pub predictor: Option<HeadConfig>,
    /// Optional DINO weight-normalised last layer (after the head).
    pub last_layer: Option<DinoLastLayerConfig>,
    /// Input height and width the model is planned for.
    pub input_hw: (usize, usize),
}

/// One backbone stage's activation maps, named (`stem`, `layer1`, …).
pub type StageOutput<D> = (String, T4<D, NoneTape>);

/// An optional observer of a network walk: called with each stage's name and output
/// activation maps, in order. [`StageHook::none`] observes nothing (training and
/// feature extraction); [`Backbone::stage_outputs`] collects through one.
pub struct StageHook<'a, D: EngineDevice, T: Tape<f32, D>>(Option<&'a mut StageObserver<'a, D, T>>);

/// What a [`StageHook`] calls: `(stage name, activation maps)`.
pub type StageObserver<'a, D, T> = dyn FnMut(&str, &T4<D, T>) + 'a;

impl<'a, D: EngineDevice, T: Tape<f32, D>> StageHook<'a, D, T> {
    /// A hook that observes nothing.
    pub fn none() -> Self {
        StageHook(None)
    }

    /// A hook calling `f(stage name, activation maps)` after each stage.
    pub fn new(f: &'a mut StageObserver<'a, D, T>) -> Self {
        StageHook(Some(f))
    }

    /// Reports one stage's output (a family's `walk` calls this).
    pub fn stage(&mut self, name: &str, x: &T4<D, T>) {
        if let Some(f) = self.0.as_mut() {
            f(name, x);
        }
    }
}

/// A backbone family's built network (sizes + parameter ids): what [`Backbone`]
/// dispatches to. Every method sees the same layers in the same order; `walk` is the
/// only one that runs them.
pub trait BackboneNet: Clone + std::fmt::Debug {
    /// Channels of the last stage's maps (the features after global average pooling).
    fn out_channels(&self) -> usize;

    /// The first convolution (its weight is the filters picture).
    fn first_conv(&self) -> &Conv2d;

    /// Summary rows of every layer for one `input` sample, up to the last stage (the
    /// global average pool is [`Backbone`]'s); the last stage's `(c, h, w)`, or an
    /// error when a layer does not fit.
    fn describe(&self, input: Chw, rows: &mut Vec<LayerSummary>) -> Result<Chw, ModelError>;

    /// Runs the network on a batch already checked by `describe`, reporting each
    /// stage's output to `hook`; returns the last stage's maps `(n, c, h, w)`.
    fn walk<D: EngineDevice, T: Tape<f32, D>>(
        &self,
        store: &mut ParamStore<D>,
        x: T4<D, T>,
        train: bool,
        hook: &mut StageHook<'_, D, T>,
    ) -> T4<D, T>;
}

/// The registered families' built networks. An enum rather than a trait object:
/// [`BackboneNet::walk`] is generic over the device and the tape, so the trait is not
/// object-safe; `with_net!` is the one place that matches on it.
#[derive(Clone, Debug)]
enum Net {
    // Boxed: the ResNet's stem layers make it much larger than the other variants.
    ResNet(Box<ResNet>),
    SmallCnn(SmallCnn),
}

/// `$body` with `$n` bound to the family's [`BackboneNet`]: the one match over `Net`.
macro_rules! with_net {
    ($net:expr, $n:ident => $body:expr) => {
        match $net {
            Net::ResNet($n) => $body,
            Net::SmallCnn($n) => $body,
        }
    };
}

/// `(c, h, w)` as a shape vector, for summary rows.
fn v3(s: Chw) -> Vec<usize> {
    vec![s.0, s.1, s.2]
}

/// The summary row of a ReLU on maps of shape `s`.
fn relu_row(name: &str, s: Chw, rows: &mut Vec<LayerSummary>) {
    rows.push(LayerSummary {
        name: name.to_string(),
        kind: "relu",
        out_shape: v3(s),
        params: 0,
        flops: s.0 * s.1 * s.2,
    })
}

/// A feature extractor: image batch `(n, c, h, w)` → features `(n, out_dim)`, the
/// global average of the last stage's maps.
#[derive(Clone, Debug)]
pub struct Backbone {
    net: Net,
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
        let net = match &cfg.kind {
            BackboneKind::ResNet(spec) => {
                Net::ResNet(Box::new(ResNet::new(store, init, spec, cin)?))
            }
            BackboneKind::SmallCnn { channels } => {
                Net::SmallCnn(SmallCnn::new(store, init, channels, cin)?)
            }
        };
        let out_dim = with_net!(&net, n => n.out_channels());
        Ok(Backbone {
            net,
            in_channels: cin,
            out_dim,
        })
    }

    /// Summary rows for one `input` sample; errors when a layer does not fit.
    pub fn describe(&self, input: Chw, rows: &mut Vec<LayerSummary>) -> Result<usize, ModelError> {
        let s = with_net!(&self.net, n => n.describe(input, rows))?;
        rows.push(LayerSummary {
            name: "avgpool".into(),
            kind: "avg_pool",
            out_shape: vec![s.0],
            params: 0,
            flops: s.0 * s.1 * s.2,
        });
        Ok(s.0)
    }

    /// The last stage's maps of a batch, each stage's reported to `hook` on the way
    /// (the one walk of the network). Errors when the input does not fit.
    pub fn walk<D: EngineDevice, T: Tape<f32, D>>(
        &self,
        store: &mut ParamStore<D>,
        x: T4<D, T>,
        train: bool,
        hook: &mut StageHook<'_, D, T>,
    ) -> Result<T4<D, T>, ModelError> {
        let (_, c, h, w) = *x.shape();
        self.describe((c, h, w), &mut Vec::new())?;
        Ok(with_net!(&self.net, n => n.walk(store, x, train, hook)))
    }

    /// Features of a batch. Errors when the input does not fit the network.
    pub fn forward<D: EngineDevice, T: Tape<f32, D>>(
        &self,
        store: &mut ParamStore<D>,
        x: T4<D, T>,
        train: bool,
    ) -> Result<T2<D, T>, ModelError> {
        let x = self.walk(store, x, train, &mut StageHook::none())?;
        Ok(D::global_avg_pool(x))
    }

    /// Store name of the first convolution's weight `(out, in, k, k)` (`conv1.weight`
    /// for a ResNet, `features.0.weight` for the small CNN): the filters picture.
    pub fn first_conv_weight_name(&self) -> String {
        format!("{}.weight", with_net!(&self.net, n => &n.first_conv().name))
    }

    /// The activation maps after the stem and after each stage (ResNet: the stem, then
    /// `layer1`…`layer4`; small CNN: every conv-BN-ReLU layer), in evaluation mode and
    /// without a tape, each named as torchvision names the module that produced it.
    /// For pictures of what the network sees: the same walk as [`forward`](Self::forward),
    /// observed through a [`StageHook`].
    pub fn stage_outputs<D: EngineDevice>(
        &self,
        store: &mut ParamStore<D>,
        x: T4<D, NoneTape>,
    ) -> Result<Vec<StageOutput<D>>, ModelError> {
        let mut out = Vec::new();
        let mut keep = |name: &str, x: &T4<D, NoneTape>| out.push((name.to_string(), x.clone()));
        self.walk(store, x, false, &mut StageHook::new(&mut keep))?;
        Ok(out)
    }
}

/// Backbone + optional head + optional SwAV prototypes or DINO last layer + optional
/// predictor, planned for
/// one input size.
#[derive(Clone, Debug)]
pub struct Model {
    /// Feature extractor.
    pub backbone: Backbone,
    /// Projection head.
    pub head: Option<Head>,
    /// SwAV prototypes.
    pub prototypes: Option<Prototypes>,
    /// BYOL's and SimSiam's predictor (applied by [`predict`](Self::predict), never by
    /// [`project`](Self::project)).
    pub predictor: Option<Head>,
    /// DINO's weight-normalised last layer.
    pub last_layer: Option<DinoLastLayer>,
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
        let last_layer = match &cfg.last_layer {
            Some(l) => Some(DinoLastLayer::new(store, &mut init, l, dim)?),
            None => None,
        };
        let predictor = match &cfg.predictor {
            Some(p) => {
                let h = Head::named(store, &mut init, p, dim, "predictor")?;
                ModelError::check_dim("predictor output", dim, h.out_dim)?;
                Some(h)
            }
            None => None,
        };
        let model = Model {
            backbone,
            head,
            prototypes,
            predictor,
            last_layer,
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
        if let Some(l) = &self.last_layer {
            l.describe(&mut rows);
        }
        if let Some(p) = &self.predictor {
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

    /// The predictor's output `(n, out_dim)` for projections `z` `(n, dim)` (BYOL,
    /// SimSiam); an error for a model without a predictor.
    pub fn predict<D: EngineDevice, T: Tape<f32, D>>(
        &self,
        store: &mut ParamStore<D>,
        z: T2<D, T>,
        train: bool,
    ) -> Result<T2<D, T>, ModelError> {
        match &self.predictor {
            Some(p) => p.forward(store, z, train),
            None => Err(ModelError::Config("the model has no predictor".into())),
        }
    }

    /// Names of the backbone's entries (torchvision names; head, prototypes, predictor
    /// and DINO's last layer excluded).
    pub fn backbone_entry_names<D: Device<f32>>(&self, store: &ParamStore<D>) -> Vec<String> {
        store
            .entries()
            .iter()
            .filter(|e| !NON_BACKBONE.iter().any(|p| e.name.starts_with(p)))
            .map(|e| e.name.clone())
            .collect()
    }
}

/// Name prefixes of the entries that are not the backbone's.
const NON_BACKBONE: [&str; 4] = [
    "projector.",
    "prototypes.",
    "predictor.",
    dino_head::LAST_LAYER_PREFIX,
];

impl Model {
    /// Whether `name` is an entry of the predictor (BYOL's target network has none).
    pub fn is_predictor_entry(name: &str) -> bool {
        name.starts_with("predictor.")
    }
}
