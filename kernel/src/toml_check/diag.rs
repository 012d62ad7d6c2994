//! Positioned problems in a pipeline file, and how they are printed:
//! `hm.toml:12:5: error: unknown key `tmeout` in [steps.build]` plus an optional hint line.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem at one place in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The file as it should be displayed (as the user named it, not necessarily absolute).
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, counted in characters (not bytes), like the TOML parser's own messages.
    pub col: usize,
    /// What is wrong: a lowercase fragment.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: error: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

/// Whether `line` is the first line of a printed [`Diagnostic`]: `FILE:LINE:COL: error: ...`.
pub fn is_diagnostic_line(line: &str) -> bool {
    let Some((place, _)) = line.split_once(": error: ") else {
        return false;
    };
    let mut parts = place.rsplitn(3, ':');
    let col = parts.next();
    let row = parts.next();
    let file = parts.next();
    let number =
        |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    number(col) && number(row) && file.is_some_and(|f| !f.is_empty())
}

/// Every problem found in a file, sorted by position, never empty when returned as an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl Diagnostics {
    /// Sorts by position so output reads top to bottom whatever order the checks ran in.
    pub fn new(mut diagnostics: Vec<Diagnostic>) -> Self {
        // Stable sort: two problems at one position keep the order they were found in.
        diagnostics.sort_by(|a, b| (&a.file, a.line, a.col).cmp(&(&b.file, b.line, b.col)));
        Self(diagnostics)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Diagnostic> {
        self.0.iter()
    }
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl<'a> IntoIterator for &'a Diagnostics {
    type Item = &'a Diagnostic;
    type IntoIter = std::slice::Iter<'a, Diagnostic>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Turns byte offsets of one source text into 1-based line:col positions.
pub(crate) struct LineIndex<'a> {
    text: &'a str,
    /// Byte offset where each line starts; the first is always 0.
    line_starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    pub(crate) fn new(text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self { text, line_starts }
    }

    /// 1-based (line, col) of a byte offset; offsets past the end clamp to the end.
    pub(crate) fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        // partition_point gives the number of line starts <= offset, which is the 1-based line.
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let line_start = self.line_starts[line - 1];
        // A span never starts inside a UTF-8 sequence, but be safe: count whole characters only.
        let col = self
            .text
            .get(line_start..offset)
            .map_or(offset - line_start, |s| s.chars().count());
        (line, col + 1)
    }
}

/// Collects diagnostics while a checker walks one file, or several (a pipeline and the files
/// it includes).
///
/// Spans come in two kinds. A *local* span is a byte range of the file being read now (what
/// toml_edit gives); [`Reporter::error`] takes those. A span kept for later, when another
/// file may be the current one, is made *global* first ([`Reporter::global`]): each file has
/// its own range of offsets, so a global span names its file. [`Reporter::error_at`] and
/// [`Reporter::location`] take global spans.
pub(crate) struct Reporter<'a> {
    files: Vec<Source<'a>>,
    current: usize,
    diagnostics: Vec<Diagnostic>,
}

struct Source<'a> {
    file: PathBuf,
    /// Where this file's offsets start in the global range.
    base: usize,
    len: usize,
    index: LineIndex<'a>,
}

impl<'a> Reporter<'a> {
    pub(crate) fn new(text: &'a str, file: &Path) -> Self {
        let mut reporter = Self {
            files: Vec::new(),
            current: 0,
            diagnostics: Vec::new(),
        };
        reporter.add(text, file);
        reporter
    }

    /// Adds a file; its number is the count of files before it.
    pub(crate) fn add(&mut self, text: &'a str, file: &Path) -> usize {
        // One offset between files, so a span at the very end of one is not the next's start.
        let base = self.files.last().map_or(0, |f| f.base + f.len + 1);
        self.files.push(Source {
            file: file.to_path_buf(),
            base,
            len: text.len(),
            index: LineIndex::new(text),
        });
        self.files.len() - 1
    }

    /// Makes file `n` the one local spans are about.
    pub(crate) fn enter(&mut self, n: usize) {
        self.current = n;
    }

    /// A local span of the current file as a global span.
    pub(crate) fn global(&self, span: Option<Range<usize>>) -> Option<Range<usize>> {
        let base = self.files[self.current].base;
        span.map(|s| s.start + base..s.end + base)
    }

    /// The file and local offset of a global offset.
    fn resolve(&self, offset: usize) -> (&Source<'a>, usize) {
        let at = self
            .files
            .partition_point(|f| f.base <= offset)
            .saturating_sub(1);
        let source = &self.files[at];
        (source, offset - source.base)
    }

    /// "file:line:col" of a global span's start, for `Step::location`. No span: the top of
    /// the current file.
    pub(crate) fn location(&self, span: Option<Range<usize>>) -> String {
        let global = span.map_or(self.files[self.current].base, |s| s.start);
        let (source, offset) = self.resolve(global);
        let (line, col) = source.index.position(offset);
        format!("{}:{line}:{col}", source.file.display())
    }

    /// Records a problem at a local span of the current file. A missing span (which
    /// toml_edit only leaves on values it did not parse) points at the top of the file rather
    /// than losing the problem.
    pub(crate) fn error(
        &mut self,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let global = self.global(span);
        self.error_at(global, message, hint);
    }

    /// Records a problem at a global span (one kept from an earlier file).
    pub(crate) fn error_at(
        &mut self,
        span: Option<Range<usize>>,
        message: impl Into<String>,
        hint: Option<String>,
    ) {
        let global = span.map_or(self.files[self.current].base, |s| s.start);
        let (source, offset) = self.resolve(global);
        let (line, col) = source.index.position(offset);
        let file = source.file.clone();
        self.diagnostics.push(Diagnostic {
            file,
            line,
            col,
            message: message.into(),
            hint,
        });
    }

    pub(crate) fn has_errors(&self) -> bool {
        !self.diagnostics.is_empty()
    }

    pub(crate) fn finish(self) -> Diagnostics {
        Diagnostics::new(self.diagnostics)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_and_count_characters() {
        let text = "ab\n\nçd = 1\n";
        let index = LineIndex::new(text);
        assert_eq!(index.position(0), (1, 1));
        assert_eq!(index.position(1), (1, 2));
        assert_eq!(index.position(2), (1, 3));
        assert_eq!(index.position(3), (2, 1));
        assert_eq!(index.position(4), (3, 1));
        // `ç` is two bytes but one column.
        assert_eq!(index.position(6), (3, 2));
        assert_eq!(index.position(text.len()), (4, 1));
        assert_eq!(index.position(text.len() + 10), (4, 1));
    }

    #[test]
    fn global_spans_find_their_file() {
        let (main, other) = ("a = 1\nb = 2\n", "x\ny = 3\n");
        let mut report = Reporter::new(main, Path::new("hm.toml"));
        let second = report.add(other, Path::new("ci/common.toml"));
        report.enter(second);
        let kept = report.global(Some(2..3));
        report.error(Some(6..7), "local to the second file", None);
        report.enter(0);
        report.error_at(kept.clone(), "kept from the second file", None);
        report.error(Some(6..7), "local to the first file", None);
        assert_eq!(report.location(kept), "ci/common.toml:2:1");
        let printed: Vec<String> = report
            .finish()
            .iter()
            .map(|d| format!("{}:{}:{}", d.file.display(), d.line, d.col))
            .collect();
        assert_eq!(
            printed,
            ["ci/common.toml:2:1", "ci/common.toml:2:5", "hm.toml:2:1"]
        );
    }

    #[test]
    fn printed_diagnostics_are_recognised_by_their_first_line() {
        assert!(is_diagnostic_line("hm.toml:3:1: error: unknown key"));
        assert!(is_diagnostic_line("/a b/plugin.toml:12:9: error: x"));
        assert!(!is_diagnostic_line("error: hm.toml:3:1: x"));
        assert!(!is_diagnostic_line("hm.toml:x:1: error: no line"));
        assert!(!is_diagnostic_line(":3:1: error: no file"));
        assert!(!is_diagnostic_line(
            "plugin `a` speaks protocol 9: upgrade hm"
        ));
    }

    #[test]
    fn diagnostics_print_sorted_with_hints_indented() {
        let at = |line, col, message: &str, hint: Option<&str>| Diagnostic {
            file: PathBuf::from("hm.toml"),
            line,
            col,
            message: message.to_owned(),
            hint: hint.map(str::to_owned),
        };
        let diagnostics = Diagnostics::new(vec![
            at(
                12,
                5,
                "unknown key `tmeout` in [steps.build]",
                Some("did you mean `timeout`?"),
            ),
            at(3, 9, "second at 3:9", None),
            at(3, 1, "first", None),
            at(3, 9, "third at 3:9", None),
        ]);
        assert_eq!(
            diagnostics.to_string(),
            "hm.toml:3:1: error: first\n\
             hm.toml:3:9: error: second at 3:9\n\
             hm.toml:3:9: error: third at 3:9\n\
             hm.toml:12:5: error: unknown key `tmeout` in [steps.build]\n  \
             hint: did you mean `timeout`?"
        );
    }
}
