//! `hm_sdk::testing`: drives a plugin through the real protocol in-process, without an `hm`
//! binary.
//!
//! [`Harness`] plays the kernel's side of one connection. It connects a socket pair, runs
//! [`crate::serve_on`] on one end in a task, and speaks hm-ipc frames on the other with the same
//! codec, writer task and payload validation the kernel uses. A background task (the pump) reads
//! every frame the plugin sends, answers the host API, grants log credit and routes step output
//! and replies to the [`CallHandle`] of the call they belong to.
//!
//! The workspace archive (`OpenArchive`, protocol v3) is served from a sealed buffer the test
//! provides with [`Harness::provide_archive`], sent as the kernel sends it: a duplicate of its
//! descriptor next to the reply frame.
//!
//! Artifacts (protocol v7) go both ways as with hm: a step started with
//! [`StepOptions::artifacts`] goes as `Step` with those globs; `OpenArtifacts` is answered with
//! the tar in [`StepOptions::needs_artifacts`] (or "none"), and what the plugin sends with
//! `PutArtifacts`, a tar or a problem, is in [`StepRun::artifacts`].
//!
//! The harness checks the plugin as strictly as the kernel would, so a test through it also
//! tests the SDK's side of the protocol: a payload that fails validation, a log batch beyond the
//! granted credit or over `max_batch_bytes`, output or a reply for a call that is not in flight,
//! or a reply of the wrong kind is a protocol violation. The harness then does what the kernel
//! does with such a plugin: it kills the process groups of the steps in flight, stops the plugin,
//! and every call in flight fails with [`HarnessError::Protocol`].
//!
//! ```no_run
//! # async fn example(plugin: hm_sdk::Plugin) -> Result<(), hm_sdk::testing::HarnessError> {
//! use hm_sdk::testing::{Harness, step};
//!
//! let harness = Harness::start(plugin).await?;
//! let run = harness.execute(step("echo hello")).await?;
//! assert_eq!(run.stdout(), ["hello"]);
//! assert_eq!(run.result.map(|r| r.exit_code), Ok(Some(0)));
//! harness.shutdown().await?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use hm_ipc::codec::{EncodeError, WireError};
use hm_ipc::handshake::INIT_SINCE;
use hm_ipc::host::{CallKind, HostPolicy, Inbound, LogFrame, MAX_CALL_BYTES};
use hm_ipc::messages::{
    ArchiveBuffer, ArtifactUpload, AttemptCall, CallFailure, Credit, DEFAULT_SHELL, Execute,
    HookEvent, HookPhase, HostCall, HostReply, Init, KernelCall, KvKey, LogLevel, PluginReply,
    Reject, RunSubcommand, StepCall, StepResult, Welcome,
};
use hm_ipc::{
    ARTIFACTS_SINCE, EXECUTE_SINCE, Frame, FrameKind, FrameReader, HOOKS_SINCE, OutFrame,
    PROTOCOL_MAX, PROTOCOL_MIN, SHM_SINCE, SealedBuffer, SharedBuffer,
};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use thiserror::Error;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinHandle};
use tokio::time::Instant;

pub use hm_ipc::messages::{EnvVar, ExecuteStep, Hello, KvScope};

use crate::context::OutputStream;
use crate::plugin::{ArtifactLimits, HookVerdict, Plugin};
use crate::serve::ServeError;

/// The run id the harness sends in `Welcome`.
pub const RUN_ID: &str = "test-run";
/// The pipeline name the harness sends in `Init`.
pub const PIPELINE: &str = "test-pipeline";

/// Why the harness could not do what a test asked. Failures of the step itself are not errors
/// here: they are in [`StepRun::result`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum HarnessError {
    #[error("failed to connect to the plugin: {0}")]
    Io(#[from] std::io::Error),
    #[error("the harness rejected the plugin: {0}")]
    Rejected(String),
    #[error("protocol violation by the plugin: {0}")]
    Protocol(String),
    #[error("the plugin closed the connection")]
    Closed,
    #[error("timed out after {after:?} waiting for {waiting_for}")]
    Timeout {
        waiting_for: String,
        after: Duration,
    },
    #[error("call {call} ended before {waiting_for}")]
    CallEnded { call: u64, waiting_for: String },
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error("the plugin's serve loop failed: {0}")]
    Serve(#[from] ServeError),
    #[error("the plugin's serve loop panicked: {0}")]
    Panicked(String),
    #[error("process group {pgid} still has live processes {pids:?}")]
    ProcessesLeft { pgid: i32, pids: Vec<i32> },
}

/// How the harness plays the kernel. `HarnessOptions::default()` is what [`Harness::start`]
/// uses; change single fields with `HarnessOptions { log_credit: 2, ..Default::default() }`.
#[derive(Debug, Clone)]
pub struct HarnessOptions {
    /// The newest protocol version the harness offers; the oldest is always [`PROTOCOL_MIN`].
    pub protocol_max: u32,
    /// Log batches the plugin may send before it must wait for credit (`Welcome::log_credit`).
    /// The harness gives back one batch of credit for each batch once it has taken it in, never
    /// before, so the plugin can never have more than this many in flight; one more is a
    /// protocol violation.
    pub log_credit: u32,
    /// The most bytes of line text one log batch may carry (`Welcome::max_batch_bytes`). The SDK
    /// splits longer lines to keep to it (it cannot go below 8 bytes).
    pub max_batch_bytes: u32,
    /// What `ReadConfig` answers until [`Harness::init`] sends another configuration.
    pub config_json: String,
    /// The longest the harness waits for any one thing from the plugin: the handshake, a reply,
    /// a pong, the end of the serve loop. A plugin that hangs fails the test instead of hanging
    /// it.
    pub timeout: Duration,
}

impl Default for HarnessOptions {
    fn default() -> Self {
        Self {
            protocol_max: PROTOCOL_MAX,
            log_credit: 8,
            max_batch_bytes: 64 * 1024,
            config_json: "{}".into(),
            timeout: Duration::from_secs(60),
        }
    }
}

/// Everything one `ExecuteStep` call produced, in the order it arrived.
#[derive(Debug, Clone)]
pub struct StepRun {
    /// Step output, one entry per line as the plugin sent it (long lines arrive split).
    pub lines: Vec<(OutputStream, String)>,
    /// The reply: `StepDone` as `Ok`, `Failed` (and `ImageUnavailable`) as `Err` with its
    /// message.
    pub result: Result<StepResult, String>,
    /// Plugin diagnostics (`HostCall::Log`) received while the call was in flight. The protocol
    /// does not say which call a diagnostic belongs to, so concurrent calls each see all of them.
    pub logs: Vec<(LogLevel, String)>,
    /// The process groups the plugin reported for this call (`HostCall::StepProcess`).
    pub process_groups: Vec<i32>,
    /// What the plugin sent with `PutArtifacts` (v7) before it answered: the tar's bytes, or
    /// the problem it reported instead. `None` when it sent nothing.
    pub artifacts: Option<Result<Vec<u8>, String>>,
    /// The node the plugin said the step runs on (`Placed`, v8), the last it said.
    pub node: Option<String>,
}

impl StepRun {
    /// The text of the stdout lines, in order.
    pub fn stdout(&self) -> Vec<&str> {
        self.stream(OutputStream::Stdout)
    }

    /// The text of the stderr lines, in order.
    pub fn stderr(&self) -> Vec<&str> {
        self.stream(OutputStream::Stderr)
    }

    fn stream(&self, which: OutputStream) -> Vec<&str> {
        self.lines
            .iter()
            .filter(|(s, _)| *s == which)
            .map(|(_, t)| t.as_str())
            .collect()
    }
}

/// A step with defaults for tests: the current directory, attempt 1, no environment beyond the
/// plugin's own, no image, `with = {}`, and 10 s of grace after a cancel.
pub fn step(run: &str) -> ExecuteStep {
    let dir = std::env::current_dir()
        .map(|dir| dir.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "/".into());
    ExecuteStep {
        step: "test".into(),
        attempt: 1,
        run: run.into(),
        dir,
        env: Vec::new(),
        image: None,
        with_json: "{}".into(),
        grace_ms: 10_000,
        cgroup_procs: Vec::new(),
        limits: hm_ipc::messages::StepLimits::default(),
    }
}

/// How the harness sends one step, beyond its [`ExecuteStep`]: for [`Harness::execute_with`].
/// `StepOptions::default()` is what [`Harness::execute`] sends; change single fields with
/// `StepOptions { artifacts: vec!["dist/**".into()], ..Default::default() }`.
#[derive(Debug)]
pub struct StepOptions {
    /// The program and first arguments `run` is appended to; hm's default, `sh -e -c`, unless
    /// set. Not sent on protocol 5 and older, which cannot carry it.
    pub shell: Vec<String>,
    /// The step's `artifacts` globs, sent with the step as `Step` on protocol 7 (and not at all
    /// on older ones, where the step goes as before).
    pub artifacts: Vec<String>,
    pub artifact_limits: ArtifactLimits,
    /// What `OpenArtifacts` (v7) answers for this step: the tar of the artifacts of the steps
    /// it needs, a duplicate of its descriptor next to the reply as from hm; without one, "no
    /// artifacts" (`HostReply::Ok`).
    pub needs_artifacts: Option<SealedBuffer>,
}

impl Default for StepOptions {
    fn default() -> Self {
        Self {
            shell: DEFAULT_SHELL.map(str::to_owned).to_vec(),
            artifacts: Vec::new(),
            artifact_limits: ArtifactLimits::default(),
            needs_artifacts: None,
        }
    }
}

/// The kernel's side of one in-process connection to a plugin.
///
/// Methods take `&self`, so a test can ping, cancel or start another step while a
/// [`CallHandle`] is outstanding. Dropping the harness without [`Harness::shutdown`] stops the
/// plugin's task and kills the process groups of its steps still in flight, as the kernel does
/// with a plugin it gives up on.
pub struct Harness {
    hello: Hello,
    protocol: u32,
    timeout: Duration,
    kernel: Arc<Kernel>,
    next_call: AtomicU64,
    next_nonce: AtomicU64,
    /// `None` once the serve loop's result has been collected.
    serve: Option<JoinHandle<Result<(), ServeError>>>,
    pump: JoinHandle<()>,
    writer: JoinHandle<Result<(), WireError>>,
}

impl Harness {
    /// Connects to `plugin` with [`HarnessOptions::default`]: the highest protocol both sides
    /// speak, 8 batches of log credit, 64 KiB batches.
    pub async fn start(plugin: Plugin) -> Result<Self, HarnessError> {
        Self::start_with(plugin, HarnessOptions::default()).await
    }

    /// Connects to `plugin`, reads its `Hello` and answers `Welcome` (or `Reject`, returned as
    /// [`HarnessError::Rejected`], when the protocol ranges do not meet).
    pub async fn start_with(plugin: Plugin, options: HarnessOptions) -> Result<Self, HarnessError> {
        let (kernel_end, plugin_end) = UnixStream::pair()?;
        let serve = tokio::spawn(crate::serve_on(plugin, plugin_end));
        let hm_ipc::transport::Connection {
            mut frames,
            writer: out,
            writer_task: writer,
        } = hm_ipc::transport::connect(kernel_end)?;
        let agreed = tokio::time::timeout(options.timeout, handshake(&mut frames, &out, &options))
            .await
            .unwrap_or_else(|_| {
                Err(HarnessError::Timeout {
                    waiting_for: "the plugin's Hello".into(),
                    after: options.timeout,
                })
            });
        let (hello, protocol) = match agreed {
            Ok(agreed) => agreed,
            Err(e) => {
                serve.abort();
                writer.abort();
                return Err(e);
            }
        };
        frames.allow_fds(protocol >= SHM_SINCE);
        let kernel = Arc::new(Kernel {
            out,
            protocol,
            state: Mutex::new(State {
                policy: HostPolicy::new(
                    protocol,
                    options.log_credit,
                    options.max_batch_bytes,
                    MAX_CALL_BYTES,
                ),
                calls: HashMap::new(),
                pings: HashMap::new(),
                kv: HashMap::new(),
                logs: Vec::new(),
                config_json: options.config_json,
                archive: None,
                archive_requests: 0,
                ended: None,
            }),
        });
        let pump = tokio::spawn(pump(frames, kernel.clone(), serve.abort_handle()));
        Ok(Self {
            hello,
            protocol,
            timeout: options.timeout,
            kernel,
            next_call: AtomicU64::new(1),
            next_nonce: AtomicU64::new(1),
            serve: Some(serve),
            pump,
            writer,
        })
    }

    /// The plugin's `Hello`, as received.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// The negotiated protocol version.
    pub fn protocol(&self) -> u32 {
        self.protocol
    }

    /// Every plugin diagnostic (`HostCall::Log`) received so far.
    pub fn logs(&self) -> Vec<(LogLevel, String)> {
        self.kernel.lock().logs.clone()
    }

    /// A value in the harness's in-memory key-value store; `step_call` is 0 except for
    /// [`KvScope::Step`].
    pub fn kv(&self, scope: KvScope, step_call: u64, key: &str) -> Option<String> {
        self.kernel
            .lock()
            .kv
            .get(&kv_slot(scope, step_call, key))
            .cloned()
    }

    /// Serves `OpenArchive` from `archive` from now on: each request gets a duplicate of its
    /// descriptor, as from hm. Until a test provides one, `OpenArchive` is answered with an
    /// error.
    pub fn provide_archive(&self, archive: SealedBuffer) {
        self.kernel.lock().archive = Some(archive);
    }

    /// How many times the plugin has called `OpenArchive`.
    pub fn archive_requests(&self) -> u32 {
        self.kernel.lock().archive_requests
    }

    /// Sends `Init` with `config_json` (protocol v2) and waits for the answer: `Ok` on `Ready`,
    /// the plugin's message on `Failed`. On protocol 1 nothing is sent and the answer is an
    /// error, as a version-1 plugin is never sent `Init`. The configuration also becomes what
    /// `ReadConfig` answers, as in a real run.
    pub async fn init(&self, config_json: &str) -> Result<(), String> {
        if self.protocol < INIT_SINCE {
            return Err(format!(
                "protocol {} has no Init (added in version {INIT_SINCE}): the harness does not \
                 send it",
                self.protocol
            ));
        }
        self.kernel.lock().config_json = config_json.to_owned();
        let init = KernelCall::Init(Box::new(Init {
            config_json: config_json.to_owned(),
            pipeline: PIPELINE.into(),
        }));
        let mut call = self
            .start_call(CallKind::Init, &init)
            .map_err(|e| e.to_string())?;
        match call.reply().await.map_err(|e| e.to_string())? {
            PluginReply::Ready => Ok(()),
            PluginReply::Failed(failure)
            | PluginReply::ImageUnavailable(failure)
            | PluginReply::NodeLost(failure) => Err(failure.message),
            // The pump only routes replies that fit the call.
            other => Err(format!("the plugin answered Init with {other:?}")),
        }
    }

    /// Sends one event to the plugin's hook (`OnEvent`, protocol v5) as hm would: `event` is
    /// the JSON object of one `hm run --format json` line, its `kind` says which event it is.
    /// Returns the hook's verdict, or its failure message (an `Err` or a panic in the hook).
    pub async fn on_event(
        &self,
        phase: HookPhase,
        event: &serde_json::Value,
    ) -> Result<HookVerdict, String> {
        if self.protocol < HOOKS_SINCE {
            return Err(format!(
                "protocol {} has no hooks (added in version {HOOKS_SINCE})",
                self.protocol
            ));
        }
        let call = KernelCall::OnEvent(Box::new(HookEvent {
            phase,
            kind: event["kind"].as_str().unwrap_or_default().to_owned(),
            event_json: event.to_string(),
        }));
        let mut call = self
            .start_call(CallKind::Hook, &call)
            .map_err(|e| e.to_string())?;
        match call.reply().await.map_err(|e| e.to_string())? {
            PluginReply::HookDone(outcome) => Ok(match outcome.abort {
                Some(reason) => HookVerdict::Abort(reason),
                None => HookVerdict::Continue,
            }),
            PluginReply::Failed(failure) => Err(failure.message),
            other => Err(format!("the plugin answered OnEvent with {other:?}")),
        }
    }

    /// Runs `hm VERB` in the plugin (`RunSubcommand`, protocol v4) with `args` (a JSON object,
    /// every argument by name) and returns its exit code, or its failure message. The
    /// subcommand shares the test process's stdout and stderr, as it shares hm's terminal.
    pub async fn run_subcommand(
        &self,
        verb: &str,
        args: &serde_json::Value,
    ) -> Result<i32, String> {
        let call = KernelCall::RunSubcommand(Box::new(RunSubcommand {
            verb: verb.to_owned(),
            args_json: args.to_string(),
        }));
        let mut call = self
            .start_call(CallKind::Subcommand, &call)
            .map_err(|e| e.to_string())?;
        match call.reply().await.map_err(|e| e.to_string())? {
            PluginReply::SubcommandDone(exit) => Ok(exit.exit_code),
            PluginReply::Failed(failure) => Err(failure.message),
            other => Err(format!("the plugin answered RunSubcommand with {other:?}")),
        }
    }

    /// Runs one step to its end and returns everything it produced.
    pub async fn execute(&self, step: ExecuteStep) -> Result<StepRun, HarnessError> {
        self.start_execute(step)?.finish().await
    }

    /// Runs one step with the given shell (`["bash", "-c"]`, say) to its end.
    pub async fn execute_with_shell(
        &self,
        step: ExecuteStep,
        shell: &[&str],
    ) -> Result<StepRun, HarnessError> {
        self.start_execute_with_shell(step, shell)?.finish().await
    }

    /// Runs one step sent as `options` say (its shell, its artifacts) to its end.
    pub async fn execute_with(
        &self,
        step: ExecuteStep,
        options: StepOptions,
    ) -> Result<StepRun, HarnessError> {
        self.start_execute_with(step, options)?.finish().await
    }

    /// Sends the step with a fresh call id and returns at once; the handle receives the
    /// step's output and reply while the test does other things (cancel, ping, other steps).
    /// The step runs with hm's default shell, `sh -e -c` (`ExecuteStep`, and so `sh -c`, on
    /// protocol 5 and older).
    pub fn start_execute(&self, step: ExecuteStep) -> Result<CallHandle, HarnessError> {
        self.start_execute_with_shell(step, &DEFAULT_SHELL)
    }

    /// [`Harness::start_execute`] with the given shell; on protocol 5 and older, which cannot
    /// carry one, the step goes as `ExecuteStep` and the shell is not sent.
    pub fn start_execute_with_shell(
        &self,
        step: ExecuteStep,
        shell: &[&str],
    ) -> Result<CallHandle, HarnessError> {
        let options = StepOptions {
            shell: shell.iter().map(|&arg| arg.to_owned()).collect(),
            ..StepOptions::default()
        };
        self.start_execute_with(step, options)
    }

    /// [`Harness::start_execute`] sent as `options` say: as `Attempt` on protocol 8, as
    /// `Step` with its artifacts on 7, as `Execute` (no artifacts) on 6, as `ExecuteStep` (no shell either) on 5
    /// and older, the newest call the protocol has, as hm does.
    pub fn start_execute_with(
        &self,
        step: ExecuteStep,
        options: StepOptions,
    ) -> Result<CallHandle, HarnessError> {
        let StepOptions {
            shell,
            artifacts,
            artifact_limits,
            needs_artifacts,
        } = options;
        let step_call = || StepCall {
            execute: Execute {
                step: step.clone(),
                shell: shell.clone(),
            },
            artifacts: artifacts.clone(),
            artifacts_max_files: artifact_limits.max_files,
            artifacts_max_bytes: artifact_limits.max_bytes,
            caches: Vec::new(),
        };
        let call = if self.protocol >= hm_ipc::SERVICES_SINCE {
            KernelCall::Attempt(Box::new(AttemptCall {
                step: step_call(),
                services: Vec::new(),
            }))
        } else if self.protocol >= ARTIFACTS_SINCE {
            KernelCall::Step(Box::new(step_call()))
        } else if self.protocol >= EXECUTE_SINCE {
            KernelCall::Execute(Box::new(Execute { step, shell }))
        } else {
            KernelCall::ExecuteStep(Box::new(step))
        };
        self.start_call_with(CallKind::Execute, &call, needs_artifacts)
    }

    /// Sends `Cancel` for the call; its reply still comes through the handle.
    pub fn cancel(&self, call: &CallHandle) -> Result<(), HarnessError> {
        self.kernel
            .send(OutFrame::empty(FrameKind::Cancel, call.id))
    }

    /// Sends `Ping` with a fresh nonce and waits for the `Pong` that carries it.
    pub async fn ping(&self) -> Result<Duration, HarnessError> {
        let nonce = self.next_nonce.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut state = self.kernel.lock();
            if let Some(ended) = &state.ended {
                return Err(ended.error());
            }
            state.policy.ping(nonce);
            state.pings.insert(nonce, tx);
        }
        let sent = Instant::now();
        self.kernel.send(OutFrame::empty(FrameKind::Ping, nonce))?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(())) => Ok(sent.elapsed()),
            Ok(Err(_)) => Err(self.kernel.ended_error()),
            Err(_) => Err(HarnessError::Timeout {
                waiting_for: format!("the pong for nonce {nonce}"),
                after: self.timeout,
            }),
        }
    }

    /// Sends `Shutdown` and waits for the serve loop to return (it first lets the calls in
    /// flight finish). Returns what the serve loop returned, or the protocol violation the
    /// harness saw, if any.
    pub async fn shutdown(mut self) -> Result<(), HarnessError> {
        // A connection that is already closed is no error here: the serve loop's result says
        // why it closed.
        let _ = self.kernel.send(OutFrame::empty(FrameKind::Shutdown, 0));
        self.join_serve("the plugin to shut down").await
    }

    /// Closes the connection without `Shutdown`, as when hm dies, and waits for the serve loop
    /// to notice and return (it must stop every step on its own).
    pub async fn disconnect(mut self) -> Result<(), HarnessError> {
        self.pump.abort();
        self.writer.abort();
        // Both halves of the socket are dropped once the tasks are.
        let _ = (&mut self.pump).await;
        let _ = (&mut self.writer).await;
        self.join_serve("the plugin to notice the closed connection")
            .await
    }

    async fn join_serve(&mut self, waiting_for: &str) -> Result<(), HarnessError> {
        let Some(serve) = self.serve.as_mut() else {
            return Ok(());
        };
        let served = match tokio::time::timeout(self.timeout, serve).await {
            Ok(served) => served,
            Err(_) => {
                return Err(HarnessError::Timeout {
                    waiting_for: waiting_for.into(),
                    after: self.timeout,
                });
            }
        };
        self.serve = None;
        if let Some(violation) = self.kernel.violation() {
            return Err(HarnessError::Protocol(violation));
        }
        match served {
            Ok(result) => result.map_err(HarnessError::from),
            Err(e) if e.is_panic() => Err(HarnessError::Panicked(panic_message(e.into_panic()))),
            Err(_) => Err(HarnessError::Closed),
        }
    }

    fn start_call(&self, kind: CallKind, call: &KernelCall) -> Result<CallHandle, HarnessError> {
        self.start_call_with(kind, call, None)
    }

    fn start_call_with(
        &self,
        kind: CallKind,
        call: &KernelCall,
        needs_artifacts: Option<SealedBuffer>,
    ) -> Result<CallHandle, HarnessError> {
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        let frame = OutFrame::message(FrameKind::Call, id, call)?;
        let (events, receiver) = mpsc::unbounded_channel();
        {
            let mut state = self.kernel.lock();
            if let Some(ended) = &state.ended {
                return Err(ended.error());
            }
            state.policy.register(id, kind);
            state.calls.insert(
                id,
                CallEntry {
                    kind,
                    events,
                    process_groups: Vec::new(),
                    needs_artifacts,
                },
            );
        }
        self.kernel.send(frame)?;
        Ok(CallHandle {
            id,
            events: receiver,
            kernel: self.kernel.clone(),
            timeout: self.timeout,
            lines: Vec::new(),
            logs: Vec::new(),
            process_groups: Vec::new(),
            artifacts: None,
            node: None,
            reply: None,
        })
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(serve) = self.serve.take() {
            // The plugin was not shut down (a test failed or returned early): stop it, and
            // kill what its steps run, which aborting the task alone would not reach.
            for pgid in self.kernel.running_groups() {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            serve.abort();
        }
        self.pump.abort();
        self.writer.abort();
    }
}

/// One call in flight: receives its output, diagnostics and reply as the harness pumps frames.
///
/// Everything received is kept, so [`CallHandle::finish`] returns the whole run also after
/// waits such as [`CallHandle::wait_for_line`]. Every wait is bounded by the harness timeout.
pub struct CallHandle {
    id: u64,
    events: mpsc::UnboundedReceiver<CallEvent>,
    kernel: Arc<Kernel>,
    timeout: Duration,
    lines: Vec<(OutputStream, String)>,
    logs: Vec<(LogLevel, String)>,
    process_groups: Vec<i32>,
    artifacts: Option<Result<Vec<u8>, String>>,
    node: Option<String>,
    reply: Option<PluginReply>,
}

impl CallHandle {
    /// The call id of the call, which is also the `step_call` of its step-scoped state.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The output lines received so far.
    pub fn lines(&self) -> &[(OutputStream, String)] {
        &self.lines
    }

    /// Waits for the first output line (received before or after this call) that `matches`,
    /// and returns it. Fails if the step ends first.
    pub async fn wait_for_line(
        &mut self,
        mut matches: impl FnMut(OutputStream, &str) -> bool,
    ) -> Result<(OutputStream, String), HarnessError> {
        let mut scanned = 0;
        self.wait("a matching output line", move |call| {
            let hit = call.lines[scanned..]
                .iter()
                .find(|(s, t)| matches(*s, t))
                .cloned();
            scanned = call.lines.len();
            hit
        })
        .await
    }

    /// Waits until the plugin reports the step's process group, and returns it.
    pub async fn process_group(&mut self) -> Result<i32, HarnessError> {
        self.wait("the step's process group", |call| {
            call.process_groups.first().copied()
        })
        .await
    }

    /// Waits for the reply and returns everything the call produced.
    pub async fn finish(mut self) -> Result<StepRun, HarnessError> {
        let result = match self.reply().await? {
            PluginReply::StepDone(result) => Ok(*result),
            PluginReply::Failed(failure) | PluginReply::ImageUnavailable(failure) => {
                Err(failure.message)
            }
            // The pump only routes replies that fit the call.
            other => {
                return Err(HarnessError::Protocol(format!(
                    "answered ExecuteStep with {other:?}"
                )));
            }
        };
        Ok(StepRun {
            lines: self.lines,
            result,
            logs: self.logs,
            process_groups: self.process_groups,
            node: self.node,
            artifacts: self.artifacts,
        })
    }

    async fn reply(&mut self) -> Result<PluginReply, HarnessError> {
        self.wait("its reply", |call| call.reply.is_some().then_some(()))
            .await?;
        self.reply.take().ok_or(HarnessError::Closed)
    }

    /// Receives events until `found` returns a value, the call ends, or the timeout passes.
    async fn wait<T>(
        &mut self,
        waiting_for: &str,
        mut found: impl FnMut(&Self) -> Option<T>,
    ) -> Result<T, HarnessError> {
        let (id, timeout) = (self.id, self.timeout);
        let waited = tokio::time::timeout(timeout, async {
            loop {
                if let Some(value) = found(self) {
                    return Ok(value);
                }
                if self.reply.is_some() {
                    return Err(HarnessError::CallEnded {
                        call: id,
                        waiting_for: waiting_for.into(),
                    });
                }
                match self.events.recv().await {
                    None => return Err(self.kernel.ended_error()),
                    Some(CallEvent::Lines(lines)) => self.lines.extend(lines),
                    Some(CallEvent::Log(level, message)) => self.logs.push((level, message)),
                    Some(CallEvent::ProcessGroup(pgid)) => self.process_groups.push(pgid),
                    Some(CallEvent::Placed(node)) => self.node = Some(node),
                    Some(CallEvent::Artifacts(upload)) => self.artifacts = Some(upload),
                    Some(CallEvent::Reply(reply)) => self.reply = Some(reply),
                }
            }
        })
        .await;
        waited.unwrap_or_else(|_| {
            Err(HarnessError::Timeout {
                waiting_for: format!("{waiting_for} (call {id})"),
                after: timeout,
            })
        })
    }
}

/// The live (not zombie) processes whose process group is `pgid`, from /proc.
pub fn live_group_members(pgid: i32) -> Vec<i32> {
    crate::procfs::group_members(pgid)
}

/// Waits until no live process is left in process group `pgid`, for tests that check a step
/// leaves nothing behind. Waits on each process itself (a pidfd), so a process that was sent
/// SIGKILL but has not finished dying yet is waited for, not reported.
pub async fn wait_for_group_exit(pgid: i32, within: Duration) -> Result<(), HarnessError> {
    let deadline = Instant::now() + within;
    loop {
        let members = live_group_members(pgid);
        if members.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(HarnessError::ProcessesLeft {
                pgid,
                pids: members,
            });
        }
        for pid in members {
            // A process that is already gone has nothing to wait for.
            let Some(exited) = pidfd(pid) else { continue };
            if tokio::time::timeout_at(deadline, exited.readable())
                .await
                .is_err()
            {
                return Err(HarnessError::ProcessesLeft {
                    pgid,
                    pids: live_group_members(pgid),
                });
            }
        }
        // Members may have forked while we waited: look again.
    }
}

/// A pidfd for `pid`, readable once the process has exited; `None` if it is gone.
fn pidfd(pid: i32) -> Option<AsyncFd<OwnedFd>> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is shared.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: pidfd_open just returned this fd, and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: the `OwnedFd` keeps the pidfd open, and its raw fd unchanged, for as long as the
    // `AsyncFd` owns it.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok()
}

/// The kernel's side of the connection, shared by the harness, its call handles and the pump.
struct Kernel {
    out: mpsc::UnboundedSender<OutFrame>,
    protocol: u32,
    state: Mutex<State>,
}

struct State {
    /// hm's own rules for what the plugin may send (calls in flight, reply kinds, credit,
    /// batch size): the harness judges the plugin exactly as the kernel does.
    policy: HostPolicy,
    calls: HashMap<u64, CallEntry>,
    pings: HashMap<u64, oneshot::Sender<()>>,
    kv: HashMap<(u8, u64, String), String>,
    logs: Vec<(LogLevel, String)>,
    config_json: String,
    /// What `OpenArchive` is served from.
    archive: Option<SealedBuffer>,
    archive_requests: u32,
    /// Why the connection is over; the first reason wins.
    ended: Option<Ended>,
}

struct CallEntry {
    kind: CallKind,
    events: mpsc::UnboundedSender<CallEvent>,
    process_groups: Vec<i32>,
    /// What `OpenArtifacts` answers for this step.
    needs_artifacts: Option<SealedBuffer>,
}

enum CallEvent {
    Lines(Vec<(OutputStream, String)>),
    Log(LogLevel, String),
    ProcessGroup(i32),
    Placed(String),
    Artifacts(Result<Vec<u8>, String>),
    Reply(PluginReply),
}

#[derive(Debug, Clone)]
enum Ended {
    Closed,
    Violation(String),
}

impl Ended {
    fn error(&self) -> HarnessError {
        match self {
            Ended::Closed => HarnessError::Closed,
            Ended::Violation(why) => HarnessError::Protocol(why.clone()),
        }
    }
}

impl Kernel {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock only means a test panicked while holding it; the state is still sound.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn send(&self, frame: OutFrame) -> Result<(), HarnessError> {
        self.out.send(frame).map_err(|_| self.ended_error())
    }

    fn ended_error(&self) -> HarnessError {
        self.lock()
            .ended
            .as_ref()
            .map_or(HarnessError::Closed, Ended::error)
    }

    fn violation(&self) -> Option<String> {
        match &self.lock().ended {
            Some(Ended::Violation(why)) => Some(why.clone()),
            _ => None,
        }
    }

    fn running_groups(&self) -> Vec<i32> {
        let state = self.lock();
        state
            .calls
            .values()
            .flat_map(|call| call.process_groups.iter().copied())
            .collect()
    }

    /// Marks the connection over and fails every call and ping in flight; returns the process
    /// groups of the steps that were in flight.
    fn end(&self, why: Ended) -> Vec<i32> {
        let mut state = self.lock();
        state.ended.get_or_insert(why);
        state.pings.clear();
        let groups = state
            .calls
            .values()
            .flat_map(|call| call.process_groups.clone())
            .collect();
        // Dropping the senders ends each handle's wait, after what was already queued.
        state.calls.clear();
        groups
    }

    /// Handles one frame from the plugin; `Err` is a protocol violation.
    fn receive(&self, frame: Frame) -> Result<(), String> {
        let inbound = self.lock().policy.check(frame).map_err(|v| v.0)?;
        match inbound {
            Inbound::Log { call, batch } => self.log_batch(call, batch),
            Inbound::Reply { call, reply, .. } => {
                let mut state = self.lock();
                // The policy only lets through replies to calls in flight, of a kind that fits.
                let Some(entry) = state.calls.remove(&call) else {
                    return Ok(());
                };
                // Step-scoped state lives as long as the step attempt.
                let step = KvScope::Step as u8;
                state
                    .kv
                    .retain(|(scope, step_call, _), _| *scope != step || *step_call != call);
                let _ = entry.events.send(CallEvent::Reply(reply));
                Ok(())
            }
            Inbound::HostCall {
                call,
                request,
                buffer,
            } => {
                let (reply, buffer) = self.host_call(request, buffer)?;
                self.answer(call, &reply, buffer)
            }
            Inbound::OversizedCall { call, bytes } => {
                let message = format!("a host call of {bytes} bytes is larger than hm accepts");
                self.answer(
                    call,
                    &HostReply::Error(Box::new(CallFailure { message })),
                    None,
                )
            }
            Inbound::Pong { nonce } => {
                if let Some(waiter) = self.lock().pings.remove(&nonce) {
                    let _ = waiter.send(());
                }
                Ok(())
            }
        }
    }

    /// Sends the reply to the plugin's host call `call`.
    fn answer(&self, call: u64, reply: &HostReply, buffer: Option<OwnedFd>) -> Result<(), String> {
        let mut frame = OutFrame::message_for(self.protocol, FrameKind::Reply, call, reply)
            .map_err(|e| format!("the harness failed to answer: {e}"))?;
        if let Some(fd) = buffer {
            frame = frame.with_buffer(fd);
        }
        // A closed writer means the connection is ending; the pump sees that next.
        let _ = self.out.send(frame);
        Ok(())
    }

    /// Routes a batch of step output to its call and grants its credit back, as hm does once
    /// it has taken the lines in.
    fn log_batch(&self, call: u64, batch: LogFrame) -> Result<(), String> {
        let lines: Vec<(OutputStream, String)> = batch
            .chunks()
            .flat_map(|(stream, text)| {
                let stream = match stream {
                    0 => OutputStream::Stdout,
                    _ => OutputStream::Stderr,
                };
                text.split('\n')
                    .map(|line| (stream, line.to_owned()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut state = self.lock();
        if let Some(entry) = state.calls.get(&call) {
            // The handle may be gone; the batch is consumed all the same.
            let _ = entry.events.send(CallEvent::Lines(lines));
        }
        // The batch is consumed: only now may the plugin send one more.
        state.policy.grant(1);
        let credit = OutFrame::message(FrameKind::Credit, 0, &Credit { batches: 1 })
            .map_err(|e| format!("the harness failed to grant credit: {e}"))?;
        let _ = self.out.send(credit);
        Ok(())
    }

    /// Answers one host-API call, with the descriptor of a shared buffer for `OpenArchive`
    /// and `OpenArtifacts`. `buffer` is what came with the call: a `PutArtifacts` tar (the
    /// policy has checked that only that call brings one, of the length it says).
    fn host_call(
        &self,
        call: HostCall,
        buffer: Option<SharedBuffer>,
    ) -> Result<(HostReply, Option<OwnedFd>), String> {
        let mut state = self.lock();
        let reply = match call {
            HostCall::OpenArtifacts(step) => return open_artifacts(&state, step.step_call),
            HostCall::PutArtifacts(upload) => put_artifacts(&mut state, *upload, buffer),
            HostCall::Log(record) => {
                for call in state
                    .calls
                    .values()
                    .filter(|call| call.kind == CallKind::Execute)
                {
                    let _ = call
                        .events
                        .send(CallEvent::Log(record.level, record.message.clone()));
                }
                state.logs.push((record.level, record.message));
                HostReply::Ok
            }
            HostCall::KvGet(key) => match check_scope(&state, &key) {
                Err(refusal) => refusal,
                Ok(()) => HostReply::Value(Box::new(
                    state
                        .kv
                        .get(&kv_slot(key.scope, key.step_call, &key.key))
                        .cloned(),
                )),
            },
            HostCall::KvSet(write) => match check_scope(&state, &write.key) {
                Err(refusal) => refusal,
                Ok(()) => {
                    let slot = kv_slot(write.key.scope, write.key.step_call, &write.key.key);
                    match write.value {
                        Some(value) => state.kv.insert(slot, value),
                        None => state.kv.remove(&slot),
                    };
                    HostReply::Ok
                }
            },
            HostCall::ReadConfig => HostReply::Value(Box::new(Some(state.config_json.clone()))),
            HostCall::StepProcess(process) => {
                let Some(call) = state
                    .calls
                    .get_mut(&process.step_call)
                    .filter(|call| call.kind == CallKind::Execute)
                else {
                    return Err(format!(
                        "reported process group {} for call {}, which is not a running step",
                        process.pgid, process.step_call
                    ));
                };
                call.process_groups.push(process.pgid);
                let _ = call.events.send(CallEvent::ProcessGroup(process.pgid));
                HostReply::Ok
            }
            HostCall::Placed(placement) => {
                // The policy checked that the call is a running step.
                if let Some(call) = state.calls.get(&placement.step_call) {
                    let _ = call.events.send(CallEvent::Placed(placement.node));
                }
                HostReply::Ok
            }
            HostCall::OpenArchive => return open_archive(&mut state),
        };
        Ok((reply, None))
    }
}

/// Answers `OpenArchive` from the archive the test provided (the policy has checked that the
/// protocol has it).
fn open_archive(state: &mut State) -> Result<(HostReply, Option<OwnedFd>), String> {
    state.archive_requests += 1;
    let Some(archive) = &state.archive else {
        let message = "the test provided no archive (Harness::provide_archive)".to_owned();
        return Ok((HostReply::Error(Box::new(CallFailure { message })), None));
    };
    let fd = archive
        .share()
        .map_err(|e| format!("the harness failed to share the archive: {e}"))?;
    let reply = HostReply::Archive(Box::new(ArchiveBuffer {
        len: archive.len() as u64,
    }));
    Ok((reply, Some(fd)))
}

/// Answers `OpenArtifacts` for step call `step_call` from what the test gave that step.
fn open_artifacts(state: &State, step_call: u64) -> Result<(HostReply, Option<OwnedFd>), String> {
    let Some(step) = running_step(state, step_call) else {
        let message = format!("no step call {step_call} is running");
        return Ok((HostReply::Error(Box::new(CallFailure { message })), None));
    };
    let Some(tar) = &step.needs_artifacts else {
        return Ok((HostReply::Ok, None));
    };
    let fd = tar
        .share()
        .map_err(|e| format!("the harness failed to share the artifacts: {e}"))?;
    let reply = HostReply::Archive(Box::new(ArchiveBuffer {
        len: tar.len() as u64,
    }));
    Ok((reply, Some(fd)))
}

/// Takes a step's `PutArtifacts`: the tar (copied out of the plugin's buffer, which is
/// unmapped here) or the problem goes to the step's handle, ahead of its reply.
fn put_artifacts(
    state: &mut State,
    upload: ArtifactUpload,
    buffer: Option<SharedBuffer>,
) -> HostReply {
    // The policy saw to it that the step is running and that this is its only upload.
    let Some(step) = state.calls.get_mut(&upload.step_call) else {
        return HostReply::Ok;
    };
    let upload = match (upload.problem, buffer) {
        (Some(problem), _) => Err(problem),
        (None, Some(tar)) => Ok(tar.as_slice().to_vec()),
        // The policy refuses an upload with neither.
        (None, None) => Err("no artifacts came".to_owned()),
    };
    let _ = step.events.send(CallEvent::Artifacts(upload));
    HostReply::Ok
}

fn running_step(state: &State, step_call: u64) -> Option<&CallEntry> {
    state
        .calls
        .get(&step_call)
        .filter(|call| call.kind == CallKind::Execute)
}

/// Step-scoped state belongs to a running step; the other scopes name no step.
fn check_scope(state: &State, key: &KvKey) -> Result<(), HostReply> {
    let refuse = |message: String| Err(HostReply::Error(Box::new(CallFailure { message })));
    match key.scope {
        KvScope::Step if !state.calls.contains_key(&key.step_call) => {
            refuse(format!("no step call {} is running", key.step_call))
        }
        KvScope::Plugin | KvScope::Run if key.step_call != 0 => {
            refuse(format!("{:?}-scoped keys name no step call", key.scope))
        }
        _ => Ok(()),
    }
}

fn kv_slot(scope: KvScope, step_call: u64, key: &str) -> (u8, u64, String) {
    (scope as u8, step_call, key.to_owned())
}

async fn handshake(
    frames: &mut FrameReader,
    out: &mpsc::UnboundedSender<OutFrame>,
    options: &HarnessOptions,
) -> Result<(Hello, u32), HarnessError> {
    let frame = match frames.next().await {
        None => return Err(HarnessError::Closed),
        Some(frame) => frame.map_err(|e| HarnessError::Protocol(e.to_string()))?,
    };
    if frame.kind() != FrameKind::Hello {
        return Err(HarnessError::Protocol(format!(
            "sent {:?} before Hello",
            frame.kind()
        )));
    }
    let hello: Hello = frame
        .decode()
        .map_err(|e| HarnessError::Protocol(e.to_string()))?;
    let send = |frame: OutFrame| out.send(frame).map_err(|_| HarnessError::Closed);
    match hm_ipc::negotiate(
        (PROTOCOL_MIN, options.protocol_max),
        hello.protocol_min,
        hello.protocol_max,
    ) {
        Err(reason) => {
            send(OutFrame::message(
                FrameKind::Reject,
                0,
                &Reject {
                    reason: reason.clone(),
                },
            )?)?;
            Err(HarnessError::Rejected(reason))
        }
        Ok(protocol) => {
            let welcome = Welcome {
                protocol,
                run_id: RUN_ID.into(),
                log_credit: options.log_credit,
                max_batch_bytes: options.max_batch_bytes,
            };
            send(OutFrame::message(FrameKind::Welcome, 0, &welcome)?)?;
            Ok((hello, protocol))
        }
    }
}

/// Reads every frame the plugin sends until the connection ends or the plugin breaks the
/// protocol.
async fn pump(mut frames: FrameReader, kernel: Arc<Kernel>, serve: AbortHandle) {
    let ended = loop {
        match frames.next().await {
            None | Some(Err(WireError::Io(_))) => break Ended::Closed,
            Some(Err(e)) => break Ended::Violation(e.to_string()),
            Some(Ok(frame)) => {
                if let Err(violation) = kernel.receive(frame) {
                    break Ended::Violation(violation);
                }
            }
        }
    };
    let violated = matches!(ended, Ended::Violation(_));
    let groups = kernel.end(ended);
    if violated {
        // What the kernel does with a plugin that breaks the protocol: stop it and its steps.
        for pgid in groups {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
        serve.abort();
    }
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    match panic.downcast::<String>() {
        Ok(message) => *message,
        Err(panic) => panic
            .downcast_ref::<&str>()
            .map_or("(no message)".into(), |s| s.to_string()),
    }
}
