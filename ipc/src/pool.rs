//! Large payload buffers kept for reuse. A chatty step sends a full log batch (256 KiB) every
//! few hundred microseconds; a fresh buffer of that size is a fresh `mmap` from the allocator,
//! and every one of its pages is faulted in and zeroed on first touch and unmapped again when
//! the frame is dropped. On both ends that was about a tenth of the CPU of a step streaming
//! its output. Buffers from here were touched before.
//!
//! The pool is per process and small: at most 8 buffers of 64 KiB to
//! 1 MiB of capacity; anything else is simply freed.

use std::sync::Mutex;

use rkyv::util::AlignedVec;

/// Buffers smaller than this come cheaply from the allocator's heap: not worth keeping.
const MIN_KEPT: usize = 64 * 1024;
/// Larger buffers are rare (a host call's big payload) and would pin too much memory.
const MAX_KEPT: usize = 1024 * 1024;
/// How many buffers the pool holds at most: a connection has a few batches in flight (the log
/// credit) and a process has a few connections.
const KEPT: usize = 8;

/// The process's pool.
static POOL: Pool = Pool::new();

/// A buffer with room for `capacity` bytes, empty.
pub(crate) fn take_empty(capacity: usize) -> AlignedVec {
    POOL.take_empty(capacity)
}

/// A buffer with room for `capacity` bytes whose length is how many of its bytes are already
/// initialised (by an earlier use; their values are whatever was there): grow it with
/// `resize` only as far as needed, and only what was never initialised is zeroed.
pub(crate) fn take_initialised(capacity: usize) -> AlignedVec {
    POOL.take(capacity)
}

/// Keeps `buf` for a later [`take_empty`] or [`take_initialised`], or frees it.
pub(crate) fn give(buf: AlignedVec) {
    POOL.give(buf);
}

struct Pool(Mutex<Vec<AlignedVec>>);

impl Pool {
    const fn new() -> Self {
        Self(Mutex::new(Vec::new()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<AlignedVec>> {
        // A poisoned pool only means a panic elsewhere mid-push; the buffers are still buffers.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take_empty(&self, capacity: usize) -> AlignedVec {
        let mut buf = self.take(capacity);
        buf.clear();
        buf
    }

    /// A kept buffer with room for `capacity` bytes, or a new one.
    fn take(&self, capacity: usize) -> AlignedVec {
        if capacity >= MIN_KEPT {
            let mut pool = self.lock();
            if let Some(at) = pool.iter().position(|buf| buf.capacity() >= capacity) {
                return pool.swap_remove(at);
            }
        }
        AlignedVec::with_capacity(capacity)
    }

    fn give(&self, buf: AlignedVec) {
        if !(MIN_KEPT..=MAX_KEPT).contains(&buf.capacity()) {
            return;
        }
        let mut pool = self.lock();
        if pool.len() < KEPT {
            pool.push(buf);
        }
    }
}

/// A received payload in a buffer that goes back to the pool when the frame is dropped.
#[derive(Debug)]
pub struct PooledBytes {
    buf: AlignedVec,
}

impl PooledBytes {
    pub(crate) fn new(buf: AlignedVec) -> Self {
        Self { buf }
    }

    pub fn as_slice(&self) -> &[u8] {
        self.buf.as_slice()
    }
}

impl Drop for PooledBytes {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_buffer_comes_back_with_its_bytes_and_room() {
        let pool = Pool::new();
        let mut buf = AlignedVec::with_capacity(300 * 1024);
        buf.extend_from_slice(&[7u8; 1000]);
        let addr = buf.as_ptr() as usize;
        pool.give(buf);
        let mut got = pool.take(200 * 1024);
        assert_eq!(
            got.as_ptr() as usize,
            addr,
            "the buffer given back was not kept"
        );
        assert_eq!(got.len(), 1000, "its initialised bytes are known");
        got.resize(200 * 1024, 0);
        assert_eq!(
            &got[..1000],
            &[7u8; 1000][..],
            "kept bytes are not zeroed again"
        );
        assert!(got[1000..].iter().all(|&b| b == 0), "new bytes are zeroed");
        pool.give(got);
        let empty = pool.take_empty(100 * 1024);
        assert_eq!(empty.as_ptr() as usize, addr);
        assert!(empty.is_empty());
        // Too big for it: a new one.
        assert_ne!(pool.take(400 * 1024).as_ptr() as usize, addr);
    }

    #[test]
    fn small_and_huge_buffers_are_not_kept_nor_more_than_a_few() {
        let pool = Pool::new();
        pool.give(AlignedVec::with_capacity(MIN_KEPT / 2));
        pool.give(AlignedVec::with_capacity(MAX_KEPT * 2));
        assert!(pool.lock().is_empty());
        for _ in 0..KEPT + 3 {
            pool.give(AlignedVec::with_capacity(MIN_KEPT));
        }
        assert_eq!(pool.lock().len(), KEPT);
    }
}
