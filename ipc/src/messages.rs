//! Payload types of every frame, as rkyv archives. No I/O here.
//!
//! Compatibility rules, because old plugins keep running against new kernels:
//! - a struct that has shipped never changes; new data arrives in new variants or new frames;
//! - enums are append-only, and every variant boxes its data so the archived enum keeps the
//!   same size whatever is appended (rkyv finds the root by its size from the end);
//! - every variant says the protocol version that added it, and a peer never sends a variant
//!   newer than the version negotiated in the handshake.

use rkyv::{Archive, Deserialize, Serialize};

/// The plugin's first frame. Its layout never changes, so any kernel can read any plugin's
/// `Hello` and answer with a reason it understands. v1.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub protocol_min: u32,
    pub protocol_max: u32,
    pub name: String,
    pub version: String,
    /// `executor:NAME`, `hook:EVENT`, `subcommand:VERB`.
    pub capabilities: Vec<String>,
}

/// The kernel accepts the plugin. v1.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The negotiated version; the highest both sides speak.
    pub protocol: u32,
    pub run_id: String,
    /// Log batches the plugin may send before it waits for a `Credit` frame.
    pub log_credit: u32,
    /// The most bytes of line text one `LogBatch` may carry.
    pub max_batch_bytes: u32,
}

/// The kernel refuses the plugin and closes the connection. v1.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub reason: String,
}

/// Calls from the kernel to a plugin (`FrameKind::Call`, kernel → plugin).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum KernelCall {
    /// Run one attempt of one step. v1.
    ExecuteStep(Box<ExecuteStep>),
    /// Configure the plugin before its first real call. v2.
    Init(Box<Init>),
    /// Run `hm <verb> ...`: the plugin has the terminal as its stdin, stdout and stderr and
    /// answers `PluginReply::SubcommandDone` with the exit code for `hm`. v4.
    RunSubcommand(Box<RunSubcommand>),
    /// One event of the run for a hook: the plugin answers
    /// `PluginReply::HookDone`. Sent only for the events the plugin's manifest subscribes to,
    /// in the phase it names. v5.
    OnEvent(Box<HookEvent>),
    /// Run one attempt of one step with the command line hm chose (`shell` in `hm.toml`).
    /// From v6 on, the kernel sends this instead of `ExecuteStep`. v6.
    Execute(Box<Execute>),
    /// One attempt of a step and what hm collects from it when it passes. Sent instead of
    /// `Execute` on v7.
    Step(Box<StepCall>),
    /// One attempt of a step with the services it uses. Sent instead of `Step` on v8.
    Attempt(Box<AttemptCall>),
    /// Start a service container (`[services.NAME]`) and answer once it is healthy:
    /// `PluginReply::ServiceUp`, or `PluginReply::ServiceFailed`. Sent only to a plugin with
    /// the `services` capability, once per service and run (again after a retry of a step
    /// that failed because of it). v8.
    StartService(Box<ServiceStart>),
    /// Stop and remove a service the plugin started, with its volumes; answered with
    /// `PluginReply::ServiceStopped`. Once no service of the run is left, what they shared (their
    /// network) goes too. v8.
    StopService(Box<ServiceStop>),
}

/// When a hook sees an event. v5.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
#[repr(u8)]
pub enum HookPhase {
    /// Before the event takes effect; the kernel waits for the answer (up to the hook's
    /// timeout), and on `step_start` the answer may abort the step.
    Before,
    /// After the event; the kernel does not wait, and the answer only says the hook is done.
    After,
}

/// An event of the run, delivered to a hook. v5.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct HookEvent {
    pub phase: HookPhase,
    /// The event's `kind` (`step_start`, `step_end`, ...).
    pub kind: String,
    /// The event as one JSON object, exactly as `hm run --format json` prints it.
    pub event_json: String,
}

/// A hook's answer to `OnEvent`. v5.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct HookOutcome {
    /// Set by a `before` hook on `step_start` to stop the step: the reason, shown to the user
    /// with cause `hook_abort`. Ignored in the `after` phase and on other events.
    pub abort: Option<String>,
}

/// One invocation of a plugin's subcommand. v4.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RunSubcommand {
    pub verb: String,
    /// The parsed arguments as a JSON object: each argument of the manifest by its `name`, a
    /// string (or `null` when absent) for one that takes a value, `true`/`false` for a flag.
    pub args_json: String,
}

/// How a subcommand ended. v4.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubcommandExit {
    /// What `hm` exits with (0..=255; others are reported as 1).
    pub exit_code: i32,
}

/// Everything an executor needs to run one attempt of a step. v1.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ExecuteStep {
    pub step: String,
    pub attempt: u32,
    /// The command text (`run`).
    pub run: String,
    /// Absolute working directory.
    pub dir: String,
    /// The complete environment of the step beyond the plugin's own (pipeline, step, `-e`,
    /// and [`PROJECT_DIR_ENV`]).
    pub env: Vec<EnvVar>,
    pub image: Option<String>,
    /// `with = { ... }` as JSON text, opaque to the kernel.
    pub with_json: String,
    /// How long the step may take to stop after `Cancel` before it is killed.
    pub grace_ms: u64,
    /// The step's cgroup: the `cgroup.procs` files (one per hierarchy) its processes must
    /// join before they exec. Empty when hm runs without cgroups.
    pub cgroup_procs: Vec<String>,
    /// The step's limits, for best-effort rlimits when there is no cgroup to enforce them.
    pub limits: StepLimits,
}

/// One attempt of a step and the program that runs it. v6.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Execute {
    pub step: ExecuteStep,
    /// The program and its first arguments; `run` is appended as the last argument. Never
    /// empty: `["sh", "-e", "-c"]` unless the step sets `shell`. An executor that runs
    /// commands in a container runs the same argv there.
    pub shell: Vec<String>,
}

/// One attempt of a step with its `artifacts`. v7.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StepCall {
    pub execute: Execute,
    /// The step's `artifacts` globs, relative to the project root (`dist/**`). An executor
    /// that runs the step where hm cannot see its files (a container) sends the matching files
    /// with `HostCall::PutArtifacts` before it answers; one that runs it in the project
    /// directory sends nothing, and hm collects them there.
    pub artifacts: Vec<String>,
    /// The most files the step may produce as artifacts.
    pub artifacts_max_files: u64,
    /// The most bytes (file contents) the step may produce as artifacts.
    pub artifacts_max_bytes: u64,
    /// Directories kept across runs (`cache = [{ key, paths }]`), for an executor whose steps
    /// start from a fresh file system: each path gets the named volume. An executor that runs
    /// steps on the host ignores them.
    pub caches: Vec<CacheMount>,
}

/// One attempt of a step and the services it lists. v8.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct AttemptCall {
    pub step: StepCall,
    /// The services the step lists (`services = [...]`), each started by this plugin with
    /// `StartService` and healthy. A step in a container joins their network, where each is
    /// reachable by its name; the step's environment already has `HM_SERVICE_<NAME>_HOST` and
    /// `HM_SERVICE_<NAME>_PORT_<port>` for a step on the host, which such an executor replaces
    /// with the name and the container's port.
    pub services: Vec<String>,
}

/// A service to start. v8.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ServiceStart {
    /// The name from `[services.NAME]`: the host name steps reach it by.
    pub name: String,
    pub image: String,
    pub env: Vec<EnvVar>,
    /// Replaces the image's entrypoint; `None` keeps it.
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's command; `None` keeps it.
    pub command: Option<Vec<String>>,
    /// Ports to publish on the host's loopback, for steps that run on the host.
    pub ports: Vec<u16>,
    /// How to tell the service is ready; `None`: as soon as it runs.
    pub health: Option<ServiceHealth>,
    /// The service's `with = { ... }` as JSON text (`pull`).
    pub with_json: String,
    pub limits: StepLimits,
    /// How long the service may take to stop before it is killed.
    pub grace_ms: u64,
}

/// A service's health check: `command` run inside the service until it exits 0. v8.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ServiceHealth {
    /// The full command line (`["sh", "-c", RUN]`).
    pub command: Vec<String>,
    /// Time between the end of one try and the start of the next.
    pub interval_ms: u64,
    /// How long one try may take before it counts as failed.
    pub timeout_ms: u64,
    /// Tries before the service counts as unhealthy.
    pub retries: u32,
}

/// Names a service the plugin started. v8.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ServiceStop {
    pub name: String,
}

/// A service that is up and healthy. v8.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ServiceUp {
    /// Where each port of `ServiceStart::ports` is published on the host.
    pub ports: Vec<PublishedPort>,
}

/// One published port of a service. v8.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct PublishedPort {
    /// The port inside the service.
    pub port: u16,
    /// The host's address it is published on (`127.0.0.1`).
    pub host: String,
    pub host_port: u16,
}

/// A service that could not be started or never became healthy. v8.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ServiceFailure {
    /// Its image could not be found or pulled (cause `image` instead of `service`).
    pub image: bool,
    pub message: String,
    /// The service's last lines of output, oldest first.
    pub log: Vec<String>,
}

/// One directory of a dependency cache. v7.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CacheMount {
    /// The volume's name: hm's, derived from the key files' contents and the path, so every
    /// step and run with the same key shares it.
    pub volume: String,
    /// Where it goes: absolute, or relative to the step's workspace.
    pub path: String,
}

/// The shell of a step that does not set one: `sh -e -c RUN`, so a failing line fails the step.
pub const DEFAULT_SHELL: [&str; 3] = ["sh", "-e", "-c"];

/// What a plugin that speaks protocol 5 or older does with `run`: `sh -c RUN`.
pub const LEGACY_SHELL: [&str; 2] = ["sh", "-c"];

/// The variable in every step's environment that holds the project's root directory (where the
/// pipeline file is, and what the workspace archive holds), set by hm over any value from
/// `hm.toml`. An executor that runs steps elsewhere maps it (the docker executor: `/workspace`).
pub const PROJECT_DIR_ENV: &str = "HM_PROJECT_DIR";

/// The variable in every step's environment that names the file the step appends its outputs
/// to (`key=value` lines). An executor that runs steps elsewhere gives the step a file of its
/// own there and, when the step has ended, writes what it holds into this file (the docker
/// executor: `/hm/output` in the container).
pub const OUTPUT_ENV: &str = "HM_OUTPUT";

/// Resource limits of a step; `None` means no limit. v1.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StepLimits {
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    /// Thousandths of a core.
    pub cpu_millicores: Option<u64>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

/// The plugin's configuration and the run it serves. v2.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Init {
    /// `[plugins.<name>].config` as JSON text (`{}` when absent).
    pub config_json: String,
    /// The pipeline's name.
    pub pipeline: String,
}

/// Answers from a plugin to a `KernelCall` (`FrameKind::Reply`, plugin → kernel).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum PluginReply {
    /// The step attempt is over. v1.
    StepDone(Box<StepResult>),
    /// `Init` accepted. v2.
    Ready,
    /// The call could not be carried out; the message says why, for the user. v1.
    Failed(Box<CallFailure>),
    /// `Init` refused because something the plugin needs from the machine is missing (a
    /// daemon that does not answer, a device): hm exits 4 (environment unavailable) instead
    /// of 5. The message says what was tried and how to fix it. v3.
    Unavailable(Box<CallFailure>),
    /// The step attempt is over and was killed for running out of memory, as the executor's
    /// runtime says (Docker's `OOMKilled` with exit 137) where hm's cgroup cannot see it; hm
    /// reports cause `oom`. Otherwise read as `StepDone`. v3.
    StepOutOfMemory(Box<StepResult>),
    /// The subcommand of a `RunSubcommand` call is over; `hm` exits with its code. v4.
    SubcommandDone(Box<SubcommandExit>),
    /// The hook has handled the event of an `OnEvent` call. v5.
    HookDone(Box<HookOutcome>),
    /// The step could not start because its image could not be found or pulled: hm reports
    /// cause `image` (which `retry.on` may list). v8.
    ImageUnavailable(Box<CallFailure>),
    /// The service of a `StartService` call is up and healthy. v8.
    ServiceUp(Box<ServiceUp>),
    /// The service of a `StartService` call could not be started or never became healthy. v8.
    ServiceFailed(Box<ServiceFailure>),
    /// The service of a `StopService` call is stopped and removed. v8.
    ServiceStopped,
    /// The step's node (a cluster's machine) went down under it: hm reports cause
    /// `node_lost`, which `retry.on` may list. v8.
    NodeLost(Box<CallFailure>),
}

/// How a step's process ended. v1.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct StepResult {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub core_dumped: bool,
    /// The step stopped because of a `Cancel`.
    pub cancelled: bool,
    /// Processes that were still alive in the step after it ended and were killed.
    pub leaked_processes: u32,
    pub peak_memory_bytes: Option<u64>,
    pub cpu_ms: Option<u64>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct CallFailure {
    pub message: String,
}

/// Calls from a plugin to the kernel: the host API (`FrameKind::Call`, plugin → kernel).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum HostCall {
    /// A diagnostic from the plugin itself (not step output). v1.
    Log(Box<LogRecord>),
    /// Read a value. v1.
    KvGet(Box<KvKey>),
    /// Write (or with `None`, delete) a value. v1.
    KvSet(Box<KvWrite>),
    /// The plugin's `[plugins.<name>].config` as JSON text. v1.
    ReadConfig,
    /// The process group a step's processes run in, so the kernel can kill them itself if the
    /// plugin stops answering. v1.
    StepProcess(Box<StepProcess>),
    /// The workspace archive: a tar of the project, answered with `HostReply::Archive` and the
    /// archive's sealed shared buffer next to the reply frame. v3.
    OpenArchive,
    /// The artifacts of the steps that the step of `step_call` needs, directly or through
    /// others: answered with `HostReply::Archive` and a tar of them in a sealed shared buffer
    /// (paths relative to the project root), or `HostReply::Ok` when there are none. v7.
    OpenArtifacts(Box<StepRef>),
    /// The artifacts of the step of `step_call`, collected where it ran: a tar (paths
    /// relative to the project root, regular files and directories) in a sealed shared buffer
    /// next to the frame, or without a buffer a `problem` that fails the step with cause
    /// `artifact`. Sent before the step's reply; answered with `HostReply::Ok`. v7.
    PutArtifacts(Box<ArtifactUpload>),
    /// Where the step of `step_call` runs, for an executor that places steps on a cluster's
    /// nodes: shown in its `step_end` and the summary. Answered with `HostReply::Ok`. v8.
    Placed(Box<Placement>),
}

/// The node a running step was placed on. v8.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub step_call: u64,
    /// The node's name, as the cluster knows it (its host name).
    pub node: String,
}

/// Names a running step by the id of its `Step` call. v7.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepRef {
    pub step_call: u64,
}

/// What `HostCall::PutArtifacts` says about the buffer that comes with it. v7.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ArtifactUpload {
    pub step_call: u64,
    /// The tar's length in bytes (the buffer's size); 0 with a `problem`.
    pub len: u64,
    /// Why the artifacts could not be collected ("23,001 files, over the limit of 10,000"):
    /// the step fails with cause `artifact` and this message. No buffer comes with it.
    pub problem: Option<String>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
#[repr(u8)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub level: LogLevel,
    pub message: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
#[repr(u8)]
pub enum KvScope {
    /// Persists across runs, private to the plugin.
    Plugin,
    /// Lives as long as the run.
    Run,
    /// Lives as long as one step attempt (named by `KvKey::step_call`).
    Step,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct KvKey {
    pub scope: KvScope,
    /// For `KvScope::Step`: the id of the `ExecuteStep` call; 0 otherwise.
    pub step_call: u64,
    pub key: String,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct KvWrite {
    pub key: KvKey,
    pub value: Option<String>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StepProcess {
    /// The `ExecuteStep` call the process belongs to.
    pub step_call: u64,
    pub pgid: i32,
}

/// Answers from the kernel to a `HostCall` (`FrameKind::Reply`, kernel → plugin).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum HostReply {
    /// Done, nothing to return. v1.
    Ok,
    /// A value, or none. v1.
    Value(Box<Option<String>>),
    /// The call was refused; the message says why. v1.
    Error(Box<CallFailure>),
    /// The answer to `OpenArchive`: the reply frame carries the archive's buffer (`FLAG_FD`).
    /// v3.
    Archive(Box<ArchiveBuffer>),
}

/// What `HostReply::Archive` says about the buffer that comes with it. v3.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArchiveBuffer {
    /// The archive's length in bytes: the buffer's size.
    pub len: u64,
}

/// Step output: many lines of one step in one frame (`FrameKind::LogBatch`; the call id names
/// the `ExecuteStep` call). v1.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct LogBatch {
    pub chunks: Vec<LogChunk>,
}

/// Consecutive whole lines of one stream. Lines are joined with `\n` and the text has no
/// trailing newline, so `""` is one empty line and `"a\n\nb"` is three lines. Carrying runs of
/// lines instead of single lines keeps the per-line cost on both sides to a newline search.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// 0 stdout, 1 stderr.
    pub stream: u8,
    pub text: String,
}

impl ArchivedLogChunk {
    /// The lines of this chunk.
    pub fn lines(&self) -> std::str::Split<'_, char> {
        self.text.as_str().split('\n')
    }
}

/// More log batches the plugin may send (`FrameKind::Credit`). v1.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credit {
    pub batches: u32,
}
