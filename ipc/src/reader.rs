//! Frames from a Unix stream socket, with the descriptors that travel next to them.
//!
//! [`FrameReader`] reads with `recvmsg` (never `read`, which would silently drop descriptors),
//! hands the bytes to the [`FrameCodec`] and keeps the descriptors that arrived in a queue,
//! each with the range of stream bytes it arrived with. A large frame (a full log batch) is the
//! exception to going through the codec's buffer: once its header is in, the rest of its payload
//! is read straight into a buffer of its own from [`crate::pool`], never past the frame's end,
//! with the same checks (padding, descriptors, the end of the stream inside it). A frame whose header carries `FLAG_FD`
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
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use futures_util::Stream;
use tokio_util::codec::Decoder;

use rkyv::util::AlignedVec;

use crate::codec::{Frame, FrameCodec, Payload, WireError};
use crate::frame::{FrameError, FrameHeader, HEADER_LEN};
use crate::pool::PooledBytes;
use crate::shm::{ReceiveError, SHARED_PAYLOAD_CAP, SharedBuffer};
use crate::socket::ReadHalf;

/// Descriptors that may wait for their frames at once. A conforming peer has at most two in
/// flight here: the one of the frame being assembled and the one of the next frame, whose
/// first byte came with the same read.
pub const MAX_QUEUED_FDS: usize = 4;
/// How much room each read has at least.
const READ_CHUNK: usize = 256 * 1024;
/// A frame with at least this much of its payload still to come is read straight into a
/// buffer of its own (from [`crate::pool`]) rather than into the shared read buffer and then
/// copied out: a full log batch is 256 KiB.
const DIRECT_READ_BYTES: usize = 32 * 1024;

/// A large frame whose payload (and padding) is being read straight into its own buffer.
#[derive(Debug)]
struct Filling {
    header: FrameHeader,
    /// `header.padded_len()`: the payload and its padding.
    wire_len: usize,
    /// Room for `wire_len` bytes, of which the first `filled` have arrived. Its length is how
    /// far it is initialised: grown a read at a time, so a peer that announces a large frame
    /// and sends little of it costs little memory.
    buf: AlignedVec,
    filled: usize,
}

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
    half: ReadHalf,
    buf: BytesMut,
    codec: FrameCodec,
    filling: Option<Filling>,
    /// The last frame was a large one: the next read takes only a header.
    header_first: bool,
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
    pub fn new(half: ReadHalf) -> Self {
        Self {
            half,
            buf: BytesMut::with_capacity(READ_CHUNK),
            codec: FrameCodec::default(),
            filling: None,
            header_first: false,
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
        !self.buf.is_empty() || self.codec.is_mid_frame() || self.filling.is_some()
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
        self.claim_fd(frame).map(Some)
    }

    /// Gives a whole frame the descriptor its header says it carries, or finds a descriptor
    /// that came with an earlier frame and was not claimed.
    fn claim_fd(&mut self, frame: Frame) -> Result<Frame, WireError> {
        let start = self.frame_start;
        if !frame.header.carries_fd() {
            if self.fds.front().is_some_and(|fd| fd.to <= start) {
                return Err(FrameError::FdUnclaimed.into());
            }
            return Ok(frame);
        }
        let fd = match self.fds.pop_front() {
            Some(fd) if fd.from <= start && start < fd.to => fd.fd,
            _ => return Err(FrameError::FdMissing.into()),
        };
        attach(frame, fd)
    }

    /// After [`Self::decode_buffered`] found no whole frame: when the frame being assembled
    /// has much of its payload still to come, its buffered bytes move into a buffer of its own
    /// and the rest is read straight into it ([`Self::receive_direct`]).
    fn start_filling(&mut self) {
        let Some(header) = self.codec.pending() else {
            return;
        };
        let wire_len = header.padded_len();
        // Not a whole frame buffered, so every buffered byte is this frame's.
        if wire_len.saturating_sub(self.buf.len()) < DIRECT_READ_BYTES {
            return;
        }
        let Some(header) = self.codec.take_pending() else {
            return;
        };
        let mut buf = crate::pool::take_initialised(wire_len);
        let filled = self.buf.len();
        if buf.len() < filled {
            buf.resize(filled, 0);
        }
        buf[..filled].copy_from_slice(&self.buf);
        self.buf.clear();
        self.filling = Some(Filling {
            header,
            wire_len,
            buf,
            filled,
        });
    }

    /// One `recvmsg` straight into the filling frame's buffer, never past its end; the frame
    /// once it is whole. `Ok(None)` when nothing was waiting or the frame is not whole yet.
    fn receive_direct(&mut self) -> Result<Option<Frame>, WireError> {
        let Some(filling) = self.filling.as_mut() else {
            return Ok(None);
        };
        let raw = self.half.as_raw_fd();
        let until = (filling.filled + READ_CHUNK).min(filling.wire_len);
        if filling.buf.len() < until {
            filling.buf.resize(until, 0);
        }
        let room = &mut filling.buf[filling.filled..until];
        let Some(got) = receive_ready(&self.half, || crate::shm::recv_into_with_fds(raw, room))?
        else {
            return Ok(None);
        };
        if got.bytes == 0 {
            let buffered = HEADER_LEN + filling.filled;
            return Err(FrameError::Truncated { buffered }.into());
        }
        filling.filled += got.bytes;
        self.take_fds(got)?;
        let whole = self
            .filling
            .as_ref()
            .is_some_and(|filling| filling.filled == filling.wire_len);
        if !whole {
            return Ok(None);
        }
        let Some(Filling {
            header,
            wire_len,
            mut buf,
            ..
        }) = self.filling.take()
        else {
            return Ok(None);
        };
        let len = header.len as usize;
        if buf[len..wire_len].iter().any(|&b| b != 0) {
            return Err(FrameError::Padding.into());
        }
        buf.resize(len, 0);
        let frame = Frame {
            header,
            payload: Payload::Inline(PooledBytes::new(buf)),
            buffer: None,
        };
        self.claim_fd(frame).map(Some)
    }

    /// One `recvmsg` into the buffer: `Ok(Some(0))` at the end of the stream, `Ok(None)` when
    /// nothing was waiting after all.
    fn receive(&mut self) -> Result<Option<usize>, WireError> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        let raw = self.half.as_raw_fd();
        // After a large frame the next one is likely large too: its header alone first, so
        // that its payload is read straight into a buffer of its own ([`Self::start_filling`])
        // instead of mostly into this one and then copied.
        let limit = if self.header_first && self.buf.is_empty() && !self.codec.is_mid_frame() {
            HEADER_LEN
        } else {
            usize::MAX
        };
        let buf = &mut self.buf;
        let Some(got) = receive_ready(&self.half, || crate::shm::recv_with_fds(raw, buf, limit))?
        else {
            return Ok(None);
        };
        let bytes = got.bytes;
        self.take_fds(got)?;
        Ok(Some(bytes))
    }

    /// Counts the bytes of a read and queues the descriptors that came with them.
    fn take_fds(&mut self, got: crate::shm::Received) -> Result<(), WireError> {
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
        Ok(())
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

/// One receive through tokio's readiness of `half`: `Ok(None)` when nothing was waiting after
/// all. A receive that drained the socket ([`crate::shm::Received::drained`]) also clears the
/// readiness, so the next poll waits for the peer's next write instead of making one more
/// `recvmsg` only to hear `EAGAIN`: one system call less per frame on a connection of
/// requests and replies. (`try_io` clears readiness when its closure says `WouldBlock`, and
/// only if no new readiness came in the meantime; the bytes are kept aside, not lost.)
fn receive_ready(
    half: &ReadHalf,
    receive: impl FnOnce() -> io::Result<crate::shm::Received>,
) -> Result<Option<crate::shm::Received>, WireError> {
    let mut drained = None;
    let result = half.try_io(|| {
        let got = receive()?;
        if got.drained {
            drained = Some(got);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(got)
    });
    match (result, drained) {
        (_, Some(got)) | (Ok(got), None) => Ok(Some(got)),
        (Err(e), None)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(None)
        }
        (Err(e), None) => Err(e.into()),
    }
}

impl Stream for FrameReader {
    type Item = Result<Frame, WireError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            if this.filling.is_none() {
                match this.decode_buffered(false) {
                    Ok(Some(frame)) => {
                        this.header_first = frame.header.padded_len() >= DIRECT_READ_BYTES;
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    Ok(None) => this.start_filling(),
                    Err(e) => {
                        this.done = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
            }
            if let Err(e) = ready!(this.half.poll_read_ready(cx)) {
                this.done = true;
                return Poll::Ready(Some(Err(e.into())));
            }
            if this.filling.is_some() {
                match this.receive_direct() {
                    Ok(Some(frame)) => {
                        this.header_first = true;
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    Ok(None) => continue,
                    Err(e) => {
                        this.done = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                }
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

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::Duration;

    use futures_util::StreamExt;

    use super::*;
    use crate::OutFrame;
    use crate::messages::{LogBatch, LogChunk};

    #[tokio::test]
    async fn a_large_frame_that_is_announced_but_not_sent_takes_little_memory() {
        let (a, b) = std::os::unix::net::UnixStream::pair().expect("socket pair");
        let (read_half, _) = crate::socket::split_std(a).expect("split");
        let mut reader = FrameReader::new(read_half);
        let chunks = vec![LogChunk {
            stream: 0,
            text: "x".repeat(8 << 20),
        }];
        let wire = OutFrame::message(crate::FrameKind::LogBatch, 1, &LogBatch { chunks })
            .expect("encode")
            .to_wire();
        // The header and 1 MiB of an 8 MiB frame, then nothing until told.
        let sent = HEADER_LEN + (1 << 20);
        let (go_on, told) = std::sync::mpsc::channel::<()>();
        let bytes = wire.clone();
        let writer = std::thread::spawn(move || {
            (&b).write_all(&bytes[..sent]).expect("write");
            if told.recv().is_ok() {
                (&b).write_all(&bytes[sent..]).expect("write");
            }
        });
        for _ in 0..200 {
            let early = tokio::time::timeout(Duration::from_millis(10), reader.next()).await;
            assert!(early.is_err(), "no frame before its bytes are all there");
            if reader
                .filling
                .as_ref()
                .is_some_and(|f| f.filled == sent - HEADER_LEN)
            {
                break;
            }
        }
        let filling = reader
            .filling
            .as_ref()
            .expect("the frame is read into its own buffer");
        assert_eq!(filling.filled, sent - HEADER_LEN);
        assert!(
            filling.buf.len() <= filling.filled + READ_CHUNK,
            "{} bytes initialised for {} received",
            filling.buf.len(),
            filling.filled
        );
        // The rest, and the frame is whole.
        go_on.send(()).expect("writer waits");
        let frame = reader.next().await.expect("frame").expect("whole");
        writer.join().expect("writer");
        let len = frame.header.len as usize;
        assert_eq!(
            frame.payload.as_slice(),
            &wire[HEADER_LEN..HEADER_LEN + len]
        );
    }
}
