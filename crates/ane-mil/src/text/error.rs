//! Diagnostics for MIL text: byte spans, line/column, and rustc-style rendering.

use std::fmt;

/// A byte range in the source text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub start: u32,
    /// One past the last byte.
    pub end: u32,
}

impl Span {
    /// A span from `start` to `end`.
    pub fn new(start: usize, end: usize) -> Self {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }

    /// The smallest span covering both.
    pub fn until(self, other: Span) -> Span {
        Span {
            start: self.start.min(other.start),
            end: self.end.max(other.end),
        }
    }

    /// 1-based line and column (in characters) of the start.
    pub fn line_col(self, source: &str) -> (usize, usize) {
        let start = (self.start as usize).min(source.len());
        let before = &source[..floor_char_boundary(source, start)];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// An error found in MIL text, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseError {
    /// What is wrong, e.g. "expected `=`, found `;`".
    pub message: String,
    /// Where.
    pub span: Span,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Extra hints, printed as `note:` lines.
    pub notes: Vec<String>,
}

impl ParseError {
    /// An error at `span` of `source`.
    pub fn new(source: &str, span: Span, message: impl Into<String>) -> Self {
        let (line, column) = span.line_col(source);
        ParseError {
            message: message.into(),
            span,
            line,
            column,
            notes: Vec::new(),
        }
    }

    /// Adds a note.
    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    /// Renders the error rustc-style: message, `--> path:line:col`, the line, a caret.
    pub fn render(&self, path: &str, source: &str) -> String {
        render_diagnostic(path, source, self.span, &self.message, &self.notes)
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

impl std::error::Error for ParseError {}

/// Renders `message` at `span` of `source` with a caret line, as an error.
pub fn render_diagnostic(
    path: &str,
    source: &str,
    span: Span,
    message: &str,
    notes: &[String],
) -> String {
    render_labelled("error", path, source, span, message, notes)
}

/// [`render_diagnostic`] with another label than `error` (`warning`).
pub fn render_labelled(
    label: &str,
    path: &str,
    source: &str,
    span: Span,
    message: &str,
    notes: &[String],
) -> String {
    let (line, col) = span.line_col(source);
    let text = source.lines().nth(line - 1).unwrap_or("");
    let gutter = line.to_string().len();
    let width = {
        let start = span.start as usize;
        let end = (span.end as usize).min(source.len()).max(start);
        let line_end = source[floor_char_boundary(source, start.min(source.len()))..]
            .find('\n')
            .map_or(source.len(), |i| start + i);
        source
            .get(start..end.min(line_end))
            .map_or(1, |s| s.chars().count().max(1))
    };
    let mut out = format!("{label}: {message}\n");
    out += &format!("{:gutter$}--> {path}:{line}:{col}\n", "");
    out += &format!("{:gutter$} |\n", "");
    out += &format!("{line} | {text}\n");
    let pad: String = text
        .chars()
        .take(col - 1)
        .map(|c| if c == '\t' { '\t' } else { ' ' })
        .collect();
    out += &format!("{:gutter$} | {pad}{}\n", "", "^".repeat(width));
    for n in notes {
        out += &format!("{:gutter$} = note: {n}\n", "");
    }
    out
}
