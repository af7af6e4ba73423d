//! YAML text to a tree of [`Node`]s that remember where they came from.
//!
//! serde_yaml forgets positions, so the loader builds its own tree from yaml-rust2's
//! event stream. The builder is iterative (no recursion on nesting depth), rejects
//! duplicate keys, caps nesting depth, and counts every node an alias expands to, so a
//! "billion laughs" document is refused before it costs memory. Scalars are typed with
//! the YAML 1.2 core schema (quoted scalars are always strings).

use std::collections::HashMap;

use yaml_rust2::parser::{Event, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::diag::{Diagnostic, FileId, Span};

/// Deepest nesting a recipe may have; real recipes use fewer than 10 levels.
pub const MAX_DEPTH: usize = 64;
/// Most nodes a document may expand to (aliases included).
pub const MAX_NODES: usize = 200_000;
/// Largest recipe file accepted, in bytes.
pub const MAX_BYTES: usize = 4 << 20;

/// A YAML value with the span of its first character.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The value.
    pub kind: NodeKind,
    /// Where the value starts.
    pub span: Span,
}

/// Where a path leads in a document: see [`Node::locate`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Located {
    /// Span of the deepest node reached.
    pub value: Span,
    /// Span of the key that led to it, if the last step reached was a mapping key.
    pub key: Option<Span>,
    /// How many path segments were found (equal to the path length when all were).
    pub depth: usize,
}

/// A mapping key with its span.
#[derive(Clone, Debug, PartialEq)]
pub struct Key {
    /// The key text.
    pub name: String,
    /// Where the key is.
    pub span: Span,
}

/// The value of a [`Node`].
#[derive(Clone, Debug, PartialEq)]
pub enum NodeKind {
    /// `~`, `null` or nothing.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer that fits `i64`.
    Int(i64),
    /// A floating-point number (may be non-finite: `.inf`, `.nan`).
    Float(f64),
    /// Any other scalar.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in document order, keys unique.
    Map(Vec<(Key, Node)>),
}

impl NodeKind {
    /// A short name of the kind for messages ("a mapping", "a string", …).
    pub fn describe(&self) -> &'static str {
        match self {
            NodeKind::Null => "null",
            NodeKind::Bool(_) => "a boolean",
            NodeKind::Int(_) => "an integer",
            NodeKind::Float(_) => "a number",
            NodeKind::Str(_) => "a string",
            NodeKind::Seq(_) => "a sequence",
            NodeKind::Map(_) => "a mapping",
        }
    }
}

impl Node {
    /// Number of nodes in this tree (itself included).
    pub fn count(&self) -> usize {
        match &self.kind {
            NodeKind::Seq(items) => 1 + items.iter().map(Node::count).sum::<usize>(),
            NodeKind::Map(entries) => 1 + entries.iter().map(|(_, v)| v.count()).sum::<usize>(),
            _ => 1,
        }
    }

    /// The value under `key` of a mapping.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.kind {
            NodeKind::Map(entries) => entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// Follows a path of mapping keys and sequence indices as far as the document has
    /// it, and says where that is.
    pub fn locate(&self, path: &[String]) -> Located {
        let mut node = self;
        let mut key_span = None;
        for (depth, seg) in path.iter().enumerate() {
            let next = match &node.kind {
                NodeKind::Map(entries) => entries
                    .iter()
                    .find(|(k, _)| &k.name == seg)
                    .map(|(k, v)| (Some(k.span), v)),
                NodeKind::Seq(items) => seg
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| items.get(i))
                    .map(|v| (None, v)),
                _ => None,
            };
            match next {
                Some((k, v)) => {
                    key_span = k;
                    node = v;
                }
                None => {
                    return Located {
                        value: node.span,
                        key: key_span,
                        depth,
                    };
                }
            }
        }
        Located {
            value: node.span,
            key: key_span,
            depth: path.len(),
        }
    }

    /// Converts to JSON. Non-finite floats have no JSON form; they become strings
    /// (reported separately by [`non_finite`]).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match &self.kind {
            NodeKind::Null => Value::Null,
            NodeKind::Bool(b) => Value::Bool(*b),
            NodeKind::Int(i) => Value::from(*i),
            NodeKind::Float(f) => serde_json::Number::from_f64(*f)
                .map(Value::Number)
                .unwrap_or_else(|| Value::String(f.to_string())),
            NodeKind::Str(s) => Value::String(s.clone()),
            NodeKind::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeKind::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| (k.name.clone(), v.to_json()))
                    .collect(),
            ),
        }
    }
}

/// Diagnostics for every `.inf` / `.nan` in the tree (recipes need finite numbers).
pub fn non_finite(node: &Node, path: &mut Vec<String>, out: &mut Vec<Diagnostic>) {
    match &node.kind {
        NodeKind::Float(f) if !f.is_finite() => out.push(
            Diagnostic::error(
                path.join("."),
                format!("found the non-finite number `{f}`; recipe numbers must be finite"),
            )
            .with_span(Some(node.span)),
        ),
        NodeKind::Seq(items) => {
            for (i, v) in items.iter().enumerate() {
                path.push(i.to_string());
                non_finite(v, path, out);
                path.pop();
            }
        }
        NodeKind::Map(entries) => {
            for (k, v) in entries {
                path.push(k.name.clone());
                non_finite(v, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn span_at(file: FileId, m: &Marker, len: usize) -> Span {
    Span {
        file,
        line: m.line().max(1),
        col: m.col() + 1,
        len,
    }
}

/// Types a plain scalar by the YAML 1.2 core schema.
fn plain_scalar(text: &str) -> NodeKind {
    match text {
        "" | "~" | "null" | "Null" | "NULL" => return NodeKind::Null,
        "true" | "True" | "TRUE" => return NodeKind::Bool(true),
        "false" | "False" | "FALSE" => return NodeKind::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return NodeKind::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return NodeKind::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return NodeKind::Float(f64::NAN),
        _ => {}
    }
    if let Some(hex) = text.strip_prefix("0x")
        && let Ok(i) = i64::from_str_radix(hex, 16)
    {
        return NodeKind::Int(i);
    }
    if let Some(oct) = text.strip_prefix("0o")
        && let Ok(i) = i64::from_str_radix(oct, 8)
    {
        return NodeKind::Int(i);
    }
    let looks_numeric = text
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_digit() || c == '-' || c == '+' || c == '.');
    if looks_numeric {
        if let Ok(i) = text.parse::<i64>() {
            return NodeKind::Int(i);
        }
        let body = text.trim_start_matches(['-', '+']);
        if body
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'))
            && body.chars().any(|c| c.is_ascii_digit())
            && let Ok(f) = text.parse::<f64>()
        {
            return NodeKind::Float(f);
        }
    }
    NodeKind::Str(text.to_string())
}

enum Frame {
    Seq {
        start: Span,
        anchor: usize,
        items: Vec<Node>,
    },
    Map {
        start: Span,
        anchor: usize,
        entries: Vec<(Key, Node)>,
        pending_key: Option<Key>,
    },
}

/// Parses one YAML document into a [`Node`] tree. Problems (syntax errors, duplicate
/// keys, limits) come back as diagnostics pointing into `file`; the tree is returned
/// only if there were none. An empty document yields a `Null` node.
pub fn parse(text: &str, file: FileId) -> Result<Node, Vec<Diagnostic>> {
    let whole = Span {
        file,
        line: 1,
        col: 1,
        len: 1,
    };
    if text.len() > MAX_BYTES {
        return Err(vec![
            Diagnostic::error(
                "",
                format!(
                    "the file is {} bytes; recipes are limited to {} bytes",
                    text.len(),
                    MAX_BYTES
                ),
            )
            .with_span(Some(whole)),
        ]);
    }
    let mut parser = Parser::new_from_str(text);
    let mut stack: Vec<Frame> = Vec::new();
    let mut anchors: HashMap<usize, Node> = HashMap::new();
    let mut root: Option<Node> = None;
    let mut docs = 0usize;
    let mut nodes = 0usize;
    let mut diags = Vec::new();

    loop {
        let (event, mark) = match parser.next_token() {
            Ok(ev) => ev,
            Err(e) => {
                let m = e.marker();
                let span = span_at(file, m, 1);
                diags.push(
                    Diagnostic::error("", format!("invalid YAML: {}", e.info()))
                        .with_span(Some(span))
                        .with_help(syntax_help(e.info())),
                );
                return Err(diags);
            }
        };
        let mut finished: Option<(Node, usize)> = None;
        match event {
            Event::StreamEnd => break,
            Event::StreamStart | Event::Nothing | Event::DocumentEnd => {}
            Event::DocumentStart => {
                docs += 1;
                if docs > 1 {
                    diags.push(
                        Diagnostic::error(
                            "",
                            "the file holds more than one YAML document; a recipe is one document",
                        )
                        .with_span(Some(span_at(file, &mark, 3)))
                        .with_help(
                            "remove the `---` separator and merge the documents, or use `extends:`",
                        ),
                    );
                    return Err(diags);
                }
            }
            Event::Scalar(value, style, anchor, _tag) => {
                let len = value.chars().count().max(1);
                let kind = if style == TScalarStyle::Plain {
                    plain_scalar(&value)
                } else {
                    NodeKind::Str(value)
                };
                nodes += 1;
                finished = Some((
                    Node {
                        kind,
                        span: span_at(file, &mark, len),
                    },
                    anchor,
                ));
            }
            Event::Alias(id) => match anchors.get(&id) {
                Some(target) => {
                    nodes += target.count();
                    if nodes > MAX_NODES {
                        diags.push(alias_limit(span_at(file, &mark, 1)));
                        return Err(diags);
                    }
                    let mut node = target.clone();
                    node.span = span_at(file, &mark, 1);
                    finished = Some((node, 0));
                }
                None => {
                    diags.push(
                        Diagnostic::error("", "alias refers to an unknown anchor")
                            .with_span(Some(span_at(file, &mark, 1))),
                    );
                    return Err(diags);
                }
            },
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    diags.push(
                        Diagnostic::error(
                            "",
                            format!("the document nests deeper than {MAX_DEPTH} levels"),
                        )
                        .with_span(Some(span_at(file, &mark, 1))),
                    );
                    return Err(diags);
                }
                nodes += 1;
                let start = span_at(file, &mark, 1);
                stack.push(if matches!(event, Event::SequenceStart(..)) {
                    Frame::Seq {
                        start,
                        anchor,
                        items: Vec::new(),
                    }
                } else {
                    Frame::Map {
                        start,
                        anchor,
                        entries: Vec::new(),
                        pending_key: None,
                    }
                });
            }
            Event::SequenceEnd | Event::MappingEnd => match stack.pop() {
                Some(Frame::Seq {
                    start,
                    anchor,
                    items,
                }) => {
                    finished = Some((
                        Node {
                            kind: NodeKind::Seq(items),
                            span: start,
                        },
                        anchor,
                    ))
                }
                Some(Frame::Map {
                    start,
                    anchor,
                    entries,
                    ..
                }) => {
                    finished = Some((
                        Node {
                            kind: NodeKind::Map(entries),
                            span: start,
                        },
                        anchor,
                    ))
                }
                None => {}
            },
        }
        if nodes > MAX_NODES {
            diags.push(alias_limit(span_at(file, &mark, 1)));
            return Err(diags);
        }
        if let Some((node, anchor)) = finished {
            if anchor != 0 {
                anchors.insert(anchor, node.clone());
            }
            match stack.last_mut() {
                None => root = Some(node),
                Some(Frame::Seq { items, .. }) => items.push(node),
                Some(Frame::Map {
                    entries,
                    pending_key,
                    ..
                }) => match pending_key.take() {
                    None => {
                        let name = match &node.kind {
                            NodeKind::Str(s) => s.clone(),
                            NodeKind::Null => "null".into(),
                            NodeKind::Bool(b) => b.to_string(),
                            NodeKind::Int(i) => i.to_string(),
                            NodeKind::Float(f) => f.to_string(),
                            NodeKind::Seq(_) | NodeKind::Map(_) => {
                                diags.push(
                                    Diagnostic::error(
                                        "",
                                        format!(
                                            "a mapping key must be a plain name, found {}",
                                            node.kind.describe()
                                        ),
                                    )
                                    .with_span(Some(node.span)),
                                );
                                "?".into()
                            }
                        };
                        *pending_key = Some(Key {
                            name,
                            span: node.span,
                        });
                    }
                    Some(key) => {
                        if let Some((first, _)) = entries.iter().find(|(k, _)| k.name == key.name) {
                            diags.push(
                                Diagnostic::error(
                                    "",
                                    format!(
                                        "duplicate key `{}` (first defined on line {})",
                                        key.name, first.span.line
                                    ),
                                )
                                .with_span(Some(key.span))
                                .with_help(
                                    "remove one of the two entries; YAML keys must be unique",
                                ),
                            );
                        } else {
                            entries.push((key, node));
                        }
                    }
                },
            }
        }
    }
    if !diags.is_empty() {
        return Err(diags);
    }
    Ok(root.unwrap_or(Node {
        kind: NodeKind::Null,
        span: whole,
    }))
}

fn alias_limit(span: Span) -> Diagnostic {
    Diagnostic::error(
        "",
        format!("the document expands to more than {MAX_NODES} values (aliases included)"),
    )
    .with_span(Some(span))
    .with_help("a recipe this large is almost certainly an alias bomb or a wrong file")
}

fn syntax_help(info: &str) -> String {
    if info.contains("tab") {
        "YAML indentation must use spaces, not tabs".into()
    } else if info.contains("mapping values are not allowed") {
        "a value containing `: ` must be quoted, or the indentation is off".into()
    } else {
        "check the indentation and quoting around this position".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Node, Vec<Diagnostic>> {
        parse(s, FileId(0))
    }

    #[test]
    fn types_scalars_and_keeps_positions() {
        let n = p("a: 1\nb:\n  c: [x, 2.5, true, ~, '3']\n").unwrap();
        let c = n.get("b").unwrap().get("c").unwrap();
        let NodeKind::Seq(items) = &c.kind else {
            panic!()
        };
        assert_eq!(items[0].kind, NodeKind::Str("x".into()));
        assert_eq!(items[1].kind, NodeKind::Float(2.5));
        assert_eq!(items[2].kind, NodeKind::Bool(true));
        assert_eq!(items[3].kind, NodeKind::Null);
        assert_eq!(items[4].kind, NodeKind::Str("3".into()));
        assert_eq!((items[1].span.line, items[1].span.col), (3, 10));
        let l = n.locate(&["b".into(), "c".into()]);
        assert_eq!(l.key.map(|k| (k.line, k.col)), Some((3, 3)));
        assert_eq!(l.depth, 2);
    }

    #[test]
    fn rejects_duplicates_and_bombs() {
        let e = p("a: 1\na: 2\n").unwrap_err();
        assert!(e[0].message.contains("duplicate key `a`"));
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 0..8 {
            let prev = if i == 0 {
                "a".to_string()
            } else {
                format!("l{}", i - 1)
            };
            bomb += &format!(
                "l{i}: &l{i} [{}]\n",
                vec![format!("*{prev}"); 10].join(", ")
            );
        }
        let e = p(&bomb).unwrap_err();
        assert!(e[0].message.contains("expands to more than"));
        let deep = "[".repeat(100) + &"]".repeat(100);
        assert!(p(&deep).unwrap_err()[0].message.contains("nests deeper"));
    }

    #[test]
    fn empty_is_null_and_tabs_are_errors() {
        assert_eq!(p("").unwrap().kind, NodeKind::Null);
        assert!(p("a:\n\tb: 1\n").is_err());
    }
}
