//! `--grid PATH=[v1, v2, …]` arguments: parsing them into [`Axis`]es whose values are
//! overrides pointing into the argument, and expanding the axes into combinations
//! (the whole Cartesian product, or a seeded sample of it).

use std::collections::BTreeSet;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::diag::{Diagnostic, Sources, Span};
use crate::spec::load::{GRID_SOURCE, Override};
use crate::spec::yaml::{self, NodeKind};

/// Most combinations one sweep runs (after sampling).
pub const MAX_COMBINATIONS: usize = 1000;

/// One swept key: its dotted path and its values, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Axis {
    /// The `--grid` argument as typed.
    pub arg: String,
    /// The dotted path (`loss.temperature`).
    pub path: String,
    /// Each value as an override of `path`, its span inside `arg` (so a recipe
    /// diagnostic about it shows the argument with a caret under the value).
    pub values: Vec<Override>,
}

impl Axis {
    /// The value texts as typed (`0.1`, `{method: moco}`).
    pub fn texts(&self) -> Vec<&str> {
        self.values.iter().map(|o| o.value.1.as_str()).collect()
    }
}

/// Problems with the `--grid` arguments themselves, as diagnostics pointing into them.
#[derive(Debug)]
pub struct GridErrors {
    /// The arguments, as sources.
    pub sources: Sources,
    /// Every problem found, in argument order.
    pub diagnostics: Vec<Diagnostic>,
}

/// Parses every `--grid` argument, reporting every problem at once: not `path=[…]`,
/// a value list that is not YAML or not a list, an empty list, a value given twice, a
/// path swept twice.
pub fn parse_axes(args: &[String]) -> Result<Vec<Axis>, GridErrors> {
    let mut sources = Sources::new();
    let mut diagnostics = Vec::new();
    let mut axes: Vec<Axis> = Vec::new();
    for arg in args {
        let file = sources.add(GRID_SOURCE, arg.as_str());
        let whole = Span {
            file,
            line: 1,
            col: 1,
            len: arg.chars().count(),
        };
        let malformed = || {
            Diagnostic::error(
                "",
                format!("`--grid {arg}` is not of the form `path.to.key=[value, value, …]`"),
            )
            .with_span(Some(whole))
            .with_help(
                "e.g. `--grid loss.temperature=[0.1, 0.2, 0.5]` (the values are a YAML list)",
            )
        };
        let Some((path_text, value_text)) = arg.split_once('=') else {
            diagnostics.push(malformed());
            continue;
        };
        let path = path_text.trim().to_string();
        if path.split('.').any(str::is_empty) {
            diagnostics.push(malformed());
            continue;
        }
        let offset = path_text.chars().count() + 1;
        let value_span = Span {
            col: offset + 1,
            len: value_text.chars().count().max(1),
            ..whole
        };
        if let Some(first) = axes.iter().find(|a| a.path == path) {
            diagnostics.push(
                Diagnostic::error(path.clone(), format!("`{path}` is swept twice"))
                    .with_span(Some(Span {
                        len: path_text.chars().count().max(1),
                        ..whole
                    }))
                    .with_help(format!(
                        "give all its values in one argument (the first is `--grid {}`)",
                        first.arg
                    )),
            );
            continue;
        }
        let node = match yaml::parse(value_text, file) {
            Ok(n) => n,
            Err(ds) => {
                diagnostics.extend(ds.into_iter().map(|mut d| {
                    if let Some(s) = &mut d.span
                        && s.line == 1
                    {
                        s.col += offset;
                    }
                    d.path = path.clone();
                    d
                }));
                continue;
            }
        };
        let NodeKind::Seq(items) = &node.kind else {
            diagnostics.push(
                Diagnostic::error(
                    path.clone(),
                    format!(
                        "`--grid` takes a list of values; `{}` is {}",
                        value_text.trim(),
                        node.kind.describe()
                    ),
                )
                .with_span(Some(value_span))
                .with_help(format!(
                    "write `{path}=[{}]` (one value), or `{path}=[a, b, c]`",
                    value_text.trim()
                )),
            );
            continue;
        };
        if items.is_empty() {
            diagnostics.push(
                Diagnostic::error(path.clone(), format!("`{path}` has no values to sweep"))
                    .with_span(Some(value_span))
                    .with_help(format!("give at least one value: `{path}=[a, b]`")),
            );
            continue;
        }
        let chars: Vec<char> = arg.chars().collect();
        // The closing bracket of a one-line flow list ends the last value.
        let close = chars.iter().rposition(|&c| c == ']');
        let mut values = Vec::with_capacity(items.len());
        let mut seen: Vec<serde_json::Value> = Vec::new();
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            // The item's text as typed, from its first character to the next item's.
            let start = offset + item.span.col - 1;
            let end = items
                .get(i + 1)
                .filter(|n| n.span.line == 1)
                .map(|n| offset + n.span.col - 1)
                .or(close)
                .unwrap_or(chars.len());
            let typed = (item.span.line == 1 && start < end && end <= chars.len()).then(|| {
                let t: String = chars[start..end].iter().collect();
                let t = t.trim_end();
                t.strip_suffix(',').unwrap_or(t).trim_end().to_string()
            });
            // A value on another line (block YAML): its JSON form, which YAML reads alike.
            let (at, text) = match typed.filter(|t| !t.is_empty()) {
                Some(t) => (start, t),
                None => (offset, item.to_json().to_string()),
            };
            let json = item.to_json();
            if seen.contains(&json) {
                diagnostics.push(
                    Diagnostic::error(
                        path.clone(),
                        format!("the value `{text}` of `{path}` is given twice"),
                    )
                    .with_span(Some(Span {
                        col: at + 1,
                        len: text.chars().count().max(1),
                        ..whole
                    }))
                    .with_help("each value is one combination; give it once"),
                );
                ok = false;
            }
            seen.push(json);
            values.push(Override {
                flag: GRID_SOURCE,
                arg: arg.clone(),
                path: path.split('.').map(str::to_string).collect(),
                value: (at, text),
            });
        }
        if ok {
            axes.push(Axis {
                arg: arg.clone(),
                path,
                values,
            });
        }
    }
    if diagnostics.is_empty() {
        Ok(axes)
    } else {
        Err(GridErrors {
            sources,
            diagnostics,
        })
    }
}

/// The number of combinations of the whole product, `None` past `u64`.
pub fn product_size(axes: &[Axis]) -> Option<u64> {
    axes.iter()
        .try_fold(1u64, |n, a| n.checked_mul(a.values.len() as u64))
}

/// The value indices (one per axis) of combination `index` of the product, the last
/// axis varying fastest (as nested loops over the axes in the order given).
pub fn decode(axes: &[Axis], mut index: u64) -> Vec<usize> {
    let mut out = vec![0; axes.len()];
    for (k, a) in axes.iter().enumerate().rev() {
        let n = a.values.len() as u64;
        out[k] = (index % n) as usize;
        index /= n;
    }
    out
}

/// The combinations to run, as value indices per axis: the whole product in order,
/// or with `random = Some((n, seed))` `n` distinct ones drawn with a seeded ChaCha8
/// generator (the same for the same axes, `n` and seed), kept in product order. The
/// whole product when `n` reaches its size. An error (for the user) when there are
/// more than [`MAX_COMBINATIONS`] or none.
pub fn expand(axes: &[Axis], random: Option<(usize, u64)>) -> Result<Vec<Vec<usize>>, String> {
    let sizes: Vec<String> = axes.iter().map(|a| a.values.len().to_string()).collect();
    let total = product_size(axes);
    let shape = if sizes.is_empty() {
        "no `--grid`".to_string()
    } else {
        sizes.join(" × ")
    };
    let Some(total) = total.filter(|&t| t > 0 && !axes.is_empty()) else {
        return Err(match total {
            None => format!("the grid ({shape}) has more combinations than can be counted"),
            Some(_) => format!(
                "the sweep has no combinations ({shape}): give at least one `--grid PATH=[a, b]`"
            ),
        });
    };
    let chosen: Vec<u64> = match random {
        Some((n, seed)) if (n as u64) < total => {
            if n > MAX_COMBINATIONS {
                return Err(format!(
                    "`--random {n}` asks for more than the {MAX_COMBINATIONS} combinations a \
                     sweep runs"
                ));
            }
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut set = BTreeSet::new();
            while set.len() < n {
                set.insert(rng.gen_range(0..total));
            }
            set.into_iter().collect()
        }
        _ => {
            if total > MAX_COMBINATIONS as u64 {
                return Err(format!(
                    "the grid has {total} combinations ({shape}), more than the \
                     {MAX_COMBINATIONS} a sweep runs; sample some with `--random N --seed S`"
                ));
            }
            (0..total).collect()
        }
    };
    Ok(chosen.into_iter().map(|i| decode(axes, i)).collect())
}

/// A file-name-safe form of a value text: letters, digits, `.`, `+` and `-` kept,
/// runs of anything else one `_`, at most 32 characters.
pub fn sanitize(text: &str) -> String {
    sanitize_to(text, 32)
}

/// [`sanitize`] to at most `max` characters.
pub fn sanitize_to(text: &str, max: usize) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '-') {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    let out = out.trim_matches('_');
    let out: String = out.chars().take(max).collect();
    if out.is_empty() { "_".into() } else { out }
}

/// The run directory name of combination `number` (1-based):
/// `0003-temperature=0.2-lr=0.1`, each axis by the last segment of its path.
pub fn dir_name(number: usize, axes: &[Axis], choice: &[usize]) -> String {
    let mut name = format!("{number:04}");
    for (a, &v) in axes.iter().zip(choice) {
        let key = a.path.rsplit('.').next().unwrap_or(&a.path);
        name.push('-');
        name.push_str(&sanitize(key));
        name.push('=');
        name.push_str(&sanitize(&a.values[v].value.1));
    }
    // Keep well inside file-system name limits.
    name.chars().take(120).collect()
}

/// `loss.temperature=0, optimizer.lr=0.1`: a combination as the user reads it.
pub fn label(axes: &[Axis], choice: &[usize]) -> String {
    axes.iter()
        .zip(choice)
        .map(|(a, &v)| format!("{}={}", a.path, a.values[v].value.1))
        .collect::<Vec<_>>()
        .join(", ")
}
