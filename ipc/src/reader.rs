//! Frames from a Unix stream socket, with the descriptors that travel next to them.
//!
//! [`FrameReader`] reads with `recvmsg` (never `read`, which would silently drop descriptors),
//! hands the bytes to the [`FrameCodec`] and keeps the descriptors that arrived in a queue,
//! each with the range of stream bytes it arrived with. A frame whose header carries `FLAG_FD`
//! takes the first descriptor of the queue; the descriptor is then checked and mapped
//! ([`SharedBuffer::receive`]) and closed before the frame is handed out.
//!
//! Which descriptor belongs to which frame: the writer sends each descriptor with the first
//! byte of the frame that carries it ([`crate::transport::spawn_writer`]), and Linux delivers a
//! descriptor with the read that returns that byte. So a frame that claims a descriptor must
//! start within the bytes of the read that brought it. Protocol violations:
//! - a frame with `FLAG_FD` and no descriptor that arrived with its first byte;
//! - a descriptor that no frame claims: every frame that began within its read has been
//!   decoded without taking it, or the stream ended;
//! - more descriptors in one message than [`crate::shm::MAX_FDS_PER_READ`], ancillary data other than
//!   descriptors, more than [`MAX_QUEUED_FDS`] waiting, or any descriptor before
//!   [`FrameReader::allow_fds`] (before the handshake, and on protocol versions before v3);
//! - a descriptor that is not a sealed memory file (see [`crate::shm`]).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use futures_util::Stream;
use tokio::io::Interest;
use tokio::net::unix::OwnedReadHalf;
use tokio_util::codec::Decoder;

use crate::codec::{Frame, FrameCodec, Payload, WireError};
use crate::frame::FrameError;
use crate::shm::{ReceiveError, SHARED_PAYLOAD_CAP, SharedBuffer};

/// Descriptors that may wait for their frames at once. A conforming peer has at most two in
/// flight here: the one of the frame being assembled and the one of the next frame, whose
/// first byte came with the same read.
pub const MAX_QUEUED_FDS: usize = 4;
/// How much room each read has at least.
const READ_CHUNK: usize = 256 * 1024;

/// A descriptor waiting for its frame, with the stream offsets of the bytes it arrived with.
#[derive(Debug)]
struct Pending {
    fd: OwnedFd,
    from: u64,
    to: u64,
}

/// The reading half of a connection: frames, validated header first, with their shared buffers.
/// A `Stream` of `Result<Frame, WireError>`; it ends at the end of the connection between
/// frames with no descriptor left over, whether the peer closed it or reset it.
#[derive(Debug)]
pub struct FrameReader {
    half: OwnedReadHalf,
    buf: BytesMut,
    codec: FrameCodec,
    fds: VecDeque<Pending>,
    /// Stream offset just past the last byte received.
    received: u64,
    /// Stream offset of the first byte of the frame the codec is assembling.
    frame_start: u64,
    fds_allowed: bool,
    /// The stream has ended, or failed: nothing more comes out.
    done: bool,
}

impl FrameReader {
    /// Reads frames from `half`. Descriptors are refused until [`Self::allow_fds`].
    pub fn new(half: OwnedReadHalf) -> Self {
        Self {
            half,
            buf: BytesMut::with_capacity(READ_CHUNK),
            codec: FrameCodec::default(),
            fds: VecDeque::new(),
            received: 0,
            frame_start: 0,
            fds_allowed: false,
            done: false,
        }
    }

    /// Accepts descriptors from now on (or refuses them again): call it once the handshake has
    /// settled on a protocol version that has shared buffers.
    pub fn allow_fds(&mut self, allowed: bool) {
        self.fds_allowed = allowed;
    }

    /// Whether bytes of an incomplete frame are buffered: a connection that ends now ends in
    /// the middle of a frame.
    pub fn is_mid_frame(&self) -> bool {
        !self.buf.is_empty() || self.codec.is_mid_frame()
    }

    /// Decodes the next whole frame already buffered, attaching its descriptor.
    fn decode_buffered(&mut self, eof: bool) -> Result<Option<Frame>, WireError> {
        if !self.codec.is_mid_frame() {
            self.frame_start = self.received - self.buf.len() as u64;
        }
        let decoded = if eof {
            self.codec.decode_eof(&mut self.buf)?
        } else {
            self.codec.decode(&mut self.buf)?
        };
        let Some(frame) = decoded else {
            // Every byte received so far belongs to whole frames that are decoded: a
            // descriptor still waiting came with one of them and was not claimed.
            if (self.buf.is_empty() && !self.codec.is_mid_frame() || eof) && !self.fds.is_empty() {
                return Err(FrameError::FdUnclaimed.into());
            }
            return Ok(None);
        };
        let start = self.frame_start;
        if !frame.header.carries_fd() {
            if self.fds.front().is_some_and(|fd| fd.to <= start) {
                return Err(FrameError::FdUnclaimed.into());
            }
            return Ok(Some(frame));
        }
        let fd = match self.fds.pop_front() {
            Some(fd) if fd.from <= start && start < fd.to => fd.fd,
            _ => return Err(FrameError::FdMissing.into()),
        };
        attach(frame, fd).map(Some)
    }

    /// One `recvmsg` into the buffer: `Ok(Some(0))` at the end of the stream, `Ok(None)` when
    /// nothing was waiting after all.
    fn receive(&mut self) -> Result<Option<usize>, WireError> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        let raw = self.half.as_ref().as_raw_fd();
        let buf = &mut self.buf;
        let got = match self
            .half
            .as_ref()
            .try_io(Interest::READABLE, || crate::shm::recv_with_fds(raw, buf))
        {
            Ok(got) => got,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let from = self.received;
        self.received += got.bytes as u64;
        if got.refused_control {
            return Err(FrameError::FdRefused {
                reason: "more descriptors in one message than allowed, or other ancillary data",
            }
            .into());
        }
        if !got.fds.is_empty() {
            if !self.fds_allowed {
                return Err(FrameError::FdRefused {
                    reason: "not on this connection's protocol version, or before the handshake",
                }
                .into());
            }
            let to = self.received;
            self.fds
                .extend(got.fds.into_iter().map(|fd| Pending { fd, from, to }));
            if self.fds.len() > MAX_QUEUED_FDS {
                return Err(FrameError::FdRefused {
                    reason: "too many descriptors waiting for their frames",
                }
                .into());
            }
        }
        Ok(Some(got.bytes))
    }
}

/// Turns the frame's descriptor into its shared buffer (or shared payload).
fn attach(mut frame: Frame, fd: OwnedFd) -> Result<Frame, WireError> {
    let cap = if frame.header.shared_payload() {
        SHARED_PAYLOAD_CAP
    } else {
        usize::MAX
    };
    let buffer = SharedBuffer::receive(fd, cap).map_err(|e| match e {
        ReceiveError::Refused(why) => WireError::Protocol(why),
        ReceiveError::Io(e) => WireError::Io(e),
    })?;
    if frame.header.shared_payload() {
        frame.payload = Payload::Shared(buffer);
    } else {
        frame.buffer = Some(buffer);
    }
    Ok(frame)
}

impl Stream for FrameReader {
    type Item = Result<Frame, WireError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match this.decode_buffered(false) {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) => {}
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            if let Err(e) = ready!(this.half.as_ref().poll_read_ready(cx)) {
                this.done = true;
                return Poll::Ready(Some(Err(e.into())));
            }
            match this.receive() {
                Ok(Some(0)) => {
                    // The end of the stream: whatever is buffered must be whole frames.
                    return Poll::Ready(match this.decode_buffered(true) {
                        Ok(Some(frame)) => Some(Ok(frame)),
                        Ok(None) => {
                            this.done = true;
                            None
                        }
                        Err(e) => {
                            this.done = true;
                            Some(Err(e))
                        }
                    });
                }
                Ok(_) => {}
                // A peer that closes its end with bytes of ours unread resets the connection:
                // between frames that is its end, as a clean close is. Which of the two the
                // reader sees depends only on timing, so telling them apart would make one
                // cause read two ways.
                Err(WireError::Io(e))
                    if e.kind() == io::ErrorKind::ConnectionReset
                        && !this.is_mid_frame()
                        && this.fds.is_empty() =>
                {
                    this.done = true;
                    return Poll::Ready(None);
                }
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }
}
