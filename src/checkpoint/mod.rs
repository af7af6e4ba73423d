//! Training checkpoints and weight export, in the safetensors format.
//!
//! A checkpoint is one safetensors file holding:
//! - every entry of the [`ParamStore`] (parameters and buffers) under its own
//!   torchvision-style name (`layer1.0.conv1.weight`, `bn1.running_mean`), `F32`, with its
//!   logical shape;
//! - the optimiser state ([`OptimizerState`]) under `optimizer.<param>.<slot>`;
//! - for training checkpoints ([`save_training`]), MoCo's key encoder under
//!   `key_encoder.<name>` and the objective's state (queue, bank) under
//!   `objective.<name>`; the `sections` metadata key lists the sections present;
//! - in the safetensors metadata (string → string): the format tag and version, the
//!   schedule position (`epoch`, `step`), the caller's RNG state (opaque `u64`s), the hash
//!   of the resolved recipe, the optimiser kind and step count, and a SHA-256 digest over
//!   all of the above and every tensor's name, dtype, shape and bytes.
//!
//! Invariants:
//! - Writing is atomic: the bytes go to a temporary file in the destination directory,
//!   which is fsynced, renamed over the destination, and the directory is fsynced. A
//!   crash leaves either the old file or the new one, and a failed write removes its
//!   temporary file.
//! - Loading never half-loads: the file is parsed, its digest checked, and every name,
//!   shape and dtype compared with the store and the optimiser; only when nothing is
//!   wrong are the store and the optimiser changed. All mismatches are reported in one
//!   [`CheckpointError::Mismatch`], by name.
//! - safetensors itself has no checksum; the digest is what turns a flipped byte anywhere
//!   in the file (data, names, metadata) into a clear [`CheckpointError::Corrupt`].
//!
//! [`export_weights`] writes a plain safetensors file of selected entries (e.g. the
//! backbone) for PyTorch: `safetensors.torch.load_file` then `load_state_dict`.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use dfdx::prelude::*;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use sha2::{Digest, Sha256};

use crate::nn::params::{ParamStore, Role};
use crate::optim::{Optimizer, OptimizerState, StateTensor, host_copy};

mod file;

pub use file::write_atomic;
use file::*;

/// Value of the `format` metadata key in every checkpoint.
pub const FORMAT: &str = "recipe-checkpoint";
/// Version of the checkpoint layout; bumped when the layout changes incompatibly.
pub const FORMAT_VERSION: &str = "1";
/// Prefix of optimiser-state tensor names.
pub const OPTIMIZER_PREFIX: &str = "optimizer.";
/// Prefix of the key encoder's entries (MoCo), section `key_encoder`.
pub const KEY_ENCODER_PREFIX: &str = "key_encoder.";
/// Prefix of the objective's state tensors (queues, banks), section `objective`.
pub const OBJECTIVE_PREFIX: &str = "objective.";
const RESERVED: [&str; 3] = [OPTIMIZER_PREFIX, KEY_ENCODER_PREFIX, OBJECTIVE_PREFIX];

const KEY_FORMAT: &str = "format";
const KEY_VERSION: &str = "format_version";
const KEY_EPOCH: &str = "epoch";
const KEY_STEP: &str = "step";
const KEY_RNG: &str = "rng_state";
const KEY_RECIPE: &str = "recipe_hash";
const KEY_OPTIM: &str = "optimizer";
const KEY_OPTIM_STEP: &str = "optimizer_step";
const KEY_DIGEST: &str = "sha256";
const KEY_SECTIONS: &str = "sections";
/// Metadata keys with this prefix are bookkeeping about the run (time spent, images
/// seen), not state: the digest leaves them out, so two runs that reach the same state
/// at different speeds write checkpoints with the same digest.
const INFO_PREFIX: &str = "info.";
const KEY_TRAIN_MILLIS: &str = "info.train_millis";
const KEY_IMAGES: &str = "info.images";

/// Where training stands and what produced it: everything in a checkpoint besides the
/// tensors.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CheckpointMeta {
    /// Epochs completed.
    pub epoch: u64,
    /// Optimiser steps completed (the schedule's position).
    pub step: u64,
    /// The caller's RNG state, stored and returned verbatim.
    pub rng_state: Vec<u64>,
    /// Hash of the resolved recipe that produced the run.
    pub recipe_hash: String,
    /// Training wall time up to this checkpoint over every invocation of the run,
    /// milliseconds (outside the digest; 0 in checkpoints that predate it).
    pub train_millis: u64,
    /// Training images (each view one image) up to this checkpoint over every
    /// invocation (outside the digest; 0 in checkpoints that predate it).
    pub images: u64,
}

/// One way a checkpoint disagrees with the model it is loaded into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mismatch {
    /// The model has this tensor; the file does not.
    Missing {
        /// Tensor name.
        name: String,
    },
    /// The file has this tensor; the model does not.
    Unexpected {
        /// Tensor name.
        name: String,
    },
    /// Same name, different shape.
    Shape {
        /// Tensor name.
        name: String,
        /// Shape in the model.
        expected: Vec<usize>,
        /// Shape in the file.
        found: Vec<usize>,
    },
    /// Same name, different element type.
    Dtype {
        /// Tensor name.
        name: String,
        /// Element type the model holds.
        expected: String,
        /// Element type in the file.
        found: String,
    },
    /// The file's optimiser state is for a different optimiser.
    Optimizer {
        /// The optimiser being restored (`none` when the caller passed none).
        expected: String,
        /// The optimiser recorded in the file (`none` when it has no state).
        found: String,
    },
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Missing { name } => write!(f, "missing tensor `{name}`"),
            Mismatch::Unexpected { name } => write!(f, "unexpected tensor `{name}`"),
            Mismatch::Shape {
                name,
                expected,
                found,
            } => write!(
                f,
                "tensor `{name}` has shape {found:?}, the model expects {expected:?}"
            ),
            Mismatch::Dtype {
                name,
                expected,
                found,
            } => write!(
                f,
                "tensor `{name}` has dtype {found}, the model expects {expected}"
            ),
            Mismatch::Optimizer { expected, found } => write!(
                f,
                "optimiser state is for `{found}`, the run uses `{expected}`"
            ),
        }
    }
}

/// Errors from writing, reading or exporting checkpoints.
#[derive(Debug)]
pub enum CheckpointError {
    /// Reading, writing or renaming failed.
    Io {
        /// What was being done (`write`, `read`, `rename`, ...).
        action: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The file is not a readable checkpoint: truncated, corrupted, not safetensors, or
    /// not written by this program.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The file is intact but does not fit the model (every mismatch listed).
    Mismatch {
        /// The file.
        path: PathBuf,
        /// Each disagreement, by name.
        problems: Vec<Mismatch>,
    },
    /// The store or request cannot be written as asked.
    Invalid(String),
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckpointError::Io {
                action,
                path,
                source,
            } => write!(f, "cannot {action} `{}`: {source}", path.display()),
            CheckpointError::Corrupt { path, reason } => write!(
                f,
                "`{}` is not a usable checkpoint: {reason}",
                path.display()
            ),
            CheckpointError::Mismatch { path, problems } => {
                write!(
                    f,
                    "checkpoint `{}` does not fit the model ({} problem{}):",
                    path.display(),
                    problems.len(),
                    if problems.len() == 1 { "" } else { "s" }
                )?;
                for p in problems {
                    write!(f, "\n  - {p}")?;
                }
                Ok(())
            }
            CheckpointError::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CheckpointError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CheckpointError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CheckpointError {
    let path = path.to_path_buf();
    move |source| CheckpointError::Io {
        action,
        path,
        source,
    }
}

/// One tensor to write: name, dtype, shape, little-endian bytes.
struct Blob {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// Saves `store`, the optimiser state (if any) and `meta` to `path`, atomically.
pub fn save<D: Device<f32>>(
    path: &Path,
    store: &ParamStore<D>,
    optimizer: Option<&OptimizerState>,
    meta: &CheckpointMeta,
) -> Result<(), CheckpointError> {
    save_training(
        path,
        &Sections {
            model: store,
            key_encoder: None,
            optimizer,
            objective: &[],
        },
        meta,
    )
}

/// Everything a training checkpoint holds besides its metadata, by section.
pub struct Sections<'a, D: Device<f32>> {
    /// The model's parameters and buffers (section `model`, names unprefixed).
    pub model: &'a ParamStore<D>,
    /// MoCo's key encoder (section `key_encoder`, names prefixed `key_encoder.`).
    pub key_encoder: Option<&'a ParamStore<D>>,
    /// The optimiser state (section `optimizer`).
    pub optimizer: Option<&'a OptimizerState>,
    /// The objective's state tensors (section `objective`, prefixed `objective.`).
    pub objective: &'a [StateTensor],
}

fn entry_blobs<D: Device<f32>>(
    blobs: &mut BTreeMap<String, Blob>,
    store: &ParamStore<D>,
    prefix: &str,
) -> Result<(), CheckpointError> {
    for e in store.entries() {
        if let Some(r) = RESERVED.iter().find(|r| e.name.starts_with(*r)) {
            return Err(CheckpointError::Invalid(format!(
                "parameter `{}` collides with the reserved `{r}` prefix",
                e.name
            )));
        }
        blobs.insert(
            format!("{prefix}{}", e.name),
            Blob {
                dtype: Dtype::F32,
                shape: e.shape.clone(),
                bytes: f32_bytes(&host_copy(&e.tensor)),
            },
        );
    }
    Ok(())
}

fn state_blobs(
    blobs: &mut BTreeMap<String, Blob>,
    tensors: &[StateTensor],
    prefix: &str,
) -> Result<(), CheckpointError> {
    for t in tensors {
        if t.data.len() != t.shape.iter().product::<usize>() {
            return Err(CheckpointError::Invalid(format!(
                "state tensor `{}` has {} values for shape {:?}",
                t.name,
                t.data.len(),
                t.shape
            )));
        }
        blobs.insert(
            format!("{prefix}{}", t.name),
            Blob {
                dtype: Dtype::F32,
                shape: t.shape.clone(),
                bytes: f32_bytes(&t.data),
            },
        );
    }
    Ok(())
}

/// Saves a training state to `path`, atomically: the model, optionally MoCo's key
/// encoder, the optimiser state and the objective's state, each in its own named
/// section (listed in the `sections` metadata key), and `meta`.
pub fn save_training<D: Device<f32>>(
    path: &Path,
    sections: &Sections<'_, D>,
    meta: &CheckpointMeta,
) -> Result<(), CheckpointError> {
    let mut blobs = BTreeMap::new();
    entry_blobs(&mut blobs, sections.model, "")?;
    let mut names = vec!["model"];
    if let Some(k) = sections.key_encoder {
        entry_blobs(&mut blobs, k, KEY_ENCODER_PREFIX)?;
        names.push("key_encoder");
    }
    if sections.optimizer.is_some() {
        names.push("optimizer");
    }
    if !sections.objective.is_empty() {
        state_blobs(&mut blobs, sections.objective, OBJECTIVE_PREFIX)?;
        names.push("objective");
    }
    let optimizer = sections.optimizer;
    {}
    let mut m = BTreeMap::new();
    m.insert(KEY_SECTIONS.to_string(), names.join(","));
    m.insert(KEY_FORMAT.to_string(), FORMAT.to_string());
    m.insert(KEY_VERSION.to_string(), FORMAT_VERSION.to_string());
    m.insert(KEY_EPOCH.to_string(), meta.epoch.to_string());
    m.insert(KEY_STEP.to_string(), meta.step.to_string());
    m.insert(
        KEY_RNG.to_string(),
        serde_json::to_string(&meta.rng_state).expect("a list of integers serialises"),
    );
    m.insert(KEY_RECIPE.to_string(), meta.recipe_hash.clone());
    m.insert(KEY_TRAIN_MILLIS.to_string(), meta.train_millis.to_string());
    m.insert(KEY_IMAGES.to_string(), meta.images.to_string());
    if let Some(o) = optimizer {
        m.insert(KEY_OPTIM.to_string(), o.kind.clone());
        m.insert(KEY_OPTIM_STEP.to_string(), o.step.to_string());
        state_blobs(&mut blobs, &o.tensors, OPTIMIZER_PREFIX)?;
    }
    write_file(path, &blobs, m)
}

fn parse_meta(
    path: &Path,
    meta: &HashMap<String, String>,
) -> Result<CheckpointMeta, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let get = |k: &str| {
        meta.get(k)
            .ok_or_else(|| corrupt(format!("metadata key `{k}` is missing")))
    };
    let num = |k: &str| -> Result<u64, CheckpointError> {
        get(k)?
            .parse()
            .map_err(|e| corrupt(format!("metadata `{k}` is not an integer ({e})")))
    };
    Ok(CheckpointMeta {
        epoch: num(KEY_EPOCH)?,
        step: num(KEY_STEP)?,
        rng_state: serde_json::from_str(get(KEY_RNG)?).map_err(|e| {
            corrupt(format!(
                "metadata `{KEY_RNG}` is not a list of integers ({e})"
            ))
        })?,
        recipe_hash: get(KEY_RECIPE)?.clone(),
        // Bookkeeping only: absent (older checkpoints) or unreadable counts as 0.
        train_millis: meta
            .get(KEY_TRAIN_MILLIS)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        images: meta
            .get(KEY_IMAGES)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    })
}

/// Compares one expected tensor with what the file holds.
fn check_tensor(
    problems: &mut Vec<Mismatch>,
    name: &str,
    shape: &[usize],
    found: Option<&(Dtype, Vec<usize>, Vec<u8>)>,
) {
    match found {
        None => problems.push(Mismatch::Missing {
            name: name.to_string(),
        }),
        Some((dtype, fshape, _)) => {
            if *dtype != Dtype::F32 {
                problems.push(Mismatch::Dtype {
                    name: name.to_string(),
                    expected: Dtype::F32.to_string(),
                    found: dtype.to_string(),
                });
            }
            if fshape != shape {
                problems.push(Mismatch::Shape {
                    name: name.to_string(),
                    expected: shape.to_vec(),
                    found: fshape.clone(),
                });
            }
        }
    }
}

/// Reads only the metadata of a checkpoint (verifying its digest), e.g. to compare the
/// recipe hash before building the model.
pub fn read_meta(path: &Path) -> Result<CheckpointMeta, CheckpointError> {
    let parsed = read_checked(path)?;
    parse_meta(path, &parsed.meta)
}

/// Loads the checkpoint at `path` into `store` and, if given, `optimizer`, and returns
/// its metadata.
///
/// Every entry of the store must be in the file with its shape and dtype `F32`; with an
/// optimiser, its state must be there for the same optimiser kind; nothing else may be
/// in the file. Without an optimiser, optimiser state in the file is ignored (loading
/// weights to evaluate them). On any error neither the store nor the optimiser changes.
pub fn load<D: Device<f32>>(
    path: &Path,
    store: &mut ParamStore<D>,
    optimizer: Option<&mut Optimizer<D>>,
) -> Result<CheckpointMeta, CheckpointError> {
    let (meta, _) = load_training(path, store, optimizer, None, None)?;
    Ok(meta)
}

/// Loads a training checkpoint written by [`save_training`]: the model into `store`,
/// the optimiser state into `optimizer` (if given), the key encoder into `key_encoder`
/// (if given), and returns the metadata and the objective's state tensors, checked
/// against `objective` (their expected names and shapes; `None` ignores the section).
///
/// Every section asked for must be in the file with every name, shape and dtype, and
/// nothing else may be (sections not asked for are ignored: loading weights only to
/// evaluate them). All mismatches are reported together; on any error nothing changes.
pub fn load_training<D: Device<f32>>(
    path: &Path,
    store: &mut ParamStore<D>,
    optimizer: Option<&mut Optimizer<D>>,
    key_encoder: Option<&mut ParamStore<D>>,
    objective: Option<&[(String, Vec<usize>)]>,
) -> Result<(CheckpointMeta, Vec<StateTensor>), CheckpointError> {
    let parsed = read_checked(path)?;
    let meta = parse_meta(path, &parsed.meta)?;
    let mut problems = Vec::new();
    for e in store.entries() {
        check_tensor(
            &mut problems,
            &e.name,
            &e.shape,
            parsed.tensors.get(&e.name),
        );
    }
    if let Some(k) = key_encoder.as_deref() {
        for e in k.entries() {
            let full = format!("{KEY_ENCODER_PREFIX}{}", e.name);
            check_tensor(&mut problems, &full, &e.shape, parsed.tensors.get(&full));
        }
    }
    if let Some(layout) = objective {
        for (name, shape) in layout {
            let full = format!("{OBJECTIVE_PREFIX}{name}");
            check_tensor(&mut problems, &full, shape, parsed.tensors.get(&full));
        }
    }
    let file_kind = parsed.meta.get(KEY_OPTIM).cloned();
    let mut layout = BTreeMap::new();
    if let Some(opt) = optimizer.as_deref() {
        let kind = opt.config().kind();
        if file_kind.as_deref() != Some(kind) {
            problems.push(Mismatch::Optimizer {
                expected: kind.to_string(),
                found: file_kind.clone().unwrap_or_else(|| "none".to_string()),
            });
        } else {
            for (name, shape) in opt.state_layout(store) {
                let full = format!("{OPTIMIZER_PREFIX}{name}");
                check_tensor(&mut problems, &full, &shape, parsed.tensors.get(&full));
                layout.insert(full, name);
            }
        }
    }
    for name in parsed.tensors.keys() {
        let known = if name.starts_with(OPTIMIZER_PREFIX) {
            // Optimiser state is only checked when an optimiser of the same kind is
            // being restored; otherwise it is not part of the comparison.
            optimizer.is_none()
                || layout.contains_key(name)
                || problems
                    .iter()
                    .any(|p| matches!(p, Mismatch::Optimizer { .. }))
        } else if let Some(n) = name.strip_prefix(KEY_ENCODER_PREFIX) {
            key_encoder.as_deref().is_none_or(|k| k.id(n).is_some())
        } else if let Some(n) = name.strip_prefix(OBJECTIVE_PREFIX) {
            objective.is_none_or(|l| l.iter().any(|(x, _)| x == n))
        } else {
            store.id(name).is_some()
        };
        if !known {
            problems.push(Mismatch::Unexpected { name: name.clone() });
        }
    }
    if !problems.is_empty() {
        return Err(CheckpointError::Mismatch {
            path: path.to_path_buf(),
            problems,
        });
    }
    let optimizer_state = match &optimizer {
        Some(_) => {
            let step = parse_meta_u64(path, &parsed.meta, KEY_OPTIM_STEP)?;
            Some(OptimizerState {
                kind: file_kind.unwrap_or_default(),
                step,
                tensors: layout
                    .iter()
                    .map(|(full, name)| {
                        let (_, shape, bytes) = &parsed.tensors[full];
                        StateTensor {
                            name: name.clone(),
                            shape: shape.clone(),
                            data: f32_from_bytes(bytes),
                        }
                    })
                    .collect(),
            })
        }
        None => None,
    };
    // Everything is validated; from here on nothing can fail half-way.
    if let (Some(opt), Some(state)) = (optimizer, optimizer_state) {
        opt.load_state(store, &state).map_err(|e| {
            CheckpointError::Invalid(format!("optimiser state rejected after validation: {e}"))
        })?;
    }
    let ids: Vec<_> = store.ids().collect();
    for id in ids {
        let (_, _, bytes) = &parsed.tensors[&store.get(id).name];
        store
            .set_data(id, f32_from_bytes(bytes))
            .expect("shape was validated above");
    }
    if let Some(k) = key_encoder {
        let ids: Vec<_> = k.ids().collect();
        for id in ids {
            let full = format!("{KEY_ENCODER_PREFIX}{}", k.get(id).name);
            let (_, _, bytes) = &parsed.tensors[&full];
            k.set_data(id, f32_from_bytes(bytes))
                .expect("shape was validated above");
        }
    }
    let state = objective
        .unwrap_or(&[])
        .iter()
        .map(|(name, shape)| {
            let (_, _, bytes) = &parsed.tensors[&format!("{OBJECTIVE_PREFIX}{name}")];
            StateTensor {
                name: name.clone(),
                shape: shape.clone(),
                data: f32_from_bytes(bytes),
            }
        })
        .collect();
    Ok((meta, state))
}

/// The section names a checkpoint lists (`model`, `key_encoder`, `optimizer`,
/// `objective`); files written before sections existed list none.
pub fn read_sections(path: &Path) -> Result<Vec<String>, CheckpointError> {
    let parsed = read_checked(path)?;
    Ok(parsed
        .meta
        .get(KEY_SECTIONS)
        .map(|s| s.split(',').map(str::to_string).collect())
        .unwrap_or_default())
}

fn parse_meta_u64(
    path: &Path,
    meta: &HashMap<String, String>,
    key: &str,
) -> Result<u64, CheckpointError> {
    meta.get(key)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| CheckpointError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("metadata `{key}` is missing or not an integer"),
        })
}

/// Writes the entries whose names start with `prefix` (parameters and buffers) as a
/// plain safetensors file for PyTorch, atomically, and returns the names written.
///
/// With `strip_prefix`, `prefix` is removed from the names (`backbone.layer1.0.conv1.weight`
/// → `layer1.0.conv1.weight`), so the file loads into a torchvision model with
/// `model.load_state_dict(safetensors.torch.load_file(path), strict=False)` (strict when
/// the prefix selects the whole model minus `fc`). Buffers named `num_batches_tracked`
/// are written as `I64`, torchvision's dtype; everything else as `F32`. The metadata
/// carries `format: pt`, as `safetensors.torch.save_file` writes it.
pub fn export_weights<D: Device<f32>>(
    path: &Path,
    store: &ParamStore<D>,
    prefix: &str,
    strip_prefix: bool,
) -> Result<Vec<String>, CheckpointError> {
    export_where(path, store, prefix, strip_prefix, |_| true)
}

/// [`export_weights`] of the named entries only (e.g. a model's backbone, whose
/// torchvision names share no prefix: `conv1.`, `bn1.`, `layer1.`, …).
pub fn export_named<D: Device<f32>>(
    path: &Path,
    store: &ParamStore<D>,
    names: &[String],
) -> Result<Vec<String>, CheckpointError> {
    export_where(path, store, "", false, |n| names.iter().any(|x| x == n))
}

fn export_where<D: Device<f32>>(
    path: &Path,
    store: &ParamStore<D>,
    prefix: &str,
    strip_prefix: bool,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<String>, CheckpointError> {
    let mut blobs = BTreeMap::new();
    for e in store
        .entries()
        .iter()
        .filter(|e| e.name.starts_with(prefix) && keep(&e.name))
    {
        let name = if strip_prefix {
            e.name[prefix.len()..].to_string()
        } else {
            e.name.clone()
        };
        if name.is_empty() {
            return Err(CheckpointError::Invalid(format!(
                "stripping `{prefix}` from `{}` leaves an empty name",
                e.name
            )));
        }
        let data = host_copy(&e.tensor);
        let blob = if e.role == Role::Buffer && name.ends_with("num_batches_tracked") {
            Blob {
                dtype: Dtype::I64,
                shape: e.shape.clone(),
                bytes: data
                    .iter()
                    .flat_map(|&x| (x.round() as i64).to_le_bytes())
                    .collect(),
            }
        } else {
            Blob {
                dtype: Dtype::F32,
                shape: e.shape.clone(),
                bytes: f32_bytes(&data),
            }
        };
        blobs.insert(name, blob);
    }
    if blobs.is_empty() {
        return Err(CheckpointError::Invalid(format!(
            "no parameter or buffer name starts with `{prefix}`; nothing to export"
        )));
    }
    let views = blobs
        .iter()
        .map(|(n, b)| {
            TensorView::new(b.dtype, b.shape.clone(), &b.bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| CheckpointError::Invalid(format!("tensor `{n}`: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    let bytes = safetensors::serialize(views, Some(meta))
        .map_err(|e| CheckpointError::Invalid(format!("cannot serialise weights: {e}")))?;
    write_atomic(path, &bytes)?;
    Ok(blobs.into_keys().collect())
}
