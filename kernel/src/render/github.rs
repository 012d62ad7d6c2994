//! `--format github`: GitHub Actions workflow commands. Each step's log is folded in a
//! `::group::` printed when the step ends, failures become `::error` annotations, then the
//! summary table.
//!
//! Everything goes to stdout. The runner reads workflow commands from both streams, but the two
//! pipes are read separately and their relative order is not kept; with one stream a group's
//! lines can never end up outside it. Diagnostics from `tracing` stay on stderr.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write};

use crate::events::{BuildEvent, Envelope, StepEnd, StepStatus};

use super::Renderer;
use super::log_tail::LogTail;
use super::output::Output;
use super::summary::{RunTotals, Summary};
use super::text;

/// Steps run in parallel, so their logs are held until they end. The whole log is what CI users
/// want, but a step printing gigabytes must not exhaust the runner: past these bounds the oldest
/// lines are dropped and the group says how many.
const KEPT_LINES: usize = 100_000;
const KEPT_BYTES: usize = 16 << 20;

/// Makes the token for `::stop-commands::`; tests replace it to get fixed output.
pub(crate) type TokenSource = Box<dyn FnMut() -> String + Send>;

pub(crate) struct GithubRenderer {
    out: Output,
    color: bool,
    summary: Summary,
    logs: HashMap<String, LogTail>,
    /// `::error` lines of failed attempts, held until we know whether a retry follows: a red
    /// annotation for an attempt that was retried and then passed would be a false alarm.
    /// Written when the run ends, in the order the failures happened.
    errors: Vec<(String, String)>,
    token: TokenSource,
    buf: String,
}

impl GithubRenderer {
    pub(crate) fn new(stdout: Box<dyn Write + Send>, color: bool) -> Self {
        Self::with_token_source(stdout, color, Box::new(random_token))
    }

    pub(crate) fn with_token_source(
        stdout: Box<dyn Write + Send>,
        color: bool,
        token: TokenSource,
    ) -> Self {
        Self {
            out: Output::new(stdout),
            color,
            summary: Summary::default(),
            logs: HashMap::new(),
            errors: Vec::new(),
            token,
            buf: String::new(),
        }
    }

    fn step_ended(&mut self, end: &StepEnd) {
        let v = text::verdict(end);
        if let Some(log) = self.logs.remove(&end.step) {
            self.group(end, &log);
        }
        text::step_end_line(&mut self.buf, end, self.color);

        if !matches!(end.status, StepStatus::Failed | StepStatus::TimedOut) {
            return;
        }
        let mut message = v.head;
        if let Some(reason) = v.reason {
            message.push_str(": ");
            message.push_str(&reason);
        }
        if end.allowed_failure {
            // Allowed failures are worth a look but must not look like what broke the build.
            message.push_str(" (failure allowed)");
            command(&mut self.buf, "warning", &end.step, &message);
        } else {
            self.errors.push((end.step.clone(), message));
        }
    }

    fn group(&mut self, end: &StepEnd, log: &LogTail) {
        // A hit's log is the recorded one: the title says it was replayed.
        let status = match end.saved_ms {
            Some(_) => "cached",
            None => end.status.as_str(),
        };
        let mut title = format!("{} ({status}", end.step);
        if end.attempt > 1 {
            let _ = write!(title, ", attempt {}", end.attempt);
        }
        title.push(')');
        let _ = writeln!(self.buf, "::group::{}", escape_data(&title));

        // A step's output is not ours to trust: a line like `::endgroup::` or `::add-mask::`
        // would be obeyed by the runner. Commands are switched off around such a log with a
        // token the step could not have guessed.
        let stop = log.lines().any(looks_like_command).then(|| (self.token)());
        if let Some(token) = &stop {
            let _ = writeln!(self.buf, "::stop-commands::{token}");
        }
        if let Some(marker) = log.cut_marker() {
            self.buf.push_str(&marker);
            self.buf.push('\n');
        }
        for line in log.lines() {
            self.buf.push_str(line);
            self.buf.push('\n');
        }
        if let Some(token) = &stop {
            let _ = writeln!(self.buf, "::{token}::");
        }
        self.buf.push_str("::endgroup::\n");
    }
}

impl Renderer for GithubRenderer {
    fn event(&mut self, ev: &Envelope) -> io::Result<()> {
        if self.out.is_closed() {
            return Ok(());
        }
        if let BuildEvent::StepLog { step, line, .. } = &ev.event {
            match self.logs.get_mut(step.as_str()) {
                Some(log) => log.push(line),
                None => {
                    let mut log = LogTail::new(KEPT_LINES, KEPT_BYTES);
                    log.push(line);
                    self.logs.insert(step.clone(), log);
                }
            }
            return Ok(());
        }
        self.summary.observe(&ev.event);
        self.buf.clear();
        match &ev.event {
            // A start line outside any group shows progress while the run is live, since the
            // groups themselves only appear when steps end.
            BuildEvent::StepStart { step, attempt, .. } => {
                text::step_start_line(&mut self.buf, step, *attempt);
            }
            BuildEvent::StepRetry {
                step,
                attempt,
                cause,
            } => {
                if let Some(i) = self.errors.iter().rposition(|(s, _)| s == step) {
                    self.errors.remove(i);
                }
                text::step_retry_line(&mut self.buf, step, *attempt, *cause);
            }
            BuildEvent::StepEnd(end) => self.step_ended(end),
            BuildEvent::PluginExit { clean: false, .. } => {
                let mut line = String::new();
                text::run_line(&mut line, &ev.event);
                let line = line.trim_end().trim_start_matches("hm: ");
                command(&mut self.buf, "warning", "hm", line);
            }
            event => {
                if let Some(totals) = RunTotals::from_event(event) {
                    for (step, message) in std::mem::take(&mut self.errors) {
                        command(&mut self.buf, "error", &step, &message);
                    }
                    self.buf.push('\n');
                    self.summary.render(&mut self.buf, &totals, self.color);
                } else {
                    text::run_line(&mut self.buf, event);
                }
            }
        }
        self.out.write_all(self.buf.as_bytes())
    }

    fn tick(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// `::error title=build::failed: exited with code 3`, with the newline.
fn command(out: &mut String, name: &str, title: &str, message: &str) {
    let _ = writeln!(
        out,
        "::{name} title={}::{}",
        escape_property(title),
        escape_data(message)
    );
}

/// Whether the runner would take `line` as a workflow command: `::cmd::` after leading
/// whitespace (v2), or the legacy `##[cmd]` anywhere in the line (v1).
fn looks_like_command(line: &str) -> bool {
    line.trim_start().starts_with("::") || line.contains("##[")
}

/// The escaping the runner undoes in a command's data (after the last `::`).
fn escape_data(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '\r' => out.push_str("%0D"),
            '\n' => out.push_str("%0A"),
            c => out.push(c),
        }
    }
    out
}

/// Property values also end at `,` and `:`, so those are escaped too.
fn escape_property(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '\r' => out.push_str("%0D"),
            '\n' => out.push_str("%0A"),
            ':' => out.push_str("%3A"),
            ',' => out.push_str("%2C"),
            c => out.push(c),
        }
    }
    out
}

/// 64 unpredictable bits from std's per-process random hash keys; hm needs no other randomness,
/// so this avoids a dependency on a random number crate.
fn random_token() -> String {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(u64::from(std::process::id()));
    format!("hm-{:016x}", hasher.finish())
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;
    use crate::events::Cause;
    use crate::render::test_support::{
        BrokenPipe, SharedBuf, build_end, build_start, end, failed_exit, feed, has_sgr, log,
        log_err, passed, queued, retry, start,
    };
    use crate::render::{Format, RenderOptions, renderer};

    fn github(out: &SharedBuf) -> GithubRenderer {
        GithubRenderer::with_token_source(
            Box::new(out.clone()),
            false,
            Box::new(|| "TOKEN".to_owned()),
        )
    }

    #[test]
    fn each_step_log_is_grouped_at_its_end_and_failures_annotated() {
        let out = SharedBuf::default();
        let mut r = github(&out);
        feed(
            &mut r,
            &[
                build_start(3),
                queued("build"),
                queued("test"),
                queued("lint"),
                start("build", 1),
                start("test", 1),
                log("test", "running 1 test"),
                log("build", "Compiling hm"),
                log_err("test", "thread 'a' panicked"),
                log("build", "Finished"),
                passed("build", 1_200),
                failed_exit("test", 101, 2_000),
                start("lint", 1),
                BuildEvent::StepEnd(StepEnd {
                    exit_code: Some(1),
                    allowed_failure: true,
                    ..end("lint", StepStatus::Failed, Some(Cause::Exit))
                }),
                build_end(StepStatus::Failed, 1, [1, 1, 0, 0]),
            ],
        );
        expect![[r#"
            hm: pipeline "ci": 3 steps, parallelism 2, isolation cgroup_v2
            [build] started
            [test] started
            ::group::build (passed)
            Compiling hm
            Finished
            ::endgroup::
            [build] passed in 1.2s
            ::group::test (failed)
            running 1 test
            thread 'a' panicked
            ::endgroup::
            [test] failed: exited with code 101
            [lint] started
            [lint] failed: exited with code 1 (failure allowed)
            ::warning title=lint::failed: exited with code 1 (failure allowed)
            ::error title=test::failed: exited with code 101

            step   status            cause     attempts  duration  peak memory  cpu time
            build  passed            -                1      1.2s            -         -
            test   failed            exit 101         1      2.0s            -         -
            lint   failed (allowed)  exit 1           1       0ms            -         -

            1 passed, 1 failed, 0 skipped, 0 cancelled in 3.4s
            run failed (exit code 1)
        "#]]
        .assert_eq(&out.text());
    }

    #[test]
    fn a_retried_attempt_is_not_an_error() {
        let out = SharedBuf::default();
        let mut r = github(&out);
        feed(
            &mut r,
            &[
                start("t", 1),
                log("t", "flaky"),
                failed_exit("t", 1, 10),
                retry("t", 2, Cause::Exit),
                start("t", 2),
                BuildEvent::StepEnd(StepEnd {
                    attempt: 2,
                    ..end("t", StepStatus::Passed, None)
                }),
                build_end(StepStatus::Passed, 0, [1, 0, 0, 0]),
            ],
        );
        let text = out.text();
        assert!(text.contains("::group::t (failed)\nflaky\n::endgroup::\n"));
        assert!(text.contains("[t] passed in 0ms (attempt 2)\n"));
        assert!(!text.contains("::error"));
    }

    #[test]
    fn workflow_command_data_is_escaped() {
        assert_eq!(escape_data("50%\r\nnext"), "50%25%0D%0Anext");
        assert_eq!(escape_property("a:b,c%\n"), "a%3Ab%2Cc%25%0A");

        let out = SharedBuf::default();
        let mut r = github(&out);
        feed(
            &mut r,
            &[
                log("a:b", "x"),
                BuildEvent::StepEnd(StepEnd {
                    message: Some("100% broken\nsee above".into()),
                    ..end("a:b", StepStatus::Failed, Some(Cause::ProtocolError))
                }),
                build_end(StepStatus::Failed, 1, [0, 1, 0, 0]),
            ],
        );
        let text = out.text();
        assert!(text.contains("::group::a:b (failed)\n"));
        assert!(text.contains("::error title=a%3Ab::failed: 100%25 broken%0Asee above\n"));
    }

    #[test]
    fn commands_in_a_step_log_are_not_obeyed() {
        let out = SharedBuf::default();
        let mut r = github(&out);
        feed(
            &mut r,
            &[
                log("evil", "  ::endgroup::"),
                log("evil", "##[add-mask]x"),
                passed("evil", 5),
            ],
        );
        expect![[r#"
            ::group::evil (passed)
            ::stop-commands::TOKEN
              ::endgroup::
            ##[add-mask]x
            ::TOKEN::
            ::endgroup::
            [evil] passed in 5ms
        "#]]
        .assert_eq(&out.text());
        assert!(looks_like_command("::warning::x"));
        assert!(!looks_like_command("a :: b"));
        assert_ne!(random_token(), random_token());
    }

    #[test]
    fn unclean_plugin_exit_is_a_warning() {
        let out = SharedBuf::default();
        let mut r = github(&out);
        feed(
            &mut r,
            &[BuildEvent::PluginExit {
                plugin: "docker".into(),
                pid: 9,
                clean: false,
                cause: None,
                exit_code: Some(2),
                signal: None,
                message: None,
            }],
        );
        assert_eq!(
            out.text(),
            "::warning title=hm::plugin \"docker\" (pid 9) stopped: exited with code 2\n"
        );
    }

    #[test]
    fn writes_to_stdout_only_and_without_colour_when_off() {
        let (out, err) = (SharedBuf::default(), SharedBuf::default());
        let opts = RenderOptions {
            format: Format::Github,
            color: false,
            tty: false,
            logs: false,
        };
        let mut r = renderer(&opts, Box::new(out.clone()), Box::new(err.clone()));
        feed(
            r.as_mut(),
            &[
                start("a", 1),
                passed("a", 1),
                build_end(StepStatus::Passed, 0, [1, 0, 0, 0]),
            ],
        );
        assert_eq!(err.text(), "");
        assert!(out.text().contains("[a] passed"));
        assert!(!has_sgr(&out.text()));
    }

    #[test]
    fn broken_pipe_is_not_an_error() {
        let pipe = BrokenPipe::default();
        let mut r = GithubRenderer::new(Box::new(pipe.clone()), false);
        feed(
            &mut r,
            &[
                start("a", 1),
                log("a", "x"),
                failed_exit("a", 1, 1),
                build_end(StepStatus::Failed, 1, [0, 1, 0, 0]),
            ],
        );
        assert_eq!(pipe.attempts(), 1);
    }
}
