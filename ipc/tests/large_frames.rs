//! Large frames through a real socket: the reader takes a large frame's payload straight into a
//! buffer of its own instead of its shared read buffer. Whatever the sizes and however the
//! bytes are cut into writes, every frame arrives whole and in order, and a large frame keeps
//! every check a small one has: the end of the stream inside it, padding that is not zero, a
//! descriptor that arrives inside it.

use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use futures_util::StreamExt;
use hm_ipc::codec::WireError;
use hm_ipc::messages::{ArchivedLogBatch, LogBatch, LogChunk};
use hm_ipc::shm::send_with_fd;
use hm_ipc::{BufferWriter, FrameError, FrameKind, FrameReader, HEADER_LEN, OutFrame};

mod support;
use support::raw_pair;

/// A log batch of one chunk whose text is `len` bytes that say which frame they belong to.
fn batch(call: u64, len: usize) -> OutFrame {
    let chunks = vec![LogChunk {
        stream: 0,
        text: text(call, len),
    }];
    OutFrame::message(FrameKind::LogBatch, call, &LogBatch { chunks }).expect("encode")
}

fn text(call: u64, len: usize) -> String {
    (0..len)
        .map(|i| char::from(b'a' + ((i as u64 + call) % 26) as u8))
        .collect()
}

async fn violation(reader: &mut FrameReader) -> FrameError {
    match reader.next().await {
        Some(Err(WireError::Protocol(e))) => e,
        other => panic!("expected a protocol violation, got {other:?}"),
    }
}

#[tokio::test]
async fn frames_of_every_size_arrive_whole_however_the_bytes_are_cut() {
    // Around the size from which the payload is read directly (32 KiB), a full log batch,
    // small frames between large ones, and a large one after a large one.
    let sizes = [
        10,
        32 * 1024 - 100,
        32 * 1024 + 100,
        256 * 1024,
        5,
        256 * 1024 - 64,
        200 * 1024,
        70_000,
        3,
    ];
    let frames: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(call, &len)| batch(call as u64, len).to_wire())
        .collect();
    for cut in [7usize, 4096, 65_536, 1 << 20] {
        let (mut reader, raw) = raw_pair();
        let wire: Vec<u8> = frames.concat();
        let writer = std::thread::spawn(move || {
            let mut raw = raw;
            raw.set_nonblocking(false).expect("blocking");
            for (i, piece) in wire.chunks(cut).enumerate() {
                raw.write_all(piece).expect("write");
                // A pause about every 50 KB, so the reader finds frames half there.
                if (i * cut) % 50_000 < cut {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        });
        for (call, &len) in sizes.iter().enumerate() {
            let frame = reader
                .next()
                .await
                .unwrap_or_else(|| panic!("frame {call} (cut {cut}) never came"))
                .unwrap_or_else(|e| panic!("frame {call} (cut {cut}): {e}"));
            assert_eq!(frame.call_id(), call as u64, "cut {cut}");
            let archived = frame.access::<ArchivedLogBatch>().expect("valid");
            assert_eq!(archived.chunks.len(), 1);
            assert_eq!(
                archived.chunks[0].text.as_str(),
                text(call as u64, len),
                "frame {call}, cut {cut}"
            );
        }
        writer.join().expect("writer");
        assert!(
            reader.next().await.is_none(),
            "a clean end after the last frame"
        );
    }
}

#[tokio::test]
async fn the_end_of_the_stream_inside_a_large_frame_is_a_truncated_frame() {
    let (mut reader, raw) = raw_pair();
    let wire = batch(1, 256 * 1024).to_wire();
    (&raw)
        .write_all(&wire[..HEADER_LEN + 100 * 1024])
        .expect("write");
    drop(raw);
    assert!(matches!(
        violation(&mut reader).await,
        FrameError::Truncated { .. }
    ));
}

#[tokio::test]
async fn non_zero_padding_of_a_large_frame_is_refused() {
    let (mut reader, raw) = raw_pair();
    // A text length that leaves the frame padding.
    let mut wire = (100_000..100_016)
        .map(|len| batch(1, len).to_wire())
        .find(|wire| {
            let len = u32::from_le_bytes(wire[8..12].try_into().expect("4 bytes")) as usize;
            HEADER_LEN + len < wire.len()
        })
        .expect("some length leaves padding");
    let last = wire.len() - 1;
    wire[last] = 1;
    // Its start first, so the rest is read into the frame's own buffer.
    (&raw).write_all(&wire[..1024]).expect("write");
    let early = tokio::time::timeout(Duration::from_millis(50), reader.next()).await;
    assert!(early.is_err(), "no frame before its bytes are all there");
    (&raw).write_all(&wire[1024..]).expect("write");
    assert_eq!(violation(&mut reader).await, FrameError::Padding);
}

#[tokio::test]
async fn a_descriptor_inside_a_large_frame_is_claimed_by_nobody() {
    let mut writer = BufferWriter::new("hm-test-inside").expect("memfd");
    writer.write_all(b"bytes").expect("fill");
    let buffer = writer.seal().expect("seal");
    let wire = batch(1, 256 * 1024).to_wire();
    let (mut reader, raw) = raw_pair();
    // The frame's first 64 KiB, then the rest with a descriptor on its first byte.
    let first = HEADER_LEN + 64 * 1024;
    (&raw).write_all(&wire[..first]).expect("write");
    // Let the reader start on the frame first.
    let early = tokio::time::timeout(Duration::from_millis(50), reader.next()).await;
    assert!(early.is_err(), "no frame before its bytes are all there");
    let fd = buffer.share().expect("dup");
    let mut sent = first;
    sent += send_with_fd(raw.as_raw_fd(), &wire[sent..], fd.as_fd()).expect("sendmsg");
    (&raw).write_all(&wire[sent..]).expect("write");
    // The frame does not claim one; the descriptor waits for a frame that starts with it.
    let frame = reader.next().await.expect("frame").expect("whole");
    assert_eq!(frame.call_id(), 1);
    (&raw)
        .write_all(&OutFrame::empty(FrameKind::Ping, 2).to_wire())
        .expect("write");
    assert_eq!(violation(&mut reader).await, FrameError::FdUnclaimed);
}
