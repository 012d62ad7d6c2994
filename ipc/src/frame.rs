//! The fixed frame header: 24 little-endian bytes in front of every payload.
//!
//! ```text
//! offset  size  field
//!      0     4  magic  b"HMF1"
//!      4     2  kind   FrameKind
//!      6     2  flags  FLAG_FD | FLAG_SHARED_PAYLOAD (v3); every other bit must be 0
//!      8     4  len    payload length in bytes, excluding padding
//!     12     4  reserved (must be 0)
//!     16     8  call id
//! ```
//! The payload follows, padded with zeros to a multiple of [`PAYLOAD_ALIGN`] so the next
//! header starts aligned. Decoding never trusts `len` beyond [`INLINE_CAP`].
//!
//! Flags (protocol v3; a peer on v1 or v2 never sets one, and a v1/v2 decoder refuses them):
//! - [`FLAG_FD`]: exactly one file descriptor travels with this frame (`SCM_RIGHTS`, attached
//!   to the frame's first byte): a sealed shared buffer (`crate::shm`). Only `Call` and `Reply`
//!   frames may carry one.
//! - [`FLAG_SHARED_PAYLOAD`] (only with [`FLAG_FD`]): the frame's rkyv payload is that
//!   buffer's content, and `len` is 0. Without it the buffer is raw bytes that the payload
//!   names (the workspace archive).

use thiserror::Error;

pub const MAGIC: [u8; 4] = *b"HMF1";
pub const HEADER_LEN: usize = 24;
/// Payload bytes are padded to this multiple.
pub const PAYLOAD_ALIGN: usize = 8;
/// The largest payload that may travel inline through the socket (`docs/protocol.md`).
pub const INLINE_CAP: usize = 16 * 1024 * 1024;
/// Header flag: one descriptor (a sealed shared buffer) travels with this frame. v3.
pub const FLAG_FD: u16 = 1 << 0;
/// Header flag: the payload is the content of the frame's shared buffer (`len` is 0). v3.
pub const FLAG_SHARED_PAYLOAD: u16 = 1 << 1;
/// Every flag bit defined; any other is a protocol violation.
pub const KNOWN_FLAGS: u16 = FLAG_FD | FLAG_SHARED_PAYLOAD;

/// What a frame carries. Values are wire values: append only, never renumber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum FrameKind {
    /// Plugin → kernel, first frame. Payload [`crate::messages::Hello`]. v1; frozen forever.
    Hello = 0,
    /// Kernel → plugin. Payload [`crate::messages::Welcome`]. v1.
    Welcome = 1,
    /// Kernel → plugin, then the kernel closes. Payload [`crate::messages::Reject`]. v1.
    Reject = 2,
    /// A request; kernel → plugin carries `KernelCall`, plugin → kernel carries `HostCall`. v1.
    Call = 3,
    /// The answer to the call with the same id; `PluginReply` or `HostReply`. v1.
    Reply = 4,
    /// Kernel → plugin: give up the call named by the call id. No payload. v1.
    Cancel = 5,
    /// Kernel → plugin liveness probe; the call id is a nonce. No payload. v1.
    Ping = 6,
    /// Plugin → kernel answer to `Ping`, same nonce. No payload. v1.
    Pong = 7,
    /// Kernel → plugin: finish and exit. No payload. v1.
    Shutdown = 8,
    /// Plugin → kernel: step output lines of the call named by the call id. v1.
    LogBatch = 9,
    /// Kernel → plugin: permission to send more log batches. Payload `Credit`. v1.
    Credit = 10,
}

impl FrameKind {
    pub fn from_wire(value: u16) -> Option<Self> {
        Some(match value {
            0 => Self::Hello,
            1 => Self::Welcome,
            2 => Self::Reject,
            3 => Self::Call,
            4 => Self::Reply,
            5 => Self::Cancel,
            6 => Self::Ping,
            7 => Self::Pong,
            8 => Self::Shutdown,
            9 => Self::LogBatch,
            10 => Self::Credit,
            _ => return None,
        })
    }
}

/// A decoded, checked header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub kind: FrameKind,
    /// [`FLAG_FD`], [`FLAG_SHARED_PAYLOAD`].
    pub flags: u16,
    pub len: u32,
    pub call_id: u64,
}

/// Why bytes from a peer are not a frame. Every variant is a protocol violation.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    #[error("bad frame magic {0:02x?} (the peer is not speaking the hm protocol)")]
    BadMagic([u8; 4]),
    #[error("unknown frame kind {0}")]
    UnknownKind(u16),
    #[error("reserved header bits set (flags {flags:#x}, reserved {reserved:#x})")]
    Reserved { flags: u16, reserved: u32 },
    #[error("frame payload of {len} bytes exceeds the inline cap of {cap} bytes")]
    TooLarge { len: u64, cap: usize },
    #[error("connection closed in the middle of a frame ({buffered} bytes buffered)")]
    Truncated { buffered: usize },
    #[error("invalid {what} payload: {reason}")]
    InvalidPayload { what: &'static str, reason: String },
    #[error("non-zero padding after the payload")]
    Padding,
    #[error("header flags {flags:#x} are not allowed on a {kind:?} frame")]
    Flags { kind: FrameKind, flags: u16 },
    #[error("a frame claims a file descriptor that did not arrive with it")]
    FdMissing,
    #[error("a file descriptor arrived that no frame claims")]
    FdUnclaimed,
    #[error("file descriptors arrived where the protocol allows none ({reason})")]
    FdRefused { reason: &'static str },
    #[error("shared buffer refused: {reason}")]
    BadBuffer { reason: String },
}

impl FrameHeader {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&MAGIC);
        out[4..6].copy_from_slice(&(self.kind as u16).to_le_bytes());
        out[6..8].copy_from_slice(&self.flags.to_le_bytes());
        out[8..12].copy_from_slice(&self.len.to_le_bytes());
        out[16..24].copy_from_slice(&self.call_id.to_le_bytes());
        out
    }

    /// Checks a header from a peer. Never panics, whatever the bytes.
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Result<Self, FrameError> {
        let word = |at: usize| [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
        let magic = word(0);
        if magic != MAGIC {
            return Err(FrameError::BadMagic(magic));
        }
        let kind_raw = u16::from_le_bytes([bytes[4], bytes[5]]);
        let flags = u16::from_le_bytes([bytes[6], bytes[7]]);
        let len = u32::from_le_bytes(word(8));
        let reserved = u32::from_le_bytes(word(12));
        let mut id = [0u8; 8];
        id.copy_from_slice(&bytes[16..24]);
        let kind = FrameKind::from_wire(kind_raw).ok_or(FrameError::UnknownKind(kind_raw))?;
        if flags & !KNOWN_FLAGS != 0 || reserved != 0 {
            return Err(FrameError::Reserved { flags, reserved });
        }
        if flags != 0 {
            let may_carry = matches!(kind, FrameKind::Call | FrameKind::Reply);
            let shared_ok = flags & FLAG_SHARED_PAYLOAD == 0 || (flags & FLAG_FD != 0 && len == 0);
            if !may_carry || !shared_ok {
                return Err(FrameError::Flags { kind, flags });
            }
        }
        if len as usize > INLINE_CAP {
            return Err(FrameError::TooLarge {
                len: len.into(),
                cap: INLINE_CAP,
            });
        }
        Ok(Self {
            kind,
            flags,
            len,
            call_id: u64::from_le_bytes(id),
        })
    }

    /// Whether a file descriptor travels with this frame.
    pub fn carries_fd(&self) -> bool {
        self.flags & FLAG_FD != 0
    }

    /// Whether the payload is the content of the frame's shared buffer.
    pub fn shared_payload(&self) -> bool {
        self.flags & FLAG_SHARED_PAYLOAD != 0
    }

    /// Payload plus padding: how many bytes follow the header on the wire.
    pub fn padded_len(&self) -> usize {
        padded(self.len as usize)
    }
}

pub(crate) fn padded(len: usize) -> usize {
    len.div_ceil(PAYLOAD_ALIGN) * PAYLOAD_ALIGN
}
