//! Errors found in a flow before anything runs, each pointing at the flow file.
//!
//! A [`Diagnostic`] has a stable code (`missing-input`, `cycle`, ...), a message that names the node, a
//! primary location (`file:line:col`, rendered with the source line and a caret), optional secondary
//! locations (the other side of a type mismatch, the first of two duplicate names) and a help line that
//! says how to fix it. [`Diagnostics`] holds all errors of a flow: validation does not stop at the first.

use std::fmt::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A flow file's text, with line starts for `line:col`.
#[derive(Debug)]
pub struct SourceFile {
    /// Path as given by the user.
    pub path: PathBuf,
    /// Full text.
    pub text: String,
    line_starts: Vec<usize>,
}

impl SourceFile {
    /// Wraps a file's text.
    pub fn new(path: impl Into<PathBuf>, text: impl Into<String>) -> Arc<SourceFile> {
        let text = text.into();
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Arc::new(SourceFile { path: path.into(), text, line_starts })
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.line_starts.partition_point(|&s| s <= offset) - 1;
        let start = self.line_starts[line];
        let col = self.text.get(start..offset).map(|s| s.chars().count()).unwrap_or(offset - start);
        (line + 1, col + 1)
    }
}

/// A place in a flow file, with what it says about the error.
#[derive(Debug, Clone)]
pub struct Label {
    /// The file.
    pub file: Arc<SourceFile>,
    /// Byte range.
    pub span: Range<usize>,
    /// What is wrong there.
    pub text: String,
}

impl Label {
    /// A label on `span` of `file`.
    pub fn new(file: &Arc<SourceFile>, span: Range<usize>, text: impl Into<String>) -> Label {
        Label { file: file.clone(), span, text: text.into() }
    }

    /// `path:line:col`.
    pub fn location(&self) -> String {
        let (line, col) = self.file.line_col(self.span.start);
        format!("{}:{line}:{col}", self.file.path.display())
    }
}

/// One error in a flow.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    /// Stable, machine-readable kind, e.g. `missing-input`.
    pub code: &'static str,
    /// The message; names the node.
    pub message: String,
    /// The node it is about, if any.
    pub node: Option<String>,
    /// Where.
    pub primary: Option<Label>,
    /// Other places involved.
    pub secondary: Vec<Label>,
    /// How to fix it.
    pub help: Option<String>,
}

impl Diagnostic {
    /// A diagnostic without location.
    pub fn new(code: &'static str, message: impl Into<String>) -> Diagnostic {
        Diagnostic { code, message: message.into(), node: None, primary: None, secondary: Vec::new(), help: None }
    }

    /// Sets the primary location, if any.
    pub fn at(mut self, label: impl Into<Option<Label>>) -> Self {
        self.primary = label.into();
        self
    }

    /// Adds a secondary location.
    pub fn also(mut self, label: Label) -> Self {
        self.secondary.push(label);
        self
    }

    /// Sets the node.
    pub fn node(mut self, node: impl AsRef<str>) -> Self {
        self.node = Some(node.as_ref().to_string());
        self
    }

    /// Sets the help line (ignored when `None`).
    pub fn help(mut self, help: impl Into<Option<String>>) -> Self {
        self.help = help.into();
        self
    }

    /// `path:line:col` of the primary location.
    pub fn location(&self) -> Option<String> {
        self.primary.as_ref().map(Label::location)
    }

    /// Renders like a compiler error: message, `--> file:line:col`, the source line with a caret, help.
    pub fn render(&self, color: bool) -> String {
        let (red, blue, bold, reset) =
            if color { ("\x1b[1;31m", "\x1b[1;34m", "\x1b[1m", "\x1b[0m") } else { ("", "", "", "") };
        let mut out = format!("{red}error[{}]{reset}{bold}: {}{reset}\n", self.code, self.message);
        let labels = self.primary.iter().map(|l| (l, true)).chain(self.secondary.iter().map(|l| (l, false)));
        for (label, primary) in labels {
            let (line, col) = label.file.line_col(label.span.start);
            let text = label.file.text.lines().nth(line - 1).unwrap_or_default().trim_end_matches('\r');
            let pad = " ".repeat(line.to_string().len());
            let (arrow, mark, caret) = if primary { ("-->", red, "^") } else { (":::", blue, "-") };
            // under the span, at least one caret, at most to the end of the line
            let span_len = label.span.end.min(label.file.text.len()).saturating_sub(label.span.start);
            let width = span_len.clamp(1, text.chars().count().saturating_sub(col - 1).max(1));
            let _ = writeln!(out, "{pad}{blue}{arrow}{reset} {}:{line}:{col}", label.file.path.display());
            let _ = writeln!(out, "{pad} {blue}|{reset}\n{blue}{line}{reset} {blue}|{reset} {text}");
            let (indent, carets) = (" ".repeat(col - 1), caret.repeat(width));
            let _ = writeln!(out, "{pad} {blue}|{reset} {indent}{mark}{carets} {}{reset}", label.text);
        }
        if let Some(help) = &self.help {
            let _ = writeln!(out, "  = {bold}help{reset}: {help}");
        }
        out
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location() {
            Some(loc) => write!(f, "{loc}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Every error found in a flow.
#[derive(Debug, Clone)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Renders all, separated by blank lines, with a count at the end.
    pub fn render(&self, color: bool) -> String {
        let mut out: String = self.0.iter().map(|d| d.render(color) + "\n").collect();
        let n = self.0.len();
        let _ = writeln!(out, "flow is invalid: {n} error{} (nothing was run)", if n == 1 { "" } else { "s" });
        out
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(false))
    }
}

impl std::error::Error for Diagnostics {}

/// Reads a flow file, or says which file could not be read.
pub fn read_source(path: &Path) -> Result<Arc<SourceFile>, Diagnostics> {
    std::fs::read_to_string(path).map(|text| SourceFile::new(path, text)).map_err(|e| {
        Diagnostics(vec![
            Diagnostic::new("unreadable-flow", format!("cannot read flow file {}: {e}", path.display()))
                .help("check the path; flows usually live in flows/*.toml".to_string()),
        ])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_characters() {
        let f = SourceFile::new("f.toml", "a = 1\nbé = 2\n");
        assert_eq!(f.line_col(0), (1, 1));
        assert_eq!(f.line_col(6), (2, 1));
        assert_eq!(f.line_col(9), (2, 3)); // after 'b' and 'é' (2 bytes)
    }

    #[test]
    fn render_points_at_the_span() {
        let f = SourceFile::new("flows/x.toml", "[nodes.a]\nfn = \"nope\"\n");
        let d = Diagnostic::new("unknown-function", "node `a` uses unknown function `nope`")
            .at(Label::new(&f, 15..21, "not a registered node"))
            .help(Some("did you mean `note`?".into()));
        let text = d.render(false);
        assert!(text.contains("--> flows/x.toml:2:6"), "{text}");
        assert!(text.contains("2 | fn = \"nope\""), "{text}");
        assert!(text.contains("  |      ^^^^^^ not a registered node"), "{text}");
        assert!(text.contains("= help: did you mean `note`?"), "{text}");
        assert_eq!(d.to_string(), "flows/x.toml:2:6: node `a` uses unknown function `nope`");
    }
}
