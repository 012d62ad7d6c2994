//! The run's event stream (`docs/events.md`): everything the kernel observes becomes a
//! `BuildEvent`, and renderers, hooks and `--format json` all consume the same values.

use std::time::SystemTime;

use serde::Serialize;

/// One event of a run, wrapped with the fields every event carries.
#[derive(Debug, Clone, Serialize)]
pub struct Envelope {
    /// RFC 3339 timestamp with milliseconds.
    pub ts: String,
    pub run_id: String,
    #[serde(flatten)]
    pub event: BuildEvent,
}

impl Envelope {
    pub fn now(run_id: &str, event: BuildEvent) -> Self {
        Self {
            ts: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            run_id: run_id.to_owned(),
            event,
        }
    }

    /// One line of a step's output, at `ts`; `replayed` when it comes from the cache.
    pub fn step_log(
        ts: &str,
        run_id: &str,
        step: &str,
        stream: Stream,
        line: &str,
        replayed: bool,
    ) -> Self {
        Self {
            ts: ts.to_owned(),
            run_id: run_id.to_owned(),
            event: BuildEvent::StepLog {
                step: step.to_owned(),
                stream,
                line: line.to_owned(),
                replayed,
            },
        }
    }
}

/// The event kinds of `docs/events.md`. Field names are the JSON names.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BuildEvent {
    BuildStart {
        pipeline: String,
        steps: usize,
        parallelism: usize,
        isolation: Isolation,
        /// Why isolation is not better than it is; absent when it is the best available.
        #[serde(skip_serializing_if = "Option::is_none")]
        isolation_reason: Option<String>,
    },
    StepQueued {
        step: String,
    },
    StepStart {
        step: String,
        attempt: u32,
        executor: String,
        plugin_pid: u32,
    },
    StepLog {
        step: String,
        stream: Stream,
        line: String,
        /// The line comes from the cache (the step's recorded log, replayed on a hit); absent
        /// otherwise.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        replayed: bool,
    },
    StepRetry {
        step: String,
        /// The attempt that follows.
        attempt: u32,
        cause: Cause,
    },
    StepEnd(StepEnd),
    PluginStart {
        plugin: String,
        pid: u32,
        /// The negotiated version; `None` when the plugin's process started but its handshake
        /// failed (a `plugin_exit` follows at once).
        protocol: Option<u32>,
    },
    PluginExit {
        plugin: String,
        pid: u32,
        clean: bool,
        cause: Option<Cause>,
        exit_code: Option<i32>,
        signal: Option<i32>,
        /// What hm has to say about an exit that was not clean; absent otherwise.
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    PluginRestart {
        plugin: String,
        restarts: u32,
        max: u32,
    },
    BuildEnd {
        status: BuildStatus,
        exit_code: i32,
        duration_ms: u64,
        passed: usize,
        failed: usize,
        skipped: usize,
        cancelled: usize,
    },
}

impl BuildEvent {
    /// The event's `kind` field.
    pub fn kind(&self) -> &'static str {
        match self {
            BuildEvent::BuildStart { .. } => "build_start",
            BuildEvent::StepQueued { .. } => "step_queued",
            BuildEvent::StepStart { .. } => "step_start",
            BuildEvent::StepLog { .. } => "step_log",
            BuildEvent::StepRetry { .. } => "step_retry",
            BuildEvent::StepEnd(_) => "step_end",
            BuildEvent::PluginStart { .. } => "plugin_start",
            BuildEvent::PluginExit { .. } => "plugin_exit",
            BuildEvent::PluginRestart { .. } => "plugin_restart",
            BuildEvent::BuildEnd { .. } => "build_end",
        }
    }
}

/// The final word on one attempt of one step.
#[derive(Debug, Clone, Serialize)]
pub struct StepEnd {
    pub step: String,
    pub attempt: u32,
    pub status: StepStatus,
    pub cause: Option<Cause>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub duration_ms: u64,
    pub peak_memory_bytes: Option<u64>,
    pub cpu_ms: Option<u64>,
    /// A sentence for humans when the cause needs more than its name
    /// ("no plugin provides executor \"foo\""); absent otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// True when the step failed but `allow_failure` keeps the run green.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allowed_failure: bool,
    /// A matrix instance's keys and values, as a JSON object in their order; `null` for a
    /// step without a matrix.
    #[serde(serialize_with = "ordered_object")]
    pub matrix: Option<Vec<(String, String)>>,
    /// For a step with `inputs`: `hit` when its cached result was replayed, `miss` when it
    /// ran; `null` for a step without `inputs`.
    pub cache: Option<CacheStatus>,
    /// On a hit: how long the step took when its result was stored, the time the hit saved.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saved_ms: Option<u64>,
    /// The files it handed on (when it passed), in path order.
    pub artifacts: Vec<crate::artifacts::Artifact>,
    /// What it wrote to `$HM_OUTPUT` (when it passed), as a JSON object in its order.
    #[serde(serialize_with = "ordered_pairs")]
    pub outputs: Vec<(String, String)>,
    /// The cluster node the attempt ran on, when its executor said (the swarm executor).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

fn ordered_pairs<S: serde::Serializer>(
    pairs: &[(String, String)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let mut map = serializer.serialize_map(Some(pairs.len()))?;
    for (key, value) in pairs {
        map.serialize_entry(key, value)?;
    }
    map.end()
}

impl BuildEvent {
    /// Every text of the event that a step or plugin could have put a secret into, masked
    /// by `masker`.
    pub fn mask(&mut self, masker: &crate::secrets::Masker) {
        match self {
            BuildEvent::StepLog { line, .. } => masker.mask_in_place(line),
            BuildEvent::StepEnd(end) => {
                if let Some(message) = &mut end.message {
                    masker.mask_in_place(message);
                }
                for (_, value) in &mut end.outputs {
                    masker.mask_in_place(value);
                }
                for artifact in &mut end.artifacts {
                    masker.mask_in_place(&mut artifact.path);
                }
            }
            BuildEvent::PluginExit {
                message: Some(message),
                ..
            } => masker.mask_in_place(message),
            _ => {}
        }
    }
}

/// `[(k, v), ...]` as the JSON object `{"k": "v", ...}`, in order.
fn ordered_object<S: serde::Serializer>(
    pairs: &Option<Vec<(String, String)>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeMap;
    let Some(pairs) = pairs else {
        return serializer.serialize_none();
    };
    let mut map = serializer.serialize_map(Some(pairs.len()))?;
    for (key, value) in pairs {
        map.serialize_entry(key, value)?;
    }
    map.end()
}

/// Whether a cacheable step's result came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheStatus {
    Hit,
    Miss,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    CgroupV2,
    CgroupV1,
    Rlimit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Passed,
    Failed,
    Skipped,
    Cancelled,
    TimedOut,
}

/// Overall result of a run; same words as a step's status.
pub type BuildStatus = StepStatus;

/// Why a step or plugin ended the way it did (`docs/events.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    Exit,
    Signal,
    Oom,
    PidsLimit,
    Timeout,
    ExecutorCrash,
    ProtocolError,
    DependencyFailed,
    HookAbort,
    Cancelled,
    /// The step could not be prepared: its `dir` is missing, its executor cannot run its
    /// `shell`.
    Setup,
    /// Its `if` is false, a step it needs was skipped by its own, or (`on_failure`) nothing
    /// it needs failed.
    Condition,
    /// A manual step that was not named on the command line (or that a step needs).
    Manual,
    /// Its artifacts could not be taken: over `artifacts_max`, or unreadable.
    Artifact,
    /// Its image (or the image of a service it lists) could not be found or pulled.
    Image,
    /// A service it lists could not be started or never became healthy.
    Service,
    /// The cluster node it ran on went down under it.
    NodeLost,
}

impl Cause {
    /// The cause in plain words, for the human summary.
    pub fn describe(self) -> &'static str {
        match self {
            Cause::Exit => "exited with a non-zero code",
            Cause::Signal => "killed by a signal",
            Cause::Oom => "out of memory",
            Cause::PidsLimit => "hit its process limit",
            Cause::Timeout => "timed out",
            Cause::ExecutorCrash => "its executor crashed",
            Cause::ProtocolError => "its plugin broke the protocol",
            Cause::DependencyFailed => "a step it needs failed",
            Cause::HookAbort => "aborted by a hook",
            Cause::Cancelled => "cancelled",
            Cause::Setup => "could not be prepared",
            Cause::Condition => "its condition is false",
            Cause::Manual => "a manual step, not named on the command line",
            Cause::Artifact => "its artifacts could not be taken",
            Cause::Image => "its image could not be found or pulled",
            Cause::Service => "a service it needs is not up",
            Cause::NodeLost => "the node it ran on was lost",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Exit => "exit",
            Cause::Signal => "signal",
            Cause::Oom => "oom",
            Cause::PidsLimit => "pids_limit",
            Cause::Timeout => "timeout",
            Cause::ExecutorCrash => "executor_crash",
            Cause::ProtocolError => "protocol_error",
            Cause::DependencyFailed => "dependency_failed",
            Cause::HookAbort => "hook_abort",
            Cause::Cancelled => "cancelled",
            Cause::Setup => "setup",
            Cause::Condition => "condition",
            Cause::Manual => "manual",
            Cause::Artifact => "artifact",
            Cause::Image => "image",
            Cause::Service => "service",
            Cause::NodeLost => "node_lost",
        }
    }
}

impl StepStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Passed => "passed",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::Cancelled => "cancelled",
            StepStatus::TimedOut => "timed_out",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_is_the_serialised_kind_field() {
        let end = StepEnd {
            step: "a".into(),
            attempt: 1,
            status: StepStatus::Passed,
            cause: None,
            exit_code: Some(0),
            signal: None,
            duration_ms: 1,
            peak_memory_bytes: None,
            cpu_ms: None,
            message: None,
            allowed_failure: false,
            matrix: Some(vec![
                ("rust".into(), "1.85".into()),
                ("os".into(), "linux".into()),
            ]),
            cache: None,
            saved_ms: None,
            artifacts: Vec::new(),
            outputs: vec![("v".into(), "1".into())],
            node: None,
        };
        let json = serde_json::to_string(&end).expect("serialises");
        assert!(
            json.ends_with(
                r#""matrix":{"rust":"1.85","os":"linux"},"cache":null,"artifacts":[],"outputs":{"v":"1"}}"#
            ),
            "{json}"
        );
        let events = [
            BuildEvent::BuildStart {
                pipeline: "p".into(),
                steps: 1,
                parallelism: 1,
                isolation: Isolation::Rlimit,
                isolation_reason: None,
            },
            BuildEvent::StepQueued { step: "a".into() },
            BuildEvent::StepStart {
                step: "a".into(),
                attempt: 1,
                executor: "shell".into(),
                plugin_pid: 1,
            },
            BuildEvent::StepLog {
                step: "a".into(),
                stream: Stream::Stdout,
                line: "x".into(),
                replayed: false,
            },
            BuildEvent::StepRetry {
                step: "a".into(),
                attempt: 2,
                cause: Cause::Exit,
            },
            BuildEvent::StepEnd(end),
            BuildEvent::PluginStart {
                plugin: "shell".into(),
                pid: 1,
                protocol: Some(5),
            },
            BuildEvent::PluginExit {
                plugin: "shell".into(),
                pid: 1,
                clean: true,
                cause: None,
                exit_code: Some(0),
                signal: None,
                message: None,
            },
            BuildEvent::PluginRestart {
                plugin: "shell".into(),
                restarts: 1,
                max: 3,
            },
            BuildEvent::BuildEnd {
                status: StepStatus::Passed,
                exit_code: 0,
                duration_ms: 1,
                passed: 1,
                failed: 0,
                skipped: 0,
                cancelled: 0,
            },
        ];
        for event in events {
            let json = serde_json::to_value(&event).expect("serialise");
            assert_eq!(json["kind"], event.kind(), "{json}");
        }
    }
}
