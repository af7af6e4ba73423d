//! `recipe init`: a starting recipe for a dataset on disk.
//!
//! ```text
//! --data DIR --detect--> Detected { source, size, channels, classes, split, mean/std }
//!   --render--> YAML text with a comment on every detected value
//!   --spec::Loader--> valid (or an error: nothing is written) --write--> FILE
//! ```
//!
//! [`detect`] recognises, in this order: CIFAR binary batches in `DIR`
//! (`data_batch_1.bin` …: CIFAR-10; `train.bin` + `test.bin`: CIFAR-100), MNIST-style
//! IDX files (`train-images-idx3-ubyte[.gz]` and its labels, with `t10k-…` as the test
//! split when present), a folder with a `train` subfolder beside `test` (or `val`), and
//! otherwise an image folder: one subfolder per class (labelled) or flat (unlabelled).
//! It reads what the loader reads ([`crate::data::load`] with the data section it is
//! about to write), so the measured statistics are those of the training split a run
//! sees: after the test hold-out, on the `[0, 1]` scale (`u8 / 255`), at the channel
//! count and size the recipe asks for.
//!
//! [`render`] sizes everything else from what was detected (see its doc), and
//! [`init`] validates the text with [`crate::spec::Loader`] before writing it, so a
//! written recipe always loads.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Component, Path, PathBuf};

use rayon::prelude::*;

use crate::data::folder::list_folder;
use crate::data::{DataError, Dataset};
use crate::diag::render_human;
use crate::spec::data as spec;
use crate::spec::{Loader, schema};

mod detect;
mod render;

pub use detect::{Detected, DetectedSource, TestSplit, channel_stats, detect};
use render::*;
pub use render::{find_schema, relative_path, render, thousands};

/// The self-supervised (or supervised contrastive) method a recipe is written for
/// (`loss.method`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// SimCLR's NT-Xent over two views.
    Simclr,
    /// MoCo v2: momentum key encoder and a queue of negatives.
    Moco,
    /// InstDisc's memory bank of instance embeddings.
    MemoryBank,
    /// SwAV with multi-crop where the images are large enough.
    Swav,
    /// Supervised contrastive learning; needs labels.
    Supcon,
    /// BYOL: an online network with a predictor regresses an EMA target's projection.
    Byol,
    /// SimSiam: a predictor and a stop-gradient, no momentum encoder.
    Simsiam,
    /// Barlow Twins: the two views' cross-correlation driven to the identity.
    BarlowTwins,
    /// VICReg: invariance, variance and covariance terms.
    Vicreg,
    /// DINO self-distillation, with multi-crop where the images are large enough.
    Dino,
    /// RotNet rotation prediction: one view, the head a 4-way classifier.
    Rotation,
}

impl Method {
    /// The `loss.method` value.
    pub fn name(self) -> &'static str {
        match self {
            Method::Simclr => "simclr",
            Method::Moco => "moco",
            Method::MemoryBank => "memory_bank",
            Method::Swav => "swav",
            Method::Supcon => "supcon",
            Method::Byol => "byol",
            Method::Simsiam => "simsiam",
            Method::BarlowTwins => "barlow_twins",
            Method::Vicreg => "vicreg",
            Method::Dino => "dino",
            Method::Rotation => "rotation",
        }
    }
}

/// What `recipe init` was asked to do.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// The dataset: a folder (or an IDX / CIFAR file inside the folder that holds them).
    pub data: PathBuf,
    /// The method to write.
    pub method: Method,
    /// The recipe file to write.
    pub output: PathBuf,
    /// Overwrite `output` if it exists.
    pub force: bool,
    /// A project checkout whose `schemas/recipe.schema.json` the modeline points at when
    /// none is found above `output` (the binary passes the folder it was built from).
    pub project_dir: Option<PathBuf>,
}

/// Why no recipe was written.
#[derive(Debug)]
pub enum InitError {
    /// The request cannot be met as asked (SupCon without labels, an existing file
    /// without `--force`, a folder that is no known dataset layout).
    Usage(String),
    /// The data could not be read.
    Data(DataError),
    /// Writing the recipe or the schema failed.
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The generated recipe did not validate (a bug in `init`); the diagnostics as text.
    Invalid(String),
}

impl InitError {
    /// The exit code of `recipe init` for this error: 1 for a recipe that does not
    /// validate, 2 for usage and I/O problems.
    pub fn exit_code(&self) -> u8 {
        match self {
            InitError::Invalid(_) => 1,
            _ => 2,
        }
    }
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitError::Usage(m) => f.write_str(m),
            InitError::Data(e) => write!(f, "cannot read the data: {e}"),
            InitError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            InitError::Invalid(d) => write!(
                f,
                "the generated recipe does not validate (please report this):\n{d}"
            ),
        }
    }
}

impl std::error::Error for InitError {}

impl From<DataError> for InitError {
    fn from(e: DataError) -> Self {
        InitError::Data(e)
    }
}

/// What [`init`] wrote.
#[derive(Clone, Debug)]
pub struct Written {
    /// What was detected.
    pub detected: Detected,
    /// The recipe file.
    pub recipe: PathBuf,
    /// The schema file the modeline names.
    pub schema: PathBuf,
    /// Whether `schema` was written now (no project schema was found).
    pub wrote_schema: bool,
    /// Warnings the loader gave on the written recipe, rendered (usually empty).
    pub warnings: String,
}

/// Detects the data, renders the recipe, validates it, and writes it (and, when no
/// project schema is found, `recipe.schema.json` beside it).
pub fn init(opts: &InitOptions) -> Result<Written, InitError> {
    let out = absolute(&opts.output);
    if out.exists() && !opts.force {
        return Err(InitError::Usage(format!(
            "`{}` already exists; pass `--force` to overwrite it, or choose another file with `-o`",
            opts.output.display()
        )));
    }
    if out.is_dir() {
        return Err(InitError::Usage(format!(
            "`{}` is a folder; give a file name with `-o`",
            opts.output.display()
        )));
    }
    let out_dir = out.parent().map(Path::to_path_buf).unwrap_or_default();
    let detected = detect(&opts.data)?;
    let found = find_schema(&out_dir, opts.project_dir.as_deref());
    let schema = found
        .clone()
        .unwrap_or_else(|| out_dir.join("recipe.schema.json"));
    let text = render(
        &detected,
        opts.method,
        &out_dir,
        &relative_path(&schema, &out_dir),
    )?;

    let loader = Loader::new();
    let name = out.display().to_string();
    let mut loaded = loader
        .load_bytes(&name, Some(&out_dir), text.as_bytes(), &[])
        .map_err(|e| InitError::Invalid(e.to_string()))?;
    crate::build::check_data_paths(&mut loaded);
    let rendered = render_human(&loaded.diagnostics, &loaded.sources);
    if loaded.valid_recipe().is_none() {
        return Err(InitError::Invalid(format!("{rendered}\n{text}")));
    }

    std::fs::create_dir_all(&out_dir).map_err(|source| InitError::Io {
        path: out_dir.clone(),
        source,
    })?;
    let wrote_schema = found.is_none() && (opts.force || !schema.exists());
    if wrote_schema {
        std::fs::write(&schema, schema::generate_pretty()).map_err(|source| InitError::Io {
            path: schema.clone(),
            source,
        })?;
    }
    std::fs::write(&out, &text).map_err(|source| InitError::Io {
        path: out.clone(),
        source,
    })?;
    Ok(Written {
        detected,
        recipe: out,
        schema,
        wrote_schema,
        warnings: rendered,
    })
}
