//! `hm-ipc`: the wire protocol between the hm kernel and its plugins (DESIGN §6).
//!
//! Layers, one file each: [`frame`] (the fixed header and its checks), [`messages`] (the rkyv
//! payload types, no I/O), [`codec`] (bytes ⇄ frames, validation before any field is read),
//! [`handshake`] (version negotiation), [`transport`] (the inherited socket pair).
//! This crate depends on no other workspace crate and is the only one whose types derive rkyv.

pub mod codec;
pub mod frame;
pub mod handshake;
pub mod messages;
pub mod transport;

pub use codec::{Frame, FrameCodec, OutFrame};
pub use frame::{FrameError, FrameHeader, FrameKind, HEADER_LEN, INLINE_CAP};
pub use handshake::{PROTOCOL_MAX, PROTOCOL_MIN, negotiate};
