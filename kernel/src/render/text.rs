//! The words of human output, shared by the plain, live and github renderers and the summary, so
//! that a failure is described the same way wherever the user reads it.

use std::fmt::Write as _;

use nix::sys::signal::Signal;

use crate::events::{BuildEvent, Cause, Isolation, StepEnd, StepStatus};

use super::style::{Tone, paint};

/// A duration for humans: `420ms`, `1.2s`, `2m03s`, `1h05m`. Integer arithmetic only, so the
/// same input always prints the same digits.
pub(crate) fn duration(ms: u64) -> String {
    if ms < 1_000 {
        return format!("{ms}ms");
    }
    let tenths = (ms + 50) / 100;
    if tenths < 600 {
        return format!("{}.{}s", tenths / 10, tenths % 10);
    }
    let secs = (ms + 500) / 1_000;
    if secs < 3_600 {
        return format!("{}m{:02}s", secs / 60, secs % 60);
    }
    let mins = (secs + 30) / 60;
    format!("{}h{:02}m", mins / 60, mins % 60)
}

/// A size in binary units, as limits are written in `hm.toml`: `512 B`, `64 MiB`, `1.5 GiB`.
/// One decimal below 10 units, whole units above, and no `.0`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut unit = 0;
    let mut scale: u128 = 1;
    while unit + 1 < UNITS.len() && u128::from(n) >= scale * 1024 {
        unit += 1;
        scale *= 1024;
    }
    let tenths = (u128::from(n) * 10 + scale / 2) / scale;
    if unit == 0 || tenths >= 100 || tenths % 10 == 0 {
        format!("{} {}", (tenths + 5) / 10, UNITS[unit])
    } else {
        format!("{}.{} {}", tenths / 10, tenths % 10, UNITS[unit])
    }
}

/// `signal 9 (SIGKILL)`, or `signal 99` for a number this platform does not name.
pub(crate) fn signal(sig: i32) -> String {
    match Signal::try_from(sig) {
        Ok(s) => format!("signal {sig} ({})", s.as_str()),
        Err(_) => format!("signal {sig}"),
    }
}

/// The short cause for the summary's cause column: the event's word, with the code or signal number
/// when there is one (`exit 3`, `signal 9`), `-` when none.
pub(crate) fn cause_cell(end: &StepEnd) -> String {
    match (end.cause, end.exit_code, end.signal) {
        (None, ..) => "-".to_owned(),
        (Some(Cause::Exit), Some(code), _) => format!("exit {code}"),
        (Some(Cause::Signal), _, Some(sig)) => format!("signal {sig}"),
        (Some(cause), ..) => cause.as_str().to_owned(),
    }
}

/// How one attempt of a step ended, in two parts: `head` says what happened (`failed`,
/// `killed`, `passed in 1.2s`) and `reason` why, when there is more to say.
pub(crate) struct Verdict {
    pub(crate) head: String,
    pub(crate) reason: Option<String>,
    pub(crate) tone: Tone,
}

pub(crate) fn verdict(end: &StepEnd) -> Verdict {
    let head = match end.status {
        StepStatus::Passed => match end.saved_ms {
            Some(saved) => format!("cached (saved {})", duration(saved)),
            None => format!("passed in {}", duration(end.duration_ms)),
        },
        StepStatus::Skipped => "skipped".to_owned(),
        StepStatus::Cancelled => "cancelled".to_owned(),
        StepStatus::TimedOut => format!("timed out after {}", duration(end.duration_ms)),
        // "killed" tells the user hm (or the kernel) stopped the step rather than the step
        // giving up on its own, which is where they should start looking.
        StepStatus::Failed => match end.cause {
            Some(Cause::Signal | Cause::Oom | Cause::PidsLimit) => "killed".to_owned(),
            _ => "failed".to_owned(),
        },
    };
    Verdict {
        head,
        reason: reason(end),
        tone: Tone::of(end.status, end.allowed_failure),
    }
}

/// The kernel's own sentence wins: it knows the limits and names involved. Otherwise the cause
/// in words, left out when the head already says it ("cancelled: cancelled").
fn reason(end: &StepEnd) -> Option<String> {
    if let Some(message) = &end.message {
        return Some(message.clone());
    }
    let cause = end.cause?;
    Some(match (cause, end.status) {
        (Cause::Cancelled, StepStatus::Cancelled) | (Cause::Timeout, StepStatus::TimedOut) => {
            return None;
        }
        (_, StepStatus::Passed) => return None,
        (Cause::Exit, _) => match end.exit_code {
            Some(code) => format!("exited with code {code}"),
            None => cause.describe().to_owned(),
        },
        (Cause::Signal, _) => match end.signal {
            Some(sig) => signal(sig),
            None => "an unknown signal".to_owned(),
        },
        (Cause::Oom, _) => match end.peak_memory_bytes {
            Some(peak) => format!("out of memory (peak {})", bytes(peak)),
            None => cause.describe().to_owned(),
        },
        _ => cause.describe().to_owned(),
    })
}

/// `[build] failed: exited with code 3 (attempt 2, failure allowed)`, with a newline.
pub(crate) fn step_end_line(out: &mut String, end: &StepEnd, color: bool) {
    let v = verdict(end);
    push_prefix(out, &end.step);
    paint(out, color, v.tone, &v.head);
    if let Some(reason) = &v.reason {
        out.push_str(": ");
        out.push_str(reason);
    }
    let failed = matches!(end.status, StepStatus::Failed | StepStatus::TimedOut);
    match (end.attempt > 1, end.allowed_failure && failed) {
        (true, true) => _ = write!(out, " (attempt {}, failure allowed)", end.attempt),
        (true, false) => _ = write!(out, " (attempt {})", end.attempt),
        (false, true) => out.push_str(" (failure allowed)"),
        (false, false) => {}
    }
    out.push('\n');
}

/// `[build] started`, or `[build] started (attempt 2)` for a retry: the first attempt is the
/// normal case and needs no number.
pub(crate) fn step_start_line(out: &mut String, step: &str, attempt: u32) {
    push_prefix(out, step);
    out.push_str("started");
    if attempt > 1 {
        _ = write!(out, " (attempt {attempt})");
    }
    out.push('\n');
}

/// `[build] retrying after oom (attempt 2)`.
pub(crate) fn step_retry_line(out: &mut String, step: &str, attempt: u32, cause: Cause) {
    push_prefix(out, step);
    let cause = cause.as_str().replace('_', " ");
    _ = writeln!(out, "retrying after {cause} (attempt {attempt})");
}

/// Appends the line about the run or its plugins (rather than one step) that `event` deserves,
/// and says whether there was one: queued steps, plugin starts and clean plugin exits are not
/// worth a line in human output.
pub(crate) fn run_line(out: &mut String, event: &BuildEvent) -> bool {
    match event {
        BuildEvent::BuildStart {
            pipeline,
            steps,
            parallelism,
            isolation,
            isolation_reason,
        } => {
            let noun = if *steps == 1 { "step" } else { "steps" };
            let isolation = match isolation {
                Isolation::CgroupV2 => "cgroup_v2",
                Isolation::CgroupV1 => "cgroup_v1",
                Isolation::Rlimit => "rlimit",
            };
            _ = write!(
                out,
                "hm: pipeline \"{pipeline}\": {steps} {noun}, parallelism {parallelism}, \
                 isolation {isolation}"
            );
            if let Some(reason) = isolation_reason {
                _ = write!(out, " ({reason})");
            }
            out.push('\n');
            true
        }
        BuildEvent::PluginExit {
            plugin,
            pid,
            clean: false,
            cause,
            exit_code,
            signal,
            ..
        } => {
            let why = plugin_exit_reason(*cause, *exit_code, *signal);
            _ = writeln!(out, "hm: plugin \"{plugin}\" (pid {pid}) stopped: {why}");
            true
        }
        BuildEvent::PluginRestart {
            plugin,
            restarts,
            max,
        } => {
            _ = writeln!(
                out,
                "hm: restarting plugin \"{plugin}\" (restart {restarts} of {max})"
            );
            true
        }
        _ => false,
    }
}

/// Why a plugin process went away. `Cause::describe` is phrased for steps ("its executor
/// crashed"), so the plugin's own wording is chosen here.
pub(crate) fn plugin_exit_reason(
    cause: Option<Cause>,
    exit_code: Option<i32>,
    sig: Option<i32>,
) -> String {
    match (cause, exit_code, sig) {
        (Some(Cause::Signal) | None, _, Some(sig)) => format!("killed by {}", signal(sig)),
        (Some(Cause::Exit) | None, Some(code), _) => format!("exited with code {code}"),
        (Some(Cause::ProtocolError), ..) => "broke the protocol".to_owned(),
        (Some(Cause::ExecutorCrash), ..) => "crashed".to_owned(),
        (Some(cause), ..) => cause.describe().to_owned(),
        (None, None, None) => "exited unexpectedly".to_owned(),
    }
}

pub(crate) fn push_prefix(out: &mut String, step: &str) {
    out.push('[');
    out.push_str(step);
    out.push_str("] ");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::test_support::end;

    #[test]
    fn durations() {
        let cases = [
            (0, "0ms"),
            (999, "999ms"),
            (1_000, "1.0s"),
            (1_249, "1.2s"),
            (1_250, "1.3s"),
            (59_949, "59.9s"),
            (59_950, "1m00s"),
            (123_000, "2m03s"),
            (3_599_499, "59m59s"),
            (3_600_000, "1h00m"),
            (3_900_000, "1h05m"),
        ];
        for (ms, want) in cases {
            assert_eq!(duration(ms), want, "{ms} ms");
        }
    }

    #[test]
    fn sizes() {
        let cases = [
            (0, "0 B"),
            (1_023, "1023 B"),
            (1_024, "1 KiB"),
            (1_536, "1.5 KiB"),
            (64 << 20, "64 MiB"),
            (67_000_000, "64 MiB"),
            (3 << 29, "1.5 GiB"),
            (10_200 << 20, "10 GiB"),
            (u64::MAX, "16 EiB"),
        ];
        for (n, want) in cases {
            assert_eq!(bytes(n), want, "{n} bytes");
        }
    }

    fn line(end: StepEnd) -> String {
        let mut s = String::new();
        step_end_line(&mut s, &end, false);
        s
    }

    #[test]
    fn failure_reasons_in_words() {
        let cases = [
            (
                StepEnd {
                    exit_code: Some(3),
                    ..end("build", StepStatus::Failed, Some(Cause::Exit))
                },
                "[build] failed: exited with code 3\n",
            ),
            (
                StepEnd {
                    peak_memory_bytes: Some(64 << 20),
                    message: Some("out of memory (limit 64 MiB, peak 64 MiB)".into()),
                    ..end("build", StepStatus::Failed, Some(Cause::Oom))
                },
                "[build] killed: out of memory (limit 64 MiB, peak 64 MiB)\n",
            ),
            (
                StepEnd {
                    peak_memory_bytes: Some(64 << 20),
                    ..end("build", StepStatus::Failed, Some(Cause::Oom))
                },
                "[build] killed: out of memory (peak 64 MiB)\n",
            ),
            (
                StepEnd {
                    signal: Some(9),
                    ..end("build", StepStatus::Failed, Some(Cause::Signal))
                },
                "[build] killed: signal 9 (SIGKILL)\n",
            ),
            (
                end("build", StepStatus::Failed, Some(Cause::PidsLimit)),
                "[build] killed: hit its process limit\n",
            ),
            (
                StepEnd {
                    duration_ms: 600_000,
                    ..end("build", StepStatus::TimedOut, Some(Cause::Timeout))
                },
                "[build] timed out after 10m00s\n",
            ),
            (
                StepEnd {
                    attempt: 3,
                    ..end("build", StepStatus::Failed, Some(Cause::ExecutorCrash))
                },
                "[build] failed: its executor crashed (attempt 3)\n",
            ),
            (
                StepEnd {
                    message: Some("no plugin provides executor \"foo\"".into()),
                    ..end("build", StepStatus::Failed, Some(Cause::ProtocolError))
                },
                "[build] failed: no plugin provides executor \"foo\"\n",
            ),
            (
                end("deploy", StepStatus::Skipped, Some(Cause::DependencyFailed)),
                "[deploy] skipped: a step it needs failed\n",
            ),
            (
                end("test", StepStatus::Cancelled, Some(Cause::Cancelled)),
                "[test] cancelled\n",
            ),
            (
                StepEnd {
                    exit_code: Some(1),
                    allowed_failure: true,
                    ..end("lint", StepStatus::Failed, Some(Cause::Exit))
                },
                "[lint] failed: exited with code 1 (failure allowed)\n",
            ),
            (
                StepEnd {
                    attempt: 2,
                    duration_ms: 1_234,
                    ..end("build", StepStatus::Passed, None)
                },
                "[build] passed in 1.2s (attempt 2)\n",
            ),
        ];
        for (end, want) in cases {
            assert_eq!(line(end), want);
        }
    }

    #[test]
    fn plugin_exit_reasons() {
        let cases = [
            (
                Some(Cause::Signal),
                None,
                Some(11),
                "killed by signal 11 (SIGSEGV)",
            ),
            (None, Some(2), None, "exited with code 2"),
            (Some(Cause::Oom), None, Some(9), "out of memory"),
            (
                Some(Cause::ProtocolError),
                Some(0),
                None,
                "broke the protocol",
            ),
            (None, None, None, "exited unexpectedly"),
        ];
        for (cause, code, sig, want) in cases {
            assert_eq!(plugin_exit_reason(cause, code, sig), want);
        }
    }
}
