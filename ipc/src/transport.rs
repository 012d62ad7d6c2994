//! The socket between kernel and plugin: a connected pair whose plugin end is inherited
//! across exec, its fd number named by `HM_IPC_FD`, or in attach mode a named socket the
//! kernel listens on, its path named by `HM_IPC_SOCKET` (`docs/protocol.md`).

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;

use thiserror::Error;

/// The environment variable that names the inherited socket's fd in the plugin.
pub const IPC_FD_ENV: &str = "HM_IPC_FD";
/// The environment variable that names the socket an attached plugin connects to (`hm run
/// --attach NAME=SOCKET`): the plugin was started by hand, not by hm.
pub const IPC_SOCKET_ENV: &str = "HM_IPC_SOCKET";
/// The fd number the kernel places the plugin's end at.
pub const CHILD_FD: RawFd = 3;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TransportError {
    #[error(
        "neither {IPC_FD_ENV} nor {IPC_SOCKET_ENV} is set: this program is an hm plugin and is \
         started by hm (run `hm run` in a project that uses it, `hm run --attach NAME=SOCKET` \
         and start it with {IPC_SOCKET_ENV}=SOCKET to debug it, or `--hm-manifest` to see what \
         it provides)"
    )]
    NotSet,
    #[error(
        "cannot connect to {IPC_SOCKET_ENV}={path}: {source} (is `hm run --attach` waiting there?)"
    )]
    Attach {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{IPC_FD_ENV}={0:?} is not a file descriptor number")]
    BadValue(String),
    #[error("{IPC_FD_ENV}={fd} is not an open socket: {reason}")]
    NotASocket { fd: RawFd, reason: String },
    #[error("failed to set up the inherited socket: {0}")]
    Io(#[from] std::io::Error),
}

/// A connected pair: `(kernel end, plugin end)`. Both are close-on-exec; the spawner moves the
/// plugin end to [`CHILD_FD`] in the child, which clears the flag there only.
pub fn socket_pair() -> std::io::Result<(StdUnixStream, StdUnixStream)> {
    StdUnixStream::pair()
}

/// The plugin's connection to hm: the socket `HM_IPC_SOCKET` names (attach mode), else the
/// inherited one of `HM_IPC_FD`. Call it before starting threads (see [`inherited`]).
pub fn plugin_socket() -> Result<StdUnixStream, TransportError> {
    let Some(path) = std::env::var_os(IPC_SOCKET_ENV) else {
        return inherited();
    };
    let stream = StdUnixStream::connect(&path).map_err(|source| TransportError::Attach {
        path: path.to_string_lossy().into_owned(),
        source,
    })?;
    // SAFETY: the caller is still single-threaded (see `inherited`); the steps this plugin
    // starts must not find the variable and try to attach themselves.
    unsafe { std::env::remove_var(IPC_SOCKET_ENV) };
    stream.set_nonblocking(true)?;
    Ok(stream)
}

/// Takes ownership of the socket named by `HM_IPC_FD` in a plugin process.
///
/// Marks it close-on-exec so the processes the plugin spawns for steps never hold it. Call it
/// before starting threads (it edits the environment); turn the result into a tokio stream
/// inside the runtime with `tokio::net::UnixStream::from_std`.
pub fn inherited() -> Result<StdUnixStream, TransportError> {
    let value = std::env::var(IPC_FD_ENV).map_err(|_| TransportError::NotSet)?;
    let fd: RawFd = value
        .trim()
        .parse()
        .map_err(|_| TransportError::BadValue(value.clone()))?;
    if fd < 0 {
        return Err(TransportError::BadValue(value));
    }
    let stat = nix::sys::stat::fstat(
        // SAFETY: the fd is only borrowed for the duration of the fstat call.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
    )
    .map_err(|e| TransportError::NotASocket {
        fd,
        reason: e.to_string(),
    })?;
    if stat.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(TransportError::NotASocket {
            fd,
            reason: "not a socket".into(),
        });
    }
    // SAFETY: fstat proved the fd is open, and the environment variable hands it to us: nothing
    // else in this process owns it. We remove the variable so nobody takes it twice.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: the caller is still single-threaded (see the doc comment), so no other thread
    // reads the environment concurrently.
    unsafe { std::env::remove_var(IPC_FD_ENV) };
    nix::fcntl::fcntl(
        &owned,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(std::io::Error::from)?;
    let std_stream = StdUnixStream::from(owned);
    std_stream.set_nonblocking(true)?;
    Ok(std_stream)
}

/// Called in the child between fork and exec: moves the plugin's end of the pair to
/// [`CHILD_FD`] (dup2 clears close-on-exec on the copy).
///
/// Only async-signal-safe calls are made here.
pub fn place_in_child(plugin_end: RawFd) -> std::io::Result<()> {
    if plugin_end == CHILD_FD {
        // dup2 onto itself keeps FD_CLOEXEC; clear it explicitly.
        // SAFETY: fcntl on an fd we were given is async-signal-safe.
        if unsafe { libc::fcntl(CHILD_FD, libc::F_SETFD, 0) } == -1 {
            return Err(std::io::Error::last_os_error());
        }
        return Ok(());
    }
    // SAFETY: dup2 is async-signal-safe; both fds are valid in the child.
    if unsafe { libc::dup2(plugin_end, CHILD_FD) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The raw fd of the plugin end, for [`place_in_child`].
pub fn raw(stream: &StdUnixStream) -> RawFd {
    stream.as_raw_fd()
}

/// Starts the task that owns the write half of a connection: frames queued on the returned
/// sender go out in order, batched into as few writes as the queue allows. The task ends when
/// every sender is dropped (after flushing) or the socket fails.
///
/// A frame with an [`crate::Attachment`] starts a write of its own, a `sendmsg` that carries
/// its descriptor (`SCM_RIGHTS`) with the frame's first byte: that is how the reader on the
/// other side knows which frame a descriptor belongs to ([`crate::reader`]). The descriptor is
/// closed on this side as soon as it is sent (or when the frame is dropped unsent).
pub fn spawn_writer(
    write_half: crate::socket::WriteHalf,
) -> (
    tokio::sync::mpsc::UnboundedSender<crate::OutFrame>,
    tokio::task::JoinHandle<Result<(), crate::codec::WireError>>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<crate::OutFrame>();
    let task = tokio::spawn(async move {
        // No BufWriter: frames are encoded into `bytes` and a burst goes out as one write.
        let mut writer = write_half;
        let mut bytes = bytes::BytesMut::with_capacity(64 * 1024);
        // A frame with a descriptor met while batching: it goes first in the next write.
        let mut next: Option<crate::OutFrame> = None;
        loop {
            let mut frame = match next.take() {
                Some(frame) => frame,
                None => match rx.try_recv() {
                    Ok(frame) => frame,
                    Err(_) => {
                        // Everything queued is written: stop watching for room.
                        writer.settle();
                        match rx.recv().await {
                            Some(frame) => frame,
                            None => break,
                        }
                    }
                },
            };
            if frame.attachment.is_none() && frame.payload.len() >= DIRECT_WRITE_BYTES {
                write_direct(&mut writer, &frame).await?;
                // The next batch is archived into it, already faulted in.
                crate::pool::give(frame.payload);
                continue;
            }
            crate::codec::write_frame(&frame, &mut bytes);
            if let Some(attachment) = frame.attachment.take() {
                let sent = writer
                    .write_with(|stream| {
                        crate::shm::send_with_fd(stream.as_raw_fd(), &bytes, attachment.fd.as_fd())
                    })
                    .await?;
                // The descriptor went with the first byte; the rest is plain bytes.
                writer.write_all(&bytes[sent..]).await?;
                drop(attachment);
                bytes.clear();
                continue;
            }
            // Drain whatever else is queued so a burst becomes one write.
            while bytes.len() < 1024 * 1024 {
                match rx.try_recv() {
                    Ok(frame)
                        if frame.attachment.is_some()
                            || frame.payload.len() >= DIRECT_WRITE_BYTES =>
                    {
                        next = Some(frame);
                        break;
                    }
                    Ok(frame) => crate::codec::write_frame(&frame, &mut bytes),
                    Err(_) => break,
                }
            }
            writer.write_all(&bytes).await?;
            bytes.clear();
        }
        // Dropping the writer shuts the socket down for writing.
        drop(writer);
        Ok(())
    });
    (tx, task)
}

/// A frame with at least this much payload is written straight from its payload rather than
/// copied into the writer's buffer first (a full log batch is 256 KiB).
const DIRECT_WRITE_BYTES: usize = 32 * 1024;

/// Writes one frame without a descriptor as header, payload and padding in vectored writes, so
/// its payload is not copied on this side.
async fn write_direct(
    writer: &mut crate::socket::WriteHalf,
    frame: &crate::OutFrame,
) -> std::io::Result<()> {
    use std::io::Write;
    let (header, padding) = crate::codec::frame_head(frame);
    let zeros = [0u8; crate::frame::PAYLOAD_ALIGN];
    let parts: [&[u8]; 3] = [&header, &frame.payload, &zeros[..padding]];
    let total: usize = parts.iter().map(|part| part.len()).sum();
    let mut written = 0;
    while written < total {
        let mut skip = written;
        let mut slices = Vec::with_capacity(parts.len());
        for part in parts {
            if skip >= part.len() {
                skip -= part.len();
            } else {
                slices.push(std::io::IoSlice::new(&part[skip..]));
                skip = 0;
            }
        }
        match writer
            .write_with(|mut stream| stream.write_vectored(&slices))
            .await?
        {
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            n => written += n,
        }
    }
    Ok(())
}

/// One end of a connection, as both kernel and plugin use it: frames in through a
/// [`crate::FrameReader`], frames out through the writer task of [`spawn_writer`].
pub struct Connection {
    pub frames: crate::FrameReader,
    pub writer: tokio::sync::mpsc::UnboundedSender<crate::OutFrame>,
    pub writer_task: tokio::task::JoinHandle<Result<(), crate::codec::WireError>>,
}

/// Splits a connected stream into its reader and its writer task ([`crate::socket`]). Must be
/// called inside the runtime.
pub fn connect_std(stream: StdUnixStream) -> std::io::Result<Connection> {
    let (read_half, write_half) = crate::socket::split_std(stream)?;
    let (writer, writer_task) = spawn_writer(write_half);
    Ok(Connection {
        frames: crate::FrameReader::new(read_half),
        writer,
        writer_task,
    })
}

/// [`connect_std`] for a stream tokio already watches.
pub fn connect(stream: tokio::net::UnixStream) -> std::io::Result<Connection> {
    connect_std(stream.into_std()?)
}
