//! Test fixtures for the renderers: in-memory streams and terse event constructors with fixed
//! timestamps and run id, so rendered output is byte-for-byte reproducible.

use std::io::{self, Write};
use std::sync::{Arc, Mutex, PoisonError};

use crate::events::{BuildEvent, Cause, Envelope, Isolation, StepEnd, StepStatus, Stream};

use super::Renderer;

/// A `Write` whose bytes the test can read after handing a clone to a renderer.
#[derive(Clone, Default)]
pub(crate) struct SharedBuf(Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    pub(crate) fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A reader that has gone away: every write fails with EPIPE. Counts the attempts.
#[derive(Clone, Default)]
pub(crate) struct BrokenPipe(Arc<Mutex<usize>>);

impl BrokenPipe {
    pub(crate) fn attempts(&self) -> usize {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Write for BrokenPipe {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        Err(io::Error::from(io::ErrorKind::BrokenPipe))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Feeds `events` to `r`, flushing after each one as the run loop does after a batch.
pub(crate) fn feed(r: &mut dyn Renderer, events: &[BuildEvent]) {
    for event in events {
        r.event(&env(event.clone())).unwrap();
        r.flush().unwrap();
    }
}

pub(crate) fn env(event: BuildEvent) -> Envelope {
    Envelope {
        ts: "2026-01-01T00:00:00.000Z".into(),
        run_id: "r1".into(),
        event,
    }
}

pub(crate) fn build_start(steps: usize) -> BuildEvent {
    BuildEvent::BuildStart {
        pipeline: "ci".into(),
        steps,
        parallelism: 2,
        isolation: Isolation::CgroupV2,
        isolation_reason: None,
    }
}

pub(crate) fn queued(step: &str) -> BuildEvent {
    BuildEvent::StepQueued { step: step.into() }
}

pub(crate) fn start(step: &str, attempt: u32) -> BuildEvent {
    BuildEvent::StepStart {
        step: step.into(),
        attempt,
        executor: "shell".into(),
        plugin_pid: 4242,
    }
}

pub(crate) fn log(step: &str, line: &str) -> BuildEvent {
    BuildEvent::StepLog {
        step: step.into(),
        stream: Stream::Stdout,
        line: line.into(),
        replayed: false,
    }
}

pub(crate) fn log_err(step: &str, line: &str) -> BuildEvent {
    BuildEvent::StepLog {
        step: step.into(),
        stream: Stream::Stderr,
        line: line.into(),
        replayed: false,
    }
}

pub(crate) fn retry(step: &str, attempt: u32, cause: Cause) -> BuildEvent {
    BuildEvent::StepRetry {
        step: step.into(),
        attempt,
        cause,
    }
}

/// A passed attempt; tests change the other fields with struct update syntax on [`end`].
pub(crate) fn passed(step: &str, duration_ms: u64) -> BuildEvent {
    BuildEvent::StepEnd(StepEnd {
        duration_ms,
        ..end(step, StepStatus::Passed, None)
    })
}

pub(crate) fn failed_exit(step: &str, code: i32, duration_ms: u64) -> BuildEvent {
    BuildEvent::StepEnd(StepEnd {
        exit_code: Some(code),
        duration_ms,
        ..end(step, StepStatus::Failed, Some(Cause::Exit))
    })
}

pub(crate) fn end(step: &str, status: StepStatus, cause: Option<Cause>) -> StepEnd {
    StepEnd {
        step: step.into(),
        attempt: 1,
        status,
        cause,
        exit_code: None,
        signal: None,
        duration_ms: 0,
        peak_memory_bytes: None,
        cpu_ms: None,
        message: None,
        allowed_failure: false,
        matrix: None,
        cache: None,
        saved_ms: None,
        artifacts: Vec::new(),
        outputs: Vec::new(),
        node: None,
    }
}

pub(crate) fn build_end(status: StepStatus, exit_code: i32, counts: [usize; 4]) -> BuildEvent {
    let [passed, failed, skipped, cancelled] = counts;
    BuildEvent::BuildEnd {
        status,
        exit_code,
        duration_ms: 3_400,
        passed,
        failed,
        skipped,
        cancelled,
    }
}

/// True when `s` contains an SGR (colour) escape sequence.
pub(crate) fn has_sgr(s: &str) -> bool {
    let mut rest = s;
    while let Some(i) = rest.find("\x1b[") {
        rest = &rest[i + 2..];
        let params = rest
            .find(|c: char| !(c.is_ascii_digit() || c == ';'))
            .unwrap_or(rest.len());
        if rest[params..].starts_with('m') {
            return true;
        }
    }
    false
}
