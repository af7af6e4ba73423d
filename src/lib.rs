//! `recipe`: declarative contrastive representation learning on images.
//!
//! A YAML *recipe* flows one way through the crate:
//!
//! ```text
//! YAML text --spec::load--> typed Recipe --spec::check--> validated Recipe
//!   --build--> { data loader, augment chain, model (nn), objective, optimiser }
//!   --train--> checkpoints + metrics --eval--> downstream results --report--> run dir
//! ```
//!
//! The language layer ([`spec`], [`diag`]) knows nothing about tensors; the engine
//! ([`nn`], [`optim`], [`objective`]) knows nothing about YAML; the binary is a thin
//! shell over this library. See `ARCHITECTURE.md` for the codemap.

pub mod alloc;
pub mod augment;
pub mod bench;
pub mod build;
pub mod checkpoint;
pub mod data;
pub mod device_check;
pub mod diag;
pub mod dist;
/// Downstream evaluation of an encoder: features, kNN, linear probe, fine-tuning, PCA.
pub mod eval;
pub mod experiment;
pub mod init;
pub mod nn;
pub mod objective;
pub mod optim;
pub mod plan;
/// Run outputs for people: metrics files, charts, image grids and `report.md`.
pub mod report;
pub mod runs;
pub mod runtime;
pub mod spec;
pub mod sweep;
pub mod train;
