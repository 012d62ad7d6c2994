//! The end-of-run table that the plain, live and github renderers all print: one row per step,
//! from the last attempt's `step_end`, in the order the steps were first queued.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::events::{BuildEvent, BuildStatus, Cause, StepEnd, StepStatus};

use super::style::{Tone, paint};
use super::text;

/// What a renderer must remember of the run to print the summary. Fed every event; keeps one
/// row per step, never the log, so it stays small however much the steps print.
#[derive(Default)]
pub(crate) struct Summary {
    rows: Vec<Row>,
    index: HashMap<String, usize>,
    /// The first step whose final attempt failed (an allowed failure aside): with fail fast,
    /// the one that stopped the run.
    first_failure: Option<String>,
}

struct Row {
    step: String,
    /// Attempts that actually started; a skipped step has none.
    starts: u32,
    last: Option<StepEnd>,
}

/// The run's result as `build_end` reports it. The counts are the kernel's, not recomputed
/// from the rows, so the summary can never disagree with `--format json`.
pub(crate) struct RunTotals {
    pub(crate) status: BuildStatus,
    pub(crate) exit_code: i32,
    pub(crate) duration_ms: u64,
    pub(crate) passed: usize,
    pub(crate) failed: usize,
    pub(crate) skipped: usize,
    pub(crate) cancelled: usize,
}

impl RunTotals {
    pub(crate) fn from_event(event: &BuildEvent) -> Option<Self> {
        match *event {
            BuildEvent::BuildEnd {
                status,
                exit_code,
                duration_ms,
                passed,
                failed,
                skipped,
                cancelled,
            } => Some(Self {
                status,
                exit_code,
                duration_ms,
                passed,
                failed,
                skipped,
                cancelled,
            }),
            _ => None,
        }
    }
}

const HEADER: [&str; COLUMNS] = [
    "step",
    "status",
    "cause",
    "attempts",
    "duration",
    "peak memory",
    "cpu time",
    "node",
];
const COLUMNS: usize = 8;
/// The last column, shown only when a step ran on a cluster's node.
const NODE: usize = 7;
/// Names, words and causes read best left-aligned; numbers right-aligned so units line up.
const RIGHT_ALIGNED: [bool; COLUMNS] = [false, false, false, true, true, true, true, false];
const STATUS: usize = 1;

impl Summary {
    /// Remembers what the table needs from `event`. A log line costs one `match`.
    pub(crate) fn observe(&mut self, event: &BuildEvent) {
        match event {
            BuildEvent::StepQueued { step } => {
                self.row(step);
            }
            BuildEvent::StepStart { step, .. } => self.row(step).starts += 1,
            BuildEvent::StepEnd(end) => {
                let failed = matches!(end.status, StepStatus::Failed | StepStatus::TimedOut);
                if failed && !end.allowed_failure && self.first_failure.is_none() {
                    self.first_failure = Some(end.step.clone());
                }
                self.row(&end.step).last = Some(end.clone());
            }
            // The failure was not final after all: another attempt follows.
            BuildEvent::StepRetry { step, .. } if self.first_failure.as_ref() == Some(step) => {
                self.first_failure = None;
            }
            _ => {}
        }
    }

    fn row(&mut self, step: &str) -> &mut Row {
        let i = match self.index.get(step) {
            Some(&i) => i,
            None => {
                self.rows.push(Row {
                    step: step.to_owned(),
                    starts: 0,
                    last: None,
                });
                self.index.insert(step.to_owned(), self.rows.len() - 1);
                self.rows.len() - 1
            }
        };
        &mut self.rows[i]
    }

    /// Appends the table, the counts line and the run's verdict to `out`.
    pub(crate) fn render(&self, out: &mut String, totals: &RunTotals, color: bool) {
        if !self.rows.is_empty() {
            self.table(out, color);
            out.push('\n');
        }
        self.artifacts_line(out);
        self.cached_line(out);
        let duration = text::duration(totals.duration_ms);
        let _ = writeln!(
            out,
            "{} passed, {} failed, {} skipped, {} cancelled in {duration}",
            totals.passed, totals.failed, totals.skipped, totals.cancelled
        );
        self.fail_fast_note(out, totals);
        out.push_str("run ");
        paint(
            out,
            color,
            Tone::of(totals.status, false),
            totals.status.as_str(),
        );
        let _ = writeln!(out, " (exit code {})", totals.exit_code);
    }

    /// `cached: 3 steps, 1m 2s saved`, when the cache replayed any.
    fn cached_line(&self, out: &mut String) {
        let saved: Vec<u64> = self
            .rows
            .iter()
            .filter_map(|row| row.last.as_ref()?.saved_ms)
            .collect();
        if saved.is_empty() {
            return;
        }
        let noun = if saved.len() == 1 { "step" } else { "steps" };
        let total: u64 = saved.iter().sum();
        let _ = writeln!(
            out,
            "cached: {} {noun}, {} saved",
            saved.len(),
            text::duration(total)
        );
    }

    /// `artifacts: build 2 files (1.2 KiB), docs 1 file (300 B)`, when a step handed any on.
    fn artifacts_line(&self, out: &mut String) {
        let parts: Vec<String> = self
            .rows
            .iter()
            .filter_map(|row| {
                let end = row.last.as_ref()?;
                let n = end.artifacts.len();
                (n > 0).then(|| {
                    let bytes: u64 = end.artifacts.iter().map(|a| a.bytes).sum();
                    let noun = if n == 1 { "file" } else { "files" };
                    format!("{} {n} {noun} ({})", row.step, text::bytes(bytes))
                })
            })
            .collect();
        if !parts.is_empty() {
            let _ = writeln!(out, "artifacts: {}", parts.join(", "));
        }
    }

    /// Says that the run stopped at its first failure when that is why steps were cancelled
    /// (cause `cancelled` in a run the user did not cancel), and how to keep going instead.
    fn fail_fast_note(&self, out: &mut String, totals: &RunTotals) {
        if totals.exit_code == crate::exit::CANCELLED {
            return;
        }
        let Some(failed) = &self.first_failure else {
            return;
        };
        let stopped = self
            .rows
            .iter()
            .filter(|row| {
                row.last
                    .as_ref()
                    .is_some_and(|end| end.cause == Some(Cause::Cancelled))
            })
            .count();
        if stopped == 0 {
            return;
        }
        let noun = if stopped == 1 { "step" } else { "steps" };
        let _ = writeln!(
            out,
            "stopped at the first failure ({failed}): {stopped} {noun} cancelled or not started; \
             -k (--keep-going) lets the steps that do not need it finish"
        );
    }

    fn table(&self, out: &mut String, color: bool) {
        let mut cells: Vec<([String; COLUMNS], Tone)> = Vec::with_capacity(self.rows.len() + 1);
        cells.push((HEADER.map(str::to_owned), Tone::Plain));
        cells.extend(self.rows.iter().map(Row::cells));
        let placed = self
            .rows
            .iter()
            .any(|row| row.last.as_ref().is_some_and(|end| end.node.is_some()));
        let shown = if placed { COLUMNS } else { NODE };
        let mut widths = [0; COLUMNS];
        for (row, _) in &cells {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        for (row, tone) in &cells {
            let mut line = String::new();
            for (col, cell) in row.iter().enumerate().take(shown) {
                if col > 0 {
                    line.push_str("  ");
                }
                // Padding is computed on the bare text and written outside the colour codes,
                // which take no columns on screen.
                let pad = widths[col] - cell.chars().count();
                if RIGHT_ALIGNED[col] {
                    line.extend(std::iter::repeat_n(' ', pad));
                }
                let tone = if col == STATUS { *tone } else { Tone::Plain };
                paint(&mut line, color, tone, cell);
                if !RIGHT_ALIGNED[col] {
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
}

impl Row {
    fn cells(&self) -> ([String; COLUMNS], Tone) {
        let dash = || "-".to_owned();
        let Some(end) = &self.last else {
            // Queued but never ended: only possible if the run loop stopped early.
            return (
                [
                    self.step.clone(),
                    dash(),
                    dash(),
                    dash(),
                    dash(),
                    dash(),
                    dash(),
                    dash(),
                ],
                Tone::Plain,
            );
        };
        let failed = matches!(end.status, StepStatus::Failed | StepStatus::TimedOut);
        let status = if end.allowed_failure && failed {
            format!("{} (allowed)", end.status.as_str())
        } else if end.saved_ms.is_some() {
            "cached".to_owned()
        } else {
            end.status.as_str().to_owned()
        };
        let ran = self.starts > 0;
        let cells = [
            self.step.clone(),
            status,
            text::cause_cell(end),
            self.starts.to_string(),
            if ran {
                text::duration(end.duration_ms)
            } else {
                dash()
            },
            end.peak_memory_bytes.map_or_else(dash, text::bytes),
            end.cpu_ms.map_or_else(dash, text::duration),
            end.node.clone().unwrap_or_else(dash),
        ];
        (cells, Tone::of(end.status, end.allowed_failure))
    }
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;
    use crate::events::Cause;
    use crate::render::test_support::{build_end, end, failed_exit, passed, queued, start};

    fn render(events: &[BuildEvent], color: bool) -> String {
        let mut summary = Summary::default();
        let mut out = String::new();
        for event in events {
            summary.observe(event);
            if let Some(totals) = RunTotals::from_event(event) {
                summary.render(&mut out, &totals, color);
            }
        }
        out
    }

    fn with_usage(event: BuildEvent, peak: u64, cpu_ms: u64) -> BuildEvent {
        match event {
            BuildEvent::StepEnd(end) => BuildEvent::StepEnd(StepEnd {
                peak_memory_bytes: Some(peak),
                cpu_ms: Some(cpu_ms),
                ..end
            }),
            other => other,
        }
    }

    fn run() -> Vec<BuildEvent> {
        vec![
            queued("fmt"),
            queued("unit-tests"),
            queued("lint"),
            queued("deploy"),
            start("unit-tests", 1),
            start("fmt", 1),
            start("lint", 1),
            with_usage(passed("fmt", 420), 12 << 20, 300),
            failed_exit("unit-tests", 101, 1_500),
            start("unit-tests", 2),
            with_usage(
                BuildEvent::StepEnd(StepEnd {
                    attempt: 2,
                    exit_code: Some(101),
                    duration_ms: 61_000,
                    ..end("unit-tests", StepStatus::Failed, Some(Cause::Exit))
                }),
                3 << 29,
                59_000,
            ),
            BuildEvent::StepEnd(StepEnd {
                exit_code: Some(1),
                duration_ms: 800,
                allowed_failure: true,
                ..end("lint", StepStatus::Failed, Some(Cause::Exit))
            }),
            BuildEvent::StepEnd(end(
                "deploy",
                StepStatus::Skipped,
                Some(Cause::DependencyFailed),
            )),
            build_end(StepStatus::Failed, 1, [2, 1, 1, 0]),
        ]
    }

    #[test]
    fn table_is_aligned_in_queue_order_with_last_attempt_and_counts() {
        expect![[r#"
            step        status            cause              attempts  duration  peak memory  cpu time
            fmt         passed            -                         1     420ms       12 MiB     300ms
            unit-tests  failed            exit 101                  2     1m01s      1.5 GiB     59.0s
            lint        failed (allowed)  exit 1                    1     800ms            -         -
            deploy      skipped           dependency_failed         0         -            -         -

            2 passed, 1 failed, 1 skipped, 0 cancelled in 3.4s
            run failed (exit code 1)
        "#]]
        .assert_eq(&render(&run(), false));
    }

    #[test]
    fn a_node_column_shows_where_steps_ran_when_one_ran_on_a_cluster() {
        let on = |step: &str, node: Option<&str>| {
            BuildEvent::StepEnd(StepEnd {
                duration_ms: 900,
                node: node.map(str::to_owned),
                ..end(step, StepStatus::Passed, None)
            })
        };
        let events = vec![
            queued("remote"),
            queued("local"),
            start("remote", 1),
            start("local", 1),
            on("remote", Some("node-2")),
            on("local", None),
            build_end(StepStatus::Passed, 0, [2, 0, 0, 0]),
        ];
        expect![[r#"
            step    status  cause  attempts  duration  peak memory  cpu time  node
            remote  passed  -             1     900ms            -         -  node-2
            local   passed  -             1     900ms            -         -  -

            2 passed, 0 failed, 0 skipped, 0 cancelled in 3.4s
            run passed (exit code 0)
        "#]]
        .assert_eq(&render(&events, false));
    }

    #[test]
    fn a_run_stopped_by_fail_fast_says_so_and_how_to_keep_going() {
        let events = vec![
            queued("build"),
            queued("test"),
            queued("docs"),
            queued("lint"),
            start("build", 1),
            start("docs", 1),
            failed_exit("build", 2, 300),
            BuildEvent::StepEnd(end("docs", StepStatus::Cancelled, Some(Cause::Cancelled))),
            BuildEvent::StepEnd(end(
                "test",
                StepStatus::Skipped,
                Some(Cause::DependencyFailed),
            )),
            BuildEvent::StepEnd(end("lint", StepStatus::Skipped, Some(Cause::Cancelled))),
            build_end(StepStatus::Failed, 1, [0, 1, 2, 1]),
        ];
        let text = render(&events, false);
        assert!(
            text.contains(
                "stopped at the first failure (build): 2 steps cancelled or not started; \
                 -k (--keep-going) lets the steps that do not need it finish\n"
            ),
            "{text}"
        );
        // The user's Ctrl-C cancels too, but that is no failure to stop at.
        let mut cancelled = events.clone();
        cancelled.pop();
        cancelled.push(build_end(StepStatus::Cancelled, 130, [0, 1, 2, 1]));
        assert!(!render(&cancelled, false).contains("first failure"));
        // Nothing was stopped: nothing to say.
        assert!(!render(&run(), false).contains("first failure"));
    }

    #[test]
    fn colour_paints_status_words_only_when_on() {
        let plain = render(&run(), false);
        assert!(!crate::render::test_support::has_sgr(&plain));
        let coloured = render(&run(), true);
        assert!(coloured.contains("\x1b[32mpassed\x1b[0m            -"));
        assert!(coloured.contains("\x1b[31mfailed\x1b[0m            exit 101"));
        assert!(coloured.contains("\x1b[33mskipped\x1b[0m"));
        assert!(coloured.contains("run \x1b[31mfailed\x1b[0m (exit code 1)"));
        // Stripping the codes gives back the aligned plain table.
        assert_eq!(strip_sgr(&coloured), plain);
    }

    #[test]
    fn empty_run_prints_only_the_counts() {
        expect![[r#"
            0 passed, 0 failed, 0 skipped, 0 cancelled in 3.4s
            run passed (exit code 0)
        "#]]
        .assert_eq(&render(&[build_end(StepStatus::Passed, 0, [0; 4])], false));
    }

    fn strip_sgr(s: &str) -> String {
        let mut out = String::new();
        let mut rest = s;
        while let Some(i) = rest.find("\x1b[") {
            out.push_str(&rest[..i]);
            let after = &rest[i..];
            let end = after.find('m').map_or(after.len(), |m| m + 1);
            rest = &after[end..];
        }
        out.push_str(rest);
        out
    }
}
