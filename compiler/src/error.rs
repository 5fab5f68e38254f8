//! Compile errors that point at the source: line, column and a caret excerpt.

use core::fmt;

/// Where in the source something is: 1-based line and column (in characters), and how many
/// characters it spans (at least one, so the caret is always visible).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub line: usize,
    pub col: usize,
    pub len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    pub span: Span,
    pub message: String,
    /// The source line the error is on, without its line break.
    pub source_line: String,
}

impl CompileError {
    pub fn new(span: Span, message: impl Into<String>, source: &str) -> CompileError {
        CompileError {
            span,
            message: message.into(),
            source_line: source
                .lines()
                .nth(span.line.saturating_sub(1))
                .unwrap_or("")
                .to_string(),
        }
    }

    /// The excerpt: the line with a gutter, and carets under the offending characters.
    pub fn excerpt(&self) -> String {
        let number = self.span.line.to_string();
        let pad = " ".repeat(number.len());
        let indent = " ".repeat(self.span.col.saturating_sub(1));
        let carets = "^".repeat(self.span.len.max(1));
        format!(
            "{pad} |\n{number} | {}\n{pad} | {indent}{carets}",
            self.source_line
        )
    }
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "error at line {}, column {}: {}\n{}",
            self.span.line,
            self.span.col,
            self.message,
            self.excerpt()
        )
    }
}

impl std::error::Error for CompileError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caret_sits_under_the_span() {
        let src = "input x\nadd y = x zz\n";
        let e = CompileError::new(
            Span {
                line: 2,
                col: 11,
                len: 2,
            },
            "undefined name `zz`",
            src,
        );
        let shown = e.to_string();
        assert!(shown.starts_with("error at line 2, column 11: undefined name `zz`"));
        assert!(
            shown.contains("2 | add y = x zz\n  |           ^^"),
            "{shown}"
        );
    }
}
