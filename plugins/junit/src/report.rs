//! What the report knows about the run: the events the hook observed, folded into one record
//! per step, and the JUnit verdict of each step. Pure data, no I/O: [`crate::xml`] writes it.
//!
//! Events are read leniently. They are hm's `--format json` lines (`docs/events.md`); a field that
//! is missing or of another type is taken as absent rather than failing the report, since a report
//! with a gap is worth more than none.

use std::collections::HashMap;

use serde_json::Value;

/// The run as the hook saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// `build_start.pipeline`, else the pipeline hm named at `Init`.
    pub pipeline: String,
    pub run_id: String,
    /// `build_start.ts` (RFC 3339).
    pub started_at: Option<String>,
    pub isolation: Option<String>,
    pub parallelism: Option<u64>,
    /// In the order hm queued them (its order of the pipeline's steps), then any step first
    /// seen later.
    steps: Vec<StepRecord>,
    by_name: HashMap<String, usize>,
    pub end: Option<BuildEnd>,
}

/// One step: every attempt that ended, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRecord {
    pub name: String,
    /// The highest attempt a `step_start` announced (0: none started).
    pub started: u32,
    pub executor: Option<String>,
    pub attempts: Vec<Attempt>,
}

/// One `step_end`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attempt {
    pub attempt: u32,
    pub status: String,
    pub cause: Option<String>,
    pub exit_code: Option<i64>,
    pub signal: Option<i64>,
    pub duration_ms: u64,
    pub peak_memory_bytes: Option<u64>,
    pub cpu_ms: Option<u64>,
    pub message: Option<String>,
    pub allowed_failure: bool,
    /// The cause a `step_retry` gave after this attempt: another attempt follows.
    pub retried: Option<String>,
    /// The paths of the files it handed on (`step_end.artifacts`), relative to the project.
    pub artifacts: Vec<String>,
    /// On a cache hit: how long the step took when its result was stored (`saved_ms`).
    pub saved_ms: Option<u64>,
}

/// `build_end`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuildEnd {
    pub status: String,
    pub exit_code: Option<i64>,
    pub duration_ms: u64,
    /// `passed + failed + skipped + cancelled`: how many steps hm ended.
    pub steps: u64,
}

/// What JUnit makes of a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Passed,
    /// The step itself failed: `<failure>`. `kind` is the cause (`exit`, `signal`, `oom`,
    /// `timeout`, ...).
    Failure {
        kind: String,
        message: String,
    },
    /// Running the step broke, not the step (its executor crashed or broke the protocol), or
    /// the report cannot tell how it ended: `<error>`.
    Error {
        kind: String,
        message: String,
    },
    /// The step did not run (`skipped`, `cancelled`), or failed with `allow_failure`:
    /// `<skipped>`.
    Skipped {
        message: String,
    },
}

/// The `<error type>` of a step hm never reported the end of to the hook.
pub const NO_STEP_END: &str = "no_step_end";

/// The message hm gives an allowed failure that has no message of its own.
const ALLOWED_PLACEHOLDER: &str = "failure allowed";

impl Report {
    /// An empty report of the run hm described at `Init`.
    pub fn new(pipeline: &str, run_id: &str) -> Self {
        Self {
            pipeline: pipeline.to_owned(),
            run_id: run_id.to_owned(),
            ..Self::default()
        }
    }

    /// Folds one event in. Kinds the report has no use for, and step events without a step
    /// name, are ignored.
    pub fn apply(&mut self, event: &Value) {
        let kind = event["kind"].as_str().unwrap_or_default();
        if kind == "build_start" {
            // A new run: what came before it belongs to another.
            let run_id = string(&event["run_id"]).unwrap_or_else(|| self.run_id.clone());
            let pipeline = string(&event["pipeline"]).unwrap_or_else(|| self.pipeline.clone());
            *self = Self {
                started_at: string(&event["ts"]),
                isolation: string(&event["isolation"]),
                parallelism: event["parallelism"].as_u64(),
                ..Self::new(&pipeline, &run_id)
            };
            return;
        }
        if kind == "build_end" {
            let count = |field: &str| event[field].as_u64().unwrap_or(0);
            self.end = Some(BuildEnd {
                status: string(&event["status"]).unwrap_or_default(),
                exit_code: event["exit_code"].as_i64(),
                duration_ms: event["duration_ms"].as_u64().unwrap_or(0),
                steps: ["passed", "failed", "skipped", "cancelled"]
                    .into_iter()
                    .map(count)
                    .sum(),
            });
            return;
        }
        if !matches!(
            kind,
            "step_queued" | "step_start" | "step_retry" | "step_end"
        ) {
            return;
        }
        let Some(name) = event["step"].as_str() else {
            return;
        };
        let step = self.step_mut(name);
        match kind {
            "step_start" => {
                let attempt = u32_field(&event["attempt"]).unwrap_or(1);
                step.started = step.started.max(attempt);
                step.executor = string(&event["executor"]).or(step.executor.take());
            }
            "step_retry" => {
                if let Some(last) = step.attempts.last_mut() {
                    last.retried = Some(string(&event["cause"]).unwrap_or_default());
                }
            }
            "step_end" => step.attempts.push(Attempt {
                attempt: u32_field(&event["attempt"]).unwrap_or(1),
                status: string(&event["status"]).unwrap_or_default(),
                cause: string(&event["cause"]),
                exit_code: event["exit_code"].as_i64(),
                signal: event["signal"].as_i64(),
                duration_ms: event["duration_ms"].as_u64().unwrap_or(0),
                peak_memory_bytes: event["peak_memory_bytes"].as_u64(),
                cpu_ms: event["cpu_ms"].as_u64(),
                message: string(&event["message"]),
                allowed_failure: event["allowed_failure"].as_bool().unwrap_or(false),
                retried: None,
                saved_ms: event["saved_ms"].as_u64(),
                artifacts: event["artifacts"]
                    .as_array()
                    .map(|list| list.iter().filter_map(|a| string(&a["path"])).collect())
                    .unwrap_or_default(),
            }),
            // `step_queued` only puts the step in its place.
            _ => {}
        }
    }

    /// The steps, in pipeline order.
    pub fn steps(&self) -> &[StepRecord] {
        &self.steps
    }

    /// How many steps hm ended that this report knows nothing of: events the hook missed (a
    /// full queue, or a restart of the plugin that lost what it had gathered).
    pub fn unknown_steps(&self) -> u64 {
        self.end
            .as_ref()
            .map_or(0, |end| end.steps.saturating_sub(self.steps.len() as u64))
    }

    fn step_mut(&mut self, name: &str) -> &mut StepRecord {
        let index = match self.by_name.get(name) {
            Some(&index) => index,
            None => {
                self.steps.push(StepRecord {
                    name: name.to_owned(),
                    started: 0,
                    executor: None,
                    attempts: Vec::new(),
                });
                self.by_name.insert(name.to_owned(), self.steps.len() - 1);
                self.steps.len() - 1
            }
        };
        &mut self.steps[index]
    }
}

impl StepRecord {
    /// The attempt that decided the step: the last one, unless hm said another would follow.
    pub fn final_attempt(&self) -> Option<&Attempt> {
        self.attempts.last().filter(|a| a.retried.is_none())
    }

    /// The attempts hm retried.
    pub fn retried_attempts(&self) -> impl Iterator<Item = &Attempt> {
        self.attempts.iter().filter(|a| a.retried.is_some())
    }

    /// What JUnit makes of the step: see [`Verdict`].
    pub fn verdict(&self) -> Verdict {
        let Some(last) = self.final_attempt() else {
            let started = match self.attempts.last() {
                Some(retried) => format!(" (attempt {} was to follow)", retried.attempt + 1),
                None if self.started > 0 => format!(" (attempt {} started)", self.started),
                None => String::new(),
            };
            return Verdict::Error {
                kind: NO_STEP_END.to_owned(),
                message: format!("hm reported no end of this step to the junit hook{started}"),
            };
        };
        let what = last.describe();
        if last.allowed_failure {
            return Verdict::Skipped {
                message: format!("failure allowed: {what}"),
            };
        }
        match last.status.as_str() {
            "passed" => Verdict::Passed,
            "skipped" => Verdict::Skipped {
                message: format!("skipped: {what}"),
            },
            "cancelled" => Verdict::Skipped {
                message: format!("cancelled: {what}"),
            },
            "timed_out" => Verdict::Failure {
                kind: "timeout".to_owned(),
                message: what,
            },
            "failed" => {
                let kind = last.cause.clone().unwrap_or_else(|| "failed".to_owned());
                if matches!(kind.as_str(), "executor_crash" | "protocol_error") {
                    Verdict::Error {
                        kind,
                        message: what,
                    }
                } else {
                    Verdict::Failure {
                        kind,
                        message: what,
                    }
                }
            }
            // A status newer than this plugin: say so rather than guess.
            other => Verdict::Error {
                kind: if other.is_empty() { "unknown" } else { other }.to_owned(),
                message: what,
            },
        }
    }
}

impl Attempt {
    /// What happened, in a few words: hm's own message when it gave one, else the cause with
    /// its numbers ("exited with code 3", "killed by signal 9 (SIGKILL)").
    pub fn describe(&self) -> String {
        if let Some(message) = self
            .message
            .as_deref()
            .filter(|m| *m != ALLOWED_PLACEHOLDER)
        {
            return message.to_owned();
        }
        match self.cause.as_deref() {
            Some("exit") => match self.exit_code {
                Some(code) => format!("exited with code {code}"),
                None => "exited with a non-zero code".to_owned(),
            },
            Some("signal") => match self.signal {
                Some(signal) => match signal_name(signal) {
                    Some(name) => format!("killed by signal {signal} ({name})"),
                    None => format!("killed by signal {signal}"),
                },
                None => "killed by a signal".to_owned(),
            },
            Some("oom") => "ran out of memory".to_owned(),
            Some("pids_limit") => "hit its process limit".to_owned(),
            Some("timeout") => format!("timed out after {}s", seconds(self.duration_ms)),
            Some("executor_crash") => "its executor crashed".to_owned(),
            Some("protocol_error") => "its executor broke the protocol".to_owned(),
            Some("dependency_failed") => "a step it needs failed".to_owned(),
            Some("hook_abort") => "aborted by a hook".to_owned(),
            Some("cancelled") => "the run was cancelled".to_owned(),
            Some(other) => other.to_owned(),
            None if self.status.is_empty() => "no status".to_owned(),
            None => self.status.clone(),
        }
    }
}

/// `1234` ms as `1.234`: JUnit times are seconds, and milliseconds are what hm measures.
pub fn seconds(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// The Linux name of the standard signals a step is commonly killed by.
fn signal_name(signal: i64) -> Option<&'static str> {
    Some(match signal {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        10 => "SIGUSR1",
        11 => "SIGSEGV",
        12 => "SIGUSR2",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        24 => "SIGXCPU",
        25 => "SIGXFSZ",
        31 => "SIGSYS",
        _ => return None,
    })
}

fn string(value: &Value) -> Option<String> {
    value.as_str().map(str::to_owned)
}

fn u32_field(value: &Value) -> Option<u32> {
    value.as_u64().and_then(|n| u32::try_from(n).ok())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn end(fields: Value) -> Attempt {
        let mut event = json!({ "kind": "step_end", "step": "s", "attempt": 1 });
        for (key, value) in fields.as_object().unwrap() {
            event[key] = value.clone();
        }
        let mut report = Report::new("p", "r");
        report.apply(&event);
        report.steps()[0].attempts[0].clone()
    }

    fn check(fields: Value, expected: Verdict) {
        let attempt = end(fields.clone());
        let record = StepRecord {
            name: "s".into(),
            started: 1,
            executor: None,
            attempts: vec![attempt],
        };
        assert_eq!(record.verdict(), expected, "{fields}");
    }

    fn failure(kind: &str, message: &str) -> Verdict {
        Verdict::Failure {
            kind: kind.into(),
            message: message.into(),
        }
    }

    fn error(kind: &str, message: &str) -> Verdict {
        Verdict::Error {
            kind: kind.into(),
            message: message.into(),
        }
    }

    fn skipped(message: &str) -> Verdict {
        Verdict::Skipped {
            message: message.into(),
        }
    }

    #[test]
    fn each_status_and_cause_has_its_verdict() {
        check(json!({ "status": "passed" }), Verdict::Passed);
        check(
            json!({ "status": "failed", "cause": "exit", "exit_code": 3 }),
            failure("exit", "exited with code 3"),
        );
        check(
            json!({ "status": "failed", "cause": "signal", "signal": 9 }),
            failure("signal", "killed by signal 9 (SIGKILL)"),
        );
        check(
            json!({ "status": "failed", "cause": "signal", "signal": 40 }),
            failure("signal", "killed by signal 40"),
        );
        check(
            json!({ "status": "failed", "cause": "oom" }),
            failure("oom", "ran out of memory"),
        );
        check(
            json!({ "status": "failed", "cause": "pids_limit" }),
            failure("pids_limit", "hit its process limit"),
        );
        check(
            json!({ "status": "timed_out", "cause": "timeout", "duration_ms": 2004 }),
            failure("timeout", "timed out after 2.004s"),
        );
        check(
            json!({ "status": "failed", "cause": "hook_abort",
                    "message": "aborted by hook gate: frozen" }),
            failure("hook_abort", "aborted by hook gate: frozen"),
        );
        check(
            json!({ "status": "failed", "cause": "executor_crash" }),
            error("executor_crash", "its executor crashed"),
        );
        check(
            json!({ "status": "failed", "cause": "protocol_error",
                    "message": "sent a garbage frame" }),
            error("protocol_error", "sent a garbage frame"),
        );
        check(
            json!({ "status": "skipped", "cause": "dependency_failed" }),
            skipped("skipped: a step it needs failed"),
        );
        check(
            json!({ "status": "cancelled", "cause": "cancelled" }),
            skipped("cancelled: the run was cancelled"),
        );
        check(
            json!({ "status": "failed", "cause": "exit", "exit_code": 1,
                    "message": "failure allowed", "allowed_failure": true }),
            skipped("failure allowed: exited with code 1"),
        );
        check(
            json!({ "status": "exploded" }),
            error("exploded", "exploded"),
        );
    }

    #[test]
    fn a_retried_step_is_judged_by_its_last_attempt() {
        let mut report = Report::new("p", "r");
        for event in [
            json!({ "kind": "step_queued", "step": "flaky" }),
            json!({ "kind": "step_start", "step": "flaky", "attempt": 1, "executor": "shell" }),
            json!({ "kind": "step_end", "step": "flaky", "attempt": 1, "status": "failed",
                    "cause": "exit", "exit_code": 1 }),
            json!({ "kind": "step_retry", "step": "flaky", "attempt": 2, "cause": "exit" }),
            json!({ "kind": "step_start", "step": "flaky", "attempt": 2, "executor": "shell" }),
        ] {
            report.apply(&event);
        }
        let step = &report.steps()[0];
        assert_eq!(
            step.verdict(),
            error(
                NO_STEP_END,
                "hm reported no end of this step to the junit hook (attempt 2 was to follow)"
            )
        );
        report.apply(&json!({ "kind": "step_end", "step": "flaky", "attempt": 2,
                              "status": "passed" }));
        let step = &report.steps()[0];
        assert_eq!(step.verdict(), Verdict::Passed);
        assert_eq!(step.retried_attempts().count(), 1);
        assert_eq!(step.final_attempt().map(|a| a.attempt), Some(2));
    }

    #[test]
    fn steps_keep_the_order_hm_queued_them_in() {
        let mut report = Report::new("p", "r");
        for step in ["b", "a", "c"] {
            report.apply(&json!({ "kind": "step_queued", "step": step }));
        }
        report.apply(&json!({ "kind": "step_end", "step": "c", "status": "passed" }));
        report.apply(&json!({ "kind": "step_end", "step": "late", "status": "passed" }));
        let names: Vec<_> = report.steps().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["b", "a", "c", "late"]);
        assert_eq!(
            report.steps()[0].verdict(),
            error(
                NO_STEP_END,
                "hm reported no end of this step to the junit hook"
            )
        );
    }

    #[test]
    fn build_end_counts_reveal_steps_the_hook_never_heard_of() {
        let mut report = Report::new("p", "r");
        report.apply(&json!({ "kind": "step_end", "step": "a", "status": "passed" }));
        report.apply(
            &json!({ "kind": "build_end", "status": "failed", "exit_code": 1,
                              "duration_ms": 5, "passed": 2, "failed": 1, "skipped": 0,
                              "cancelled": 0 }),
        );
        assert_eq!(report.unknown_steps(), 2);
    }

    #[test]
    fn build_start_begins_a_new_report() {
        let mut report = Report::new("from-init", "r0");
        report.apply(&json!({ "kind": "step_end", "step": "stale", "status": "passed" }));
        report.apply(
            &json!({ "kind": "build_start", "ts": "2026-01-01T00:00:00.000Z",
                              "run_id": "r1", "pipeline": "ci", "steps": 1,
                              "parallelism": 2, "isolation": "cgroup_v2" }),
        );
        assert!(report.steps().is_empty());
        assert_eq!(report.pipeline, "ci");
        assert_eq!(report.run_id, "r1");
        assert_eq!(report.parallelism, Some(2));
        assert_eq!(report.isolation.as_deref(), Some("cgroup_v2"));
    }

    #[test]
    fn seconds_have_millisecond_precision() {
        assert_eq!(seconds(0), "0.000");
        assert_eq!(seconds(7), "0.007");
        assert_eq!(seconds(1234), "1.234");
        assert_eq!(seconds(60_000), "60.000");
    }
}
