//! Bytes ⇄ frames. The decoder first checks that a whole frame is buffered ("not enough bytes
//! yet" is `Ok(None)`), then copies the payload into an aligned buffer; [`Frame::access`]
//! validates the rkyv archive before any field of it can be read.
//!
//! The codec knows bytes only. A frame whose header says a descriptor travels with it
//! (`FLAG_FD`) gets its shared buffer from [`crate::reader::FrameReader`], which reads the
//! descriptors from the socket alongside the bytes; and an [`OutFrame`] with an
//! [`Attachment`] can only be written by [`crate::transport::spawn_writer`].

use std::io;
use std::os::fd::OwnedFd;

use bytes::{Buf, BufMut, BytesMut};
use rkyv::api::high::{HighSerializer, HighValidator};
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::ser::allocator::ArenaHandle;
use rkyv::util::AlignedVec;
use thiserror::Error;
use tokio_util::codec::{Decoder, Encoder};

use crate::frame::{
    FLAG_FD, FLAG_SHARED_PAYLOAD, FrameError, FrameHeader, FrameKind, HEADER_LEN, padded,
};
use crate::pool::PooledBytes;
use crate::shm::{SHM_THRESHOLD, SealedBuffer, SharedBuffer};

/// A frame received from a peer: a checked header and an aligned, not yet validated payload.
#[derive(Debug)]
pub struct Frame {
    pub header: FrameHeader,
    pub payload: Payload,
    /// The shared buffer that came with the frame (`FLAG_FD` without `FLAG_SHARED_PAYLOAD`):
    /// verified sealed, mapped read-only, its descriptor already closed. Set by
    /// [`crate::reader::FrameReader`]; a receiver that does not expect one must refuse it.
    pub buffer: Option<SharedBuffer>,
}

/// A frame's payload bytes: copied out of the socket, or in place in a shared buffer.
#[derive(Debug)]
pub enum Payload {
    Inline(PooledBytes),
    Shared(SharedBuffer),
}

impl Payload {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Payload::Inline(bytes) => bytes.as_slice(),
            Payload::Shared(buffer) => buffer.as_slice(),
        }
    }
}

impl std::ops::Deref for Payload {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Frame {
    pub fn kind(&self) -> FrameKind {
        self.header.kind
    }

    pub fn call_id(&self) -> u64 {
        self.header.call_id
    }

    /// Takes the shared buffer that came with the frame, if any.
    pub fn take_buffer(&mut self) -> Option<SharedBuffer> {
        self.buffer.take()
    }

    /// Validates the payload as an archived `T` and returns a view of it in place.
    pub fn access<T>(&self) -> Result<&T, FrameError>
    where
        T: rkyv::Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
    {
        if self.header.shared_payload() && matches!(self.payload, Payload::Inline(_)) {
            return Err(FrameError::InvalidPayload {
                what: short_type_name::<T>(),
                reason: "the payload is in a shared buffer that did not arrive".into(),
            });
        }
        rkyv::access::<T, rancor::Error>(self.payload.as_slice()).map_err(|e| {
            FrameError::InvalidPayload {
                what: short_type_name::<T>(),
                reason: e.to_string(),
            }
        })
    }

    /// Validates and deserializes the payload into an owned `T`.
    pub fn decode<T>(&self) -> Result<T, FrameError>
    where
        T: rkyv::Archive,
        T::Archived: for<'a> CheckBytes<HighValidator<'a, rancor::Error>>
            + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rancor::Error>>,
    {
        let archived = self.access::<T::Archived>()?;
        rkyv::deserialize::<T, rancor::Error>(archived).map_err(|e| FrameError::InvalidPayload {
            what: short_type_name::<T>(),
            reason: e.to_string(),
        })
    }
}

pub(crate) fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// A frame ready to be written: header fields plus an archived payload, and perhaps a shared
/// buffer to send with it.
#[derive(Debug)]
pub struct OutFrame {
    pub kind: FrameKind,
    pub call_id: u64,
    pub payload: AlignedVec,
    /// A descriptor sent with the frame (`FLAG_FD`); closed on this side once it is sent.
    pub attachment: Option<Attachment>,
}

/// A sealed buffer's descriptor travelling with a frame.
#[derive(Debug)]
pub struct Attachment {
    pub fd: OwnedFd,
    /// The buffer is the frame's payload (`FLAG_SHARED_PAYLOAD`), rather than bytes the
    /// payload names.
    pub is_payload: bool,
}

impl OutFrame {
    /// Archives `value` as the payload of a frame.
    pub fn message<T>(kind: FrameKind, call_id: u64, value: &T) -> Result<Self, EncodeError>
    where
        T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
    {
        let payload =
            rkyv::to_bytes::<rancor::Error>(value).map_err(|e| EncodeError(e.to_string()))?;
        Self::inline(kind, call_id, payload)
    }

    /// Like [`Self::message`], archiving into a buffer of `capacity` bytes from the start: for
    /// a payload whose size is known ahead (a log batch), it is written once instead of
    /// copied as the buffer grows.
    pub fn message_sized<T>(
        kind: FrameKind,
        call_id: u64,
        value: &T,
        capacity: usize,
    ) -> Result<Self, EncodeError>
    where
        T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
    {
        let payload = rkyv::api::high::to_bytes_in::<_, rancor::Error>(
            value,
            crate::pool::take_empty(capacity),
        )
        .map_err(|e| EncodeError(e.to_string()))?;
        Self::inline(kind, call_id, payload)
    }

    /// Archives `value` for a connection that negotiated `protocol`: a payload above
    /// [`SHM_THRESHOLD`] travels in a sealed shared buffer from protocol
    /// [`crate::handshake::SHM_SINCE`] on (and up to the inline cap through the socket before).
    pub fn message_for<T>(
        protocol: u32,
        kind: FrameKind,
        call_id: u64,
        value: &T,
    ) -> Result<Self, EncodeError>
    where
        T: for<'a> rkyv::Serialize<HighSerializer<AlignedVec, ArenaHandle<'a>, rancor::Error>>,
    {
        let payload =
            rkyv::to_bytes::<rancor::Error>(value).map_err(|e| EncodeError(e.to_string()))?;
        if payload.len() <= SHM_THRESHOLD || protocol < crate::handshake::SHM_SINCE {
            return Self::inline(kind, call_id, payload);
        }
        if payload.len() > crate::shm::SHARED_PAYLOAD_CAP {
            return Err(EncodeError(format!(
                "payload of {} bytes exceeds the shared payload cap of {} bytes",
                payload.len(),
                crate::shm::SHARED_PAYLOAD_CAP
            )));
        }
        let buffer = SealedBuffer::from_bytes("hm-payload", &payload)
            .map_err(|e| EncodeError(e.to_string()))?;
        let fd = buffer.share().map_err(|e| EncodeError(e.to_string()))?;
        Ok(Self {
            kind,
            call_id,
            payload: AlignedVec::new(),
            attachment: Some(Attachment {
                fd,
                is_payload: true,
            }),
        })
    }

    fn inline(kind: FrameKind, call_id: u64, payload: AlignedVec) -> Result<Self, EncodeError> {
        if payload.len() > crate::INLINE_CAP {
            return Err(EncodeError(format!(
                "payload of {} bytes exceeds the inline cap of {} bytes",
                payload.len(),
                crate::INLINE_CAP
            )));
        }
        Ok(Self {
            kind,
            call_id,
            payload,
            attachment: None,
        })
    }

    /// Sends `fd`, a sealed buffer's descriptor that the payload names, with this frame.
    pub fn with_buffer(mut self, fd: OwnedFd) -> Self {
        self.attachment = Some(Attachment {
            fd,
            is_payload: false,
        });
        self
    }

    /// A frame whose meaning is all in its header (Ping, Pong, Cancel, Shutdown).
    pub fn empty(kind: FrameKind, call_id: u64) -> Self {
        Self {
            kind,
            call_id,
            payload: AlignedVec::new(),
            attachment: None,
        }
    }

    /// The header flags this frame is written with.
    pub fn flags(&self) -> u16 {
        match &self.attachment {
            None => 0,
            Some(Attachment {
                is_payload: false, ..
            }) => FLAG_FD,
            Some(Attachment {
                is_payload: true, ..
            }) => FLAG_FD | FLAG_SHARED_PAYLOAD,
        }
    }

    /// The frame's exact bytes on the wire.
    pub fn to_wire(&self) -> Vec<u8> {
        let mut buf = BytesMut::new();
        write_frame(self, &mut buf);
        buf.to_vec()
    }
}

#[derive(Debug, Error)]
#[error("failed to encode frame payload: {0}")]
pub struct EncodeError(String);

/// Everything that can end a connection while reading or writing frames.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum WireError {
    #[error("socket error: {0}")]
    Io(#[from] io::Error),
    #[error("protocol violation: {0}")]
    Protocol(#[from] FrameError),
}

/// The tokio-util codec for hm frames, used by both kernel and plugins.
#[derive(Debug, Default)]
pub struct FrameCodec {
    /// The header of a frame whose payload is not fully buffered yet.
    pending: Option<FrameHeader>,
}

impl FrameCodec {
    /// The header of the frame being assembled, taken out: its payload is then the caller's
    /// to read ([`crate::reader::FrameReader`] reads a large one straight into its buffer).
    pub(crate) fn take_pending(&mut self) -> Option<FrameHeader> {
        self.pending.take()
    }

    /// The header of the frame being assembled, if its header has been read.
    pub(crate) fn pending(&self) -> Option<&FrameHeader> {
        self.pending.as_ref()
    }

    /// Whether a frame's header has been read but not yet its whole payload: a connection that
    /// ends now ends in the middle of a frame.
    pub fn is_mid_frame(&self) -> bool {
        self.pending.is_some()
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = WireError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        let header = match self.pending {
            Some(header) => header,
            None => {
                let Some(raw) = src.get(..HEADER_LEN) else {
                    return Ok(None);
                };
                let mut bytes = [0u8; HEADER_LEN];
                bytes.copy_from_slice(raw);
                let header = FrameHeader::decode(&bytes)?;
                src.advance(HEADER_LEN);
                self.pending = Some(header);
                header
            }
        };
        let wire_len = header.padded_len();
        if src.len() < wire_len {
            src.reserve(wire_len - src.len());
            return Ok(None);
        }
        self.pending = None;
        let len = header.len as usize;
        if src[len..wire_len].iter().any(|&b| b != 0) {
            return Err(FrameError::Padding.into());
        }
        let mut payload = crate::pool::take_empty(len);
        payload.extend_from_slice(&src[..len]);
        src.advance(wire_len);
        Ok(Some(Frame {
            header,
            payload: Payload::Inline(PooledBytes::new(payload)),
            buffer: None,
        }))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, WireError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() && self.pending.is_none() => Ok(None),
            None => {
                let buffered = src.len() + self.pending.map_or(0, |_| HEADER_LEN);
                Err(FrameError::Truncated { buffered }.into())
            }
        }
    }
}

impl Encoder<OutFrame> for FrameCodec {
    type Error = WireError;

    fn encode(&mut self, frame: OutFrame, dst: &mut BytesMut) -> Result<(), WireError> {
        if frame.attachment.is_some() {
            // Bytes alone cannot carry a descriptor; only the writer task can send this frame.
            return Err(WireError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a frame with a shared buffer needs hm_ipc::transport::spawn_writer",
            )));
        }
        write_frame(&frame, dst);
        Ok(())
    }
}

/// Appends the frame's header and padded payload to `dst` (its descriptor, if any, is the
/// caller's to send).
pub(crate) fn write_frame(frame: &OutFrame, dst: &mut BytesMut) {
    let (header, padding) = frame_head(frame);
    dst.reserve(HEADER_LEN + frame.payload.len() + padding);
    dst.put_slice(&header);
    dst.put_slice(&frame.payload);
    dst.put_bytes(0, padding);
}

/// The frame's encoded header, and how many zero bytes pad its payload: on the wire the frame
/// is the header, the payload, then the padding.
pub(crate) fn frame_head(frame: &OutFrame) -> ([u8; HEADER_LEN], usize) {
    let len = frame.payload.len();
    let header = FrameHeader {
        kind: frame.kind,
        flags: frame.flags(),
        // `OutFrame::message` caps payloads at INLINE_CAP, far below u32::MAX.
        len: len as u32,
        call_id: frame.call_id,
    };
    (header.encode(), padded(len) - len)
}

/// Decodes every whole frame in `bytes`, for tests and fuzzing: stops at the first error.
pub fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, WireError> {
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    while let Some(frame) = codec.decode_eof(&mut buf)? {
        frames.push(frame);
    }
    Ok(frames)
}
