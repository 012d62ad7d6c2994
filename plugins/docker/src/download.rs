//! Tars and the Engine's archive API: reading files out of a container (Docker answers with a
//! tar stream, which is read as it arrives on a blocking thread, as the `tar` crate reads
//! synchronously, and dropped unread the moment the reader stops: nothing is held whole, no
//! temp file), and the headers of the tars this plugin writes.

use std::io::{self, Read};

use bollard::Docker;
use bollard::query_parameters::DownloadFromContainerOptions;
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::daemon::{describe, is_status};

/// The header of an entry this plugin writes: owned by root (a GNU header leaves the owner
/// fields empty, which not every reader takes for 0), with the given type, size, mode and
/// modification time.
pub fn header(kind: tar::EntryType, size: u64, mode: u32, mtime: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_size(size);
    header.set_mode(mode);
    header.set_mtime(mtime);
    header.set_uid(0);
    header.set_gid(0);
    header
}

/// Downloads `path` of container `id` and hands Docker's tar of it to `read`, with `state`,
/// on a blocking thread. Returns `state` back with what `read` returned, or with `None` when
/// the container has nothing at `path` (404). The tar's entries are named after `path`'s
/// basename (`/workspace/dist` gives `dist`, `dist/app.txt`, ...). The error is the daemon's,
/// in words.
pub async fn read_archive<S, T, F>(
    docker: &Docker,
    id: &str,
    path: &str,
    mut state: S,
    read: F,
) -> Result<(S, Option<T>), String>
where
    S: Send + 'static,
    T: Send + 'static,
    F: FnOnce(&mut S, &mut dyn Read) -> T + Send + 'static,
{
    let options = DownloadFromContainerOptions {
        path: path.to_owned(),
    };
    let mut stream = docker.download_from_container(id, Some(options));
    // The daemon's status comes with the first item: a missing path is a 404 there, before any
    // byte of the tar.
    let first = match stream.next().await {
        None => Bytes::new(),
        Some(Ok(bytes)) => bytes,
        Some(Err(e)) if is_status(&e, 404) => return Ok((state, None)),
        Some(Err(e)) => return Err(describe(&e)),
    };
    let body = futures_util::stream::iter([Ok(first)])
        .chain(stream.map_err(|e| io::Error::other(describe(&e))))
        .boxed();
    // Made here, on the runtime: the bridge drives the stream from the blocking thread.
    let mut reader = SyncIoBridge::new(StreamReader::new(body));
    tokio::task::spawn_blocking(move || {
        let read = read(&mut state, &mut reader);
        (state, Some(read))
    })
    .await
    .map_err(|e| format!("the reader of {path} failed: {e}"))
}
