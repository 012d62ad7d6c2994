//! Frame codec behaviour: partial input, bad input, and many frames through a real socket.

use bytes::BytesMut;
use futures_util::SinkExt;
use hm_ipc::codec::{WireError, decode_all};
use hm_ipc::messages::{KernelCall, LogBatch, LogChunk, PluginReply};
use hm_ipc::{FrameCodec, FrameError, FrameKind, HEADER_LEN, INLINE_CAP, OutFrame};
use tokio_util::codec::{Decoder, FramedRead, FramedWrite};

fn batch(n: usize) -> OutFrame {
    let chunks = (0..n)
        .map(|i| LogChunk {
            stream: 0,
            text: format!("line {i}"),
        })
        .collect();
    OutFrame::message(FrameKind::LogBatch, 5, &LogBatch { chunks }).expect("encode")
}

fn protocol_error(bytes: &[u8]) -> FrameError {
    match decode_all(bytes) {
        Err(WireError::Protocol(e)) => e,
        other => panic!("expected a protocol violation, got {other:?}"),
    }
}

#[test]
fn a_partial_frame_is_not_an_error_until_eof() {
    let wire = batch(3).to_wire();
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    for &byte in &wire[..wire.len() - 1] {
        buf.extend_from_slice(&[byte]);
        assert!(
            codec
                .decode(&mut buf)
                .expect("no error on partial input")
                .is_none()
        );
    }
    buf.extend_from_slice(&wire[wire.len() - 1..]);
    let frame = codec
        .decode(&mut buf)
        .expect("decodes")
        .expect("whole frame");
    let archived = frame
        .access::<hm_ipc::messages::ArchivedLogBatch>()
        .expect("valid");
    assert_eq!(archived.chunks.len(), 3);
    assert!(matches!(
        protocol_error(&wire[..wire.len() - 3]),
        FrameError::Truncated { .. }
    ));
}

#[test]
fn garbage_oversized_and_reserved_bits_are_violations() {
    assert!(matches!(
        protocol_error(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),
        FrameError::BadMagic(_)
    ));
    let mut big = OutFrame::empty(FrameKind::Ping, 1).to_wire();
    big[8..12].copy_from_slice(&((INLINE_CAP as u32) + 1).to_le_bytes());
    assert!(matches!(protocol_error(&big), FrameError::TooLarge { .. }));
    let mut kind = OutFrame::empty(FrameKind::Ping, 1).to_wire();
    kind[4] = 200;
    assert!(matches!(
        protocol_error(&kind),
        FrameError::UnknownKind(200)
    ));
    let mut flags = OutFrame::empty(FrameKind::Ping, 1).to_wire();
    flags[6] = 8;
    assert!(matches!(
        protocol_error(&flags),
        FrameError::Reserved { .. }
    ));
    // The defined flags only on the frames that may carry a shared buffer, and a shared
    // payload only with its descriptor and an empty inline payload.
    let mut fd_on_ping = OutFrame::empty(FrameKind::Ping, 1).to_wire();
    fd_on_ping[6] = hm_ipc::FLAG_FD as u8;
    assert!(matches!(
        protocol_error(&fd_on_ping),
        FrameError::Flags { .. }
    ));
    let mut shared_without_fd = OutFrame::empty(FrameKind::Reply, 1).to_wire();
    shared_without_fd[6] = hm_ipc::FLAG_SHARED_PAYLOAD as u8;
    assert!(matches!(
        protocol_error(&shared_without_fd),
        FrameError::Flags { .. }
    ));
    let mut shared_with_inline = batch(1).to_wire();
    shared_with_inline[4..6].copy_from_slice(&(FrameKind::Reply as u16).to_le_bytes());
    shared_with_inline[6] = (hm_ipc::FLAG_FD | hm_ipc::FLAG_SHARED_PAYLOAD) as u8;
    assert!(matches!(
        protocol_error(&shared_with_inline),
        FrameError::Flags { .. }
    ));
    assert_eq!(
        OutFrame::empty(FrameKind::Ping, 1).to_wire().len(),
        HEADER_LEN
    );
}

#[test]
fn a_payload_that_is_not_the_expected_archive_fails_validation() {
    // A LogBatch payload read as a PluginReply, and random bytes, must both be refused.
    let frames = decode_all(&batch(2).to_wire()).expect("decodes");
    assert!(matches!(
        frames[0].access::<hm_ipc::messages::ArchivedKernelCall>(),
        Err(FrameError::InvalidPayload { .. })
    ));
    let mut junk = OutFrame::empty(FrameKind::Reply, 1);
    junk.payload.extend_from_slice(&[0xff; 16]);
    let frames = decode_all(&junk.to_wire()).expect("header is fine");
    assert!(frames[0].decode::<PluginReply>().is_err());
    assert!(frames[0].decode::<KernelCall>().is_err());
}

#[test]
fn non_zero_padding_is_refused() {
    let mut wire = batch(1).to_wire();
    let last = wire.len() - 1;
    let len = u32::from_le_bytes(wire[8..12].try_into().expect("4 bytes")) as usize;
    if HEADER_LEN + len < wire.len() {
        wire[last] = 1;
        assert!(matches!(protocol_error(&wire), FrameError::Padding));
    }
}

#[tokio::test]
async fn thousands_of_frames_cross_a_socket_in_order() {
    use tokio_stream_shim::next;
    let (a, b) = tokio::net::UnixStream::pair().expect("pair");
    let writer = tokio::spawn(async move {
        let mut sink = FramedWrite::new(a, FrameCodec::default());
        for i in 0..5000u64 {
            sink.feed(OutFrame::empty(FrameKind::Ping, i))
                .await
                .expect("send");
        }
        sink.flush().await.expect("flush");
    });
    let mut stream = FramedRead::new(b, FrameCodec::default());
    for i in 0..5000u64 {
        let frame = next(&mut stream).await.expect("frame").expect("valid");
        assert_eq!(frame.call_id(), i);
    }
    writer.await.expect("writer");
    assert!(
        next(&mut stream).await.is_none(),
        "clean EOF after the last frame"
    );
}

/// `FramedRead` is a `Stream`; poll it without another dependency.
mod tokio_stream_shim {
    use std::future::poll_fn;
    use std::pin::Pin;

    use tokio_util::codec::FramedRead;

    pub async fn next<R, C>(s: &mut FramedRead<R, C>) -> Option<Result<C::Item, C::Error>>
    where
        R: tokio::io::AsyncRead + Unpin,
        C: tokio_util::codec::Decoder,
    {
        poll_fn(|cx| futures_core_poll(Pin::new(&mut *s), cx)).await
    }

    fn futures_core_poll<S: futures_util::Stream + ?Sized>(
        s: Pin<&mut S>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        s.poll_next(cx)
    }
}
