//! Problems found while loading a site, each pinned to a file and line.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// A problem found in a site file; `line` is 1-based (0 when no line applies). One type for the
/// whole site: the image builder reports recipe problems with it too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
    pub severity: Severity,
}

impl Diagnostic {
    pub fn error(file: &Path, line: usize, message: String) -> Diagnostic {
        Diagnostic {
            file: file.to_path_buf(),
            line,
            message,
            severity: Severity::Error,
        }
    }

    pub fn warning(file: &Path, line: usize, message: String) -> Diagnostic {
        Diagnostic {
            severity: Severity::Warning,
            ..Diagnostic::error(file, line, message)
        }
    }
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sev = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        // `file:1` for file-wide problems, so editors and `grep -n`-style tools can jump there.
        write!(
            f,
            "{}:{}: {sev}: {}",
            self.file.display(),
            self.line.max(1),
            self.message
        )
    }
}

/// Collects diagnostics for one file and turns byte offsets into line numbers.
pub struct FileDiags {
    pub file: PathBuf,
    /// Byte offset of the start of each line, so that a host file of 10,000 entries costs
    /// a binary search per lookup instead of a scan from the top.
    line_starts: Vec<usize>,
    pub out: Vec<Diagnostic>,
}

impl FileDiags {
    pub fn new(site_dir: &Path, path: &Path, text: &str) -> Self {
        let file = path.strip_prefix(site_dir).unwrap_or(path).to_path_buf();
        let line_starts = std::iter::once(0)
            .chain(
                text.bytes()
                    .enumerate()
                    .filter(|&(_, b)| b == b'\n')
                    .map(|(i, _)| i + 1),
            )
            .collect();
        FileDiags {
            file,
            line_starts,
            out: Vec::new(),
        }
    }

    pub fn line_of(&self, offset: usize) -> usize {
        match self.line_starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }

    pub fn error_at(&mut self, offset: usize, message: impl Into<String>) {
        let line = self.line_of(offset);
        self.push(line, Severity::Error, message);
    }

    pub fn push(&mut self, line: usize, severity: Severity, message: impl Into<String>) {
        self.out.push(Diagnostic {
            file: self.file.clone(),
            line,
            message: message.into(),
            severity,
        });
    }

    /// A TOML syntax or schema error: toml reports a byte span and a multi-line message
    /// with a caret drawing; keep only the sentence that says what is wrong.
    pub fn toml_error(&mut self, e: &toml::de::Error) {
        let line = e.span().map(|s| self.line_of(s.start)).unwrap_or(0);
        self.push(line, Severity::Error, e.message().trim().to_string());
    }
}

pub fn has_errors(diags: &[Diagnostic]) -> bool {
    diags.iter().any(|d| d.severity == Severity::Error)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The obvious count, as the oracle for the index.
    fn line_of(text: &str, offset: usize) -> usize {
        let end = offset.min(text.len());
        text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    #[test]
    fn indexed_lines_agree_with_counting() {
        let t = "a\nbb\n\nccc\n";
        let fd = FileDiags::new(Path::new("/"), Path::new("/x.toml"), t);
        for off in 0..t.len() + 3 {
            assert_eq!(fd.line_of(off), line_of(t, off), "offset {off}");
        }
    }

    #[test]
    fn lines_count_from_one() {
        let t = "a\nb\nc";
        assert_eq!(line_of(t, 0), 1);
        assert_eq!(line_of(t, 2), 2);
        assert_eq!(line_of(t, 4), 3);
        assert_eq!(line_of(t, 400), 3);
    }
}
