//! Shared-memory archive buffers (`docs/protocol.md`) and the descriptors that carry them across
//! the socket. **Every `unsafe` of this machinery is in this file**, each with its reason.
//!
//! The writer's side: a [`BufferWriter`] is a memfd (`MFD_ALLOW_SEALING | MFD_CLOEXEC`) filled
//! through `io::Write`; [`BufferWriter::seal`] adds [`REQUIRED_SEALS`] (no write, grow, shrink,
//! or further sealing) and turns it into a [`SealedBuffer`], which hands out one duplicate of
//! its descriptor per frame ([`SealedBuffer::share`]).
//!
//! The receiver's side: [`SharedBuffer::receive`] takes a descriptor that arrived with a frame,
//! refuses it unless it is a memory file with every one of [`REQUIRED_SEALS`], maps it
//! read-only, and closes the descriptor at once: the mapping alone keeps the memory alive, and
//! dropping the [`SharedBuffer`] unmaps it. Readers then use the bytes in place (`&[u8]`, or a
//! validated rkyv archive with [`SharedBuffer::access`]): zero copies after the writer's own.
//!
//! The seals are what make reading in place sound: a mapping of a file its owner can still
//! write may change under a validated archive, and one it can still shrink turns reads into
//! SIGBUS. With `F_SEAL_WRITE | F_SEAL_SHRINK` no process can do either, for as long as the
//! file exists, and seals can never be removed.
//!
//! Descriptors cross the socket with `SCM_RIGHTS` ([`send_with_fd`], [`recv_with_fds`]); the
//! framing rules (which frame owns which descriptor) are in [`crate::reader`] and
//! [`crate::transport`].

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use bytes::BytesMut;
use memmap2::{Mmap, MmapOptions};
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use rkyv::api::high::HighValidator;
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use thiserror::Error;

use crate::frame::FrameError;

/// Payloads larger than this take the shared-memory path instead of the socket, where the
/// protocol allows it (see [`crate::OutFrame::message_for`]).
pub const SHM_THRESHOLD: usize = 64 * 1024;

/// The largest rkyv payload a peer may send in a shared buffer. Above it the frame is a
/// protocol violation. (rkyv's 32-bit relative pointers could not address much more anyway.)
pub const SHARED_PAYLOAD_CAP: usize = 1024 * 1024 * 1024;

/// The seals every buffer carries before it is sent, and that a receiver requires.
pub const REQUIRED_SEALS: SealFlag = SealFlag::F_SEAL_SEAL
    .union(SealFlag::F_SEAL_SHRINK)
    .union(SealFlag::F_SEAL_GROW)
    .union(SealFlag::F_SEAL_WRITE);

/// The most descriptors one `recvmsg` accepts. The protocol sends one per frame; a peer that
/// sends more in one message overflows this and breaks the protocol.
pub const MAX_FDS_PER_READ: usize = 4;

/// What went wrong making or sending a buffer on this side.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ShmError {
    #[error("failed to create a shared buffer: {0}")]
    Create(#[source] io::Error),
    #[error("failed to fill a shared buffer: {0}")]
    Fill(#[source] io::Error),
    #[error("failed to seal a shared buffer: {0}")]
    Seal(#[source] io::Error),
    #[error("failed to duplicate a shared buffer's descriptor: {0}")]
    Share(#[source] io::Error),
    #[error("failed to map a shared buffer: {0}")]
    Map(#[source] io::Error),
}

/// Why a descriptor from a peer was not taken as a buffer.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReceiveError {
    /// The peer broke the protocol: not a sealed memory file, or too large.
    #[error(transparent)]
    Refused(FrameError),
    /// This side could not map an acceptable buffer (out of address space, for one).
    #[error("failed to map a shared buffer: {0}")]
    Io(#[source] io::Error),
}

/// A memfd being filled. Nothing else holds it until it is sealed.
pub struct BufferWriter {
    file: BufWriter<File>,
    len: u64,
}

impl BufferWriter {
    /// A new, empty memfd named `name` (shown as `/memfd:NAME` in `/proc/<pid>/fd`).
    pub fn new(name: &str) -> Result<Self, ShmError> {
        let fd = memfd_create(name, MFdFlags::MFD_ALLOW_SEALING | MFdFlags::MFD_CLOEXEC)
            .map_err(|e| ShmError::Create(e.into()))?;
        // Large writes (tar's file copies) go straight through; small ones (headers) are
        // gathered, so filling costs few system calls.
        let file = BufWriter::with_capacity(1 << 20, File::from(fd));
        Ok(Self { file, len: 0 })
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Seals the buffer ([`REQUIRED_SEALS`]): from now on nobody can change its bytes or size.
    pub fn seal(self) -> Result<SealedBuffer, ShmError> {
        let file = self
            .file
            .into_inner()
            .map_err(|e| ShmError::Fill(e.into_error()))?;
        let fd = OwnedFd::from(file);
        // F_SEAL_WRITE is refused while a writable shared mapping exists; this buffer was only
        // ever written with write(2), so there is none.
        fcntl(&fd, FcntlArg::F_ADD_SEALS(REQUIRED_SEALS)).map_err(|e| ShmError::Seal(e.into()))?;
        let len = usize::try_from(self.len)
            .map_err(|_| ShmError::Fill(io::Error::other("buffer larger than memory")))?;
        Ok(SealedBuffer { fd, len })
    }
}

impl Write for BufferWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.len += n as u64;
        Ok(n)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)?;
        self.len += buf.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A sealed memfd owned by the side that wrote it. Each frame that carries it gets its own
/// duplicate of the descriptor ([`Self::share`]), closed once sent; the buffer's memory is freed
/// when this and every mapping and descriptor of it, in any process, are gone.
pub struct SealedBuffer {
    fd: OwnedFd,
    len: usize,
}

impl SealedBuffer {
    /// A sealed buffer holding a copy of `bytes`.
    pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<Self, ShmError> {
        let mut writer = BufferWriter::new(name)?;
        writer.write_all(bytes).map_err(ShmError::Fill)?;
        writer.seal()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A duplicate of the descriptor (close-on-exec), to send with one frame.
    pub fn share(&self) -> Result<OwnedFd, ShmError> {
        self.fd.try_clone().map_err(ShmError::Share)
    }

    /// A read-only view of the buffer in this process, for the writer's own use (a test that
    /// checks what a plugin received, say).
    pub fn map(&self) -> Result<SharedBuffer, ShmError> {
        map_sealed(self.fd.as_fd(), self.len).map_err(ShmError::Map)
    }
}

impl std::fmt::Debug for SealedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedBuffer")
            .field("fd", &self.fd.as_raw_fd())
            .field("len", &self.len)
            .finish()
    }
}

/// A read-only mapping of a sealed buffer, received from a peer (or mapped by its writer). Its
/// descriptor is already closed; dropping this unmaps it.
pub struct SharedBuffer {
    map: Mmap,
}

impl SharedBuffer {
    /// Takes a descriptor from a peer: checks that it is a memory file carrying every seal of
    /// [`REQUIRED_SEALS`] and at most `cap` bytes long, maps it read-only, and closes it.
    pub fn receive(fd: OwnedFd, cap: usize) -> Result<Self, ReceiveError> {
        let refused = |reason: String| ReceiveError::Refused(FrameError::BadBuffer { reason });
        let stat = nix::sys::stat::fstat(&fd)
            .map_err(|e| refused(format!("cannot stat the descriptor: {e}")))?;
        if stat.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Err(refused("the descriptor is not a memory file".into()));
        }
        // Only memory files (memfd, shmem) support seals; anything else fails here.
        let seals = fcntl(&fd, FcntlArg::F_GET_SEALS).map_err(|e| {
            refused(format!(
                "the descriptor is not a sealable memory file ({e})"
            ))
        })?;
        let seals = SealFlag::from_bits_retain(seals);
        if !seals.contains(REQUIRED_SEALS) {
            return Err(refused(format!(
                "the buffer is not sealed (has {seals:?}, needs {REQUIRED_SEALS:?})"
            )));
        }
        let len = usize::try_from(stat.st_size)
            .map_err(|_| refused(format!("impossible size {}", stat.st_size)))?;
        if len > cap {
            return Err(refused(format!(
                "the buffer holds {len} bytes, more than the {cap} allowed"
            )));
        }
        let buffer = map_sealed(fd.as_fd(), len).map_err(ReceiveError::Io)?;
        // The mapping keeps the memory alive; the descriptor is of no further use and must not
        // linger in this process.
        drop(fd);
        Ok(buffer)
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.map
    }

    /// Validates the buffer as an archived `T` and returns a view of it in place.
    pub fn access<T>(&self) -> Result<&T, FrameError>
    where
        T: rkyv::Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
    {
        // A mapping starts on a page boundary, more than any archive's alignment.
        rkyv::access::<T, rancor::Error>(self.as_slice()).map_err(|e| FrameError::InvalidPayload {
            what: crate::codec::short_type_name::<T>(),
            reason: e.to_string(),
        })
    }
}

impl std::ops::Deref for SharedBuffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl AsRef<[u8]> for SharedBuffer {
    fn as_ref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl std::fmt::Debug for SharedBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedBuffer")
            .field("len", &self.map.len())
            .finish()
    }
}

/// Maps `len` bytes of a sealed memory file read-only.
fn map_sealed(fd: BorrowedFd<'_>, len: usize) -> io::Result<SharedBuffer> {
    // SAFETY: the mapping is read-only and the file carries F_SEAL_WRITE, F_SEAL_SHRINK and
    // F_SEAL_GROW (checked by the caller, or added by `BufferWriter::seal` before a
    // `SealedBuffer` exists), which no process can ever remove: its bytes cannot change under
    // the `&[u8]` the mapping hands out, and it cannot shrink below `len`, so no read of the
    // mapping can fault with SIGBUS. `len` is the file's size at a moment after sealing.
    let map = unsafe { MmapOptions::new().len(len).map(fd.as_raw_fd()) }?;
    Ok(SharedBuffer { map })
}

/// Sends `bytes` on the connected stream socket `socket` with one descriptor attached
/// (`SCM_RIGHTS`), once; returns how many bytes went. The descriptor travels with the first of
/// them, whatever the count. Never raises SIGPIPE.
pub fn send_with_fd(socket: RawFd, bytes: &[u8], fd: BorrowedFd<'_>) -> io::Result<usize> {
    use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
    let fds = [fd.as_raw_fd()];
    let iov = [io::IoSlice::new(bytes)];
    sendmsg::<()>(
        socket,
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        None,
    )
    .map_err(io::Error::from)
}

/// What one [`recv_with_fds`] got.
#[derive(Debug, Default)]
pub struct Received {
    /// Bytes appended to the buffer; 0 is the end of the stream.
    pub bytes: usize,
    /// Descriptors that arrived with those bytes, in order, close-on-exec.
    pub fds: Vec<OwnedFd>,
    /// The peer sent more descriptors in one message than [`MAX_FDS_PER_READ`] (the kernel
    /// closed the rest), or ancillary data other than descriptors.
    pub refused_control: bool,
    /// The read emptied the socket's receive queue: it got fewer bytes than it had room for,
    /// and no descriptors. Linux's stream `recvmsg` stops short of the room given only when the
    /// queue runs out, or right after a message that carried descriptors (so a short read
    /// with descriptors says nothing), or between writers of different credentials, which a
    /// socket without `SO_PASSCRED` (hm's) does not tell apart. A caller may then wait for the
    /// peer's next write without first hearing `EAGAIN`, as tokio's own `poll_read` does after
    /// a short read.
    pub drained: bool,
}

/// Receives what is waiting on the non-blocking stream socket `socket` into the spare capacity
/// of `buf` (reserve first), at most `limit` bytes, with any descriptors that come with them.
/// `WouldBlock` when nothing is waiting.
pub fn recv_with_fds(socket: RawFd, buf: &mut BytesMut, limit: usize) -> io::Result<Received> {
    let spare = buf.spare_capacity_mut();
    let len = spare.len().min(limit);
    // SAFETY: `spare` is the writable (possibly uninitialised) spare capacity of `buf`, and
    // `len` at most its length.
    let received = unsafe { recv_raw(socket, spare.as_mut_ptr().cast(), len)? };
    // SAFETY: the kernel initialised the first `bytes` bytes of the spare capacity.
    unsafe { buf.set_len(buf.len() + received.bytes) };
    Ok(received)
}

/// Like [`recv_with_fds`], into `buf` itself: at most its length, from its start.
pub fn recv_into_with_fds(socket: RawFd, buf: &mut [u8]) -> io::Result<Received> {
    // SAFETY: `buf` is writable for its whole length.
    unsafe { recv_raw(socket, buf.as_mut_ptr(), buf.len()) }
}

/// `recvmsg` of at most `len` bytes into `to`, with descriptors.
///
/// # Safety
/// `to` must be valid for writes of `len` bytes.
unsafe fn recv_raw(socket: RawFd, to: *mut u8, len: usize) -> io::Result<Received> {
    const FD_SIZE: usize = std::mem::size_of::<RawFd>();
    // u64 elements keep the control buffer aligned for `cmsghdr`.
    // SAFETY: CMSG_SPACE is a pure size computation.
    let control_len = unsafe { libc::CMSG_SPACE((MAX_FDS_PER_READ * FD_SIZE) as u32) } as usize;
    let mut control = [0u64; 16];
    debug_assert!(control_len <= std::mem::size_of_val(&control));
    let mut iov = libc::iovec {
        iov_base: to.cast(),
        iov_len: len,
    };
    // SAFETY: msghdr is plain data for which all zeroes is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = control_len.min(std::mem::size_of_val(&control)) as _;
    // SAFETY: `iov` describes `len` writable bytes at `to` (possibly uninitialised memory that
    // the kernel only writes; the caller vouches for it), `msg_control` points to `control`, big enough for the
    // length given, and all of it outlives the call. MSG_CMSG_CLOEXEC makes every received
    // descriptor close-on-exec atomically, so none can leak into a process spawned meanwhile.
    let got = unsafe {
        libc::recvmsg(
            socket,
            &mut msg,
            libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT,
        )
    };
    if got < 0 {
        return Err(io::Error::last_os_error());
    }
    let bytes = got as usize;
    let mut received = Received {
        bytes,
        fds: Vec::new(),
        refused_control: msg.msg_flags & libc::MSG_CTRUNC != 0,
        drained: false,
    };
    // SAFETY: `msg` is the header recvmsg just filled; CMSG_FIRSTHDR/CMSG_NXTHDR only return
    // headers inside `msg_control[..msg_controllen]` (or null), and CMSG_DATA of such a header
    // points at its `cmsg_len - CMSG_LEN(0)` data bytes.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            let header = &*cmsg;
            let data_len = header.cmsg_len as usize - libc::CMSG_LEN(0) as usize;
            if header.cmsg_level == libc::SOL_SOCKET && header.cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                for i in 0..data_len / FD_SIZE {
                    let raw = std::ptr::read_unaligned(data.add(i * FD_SIZE).cast::<RawFd>());
                    // SAFETY (of from_raw_fd): SCM_RIGHTS just installed this descriptor in our
                    // table, and nothing else knows its number: we are its only owner.
                    received.fds.push(OwnedFd::from_raw_fd(raw));
                }
            } else {
                received.refused_control = true;
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    received.drained = bytes > 0
        && bytes < len
        && received.fds.is_empty()
        && msg.msg_controllen == 0
        && !received.refused_control;
    Ok(received)
}
