//! Human output on a terminal: a block of the running steps with their elapsed time, redrawn in
//! place on stderr, with finished steps scrolling above it, the log of any step that fails, and
//! the summary table at the end.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::time::{Duration, Instant};

use crate::events::{BuildEvent, Envelope, StepEnd, StepStatus, Stream};

use super::Renderer;
use super::log_tail::LogTail;
use super::output::Output;
use super::summary::{RunTotals, Summary};
use super::text;

/// Lines of a step's log kept for the case it fails: enough for a compiler error or a test
/// failure with its backtrace, bounded so that many chatty steps in parallel stay cheap.
const KEPT_LINES: usize = 2_000;
/// Running steps listed in the block; more would push the finished lines off a small terminal.
const MAX_ROWS: usize = 10;
/// Step names are cut to this many characters in the block: a block line that wraps would make
/// the cursor-up count wrong and leave stale lines on screen.
const MAX_LABEL: usize = 48;

/// Where the time comes from. Only the elapsed time of running steps uses it; tests replace it.
pub(crate) type Clock = Box<dyn Fn() -> Instant + Send>;

pub(crate) struct LiveRenderer {
    out: Output,
    color: bool,
    clock: Clock,
    summary: Summary,
    /// In the order they started, which keeps rows from jumping around between redraws.
    running: Vec<Running>,
    logs: HashMap<String, LogTail>,
    /// Finished lines not yet printed; they go out above the block at the next redraw.
    pending: String,
    /// The block on screen now; its line count is how far the cursor moves back up.
    shown: String,
    /// The block as it should be now, compared with `shown` so that a tick that changes
    /// nothing (elapsed times are whole seconds) writes nothing.
    block: String,
    /// Something other than elapsed times changed since the last redraw.
    dirty: bool,
    started: bool,
    finished: bool,
    total: usize,
    done: usize,
    /// Reused for each redraw, written in one `write_all` so the terminal never shows a
    /// half-cleared block.
    frame: String,
}

struct Running {
    step: String,
    attempt: u32,
    since: Instant,
    /// What its executor last said about it (`hm: waiting for a node: ...`, `hm: pulling
    /// ...`), shown beside its time.
    note: Option<String>,
}

/// The longest note shown beside a running step; the rest is cut.
const MAX_NOTE: usize = 72;

impl LiveRenderer {
    pub(crate) fn new(stderr: Box<dyn Write + Send>, color: bool) -> Self {
        Self::with_clock(stderr, color, Box::new(Instant::now))
    }

    pub(crate) fn with_clock(stderr: Box<dyn Write + Send>, color: bool, clock: Clock) -> Self {
        Self {
            out: Output::new(stderr),
            color,
            clock,
            summary: Summary::default(),
            running: Vec::new(),
            logs: HashMap::new(),
            pending: String::new(),
            shown: String::new(),
            block: String::new(),
            dirty: false,
            started: false,
            finished: false,
            total: 0,
            done: 0,
            frame: String::new(),
        }
    }

    fn step_ended(&mut self, end: &StepEnd) {
        self.running.retain(|r| r.step != end.step);
        self.done += 1;
        let log = self.logs.remove(&end.step);
        // Only a failure's log is worth the screen; a passing or cancelled step's is noise.
        // A failed attempt that will be retried shows its log too: a flaky step is news.
        if matches!(end.status, StepStatus::Failed | StepStatus::TimedOut) {
            if let Some(log) = log {
                if let Some(marker) = log.cut_marker() {
                    text::push_prefix(&mut self.pending, &end.step);
                    self.pending.push_str(&marker);
                    self.pending.push('\n');
                }
                for line in log.lines() {
                    text::push_prefix(&mut self.pending, &end.step);
                    self.pending.push_str(line);
                    self.pending.push('\n');
                }
            }
        }
        text::step_end_line(&mut self.pending, end, self.color);
    }

    /// Replaces the block on screen with the pending lines followed by a fresh block.
    fn redraw(&mut self) -> io::Result<()> {
        self.dirty = false;
        self.block.clear();
        if self.started && !self.finished {
            self.draw_block();
        }
        if self.pending.is_empty() && self.block == self.shown {
            return Ok(());
        }
        self.frame.clear();
        let drawn = self.shown.matches('\n').count();
        if drawn > 0 {
            // Up to the block's first line, then clear everything below it.
            let _ = write!(self.frame, "\r\x1b[{drawn}A\x1b[J");
        }
        self.frame.push_str(&self.pending);
        self.pending.clear();
        self.frame.push_str(&self.block);
        std::mem::swap(&mut self.shown, &mut self.block);
        self.out.write_all(self.frame.as_bytes())
    }

    fn draw_block(&mut self) {
        let now = (self.clock)();
        let rows: Vec<(String, String, Option<&str>)> = self
            .running
            .iter()
            .take(MAX_ROWS)
            .map(|r| {
                let mut label: String = r.step.chars().take(MAX_LABEL).collect();
                if r.step.chars().count() > MAX_LABEL {
                    label.push('…');
                }
                if r.attempt > 1 {
                    let _ = write!(label, " (attempt {})", r.attempt);
                }
                let time = elapsed(now.saturating_duration_since(r.since));
                (label, time, r.note.as_deref())
            })
            .collect();
        let width = rows
            .iter()
            .map(|(l, _, _)| l.chars().count())
            .max()
            .unwrap_or(0);
        let time_width = rows.iter().map(|(_, t, _)| t.len()).max().unwrap_or(0);
        for (label, time, note) in &rows {
            let pad = width - label.chars().count();
            let _ = write!(self.block, "  {label}{:pad$}  {time:>time_width$}", "");
            if let Some(note) = note {
                let _ = write!(self.block, "  {note}");
            }
            self.block.push('\n');
        }
        if self.running.len() > MAX_ROWS {
            let _ = writeln!(self.block, "  … and {} more", self.running.len() - MAX_ROWS);
        }
        let _ = writeln!(
            self.block,
            "{} running, {} of {} done",
            self.running.len(),
            self.done,
            self.total
        );
    }
}

/// Elapsed time of a running step in whole seconds: tenths would flicker at every tick.
fn elapsed(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3_600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3_600, secs / 60 % 60),
    }
}

impl Renderer for LiveRenderer {
    fn event(&mut self, ev: &Envelope) -> io::Result<()> {
        if self.out.is_closed() {
            return Ok(());
        }
        if let BuildEvent::StepLog {
            step, line, stream, ..
        } = &ev.event
        {
            // An executor's word on a running step (`hm: ...` on stderr) is its note.
            if let (Stream::Stderr, Some(note)) = (stream, line.strip_prefix("hm: "))
                && let Some(running) = self.running.iter_mut().find(|r| &r.step == step)
            {
                let mut shown: String = note.chars().take(MAX_NOTE).collect();
                if note.chars().count() > MAX_NOTE {
                    shown.push('…');
                }
                running.note = Some(shown);
            }
            match self.logs.get_mut(step.as_str()) {
                Some(log) => log.push(line),
                None => {
                    let mut log = LogTail::new(KEPT_LINES, usize::MAX);
                    log.push(line);
                    self.logs.insert(step.clone(), log);
                }
            }
            return Ok(());
        }
        self.summary.observe(&ev.event);
        // Whether the screen must change; a queued step or a plugin start shows nothing.
        let changed = match &ev.event {
            BuildEvent::BuildStart { steps, .. } => {
                self.started = true;
                self.total = *steps;
                text::run_line(&mut self.pending, &ev.event)
            }
            BuildEvent::StepStart { step, attempt, .. } => {
                self.started = true;
                self.running.retain(|r| &r.step != step);
                self.running.push(Running {
                    step: step.clone(),
                    attempt: *attempt,
                    since: (self.clock)(),
                    note: None,
                });
                // Each attempt's log stands alone: the last one's was shown when it failed.
                self.logs.remove(step.as_str());
                true
            }
            BuildEvent::StepRetry {
                step,
                attempt,
                cause,
            } => {
                self.done = self.done.saturating_sub(1);
                text::step_retry_line(&mut self.pending, step, *attempt, *cause);
                true
            }
            BuildEvent::StepEnd(end) => {
                self.step_ended(end);
                true
            }
            event => match RunTotals::from_event(event) {
                Some(totals) => {
                    self.finished = true;
                    self.pending.push('\n');
                    self.summary.render(&mut self.pending, &totals, self.color);
                    true
                }
                None => text::run_line(&mut self.pending, event),
            },
        };
        self.dirty |= changed;
        Ok(())
    }

    fn tick(&mut self) -> io::Result<()> {
        if self.out.is_closed() {
            return Ok(());
        }
        // Elapsed times change even when no event came.
        self.redraw()?;
        self.out.flush()
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.dirty {
            self.redraw()?;
        }
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex, PoisonError};

    use expect_test::expect;

    use super::*;
    use crate::render::test_support::{
        BrokenPipe, SharedBuf, build_end, build_start, failed_exit, feed, has_sgr, log, log_err,
        passed, queued, start,
    };

    /// A clock the test moves by hand.
    #[derive(Clone)]
    struct FakeClock(Arc<Mutex<Instant>>);

    impl FakeClock {
        fn new() -> Self {
            Self(Arc::new(Mutex::new(Instant::now())))
        }
        fn advance(&self, d: Duration) {
            *self.0.lock().unwrap_or_else(PoisonError::into_inner) += d;
        }
        fn boxed(&self) -> Clock {
            let me = self.clone();
            Box::new(move || *me.0.lock().unwrap_or_else(PoisonError::into_inner))
        }
    }

    fn live(err: &SharedBuf, clock: &FakeClock) -> LiveRenderer {
        LiveRenderer::with_clock(Box::new(err.clone()), false, clock.boxed())
    }

    /// Escape sequences made visible, so the snapshot shows where the block is redrawn.
    fn visible(s: &str) -> String {
        s.replace('\x1b', "⎋")
    }

    #[test]
    fn a_running_step_shows_what_its_executor_last_said_about_it() {
        let (err, clock) = (SharedBuf::default(), FakeClock::new());
        let mut r = live(&err, &clock);
        feed(
            &mut r,
            &[
                build_start(2),
                queued("remote"),
                queued("local"),
                start("remote", 1),
                start("local", 1),
                log_err(
                    "remote",
                    "hm: waiting for a node: no suitable node (insufficient resources on 3 nodes)",
                ),
                // Only hm's own words on stderr are notes, not the step's output.
                log("local", "hm: not a note, the step's stdout"),
            ],
        );
        r.tick().unwrap();
        let block = err.text();
        let last = block.rsplit("⎋[J").next().unwrap_or(&block).to_owned();
        let last = visible(&last);
        assert!(
            last.contains(
                "  remote  0s  waiting for a node: no suitable node (insufficient resources on 3 \
                 nodes)\n"
            ),
            "{last}"
        );
        assert!(last.contains("  local   0s\n"), "{last}");
        feed(&mut r, &[log_err("remote", "hm: running on node node-2")]);
        r.tick().unwrap();
        let block = visible(&err.text());
        let last = block.rsplit("⎋[J").next().unwrap_or(&block);
        assert!(
            last.contains("  remote  0s  running on node node-2\n"),
            "{last}"
        );
    }

    #[test]
    fn failing_step_log_is_shown_passing_step_log_is_not() {
        let (err, clock) = (SharedBuf::default(), FakeClock::new());
        let mut r = live(&err, &clock);
        feed(
            &mut r,
            &[
                build_start(2),
                queued("build"),
                queued("test"),
                start("build", 1),
                start("test", 1),
                log("build", "compiling quietly"),
                log("test", "assertion failed: left == right"),
            ],
        );
        clock.advance(Duration::from_millis(2_500));
        r.tick().unwrap();
        feed(
            &mut r,
            &[
                passed("build", 2_500),
                failed_exit("test", 101, 2_600),
                build_end(StepStatus::Failed, 1, [1, 1, 0, 0]),
            ],
        );
        r.tick().unwrap();
        let text = err.text();
        assert!(!text.contains("compiling quietly"));
        assert!(!has_sgr(&text), "no colour codes when colour is off");
        expect![[r#"
            hm: pipeline "ci": 2 steps, parallelism 2, isolation cgroup_v2
            0 running, 0 of 2 done
            ⎋[1A⎋[J  build  0s
            1 running, 0 of 2 done
            ⎋[2A⎋[J  build  0s
              test   0s
            2 running, 0 of 2 done
            ⎋[3A⎋[J  build  2s
              test   2s
            2 running, 0 of 2 done
            ⎋[3A⎋[J[build] passed in 2.5s
              test  2s
            1 running, 1 of 2 done
            ⎋[2A⎋[J[test] assertion failed: left == right
            [test] failed: exited with code 101
            0 running, 2 of 2 done
            ⎋[1A⎋[J
            step   status  cause     attempts  duration  peak memory  cpu time
            build  passed  -                1      2.5s            -         -
            test   failed  exit 101         1      2.6s            -         -

            1 passed, 1 failed, 0 skipped, 0 cancelled in 3.4s
            run failed (exit code 1)
        "#]]
        .assert_eq(&visible(&text).replace('\r', ""));
    }

    #[test]
    fn long_log_is_cut_with_a_marker() {
        let (err, clock) = (SharedBuf::default(), FakeClock::new());
        let mut r = live(&err, &clock);
        r.event(&crate::render::test_support::env(start("t", 1)))
            .unwrap();
        for i in 0..KEPT_LINES + 5 {
            r.event(&crate::render::test_support::env(log(
                "t",
                &format!("line {i}"),
            )))
            .unwrap();
        }
        feed(&mut r, &[failed_exit("t", 1, 10)]);
        let text = err.text();
        assert!(text.contains("[t] … 5 earlier lines not shown\n[t] line 5\n"));
        assert!(!text.contains("[t] line 4\n"));
        assert!(text.contains(&format!("[t] line {}\n[t] failed", KEPT_LINES + 4)));
    }

    #[test]
    fn retried_attempt_starts_a_fresh_log_and_shows_attempt() {
        let (err, clock) = (SharedBuf::default(), FakeClock::new());
        let mut r = live(&err, &clock);
        feed(
            &mut r,
            &[
                start("t", 1),
                log("t", "first try"),
                failed_exit("t", 1, 10),
                crate::render::test_support::retry("t", 2, crate::events::Cause::Exit),
                start("t", 2),
                log("t", "second try"),
            ],
        );
        clock.advance(Duration::from_secs(75));
        r.tick().unwrap();
        feed(&mut r, &[passed("t", 75_000)]);
        let text = visible(&err.text());
        assert!(text.contains("[t] first try\n[t] failed: exited with code 1\n"));
        assert!(text.contains("[t] retrying after exit (attempt 2)\n"));
        assert!(text.contains("  t (attempt 2)  1m15s\n"));
        assert!(!text.contains("second try"));
    }

    #[test]
    fn tick_redraws_only_when_the_block_changes() {
        let (err, clock) = (SharedBuf::default(), FakeClock::new());
        let mut r = live(&err, &clock);
        feed(&mut r, &[build_start(1), start("a", 1)]);
        let before = err.text();
        clock.advance(Duration::from_millis(900));
        r.tick().unwrap();
        assert_eq!(err.text(), before, "0s is still 0s");
        clock.advance(Duration::from_millis(100));
        r.tick().unwrap();
        assert!(err.text()[before.len()..].contains("  a  1s\n"));
    }

    #[test]
    fn block_lists_at_most_max_rows_steps() {
        let (err, clock) = (SharedBuf::default(), FakeClock::new());
        let mut r = live(&err, &clock);
        let steps: Vec<BuildEvent> = (0..MAX_ROWS + 3)
            .map(|i| start(&format!("s{i:02}"), 1))
            .collect();
        feed(&mut r, &steps);
        let text = err.text();
        let last_frame = text.rsplit("\x1b[J").next().unwrap_or_default();
        assert!(last_frame.contains("  s09  0s\n  … and 3 more\n13 running, 0 of 0 done\n"));
        assert!(!last_frame.contains("s10"));
    }

    #[test]
    fn elapsed_is_in_whole_seconds() {
        assert_eq!(elapsed(Duration::from_millis(999)), "0s");
        assert_eq!(elapsed(Duration::from_secs(59)), "59s");
        assert_eq!(elapsed(Duration::from_secs(61)), "1m01s");
        assert_eq!(elapsed(Duration::from_secs(3_725)), "1h02m");
    }

    #[test]
    fn broken_pipe_is_not_an_error() {
        let pipe = BrokenPipe::default();
        let mut r = LiveRenderer::new(Box::new(pipe.clone()), true);
        feed(&mut r, &[build_start(1), start("a", 1), passed("a", 1)]);
        r.tick().unwrap();
        assert_eq!(pipe.attempts(), 1);
    }
}
