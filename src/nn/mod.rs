//! The engine: runtime-shaped layers over dfdx, the project's own differentiable ops,
//! and the named parameter store.
//!
//! # Modules
//!
//! - [`params`]: `ParamStore`, every parameter and buffer of a model by torchvision
//!   name, stored flat with a logical shape, a role, and trainable/decay flags.
//! - [`ops`]: the project's own differentiable ops (conv2d, max/avg pooling, batch norm
//!   1-D/2-D, ReLU, linear, L2 normalisation). Each has a composed form built from
//!   dfdx ops ([`ops::composed`], any device, the CUDA path and the test reference)
//!   and a fast multithreaded CPU kernel ([`ops::cpu`], rayon + gemm, registered on
//!   the tape). [`EngineDevice`] dispatches: fast kernels on `Cpu`, composed on `Cuda`.
//!   [`ops::timing`] is an opt-in per-op time registry the kernels record into.
//!   The trait also carries the optimiser's per-entry update and the all-reduce's
//!   gradient transfer ([`ops::update`]).
//! - [`device`]: `DeviceChoice`, the opened device, and `OnDevice`, a job generic over
//!   `EngineDevice`: `DeviceChoice::dispatch` is the one place a device is matched.
//! - [`init`]: seeded PyTorch-default initialisation (Kaiming normal fan-out for convs,
//!   as torchvision's ResNet; `nn.Linear`'s default uniform for linear layers;
//!   ones/zeros for norms).
//! - [`layers`]: `Conv2d`, `BatchNorm`, `Linear`: sizes as `usize`, entries in a store.
//! - [`model`]: config structs (`BackboneConfig`, `HeadConfig`, `PrototypesConfig`,
//!   `ModelConfig`) and the runtime-built `Backbone`, `Head` (MLP, optional BN),
//!   `Prototypes` (SwAV) and `Model`. One file per backbone family behind the
//!   `BackboneNet` trait (`model/resnet.rs`: ResNet-18/34/50 or any stage list;
//!   `model/small_cnn.rs`); features and per-stage maps come from one walk.
//! - [`summary`]: per-layer output shape, parameters and FLOPs from shapes alone
//!   (`recipe plan`).
//!
//! # Invariants
//!
//! - A model is a description (sizes + `ParamId`s); values live in a `ParamStore`.
//!   Building the same config into two stores yields the same ids in the same order.
//! - Entry names and shapes of a ResNet backbone are exactly torchvision's (minus
//!   `fc`); `num_batches_tracked` is a 0-d `Buffer` entry (stored as f32).
//! - Layers read parameters by reshaping the flat tensor (contiguous, so the tensor
//!   id is kept): after `backward()`, `grads.get(&entry.tensor)` is the gradient.
//! - Shapes are checked before any op runs (`Model::new` plans the whole network for
//!   its input size, forward re-checks the actual input); ops themselves assume
//!   valid shapes. Every shape problem is a [`ModelError`], never a panic.
//! - Training-mode batch norm writes the new running mean/var (momentum 0.1,
//!   unbiased variance) and `num_batches_tracked + 1` back into the store; eval mode
//!   reads them and writes nothing.
//! - Fast kernels move their output's gradient out of `Gradients` during backward:
//!   only leaves' (parameters', inputs') gradients are readable afterwards.
//! - Same seed and config ⇒ bit-identical initial parameters.

pub mod device;
pub mod error;
pub mod init;
pub mod layers;
pub mod model;
pub mod ops;
pub mod params;
pub mod summary;

pub use error::ModelError;
pub use model::{
    Backbone, BackboneConfig, BackboneKind, BackboneNet, Head, HeadConfig, Model, ModelConfig,
    Prototypes, PrototypesConfig, ResNetSpec, Stage, StageHook, Stem,
};
pub use ops::EngineDevice;
pub use summary::{LayerSummary, ModelSummary};
