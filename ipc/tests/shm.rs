//! Shared buffers across a real socket pair: a sealed buffer and a large payload arrive mapped
//! and intact; an unsealed or partly sealed memfd, a descriptor that is no memory file, a frame
//! that claims a descriptor it did not bring and a descriptor no frame claims are protocol
//! violations; and no descriptor or mapping is left behind.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use futures_util::StreamExt;
use hm_ipc::codec::WireError;
use hm_ipc::messages::{ArchiveBuffer, HostReply};
use hm_ipc::shm::{REQUIRED_SEALS, send_with_fd};
use hm_ipc::{
    BufferWriter, FrameError, FrameKind, FrameReader, OutFrame, PROTOCOL_MAX, SHM_THRESHOLD,
    SealedBuffer,
};
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use tokio::net::UnixStream;

mod support;
use support::raw_pair;

/// A reader that accepts descriptors on one end, the writer task on the other.
fn connected() -> (
    FrameReader,
    tokio::sync::mpsc::UnboundedSender<OutFrame>,
    tokio::task::JoinHandle<Result<(), WireError>>,
) {
    let (a, b) = UnixStream::pair().expect("socket pair");
    let (read_half, _) = hm_ipc::socket::split(a).expect("split");
    let (_, write_half) = hm_ipc::socket::split(b).expect("split");
    let mut reader = FrameReader::new(read_half);
    reader.allow_fds(true);
    let (out, writer) = hm_ipc::transport::spawn_writer(write_half);
    (reader, out, writer)
}

fn archive_reply(call: u64, len: usize) -> OutFrame {
    OutFrame::message(
        FrameKind::Reply,
        call,
        &HostReply::Archive(Box::new(ArchiveBuffer { len: len as u64 })),
    )
    .expect("encode")
}

/// A memfd holding `bytes` with exactly `seals`.
fn memfd_with(bytes: &[u8], seals: SealFlag) -> OwnedFd {
    let fd = memfd_create(
        "hm-test-unsealed",
        MFdFlags::MFD_ALLOW_SEALING | MFdFlags::MFD_CLOEXEC,
    )
    .expect("memfd");
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes).expect("fill");
    let fd = OwnedFd::from(file);
    if !seals.is_empty() {
        fcntl(&fd, FcntlArg::F_ADD_SEALS(seals)).expect("seal");
    }
    fd
}

fn sealed(name: &str, len: usize) -> SealedBuffer {
    let mut writer = BufferWriter::new(name).expect("memfd");
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 + 3) as u8).collect();
    let mut left = len;
    while left > 0 {
        let n = left.min(chunk.len());
        writer.write_all(&chunk[..n]).expect("fill");
        left -= n;
    }
    writer.seal().expect("seal")
}

/// `/proc/self/fd` links and `/proc/self/maps` lines that name memfd `name`.
fn memfd_traces(name: &str) -> Vec<String> {
    let needle = format!("memfd:{name}");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")
        .expect("fd dir")
        .flatten()
    {
        if let Ok(target) = std::fs::read_link(entry.path()) {
            let target = target.to_string_lossy().into_owned();
            if target.contains(&needle) {
                found.push(format!(
                    "fd {}: {target}",
                    entry.file_name().to_string_lossy()
                ));
            }
        }
    }
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    found.extend(
        maps.lines()
            .filter(|l| l.contains(&needle))
            .map(str::to_owned),
    );
    found
}

async fn violation(reader: &mut FrameReader) -> FrameError {
    loop {
        match reader.next().await {
            Some(Err(WireError::Protocol(e))) => return e,
            Some(Ok(frame)) if frame.kind() == FrameKind::Ping => continue,
            other => panic!("expected a protocol violation, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_sealed_buffer_arrives_mapped_with_its_frame_and_nothing_lingers() {
    let name = "hm-test-sealed-arrives";
    let buffer = sealed(name, 3 * SHM_THRESHOLD + 5);
    let expected = buffer.map().expect("map").to_vec();
    let (mut reader, out, writer) = connected();
    // Frames around it keep their order and their (absent) descriptors.
    out.send(OutFrame::empty(FrameKind::Ping, 1)).expect("send");
    out.send(archive_reply(7, buffer.len()).with_buffer(buffer.share().expect("dup")))
        .expect("send");
    out.send(OutFrame::empty(FrameKind::Ping, 2)).expect("send");
    drop(buffer);
    drop(out);
    let first = reader.next().await.expect("frame").expect("valid");
    assert_eq!((first.kind(), first.call_id()), (FrameKind::Ping, 1));
    assert!(first.buffer.is_none());
    let mut reply = reader.next().await.expect("frame").expect("valid");
    assert_eq!((reply.kind(), reply.call_id()), (FrameKind::Reply, 7));
    assert!(reply.header.carries_fd() && !reply.header.shared_payload());
    let got = reply.take_buffer().expect("the buffer came with its frame");
    assert_eq!(got.as_slice(), expected.as_slice());
    let third = reader.next().await.expect("frame").expect("valid");
    assert_eq!((third.kind(), third.call_id()), (FrameKind::Ping, 2));
    assert!(reader.next().await.is_none(), "a clean end");
    writer.await.expect("writer task").expect("writer");
    // Only the mapping is left, no descriptor; and dropping it leaves nothing.
    let traces = memfd_traces(name);
    assert!(
        traces.iter().all(|t| !t.starts_with("fd ")),
        "the receiver keeps no descriptor: {traces:#?}"
    );
    assert!(!traces.is_empty(), "the mapping is visible while held");
    drop(got);
    assert_eq!(memfd_traces(name), Vec::<String>::new());
}

#[tokio::test]
async fn a_large_payload_travels_in_a_shared_buffer_and_validates_in_place() {
    let value = "v".repeat(4 * SHM_THRESHOLD);
    let reply = HostReply::Value(Box::new(Some(value.clone())));
    let frame = OutFrame::message_for(PROTOCOL_MAX, FrameKind::Reply, 3, &reply).expect("encode");
    assert!(frame.payload.is_empty() && frame.attachment.is_some());
    // Before v3 the same value goes through the socket.
    let old = OutFrame::message_for(2, FrameKind::Reply, 3, &reply).expect("encode");
    assert!(old.attachment.is_none() && old.payload.len() > 4 * SHM_THRESHOLD);
    let small =
        OutFrame::message_for(PROTOCOL_MAX, FrameKind::Reply, 3, &HostReply::Ok).expect("encode");
    assert!(small.attachment.is_none());

    let (mut reader, out, _writer) = connected();
    out.send(frame).expect("send");
    out.send(small).expect("send");
    let got = reader.next().await.expect("frame").expect("valid");
    assert!(got.header.shared_payload() && got.header.len == 0);
    assert!(matches!(got.payload, hm_ipc::Payload::Shared(_)));
    assert_eq!(got.decode::<HostReply>().expect("validates"), reply);
    let got = reader.next().await.expect("frame").expect("valid");
    assert_eq!(got.decode::<HostReply>().expect("validates"), HostReply::Ok);
}

#[tokio::test]
async fn an_unsealed_memfd_is_a_protocol_violation() {
    let (mut reader, out, _writer) = connected();
    let fd = memfd_with(b"not sealed", SealFlag::empty());
    out.send(archive_reply(1, 10).with_buffer(fd))
        .expect("send");
    let error = violation(&mut reader).await;
    assert!(
        matches!(&error, FrameError::BadBuffer { reason } if reason.contains("not sealed")),
        "{error}"
    );
    assert!(reader.next().await.is_none(), "nothing after a violation");
}

#[tokio::test]
async fn a_partly_sealed_memfd_is_a_protocol_violation() {
    let partial = [
        SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
        SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_SEAL,
        REQUIRED_SEALS.difference(SealFlag::F_SEAL_SEAL),
    ];
    for seals in partial {
        let (mut reader, out, _writer) = connected();
        out.send(archive_reply(1, 4).with_buffer(memfd_with(b"data", seals)))
            .expect("send");
        let error = violation(&mut reader).await;
        assert!(
            matches!(error, FrameError::BadBuffer { .. }),
            "{seals:?}: {error}"
        );
    }
}

#[tokio::test]
async fn a_descriptor_that_is_not_a_memory_file_is_a_protocol_violation() {
    let (mut reader, out, _writer) = connected();
    let (pipe, _w) = nix::unistd::pipe().expect("pipe");
    out.send(archive_reply(1, 0).with_buffer(pipe))
        .expect("send");
    assert!(matches!(
        violation(&mut reader).await,
        FrameError::BadBuffer { .. }
    ));
    let (mut reader, out, _writer) = connected();
    let file = tempfile_fd();
    out.send(archive_reply(1, 0).with_buffer(file))
        .expect("send");
    assert!(matches!(
        violation(&mut reader).await,
        FrameError::BadBuffer { .. }
    ));
}

fn tempfile_fd() -> OwnedFd {
    let path = std::env::temp_dir().join(format!("hm-shm-test-{}", std::process::id()));
    let file = std::fs::File::create(&path).expect("create a file");
    let _ = std::fs::remove_file(&path);
    OwnedFd::from(file)
}

#[tokio::test]
async fn a_frame_claiming_a_descriptor_it_did_not_bring_is_a_protocol_violation() {
    let (mut reader, raw) = raw_pair();
    let mut wire = archive_reply(1, 4).to_wire();
    wire[6] = 1; // FLAG_FD, but written with plain write(2).
    (&raw).write_all(&wire).expect("write");
    assert_eq!(violation(&mut reader).await, FrameError::FdMissing);
}

#[tokio::test]
async fn a_descriptor_no_frame_claims_is_a_protocol_violation() {
    // A buffer sent with a frame that does not say it carries one.
    let (mut reader, raw) = raw_pair();
    let buffer = sealed("hm-test-unclaimed", 16);
    let wire = OutFrame::empty(FrameKind::Ping, 1).to_wire();
    let sent = send_with_fd(raw.as_raw_fd(), &wire, buffer.share().expect("dup").as_fd())
        .expect("sendmsg");
    (&raw).write_all(&wire[sent..]).expect("write");
    assert_eq!(violation(&mut reader).await, FrameError::FdUnclaimed);

    // A descriptor sent with the second frame of a write, which the first cannot claim, and a
    // frame that follows without claiming it.
    let (mut reader, raw) = raw_pair();
    let mut wire = OutFrame::empty(FrameKind::Ping, 1).to_wire();
    wire.extend(OutFrame::empty(FrameKind::Ping, 2).to_wire());
    let sent = send_with_fd(raw.as_raw_fd(), &wire, buffer.share().expect("dup").as_fd())
        .expect("sendmsg");
    (&raw).write_all(&wire[sent..]).expect("write");
    assert_eq!(violation(&mut reader).await, FrameError::FdUnclaimed);
}

#[tokio::test]
async fn descriptors_before_they_are_allowed_are_a_protocol_violation() {
    let (a, b) = UnixStream::pair().expect("socket pair");
    let (read_half, _) = hm_ipc::socket::split(a).expect("split");
    let (_, write_half) = hm_ipc::socket::split(b).expect("split");
    let mut reader = FrameReader::new(read_half);
    let (out, _writer) = hm_ipc::transport::spawn_writer(write_half);
    let buffer = sealed("hm-test-early", 8);
    out.send(archive_reply(1, 8).with_buffer(buffer.share().expect("dup")))
        .expect("send");
    assert!(matches!(
        violation(&mut reader).await,
        FrameError::FdRefused { .. }
    ));
}

#[tokio::test]
async fn many_buffers_in_a_burst_each_reach_their_own_frame() {
    let (mut reader, out, _writer) = connected();
    let buffers: Vec<SealedBuffer> = (0..50)
        .map(|i| SealedBuffer::from_bytes("hm-test-burst", &vec![i as u8; 100 + i]).expect("buf"))
        .collect();
    for (i, buffer) in buffers.iter().enumerate() {
        out.send(OutFrame::empty(FrameKind::Ping, i as u64))
            .expect("send");
        out.send(archive_reply(i as u64, buffer.len()).with_buffer(buffer.share().expect("dup")))
            .expect("send");
    }
    for i in 0..50u64 {
        let ping = reader.next().await.expect("frame").expect("valid");
        assert_eq!((ping.kind(), ping.call_id()), (FrameKind::Ping, i));
        let mut reply = reader.next().await.expect("frame").expect("valid");
        assert_eq!(reply.call_id(), i);
        let got = reply.take_buffer().expect("buffer");
        assert_eq!(got.len(), 100 + i as usize);
        assert!(got.iter().all(|&b| b == i as u8));
    }
}

#[test]
fn a_sealed_buffer_cannot_be_changed_by_its_writer() {
    let buffer = SealedBuffer::from_bytes("hm-test-immutable", b"fixed").expect("buffer");
    let mut file = std::fs::File::from(buffer.share().expect("dup"));
    assert!(file.write_all(b"changed").is_err(), "F_SEAL_WRITE holds");
    assert!(file.set_len(1).is_err(), "F_SEAL_SHRINK holds");
    assert!(file.set_len(100).is_err(), "F_SEAL_GROW holds");
    assert_eq!(buffer.map().expect("map").as_slice(), b"fixed");
}

#[test]
fn a_read_says_it_drained_the_socket_only_when_it_surely_did() {
    use hm_ipc::shm::recv_with_fds;
    let (ours, mut theirs) = std::os::unix::net::UnixStream::pair().expect("socket pair");
    ours.set_nonblocking(true).expect("nonblocking");
    let mut buf = bytes::BytesMut::with_capacity(256);
    let mut read = |limit: usize| {
        buf.clear();
        recv_with_fds(ours.as_raw_fd(), &mut buf, limit).expect("recv")
    };
    // Less than the room: the queue ran out.
    theirs.write_all(b"0123456789").expect("write");
    let got = read(100);
    assert_eq!((got.bytes, got.drained), (10, true));
    // Exactly the room: more may be waiting (here it is).
    theirs.write_all(b"0123456789").expect("write");
    let got = read(4);
    assert_eq!((got.bytes, got.drained), (4, false));
    let got = read(100);
    assert_eq!((got.bytes, got.drained), (6, true));
    // A message with a descriptor ends a read early whatever else is queued behind it: no
    // read that brought descriptors can say the queue is empty.
    let file = tempfile_fd();
    send_with_fd(theirs.as_raw_fd(), b"with", file.as_fd()).expect("send with fd");
    theirs.write_all(b"behind").expect("write");
    let got = read(100);
    assert_eq!((got.bytes, got.fds.len(), got.drained), (4, 1, false));
    let got = read(100);
    assert_eq!((got.bytes, got.drained), (6, true));
    // The end of the stream is no drained read either (0 bytes).
    drop(theirs);
    let got = read(100);
    assert_eq!((got.bytes, got.drained), (0, false));
}
