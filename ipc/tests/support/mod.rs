//! What several of this crate's socket tests share.

use std::os::unix::net::UnixStream as StdUnixStream;

use hm_ipc::FrameReader;

/// A reader that accepts descriptors on one end and the raw other end, for writing bytes the
/// writer task never would, or cut where it never would.
pub fn raw_pair() -> (FrameReader, StdUnixStream) {
    let (a, b) = StdUnixStream::pair().expect("socket pair");
    let (read_half, _) = hm_ipc::socket::split_std(a).expect("split");
    let mut reader = FrameReader::new(read_half);
    reader.allow_fds(true);
    (reader, b)
}
