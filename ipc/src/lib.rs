//! `hm-ipc`: the wire protocol between the hm kernel and its plugins (`docs/protocol.md`).
//!
//! Layers, one file each: [`frame`] (the fixed header and its checks), [`messages`] (the rkyv
//! payload types, no I/O), [`codec`] (bytes ⇄ frames, validation before any field is read),
//! [`handshake`] (version negotiation), [`host`] (what a plugin may send the host, and when: one
//! policy for the kernel and the SDK's test harness), [`shm`] (sealed shared-memory buffers and
//! descriptor passing: all of their `unsafe`), [`socket`] (a connection's two halves, each
//! registered with tokio only for what it waits on), [`reader`] (frames and their descriptors
//! from a socket), [`transport`] (the inherited socket pair and the writer task), [`procfs`] (the
//! process facts both ends check: `/proc/<pid>/stat`).
//!
//! This crate depends on no other workspace crate and is the only one whose types derive rkyv.

pub mod artifacts;
pub mod codec;
pub mod frame;
pub mod handshake;
pub mod host;
pub mod messages;
pub mod pool;
pub mod procfs;
pub mod reader;
pub mod shm;
pub mod socket;
pub mod transport;

pub use codec::{Attachment, Frame, FrameCodec, OutFrame, Payload};
pub use frame::{
    FLAG_FD, FLAG_SHARED_PAYLOAD, FrameError, FrameHeader, FrameKind, HEADER_LEN, INLINE_CAP,
};
pub use handshake::{
    ARTIFACTS_SINCE, EXECUTE_SINCE, HOOKS_SINCE, PROTOCOL_MAX, PROTOCOL_MIN, SERVICES_SINCE,
    SHM_SINCE, SUBCOMMANDS_SINCE, negotiate,
};
pub use reader::FrameReader;
pub use shm::{BufferWriter, SHM_THRESHOLD, SealedBuffer, SharedBuffer};
