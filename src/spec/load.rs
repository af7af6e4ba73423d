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
        let bytes = std::fs::read(path).map_err(|error| LoadError::Io {
            path: path.to_path_buf(),
            error,
        })?;
        self.load_bytes(&path.display().to_string(), path.parent(), &bytes, sets)
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
        let parsed_sets = sets
            .iter()
            .map(|s| parse_set(s))
            .collect::<Result<Vec<_>, _>>()?;
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
            return Ok(loaded);
        };
        for (arg, path, value) in parsed_sets {
            apply_set(
                &mut doc,
                &arg,
                &path,
                value,
                &mut loaded.sources,
                &mut loaded.diagnostics,
            );
        }
        if loaded.has_errors() {
            loaded.document = Some(doc);
            return Ok(loaded);
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
        Ok(loaded)
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

fn canonical(dir: Option<&Path>, name: &str) -> PathBuf {
    let p = Path::new(name);
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        dir.map_or_else(
            || p.to_path_buf(),
            |d| d.join(p.file_name().unwrap_or_default()),
        )
    };
    std::fs::canonicalize(&p).unwrap_or(p)
}

/// Reads one file of an `extends` chain and returns its merged document.
fn read_document(
    name: &str,
    dir: Option<&Path>,
    bytes: &[u8],
    sources: &mut Sources,
    diags: &mut Vec<Diagnostic>,
    chain: &mut Vec<PathBuf>,
) -> Option<Node> {
    let (text, utf8_error) = match std::str::from_utf8(bytes) {
        Ok(t) => (t.to_string(), None),
        Err(e) => (
            String::from_utf8_lossy(bytes).into_owned(),
            Some(e.valid_up_to()),
        ),
    };
    let file = sources.add(name, text.clone());
    if let Some(at) = utf8_error {
        let (line, col) = line_col(&text, &String::from_utf8_lossy(&bytes[..at]));
        diags.push(
            Diagnostic::error("", "the file is not UTF-8 text")
                .with_span(Some(Span {
                    file,
                    line,
                    col,
                    len: 1,
                }))
                .with_help("recipes are YAML text files; is this the right file?"),
        );
        return None;
    }
    if let Some(pos) = text.find('\0') {
        let (line, col) = line_col(&text, &text[..pos]);
        diags.push(
            Diagnostic::error("", "the file contains a NUL byte; it is not a text file").with_span(
                Some(Span {
                    file,
                    line,
                    col,
                    len: 1,
                }),
            ),
        );
        return None;
    }
    let root = match yaml::parse(&text, file) {
        Ok(n) => n,
        Err(ds) => {
            diags.extend(ds);
            return None;
        }
    };
    match &root.kind {
        NodeKind::Map(_) => {}
        NodeKind::Null => {
            diags.push(Diagnostic::error("", "the recipe is empty").with_span(Some(root.span)).with_help("a recipe needs at least `version`, `name`, `data`, `model`, `loss`, `optimizer` and `train`; see `recipes/simclr.yaml`"));
            return None;
        }
        other => {
            diags.push(
                Diagnostic::error(
                    "",
                    format!(
                        "the top level of a recipe must be a mapping of sections, found {}",
                        other.describe()
                    ),
                )
                .with_span(Some(root.span)),
            );
            return None;
        }
    }
    resolve_extends(root, dir, sources, diags, chain)
}

fn resolve_extends(
    mut root: Node,
    dir: Option<&Path>,
    sources: &mut Sources,
    diags: &mut Vec<Diagnostic>,
    chain: &mut Vec<PathBuf>,
) -> Option<Node> {
    let NodeKind::Map(entries) = &mut root.kind else {
        return Some(root);
    };
    let Some(idx) = entries.iter().position(|(k, _)| k.name == "extends") else {
        return Some(root);
    };
    let (_, value) = entries.remove(idx);
    let NodeKind::Str(rel) = &value.kind else {
        diags.push(
            Diagnostic::error(
                "extends",
                format!(
                    "`extends` takes the path of a base recipe, found {}",
                    value.kind.describe()
                ),
            )
            .with_span(Some(value.span)),
        );
        return None;
    };
    let base_path = dir.map_or_else(|| PathBuf::from(rel), |d| d.join(rel));
    let canon = std::fs::canonicalize(&base_path).unwrap_or_else(|_| base_path.clone());
    if let Some(pos) = chain.iter().position(|c| *c == canon) {
        let cycle: Vec<String> = chain[pos..]
            .iter()
            .chain(std::iter::once(&canon))
            .map(|p| {
                p.file_name().map_or_else(
                    || p.display().to_string(),
                    |f| f.to_string_lossy().into_owned(),
                )
            })
            .collect();
        diags.push(
            Diagnostic::error(
                "extends",
                format!("`extends` forms a cycle: {}", cycle.join(" → ")),
            )
            .with_span(Some(value.span))
            .with_help("a base recipe cannot extend a recipe that extends it"),
        );
        return None;
    }
    if chain.len() >= MAX_EXTENDS {
        diags.push(
            Diagnostic::error(
                "extends",
                format!("more than {MAX_EXTENDS} levels of `extends`"),
            )
            .with_span(Some(value.span)),
        );
        return None;
    }
    let bytes = match std::fs::read(&base_path) {
        Ok(b) => b,
        Err(e) => {
            diags.push(
                Diagnostic::error(
                    "extends",
                    format!("cannot read the base recipe `{}`: {e}", base_path.display()),
                )
                .with_span(Some(value.span))
                .with_help("`extends` paths are relative to the recipe that names them"),
            );
            return None;
        }
    };
    chain.push(canon);
    let base = read_document(
        &base_path.display().to_string(),
        base_path.parent(),
        &bytes,
        sources,
        diags,
        chain,
    );
    chain.pop();
    let mut base = base?;
    merge(&mut base, root, &mut Vec::new());
    Some(base)
}

/// The key that selects the variant of the tagged section at `path`, if it is one.
fn tag_key(path: &[&str]) -> Option<&'static str> {
    match path {
        ["loss"] => Some("method"),
        ["optimizer"] => Some("name"),
        ["schedule"] => Some("kind"),
        ["model", "backbone"] => Some("arch"),
        ["data", "source"] => Some("format"),
        _ => None,
    }
}

/// Deep merge: mappings merge key by key; anything else in `over` replaces `base`.
/// A tagged section whose tag changes (`loss.method: moco` over `simclr`) is replaced
/// whole, since the base variant's keys mean nothing to the new one.
fn merge(base: &mut Node, over: Node, path: &mut Vec<&str>) {
    if let (NodeKind::Map(b), NodeKind::Map(o), Some(tag)) = (&base.kind, &over.kind, tag_key(path))
    {
        let get = |m: &[(Key, Node)]| {
            m.iter()
                .find(|(k, _)| k.name == tag)
                .map(|(_, v)| v.kind.clone())
        };
        if let Some(to) = get(o)
            && get(b).as_ref() != Some(&to)
        {
            *base = over;
            return;
        }
    }
    match (&mut base.kind, over.kind) {
        (NodeKind::Map(b), NodeKind::Map(o)) => {
            for (k, v) in o {
                match b.iter_mut().find(|(bk, _)| bk.name == k.name) {
                    Some((bk, bv)) => {
                        let name = k.name.clone();
                        *bk = k;
                        // Paths only need the static section names `tag_key` knows.
                        let seg: &str = match name.as_str() {
                            "loss" => "loss",
                            "optimizer" => "optimizer",
                            "schedule" => "schedule",
                            "model" => "model",
                            "backbone" => "backbone",
                            "data" => "data",
                            "source" => "source",
                            _ => "",
                        };
                        path.push(seg);
                        merge(bv, v, path);
                        path.pop();
                    }
                    None => b.push((k, v)),
                }
            }
        }
        (_, kind) => {
            base.kind = kind;
            base.span = over.span;
        }
    }
}

/// Keys of `data.source` that hold file or folder paths.
const PATH_KEYS: [&str; 7] = [
    "train_images",
    "train_labels",
    "test_images",
    "test_labels",
    "dir",
    "train",
    "test",
];

/// Resolves relative data paths against the recipe file that wrote them (a base file's
/// paths stay right when a recipe elsewhere extends it) and makes them absolute.
/// `--set` paths stay relative to the current directory.
fn resolve_data_paths(doc: &mut Node, sources: &Sources) {
    let NodeKind::Map(root) = &mut doc.kind else {
        return;
    };
    let Some((_, data)) = root.iter_mut().find(|(k, _)| k.name == "data") else {
        return;
    };
    let NodeKind::Map(data) = &mut data.kind else {
        return;
    };
    let Some((_, source)) = data.iter_mut().find(|(k, _)| k.name == "source") else {
        return;
    };
    let NodeKind::Map(source) = &mut source.kind else {
        return;
    };
    for (k, v) in source.iter_mut() {
        let NodeKind::Str(p) = &v.kind else { continue };
        if !PATH_KEYS.contains(&k.name.as_str()) || Path::new(p).is_absolute() {
            continue;
        }
        let file = &sources.get(v.span.file).name;
        if file == "--set" {
            continue;
        }
        if let Some(dir) = Path::new(file).parent() {
            // Absolute, so a rendered recipe means the same wherever it is saved.
            let joined = dir.join(p);
            let abs = std::path::absolute(&joined).unwrap_or(joined);
            v.kind = NodeKind::Str(normalize_lexically(&abs).display().to_string());
        }
    }
}

/// Removes `.` and `a/..` pairs without touching the file system (so a relative path
/// means the same whether or not its folders are symbolic links); `recipe init` uses it
/// too, so the paths it writes mean to the loader what they mean there.
pub(crate) fn normalize_lexically(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out: Vec<Component> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.last(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    if out.is_empty() {
        PathBuf::from(".")
    } else {
        out.iter().collect()
    }
}

fn line_col(text: &str, prefix: &str) -> (usize, usize) {
    let _ = text;
    let line = prefix.matches('\n').count() + 1;
    let col = prefix.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// A parsed `--set`: the argument, its path, and the value's offset and text.
type SetArg = (String, Vec<String>, (usize, String));

/// `a.b.0.c=value` → (argument, path segments, value text offset and text).
fn parse_set(arg: &str) -> Result<SetArg, LoadError> {
    let Some((path, value)) = arg.split_once('=') else {
        return Err(LoadError::BadSet(arg.to_string()));
    };
    let segs: Vec<String> = path.trim().split('.').map(str::to_string).collect();
    if segs.iter().any(|s| s.is_empty()) {
        return Err(LoadError::BadSet(arg.to_string()));
    }
    Ok((arg.to_string(), segs, (path.len() + 1, value.to_string())))
}

fn apply_set(
    doc: &mut Node,
    arg: &str,
    path: &[String],
    (offset, text): (usize, String),
    sources: &mut Sources,
    diags: &mut Vec<Diagnostic>,
) {
    let file = sources.add("--set", arg);
    let whole = Span {
        file,
        line: 1,
        col: 1,
        len: arg.chars().count(),
    };
    let mut value = match yaml::parse(&text, file) {
        Ok(v) => v,
        Err(ds) => {
            diags.extend(ds.into_iter().map(|mut d| {
                if let Some(s) = &mut d.span {
                    s.col += offset;
                }
                d.path = path.join(".");
                d
            }));
            return;
        }
    };
    shift(&mut value, offset, file);
    replace_on_tag_change(doc, path, &value.kind);
    let mut node = doc;
    for (i, seg) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        if matches!(node.kind, NodeKind::Null) {
            node.kind = NodeKind::Map(Vec::new());
        }
        let here = path[..i].join(".");
        node = match &mut node.kind {
            NodeKind::Map(entries) => {
                let pos = match entries.iter().position(|(k, _)| &k.name == seg) {
                    Some(p) => p,
                    None => {
                        // A key the argument adds is its dotted path, not the value.
                        let key = Key {
                            name: seg.clone(),
                            span: Span {
                                len: arg.chars().count() - text.chars().count() - 1,
                                ..whole
                            },
                        };
                        entries.push((
                            key,
                            Node {
                                kind: NodeKind::Null,
                                span: whole,
                            },
                        ));
                        entries.len() - 1
                    }
                };
                &mut entries[pos].1
            }
            NodeKind::Seq(items) => {
                let len = items.len();
                match seg.parse::<usize>().ok().filter(|&j| j < len) {
                    Some(j) => &mut items[j],
                    None => {
                        diags.push(Diagnostic::error(path.join("."), format!("`{here}` is a sequence of {len} item(s); `{seg}` is not an index into it")).with_span(Some(whole)).with_help(format!("use an index from 0 to {}", len.saturating_sub(1))));
                        return;
                    }
                }
            }
            other => {
                diags.push(
                    Diagnostic::error(
                        path.join("."),
                        format!("`{here}` is {}, so it has no key `{seg}`", other.describe()),
                    )
                    .with_span(Some(whole)),
                );
                return;
            }
        };
        if last {
            *node = std::mem::replace(
                &mut value,
                Node {
                    kind: NodeKind::Null,
                    span: whole,
                },
            );
            return;
        }
    }
}

/// A `--set` of a tagged section's tag (`loss.method=moco`) to a new variant empties
/// the section first, as `extends` replaces it: the old variant's keys (SimCLR's
/// `temperature: 0.5`) would otherwise override the new variant's defaults. Later
/// `--set`s of the section's keys apply on top. Setting the same tag changes nothing.
fn replace_on_tag_change(doc: &mut Node, path: &[String], value: &NodeKind) {
    let Some((last, section)) = path.split_last() else {
        return;
    };
    let segs: Vec<&str> = section.iter().map(String::as_str).collect();
    if tag_key(&segs) != Some(last.as_str()) {
        return;
    }
    let mut node = doc;
    for seg in section {
        let NodeKind::Map(entries) = &mut node.kind else {
            return;
        };
        let Some((_, v)) = entries.iter_mut().find(|(k, _)| &k.name == seg) else {
            return;
        };
        node = v;
    }
    let NodeKind::Map(entries) = &mut node.kind else {
        return;
    };
    let same = entries
        .iter()
        .any(|(k, v)| &k.name == last && &v.kind == value);
    if !same {
        entries.clear();
    }
}

fn shift(node: &mut Node, offset: usize, file: FileId) {
    if node.span.line == 1 {
        node.span.col += offset;
    }
    node.span.file = file;
    match &mut node.kind {
        NodeKind::Seq(items) => items.iter_mut().for_each(|n| shift(n, offset, file)),
        NodeKind::Map(entries) => {
            for (k, v) in entries {
                if k.span.line == 1 {
                    k.span.col += offset;
                }
                shift(v, offset, file);
            }
        }
        _ => {}
    }
}
