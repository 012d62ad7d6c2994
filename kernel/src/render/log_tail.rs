//! The last lines of one step's log, kept in bounded memory until the renderer knows whether
//! (live view) or how (github groups) to show them.

use std::collections::VecDeque;

/// A ring of the most recent log lines of one step, bounded by line count and by bytes: a step that
/// prints a gigabyte must not make the kernel hold a gigabyte (the performance targets budget 30
/// MiB for the whole kernel). What falls off the front is counted so the reader is told.
pub(crate) struct LogTail {
    lines: VecDeque<String>,
    bytes: usize,
    dropped: u64,
    max_lines: usize,
    max_bytes: usize,
}

impl LogTail {
    pub(crate) fn new(max_lines: usize, max_bytes: usize) -> Self {
        Self {
            lines: VecDeque::new(),
            bytes: 0,
            dropped: 0,
            max_lines: max_lines.max(1),
            max_bytes,
        }
    }

    /// Keeps `line`, forgetting the oldest lines as needed. The newest line is always kept,
    /// however long. Reuses an evicted line's allocation: once full, a busy step costs no
    /// allocation per line.
    pub(crate) fn push(&mut self, line: &str) {
        let mut spare = None;
        while !self.lines.is_empty()
            && (self.lines.len() >= self.max_lines || self.bytes + line.len() > self.max_bytes)
        {
            if let Some(old) = self.lines.pop_front() {
                self.bytes -= old.len();
                self.dropped += 1;
                spare = Some(old);
            }
        }
        let mut kept = spare.unwrap_or_default();
        kept.clear();
        kept.push_str(line);
        self.bytes += kept.len();
        self.lines.push_back(kept);
    }

    pub(crate) fn lines(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(String::as_str)
    }

    /// The line that stands where forgotten lines were: `… 12 earlier lines not shown`.
    pub(crate) fn cut_marker(&self) -> Option<String> {
        match self.dropped {
            0 => None,
            1 => Some("… 1 earlier line not shown".to_owned()),
            n => Some(format!("… {n} earlier lines not shown")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(t: &LogTail) -> Vec<&str> {
        t.lines().collect()
    }

    #[test]
    fn keeps_the_last_lines_and_counts_the_rest() {
        let mut t = LogTail::new(2, usize::MAX);
        for line in ["a", "b", "c", "d"] {
            t.push(line);
        }
        assert_eq!(kept(&t), ["c", "d"]);
        assert_eq!(
            t.cut_marker().as_deref(),
            Some("… 2 earlier lines not shown")
        );
    }

    #[test]
    fn byte_bound_keeps_at_least_the_newest_line() {
        let mut t = LogTail::new(100, 5);
        t.push("abc");
        t.push("de");
        assert_eq!(kept(&t), ["abc", "de"]);
        t.push("f");
        assert_eq!(kept(&t), ["de", "f"]);
        t.push("a very long line");
        assert_eq!(kept(&t), ["a very long line"]);
        assert_eq!(
            t.cut_marker().as_deref(),
            Some("… 3 earlier lines not shown")
        );
    }

    #[test]
    fn nothing_cut_no_marker() {
        let mut t = LogTail::new(2, usize::MAX);
        t.push("a");
        assert_eq!(t.cut_marker(), None);
    }
}
