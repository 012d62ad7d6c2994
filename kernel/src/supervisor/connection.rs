//! The kernel's end of one plugin process: spawn, handshake (with deadline and diagnostics),
//! `Init` for v2 plugins, then validation of every frame and liveness pings until the plugin
//! exits. It reports everything to the run loop as [`PluginEvent`]s and decides nothing about
//! steps. A frame that fails validation is a protocol violation: the plugin is killed, the
//! kernel carries on.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use hm_ipc::codec::WireError;
use hm_ipc::host::{Inbound, MAX_CALL_BYTES, Violation};
use hm_ipc::messages::{ArchiveBuffer, HostCall, HostReply, Init, PluginReply};
use hm_ipc::{FrameKind, OutFrame};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use super::events::{
    FailedProcess, PluginEvent, PluginEventKind, PluginExit, PluginKey, PluginLink, lock,
};
use super::handshake::{self, Expected, FailureKind, Greeted, HandshakeFailure, Offer};
use super::host_api::HostState;
use super::process::{
    Confinement, PluginProcess, Registered, Tail, capture_lines, kill_group, start_failure,
};
use super::spawn::{ChildJoin, describe_spawn_error, plugin_command};
use crate::archive::WorkspaceArchive;
use crate::config::PluginSettings;
use crate::events::Cause;
use crate::registry::PluginSpec;

/// Log batches a plugin may have in flight; with [`MAX_BATCH_BYTES`] this bounds the memory a
/// chatty step can make the kernel hold.
pub const LOG_CREDIT: u32 = 8;
pub const MAX_BATCH_BYTES: u32 = 256 * 1024;
/// An idle plugin is pinged after this long without a frame, and must answer within twice
/// that. `HM_PING_INTERVAL` (a humantime duration) overrides it, for tests and slow machines.
const PING_INTERVAL: Duration = Duration::from_secs(5);

fn ping_interval() -> Duration {
    std::env::var("HM_PING_INTERVAL")
        .ok()
        .and_then(|text| humantime::parse_duration(&text).ok())
        .filter(|interval| !interval.is_zero())
        .unwrap_or(PING_INTERVAL)
}

/// Everything a connection task needs besides its plugin.
#[derive(Clone)]
pub struct ConnectionContext {
    pub run_id: String,
    pub pipeline: String,
    /// The project's root directory, in the plugin's environment as `HM_PROJECT_DIR`.
    pub project_dir: std::path::PathBuf,
    /// Set with `--attach`: wait for the plugin on this socket instead of starting it.
    pub attach: Option<Arc<super::attach::AttachPoint>>,
    /// Cancelled when the run no longer needs the plugin while it is still starting (an
    /// attached plugin that nobody starts).
    pub abandon: tokio_util::sync::CancellationToken,
    pub events: mpsc::UnboundedSender<PluginEvent>,
    pub host: Arc<HostState>,
    /// The run's workspace archive, built on the first `OpenArchive`.
    pub archive: Arc<WorkspaceArchive>,
    /// Pids of the plugin processes whose exit status tokio waits for: the orphan reaper must
    /// leave them alone. Inserted right after the spawn, removed after the wait.
    pub children: Arc<Mutex<HashSet<u32>>>,
    /// What hm tells the user outside the event stream (that it waits for a plugin).
    pub notice: crate::launch::Notice,
}

/// Starts the task that runs one plugin instance from spawn to exit.
pub fn start_plugin(
    key: PluginKey,
    spec: PluginSpec,
    settings: PluginSettings,
    confinement: Confinement,
    ctx: ConnectionContext,
) {
    let span = tracing::debug_span!(
        "plugin",
        plugin = %spec.name,
        generation = key.generation,
        pid = tracing::field::Empty,
    );
    let task = async move {
        let events = ctx.events.clone();
        if let Err(failure) = run_plugin(key, &spec, &settings, &confinement, ctx).await {
            let _ = events.send(PluginEvent {
                key,
                kind: PluginEventKind::StartFailed {
                    message: failure.message,
                    unavailable: failure.unavailable,
                    violation: failure.violation,
                    process: failure.process,
                },
            });
        }
    };
    tokio::spawn(task.instrument(span));
}

/// Why a plugin did not start.
struct StartFailure {
    message: String,
    /// It refused `Init` with `PluginReply::Unavailable`.
    unavailable: bool,
    /// It broke the protocol during the handshake, or sent a Hello hm cannot accept: its
    /// steps fail with `protocol_error`.
    violation: bool,
    /// The process, if one was started.
    process: Option<FailedProcess>,
}

impl From<String> for StartFailure {
    /// A plugin that could not even be started (no process, or one killed before it spoke).
    fn from(message: String) -> Self {
        Self {
            message,
            unavailable: false,
            violation: false,
            process: None,
        }
    }
}

async fn run_plugin(
    key: PluginKey,
    spec: &PluginSpec,
    settings: &PluginSettings,
    confinement: &Confinement,
    ctx: ConnectionContext,
) -> Result<(), StartFailure> {
    let name = &spec.name;
    let (connection, pid, mut process) = match ctx.attach.clone() {
        Some(point) => {
            (ctx.notice)(&format!(
                "hm: waiting for plugin {name}: start it with {}={} (Ctrl-C to give up)",
                hm_ipc::transport::IPC_SOCKET_ENV,
                point.path().display()
            ));
            let accepted = tokio::select! {
                accepted = point.accept() => accepted,
                () = ctx.abandon.cancelled() => {
                    return Err(format!("plugin {name}: stopped waiting for it to attach").into());
                }
            };
            let (stream, pid) = accepted.map_err(|e| {
                format!(
                    "plugin {name}: cannot accept on {}: {e}",
                    point.path().display()
                )
            })?;
            tracing::Span::current().record("pid", pid);
            tracing::info!("plugin {name} attached (pid {pid})");
            let connection =
                hm_ipc::transport::connect(stream).map_err(|e| format!("plugin {name}: {e}"))?;
            (connection, pid, PluginProcess::Attached)
        }
        None => {
            let (kernel_end, plugin_end) = hm_ipc::transport::socket_pair()
                .map_err(|e| format!("plugin {name}: socket pair: {e}"))?;
            let join = confinement
                .leaf
                .as_ref()
                .map(|leaf| ChildJoin::open(leaf.self_join_files()))
                .transpose()
                .map_err(|e| format!("plugin {name}: {e}"))?;
            let mut command = plugin_command(spec, hm_ipc::transport::raw(&plugin_end));
            // Where relative paths of the plugin's configuration start
            // (`HookContext::project_dir`).
            command.env(hm_ipc::messages::PROJECT_DIR_ENV, &ctx.project_dir);
            if let Some(join) = &join {
                join.add_to(&mut command);
            }
            let mut child = command.spawn().map_err(|e| {
                let why = join.and_then(ChildJoin::failure);
                format!(
                    "plugin {name}: {}",
                    why.unwrap_or_else(|| describe_spawn_error(spec, &e))
                )
            })?;
            drop(plugin_end);
            let pid = child.id().unwrap_or(0);
            tracing::Span::current().record("pid", pid);
            tracing::debug!("spawned");
            // No await since the spawn: the reaper, on this same thread, cannot have run in
            // between.
            lock(&ctx.children).insert(pid);
            let registered = Registered {
                set: ctx.children.clone(),
                pid,
            };
            if let Err(reason) = confinement.apply(pid) {
                kill_group(pid);
                let _ = child.wait().await;
                return Err(format!("plugin {name}: {reason}").into());
            }
            let tail: Tail = Arc::new(Mutex::new(VecDeque::new()));
            let mut capture = Vec::new();
            if let Some(stderr) = child.stderr.take() {
                capture.push(tokio::spawn(capture_lines(stderr, tail.clone())));
            }
            if let Some(stdout) = child.stdout.take() {
                capture.push(tokio::spawn(capture_lines(stdout, tail.clone())));
            }
            let connection = hm_ipc::transport::connect_std(kernel_end)
                .map_err(|e| format!("plugin {name}: {e}"))?;
            let process = PluginProcess::Spawned {
                child,
                capture,
                tail,
                _registered: registered,
            };
            (connection, pid, process)
        }
    };
    let hm_ipc::transport::Connection {
        mut frames,
        writer,
        writer_task,
    } = connection;

    let expected = Expected {
        name: &spec.name,
        capabilities: &spec.capabilities,
        version: None,
        protocol: None,
        needs: None,
    };
    let offer = Offer {
        run_id: ctx.run_id.clone(),
        log_credit: LOG_CREDIT,
        max_batch_bytes: MAX_BATCH_BYTES,
    };
    let handshake = tokio::time::timeout(settings.handshake_timeout, async {
        let mut greeted = handshake::greet(&mut frames, &writer, &expected, offer).await?;
        if greeted.protocol >= hm_ipc::handshake::INIT_SINCE {
            let init = Init {
                config_json: settings.config_json.clone(),
                pipeline: ctx.pipeline.clone(),
            };
            handshake::init(&spec.name, &mut frames, &writer, &mut greeted, init).await?;
        }
        Ok(greeted)
    })
    .await;
    let failure = match handshake {
        Ok(Ok(agreed)) => Ok(agreed),
        Ok(Err(failure)) => Err(failure),
        Err(_elapsed) => Err(HandshakeFailure::new(
            FailureKind::TimedOut,
            format!(
                "did not complete the handshake within {}",
                humantime::format_duration(settings.handshake_timeout)
            ),
        )),
    };
    let Greeted {
        protocol, policy, ..
    } = match failure {
        Ok(greeted) => greeted,
        Err(failure) => {
            tracing::debug!(failure = %failure, "handshake failed");
            return Err(end_failed_start(spec, pid, process, writer, writer_task, failure).await);
        }
    };
    tracing::debug!(protocol, "ready");
    let send = |kind| {
        let _ = ctx.events.send(PluginEvent { key, kind });
    };
    // Shared buffers (and so descriptors) only on a version that has them.
    frames.allow_fds(protocol >= hm_ipc::SHM_SINCE);
    let peer = Peer {
        pid,
        protocol,
        config_json: &settings.config_json,
    };
    let link = PluginLink {
        writer: writer.clone(),
        policy: Arc::new(Mutex::new(policy)),
    };
    send(PluginEventKind::Ready {
        pid,
        protocol,
        link: link.clone(),
    });

    let mut violation = None;
    let mut hung = false;
    let mut last_heard = Instant::now();
    let mut ping: Option<(u64, Instant)> = None;
    let mut nonce = 0u64;
    let interval = ping_interval();
    let mut ticker = tokio::time::interval(interval / 2);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            frame = frames.next() => {
                let frame = match frame {
                    None => break,
                    Some(Ok(frame)) => frame,
                    // A peer that dies with frames from hm unread resets the socket: that is
                    // the end of the connection, not a protocol violation, unless it ended in
                    // the middle of a frame.
                    Some(Err(WireError::Io(e))) => {
                        if frames.is_mid_frame() {
                            violation = Some(format!("connection lost in the middle of a frame ({e})"));
                        }
                        break;
                    }
                    Some(Err(e)) => { violation = Some(e.to_string()); break; }
                };
                last_heard = Instant::now();
                if let Err(e) = dispatch(spec, &ctx, &link, frame, &mut ping, &send, &peer) {
                    violation = Some(e.0);
                    break;
                }
            }
            _ = ticker.tick() => {
                let now = Instant::now();
                match ping {
                    Some((_, deadline)) if now >= deadline => { hung = true; break; }
                    None if now.duration_since(last_heard) >= interval => {
                        nonce += 1;
                        link.ping(nonce);
                        ping = Some((nonce, now + 2 * interval));
                    }
                    _ => {}
                }
            }
        }
    }
    if violation.is_some() || hung {
        process.kill(pid);
    }
    drop(link);
    drop(writer);
    let status = process.wait(pid).await;
    // The plugin is gone; anything left in its process group goes with it.
    process.clean_up(pid);
    let stderr_tail = process.finish().await;
    writer_task.abort();
    send(PluginEventKind::Exited(PluginExit {
        pid,
        status,
        violation,
        hung,
        stderr_tail,
    }));
    Ok(())
}

/// Ends a plugin whose handshake failed and tells its whole story. One that broke the protocol
/// or ran out of time is killed; one that was refused (or refused) is asked to leave and gets
/// [`EXIT_GRACE`] to do so, so that its exit status is its own.
async fn end_failed_start(
    spec: &PluginSpec,
    pid: u32,
    mut process: PluginProcess,
    writer: mpsc::UnboundedSender<OutFrame>,
    writer_task: tokio::task::JoinHandle<Result<(), WireError>>,
    failure: HandshakeFailure,
) -> StartFailure {
    use std::os::unix::process::ExitStatusExt;
    match failure.kind {
        FailureKind::Violation | FailureKind::TimedOut => process.kill(pid),
        FailureKind::Refused { .. } => {
            let _ = writer.send(OutFrame::empty(FrameKind::Shutdown, 0));
        }
        FailureKind::Closed | FailureKind::Rejected => {}
    }
    // Closing hm's end (once what is queued is sent) is the plugin's cue to leave.
    drop(writer);
    let status = process.wait(pid).await;
    process.clean_up(pid);
    let tail = process.finish().await;
    writer_task.abort();
    // Frames that break the protocol, and a Hello hm cannot accept, are protocol errors;
    // otherwise its status says how it ended.
    let protocol_error = failure.is_protocol_error();
    let cause = match failure.kind {
        _ if protocol_error => Cause::ProtocolError,
        FailureKind::TimedOut => Cause::Timeout,
        _ if status.is_some_and(|s| s.signal().is_some()) => Cause::Signal,
        _ => Cause::Exit,
    };
    let message = match failure.kind {
        // The plugin's own words say it all.
        FailureKind::Refused { unavailable: true } => {
            format!(
                "plugin {} ({}): {}",
                spec.name, spec.origin, failure.message
            )
        }
        FailureKind::Refused { unavailable: false } => {
            format!("plugin {} ({}) {}", spec.name, spec.origin, failure.message)
        }
        _ => start_failure(spec, &failure.message, status, &tail),
    };
    StartFailure {
        message,
        unavailable: failure.kind == FailureKind::Refused { unavailable: true },
        violation: protocol_error,
        process: Some(FailedProcess { pid, status, cause }),
    }
}

/// What the connection knows of its plugin instance after the handshake.
struct Peer<'a> {
    pid: u32,
    /// The negotiated protocol version.
    protocol: u32,
    /// `[plugins.<name>].config` as JSON, for `ReadConfig`.
    config_json: &'a str,
}

/// Judges one frame after the handshake ([`HostPolicy`]) and turns it into an event or a
/// host-API answer. `Err` is a protocol violation.
fn dispatch(
    spec: &PluginSpec,
    ctx: &ConnectionContext,
    link: &PluginLink,
    frame: hm_ipc::Frame,
    ping: &mut Option<(u64, Instant)>,
    send: &impl Fn(PluginEventKind),
    peer: &Peer<'_>,
) -> Result<(), Violation> {
    let inbound = lock(&link.policy).check(frame)?;
    let (call, reply) = match inbound {
        Inbound::Log { call, batch } => {
            send(PluginEventKind::Log { call, batch });
            return Ok(());
        }
        Inbound::Reply { call, reply, .. } => {
            send(match reply {
                PluginReply::StepDone(result) => PluginEventKind::StepDone {
                    call,
                    result: *result,
                    out_of_memory: false,
                },
                PluginReply::StepOutOfMemory(result) => PluginEventKind::StepDone {
                    call,
                    result: *result,
                    out_of_memory: true,
                },
                PluginReply::Failed(f) => PluginEventKind::CallFailed {
                    call,
                    message: f.message,
                },
                PluginReply::HookDone(outcome) => PluginEventKind::HookDone {
                    call,
                    abort: outcome.abort,
                },
                PluginReply::ImageUnavailable(f) => PluginEventKind::ImageUnavailable {
                    call,
                    message: f.message,
                },
                PluginReply::ServiceUp(up) => PluginEventKind::ServiceUp {
                    call,
                    ports: up.ports,
                },
                PluginReply::ServiceFailed(failure) => PluginEventKind::ServiceFailed {
                    call,
                    failure: *failure,
                },
                PluginReply::ServiceStopped => PluginEventKind::ServiceStopped { call },
                PluginReply::NodeLost(f) => PluginEventKind::NodeLost {
                    call,
                    message: f.message,
                },
                // A run makes no Init call after the handshake and no RunSubcommand at all,
                // so the policy lets none of their answers through.
                other => {
                    return Err(Violation(format!("answered call {call} with {other:?}")));
                }
            });
            return Ok(());
        }
        Inbound::Pong { nonce } => {
            if ping.is_some_and(|(sent, _)| sent == nonce) {
                *ping = None;
            }
            return Ok(());
        }
        // Refused before it is copied out of its (possibly shared) buffer.
        Inbound::OversizedCall { call, bytes } => (
            call,
            super::host_api::error(format!(
                "a host call of {bytes} bytes is larger than the {MAX_CALL_BYTES} hm accepts"
            )),
        ),
        Inbound::HostCall {
            call,
            request,
            buffer,
        } => {
            let reply = match request {
                HostCall::Log(record) => {
                    send(PluginEventKind::Diagnostic {
                        message: record.message,
                    });
                    HostReply::Ok
                }
                HostCall::KvGet(key) => ctx.host.get(&spec.name, &key),
                HostCall::KvSet(write) => ctx.host.set(&spec.name, &write.key, write.value),
                HostCall::ReadConfig => {
                    HostReply::Value(Box::new(Some(peer.config_json.to_owned())))
                }
                HostCall::OpenArchive => {
                    // Building the archive reads the whole project: the answer comes when it
                    // is ready, and the connection goes on meanwhile.
                    tokio::spawn(answer_open_archive(
                        ctx.archive.clone(),
                        link.writer.clone(),
                        call,
                    ));
                    return Ok(());
                }
                HostCall::PutArtifacts(upload) => {
                    // The policy saw to it that exactly one of the two came.
                    let result = match (buffer, upload.problem) {
                        (_, Some(problem)) => Err(problem),
                        (Some(buffer), None) => Ok(buffer),
                        (None, None) => Err("no artifacts came".to_owned()),
                    };
                    send(PluginEventKind::Artifacts {
                        call: upload.step_call,
                        upload: result,
                    });
                    HostReply::Ok
                }
                HostCall::Placed(placement) => {
                    send(PluginEventKind::Placed {
                        call: placement.step_call,
                        node: placement.node,
                    });
                    HostReply::Ok
                }
                HostCall::OpenArtifacts(step) => {
                    send(PluginEventKind::OpenArtifacts {
                        host_call: call,
                        call: step.step_call,
                    });
                    return Ok(());
                }
                HostCall::StepProcess(p) => {
                    // hm will SIGKILL this group if the plugin dies: believe the plugin only
                    // for a group led by one of its own children.
                    if leads_group_of_child(p.pgid, peer.pid) {
                        send(PluginEventKind::StepProcess {
                            call: p.step_call,
                            pgid: p.pgid,
                        });
                        HostReply::Ok
                    } else {
                        super::host_api::error(format!(
                            "process group {} is not led by a child of this plugin",
                            p.pgid
                        ))
                    }
                }
            };
            (call, reply)
        }
    };
    // Encoding hm's own reply cannot fail for the replies hm builds; if it did, that is hm's
    // bug, not the plugin's violation.
    if let Err(e) = link.reply(peer.protocol, call, &reply) {
        tracing::error!(plugin = %spec.name, "cannot encode a reply: {e}");
    }
    Ok(())
}

/// Answers `OpenArchive` call `call`: the archive's length, with a duplicate of its descriptor
/// next to the reply (closed here once the writer has sent it), or why there is none.
async fn answer_open_archive(
    archive: Arc<WorkspaceArchive>,
    writer: mpsc::UnboundedSender<OutFrame>,
    call: u64,
) {
    let frame = match archive.open().await {
        Ok((fd, len)) => OutFrame::message(
            FrameKind::Reply,
            call,
            &HostReply::Archive(Box::new(ArchiveBuffer { len })),
        )
        .map(|frame| frame.with_buffer(fd)),
        Err(message) => OutFrame::message(
            FrameKind::Reply,
            call,
            &super::host_api::error(format!("cannot build the workspace archive: {message}")),
        ),
    };
    // A closed writer means the plugin is gone: the descriptor is closed with the frame.
    if let Ok(frame) = frame {
        let _ = writer.send(frame);
    }
}

/// Whether `pgid` is a live process that leads its own process group and whose parent is
/// `parent`. A step whose process already ended fails this too, which only means hm has
/// nothing of it to kill.
fn leads_group_of_child(pgid: i32, parent: u32) -> bool {
    pgid > 1
        && hm_ipc::procfs::stat(pgid)
            .is_some_and(|stat| stat.ppid == parent as i32 && stat.pgrp == pgid)
}
