//! The host's rules for what a plugin may send, and when: [`HostPolicy`] judges every frame a
//! plugin sends once its handshake is over. One implementation, used by the kernel's end of a
//! connection and by `hm_sdk::testing`, so a plugin tested with the SDK's harness is held to
//! exactly the rules hm holds it to.
//!
//! The policy keeps what the rules need and nothing else: the host's calls that are waiting
//! for their reply (and what kind of call each is), the pings waiting for their pong, and the
//! plugin's log credit. It does no I/O: the host registers a call *before* it sends it and
//! grants credit *before* it sends the `Credit` frame, so the plugin can never act on a frame
//! the policy has not heard of yet.

use std::collections::{HashMap, HashSet};

use thiserror::Error;

use crate::codec::Frame;
use crate::frame::FrameKind;
use crate::handshake::{
    ARTIFACTS_SINCE, HOOKS_SINCE, SERVICES_SINCE, SHM_SINCE, SUBCOMMANDS_SINCE, VERDICTS_SINCE,
};
use crate::messages::{ArchivedLogBatch, HostCall, PluginReply};
use crate::shm::SharedBuffer;

/// The largest host call hm decodes: a key and a value at their limits (1 KiB and 1 MiB),
/// with room to spare. A bigger one (it may come in a shared buffer) is answered with an error
/// before it is copied.
pub const MAX_CALL_BYTES: usize = 2 * 1024 * 1024;

/// The kinds of call a host makes, each answered by its own kinds of reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallKind {
    /// `KernelCall::Init` (call id 0): `Ready`, `Failed` or (v3) `Unavailable`.
    Init,
    /// `KernelCall::ExecuteStep` or (v6) `KernelCall::Execute`: `StepDone`, `Failed` or (v3) `StepOutOfMemory`; its output
    /// comes as `LogBatch` frames before the reply.
    Execute,
    /// `KernelCall::OnEvent` (v5): `HookDone` or `Failed`.
    Hook,
    /// `KernelCall::RunSubcommand` (v4): `SubcommandDone` or `Failed`.
    Subcommand,
    /// `KernelCall::StartService` (v8): `ServiceUp`, `ServiceFailed` or `Failed`.
    StartService,
    /// `KernelCall::StopService` (v8): `ServiceStopped` or `Failed`.
    StopService,
}

impl CallKind {
    fn as_str(self) -> &'static str {
        match self {
            CallKind::Init => "Init",
            CallKind::Execute => "ExecuteStep",
            CallKind::Hook => "OnEvent",
            CallKind::Subcommand => "RunSubcommand",
            CallKind::StartService => "StartService",
            CallKind::StopService => "StopService",
        }
    }
}

/// A frame the plugin had no right to send: the connection is over, and the plugin with it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct Violation(pub String);

/// What a frame the policy accepted is, for the host to act on.
#[derive(Debug)]
pub enum Inbound {
    /// Output of the running step of call `call`; its streams are 0 (stdout) and 1 (stderr).
    /// The batch has used one unit of credit, which the host grants back
    /// ([`HostPolicy::grant`]) once it has taken the lines in.
    Log { call: u64, batch: LogFrame },
    /// The answer to the host's call `call`, of a kind that fits it.
    Reply {
        call: u64,
        kind: CallKind,
        reply: PluginReply,
    },
    /// A call to the host API, to be answered with a `Reply` of the same id. `buffer` is the
    /// tar of a `PutArtifacts` (v7), the one host call that may carry one.
    HostCall {
        call: u64,
        request: HostCall,
        buffer: Option<SharedBuffer>,
    },
    /// A host call whose payload is larger than the host accepts: it is answered with an
    /// error (it was not decoded), and the connection goes on.
    OversizedCall { call: u64, bytes: usize },
    /// The answer to the ping with this nonce.
    Pong { nonce: u64 },
}

/// A `LogBatch` frame the policy accepted: its chunks are read where they arrived, never
/// copied out. Only [`HostPolicy::check`] makes one, after validating the whole archive; it
/// keeps where each chunk's text lies in the payload.
#[derive(Debug)]
pub struct LogFrame {
    frame: Frame,
    /// Each chunk's stream and the bytes of its text in the payload.
    chunks: Vec<(u8, std::ops::Range<usize>)>,
}

impl LogFrame {
    /// The batch's chunks in order: stream (0 stdout, 1 stderr) and text, lines joined by `\n`.
    pub fn chunks(&self) -> impl Iterator<Item = (u8, &str)> {
        let payload = self.frame.payload.as_slice();
        self.chunks.iter().map(move |(stream, range)| {
            let bytes = &payload[range.clone()];
            // SAFETY: these bytes are the text of an `ArchivedString` of this payload, which
            // `HostPolicy::check` validated (rkyv checks every string as UTF-8) before it made
            // this `LogFrame`; the payload cannot change since: it is owned by the frame, or a
            // sealed shared buffer mapped read-only. Checking again was about 6% of hm's CPU
            // for a step streaming its output.
            (*stream, unsafe { std::str::from_utf8_unchecked(bytes) })
        })
    }
}

/// What a plugin may send, once the handshake is over.
#[derive(Debug)]
pub struct HostPolicy {
    protocol: u32,
    calls: HashMap<u64, CallKind>,
    pings: HashSet<u64>,
    credit: u32,
    max_batch_bytes: usize,
    max_call_bytes: usize,
    /// Running steps whose artifacts came (`PutArtifacts`): one upload each, before the reply.
    uploaded: HashSet<u64>,
}

impl HostPolicy {
    /// The rules of a connection on `protocol`, with the `log_credit` and `max_batch_bytes`
    /// the host announced in `Welcome`; host calls larger than `max_call_bytes` are refused
    /// (answered with an error) before they are decoded.
    pub fn new(
        protocol: u32,
        log_credit: u32,
        max_batch_bytes: u32,
        max_call_bytes: usize,
    ) -> Self {
        Self {
            protocol,
            calls: HashMap::new(),
            pings: HashSet::new(),
            credit: log_credit,
            max_batch_bytes: max_batch_bytes as usize,
            max_call_bytes,
            uploaded: HashSet::new(),
        }
    }

    /// The negotiated protocol version.
    pub fn protocol(&self) -> u32 {
        self.protocol
    }

    /// The host is about to send call `id` of `kind`: its reply (and, for a step, its output)
    /// may come from now on.
    pub fn register(&mut self, id: u64, kind: CallKind) {
        self.calls.insert(id, kind);
    }

    /// The host is about to send a ping with this nonce.
    pub fn ping(&mut self, nonce: u64) {
        self.pings.insert(nonce);
    }

    /// The host is about to send `Credit { batches }`.
    pub fn grant(&mut self, batches: u32) {
        self.credit = self.credit.saturating_add(batches);
    }

    /// Whether call `id` is waiting for its reply.
    pub fn is_waiting(&self, id: u64) -> bool {
        self.calls.contains_key(&id)
    }

    /// The calls waiting for their reply, with their kinds (in no order).
    pub fn waiting(&self) -> impl Iterator<Item = (u64, CallKind)> + '_ {
        self.calls.iter().map(|(&id, &kind)| (id, kind))
    }

    /// Judges one frame from the plugin. `Err` is a protocol violation: the host ends the
    /// connection and kills the plugin.
    pub fn check(&mut self, mut frame: Frame) -> Result<Inbound, Violation> {
        let call = frame.call_id();
        let buffer = frame.take_buffer();
        if buffer.is_some() && frame.kind() != FrameKind::Call {
            // A large payload may come in a shared buffer (`FLAG_SHARED_PAYLOAD`); a buffer
            // *beside* the payload is a workspace archive or the like, which only hm hands out.
            return Err(Violation(format!(
                "sent a shared buffer with a {:?} frame, which has none",
                frame.kind()
            )));
        }
        match frame.kind() {
            FrameKind::LogBatch => self.log_batch(frame),
            FrameKind::Reply => self.reply(&frame),
            FrameKind::Call if frame.payload.len() > self.max_call_bytes => {
                Ok(Inbound::OversizedCall {
                    call,
                    bytes: frame.payload.len(),
                })
            }
            FrameKind::Call => {
                let request = frame
                    .decode::<HostCall>()
                    .map_err(|e| Violation(format!("sent an invalid host call: {e}")))?;
                let (name, since) = match &request {
                    HostCall::OpenArchive => ("OpenArchive", SHM_SINCE),
                    HostCall::OpenArtifacts(_) => ("OpenArtifacts", ARTIFACTS_SINCE),
                    HostCall::PutArtifacts(_) => ("PutArtifacts", ARTIFACTS_SINCE),
                    HostCall::Placed(_) => ("Placed", SERVICES_SINCE),
                    _ => ("", 0),
                };
                if self.protocol < since {
                    return Err(Violation(format!(
                        "called {name} on protocol {}, which does not have it (added in \
                         version {since})",
                        self.protocol
                    )));
                }
                check_buffer(&request, buffer.as_ref())?;
                if let HostCall::PutArtifacts(upload) = &request {
                    self.check_upload(upload.step_call)?;
                }
                if let HostCall::Placed(placement) = &request
                    && self.calls.get(&placement.step_call) != Some(&CallKind::Execute)
                {
                    return Err(Violation(format!(
                        "sent Placed for call {}, which is not a running step",
                        placement.step_call
                    )));
                }
                Ok(Inbound::HostCall {
                    call,
                    request,
                    buffer,
                })
            }
            FrameKind::Pong if self.pings.remove(&call) => Ok(Inbound::Pong { nonce: call }),
            FrameKind::Pong => Err(Violation(format!(
                "sent a Pong for nonce {call}, which was never pinged or was answered already"
            ))),
            other => Err(Violation(format!(
                "sent a {other:?} frame, which only hm may send or which has no place after the \
                 handshake"
            ))),
        }
    }

    fn log_batch(&mut self, frame: Frame) -> Result<Inbound, Violation> {
        let call = frame.call_id();
        match self.calls.get(&call) {
            Some(CallKind::Execute) => {}
            Some(other) => {
                return Err(Violation(format!(
                    "sent step output for call {call}, which is {} and has none",
                    other.as_str()
                )));
            }
            None => {
                return Err(Violation(format!(
                    "sent output for call {call}, which is not running"
                )));
            }
        }
        if self.credit == 0 {
            return Err(Violation(format!(
                "sent a log batch for call {call} without credit (hm grants it one batch at a \
                 time, after it has taken the previous one in)"
            )));
        }
        let archived = frame
            .access::<ArchivedLogBatch>()
            .map_err(|e| Violation(e.to_string()))?;
        let mut bytes = 0usize;
        for chunk in archived.chunks.iter() {
            if chunk.stream > 1 {
                return Err(Violation(format!(
                    "sent a log chunk with unknown stream {}",
                    chunk.stream
                )));
            }
            bytes += chunk.text.len();
        }
        if bytes > self.max_batch_bytes {
            return Err(Violation(format!(
                "sent a log batch of {bytes} bytes for call {call}, over the {} bytes of \
                 max_batch_bytes",
                self.max_batch_bytes
            )));
        }
        let base = frame.payload.as_slice().as_ptr() as usize;
        let chunks = archived
            .chunks
            .iter()
            .map(|chunk| {
                let start = chunk.text.as_str().as_ptr() as usize - base;
                (chunk.stream, start..start + chunk.text.len())
            })
            .collect();
        let batch = LogFrame { frame, chunks };
        self.credit -= 1;
        Ok(Inbound::Log { call, batch })
    }

    /// A step's artifacts come once, while it runs (before its reply).
    fn check_upload(&mut self, step_call: u64) -> Result<(), Violation> {
        if self.calls.get(&step_call) != Some(&CallKind::Execute) {
            return Err(Violation(format!(
                "sent PutArtifacts for call {step_call}, which is not a running step (the \
                 artifacts come before the step's reply)"
            )));
        }
        if !self.uploaded.insert(step_call) {
            return Err(Violation(format!(
                "sent PutArtifacts twice for the step of call {step_call}"
            )));
        }
        Ok(())
    }

    fn reply(&mut self, frame: &Frame) -> Result<Inbound, Violation> {
        let call = frame.call_id();
        self.uploaded.remove(&call);
        let Some(kind) = self.calls.remove(&call) else {
            return Err(Violation(format!(
                "answered call {call}, which hm never made or already had answered"
            )));
        };
        let reply = frame
            .decode::<PluginReply>()
            .map_err(|e| Violation(format!("sent an invalid reply to call {call}: {e}")))?;
        if let Some(since) = added_in(&reply)
            && self.protocol < since
        {
            return Err(Violation(format!(
                "answered call {call} with {}, which protocol {} does not have (added in \
                 version {since})",
                reply_name(&reply),
                self.protocol
            )));
        }
        if !fits(kind, &reply) {
            return Err(Violation(format!(
                "answered {} call {call} with {}",
                kind.as_str(),
                reply_name(&reply)
            )));
        }
        Ok(Inbound::Reply { call, kind, reply })
    }
}

/// Whether `reply` is an answer to a call of `kind`.
fn fits(kind: CallKind, reply: &PluginReply) -> bool {
    use PluginReply as R;
    match kind {
        CallKind::Init => matches!(reply, R::Ready | R::Failed(_) | R::Unavailable(_)),
        CallKind::Execute => matches!(
            reply,
            R::StepDone(_)
                | R::StepOutOfMemory(_)
                | R::ImageUnavailable(_)
                | R::NodeLost(_)
                | R::Failed(_)
        ),
        CallKind::Hook => matches!(reply, R::HookDone(_) | R::Failed(_)),
        CallKind::Subcommand => matches!(reply, R::SubcommandDone(_) | R::Failed(_)),
        CallKind::StartService => {
            matches!(reply, R::ServiceUp(_) | R::ServiceFailed(_) | R::Failed(_))
        }
        CallKind::StopService => matches!(reply, R::ServiceStopped | R::Failed(_)),
    }
}

/// The protocol version that added `reply`, when it is not in version 1 or 2.
fn added_in(reply: &PluginReply) -> Option<u32> {
    use PluginReply as R;
    match reply {
        R::Unavailable(_) | R::StepOutOfMemory(_) => Some(VERDICTS_SINCE),
        R::SubcommandDone(_) => Some(SUBCOMMANDS_SINCE),
        R::HookDone(_) => Some(HOOKS_SINCE),
        R::ImageUnavailable(_)
        | R::ServiceUp(_)
        | R::ServiceFailed(_)
        | R::ServiceStopped
        | R::NodeLost(_) => Some(SERVICES_SINCE),
        R::StepDone(_) | R::Ready | R::Failed(_) => None,
    }
}

fn reply_name(reply: &PluginReply) -> &'static str {
    use PluginReply as R;
    match reply {
        R::StepDone(_) => "StepDone",
        R::Ready => "Ready",
        R::Failed(_) => "Failed",
        R::Unavailable(_) => "Unavailable",
        R::StepOutOfMemory(_) => "StepOutOfMemory",
        R::SubcommandDone(_) => "SubcommandDone",
        R::HookDone(_) => "HookDone",
        R::ImageUnavailable(_) => "ImageUnavailable",
        R::ServiceUp(_) => "ServiceUp",
        R::ServiceFailed(_) => "ServiceFailed",
        R::ServiceStopped => "ServiceStopped",
        R::NodeLost(_) => "NodeLost",
    }
}

/// A buffer next to a host call belongs to a `PutArtifacts` without a problem, and such a call
/// has one of the length it says.
fn check_buffer(request: &HostCall, buffer: Option<&SharedBuffer>) -> Result<(), Violation> {
    match (request, buffer) {
        (HostCall::PutArtifacts(upload), Some(buffer)) if upload.problem.is_none() => {
            if buffer.len() as u64 != upload.len {
                return Err(Violation(format!(
                    "sent PutArtifacts saying {} bytes with a buffer of {}",
                    upload.len,
                    buffer.len()
                )));
            }
            Ok(())
        }
        (HostCall::PutArtifacts(upload), None) if upload.problem.is_some() => Ok(()),
        (HostCall::PutArtifacts(_), Some(_)) => Err(Violation(
            "sent PutArtifacts with both a problem and a buffer".into(),
        )),
        (HostCall::PutArtifacts(_), None) => Err(Violation(
            "sent PutArtifacts without its buffer or a problem".into(),
        )),
        (_, None) => Ok(()),
        (other, Some(_)) => Err(Violation(format!(
            "sent a shared buffer with a {} host call, which has none",
            host_call_name(other)
        ))),
    }
}

fn host_call_name(call: &HostCall) -> &'static str {
    match call {
        HostCall::Log(_) => "Log",
        HostCall::KvGet(_) => "KvGet",
        HostCall::KvSet(_) => "KvSet",
        HostCall::ReadConfig => "ReadConfig",
        HostCall::StepProcess(_) => "StepProcess",
        HostCall::OpenArchive => "OpenArchive",
        HostCall::OpenArtifacts(_) => "OpenArtifacts",
        HostCall::PutArtifacts(_) => "PutArtifacts",
        HostCall::Placed(_) => "Placed",
    }
}
