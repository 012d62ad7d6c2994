//! What a plugin's connection tells the run loop ([`PluginEvent`]), and the run loop's way to
//! talk to a ready plugin ([`PluginLink`]). The messages between the two halves of the
//! supervisor: the connection task reports, the run loop decides.

use std::process::ExitStatus;
use std::sync::{Arc, Mutex};

use hm_ipc::codec::EncodeError;
use hm_ipc::host::{CallKind, HostPolicy, LogFrame};
use hm_ipc::messages::{Credit, HostReply, KernelCall, StepResult};
use hm_ipc::{FrameKind, OutFrame};
use tokio::sync::mpsc;

use crate::events::Cause;

/// Identifies one incarnation of one plugin: restarts get a new generation, so late events of
/// a dead instance are never mistaken for the new one's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PluginKey {
    pub index: usize,
    pub generation: u32,
}

#[derive(Debug)]
pub struct PluginEvent {
    pub key: PluginKey,
    pub kind: PluginEventKind,
}

#[derive(Debug)]
pub enum PluginEventKind {
    /// Handshake (and `Init`) done: calls may be sent through `link`.
    Ready {
        pid: u32,
        protocol: u32,
        link: PluginLink,
    },
    /// The plugin could not be started; `message` says why in full. `unavailable`: it
    /// refused `Init` because its environment is missing (a daemon that does not answer).
    /// `violation`: it broke the protocol before the handshake was over, or hm could not
    /// accept its `Hello` (protocol versions, name, capabilities). `process`: the
    /// process that was started and has ended, when there was one.
    StartFailed {
        message: String,
        unavailable: bool,
        violation: bool,
        process: Option<FailedProcess>,
    },
    /// Output of the step running as call `call`: runs of whole lines joined by `\n` (see
    /// `hm_ipc::messages::LogChunk`), read where the frame brought them. The run loop grants
    /// credit back.
    Log {
        call: u64,
        batch: LogFrame,
    },
    StepDone {
        call: u64,
        result: StepResult,
        /// The executor says the step was killed for running out of memory.
        out_of_memory: bool,
    },
    CallFailed {
        call: u64,
        message: String,
    },
    /// The step of `call` could not start: its image could not be found or pulled (v8).
    ImageUnavailable {
        call: u64,
        message: String,
    },
    /// The step of `call` runs on cluster node `node` (`Placed`, v8).
    Placed {
        call: u64,
        node: String,
    },
    /// The node the step of `call` ran on went down under it (v8).
    NodeLost {
        call: u64,
        message: String,
    },
    /// The service of `call` (`StartService`) is up, with its published ports (v8).
    ServiceUp {
        call: u64,
        ports: Vec<hm_ipc::messages::PublishedPort>,
    },
    /// The service of `call` could not be started or never became healthy (v8).
    ServiceFailed {
        call: u64,
        failure: hm_ipc::messages::ServiceFailure,
    },
    /// The service of `call` (`StopService`) is stopped and removed (v8).
    ServiceStopped {
        call: u64,
    },
    /// A hook has handled the event of call `call`; `abort` is a `before` hook's reason to
    /// stop the step.
    HookDone {
        call: u64,
        abort: Option<String>,
    },
    StepProcess {
        call: u64,
        pgid: i32,
    },
    /// A diagnostic from the plugin itself.
    /// The step of `call`'s artifacts as its executor collected them where it ran
    /// (`PutArtifacts`, v7): a sealed tar, or why there is none (cause `artifact`).
    Artifacts {
        call: u64,
        upload: Result<hm_ipc::SharedBuffer, String>,
    },
    /// `OpenArtifacts` (v7): host call `host_call` asks for the artifacts the step of `call`
    /// sees; the run loop answers it ([`PluginLink::answer_archive`]).
    OpenArtifacts {
        host_call: u64,
        call: u64,
    },
    Diagnostic {
        message: String,
    },
    Exited(PluginExit),
}

/// A plugin process that ended before its handshake was over.
#[derive(Debug)]
pub struct FailedProcess {
    pub pid: u32,
    /// `None` for an attached plugin, whose status is not hm's to collect.
    pub status: Option<ExitStatus>,
    /// Why it ended, as `plugin_exit` says: `protocol_error`, `timeout`, or what its status
    /// shows.
    pub cause: Cause,
}

/// The run loop's way to talk to one plugin instance once it is ready. Every frame hm sends
/// that the plugin may answer goes through here, so [`HostPolicy`] knows of it before the
/// plugin can: a call is registered before it is sent, credit granted before `Credit` is.
#[derive(Debug, Clone)]
pub struct PluginLink {
    pub(super) writer: mpsc::UnboundedSender<OutFrame>,
    pub(super) policy: Arc<Mutex<HostPolicy>>,
}

/// Why a frame could not be sent to a plugin.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The connection is closed: the plugin's exit is on its way to the run loop.
    #[error("plugin connection closed")]
    Closed,
    #[error("cannot encode the message: {0}")]
    Encode(#[from] EncodeError),
}

impl PluginLink {
    /// The protocol version the connection negotiated.
    pub fn protocol(&self) -> u32 {
        lock(&self.policy).protocol()
    }

    /// Sends call `id` of `kind`.
    pub fn call(&self, id: u64, kind: CallKind, call: &KernelCall) -> Result<(), LinkError> {
        let frame = OutFrame::message(FrameKind::Call, id, call)?;
        lock(&self.policy).register(id, kind);
        self.writer.send(frame).map_err(|_| LinkError::Closed)
    }

    /// Gives back one batch of log credit: hm has taken a batch in.
    pub fn grant_credit(&self) {
        if let Ok(frame) = OutFrame::message(FrameKind::Credit, 0, &Credit { batches: 1 }) {
            lock(&self.policy).grant(1);
            let _ = self.writer.send(frame);
        }
    }

    /// Asks the plugin to stop call `id` (its reply still comes).
    pub fn cancel(&self, id: u64) {
        let _ = self.writer.send(OutFrame::empty(FrameKind::Cancel, id));
    }

    /// Asks the plugin to finish its calls and exit.
    pub fn shutdown(&self) {
        let _ = self.writer.send(OutFrame::empty(FrameKind::Shutdown, 0));
    }

    /// Sends a ping with `nonce` (the connection's liveness check).
    pub(super) fn ping(&self, nonce: u64) {
        lock(&self.policy).ping(nonce);
        let _ = self.writer.send(OutFrame::empty(FrameKind::Ping, nonce));
    }

    /// Answers the plugin's host call `id` with a sealed buffer (`HostReply::Archive`), with
    /// `HostReply::Ok` when there is none, or with an error.
    pub fn answer_archive(&self, id: u64, archive: Result<Option<SealedBufferFd>, String>) {
        let frame = match archive {
            Ok(Some((fd, len))) => OutFrame::message(
                FrameKind::Reply,
                id,
                &HostReply::Archive(Box::new(hm_ipc::messages::ArchiveBuffer { len })),
            )
            .map(|frame| frame.with_buffer(fd)),
            Ok(None) => OutFrame::message(FrameKind::Reply, id, &HostReply::Ok),
            Err(message) => OutFrame::message(
                FrameKind::Reply,
                id,
                &HostReply::Error(Box::new(hm_ipc::messages::CallFailure { message })),
            ),
        };
        // A closed writer means the plugin is gone: the descriptor is closed with the frame.
        if let Ok(frame) = frame {
            let _ = self.writer.send(frame);
        }
    }

    /// Sends the reply to the plugin's host call `id`.
    pub(super) fn reply(
        &self,
        protocol: u32,
        id: u64,
        reply: &HostReply,
    ) -> Result<(), EncodeError> {
        let frame = OutFrame::message_for(protocol, FrameKind::Reply, id, reply)?;
        // A closed connection means the plugin is gone; its exit says so.
        let _ = self.writer.send(frame);
        Ok(())
    }
}

/// A duplicate of a sealed buffer's descriptor and the buffer's length.
pub type SealedBufferFd = (std::os::fd::OwnedFd, u64);

/// How a plugin process ended and why.
#[derive(Debug)]
pub struct PluginExit {
    pub pid: u32,
    pub status: Option<ExitStatus>,
    /// Set when the kernel killed it for breaking the protocol.
    pub violation: Option<String>,
    /// Set when the kernel killed it for not answering pings.
    pub hung: bool,
    pub stderr_tail: Vec<String>,
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Poisoning only means a panic elsewhere; the state stays consistent.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
