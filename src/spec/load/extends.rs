//! `extends`: reading a recipe's chain of base files and merging it (tagged sections
//! replaced whole when their tag changes), and resolving data paths against the file
//! that wrote them.

use super::*;

pub(super) fn canonical(dir: Option<&Path>, name: &str) -> PathBuf {
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
pub(super) fn read_document(
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

pub(super) fn resolve_extends(
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
pub(super) fn tag_key(path: &[&str]) -> Option<&'static str> {
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
pub(super) fn merge(base: &mut Node, over: Node, path: &mut Vec<&str>) {
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
pub(super) const PATH_KEYS: [&str; 7] = [
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
pub(super) fn resolve_data_paths(doc: &mut Node, sources: &Sources) {
    let NodeKind::Map(root) = &mut doc.kind else {
        return;
    };
    for (k, v) in root.iter_mut() {
        match k.name.as_str() {
            "data" => resolve_section_paths(v, sources),
            // A task's own `data` (transfer).
            "downstream" => {
                let NodeKind::Seq(tasks) = &mut v.kind else {
                    continue;
                };
                for t in tasks {
                    let NodeKind::Map(t) = &mut t.kind else {
                        continue;
                    };
                    if let Some((_, data)) = t.iter_mut().find(|(k, _)| k.name == "data") {
                        resolve_section_paths(data, sources);
                    }
                }
            }
            _ => {}
        }
    }
}

/// [`resolve_data_paths`] for one `data` section's `source`.
fn resolve_section_paths(data: &mut Node, sources: &Sources) {
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
        if super::is_argument_source(file) {
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
