//! The kernel's side of the handshake, the one implementation for every session hm has with a
//! plugin: a run (Hello → Welcome → `Init`), the install probe (Hello → Welcome → Ping) and a
//! subcommand (Hello → Welcome → `RunSubcommand`). Each says how strictly the `Hello` must
//! match the manifest and what `Welcome` announces; all of them read the `Hello`, judge it,
//! refuse it or welcome it the same way, and hold the plugin to [`HostPolicy`] afterwards.
//!
//! Sending never decides anything here: a frame that cannot be sent means the plugin closed its
//! end, and the next read says so (or says what it sent before it left), so one cause always
//! reads the same way, whatever the timing.

use futures_util::StreamExt;
use hm_ipc::host::{CallKind, HostPolicy, Inbound, MAX_CALL_BYTES};
use hm_ipc::messages::{
    Hello, HostCall, HostReply, Init, KernelCall, PluginReply, Reject, Welcome,
};
use hm_ipc::{FrameKind, FrameReader, OutFrame};
use tokio::sync::mpsc;

/// Why a handshake did not complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeFailure {
    /// What happened, as a fragment that follows the plugin's name.
    pub message: String,
    pub kind: FailureKind,
}

/// The ways a handshake fails, which decide what becomes of the plugin and its steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// It closed its connection (it exited, or closed its socket) before the handshake was
    /// over.
    Closed,
    /// It sent a frame that breaks the protocol (invalid, or of a kind that may not come
    /// now): it is killed, cause `protocol_error`.
    Violation,
    /// hm refused its `Hello` (protocol range, name, capabilities) and told it so (`Reject`).
    Rejected,
    /// It refused `Init`: its configuration (`Failed`), or its environment (`Unavailable`).
    Refused { unavailable: bool },
    /// It did not complete the handshake in time: it is killed, cause `timeout`.
    TimedOut,
}

impl HandshakeFailure {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind,
        }
    }

    pub fn violation(message: impl Into<String>) -> Self {
        Self::new(FailureKind::Violation, message)
    }

    /// A plugin that broke the protocol or was refused: its steps fail with `protocol_error`.
    pub fn is_protocol_error(&self) -> bool {
        matches!(self.kind, FailureKind::Violation | FailureKind::Rejected)
    }
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What a plugin's `Hello` must say, from its manifest.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    pub name: &'a str,
    pub capabilities: &'a [String],
    /// The install probe and subcommands compare the version and the protocol range too; a
    /// run leaves them to the manifest.
    pub version: Option<&'a str>,
    pub protocol: Option<(u32, u32)>,
    /// The lowest protocol version the session needs (subcommands: 4), with the advice for a
    /// plugin below it.
    pub needs: Option<(u32, &'a str)>,
}

impl Expected<'_> {
    /// How `hello` disagrees with what is expected, showing both values.
    pub fn mismatch(&self, hello: &Hello) -> Option<String> {
        if hello.name != self.name {
            return Some(format!(
                "says its name is {:?} but its manifest says {:?}",
                hello.name, self.name
            ));
        }
        if let Some(version) = self.version
            && hello.version != version
        {
            return Some(format!(
                "says its version is {:?} but its manifest says {version:?}",
                hello.version
            ));
        }
        if let Some((min, max)) = self.protocol
            && (hello.protocol_min, hello.protocol_max) != (min, max)
        {
            return Some(format!(
                "says it speaks protocol {}..={} but its manifest says {min}..={max}",
                hello.protocol_min, hello.protocol_max
            ));
        }
        let mut said = hello.capabilities.clone();
        let mut declared = self.capabilities.to_vec();
        said.sort();
        declared.sort();
        if said != declared {
            return Some(format!(
                "declares capabilities [{}] but its manifest says [{}]",
                said.join(", "),
                declared.join(", ")
            ));
        }
        None
    }
}

/// What `Welcome` announces besides the version: the session's id and its flow control.
#[derive(Debug, Clone)]
pub struct Offer {
    pub run_id: String,
    pub log_credit: u32,
    pub max_batch_bytes: u32,
}

/// A completed greeting: what the plugin said, the agreed version, and the rules the rest of
/// the connection is held to.
#[derive(Debug)]
pub struct Greeted {
    pub hello: Hello,
    pub protocol: u32,
    pub policy: HostPolicy,
}

/// Reads the plugin's `Hello`, judges it against `expected` and answers `Welcome` with the
/// highest version both speak, or `Reject` with the reason.
pub async fn greet(
    frames: &mut FrameReader,
    writer: &mpsc::UnboundedSender<OutFrame>,
    expected: &Expected<'_>,
    offer: Offer,
) -> Result<Greeted, HandshakeFailure> {
    let hello = read_hello(frames).await?;
    let reject = |reason: String| {
        send_reject(writer, &reason);
        Err(HandshakeFailure::new(FailureKind::Rejected, reason))
    };
    if let Some(mismatch) = expected.mismatch(&hello) {
        return reject(mismatch);
    }
    let protocol = match hm_ipc::negotiate(
        (hm_ipc::PROTOCOL_MIN, hm_ipc::PROTOCOL_MAX),
        hello.protocol_min,
        hello.protocol_max,
    ) {
        Ok(protocol) => protocol,
        Err(reason) => return reject(reason),
    };
    if let Some((needs, advice)) = expected.needs
        && protocol < needs
    {
        return reject(format!(
            "it speaks protocol {}..={}, and this needs protocol {needs}: {advice}",
            hello.protocol_min, hello.protocol_max
        ));
    }
    let welcome = Welcome {
        protocol,
        run_id: offer.run_id,
        log_credit: offer.log_credit,
        max_batch_bytes: offer.max_batch_bytes,
    };
    send(writer, OutFrame::message(FrameKind::Welcome, 0, &welcome));
    let policy = HostPolicy::new(
        protocol,
        offer.log_credit,
        offer.max_batch_bytes,
        MAX_CALL_BYTES,
    );
    Ok(Greeted {
        hello,
        protocol,
        policy,
    })
}

/// Sends `Init` (call id 0) to a plugin on v2 or later and waits for its answer. Only `Log`
/// host calls are answered (logged at info level) meanwhile.
pub async fn init(
    plugin: &str,
    frames: &mut FrameReader,
    writer: &mpsc::UnboundedSender<OutFrame>,
    greeted: &mut Greeted,
    init: Init,
) -> Result<(), HandshakeFailure> {
    let policy = &mut greeted.policy;
    policy.register(0, CallKind::Init);
    send(
        writer,
        OutFrame::message(FrameKind::Call, 0, &KernelCall::Init(Box::new(init))),
    );
    loop {
        let inbound = next_inbound(frames, policy, "Init").await?;
        // The rest of the host API serves a plugin that is running, not one being set up.
        let refusal = "only Log is answered during Init; call the host API once Init is over";
        let log = |message: String| tracing::info!(plugin = %plugin, "{message}");
        let reply = match answer_outside_a_run(writer, greeted.protocol, inbound, refusal, log) {
            None => continue,
            Some(Inbound::Reply { reply, .. }) => reply,
            // No step runs and no ping was sent: the policy lets nothing else through.
            Some(_) => {
                return Err(HandshakeFailure::violation(
                    "sent output or a pong during Init",
                ));
            }
        };
        return match reply {
            PluginReply::Ready => Ok(()),
            PluginReply::Failed(f) => Err(HandshakeFailure::new(
                FailureKind::Refused { unavailable: false },
                format!("refused its configuration: {}", f.message),
            )),
            PluginReply::Unavailable(f) => Err(HandshakeFailure::new(
                FailureKind::Refused { unavailable: true },
                f.message,
            )),
            other => Err(HandshakeFailure::violation(format!(
                "answered Init with {other:?}"
            ))),
        };
    }
}

/// Answers a host call outside a run (during `Init`, the install probe, a subcommand), where
/// only `Log` means something: its message goes to `on_log` and it is answered `Ok`; every
/// other call is answered with an error that says `refusal`. Anything that is no host call is
/// handed back for the caller to judge.
pub fn answer_outside_a_run(
    writer: &mpsc::UnboundedSender<OutFrame>,
    protocol: u32,
    inbound: Inbound,
    refusal: &str,
    on_log: impl FnOnce(String),
) -> Option<Inbound> {
    let (call, reply) = match inbound {
        Inbound::HostCall {
            call,
            request: HostCall::Log(record),
            ..
        } => {
            on_log(record.message);
            (call, HostReply::Ok)
        }
        Inbound::HostCall { call, .. } | Inbound::OversizedCall { call, .. } => {
            (call, super::host_api::error(refusal.to_owned()))
        }
        other => return Some(other),
    };
    answer(writer, protocol, call, &reply);
    None
}

/// The next frame from a plugin in the middle of a session step (`during` names it), judged by
/// `policy`. The end of the connection is [`FailureKind::Closed`].
pub async fn next_inbound(
    frames: &mut FrameReader,
    policy: &mut HostPolicy,
    during: &str,
) -> Result<Inbound, HandshakeFailure> {
    let frame = match frames.next().await {
        None => {
            return Err(HandshakeFailure::new(
                FailureKind::Closed,
                format!("closed its connection during {during}"),
            ));
        }
        Some(Err(e)) => {
            return Err(HandshakeFailure::violation(format!(
                "sent an invalid frame during {during}: {e}"
            )));
        }
        Some(Ok(frame)) => frame,
    };
    policy
        .check(frame)
        .map_err(|v| HandshakeFailure::violation(format!("during {during}: {v}")))
}

/// Sends the reply to the plugin's host call `call`.
pub fn answer(
    writer: &mpsc::UnboundedSender<OutFrame>,
    protocol: u32,
    call: u64,
    reply: &HostReply,
) {
    send(
        writer,
        OutFrame::message_for(protocol, FrameKind::Reply, call, reply),
    );
}

/// Reads and validates a plugin's first frame, which must be `Hello`.
async fn read_hello(frames: &mut FrameReader) -> Result<Hello, HandshakeFailure> {
    let frame = match frames.next().await {
        None => {
            return Err(HandshakeFailure::new(
                FailureKind::Closed,
                "exited or closed its socket before saying Hello",
            ));
        }
        Some(Err(e)) => {
            return Err(HandshakeFailure::violation(format!(
                "sent an invalid first frame: {e}"
            )));
        }
        Some(Ok(frame)) => frame,
    };
    if frame.kind() != FrameKind::Hello {
        return Err(HandshakeFailure::violation(format!(
            "sent {:?} where Hello must come first",
            frame.kind()
        )));
    }
    frame
        .decode()
        .map_err(|e| HandshakeFailure::violation(format!("sent an invalid Hello: {e}")))
}

/// Tells the plugin why it is refused (it exits on `Reject`); the connection closes after.
fn send_reject(writer: &mpsc::UnboundedSender<OutFrame>, reason: &str) {
    let reject = Reject {
        reason: reason.to_owned(),
    };
    send(writer, OutFrame::message(FrameKind::Reject, 0, &reject));
}

/// Queues a frame of hm's own making. Encoding one cannot fail for the messages hm builds (a
/// failure would be a bug, logged); a closed connection shows on the next read.
pub fn send(
    writer: &mpsc::UnboundedSender<OutFrame>,
    frame: Result<OutFrame, hm_ipc::codec::EncodeError>,
) {
    match frame {
        Ok(frame) => {
            let _ = writer.send(frame);
        }
        Err(e) => tracing::error!("cannot encode a frame: {e}"),
    }
}
