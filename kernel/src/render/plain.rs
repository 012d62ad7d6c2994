//! Human output for CI logs, pipes and `--logs`: every log line as `[step] line` on stderr, as it
//! arrives, with a line for each step start, end and retry, then the summary table.

use std::io::{self, Write};

use crate::events::{BuildEvent, Envelope, Stream};

use super::Renderer;
use super::output::Output;
use super::summary::{RunTotals, Summary};
use super::text;

pub(crate) struct PlainRenderer {
    out: Output,
    color: bool,
    summary: Summary,
    /// Reused for the formatted lines, which are few; log lines bypass it.
    line: String,
}

impl PlainRenderer {
    pub(crate) fn new(stderr: Box<dyn Write + Send>, color: bool) -> Self {
        Self {
            out: Output::new(stderr),
            color,
            summary: Summary::default(),
            line: String::new(),
        }
    }
}

impl Renderer for PlainRenderer {
    fn event(&mut self, ev: &Envelope) -> io::Result<()> {
        if self.out.is_closed() {
            return Ok(());
        }
        // Steps run in parallel, so their lines interleave; the prefix on every line is what
        // lets the reader (and grep) follow one step. Streams share the format because the
        // order of stdout and stderr lines matters more than which was which.
        if let BuildEvent::StepLog {
            step,
            line,
            replayed,
            ..
        } = &ev.event
        {
            self.out.write_all(b"[")?;
            self.out.write_all(step.as_bytes())?;
            // A line from the cache says so: the step did not run now.
            self.out
                .write_all(if *replayed { b"] (cached) " } else { b"] " })?;
            self.out.write_all(line.as_bytes())?;
            return self.out.write_all(b"\n");
        }
        self.summary.observe(&ev.event);
        self.line.clear();
        match &ev.event {
            BuildEvent::StepStart { step, attempt, .. } => {
                text::step_start_line(&mut self.line, step, *attempt);
            }
            BuildEvent::StepRetry {
                step,
                attempt,
                cause,
            } => text::step_retry_line(&mut self.line, step, *attempt, *cause),
            BuildEvent::StepEnd(end) => text::step_end_line(&mut self.line, end, self.color),
            event => {
                if let Some(totals) = RunTotals::from_event(event) {
                    self.line.push('\n');
                    self.summary.render(&mut self.line, &totals, self.color);
                } else {
                    text::run_line(&mut self.line, event);
                }
            }
        }
        self.out.write_all(self.line.as_bytes())
    }

    fn step_log(
        &mut self,
        _ts: &str,
        _run_id: &str,
        step: &str,
        _stream: Stream,
        line: &str,
    ) -> io::Result<()> {
        if self.out.is_closed() {
            return Ok(());
        }
        self.out.write_all(b"[")?;
        self.out.write_all(step.as_bytes())?;
        self.out.write_all(b"] ")?;
        self.out.write_all(line.as_bytes())?;
        self.out.write_all(b"\n")
    }

    fn tick(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;
    use crate::events::{Cause, Isolation, StepEnd, StepStatus};
    use crate::render::test_support::{
        BrokenPipe, SharedBuf, build_end, build_start, end, failed_exit, feed, has_sgr, log,
        log_err, passed, queued, retry, start,
    };
    use crate::render::{Format, RenderOptions, renderer};

    fn plain_run(events: &[BuildEvent], color: bool) -> (String, String) {
        let (out, err) = (SharedBuf::default(), SharedBuf::default());
        let opts = RenderOptions {
            format: Format::Human,
            color,
            tty: false,
            logs: false,
        };
        let mut r = renderer(&opts, Box::new(out.clone()), Box::new(err.clone()));
        feed(r.as_mut(), events);
        (out.text(), err.text())
    }

    fn two_steps() -> Vec<BuildEvent> {
        vec![
            build_start(2),
            queued("build"),
            queued("test"),
            start("build", 1),
            start("test", 1),
            log("build", "Compiling hm v0.1.0"),
            log("test", "running 3 tests"),
            log_err("build", "warning: unused variable"),
            log("test", "test a ... FAILED"),
            passed("build", 1_234),
            failed_exit("test", 3, 2_000),
            retry("test", 2, Cause::Exit),
            start("test", 2),
            log("test", "test a ... ok"),
            BuildEvent::StepEnd(StepEnd {
                attempt: 2,
                duration_ms: 900,
                ..end("test", StepStatus::Passed, None)
            }),
            build_end(StepStatus::Passed, 0, [2, 0, 0, 0]),
        ]
    }

    #[test]
    fn interleaved_steps_stream_with_prefixes_to_stderr() {
        let (out, err) = plain_run(&two_steps(), false);
        assert_eq!(out, "", "human output is on stderr");
        expect![[r#"
            hm: pipeline "ci": 2 steps, parallelism 2, isolation cgroup_v2
            [build] started
            [test] started
            [build] Compiling hm v0.1.0
            [test] running 3 tests
            [build] warning: unused variable
            [test] test a ... FAILED
            [build] passed in 1.2s
            [test] failed: exited with code 3
            [test] retrying after exit (attempt 2)
            [test] started (attempt 2)
            [test] test a ... ok
            [test] passed in 900ms (attempt 2)

            step   status  cause  attempts  duration  peak memory  cpu time
            build  passed  -             1      1.2s            -         -
            test   passed  -             2     900ms            -         -

            2 passed, 0 failed, 0 skipped, 0 cancelled in 3.4s
            run passed (exit code 0)
        "#]]
        .assert_eq(&err);
    }

    #[test]
    fn failures_plugins_and_isolation_are_explained() {
        let events = [
            BuildEvent::BuildStart {
                pipeline: "ci".into(),
                steps: 1,
                parallelism: 1,
                isolation: Isolation::Rlimit,
                isolation_reason: Some("cgroup v2 is not delegated to this user".into()),
            },
            queued("build"),
            start("build", 1),
            BuildEvent::PluginExit {
                plugin: "shell".into(),
                pid: 4242,
                clean: false,
                cause: Some(Cause::Signal),
                exit_code: None,
                signal: Some(11),
                message: None,
            },
            BuildEvent::PluginRestart {
                plugin: "shell".into(),
                restarts: 1,
                max: 3,
            },
            BuildEvent::PluginExit {
                plugin: "docker".into(),
                pid: 4243,
                clean: true,
                cause: None,
                exit_code: Some(0),
                signal: None,
                message: None,
            },
            BuildEvent::StepEnd(StepEnd {
                peak_memory_bytes: Some(64 << 20),
                message: Some("out of memory (limit 64 MiB, peak 64 MiB)".into()),
                duration_ms: 5_000,
                ..end("build", StepStatus::Failed, Some(Cause::Oom))
            }),
            build_end(StepStatus::Failed, 1, [0, 1, 0, 0]),
        ];
        let (_, err) = plain_run(&events, false);
        expect![[r#"
            hm: pipeline "ci": 1 step, parallelism 1, isolation rlimit (cgroup v2 is not delegated to this user)
            [build] started
            hm: plugin "shell" (pid 4242) stopped: killed by signal 11 (SIGSEGV)
            hm: restarting plugin "shell" (restart 1 of 3)
            [build] killed: out of memory (limit 64 MiB, peak 64 MiB)

            step   status  cause  attempts  duration  peak memory  cpu time
            build  failed  oom           1      5.0s       64 MiB         -

            0 passed, 1 failed, 0 skipped, 0 cancelled in 3.4s
            run failed (exit code 1)
        "#]]
        .assert_eq(&err);
    }

    #[test]
    fn no_colour_codes_when_colour_is_off() {
        let (_, err) = plain_run(&two_steps(), false);
        assert!(!has_sgr(&err));
        let (_, err) = plain_run(&two_steps(), true);
        assert!(err.contains("[build] \x1b[32mpassed in 1.2s\x1b[0m"));
    }

    #[test]
    fn logs_flag_on_a_terminal_streams_plainly() {
        let err = SharedBuf::default();
        let opts = RenderOptions {
            format: Format::Human,
            color: false,
            tty: true,
            logs: true,
        };
        let mut r = renderer(&opts, Box::new(SharedBuf::default()), Box::new(err.clone()));
        feed(r.as_mut(), &[start("a", 1), log("a", "hello")]);
        assert_eq!(err.text(), "[a] started\n[a] hello\n");
    }

    #[test]
    fn broken_pipe_is_not_an_error() {
        let pipe = BrokenPipe::default();
        let mut r = PlainRenderer::new(Box::new(pipe.clone()), false);
        feed(&mut r, &two_steps());
        assert_eq!(pipe.attempts(), 1);
    }
}
