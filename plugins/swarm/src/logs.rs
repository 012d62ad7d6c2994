//! A task's output, complete and in order, from reads of the service's log that each start at
//! its beginning. The manager's follow stream is live but lags, and may end before the task's
//! last lines (or, before the task has started, at once); a read without follow once the task
//! has ended has every line. Each stream (stdout, stderr) keeps count of the whole lines it
//! has sent: every read skips that many lines of its stream and sends the rest, so a line is
//! never lost and never sent twice, whichever reads deliver it (each read is a prefix of the
//! final one).

use hm_sdk::process::LineSplitter;
use hm_sdk::{OutputStream, StepContext, StepError};

/// One stream's place across reads of a log.
#[derive(Debug, Default)]
pub struct Cursor {
    /// Whole lines sent (a last line without a newline counts once it is sent at the end).
    sent: u64,
    /// Lines the current read has still to skip: those an earlier read sent.
    skip: u64,
    /// The start of a line the current read has not finished.
    partial: Vec<u8>,
}

impl Cursor {
    /// A new read from the log's beginning: the lines already sent will be skipped, and a line
    /// the previous read left unfinished will come again whole.
    pub fn restart(&mut self) {
        self.skip = self.sent;
        self.partial.clear();
    }

    /// The whole lines (each with its `\n`) that `chunk` completes and no read has sent, in
    /// order.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.partial.extend_from_slice(chunk);
        let Some(last) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        let rest = self.partial.split_off(last + 1);
        let whole = std::mem::replace(&mut self.partial, rest);
        let mut start = 0;
        while self.skip > 0 && start < whole.len() {
            let end = whole[start..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(whole.len(), |i| start + i + 1);
            start = end;
            self.skip -= 1;
        }
        let new = &whole[start..];
        self.sent += new.iter().filter(|&&b| b == b'\n').count() as u64;
        new.to_vec()
    }

    /// The end of the read: a last line without a newline, unless an earlier read sent it
    /// (which a read that is a prefix of this one cannot have: it is dropped rather than
    /// doubled).
    pub fn finish(&mut self) -> Vec<u8> {
        let partial = std::mem::take(&mut self.partial);
        if partial.is_empty() || self.skip > 0 {
            return Vec::new();
        }
        self.sent += 1;
        partial
    }
}

/// A task's stdout and stderr, sent to hm as lines.
pub struct Logs {
    stdout: (Cursor, LineSplitter),
    stderr: (Cursor, LineSplitter),
}

impl Logs {
    pub fn new(ctx: &StepContext) -> Self {
        let max = ctx.max_line_bytes();
        Self {
            stdout: (
                Cursor::default(),
                LineSplitter::new(OutputStream::Stdout, max),
            ),
            stderr: (
                Cursor::default(),
                LineSplitter::new(OutputStream::Stderr, max),
            ),
        }
    }

    /// A new read of the log starts.
    pub fn restart(&mut self) {
        self.stdout.0.restart();
        self.stderr.0.restart();
    }

    /// Queues the new whole lines `chunk` of `stream` completes; the caller flushes.
    pub async fn feed(
        &mut self,
        stream: OutputStream,
        chunk: &[u8],
        ctx: &StepContext,
    ) -> Result<bool, StepError> {
        let (cursor, lines) = match stream {
            OutputStream::Stdout => &mut self.stdout,
            OutputStream::Stderr => &mut self.stderr,
        };
        let new = cursor.feed(chunk);
        if new.is_empty() {
            return Ok(false);
        }
        lines.feed(&new, ctx).await?;
        Ok(true)
    }

    /// The last read ended: a last line without a newline is still a line.
    pub async fn finish(&mut self, ctx: &StepContext) -> Result<(), StepError> {
        for (cursor, lines) in [&mut self.stdout, &mut self.stderr] {
            let last = cursor.finish();
            lines.feed(&last, ctx).await?;
            lines.finish(ctx).await?;
        }
        ctx.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sends each read (its chunks in order, a restart before every read but the first) through
    /// one cursor and returns everything it sent.
    fn merged(reads: &[&[&str]]) -> String {
        let mut cursor = Cursor::default();
        let mut sent = Vec::new();
        for (i, read) in reads.iter().enumerate() {
            if i > 0 {
                cursor.restart();
            }
            for chunk in *read {
                sent.extend(cursor.feed(chunk.as_bytes()));
            }
        }
        sent.extend(cursor.finish());
        String::from_utf8(sent).expect("utf-8")
    }

    #[test]
    fn the_final_read_completes_a_follow_that_missed_the_end() {
        let follow: &[&str] = &["1\n2\n", "3\n4"];
        let last: &[&str] = &["1\n2\n3\n4\n5\n6"];
        assert_eq!(merged(&[follow, last]), "1\n2\n3\n4\n5\n6");
    }

    #[test]
    fn a_follow_that_had_everything_leaves_nothing_to_add() {
        let all: &[&str] = &["a\nb\n", "c\n"];
        assert_eq!(merged(&[all, all]), "a\nb\nc\n");
    }

    #[test]
    fn a_line_cut_between_chunks_is_sent_once_whole() {
        let follow: &[&str] = &["li", "ne one\nline t", "wo\nlin"];
        let last: &[&str] = &["line one\nline two\nline three\n"];
        assert_eq!(merged(&[follow, last]), "line one\nline two\nline three\n");
    }

    #[test]
    fn every_read_may_end_early_and_a_later_one_carries_on() {
        // A follow that ended at once, one that ended mid-way, then the final read.
        let reads: &[&[&str]] = &[&[], &["1\n", "2\n3"], &["1\n2\n3\n4\n"]];
        assert_eq!(merged(reads), "1\n2\n3\n4\n");
    }

    #[test]
    fn empty_and_repeated_lines_count_like_any_other() {
        let follow: &[&str] = &["x\n\nx\n"];
        let last: &[&str] = &["x\n\nx\n\nx\n"];
        assert_eq!(merged(&[follow, last]), "x\n\nx\n\nx\n");
    }

    #[test]
    fn a_shorter_final_read_never_doubles_a_line() {
        // Not what the manager does, but the cursor must not send a line twice if it did.
        let follow: &[&str] = &["1\n2\n3\n"];
        let last: &[&str] = &["1\n2\n"];
        assert_eq!(merged(&[follow, last]), "1\n2\n3\n");
        assert_eq!(merged(&[follow, &["1\n2"]]), "1\n2\n3\n");
    }

    #[test]
    fn without_a_final_read_the_follow_is_all_there_is() {
        assert_eq!(merged(&[&["1\n2\n", "3"]]), "1\n2\n3");
    }

    #[test]
    fn many_lines_in_many_chunks() {
        let text: String = (1..=500).map(|i| format!("line {i}\n")).collect();
        // The follow delivers the first 317 lines in 7-byte chunks.
        let head: String = (1..=317).map(|i| format!("line {i}\n")).collect();
        let chunks: Vec<&str> = head
            .as_bytes()
            .chunks(7)
            .map(|c| std::str::from_utf8(c).expect("ascii"))
            .collect();
        assert_eq!(merged(&[&chunks, &[&text]]), text);
    }
}
