//! `--format json`: every event as one JSON object per line on stdout (DESIGN §4), for machines.
//! Nothing goes to stderr, so `hm run --format json | jq` sees the whole story on one stream.

use std::io::{self, Write};

use crate::events::Envelope;

use super::Renderer;
use super::output::Output;

pub(crate) struct JsonRenderer {
    out: Output,
    /// One event's serialized bytes. Reused for every event: a chatty step emits millions of
    /// `step_log` events, and one `write_all` of a whole line is cheaper than serde_json's many
    /// small writes through the `Output` wrapper.
    line: Vec<u8>,
}

impl JsonRenderer {
    pub(crate) fn new(stdout: Box<dyn Write + Send>) -> Self {
        Self {
            out: Output::new(stdout),
            line: Vec::with_capacity(512),
        }
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
    use crate::events::{BuildEvent, Cause, StepEnd, StepStatus};
    use crate::render::test_support::{
        BrokenPipe, SharedBuf, build_end, build_start, end, env, feed, log, log_err, passed,
        queued, retry, start,
    };
    use crate::render::{Format, RenderOptions, renderer};

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
            {"ts":"2026-01-01T00:00:00.000Z","run_id":"r1","kind":"step_end","step":"build","attempt":1,"status":"failed","cause":"oom","exit_code":137,"signal":9,"duration_ms":0,"peak_memory_bytes":67108864,"cpu_ms":null}
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
