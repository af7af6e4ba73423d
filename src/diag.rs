//! Diagnostics: what is wrong in a recipe, where, and how to fix it.
//!
//! A [`Diagnostic`] carries the recipe path (`loss.queue_size`), a message saying what
//! was found and what was expected, an optional `help:` line, and a [`Span`] into one of
//! the [`Sources`] (a recipe file, a base file it extends, or a `--set` argument).
//! Rendering is styled like rustc (`error: …`, `--> file:line:col`, the source line and
//! a caret) or as JSON for machines. This module does no IO.

use serde::Serialize;

/// Identifies a source text in [`Sources`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct FileId(pub usize);

/// A region of a source text: 1-based line and column of its start, and its length
/// in characters on that line (at least 1 for rendering).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Span {
    /// Which source the span is in.
    pub file: FileId,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters.
    pub col: usize,
    /// Length in characters (rendered as that many carets, clipped to the line).
    pub len: usize,
}

/// One source text a diagnostic can point into.
#[derive(Clone, Debug)]
pub struct SourceFile {
    /// Display name (a path as the user gave it, or `--set` for overrides).
    pub name: String,
    /// The text, kept to show the offending line.
    pub text: String,
}

/// All source texts of one load, so spans stay small (`FileId` + position).
#[derive(Clone, Debug, Default)]
pub struct Sources {
    files: Vec<SourceFile>,
}

impl Sources {
    /// An empty set of sources.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a source and returns its id.
    pub fn add(&mut self, name: impl Into<String>, text: impl Into<String>) -> FileId {
        self.files.push(SourceFile {
            name: name.into(),
            text: text.into(),
        });
        FileId(self.files.len() - 1)
    }

    /// The source with id `id`.
    pub fn get(&self, id: FileId) -> &SourceFile {
        &self.files[id.0]
    }

    /// Line `line` (1-based) of source `id`, without its line break.
    pub fn line(&self, id: FileId, line: usize) -> Option<&str> {
        self.files
            .get(id.0)?
            .text
            .split('\n')
            .nth(line.checked_sub(1)?)
            .map(|l| l.strip_suffix('\r').unwrap_or(l))
    }
}

/// How serious a diagnostic is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The recipe cannot run.
    Error,
    /// The recipe runs, but probably not as intended.
    Warning,
}

/// One problem found in a recipe.
#[derive(Clone, Debug, PartialEq)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// Dotted path in the recipe (`augment.pipeline.0.random_resized_crop.scale`);
    /// empty for the whole document.
    pub path: String,
    /// What was found and what was expected.
    pub message: String,
    /// Where it is, when known.
    pub span: Option<Span>,
    /// A suggestion (`did you mean `temperature`?`).
    pub help: Option<String>,
}

impl Diagnostic {
    /// An error at `path`.
    pub fn error(path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Error,
            path: path.into(),
            message: message.into(),
            span: None,
            help: None,
        }
    }

    /// A warning at `path`.
    pub fn warning(path: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic {
            severity: Severity::Warning,
            ..Self::error(path, message)
        }
    }

    /// Attaches a source location.
    pub fn with_span(mut self, span: Option<Span>) -> Self {
        self.span = span;
        self
    }

    /// Attaches a `help:` line.
    pub fn with_help(mut self, help: impl Into<String>) -> Self {
        self.help = Some(help.into());
        self
    }

    /// Whether this diagnostic makes the recipe invalid.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// The closest candidate to `word` by edit distance, if it is close enough to be a
/// plausible typo (normalised Damerau-Levenshtein similarity ≥ 0.6, or a prefix match).
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let lower = word.to_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            let mut score = strsim::normalized_damerau_levenshtein(&lower, &c.to_lowercase());
            if c.len() >= 3 && (c.starts_with(&lower) || lower.starts_with(c)) && lower.len() >= 3 {
                score = score.max(0.7);
            }
            (score, c)
        })
        .filter(|(s, _)| *s >= 0.6)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// Renders diagnostics like rustc: `error: …`, `--> file:line:col`, the source line,
/// a caret under the problem, the recipe path, and `help:`.
pub fn render_human(diags: &[Diagnostic], sources: &Sources) -> String {
    let mut out = String::new();
    for d in diags {
        render_one(&mut out, d, sources);
        out.push('\n');
    }
    out
}

fn render_one(out: &mut String, d: &Diagnostic, sources: &Sources) {
    use std::fmt::Write;
    let label = match d.severity {
        Severity::Error => "error",
        Severity::Warning => "warning",
    };
    let _ = writeln!(out, "{label}: {}", d.message);
    let mut gutter = 1;
    if let Some(span) = d.span {
        let file = sources.get(span.file);
        gutter = span.line.to_string().len() + 1;
        let pad = " ".repeat(gutter);
        let _ = writeln!(
            out,
            "{}--> {}:{}:{}",
            &pad[1..],
            file.name,
            span.line,
            span.col
        );
        if let Some(line) = sources.line(span.file, span.line) {
            // Tabs would misalign the caret, so show them as one space each.
            let shown: String = line
                .chars()
                .map(|c| if c == '\t' { ' ' } else { c })
                .collect();
            let width = shown.chars().count();
            let start = span.col.saturating_sub(1).min(width);
            let len = span.len.max(1).min(width.saturating_sub(start).max(1));
            let _ = writeln!(out, "{pad}|");
            let _ = writeln!(out, "{} | {}", span.line, shown.trim_end());
            let _ = writeln!(out, "{pad}| {}{}", " ".repeat(start), "^".repeat(len));
        }
    }
    let pad = " ".repeat(gutter);
    if !d.path.is_empty() {
        let _ = writeln!(out, "{pad}= at: {}", d.path);
    }
    if let Some(help) = &d.help {
        let _ = writeln!(out, "{pad}= help: {help}");
    }
}

/// A diagnostic as JSON: `{severity, path, message, file, line, column, help}`.
#[derive(Serialize)]
struct JsonDiagnostic<'a> {
    severity: Severity,
    path: &'a str,
    message: &'a str,
    file: Option<&'a str>,
    line: Option<usize>,
    column: Option<usize>,
    help: Option<&'a str>,
}

/// Renders diagnostics as a JSON array, one object per diagnostic.
pub fn render_json(diags: &[Diagnostic], sources: &Sources) -> serde_json::Value {
    let items: Vec<_> = diags
        .iter()
        .map(|d| JsonDiagnostic {
            severity: d.severity,
            path: &d.path,
            message: &d.message,
            file: d.span.map(|s| sources.get(s.file).name.as_str()),
            line: d.span.map(|s| s.line),
            column: d.span.map(|s| s.col),
            help: d.help.as_deref(),
        })
        .collect();
    serde_json::to_value(items).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_words_only() {
        let keys = ["temperature", "momentum", "queue_size"];
        assert_eq!(did_you_mean("temprature", keys), Some("temperature"));
        assert_eq!(did_you_mean("queue", keys), Some("queue_size"));
        assert_eq!(did_you_mean("zebra", keys), None);
    }

    #[test]
    fn renders_caret_under_span() {
        let mut s = Sources::new();
        let f = s.add("r.yaml", "loss:\n  temprature: 0.5\n");
        let d = Diagnostic::error("loss.temprature", "unknown key `temprature`")
            .with_span(Some(Span {
                file: f,
                line: 2,
                col: 3,
                len: 10,
            }))
            .with_help("did you mean `temperature`?");
        let text = render_human(&[d], &s);
        assert_eq!(
            text,
            "error: unknown key `temprature`\n --> r.yaml:2:3\n  |\n2 |   temprature: 0.5\n  |   ^^^^^^^^^^\n  = at: loss.temprature\n  = help: did you mean `temperature`?\n\n"
        );
    }
}
