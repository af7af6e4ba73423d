//! Loading a recipe: text → nodes with spans → `extends` merge → `--set` overrides →
//! JSON Schema validation → typed [`Recipe`] → semantic checks.
//!
//! Each stage reports every problem it finds; a later stage runs only when the earlier
//! ones found no error (a typed recipe cannot be built from an ill-typed document).
//! One exception keeps numeric rules reported once: a value of the right type but out
//! of the schema's range still yields a typed recipe, and where a semantic rule covers
//! the same value its message (which says why) replaces the schema's. A semantic
//! error about a default the recipe does not write names the default and points at
//! the nearest section the recipe writes.
//! The only hard failures ([`LoadError`]) are about the invocation itself: a recipe
//! file that cannot be read, or a malformed `--set` argument. Everything about the
//! content is a [`Diagnostic`].

use std::fmt;
use std::path::{Path, PathBuf};

use super::Recipe;
use super::validate::Validator;
use super::yaml::{self, Key, Node, NodeKind};
use crate::diag::{Diagnostic, FileId, Sources, Span};

mod extends;
mod set;

pub(crate) use extends::normalize_lexically;
use extends::*;
use set::*;

/// A failure to even start checking: the fault is in the command, not the recipe.
#[derive(Debug)]
pub enum LoadError {
    /// The recipe file could not be read.
    Io {
        /// The path as given.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// A `--set` argument is not `path=value`.
    BadSet(String),
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadError::Io { path, error } => write!(f, "cannot read `{}`: {error}", path.display()),
            LoadError::BadSet(arg) => write!(
                f,
                "`--set {arg}` is not of the form `path.to.key=value` (e.g. `--set loss.temperature=0.2`)"
            ),
        }
    }
}

impl std::error::Error for LoadError {}

/// The source name of `--set` arguments in [`Sources`] (what diagnostics show).
pub const SET_SOURCE: &str = "--set";
/// The source name of `recipe sweep`'s `--grid` arguments.
pub const GRID_SOURCE: &str = "--grid";

/// Whether a source is a command-line argument (`--set`, `--grid`) rather than a file:
/// data paths in it are relative to the current directory, not to a recipe file.
pub fn is_argument_source(name: &str) -> bool {
    name == SET_SOURCE || name == GRID_SOURCE
}

/// One key override applied after `extends`: a `--set PATH=VALUE` argument, or one
/// value of a longer argument (a sweep's `--grid PATH=[v1, v2]`), so that its
/// diagnostics point into the argument as typed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Override {
    /// The source name diagnostics show ([`SET_SOURCE`], [`GRID_SOURCE`]).
    pub flag: &'static str,
    /// The whole argument as typed (the line diagnostics show).
    pub arg: String,
    /// The dotted path, split at the dots.
    pub path: Vec<String>,
    /// Where the value's text starts in `arg` (in characters) and the text, YAML.
    pub value: (usize, String),
}

impl Override {
    /// Parses a `--set PATH=VALUE` argument.
    pub fn set(arg: &str) -> Result<Self, LoadError> {
        let (arg, path, (offset, text)) = parse_set(arg)?;
        Ok(Override {
            flag: SET_SOURCE,
            arg,
            path,
            value: (offset, text),
        })
    }

    /// The override as a `--set` argument would write it: `path=value`.
    pub fn as_set(&self) -> String {
        format!("{}={}", self.path.join("."), self.value.1)
    }
}

/// The outcome of loading one recipe.
#[derive(Debug)]
pub struct Loaded {
    /// Every text diagnostics point into (the recipe, its bases, `--set` arguments).
    pub sources: Sources,
    /// All problems found, errors and warnings, in document order.
    pub diagnostics: Vec<Diagnostic>,
    /// The typed recipe, when the document deserialises: no schema errors other than
    /// out-of-range values (semantic errors may still be present in `diagnostics`).
    pub recipe: Option<Recipe>,
    /// The merged document, for locating paths.
    pub document: Option<Node>,
}

impl Loaded {
    /// Whether any diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }

    /// The recipe, only when it is fully valid.
    pub fn valid_recipe(&self) -> Option<&Recipe> {
        (!self.has_errors())
            .then_some(self.recipe.as_ref())
            .flatten()
    }
}

/// Loads recipes; holds the compiled schema so many files are checked with one.
pub struct Loader {
    validator: Validator,
}

impl Default for Loader {
    fn default() -> Self {
        Self::new()
    }
}

/// Most `extends` links followed from one recipe.
const MAX_EXTENDS: usize = 16;

impl Loader {
    /// A loader using the committed schema.
    pub fn new() -> Self {
        Loader {
            validator: Validator::committed(),
        }
    }

    /// Loads the recipe at `path` with `--set` overrides applied in order.
    pub fn load_file(&self, path: &Path, sets: &[String]) -> Result<Loaded, LoadError> {
        let overrides = sets
            .iter()
            .map(|s| Override::set(s))
            .collect::<Result<Vec<_>, _>>()?;
        self.load_file_with(path, &overrides)
    }

    /// Loads the recipe at `path` with `overrides` applied in order.
    pub fn load_file_with(&self, path: &Path, overrides: &[Override]) -> Result<Loaded, LoadError> {
        let bytes = std::fs::read(path).map_err(|error| LoadError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        Ok(self.load_bytes_with(
            &path.display().to_string(),
            path.parent(),
            &bytes,
            overrides,
        ))
    }

    /// Loads a recipe from bytes; `name` is shown in diagnostics and `dir` resolves
    /// relative `extends` paths (`None`: the current directory).
    pub fn load_bytes(
        &self,
        name: &str,
        dir: Option<&Path>,
        bytes: &[u8],
        sets: &[String],
    ) -> Result<Loaded, LoadError> {
        let overrides = sets
            .iter()
            .map(|s| Override::set(s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.load_bytes_with(name, dir, bytes, &overrides))
    }

    /// [`Loader::load_bytes`] with parsed overrides (which cannot fail to apply: their
    /// problems are diagnostics).
    pub fn load_bytes_with(
        &self,
        name: &str,
        dir: Option<&Path>,
        bytes: &[u8],
        overrides: &[Override],
    ) -> Loaded {
        let mut sources = Sources::new();
        let mut diagnostics = Vec::new();
        let mut chain = vec![canonical(dir, name)];
        let document = read_document(name, dir, bytes, &mut sources, &mut diagnostics, &mut chain);
        let mut loaded = Loaded {
            sources,
            diagnostics,
            recipe: None,
            document: None,
        };
        let Some(mut doc) = document else {
            return loaded;
        };
        for o in overrides {
            apply_set(
                &mut doc,
                o.flag,
                &o.arg,
                &o.path,
                o.value.clone(),
                &mut loaded.sources,
                &mut loaded.diagnostics,
            );
        }
        if loaded.has_errors() {
            loaded.document = Some(doc);
            return loaded;
        }
        resolve_data_paths(&mut doc, &loaded.sources);
        let mut nf = Vec::new();
        yaml::non_finite(&doc, &mut Vec::new(), &mut nf);
        loaded.diagnostics.extend(nf.iter().cloned());
        let json = doc.to_json();
        let mut findings = self.validator.findings(&json, &doc);
        // A non-finite number was already reported; its type error says nothing new.
        findings.retain(|f| !nf.iter().any(|n| n.path == f.diagnostic.path));
        // Out-of-range values still make a typed recipe: check it, so a bound the
        // semantic rules also know is reported once, in their words (which say why).
        let typed = !loaded.has_errors()
            && findings
                .iter()
                .all(|f| f.value_only || !f.diagnostic.is_error());
        let mut sem = Vec::new();
        if typed {
            match serde_json::from_value::<Recipe>(json) {
                Ok(recipe) => {
                    sem = super::check::check(&recipe);
                    locate_semantic(&mut sem, &doc, &recipe);
                    loaded.recipe = Some(recipe);
                }
                // The schema's message about the same value is the better one.
                Err(_) if !findings.is_empty() => {}
                Err(e) => sem.push(
                    Diagnostic::error("", format!("the recipe does not fit the recipe types: {e}"))
                        .with_span(Some(doc.span)),
                ),
            }
        }
        let mut schema_diags: Vec<Diagnostic> = findings
            .into_iter()
            .filter(|f| !(f.value_only && sem.iter().any(|s| covers(&s.path, &f.diagnostic.path))))
            .map(|f| f.diagnostic)
            .collect();
        sort_by_position(&mut schema_diags);
        sort_by_position(&mut sem);
        loaded.diagnostics.extend(schema_diags);
        loaded.diagnostics.extend(sem);
        loaded.document = Some(doc);
        loaded
    }
}

/// Whether a semantic diagnostic at `sem` is about the value a schema diagnostic at
/// `schema` concerns: the same path, or the sequence that holds the item
/// (`…scale` covers `…scale.0`).
fn covers(sem: &str, schema: &str) -> bool {
    sem == schema
        || schema
            .strip_prefix(sem)
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|i| i.parse::<usize>().is_ok())
}

/// Gives semantic diagnostics their spans. A rule about a value the recipe does not
/// write (a default) names the default and points at the nearest section the recipe
/// does write, or at the related key its rule compares with
/// ([`super::check::related`]), instead of the top of the file.
fn locate_semantic(sem: &mut [Diagnostic], doc: &Node, recipe: &Recipe) {
    let rendered = serde_json::to_value(recipe).ok();
    for d in sem {
        if d.span.is_some() {
            continue;
        }
        let path: Vec<String> = if d.path.is_empty() {
            Vec::new()
        } else {
            d.path.split('.').map(str::to_string).collect()
        };
        let loc = doc.locate(&path);
        if loc.depth == path.len() {
            d.span = span_of(doc, &d.path);
            continue;
        }
        let default = rendered
            .as_ref()
            .and_then(|r| lookup(r, &path))
            .filter(|v| !v.is_object() && !v.is_array());
        if let Some(v) = default {
            let key = path.last().map_or("", String::as_str);
            // As a person writes it: `10`, not `10.0`.
            let v = match v.as_f64() {
                Some(f) if v.is_f64() && f.fract() == 0.0 && f.abs() < 1e15 => {
                    format!("{}", f as i64)
                }
                _ => v.to_string(),
            };
            let note = format!(
                "`{}` is not written in the recipe, so its default `{key}: {v}` applies",
                d.path
            );
            d.help = Some(match d.help.take() {
                Some(h) => format!("{note}; {h}"),
                None => format!("{note}; write the key to choose another value"),
            });
        }
        d.span = if loc.depth > 0 {
            Some(loc.key.unwrap_or(loc.value))
        } else {
            super::check::related(&d.path).and_then(|r| {
                let rp: Vec<String> = r.split('.').map(str::to_string).collect();
                let l = doc.locate(&rp);
                (l.depth > 0).then(|| {
                    if l.depth == rp.len() {
                        l.value
                    } else {
                        l.key.unwrap_or(l.value)
                    }
                })
            })
        }
        .or_else(|| span_of(doc, &d.path));
    }
}

fn lookup<'a>(v: &'a serde_json::Value, path: &[String]) -> Option<&'a serde_json::Value> {
    path.iter().try_fold(v, |v, seg| match v {
        serde_json::Value::Array(a) => a.get(seg.parse::<usize>().ok()?),
        serde_json::Value::Object(o) => o.get(seg),
        _ => None,
    })
}

/// Span of the value at a dotted path, or of the nearest enclosing key the document has.
pub fn span_of(doc: &Node, dotted: &str) -> Option<Span> {
    let path: Vec<String> = if dotted.is_empty() {
        Vec::new()
    } else {
        dotted.split('.').map(str::to_string).collect()
    };
    let loc = doc.locate(&path);
    let reached = loc.depth == path.len();
    let block = reached
        && matches!(
            doc_at(doc, &path).map(|n| &n.kind),
            Some(NodeKind::Map(_) | NodeKind::Null)
        );
    Some(if reached && !block {
        loc.value
    } else {
        loc.key.unwrap_or(loc.value)
    })
}

fn doc_at<'a>(doc: &'a Node, path: &[String]) -> Option<&'a Node> {
    let mut n = doc;
    for seg in path {
        n = match &n.kind {
            NodeKind::Map(entries) => entries
                .iter()
                .find(|(k, _)| &k.name == seg)
                .map(|(_, v)| v)?,
            NodeKind::Seq(items) => items.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(n)
}

fn sort_by_position(diags: &mut [Diagnostic]) {
    diags.sort_by_key(|d| d.span.map(|s| (s.file.0, s.line, s.col)));
}
