//! `--format json`: every event as one JSON object per line on stdout (`docs/events.md`), for
//! machines. Nothing goes to stderr, so `hm run --format json | jq` sees the whole story on one
//! stream.

use std::io::{self, Write};

use crate::events::{Envelope, Stream};

use super::Renderer;
use super::output::Output;

pub(crate) struct JsonRenderer {
    out: Output,
    /// One event's serialized bytes. Reused for every event: a chatty step emits millions of
    /// `step_log` events, and one `write_all` of a whole line is cheaper than serde_json's many
    /// small writes through the `Output` wrapper.
    line: Vec<u8>,
    /// The escaped start of a `step_log` object, up to `"line":`, and what it was made of: a
    /// batch of lines shares its timestamp, run and step, so they are escaped once a batch.
    prefix: Vec<u8>,
    prefix_of: (String, String, String, Option<Stream>, bool),
    /// What ends an event after its line: `}`, or for a replayed line `,"replayed":true}`.
    end: &'static [u8],
    /// What goes between two lines of a batch: the end of one event and the start of the next.
    between: Vec<u8>,
}

impl JsonRenderer {
    pub(crate) fn new(stdout: Box<dyn Write + Send>) -> Self {
        Self {
            out: Output::new(stdout),
            line: Vec::with_capacity(512),
            prefix: Vec::new(),
            prefix_of: Default::default(),
            end: PLAIN_END,
            between: Vec::new(),
        }
    }

    /// Writes `text` as `step_log` events, byte for byte what serde writes for the same
    /// `Envelope` (a test holds them equal): one event, or for [`Lines::Batch`] and [`Lines::Replayed`] one per line of `text`,
    /// made in one pass (the escaping that finds `"`, `\` and control bytes finds the newlines
    /// too, and ends one event and starts the next there).
    fn write_step_log(
        &mut self,
        ts: &str,
        run_id: &str,
        step: &str,
        stream: Stream,
        text: &str,
        lines: Lines,
    ) -> io::Result<()> {
        if self.out.is_closed() {
            return Ok(());
        }
        self.set_prefix(ts, run_id, step, stream, lines == Lines::Replayed);
        self.line.clear();
        self.line.extend_from_slice(&self.prefix);
        let newline = (lines != Lines::One).then_some(self.between.as_slice());
        write_json_str(&mut self.line, text, newline);
        self.line.extend_from_slice(self.end);
        self.out.write_all(&self.line)
    }

    /// Makes `prefix` (and `between`) the start of a `step_log` event of these, unless it is.
    fn set_prefix(&mut self, ts: &str, run_id: &str, step: &str, stream: Stream, replayed: bool) {
        let (p_ts, p_run, p_step, p_stream, p_replayed) = &self.prefix_of;
        if p_ts == ts
            && p_run == run_id
            && p_step == step
            && *p_stream == Some(stream)
            && *p_replayed == replayed
        {
            return;
        }
        self.prefix.clear();
        self.prefix.extend_from_slice(b"{\"ts\":");
        write_json_str(&mut self.prefix, ts, None);
        self.prefix.extend_from_slice(b",\"run_id\":");
        write_json_str(&mut self.prefix, run_id, None);
        self.prefix
            .extend_from_slice(b",\"kind\":\"step_log\",\"step\":");
        write_json_str(&mut self.prefix, step, None);
        self.prefix.extend_from_slice(match stream {
            Stream::Stdout => b",\"stream\":\"stdout\",\"line\":",
            Stream::Stderr => b",\"stream\":\"stderr\",\"line\":",
        });
        self.end = if replayed { REPLAYED_END } else { PLAIN_END };
        self.between.clear();
        self.between.push(b'"');
        self.between.extend_from_slice(self.end);
        self.between.extend_from_slice(&self.prefix);
        self.between.push(b'"');
        self.prefix_of = (
            ts.to_owned(),
            run_id.to_owned(),
            step.to_owned(),
            Some(stream),
            replayed,
        );
    }
}

impl Renderer for JsonRenderer {
    fn event(&mut self, ev: &Envelope) -> io::Result<()> {
        if self.out.is_closed() {
            return Ok(());
        }
        self.line.clear();
        serde_json::to_writer(&mut self.line, ev)?;
        self.line.push(b'\n');
        self.out.write_all(&self.line)
    }

    fn step_log(
        &mut self,
        ts: &str,
        run_id: &str,
        step: &str,
        stream: Stream,
        line: &str,
    ) -> io::Result<()> {
        self.write_step_log(ts, run_id, step, stream, line, Lines::One)
    }

    fn step_logs(
        &mut self,
        ts: &str,
        run_id: &str,
        step: &str,
        stream: Stream,
        lines: &str,
    ) -> io::Result<()> {
        self.write_step_log(ts, run_id, step, stream, lines, Lines::Batch)
    }

    fn replayed_logs(
        &mut self,
        ts: &str,
        run_id: &str,
        step: &str,
        stream: Stream,
        lines: &str,
    ) -> io::Result<()> {
        self.write_step_log(ts, run_id, step, stream, lines, Lines::Replayed)
    }

    fn tick(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// What the text of a `step_log` write is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lines {
    /// One line, its newlines escaped.
    One,
    /// Lines joined by `\n`, an event each.
    Batch,
    /// The same, replayed from the cache: each event says so.
    Replayed,
}

/// The end of a `step_log` event after its line.
const PLAIN_END: &[u8] = b"}\n";
/// The same for a line replayed from the cache (`replayed` is left out when false).
const REPLAYED_END: &[u8] = b",\"replayed\":true}\n";

/// Appends `text` as a JSON string, escaped exactly as serde_json does.
///
/// Written by hand because this is the hottest loop of a chatty run: most log text needs no
/// escaping at all, so the bytes that do are searched for many at a time ([`find_special`])
/// and everything between them is copied in one piece.
///
/// With `newline`, a `\n` in `text` is not escaped: `newline` is written in its place (the
/// end of one event and the start of the next, for a batch of lines).
fn write_json_str(out: &mut Vec<u8>, text: &str, newline: Option<&[u8]>) {
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    loop {
        let i = find_special(bytes, start);
        out.extend_from_slice(&bytes[start..i]);
        let Some(&b) = bytes.get(i) else {
            break;
        };
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(newline.unwrap_or(b"\\n")),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
        start = i + 1;
    }
    out.push(b'"');
}

/// Whether a JSON string must escape `b`: `"`, `\` and the control bytes below 0x20.
fn is_special(b: u8) -> bool {
    matches!(b, 0..0x20 | b'"' | b'\\')
}

/// The index of the first byte at or after `from` that [`is_special`], or `bytes.len()`.
fn find_special(bytes: &[u8], from: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    return find_special_sse2(bytes, from);
    #[cfg(not(target_arch = "x86_64"))]
    return find_special_swar(bytes, from);
}

/// [`find_special`] sixteen bytes at a time with SSE2, which every x86-64 processor has: about
/// half the instructions per byte of [`find_special_swar`], which does the last few bytes.
#[cfg(target_arch = "x86_64")]
fn find_special_sse2(bytes: &[u8], mut i: usize) -> usize {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    while i + 16 <= bytes.len() {
        // SAFETY: SSE2 is part of the x86-64 baseline, and the load reads the sixteen bytes
        // `bytes[i..i + 16]`, inside the slice (unaligned loads are what `loadu` is for).
        let mask = unsafe {
            let v = _mm_loadu_si128(bytes.as_ptr().add(i).cast());
            let control = _mm_set1_epi8(0x1f);
            // Unsigned `v <= 0x1f`: the larger of the two is 0x1f only for those bytes.
            let low = _mm_cmpeq_epi8(_mm_max_epu8(v, control), control);
            let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
            _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), low)) as u32
        };
        if mask != 0 {
            // Bit k of the mask is byte i + k.
            return i + mask.trailing_zeros() as usize;
        }
        i += 16;
    }
    find_special_swar(bytes, i)
}

/// [`find_special`] eight bytes at a time in a plain `u64` (SWAR), for any target.
fn find_special_swar(bytes: &[u8], mut i: usize) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // A byte of `word` equal to zero sets its high bit in the result (no false negatives; false
    // positives only above a true zero byte, so the lowest byte flagged is always a true one).
    let zero_byte = |word: u64| word.wrapping_sub(ONES) & !word & HIGH;
    let needs_escape = |word: u64| {
        zero_byte(word ^ (ONES * u64::from(b'"')))
            | zero_byte(word ^ (ONES * u64::from(b'\\')))
            // Bytes below 0x20: subtracting 0x20 borrows into the high bit of exactly those
            // whose own high bit was clear (and, like above, maybe of bytes above one).
            | (word.wrapping_sub(ONES * 0x20) & !word & HIGH)
    };
    while let Some(chunk) = bytes.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let flagged = needs_escape(u64::from_le_bytes(word));
        if flagged != 0 {
            // Little-endian: the lowest flagged bit is in the first byte that needs escaping.
            return i + (flagged.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < bytes.len() && !is_special(bytes[i]) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;
    use crate::events::{BuildEvent, Cause, StepEnd, StepStatus};
    use crate::render::test_support::{
        BrokenPipe, SharedBuf, build_end, build_start, end, env, feed, log, log_err, passed,
        queued, retry, start,
    };
    use crate::render::{Format, RenderOptions, renderer};

    #[test]
    fn the_step_log_fast_path_writes_what_serde_writes() {
        let lines = [
            "",
            "plain ascii line of some length, long enough for several words",
            "quotes \" and backslashes \\ and a tab\t and a bell \u{7}",
            "unicode: naïve café — 日本語 \u{2028} emoji 🎉",
            "\u{1f}\u{0}\r\u{8}\u{c}end",
            "12345678\"1234567\\",
        ];
        for line in lines {
            for stream in [Stream::Stdout, Stream::Stderr] {
                let envelope = Envelope {
                    ts: "2026-01-01T00:00:00.000Z".into(),
                    run_id: "r\"1".into(),
                    event: BuildEvent::StepLog {
                        step: "b\\uild".into(),
                        stream,
                        line: line.into(),
                        replayed: false,
                    },
                };
                let mut expected = serde_json::to_vec(&envelope).expect("serialize");
                expected.push(b'\n');
                let out = SharedBuf::default();
                let mut r = JsonRenderer::new(Box::new(out.clone()));
                r.step_log(&envelope.ts, &envelope.run_id, "b\\uild", stream, line)
                    .expect("write");
                r.flush().expect("flush");
                assert_eq!(
                    out.text(),
                    String::from_utf8(expected).expect("utf8"),
                    "{line:?}"
                );
            }
        }
    }

    #[test]
    fn escaping_matches_serde_wherever_the_special_bytes_fall_in_a_word() {
        // Pairs like a control byte before a space or `!` make the word test flag a byte that
        // needs no escape (a borrow); only the first flagged byte may be taken as true.
        let specials = [
            "\"",
            "\\",
            "\n",
            "\u{0}",
            "\u{1}",
            "\u{1f}",
            "\u{7f}",
            "é",
            "日",
            " ",
            "!",
            "\u{0} ",
            "\u{1}!",
            "\"\"",
            "\\\"",
            "\u{1f}\u{20}\u{21}",
        ];
        for special in specials {
            for before in 0..17 {
                for after in [0, 1, 7, 8, 9] {
                    let text = format!("{}{special}{}", "a".repeat(before), "b".repeat(after));
                    let mut ours = Vec::new();
                    write_json_str(&mut ours, &text, None);
                    let theirs = serde_json::to_string(&text).expect("serialize");
                    assert_eq!(String::from_utf8(ours).expect("utf8"), theirs, "{text:?}");
                }
            }
        }
    }

    #[test]
    fn every_search_finds_the_first_byte_that_needs_escaping() {
        // Every byte value at every place of a run longer than two SSE2 words, among fillers
        // that trip the word tricks (a borrow from a control byte flags 0x20 and 0x21 above it),
        // searched from places on both sides of a word boundary.
        for filler in [b'a', 0x20, 0x21, 0x7f, 0x80, 0xff] {
            for special in 0..=255u8 {
                for at in 0..40 {
                    let mut bytes = vec![filler; 40];
                    bytes[at] = special;
                    for from in [0, 1, 7, 8, 9, 15, 16, 17, 39, 40] {
                        let want = (from..bytes.len())
                            .find(|&i| is_special(bytes[i]))
                            .unwrap_or(bytes.len());
                        assert_eq!(find_special_swar(&bytes, from), want, "{bytes:?} {from}");
                        #[cfg(target_arch = "x86_64")]
                        assert_eq!(find_special_sse2(&bytes, from), want, "{bytes:?} {from}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_batch_of_lines_writes_what_serde_writes_for_each_line() {
        let lines = [
            "",
            "plain ascii line of some length, long enough for several words",
            "quotes \" and backslashes \\ and a tab\t and a bell \u{7}",
            "",
            "unicode: naïve café — 日本語 \u{2028} emoji 🎉",
            "\u{1f}\u{0}\r\u{8}\u{c}end",
            "1234567",
            "12345678\"1234567\\",
            "",
        ];
        let mut expected = Vec::new();
        for line in lines {
            let envelope = Envelope {
                ts: "2026-01-01T00:00:00.000Z".into(),
                run_id: "r\"1".into(),
                event: BuildEvent::StepLog {
                    step: "b\\uild".into(),
                    stream: Stream::Stderr,
                    line: line.into(),
                    replayed: false,
                },
            };
            serde_json::to_writer(&mut expected, &envelope).expect("serialize");
            expected.push(b'\n');
        }
        let out = SharedBuf::default();
        let mut r = JsonRenderer::new(Box::new(out.clone()));
        // The same prefix before and after: the batch must not leave it half made.
        r.step_log(
            "2026-01-01T00:00:00.000Z",
            "r\"1",
            "b\\uild",
            Stream::Stderr,
            lines[0],
        )
        .expect("write");
        r.step_logs(
            "2026-01-01T00:00:00.000Z",
            "r\"1",
            "b\\uild",
            Stream::Stderr,
            &lines[1..lines.len() - 1].join("\n"),
        )
        .expect("write");
        r.step_log(
            "2026-01-01T00:00:00.000Z",
            "r\"1",
            "b\\uild",
            Stream::Stderr,
            lines[8],
        )
        .expect("write");
        r.flush().expect("flush");
        assert_eq!(out.text(), String::from_utf8(expected).expect("utf8"));
    }

    #[test]
    fn replayed_lines_write_what_serde_writes_for_each_replayed_line() {
        let ts = "2026-01-01T00:00:00.000Z";
        // (replayed, line): plain and replayed lines of one step alternate, so each write must
        // make its own end and the one between lines.
        let lines = [
            (false, "before"),
            (true, "first \"quoted\""),
            (true, ""),
            (true, "tab\tand \u{1}"),
            (false, "after"),
            (true, "again"),
        ];
        let mut expected = Vec::new();
        for (replayed, line) in lines {
            let envelope = Envelope {
                ts: ts.into(),
                run_id: "r1".into(),
                event: BuildEvent::StepLog {
                    step: "build".into(),
                    stream: Stream::Stdout,
                    line: line.into(),
                    replayed,
                },
            };
            serde_json::to_writer(&mut expected, &envelope).expect("serialize");
            expected.push(b'\n');
        }
        let out = SharedBuf::default();
        let mut r = JsonRenderer::new(Box::new(out.clone()));
        let stdout = Stream::Stdout;
        r.step_log(ts, "r1", "build", stdout, lines[0].1)
            .expect("write");
        let replayed = [lines[1].1, lines[2].1, lines[3].1].join("\n");
        r.replayed_logs(ts, "r1", "build", stdout, &replayed)
            .expect("write");
        r.step_logs(ts, "r1", "build", stdout, lines[4].1)
            .expect("write");
        r.replayed_logs(ts, "r1", "build", stdout, lines[5].1)
            .expect("write");
        r.flush().expect("flush");
        assert_eq!(out.text(), String::from_utf8(expected).expect("utf8"));
    }

    fn json_renderer(out: &SharedBuf, err: &SharedBuf) -> Box<dyn Renderer + Send> {
        let opts = RenderOptions {
            format: Format::Json,
            color: true,
            tty: true,
            logs: false,
        };
        renderer(&opts, Box::new(out.clone()), Box::new(err.clone()))
    }

    fn events() -> Vec<BuildEvent> {
        vec![
            build_start(1),
            queued("build"),
            start("build", 1),
            log("build", "compiling \"hm\""),
            log_err("build", "warning: unused"),
            BuildEvent::StepEnd(StepEnd {
                exit_code: Some(137),
                signal: Some(9),
                peak_memory_bytes: Some(64 << 20),
                ..end("build", StepStatus::Failed, Some(Cause::Oom))
            }),
            retry("build", 2, Cause::Oom),
            start("build", 2),
            passed("build", 1_200),
            BuildEvent::PluginExit {
                plugin: "shell".into(),
                pid: 7,
                clean: true,
                cause: None,
                exit_code: Some(0),
                signal: None,
                message: None,
            },
            build_end(StepStatus::Passed, 0, [1, 0, 0, 0]),
        ]
    }

    #[test]
    fn one_object_per_line_with_kind_on_stdout_only() {
        let (out, err) = (SharedBuf::default(), SharedBuf::default());
        let mut r = json_renderer(&out, &err);
        feed(r.as_mut(), &events());
        assert_eq!(err.text(), "", "json writes nothing to stderr");

        let text = out.text();
        let kinds: Vec<String> = text
            .lines()
            .map(|line| {
                let value: serde_json::Value = serde_json::from_str(line).unwrap();
                assert_eq!(value["ts"], "2026-01-01T00:00:00.000Z");
                assert_eq!(value["run_id"], "r1");
                value["kind"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "build_start",
                "step_queued",
                "step_start",
                "step_log",
                "step_log",
                "step_end",
                "step_retry",
                "step_start",
                "step_end",
                "plugin_exit",
                "build_end",
            ]
        );
    }

    #[test]
    fn field_names_and_values_are_snake_case() {
        let (out, err) = (SharedBuf::default(), SharedBuf::default());
        let mut r = json_renderer(&out, &err);
        feed(r.as_mut(), &events()[3..7]);
        expect![[r#"
            {"ts":"2026-01-01T00:00:00.000Z","run_id":"r1","kind":"step_log","step":"build","stream":"stdout","line":"compiling \"hm\""}
            {"ts":"2026-01-01T00:00:00.000Z","run_id":"r1","kind":"step_log","step":"build","stream":"stderr","line":"warning: unused"}
            {"ts":"2026-01-01T00:00:00.000Z","run_id":"r1","kind":"step_end","step":"build","attempt":1,"status":"failed","cause":"oom","exit_code":137,"signal":9,"duration_ms":0,"peak_memory_bytes":67108864,"cpu_ms":null,"matrix":null,"cache":null,"artifacts":[],"outputs":{}}
            {"ts":"2026-01-01T00:00:00.000Z","run_id":"r1","kind":"step_retry","step":"build","attempt":2,"cause":"oom"}
        "#]]
        .assert_eq(&out.text());
    }

    #[test]
    fn output_waits_for_flush() {
        let (out, err) = (SharedBuf::default(), SharedBuf::default());
        let mut r = json_renderer(&out, &err);
        r.event(&env(queued("a"))).unwrap();
        r.tick().unwrap();
        assert_eq!(out.text(), "");
        r.flush().unwrap();
        assert_eq!(out.text().lines().count(), 1);
    }

    #[test]
    fn broken_pipe_is_not_an_error() {
        let pipe = BrokenPipe::default();
        let mut r = JsonRenderer::new(Box::new(pipe.clone()));
        feed(&mut r, &events());
        r.flush().unwrap();
        assert_eq!(pipe.attempts(), 1);
    }
}
