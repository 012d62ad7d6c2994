//! The plugin's main loop: handshake, then dispatch of the kernel's frames until `Shutdown`
//! or until the kernel goes away.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use hm_ipc::codec::WireError;
use hm_ipc::handshake::VERDICTS_SINCE;
use hm_ipc::messages::{
    AttemptCall, CallFailure, Credit, Execute, ExecuteStep, Hello, HookOutcome, HostReply, Init,
    KernelCall, PluginReply, Reject, RunSubcommand, ServiceFailure, ServiceStart, ServiceUp,
    StepCall, SubcommandExit, Welcome,
};
use hm_ipc::{Frame, FrameError, FrameKind, FrameReader, OutFrame};
use thiserror::Error;
use tokio::net::UnixStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::context::StepContext;
use crate::link::Link;
use crate::plugin::{
    ArtifactLimits, HealthCheck, HookContext, HookEvent, HookVerdict, InitInfo, Plugin,
    ServiceError, ServiceRequest, StepError, StepRequest,
};

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error(transparent)]
    Transport(#[from] hm_ipc::transport::TransportError),
    #[error("hm rejected this plugin: {0}")]
    Rejected(String),
    #[error("hm closed the connection during the handshake")]
    ClosedDuringHandshake,
    #[error("{0}")]
    Wire(#[from] WireError),
    #[error("protocol violation from hm: {0}")]
    Protocol(String),
    #[error("failed to start the async runtime: {0}")]
    Runtime(std::io::Error),
}

impl From<FrameError> for ServeError {
    fn from(e: FrameError) -> Self {
        ServeError::Protocol(e.to_string())
    }
}

/// Runs `plugin` as a process started by hm and exits the process when hm is done with it.
///
/// `--hm-manifest` prints the plugin's manifest instead. Diagnostics go to stderr, never to
/// stdout.
pub fn serve(plugin: Plugin) -> ! {
    if std::env::args().skip(1).any(|a| a == "--hm-manifest") {
        let exe = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| plugin.name.clone());
        print!("{}", plugin.manifest(&exe));
        std::process::exit(0);
    }
    let name = plugin.name.clone();
    let code = match run(plugin) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{name}: {e}");
            1
        }
    };
    std::process::exit(code)
}

fn run(plugin: Plugin) -> Result<(), ServeError> {
    // Taken before the runtime starts: it edits the environment, which is only sound while the
    // process is single-threaded.
    let socket = hm_ipc::transport::plugin_socket()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    runtime.block_on(async move {
        let stream = UnixStream::from_std(socket).map_err(WireError::Io)?;
        serve_on(plugin, stream).await
    })
}

/// Serves `plugin` on an already connected stream: the handshake, then every call until
/// `Shutdown` or the end of the connection. Used by [`serve`] and by [`crate::testing`].
pub async fn serve_on(plugin: Plugin, stream: UnixStream) -> Result<(), ServeError> {
    let hm_ipc::transport::Connection {
        mut frames,
        writer: out,
        writer_task: writer,
    } = hm_ipc::transport::connect(stream).map_err(WireError::Io)?;

    let (protocol_min, protocol_max) = plugin.protocol_range();
    let hello = Hello {
        protocol_min,
        protocol_max,
        name: plugin.name.clone(),
        version: plugin.version.clone(),
        capabilities: plugin.capabilities(),
    };
    let hello = OutFrame::message(FrameKind::Hello, 0, &hello)
        .map_err(|e| ServeError::Protocol(e.to_string()))?;
    out.send(hello)
        .map_err(|_| ServeError::ClosedDuringHandshake)?;

    let welcome: Welcome = match frames.next().await {
        None => return Err(ServeError::ClosedDuringHandshake),
        Some(frame) => {
            let frame = frame?;
            match frame.kind() {
                FrameKind::Welcome => frame.decode()?,
                FrameKind::Reject => {
                    return Err(ServeError::Rejected(frame.decode::<Reject>()?.reason));
                }
                other => {
                    return Err(ServeError::Protocol(format!(
                        "expected Welcome or Reject, got {other:?}"
                    )));
                }
            }
        }
    };
    if welcome.protocol < protocol_min || welcome.protocol > protocol_max {
        return Err(ServeError::Protocol(format!(
            "hm chose protocol {} outside this plugin's range {protocol_min}..={protocol_max}",
            welcome.protocol
        )));
    }
    // Shared buffers (and so descriptors) only on a version that has them.
    frames.allow_fds(welcome.protocol >= hm_ipc::SHM_SINCE);
    let link = Arc::new(Link::new(
        out,
        welcome.log_credit,
        welcome.max_batch_bytes,
        welcome.protocol,
    ));

    let mut dispatcher = Dispatcher {
        plugin,
        run_id: welcome.run_id,
        info: None,
        link: link.clone(),
        calls: HashMap::new(),
        tasks: JoinSet::new(),
    };
    let result = dispatcher.run(&mut frames).await;
    // Whatever ended the loop, nothing may keep running: cancel every step (their helpers kill
    // their process groups) and wait for them. Close the link first: no credit or host-API
    // reply will come any more, and a step waiting for one would never end.
    link.close();
    for token in dispatcher.calls.values() {
        token.cancel();
    }
    while dispatcher.tasks.join_next().await.is_some() {}
    drop(dispatcher);
    drop(link);
    // Flush what the steps queued; the writer ends once every sender is gone.
    if let Ok(Err(e)) = writer.await {
        if result.is_ok() {
            return Err(e.into());
        }
    }
    result
}

/// What a step call says about the step's artifacts: globs and limits from `Step` (v7), none
/// and hm's default limits from the older calls.
#[derive(Default)]
struct Artifacts {
    globs: Vec<String>,
    limits: ArtifactLimits,
    /// The step's dependency caches (`Step` only).
    caches: Vec<hm_ipc::messages::CacheMount>,
    /// The services the step lists (`Attempt` only).
    services: Vec<String>,
}

impl Artifacts {
    fn of(call: StepCall, services: Vec<String>) -> (ExecuteStep, Vec<String>, Self) {
        let StepCall {
            execute: Execute { step, shell },
            artifacts,
            artifacts_max_files,
            artifacts_max_bytes,
            caches,
        } = call;
        let artifacts = Artifacts {
            caches,
            globs: artifacts,
            limits: ArtifactLimits {
                max_files: artifacts_max_files,
                max_bytes: artifacts_max_bytes,
            },
            services,
        };
        (step, shell, artifacts)
    }
}

struct Dispatcher {
    plugin: Plugin,
    run_id: String,
    /// What `Init` said, once it came; hooks see it through their context.
    info: Option<Arc<InitInfo>>,
    link: Arc<Link>,
    /// Calls from the kernel in flight, by call id.
    calls: HashMap<u64, CancellationToken>,
    tasks: JoinSet<u64>,
}

impl Dispatcher {
    async fn run(&mut self, frames: &mut FrameReader) -> Result<(), ServeError> {
        let mut shutting_down = false;
        loop {
            if shutting_down && self.calls.is_empty() {
                return Ok(());
            }
            tokio::select! {
                frame = frames.next() => match frame {
                    // The kernel is gone: the caller cancels everything.
                    None => return Ok(()),
                    Some(frame) => {
                        if self.handle(frame?)? {
                            shutting_down = true;
                        }
                    }
                },
                Some(done) = self.tasks.join_next() => {
                    if let Ok(id) = done {
                        self.calls.remove(&id);
                    }
                }
            }
        }
    }

    /// Handles one frame; `Ok(true)` means the kernel asked us to shut down.
    fn handle(&mut self, mut frame: Frame) -> Result<bool, ServeError> {
        let buffer = frame.take_buffer();
        if buffer.is_some() && frame.kind() != FrameKind::Reply {
            return Err(ServeError::Protocol(format!(
                "hm sent a shared buffer with a {:?} frame",
                frame.kind()
            )));
        }
        match frame.kind() {
            FrameKind::Call => {
                let call: KernelCall = frame.decode()?;
                self.start_call(frame.call_id(), call)?;
            }
            FrameKind::Reply => {
                let reply: HostReply = frame.decode()?;
                check_archive_reply(&reply, buffer.as_ref())?;
                self.link.complete(frame.call_id(), reply, buffer);
            }
            FrameKind::Cancel => {
                if let Some(token) = self.calls.get(&frame.call_id()) {
                    token.cancel();
                }
            }
            FrameKind::Ping => {
                let _ = self
                    .link
                    .send(OutFrame::empty(FrameKind::Pong, frame.call_id()));
            }
            FrameKind::Credit => {
                let credit: Credit = frame.decode()?;
                self.link.add_credit(credit.batches);
            }
            FrameKind::Shutdown => return Ok(true),
            other => {
                return Err(ServeError::Protocol(format!(
                    "unexpected {other:?} frame from hm"
                )));
            }
        }
        Ok(false)
    }

    fn start_call(&mut self, id: u64, call: KernelCall) -> Result<(), ServeError> {
        match call {
            KernelCall::Init(init) => {
                if self.link.protocol < hm_ipc::handshake::INIT_SINCE {
                    return Err(ServeError::Protocol(format!(
                        "Init received on protocol {}, which does not have it",
                        self.link.protocol
                    )));
                }
                let reply = self.init(*init);
                self.reply(id, &reply);
            }
            KernelCall::ExecuteStep(step) => {
                let shell = hm_ipc::messages::LEGACY_SHELL.map(str::to_owned).to_vec();
                self.execute(id, *step, shell, Artifacts::default());
            }
            KernelCall::Execute(call) => {
                if self.link.protocol < hm_ipc::EXECUTE_SINCE {
                    return Err(ServeError::Protocol(format!(
                        "Execute received on protocol {}, which does not have it",
                        self.link.protocol
                    )));
                }
                let Execute { step, shell } = *call;
                self.execute(id, step, shell, Artifacts::default());
            }
            KernelCall::Step(call) => {
                self.require("Step", hm_ipc::ARTIFACTS_SINCE)?;
                let (step, shell, artifacts) = Artifacts::of(*call, Vec::new());
                self.execute(id, step, shell, artifacts);
            }
            KernelCall::Attempt(call) => {
                self.require("Attempt", hm_ipc::SERVICES_SINCE)?;
                let AttemptCall { step, services } = *call;
                let (step, shell, artifacts) = Artifacts::of(step, services);
                self.execute(id, step, shell, artifacts);
            }
            KernelCall::StartService(call) => {
                self.require("StartService", hm_ipc::SERVICES_SINCE)?;
                self.start_service(id, *call);
            }
            KernelCall::StopService(call) => {
                self.require("StopService", hm_ipc::SERVICES_SINCE)?;
                self.stop_service(id, call.name);
            }
            KernelCall::RunSubcommand(call) => {
                if self.link.protocol < hm_ipc::SUBCOMMANDS_SINCE {
                    return Err(ServeError::Protocol(format!(
                        "RunSubcommand received on protocol {}, which does not have it",
                        self.link.protocol
                    )));
                }
                self.subcommand(id, *call);
            }
            KernelCall::OnEvent(event) => {
                if self.link.protocol < hm_ipc::HOOKS_SINCE {
                    return Err(ServeError::Protocol(format!(
                        "OnEvent received on protocol {}, which does not have it",
                        self.link.protocol
                    )));
                }
                self.hook(id, *event);
            }
        }
        Ok(())
    }

    /// A call added in protocol `since` on a connection that speaks an older one is a
    /// protocol error.
    fn require(&self, call: &str, since: u32) -> Result<(), ServeError> {
        if self.link.protocol < since {
            return Err(ServeError::Protocol(format!(
                "{call} received on protocol {}, which does not have it",
                self.link.protocol
            )));
        }
        Ok(())
    }

    fn init(&mut self, init: Init) -> PluginReply {
        let config = match serde_json::from_str(&init.config_json) {
            Ok(config) => config,
            Err(e) => return failed(format!("hm sent config that is not JSON: {e}")),
        };
        let info = InitInfo {
            config,
            pipeline: init.pipeline,
            run_id: self.run_id.clone(),
        };
        self.info = Some(Arc::new(info.clone()));
        if let Some(Err(message)) = self.plugin.init.as_ref().map(|check| check(&info)) {
            return failed(message);
        }
        match self.plugin.environment.as_ref().map(|check| check(&info)) {
            None | Some(Ok(())) => PluginReply::Ready,
            Some(Err(message)) if self.link.protocol >= VERDICTS_SINCE => {
                PluginReply::Unavailable(Box::new(CallFailure { message }))
            }
            Some(Err(message)) => failed(message),
        }
    }

    fn execute(&mut self, id: u64, step: ExecuteStep, shell: Vec<String>, artifacts: Artifacts) {
        let Some((_, executor)) = self.plugin.executor.clone() else {
            self.reply(
                id,
                &failed(format!("plugin {} provides no executor", self.plugin.name)),
            );
            return;
        };
        if shell.is_empty() {
            self.reply(
                id,
                &failed("hm sent an empty shell for the step".to_owned()),
            );
            return;
        }
        let with = match serde_json::from_str(&step.with_json) {
            Ok(with) => with,
            Err(e) => {
                self.reply(id, &failed(format!("`with` is not JSON: {e}")));
                return;
            }
        };
        let request = StepRequest {
            step: step.step,
            attempt: step.attempt,
            run: step.run,
            shell,
            dir: step.dir.into(),
            env: step.env.into_iter().map(|v| (v.name, v.value)).collect(),
            image: step.image,
            with,
            grace: std::time::Duration::from_millis(step.grace_ms),
            cgroup_procs: step.cgroup_procs.into_iter().map(Into::into).collect(),
            limits: step.limits,
            artifacts: artifacts.globs,
            artifact_limits: artifacts.limits,
            caches: artifacts.caches,
            services: artifacts.services,
        };
        let token = CancellationToken::new();
        self.calls.insert(id, token.clone());
        let ctx = StepContext::new(self.link.clone(), id, token);
        let link = self.link.clone();
        let verdicts = self.link.protocol >= VERDICTS_SINCE;
        let images = self.link.protocol >= hm_ipc::SERVICES_SINCE;
        self.tasks.spawn(async move {
            // A panicking executor fails its step, not the plugin; and the call still gets its
            // reply, without which hm (and `Shutdown`) would wait for it forever.
            let result = AssertUnwindSafe(executor.execute(request, ctx.clone()))
                .catch_unwind()
                .await
                .unwrap_or_else(|panic| {
                    Err(StepError::Message(format!(
                        "the executor panicked: {}",
                        panic_message(&*panic)
                    )))
                });
            // Output queued before the end goes out before the reply: no line is lost.
            let flushed = ctx.flush().await;
            let reply = match (result, flushed) {
                (Ok(result), Ok(())) => PluginReply::StepDone(Box::new(result)),
                // A kernel older than the verdict sees a SIGKILL (cause `signal`).
                (Err(StepError::OutOfMemory(result)), Ok(())) if verdicts => {
                    PluginReply::StepOutOfMemory(Box::new(result))
                }
                (Err(StepError::OutOfMemory(result)), Ok(())) => {
                    PluginReply::StepDone(Box::new(result))
                }
                (Err(StepError::Image(message)), Ok(())) if images => {
                    PluginReply::ImageUnavailable(Box::new(CallFailure { message }))
                }
                (Err(StepError::NodeLost(message)), Ok(())) if images => {
                    PluginReply::NodeLost(Box::new(CallFailure { message }))
                }
                (Err(e), _) => failed(e.to_string()),
                (Ok(_), Err(e)) => failed(e.to_string()),
            };
            if let Ok(frame) = OutFrame::message(FrameKind::Reply, id, &reply) {
                let _ = link.send(frame);
            }
            id
        });
    }

    fn start_service(&mut self, id: u64, call: ServiceStart) {
        let Some(services) = self.plugin.services.clone() else {
            let message = format!("plugin {} runs no services", self.plugin.name);
            self.reply(id, &failed(message));
            return;
        };
        let with = match serde_json::from_str(&call.with_json) {
            Ok(with) => with,
            Err(e) => {
                self.reply(id, &failed(format!("`with` is not JSON: {e}")));
                return;
            }
        };
        let request = ServiceRequest {
            name: call.name,
            image: call.image,
            env: call.env.into_iter().map(|v| (v.name, v.value)).collect(),
            entrypoint: call.entrypoint,
            command: call.command,
            ports: call.ports,
            health: call.health.map(|h| HealthCheck {
                command: h.command,
                interval: std::time::Duration::from_millis(h.interval_ms),
                timeout: std::time::Duration::from_millis(h.timeout_ms),
                retries: h.retries,
            }),
            with,
            limits: call.limits,
            grace: std::time::Duration::from_millis(call.grace_ms),
        };
        // hm gives a start up with `StopService`, which the plugin's `stop` sees: the start is
        // never dropped half-way, so it always cleans up after itself.
        self.spawn_reply(id, async move {
            match AssertUnwindSafe(services.start(request))
                .catch_unwind()
                .await
            {
                Ok(Ok(ports)) => PluginReply::ServiceUp(Box::new(ServiceUp { ports })),
                Ok(Err(ServiceError::Image(message))) => {
                    PluginReply::ServiceFailed(Box::new(ServiceFailure {
                        image: true,
                        message,
                        log: Vec::new(),
                    }))
                }
                Ok(Err(ServiceError::Failed { message, log })) => {
                    PluginReply::ServiceFailed(Box::new(ServiceFailure {
                        image: false,
                        message,
                        log,
                    }))
                }
                Err(panic) => failed(format!(
                    "starting the service panicked: {}",
                    panic_message(&*panic)
                )),
            }
        });
    }

    fn stop_service(&mut self, id: u64, name: String) {
        let Some(services) = self.plugin.services.clone() else {
            let message = format!("plugin {} runs no services", self.plugin.name);
            self.reply(id, &failed(message));
            return;
        };
        self.spawn_reply(id, async move {
            match AssertUnwindSafe(services.stop(name)).catch_unwind().await {
                Ok(Ok(())) => PluginReply::ServiceStopped,
                Ok(Err(message)) => failed(message),
                Err(panic) => failed(format!(
                    "stopping the service panicked: {}",
                    panic_message(&*panic)
                )),
            }
        });
    }

    /// Runs call `id` on a task of its own and sends what it answers.
    fn spawn_reply(
        &mut self,
        id: u64,
        answer: impl std::future::Future<Output = PluginReply> + Send + 'static,
    ) {
        self.calls.insert(id, CancellationToken::new());
        let link = self.link.clone();
        self.tasks.spawn(async move {
            let reply = answer.await;
            if let Ok(frame) = OutFrame::message(FrameKind::Reply, id, &reply) {
                let _ = link.send(frame);
            }
            id
        });
    }

    fn subcommand(&mut self, id: u64, call: RunSubcommand) {
        let Some(entry) = self
            .plugin
            .subcommands
            .iter()
            .find(|s| s.verb == call.verb)
            .cloned()
        else {
            let message = format!(
                "plugin {} provides no subcommand `{}`",
                self.plugin.name, call.verb
            );
            self.reply(id, &failed(message));
            return;
        };
        let args = match serde_json::from_str(&call.args_json) {
            Ok(args) => args,
            Err(e) => {
                self.reply(
                    id,
                    &failed(format!("hm sent arguments that are not JSON: {e}")),
                );
                return;
            }
        };
        self.calls.insert(id, CancellationToken::new());
        let link = self.link.clone();
        self.tasks.spawn(async move {
            let reply = match AssertUnwindSafe(entry.handler.run(args))
                .catch_unwind()
                .await
            {
                Ok(exit_code) => {
                    PluginReply::SubcommandDone(Box::new(SubcommandExit { exit_code }))
                }
                Err(panic) => failed(format!(
                    "the subcommand panicked: {}",
                    panic_message(&*panic)
                )),
            };
            if let Ok(frame) = OutFrame::message(FrameKind::Reply, id, &reply) {
                let _ = link.send(frame);
            }
            id
        });
    }

    fn hook(&mut self, id: u64, call: hm_ipc::messages::HookEvent) {
        let Some((_, hook)) = self.plugin.hook.clone() else {
            let message = format!("plugin {} provides no hook", self.plugin.name);
            self.reply(id, &failed(message));
            return;
        };
        let event = match serde_json::from_str(&call.event_json) {
            Ok(event) => event,
            Err(e) => {
                self.reply(
                    id,
                    &failed(format!("hm sent an event that is not JSON: {e}")),
                );
                return;
            }
        };
        let event = HookEvent {
            phase: call.phase,
            kind: call.kind,
            event,
        };
        // Hooks need protocol 5, so `Init` always came first; the fallback only keeps a
        // misbehaving kernel from panicking the plugin.
        let info = self.info.clone().unwrap_or_else(|| {
            Arc::new(InitInfo {
                config: serde_json::Value::Object(Default::default()),
                pipeline: String::new(),
                run_id: self.run_id.clone(),
            })
        });
        self.calls.insert(id, CancellationToken::new());
        let link = self.link.clone();
        self.tasks.spawn(async move {
            let ctx = HookContext { info };
            let reply = match AssertUnwindSafe(hook.on_event(event, ctx))
                .catch_unwind()
                .await
            {
                Ok(Ok(verdict)) => {
                    let abort = match verdict {
                        HookVerdict::Continue => None,
                        HookVerdict::Abort(reason) => Some(reason),
                    };
                    PluginReply::HookDone(Box::new(HookOutcome { abort }))
                }
                Ok(Err(message)) => failed(message),
                Err(panic) => failed(format!("the hook panicked: {}", panic_message(&*panic))),
            };
            if let Ok(frame) = OutFrame::message(FrameKind::Reply, id, &reply) {
                let _ = link.send(frame);
            }
            id
        });
    }

    fn reply(&self, id: u64, reply: &PluginReply) {
        if let Ok(frame) = OutFrame::message(FrameKind::Reply, id, reply) {
            let _ = self.link.send(frame);
        }
    }
}

/// An `Archive` reply comes with exactly the buffer it describes, and no other reply has one.
fn check_archive_reply(
    reply: &HostReply,
    buffer: Option<&hm_ipc::SharedBuffer>,
) -> Result<(), ServeError> {
    match (reply, buffer) {
        (HostReply::Archive(info), Some(buffer)) if info.len == buffer.len() as u64 => Ok(()),
        (HostReply::Archive(info), Some(buffer)) => Err(ServeError::Protocol(format!(
            "hm described an archive of {} bytes and sent a buffer of {}",
            info.len,
            buffer.len()
        ))),
        (HostReply::Archive(_), None) => Err(ServeError::Protocol(
            "hm answered with an archive but sent no buffer".into(),
        )),
        (_, Some(_)) => Err(ServeError::Protocol(
            "hm sent a shared buffer with a reply that has none".into(),
        )),
        (_, None) => Ok(()),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    message.to_owned()
}

fn failed(message: String) -> PluginReply {
    PluginReply::Failed(Box::new(CallFailure { message }))
}
