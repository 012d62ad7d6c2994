//! The buffered stream every renderer writes to, where a reader that went away ends the output
//! instead of failing the run.

use std::io::{self, BufWriter, ErrorKind, Write};

/// Large enough that a burst of log lines becomes a few `write(2)` calls, small enough not to
/// matter next to the 30 MiB RSS budget.
const BUFFER_BYTES: usize = 64 * 1024;

/// A `BufWriter` that treats EPIPE as "nobody is reading any more": `hm run | head` must not make
/// the run fail or print an error (the ripgrep habit, STYLE.md). After the first EPIPE every
/// write succeeds without doing anything, so renderers need no special case. Other errors
/// (a full disk, say) still reach the run loop.
pub(crate) struct Output {
    inner: BufWriter<Box<dyn Write + Send>>,
    closed: bool,
}

impl Output {
    pub(crate) fn new(inner: Box<dyn Write + Send>) -> Self {
        Self {
            inner: BufWriter::with_capacity(BUFFER_BYTES, inner),
            closed: false,
        }
    }

    /// True once the reader has gone away; renderers use it to skip formatting work.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed
    }

    fn absorb<T>(&mut self, result: io::Result<T>, on_close: T) -> io::Result<T> {
        match result {
            Err(e) if e.kind() == ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(on_close)
            }
            other => other,
        }
    }
}

impl Write for Output {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.closed {
            return Ok(buf.len());
        }
        let result = self.inner.write(buf);
        self.absorb(result, buf.len())
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        let result = self.inner.write_all(buf);
        self.absorb(result, ())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.closed {
            return Ok(());
        }
        let result = self.inner.flush();
        self.absorb(result, ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::test_support::{BrokenPipe, SharedBuf};

    #[test]
    fn broken_pipe_closes_the_output_without_error() {
        let pipe = BrokenPipe::default();
        let mut out = Output::new(Box::new(pipe.clone()));
        out.write_all(b"hello\n").unwrap();
        out.flush().unwrap();
        assert!(out.is_closed());
        out.write_all(&[b'x'; 3 * BUFFER_BYTES]).unwrap();
        out.flush().unwrap();
        assert_eq!(
            pipe.attempts(),
            1,
            "no write is attempted once the reader is gone"
        );
    }

    #[test]
    fn other_errors_are_reported() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::from(ErrorKind::StorageFull))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut out = Output::new(Box::new(Full));
        out.write_all(b"x").unwrap();
        assert_eq!(out.flush().unwrap_err().kind(), ErrorKind::StorageFull);
    }

    #[test]
    fn writes_are_buffered_until_flush() {
        let buf = SharedBuf::default();
        let mut out = Output::new(Box::new(buf.clone()));
        out.write_all(b"a\n").unwrap();
        assert_eq!(buf.text(), "");
        out.flush().unwrap();
        assert_eq!(buf.text(), "a\n");
    }
}
