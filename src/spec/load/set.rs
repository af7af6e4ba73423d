//! `--set PATH=VALUE`: parsing an override and applying it to the merged document, with
//! spans into the argument for its diagnostics.

use super::*;

pub(super) fn line_col(text: &str, prefix: &str) -> (usize, usize) {
    let _ = text;
    let line = prefix.matches('\n').count() + 1;
    let col = prefix.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// A parsed `--set`: the argument, its path, and the value's offset and text.
pub(super) type SetArg = (String, Vec<String>, (usize, String));

/// `a.b.0.c=value` → (argument, path segments, value text offset and text).
pub(super) fn parse_set(arg: &str) -> Result<SetArg, LoadError> {
    let Some((path, value)) = arg.split_once('=') else {
        return Err(LoadError::BadSet(arg.to_string()));
    };
    let segs: Vec<String> = path.trim().split('.').map(str::to_string).collect();
    if segs.iter().any(|s| s.is_empty()) {
        return Err(LoadError::BadSet(arg.to_string()));
    }
    Ok((
        arg.to_string(),
        segs,
        (path.chars().count() + 1, value.to_string()),
    ))
}

pub(super) fn apply_set(
    doc: &mut Node,
    flag: &str,
    arg: &str,
    path: &[String],
    (offset, text): (usize, String),
    sources: &mut Sources,
    diags: &mut Vec<Diagnostic>,
) {
    let file = sources.add(flag, arg);
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
                                len: arg.split_once('=').map_or(0, |(p, _)| p.chars().count()),
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
pub(super) fn replace_on_tag_change(doc: &mut Node, path: &[String], value: &NodeKind) {
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

pub(super) fn shift(node: &mut Node, offset: usize, file: FileId) {
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
