//! The workspace archive as a plugin sees it: a tar of the project that hm built once for the
//! run, mapped read-only into this process from hm's sealed shared buffer (`docs/protocol.md`).

use std::io::{self, BufRead, Read};

use hm_ipc::SharedBuffer;

/// The workspace archive: a tar of the project root (honouring `.gitignore`,
/// `.git/info/exclude` and `.hmignore`, without `.git`), from [`crate::StepContext::open_archive`].
///
/// It is the bytes of a sealed buffer mapped read-only: [`std::ops::Deref`] gives them as a
/// `&[u8]` in place, and it is also a [`Read`] (and [`BufRead`]) from its start, for a tar
/// reader or an upload. Its descriptor was closed when it was mapped; dropping the `Archive`
/// unmaps it, so a plugin that drops it before it answers holds nothing of it afterwards.
pub struct Archive {
    buffer: SharedBuffer,
    /// Where `Read` goes on from.
    position: usize,
}

impl Archive {
    pub(crate) fn new(buffer: SharedBuffer) -> Self {
        Self {
            buffer,
            position: 0,
        }
    }

    /// The whole archive.
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_slice()
    }

    /// How far [`Read`] has got.
    pub fn position(&self) -> usize {
        self.position
    }

    /// What [`Read`] has not returned yet.
    fn rest(&self) -> &[u8] {
        &self.buffer.as_slice()[self.position..]
    }
}

impl std::ops::Deref for Archive {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for Archive {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Read for Archive {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = self.rest().read(out)?;
        self.position += n;
        Ok(n)
    }
}

impl BufRead for Archive {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        Ok(self.rest())
    }

    fn consume(&mut self, amount: usize) {
        self.position = (self.position + amount).min(self.buffer.len());
    }
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive")
            .field("len", &self.buffer.len())
            .field("position", &self.position)
            .finish()
    }
}
