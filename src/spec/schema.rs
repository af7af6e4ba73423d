//! The recipe JSON Schema: generated from the types and refined for editors and for
//! precise diagnostics. [`super::validate`] applies it to a loaded document.
//!
//! schemars writes tagged enums as `oneOf`, which validators and editors report as
//! "matches none of the alternatives". [`generate`] rewrites them: an op list entry
//! (`- horizontal_flip: {…}`) becomes one object whose properties are all the ops, and
//! a `method:`/`name:`/`kind:`/`arch:`/`task:`/`format:`-tagged section becomes an
//! object with an `enum` tag (described, with one `enumDescriptions` entry per
//! variant, so completion explains each choice) and one `if`/`then` per variant. The
//! result is plain Draft 7 that yaml-language-server understands, and every
//! validation error points at one key or value.
//!
//! Three more refinements are for editors (checked with yaml-language-server 1.25):
//!
//! - **Required keys and `extends`.** A recipe that `extends` a base is a partial
//!   document: the base provides the keys it leaves out, so an editor must not ask for
//!   them. The schema therefore states *shape* (types, bounds, allowed keys) and
//!   *required keys* separately: every `required` list outside sequence items is moved
//!   out of the shape into one overlay that mirrors its nesting (`properties`, the
//!   tagged arms' `if`/`then`) and is applied at the root as
//!   `if: {required: [extends]}, else: <overlay>`. A recipe without `extends` is
//!   checked exactly as before; a recipe with it gets every check but "missing key".
//!   Sequence items (`downstream` tasks) keep their `required` keys in both cases,
//!   since `extends` replaces sequences whole. `recipe validate` loses nothing: the
//!   loader validates the *merged* document, from which `extends` is gone, so the
//!   overlay always applies there.
//! - **Hover text.** schemars writes a field whose type is a named definition as
//!   `{description, allOf: [{$ref}]}`, and editors then show the definition's text
//!   instead of the field's. Such wrappers become `{description, $ref}`:
//!   yaml-language-server (like vscode-json-languageservice) merges a `$ref` into its
//!   node without overwriting the node's own keys, while Draft 7 validators ignore a
//!   `$ref`'s siblings, which here are only annotations. For the same reason a tagged
//!   variant's description lives in the tag's `enumDescriptions`, not in its arm.
//! - **Numeric bounds** (`exclusiveMinimum`, `minimum`, `maximum`, …) are in the schema
//!   (see [`super::bounds`]), so the editor rejects `temperature: 0` as it is typed.

use schemars::r#gen::SchemaSettings;
use serde_json::{Map, Value, json};
use std::collections::BTreeSet;

use super::Recipe;

/// The committed schema, compiled in so validation never depends on the working directory.
pub const COMMITTED: &str = include_str!("../../schemas/recipe.schema.json");

/// Generates the recipe schema from the types (what `recipe schema` prints).
pub fn generate() -> Value {
    let settings = SchemaSettings::draft07().with(|s| {
        s.option_add_null_type = false;
        s.option_nullable = false;
    });
    let root = settings.into_generator().into_root_schema_for::<Recipe>();
    let mut value = serde_json::to_value(root).expect("a schema is plain JSON");
    refine(&mut value);
    split_required(&mut value);
    value
}

/// The generated schema as pretty JSON with a trailing newline (the committed form).
pub fn generate_pretty() -> String {
    let mut s = serde_json::to_string_pretty(&generate()).expect("a schema serialises");
    s.push('\n');
    s
}

/// Keywords that only annotate a schema; next to a `$ref` they are read by editors and
/// ignored by Draft 7 validators.
const ANNOTATIONS: [&str; 5] = ["description", "default", "title", "writeOnly", "readOnly"];

fn refine(v: &mut Value) {
    match v {
        Value::Object(obj) => {
            for child in obj.values_mut() {
                refine(child);
            }
            // schemars' numeric formats (`uint`, `double`) are not Draft 7 formats;
            // strict validators reject them, and `minimum` already carries the meaning.
            if obj.get("format").and_then(Value::as_str).is_some_and(|f| {
                f.starts_with("uint") || f.starts_with("int") || f == "double" || f == "float"
            }) {
                obj.remove("format");
            }
            if let Some(Value::Array(branches)) = obj.get("oneOf")
                && let Some(merged) = merge_external(branches)
                    .or_else(|| merge_internal(branches))
                    .or_else(|| merge_string_enum(branches))
            {
                obj.remove("oneOf");
                obj.remove("type");
                for (k, val) in merged {
                    obj.insert(k, val);
                }
            }
            // `{description, allOf: [{$ref}]}` → `{description, $ref}` (see the module docs).
            let lone_ref = match obj.get("allOf") {
                Some(Value::Array(all)) if all.len() == 1 => all[0]
                    .as_object()
                    .filter(|r| r.len() == 1)
                    .and_then(|r| r.get("$ref"))
                    .cloned(),
                _ => None,
            };
            if let Some(r) = lone_ref
                && obj
                    .keys()
                    .all(|k| k == "allOf" || ANNOTATIONS.contains(&k.as_str()))
            {
                obj.shift_remove("allOf");
                obj.insert("$ref".into(), r);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(refine),
        _ => {}
    }
}

/// `oneOf` of `{required: [k], properties: {k: S}}` (an externally tagged enum) →
/// one object with every `k` as an optional property and exactly one present.
fn merge_external(branches: &[Value]) -> Option<Map<String, Value>> {
    let mut props = Map::new();
    for b in branches {
        let props_b = b.get("properties")?.as_object()?;
        let req = b.get("required")?.as_array()?;
        if props_b.len() != 1 || req.len() != 1 {
            return None;
        }
        let (k, s) = props_b.iter().next()?;
        let mut s = s.clone();
        if let (Some(desc), Some(o)) = (b.get("description"), s.as_object_mut()) {
            // Put the variant's description next to its `$ref` for editors.
            o.entry("description").or_insert(desc.clone());
        }
        props.insert(k.clone(), s);
    }
    let mut out = Map::new();
    out.insert("type".into(), json!("object"));
    out.insert("properties".into(), Value::Object(props));
    out.insert("additionalProperties".into(), json!(false));
    out.insert("minProperties".into(), json!(1));
    out.insert("maxProperties".into(), json!(1));
    Some(out)
}

/// `oneOf` of documented single-value string enums (a unit enum whose variants have
/// doc comments) → one `enum`, with the descriptions kept in `enumDescriptions`, which
/// editors (yaml-language-server) show and validators ignore.
fn merge_string_enum(branches: &[Value]) -> Option<Map<String, Value>> {
    let mut values = Vec::new();
    let mut descriptions = Vec::new();
    for b in branches {
        let e = b.get("enum")?.as_array()?;
        if e.len() != 1 || !e[0].is_string() {
            return None;
        }
        values.push(e[0].clone());
        descriptions.push(b.get("description").cloned().unwrap_or(json!("")));
    }
    let mut out = Map::new();
    out.insert("type".into(), json!("string"));
    out.insert("enum".into(), Value::Array(values));
    out.insert("enumDescriptions".into(), Value::Array(descriptions));
    Some(out)
}

/// The tag property of an internally tagged variant: a property whose schema is a
/// single-valued string enum.
fn variant_tag(b: &Value) -> Option<(String, String)> {
    let props = b.get("properties")?.as_object()?;
    props.iter().find_map(|(k, s)| {
        let e = s.get("enum")?.as_array()?;
        (e.len() == 1 && b.get("required")?.as_array()?.contains(&json!(k)))
            .then(|| (k.clone(), e[0].as_str().map(str::to_string)))
            .and_then(|(k, v)| Some((k, v?)))
    })
}

/// `oneOf` of objects sharing a single-valued tag property (an internally tagged
/// enum) → an object with the tag as an `enum` and one `if`/`then` per variant. Each
/// variant's description moves to the tag's `enumDescriptions`, so completing or
/// hovering the tag's value explains it and hovering the section shows the field's
/// own description.
fn merge_internal(branches: &[Value]) -> Option<Map<String, Value>> {
    let first = variant_tag(branches.first()?)?;
    let tag = first.0;
    let mut values = Vec::new();
    let mut descriptions = Vec::new();
    let mut arms = Vec::new();
    for b in branches {
        let (t, val) = variant_tag(b)?;
        if t != tag {
            return None;
        }
        let mut then = b.clone();
        if let Some(o) = then.as_object_mut() {
            o.remove("type");
            descriptions.push(o.shift_remove("description").unwrap_or(json!("")));
        }
        arms.push(json!({
            "if": {"properties": {&tag: {"const": &val}}, "required": [&tag]},
            "then": then,
        }));
        values.push(val);
    }
    let mut tag_schema = Map::new();
    if let Some(d) = tag_description(&tag) {
        tag_schema.insert("description".into(), json!(d));
    }
    tag_schema.insert("type".into(), json!("string"));
    tag_schema.insert("enum".into(), json!(values));
    tag_schema.insert("enumDescriptions".into(), Value::Array(descriptions));
    let mut out = Map::new();
    out.insert("type".into(), json!("object"));
    out.insert("required".into(), json!([&tag]));
    out.insert("properties".into(), json!({ &tag: tag_schema }));
    out.insert("allOf".into(), Value::Array(arms));
    Some(out)
}

/// What each tag key selects, for hover and completion.
fn tag_description(tag: &str) -> Option<&'static str> {
    Some(match tag {
        "format" => "The dataset format; it decides which other keys `source` takes.",
        "arch" => "The backbone architecture; it decides which other keys `backbone` takes.",
        "method" => {
            "The contrastive method; it decides which other keys `loss` takes (queue, bank, prototypes, …)."
        }
        "name" => "The optimiser; it decides which other keys `optimizer` takes.",
        "kind" => {
            "The shape of the learning-rate schedule; it decides which other keys `schedule` takes."
        }
        "task" => "What this downstream task does; it decides which other keys the task takes.",
        _ => return None,
    })
}

/// Moves the `required` lists out of the schema's shape into an overlay applied only
/// to recipes without `extends` (see the module docs).
fn split_required(root: &mut Value) {
    let defs = root
        .get("definitions")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut partial = BTreeSet::new();
    collect_partial(root, &defs, &mut partial, 0);
    let Some(overlay) = overlay_of(root, &defs, &partial, None, 0) else {
        return;
    };
    strip_required(root);
    if let Some(Value::Object(d)) = root.get_mut("definitions") {
        for name in &partial {
            if let Some(s) = d.get_mut(name) {
                strip_required(s);
            }
        }
    }
    if let Some(o) = root.as_object_mut() {
        o.insert("if".into(), json!({"required": ["extends"]}));
        o.insert("else".into(), overlay);
        // Definitions last, as schemars writes them, so the file reads top-down.
        if let Some(d) = o.shift_remove("definitions") {
            o.insert("definitions".into(), d);
        }
    }
}

/// Deepest nesting the schema walks follow (the recipe schema has no cycles).
const MAX_SCHEMA_DEPTH: usize = 32;

fn definition<'a>(s: &Value, defs: &'a Map<String, Value>) -> Option<(&'a str, &'a Value)> {
    let name = s.get("$ref")?.as_str()?.strip_prefix("#/definitions/")?;
    defs.get_key_value(name).map(|(k, v)| (k.as_str(), v))
}

/// Names of the definitions reachable from `s` through mappings (not through sequence
/// items): the parts of a recipe a child may leave to its base.
fn collect_partial(s: &Value, defs: &Map<String, Value>, out: &mut BTreeSet<String>, depth: usize) {
    if depth > MAX_SCHEMA_DEPTH {
        return;
    }
    if let Some((name, d)) = definition(s, defs) {
        if out.insert(name.to_string()) {
            collect_partial(d, defs, out, depth + 1);
        }
        return;
    }
    for p in s
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|m| m.values())
    {
        collect_partial(p, defs, out, depth + 1);
    }
    for arm in s
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(then) = arm.get("then") {
            collect_partial(then, defs, out, depth + 1);
        }
    }
}

/// The required-keys overlay of `s`: its `required` (less the tag of a tagged arm,
/// which the section already requires), and the overlays of its properties, tagged
/// arms and — where their definition lost its `required` — sequence items.
fn overlay_of(
    s: &Value,
    defs: &Map<String, Value>,
    partial: &BTreeSet<String>,
    tag: Option<&str>,
    depth: usize,
) -> Option<Value> {
    if depth > MAX_SCHEMA_DEPTH {
        return None;
    }
    if let Some((_, d)) = definition(s, defs) {
        return overlay_of(d, defs, partial, tag, depth + 1);
    }
    let mut out = Map::new();
    if let Some(Value::Array(req)) = s.get("required") {
        let req: Vec<Value> = req
            .iter()
            .filter(|k| tag.is_none_or(|t| k.as_str() != Some(t)))
            .cloned()
            .collect();
        if !req.is_empty() {
            out.insert("required".into(), Value::Array(req));
        }
    }
    let mut props = Map::new();
    for (k, p) in s
        .get("properties")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
    {
        if let Some(o) = overlay_of(p, defs, partial, None, depth + 1) {
            props.insert(k.clone(), o);
        }
    }
    if !props.is_empty() {
        out.insert("properties".into(), Value::Object(props));
    }
    let mut arms = Vec::new();
    for arm in s
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(cond), Some(then)) = (arm.get("if"), arm.get("then")) else {
            continue;
        };
        let arm_tag = cond
            .get("properties")
            .and_then(Value::as_object)
            .and_then(|p| p.keys().next())
            .map(String::as_str);
        if let Some(o) = overlay_of(then, defs, partial, arm_tag, depth + 1) {
            arms.push(json!({"if": cond, "then": o}));
        }
    }
    if !arms.is_empty() {
        out.insert("allOf".into(), Value::Array(arms));
    }
    if let Some(items) = s.get("items")
        && definition(items, defs).is_some_and(|(name, _)| partial.contains(name))
        && let Some(o) = overlay_of(items, defs, partial, None, depth + 1)
    {
        out.insert("items".into(), o);
    }
    (!out.is_empty()).then_some(Value::Object(out))
}

/// Removes `required` from `s` and its inline subschemas along mappings and tagged
/// arms; `if` conditions (which test a tag) and sequence items keep theirs.
fn strip_required(s: &mut Value) {
    let Some(o) = s.as_object_mut() else { return };
    o.shift_remove("required");
    if let Some(Value::Object(props)) = o.get_mut("properties") {
        props.values_mut().for_each(strip_required);
    }
    if let Some(Value::Array(arms)) = o.get_mut("allOf") {
        for arm in arms {
            if let Some(then) = arm.get_mut("then") {
                strip_required(then);
            }
        }
    }
}
