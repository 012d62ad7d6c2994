//! The two halves of a connection's socket, each registered with tokio only for what it waits
//! on.
//!
//! tokio's `UnixStream` registers its socket for reading and writing at once, edge-triggered.
//! Linux then wakes the writer's epoll every time the peer reads, because the socket's write
//! space grew, whether or not anything waits to be written. On a connection of small requests
//! and replies that is one wake-up of each side per frame it sends, for nothing: a context
//! switch in and out of `epoll_wait`. So the socket is registered here for reading only. The
//! writer writes without asking first. Only a write that finds the socket full registers a
//! second descriptor of the same socket for writability. That registration is kept while the
//! writer has more to send and dropped once its queue is empty ([`WriteHalf::settle`]).
//!
//! tokio cannot watch one descriptor for two interests that come and go, so the writer's
//! registration is on a duplicate (`dup`): epoll keeps one entry per descriptor, each with its
//! own interest, on the one socket.

use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// Splits a connected stream into its two halves and registers the reading one with the
/// current tokio runtime. Must be called inside the runtime.
pub fn split_std(stream: StdUnixStream) -> io::Result<(ReadHalf, WriteHalf)> {
    stream.set_nonblocking(true)?;
    let stream = Arc::new(stream);
    // SAFETY: the `Arc` owns the descriptor and keeps it open for as long as the `AsyncFd`
    // holds it, and `as_raw_fd` of an `Arc<UnixStream>` is always that one descriptor.
    let readable = unsafe { AsyncFd::register_with_interest(stream.clone(), Interest::READABLE) }?;
    Ok((ReadHalf { io: readable }, WriteHalf { stream, full: None }))
}

/// [`split_std`] for a stream tokio already watches: it is taken out of tokio's hands first.
pub fn split(stream: tokio::net::UnixStream) -> io::Result<(ReadHalf, WriteHalf)> {
    split_std(stream.into_std()?)
}

/// The reading half: the socket, registered for reading.
#[derive(Debug)]
pub struct ReadHalf {
    io: AsyncFd<Arc<StdUnixStream>>,
}

impl ReadHalf {
    pub fn as_raw_fd(&self) -> RawFd {
        self.io.get_ref().as_raw_fd()
    }

    /// Ready once the socket has something to read (or has ended). The readiness stays set
    /// until a [`Self::try_io`] closure reports `WouldBlock`.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The guard is dropped without clearing: the readiness stays for `try_io`.
        let _ready = ready!(self.io.poll_read_ready(cx))?;
        Poll::Ready(Ok(()))
    }

    /// Runs a receive; a `WouldBlock` from it clears the readiness, as tokio's own
    /// `UnixStream::try_io` does.
    pub fn try_io<R>(&self, receive: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        self.io.try_io(Interest::READABLE, |_| receive())
    }
}

/// The writing half: writes straight to the socket, and waits for room only when it is full.
/// Dropping it shuts the socket down for writing, so the peer reads the end of the stream.
#[derive(Debug)]
pub struct WriteHalf {
    stream: Arc<StdUnixStream>,
    /// A duplicate of the socket registered for writability, while a write waits for room.
    full: Option<AsyncFd<OwnedFd>>,
}

impl WriteHalf {
    pub fn as_raw_fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Runs `write` until it does not find the socket full: straight away when there is room,
    /// else each time epoll says there is room again. Its result is returned as it is.
    pub async fn write_with<R>(
        &mut self,
        mut write: impl FnMut(&StdUnixStream) -> io::Result<R>,
    ) -> io::Result<R> {
        loop {
            match write(&self.stream) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                done => return done,
            }
            let full = match &mut self.full {
                Some(full) => full,
                None => self.full.insert(watch_writable(&self.stream)?),
            };
            // Registered after the write that failed: epoll reports the room that came in
            // between at once, so none is missed.
            let mut ready = full.writable().await?;
            match ready.try_io(|_| write(&self.stream)) {
                Ok(done) => return done,
                // Full again: the readiness is cleared and the loop waits once more.
                Err(_would_block) => {}
            }
        }
    }

    /// Writes all of `bytes`.
    pub async fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.write_with(|mut stream| stream.write(bytes)).await? {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                n => bytes = &bytes[n..],
            }
        }
        Ok(())
    }

    /// Nothing more is waiting to be written: the registration for writability, if a full
    /// socket made one, is dropped, so the peer's reads stop waking this side.
    pub fn settle(&mut self) {
        self.full = None;
    }
}

impl Drop for WriteHalf {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }
}

/// A duplicate of `stream`, registered with tokio for writability.
fn watch_writable(stream: &StdUnixStream) -> io::Result<AsyncFd<OwnedFd>> {
    let duplicate = stream.as_fd().try_clone_to_owned()?;
    // SAFETY: the `OwnedFd` is moved into the `AsyncFd`, which keeps it open until it is
    // dropped, and its `as_raw_fd` never changes.
    Ok(unsafe { AsyncFd::register_with_interest(duplicate, Interest::WRITABLE) }?)
}

#[cfg(test)]
mod tests {
    use super::split_std;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    /// A write larger than the socket's buffer waits for the reader and then completes, and
    /// the reader sees every byte in order and then the end of the stream.
    #[tokio::test]
    async fn a_write_that_fills_the_socket_waits_for_room() {
        let (ours, mut theirs) = UnixStream::pair().expect("socket pair");
        let (_read, mut write) = split_std(ours).expect("split");
        let sent: Vec<u8> = (0..8 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let expected = sent.clone();
        let (go, told) = std::sync::mpsc::channel::<()>();
        let reader = std::thread::spawn(move || {
            told.recv().expect("told to read");
            let mut got = Vec::new();
            theirs.read_to_end(&mut got).expect("read");
            got
        });
        let writer = tokio::spawn(async move {
            write.write_all(&sent).await.expect("write");
            write
        });
        // On this test's one-thread runtime the writer now runs until nothing is read and the
        // socket is full, and waits; only then does the reader begin.
        tokio::task::yield_now().await;
        assert!(!writer.is_finished(), "8 MiB fitted in the socket");
        go.send(()).expect("reader");
        let mut write = writer.await.expect("writer");
        assert!(write.full.is_some(), "the full socket made no registration");
        write.settle();
        assert!(write.full.is_none());
        drop(write);
        let got = reader.join().expect("reader");
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes arrived out of order or changed");
    }
}
