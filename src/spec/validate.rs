//! Applying the committed recipe schema to a loaded document: every schema error
//! becomes a located [`Diagnostic`] that names the key or value at fault, with "did you
//! mean" for unknown keys and the owning variant for a key of another variant. (The
//! schema itself is generated and refined in [`super::schema`].)

use serde_json::Value;

use super::schema::COMMITTED;
use super::yaml::Node;
use crate::diag::{Diagnostic, did_you_mean};

/// One schema problem.
#[derive(Clone, Debug)]
pub struct Finding {
    /// The problem, located.
    pub diagnostic: Diagnostic,
    /// The value is of the right type but out of range (a bound, a list's length, a
    /// pattern): the document still deserialises, so the semantic checks can run and
    /// replace this diagnostic with theirs where they say more (the loader does). An
    /// integer above its maximum is not value-only: it may be a count to allocate.
    pub value_only: bool,
}

/// A compiled validator for the committed schema.
pub struct Validator {
    schema: Value,
    compiled: jsonschema::Validator,
}

impl Validator {
    /// Compiles the committed schema.
    pub fn committed() -> Self {
        let schema: Value =
            serde_json::from_str(COMMITTED).expect("the committed schema is JSON (tested)");
        Self::new(schema)
    }

    /// Compiles `schema` (Draft 7).
    pub fn new(schema: Value) -> Self {
        let compiled =
            jsonschema::draft7::new(&schema).expect("the recipe schema compiles (tested)");
        Validator { schema, compiled }
    }

    /// Validates `doc` (the JSON form of `root`), returning one diagnostic per problem
    /// with spans taken from `root`.
    pub fn validate(&self, doc: &Value, root: &Node) -> Vec<Diagnostic> {
        self.findings(doc, root)
            .into_iter()
            .map(|f| f.diagnostic)
            .collect()
    }

    /// Like [`Validator::validate`], and says of each problem whether it is only about
    /// a value's range or size ([`Finding::value_only`]).
    pub fn findings(&self, doc: &Value, root: &Node) -> Vec<Finding> {
        use jsonschema::error::ValidationErrorKind as K;
        let mut out: Vec<Finding> = Vec::new();
        for err in self.compiled.iter_errors(doc) {
            let path: Vec<String> = err.instance_path().iter().map(|s| s.to_string()).collect();
            let instance = lookup(doc, &path);
            // An integer above its maximum is a count (views, crops) the semantic rules
            // would allocate for; it stays a blocking error.
            let integer = self
                .schema_at(doc, &path)
                .and_then(|s| s.get("type"))
                .is_some_and(|t| t == "integer");
            let value_only = match err.kind() {
                K::Minimum { .. }
                | K::ExclusiveMinimum { .. }
                | K::MinItems { .. }
                | K::MaxItems { .. }
                | K::MinLength { .. }
                | K::Pattern { .. } => true,
                K::Maximum { .. } | K::ExclusiveMaximum { .. } => !integer,
                // "One number or a list of them" (label fractions, weight decays): a
                // number or a list of numbers still deserialises, so a semantic rule
                // can say which value is wrong and why.
                K::AnyOf { .. } => instance.is_some_and(|v| {
                    v.is_number()
                        || v.as_array()
                            .is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_number))
                }),
                _ => false,
            };
            for d in self.describe(&err, &path, doc, instance, root) {
                if !out
                    .iter()
                    .any(|o| o.diagnostic.path == d.path && o.diagnostic.message == d.message)
                {
                    out.push(Finding {
                        diagnostic: d,
                        value_only,
                    });
                }
            }
        }
        out
    }

    /// The object schema that applies at `path` in `doc`, following `$ref`, items and
    /// the `if`/`then` arm selected by the instance's tag.
    fn schema_at<'a>(&'a self, doc: &Value, path: &[String]) -> Option<&'a Value> {
        let mut schema = self.resolve(&self.schema)?;
        let mut inst = doc;
        for seg in path {
            let next = if let Some(arr) = inst.as_array() {
                let item = arr.get(seg.parse::<usize>().ok()?)?;
                let s = self.resolve(schema.get("items")?)?;
                (item, s)
            } else {
                let item = inst.get(seg)?;
                let s = self.property_schema(schema, inst, seg)?;
                (item, s)
            };
            inst = next.0;
            schema = next.1;
        }
        Some(schema)
    }

    fn property_schema<'a>(
        &'a self,
        schema: &'a Value,
        inst: &Value,
        key: &str,
    ) -> Option<&'a Value> {
        if let Some(s) = schema.get("properties").and_then(|p| p.get(key)) {
            if key_is_tag(schema, key) {
                return Some(s);
            }
            if let Some(then) = self.selected_arm(schema, inst)
                && let Some(s2) = then.get("properties").and_then(|p| p.get(key))
            {
                return self.resolve(s2);
            }
            return self.resolve(s);
        }
        let then = self.selected_arm(schema, inst)?;
        self.resolve(then.get("properties")?.get(key)?)
    }

    /// The `then` schema of the `if`/`then` arm whose tag matches `inst`.
    fn selected_arm<'a>(&'a self, schema: &'a Value, inst: &Value) -> Option<&'a Value> {
        schema.get("allOf")?.as_array()?.iter().find_map(|arm| {
            let cond = arm.get("if")?.get("properties")?.as_object()?;
            let (tag, c) = cond.iter().next()?;
            (inst.get(tag)? == c.get("const")?)
                .then(|| arm.get("then"))
                .flatten()
        })
    }

    fn resolve<'a>(&'a self, mut s: &'a Value) -> Option<&'a Value> {
        for _ in 0..16 {
            if let Some(r) = s.get("$ref").and_then(Value::as_str) {
                let name = r.strip_prefix("#/definitions/")?;
                s = self.schema.get("definitions")?.get(name)?;
                continue;
            }
            // schemars wraps a `$ref` that carries a default or description in a
            // one-element `allOf`.
            match s.get("allOf").and_then(Value::as_array) {
                Some(all) if all.len() == 1 && s.get("properties").is_none() => s = &all[0],
                _ => return Some(s),
            }
        }
        None
    }

    /// The names a mapping at `path` may hold, for "did you mean".
    pub fn allowed_keys(&self, doc: &Value, path: &[String]) -> Vec<String> {
        let Some(schema) = self.schema_at(doc, path) else {
            return Vec::new();
        };
        let inst = lookup(doc, path);
        let mut keys: Vec<String> = Vec::new();
        let mut add = |s: &Value| {
            if let Some(p) = s.get("properties").and_then(Value::as_object) {
                keys.extend(p.keys().cloned());
            }
        };
        add(schema);
        if let Some(then) = inst.and_then(|i| self.selected_arm(schema, i)) {
            add(then);
        }
        keys.dedup();
        keys
    }
}

/// One variant of a tagged section: its tag value and the keys its arm allows.
type Variant<'a> = (&'a str, Vec<&'a str>);

/// The tag key of a tagged section's schema and its variants, in schema order.
fn variants(schema: &Value) -> Option<(&str, Vec<Variant<'_>>)> {
    let mut tag = None;
    let mut out = Vec::new();
    for arm in schema.get("allOf")?.as_array()? {
        let cond = arm.get("if")?.get("properties")?.as_object()?;
        let (t, c) = cond.iter().next()?;
        tag = Some(t.as_str());
        let keys = arm
            .get("then")
            .and_then(|th| th.get("properties"))
            .and_then(Value::as_object)
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default();
        out.push((c.get("const")?.as_str()?, keys));
    }
    Some((tag?, out))
}

/// `a`, `a` or `b`, `a`, `b` or `c`.
fn either(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|i| format!("`{i}`")).collect();
    match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// For a key a tagged section's current variant does not allow: when other variants
/// allow it (exactly, or as the close spelling of a typo), a diagnostic naming them,
/// e.g. "`queue_size` is a `moco` key; this section is `method: simclr`". The owners
/// come from the schema's arms, so a new variant or key needs no list kept here.
fn other_variant_key(
    schema: &Value,
    inst: &Value,
    path: &[String],
    key: &str,
) -> Option<Diagnostic> {
    let (tag, variants) = variants(schema)?;
    let current = inst.get(tag)?.as_str()?;
    let here: Vec<&str> = variants
        .iter()
        .find(|(v, _)| *v == current)
        .map(|(_, k)| k.clone())
        .unwrap_or_default();
    let owners_of = |k: &str| -> Vec<&str> {
        variants
            .iter()
            .filter(|(v, keys)| *v != current && keys.contains(&k))
            .map(|(v, _)| *v)
            .collect()
    };
    let mut dotted = path.to_vec();
    dotted.push(key.to_string());
    let owners = owners_of(key);
    if !owners.is_empty() {
        let message = format!(
            "`{key}` is {}; this section is `{tag}: {current}`",
            owned_by(&owners)
        );
        let help = match did_you_mean(key, here.iter().copied().filter(|k| *k != tag)) {
            Some(best) => format!(
                "remove `{key}`, set `{tag}: {}` to use it, or did you mean `{best}`?",
                owners[0]
            ),
            None => format!("remove `{key}`, or set `{tag}: {}` to use it", owners[0]),
        };
        return Some(Diagnostic::error(dotted.join("."), message).with_help(help));
    }
    // A typo of another variant's key, unless it is closer to one this variant takes.
    if did_you_mean(key, here.iter().copied()).is_some() {
        return None;
    }
    let mut others: Vec<&str> = variants
        .iter()
        .filter(|(v, _)| *v != current)
        .flat_map(|(_, keys)| keys.iter().copied())
        .filter(|k| *k != tag && !here.contains(k))
        .collect();
    others.sort_unstable();
    others.dedup();
    let best = did_you_mean(key, others.iter().copied())?;
    Some(
        Diagnostic::error(
            dotted.join("."),
            format!("unknown key `{key}` in {}", section_name(path)),
        )
        .with_help(format!(
            "did you mean `{best}`? it is {}; this section is `{tag}: {current}`",
            owned_by(&owners_of(best))
        )),
    )
}

/// "a `moco` key", or "a key of `sgd` or `lars`".
fn owned_by(owners: &[&str]) -> String {
    if owners.len() == 1 {
        format!("a `{}` key", owners[0])
    } else {
        format!("a key of {}", either(owners))
    }
}

/// Whether `key` is the tag of a tagged section (the key its arms' `if` tests).
fn key_is_tag(schema: &Value, key: &str) -> bool {
    schema
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|arm| {
            arm.get("if")
                .and_then(|c| c.get("properties"))
                .is_some_and(|p| p.get(key).is_some())
        })
}

fn lookup<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut v = doc;
    for seg in path {
        v = match v {
            Value::Array(a) => a.get(seg.parse::<usize>().ok()?)?,
            Value::Object(o) => o.get(seg)?,
            _ => return None,
        };
    }
    Some(v)
}

fn json_kind(v: Option<&Value>) -> String {
    match v {
        None => "nothing".into(),
        Some(Value::Null) => "null".into(),
        Some(Value::Bool(b)) => format!("the boolean `{b}`"),
        Some(Value::Number(n)) => format!("the number `{n}`"),
        Some(Value::String(s)) => format!("the string `{s}`"),
        Some(Value::Array(a)) => format!("a sequence of {} item(s)", a.len()),
        Some(Value::Object(_)) => "a mapping".into(),
    }
}

fn type_name(t: &str) -> &str {
    match t {
        "object" => "a mapping",
        "array" => "a sequence",
        "string" => "a string",
        "integer" => "an integer",
        "number" => "a number",
        "boolean" => "a boolean (true/false)",
        "null" => "null",
        other => other,
    }
}

fn section_name(path: &[String]) -> String {
    if path.is_empty() {
        "the top level".into()
    } else {
        format!("`{}`", path.join("."))
    }
}

fn first_sentence(schema: Option<&Value>) -> Option<String> {
    let d = schema?.get("description")?.as_str()?;
    let s = d.split(". ").next().unwrap_or(d).trim_end_matches('.');
    Some(s.replace('\n', " "))
}

impl Validator {
    fn describe(
        &self,
        err: &jsonschema::ValidationError<'_>,
        path: &[String],
        doc: &Value,
        instance: Option<&Value>,
        root: &Node,
    ) -> Vec<Diagnostic> {
        use jsonschema::error::{TypeKind, ValidationErrorKind as K};
        let schema = self.schema_at(doc, path);
        let dotted = path.join(".");
        let loc = root.locate(path);
        // Nulls and containers start at awkward places (the next token, the first item):
        // point at their key instead.
        let value_span = match instance {
            Some(Value::Null | Value::Object(_)) if loc.key.is_some() => loc.key,
            _ if path.is_empty() => Some(crate::diag::Span {
                line: 1,
                col: 1,
                len: 1,
                ..loc.value
            }),
            _ => Some(loc.value),
        };
        let key_or_value = if path.is_empty() {
            value_span
        } else {
            Some(loc.key.unwrap_or(loc.value))
        };
        let d = match err.kind() {
            K::AdditionalProperties { unexpected } => {
                let allowed_owned = self.allowed_keys(doc, path);
                let allowed: Vec<&str> = allowed_owned.iter().map(String::as_str).collect();
                return unexpected
                .iter()
                .map(|k| {
                    let mut p = path.to_vec();
                    p.push(k.clone());
                    let l = root.locate(&p);
                    let span = Some(l.key.unwrap_or(l.value));
                    if let Some(d) = schema.and_then(|s| other_variant_key(s, instance?, path, k)) {
                        return d.with_span(span);
                    }
                    let mut d = Diagnostic::error(p.join("."), format!("unknown key `{k}` in {}", section_name(path))).with_span(span);
                    if let Some(best) = did_you_mean(k, allowed.iter().copied()) {
                        d = d.with_help(format!("did you mean `{best}`?"));
                    } else if k == "normalize" && path.len() >= 2 && path[0] == "augment" {
                        d = d.with_help("normalisation is set once, in `data.normalize` (it also applies to evaluation images)");
                    } else if !allowed.is_empty() {
                        d = d.with_help(format!("expected one of: {}", allowed.join(", ")));
                    }
                    d
                })
                .collect();
            }
            K::Required { property } => {
                let p = property.as_str().unwrap_or_default();
                let prop_schema = schema.and_then(|s| {
                    let direct = s.get("properties").and_then(|ps| ps.get(p));
                    direct.or_else(|| self.selected_arm(s, instance?)?.get("properties")?.get(p))
                });
                let mut d = Diagnostic::error(
                    dotted.clone(),
                    format!("missing required key `{p}` in {}", section_name(path)),
                )
                .with_span(key_or_value);
                if let Some(desc) = first_sentence(prop_schema) {
                    d = d.with_help(format!("add `{p}:` ({desc})"));
                }
                d
            }
            K::Type { kind } => {
                let expected = match kind {
                    TypeKind::Single(t) => type_name(&t.to_string()).to_string(),
                    TypeKind::Multiple(ts) => ts
                        .iter()
                        .map(|t| type_name(&t.to_string()).to_string())
                        .collect::<Vec<_>>()
                        .join(" or "),
                };
                let mut d = Diagnostic::error(
                    dotted.clone(),
                    format!("expected {expected}, found {}", json_kind(instance)),
                )
                .with_span(value_span);
                if expected.contains("integer")
                    && matches!(instance, Some(Value::Number(n)) if n.is_f64())
                {
                    d = d.with_help("this value must be a whole number");
                } else if matches!(instance, Some(Value::String(s)) if s.parse::<f64>().is_ok()) {
                    d = d.with_help("remove the quotes to write a number");
                }
                d
            }
            K::Enum { options } => {
                // Numbers too (RotNet's angles), written as a person would.
                let opts: Vec<String> = options
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                let found = instance
                    .map(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string())
                    })
                    .unwrap_or_default();
                // A list entry is named by its list: "`rotations` entry", not "`1`".
                let what = match path {
                    [.., list, i] if i.parse::<usize>().is_ok() => format!("`{list}` entry"),
                    [.., k] => format!("`{k}`"),
                    [] => "value".to_string(),
                };
                let mut d = Diagnostic::error(
                    dotted.clone(),
                    format!(
                        "unknown {what} `{found}`; expected one of: {}",
                        opts.join(", ")
                    ),
                )
                .with_span(value_span);
                if let Some(best) = did_you_mean(&found, opts.iter().map(String::as_str)) {
                    d = d.with_help(format!("did you mean `{best}`?"));
                }
                d
            }
            K::Maximum { .. } if dotted == "version" => Diagnostic::error(
                dotted.clone(),
                format!(
                    "unsupported recipe language version {}; this build reads version 1",
                    json_kind(instance).trim_start_matches("the number ")
                ),
            )
            .with_span(value_span)
            .with_help("write `version: 1`, or use a newer `recipe`"),
            K::AnyOf { .. } => {
                let arms: Vec<String> = schema
                    .and_then(|s| s.get("anyOf"))
                    .and_then(Value::as_array)
                    .map(|a| a.iter().map(|arm| arm_phrase(arm, false)).collect())
                    .unwrap_or_default();
                Diagnostic::error(
                    dotted.clone(),
                    format!(
                        "expected {}, found {}",
                        if arms.is_empty() {
                            "another kind of value".to_string()
                        } else {
                            arms.join(", or ")
                        },
                        json_kind(instance)
                    ),
                )
                .with_span(value_span)
            }
            K::Minimum { limit } => bound(path, instance, "at least", limit).with_span(value_span),
            K::ExclusiveMinimum { limit } => {
                bound(path, instance, "greater than", limit).with_span(value_span)
            }
            K::Maximum { limit } => bound(path, instance, "at most", limit).with_span(value_span),
            K::ExclusiveMaximum { limit } => {
                let mut d = bound(path, instance, "below", limit).with_span(value_span);
                if path.iter().any(|s| s.contains("momentum") || s == "betas")
                    && number(limit) == "1"
                {
                    d = d.with_help(
                        "a momentum of 1 never updates; values like 0.9 or 0.99 are usual",
                    );
                }
                d
            }
            K::MinItems { limit } | K::MaxItems { limit } => {
                let (lo, hi) = schema_item_bounds(schema).unwrap_or((*limit, *limit));
                let expect = if lo == hi {
                    format!("exactly {lo}")
                } else {
                    format!("between {lo} and {hi}")
                };
                let mut d = Diagnostic::error(
                    dotted.clone(),
                    format!("expected {expect} item(s), found {}", json_kind(instance)),
                )
                .with_span(value_span);
                if lo == 2 && hi == 2 {
                    d = d.with_help("write a range as `[min, max]`");
                }
                d
            }
            K::MinProperties { .. } | K::MaxProperties { .. } => {
                let ops: Vec<&str> = schema
                    .and_then(|s| s.get("properties"))
                    .and_then(Value::as_object)
                    .map(|p| p.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                Diagnostic::error(dotted.clone(), format!("expected a mapping with exactly one key, found {}", json_kind(instance)))
                .with_span(value_span)
                .with_help(format!("write each op as its own list item, e.g. `- horizontal_flip: {{p: 0.5}}`; ops: {}", ops.join(", ")))
            }
            K::MinLength { .. } => Diagnostic::error(dotted.clone(), "expected a non-empty string")
                .with_span(value_span),
            K::Pattern { pattern } => Diagnostic::error(
                dotted.clone(),
                format!(
                    "{} does not match the pattern `{pattern}`",
                    json_kind(instance)
                ),
            )
            .with_span(value_span)
            .with_help("use letters, digits, `_`, `-` and `.`, starting with a letter or digit"),
            _ => Diagnostic::error(dotted.clone(), err.to_string()).with_span(value_span),
        };
        vec![d]
    }
}

/// "`temperature` must be greater than 0, found 0" (for a sequence item: "each value
/// of `betas` …").
/// "a number ≥ 0", "a non-empty list of numbers ≥ 0": one `anyOf` arm in words.
fn arm_phrase(arm: &Value, plural: bool) -> String {
    let kind = arm.get("type").and_then(Value::as_str).unwrap_or("value");
    if kind == "array" {
        let items = arm
            .get("items")
            .map_or("values".to_string(), |i| arm_phrase(i, true));
        let non_empty = arm.get("minItems").and_then(Value::as_u64) == Some(1);
        return format!(
            "{}list of {items}",
            if non_empty { "a non-empty " } else { "a " }
        );
    }
    let name = type_name(kind);
    let mut out = if plural {
        format!(
            "{}s",
            name.trim_start_matches("a ").trim_start_matches("an ")
        )
    } else {
        name.to_string()
    };
    for (key, rel) in [
        ("minimum", "≥"),
        ("exclusiveMinimum", ">"),
        ("maximum", "≤"),
        ("exclusiveMaximum", "<"),
    ] {
        if let Some(v) = arm.get(key) {
            out.push_str(&format!(" {rel} {}", number(v)));
        }
    }
    out
}

fn bound(path: &[String], instance: Option<&Value>, relation: &str, limit: &Value) -> Diagnostic {
    let key = path.iter().rev().find(|s| s.parse::<usize>().is_err());
    let what = match (key, path.last()) {
        (Some(k), Some(last)) if last != k => format!("each value of `{k}`"),
        (Some(k), _) => format!("`{k}`"),
        (None, _) => "the value".to_string(),
    };
    let found = match instance {
        Some(Value::Number(n)) => number(&Value::Number(n.clone())),
        other => json_kind(other),
    };
    Diagnostic::error(
        path.join("."),
        format!("{what} must be {relation} {}, found {found}", number(limit)),
    )
}

/// A schema bound as written by a person: `1`, not `1.0`.
fn number(v: &Value) -> String {
    match v.as_f64() {
        Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
        _ => v.to_string(),
    }
}

fn schema_item_bounds(schema: Option<&Value>) -> Option<(u64, u64)> {
    let s = schema?;
    Some((s.get("minItems")?.as_u64()?, s.get("maxItems")?.as_u64()?))
}
