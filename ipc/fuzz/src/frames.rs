//! Feeding untrusted bytes to the frame decoder and the payload validators, the way a peer's
//! bytes reach them: nothing here may panic, whatever the input.

use bytes::BytesMut;
use hm_ipc::codec::{Frame, FrameCodec, WireError};
use hm_ipc::messages::{
    ArchivedCredit, ArchivedHello, ArchivedHostCall, ArchivedHostReply, ArchivedKernelCall,
    ArchivedLogBatch, ArchivedPluginReply, ArchivedReject, ArchivedWelcome, Credit, Hello,
    HostCall, HostReply, KernelCall, LogBatch, PluginReply, Reject, Welcome,
};
use hm_ipc::{FrameError, FrameKind};
use tokio_util::codec::Decoder;

/// What one input got through, for a corpus to check that it reaches past the header checks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Exercised {
    /// Frames the codec accepted.
    pub frames: usize,
    /// Payloads that validated as some message type their frame kind can carry.
    pub valid_payloads: usize,
}

impl std::ops::AddAssign for Exercised {
    fn add_assign(&mut self, other: Self) {
        self.frames += other.frames;
        self.valid_payloads += other.valid_payloads;
    }
}

/// Decodes every frame of `bytes` up to the first error (as a connection would have handled
/// them), then validates each frame's payload as every message type its kind can carry and
/// reads what validated.
pub fn decode_and_validate(bytes: &[u8]) -> Exercised {
    let whole = hm_ipc::codec::decode_all(bytes);
    let (frames, error) = decode_in_chunks(bytes, &[bytes.len()]);
    match &whole {
        Ok(all) => assert!(
            error.is_none() && all.len() == frames.len(),
            "decode_all and the codec disagree"
        ),
        Err(_) => assert!(error.is_some(), "decode_all and the codec disagree"),
    }
    let mut seen = Exercised::default();
    for frame in &frames {
        seen.frames += 1;
        if validate(frame) {
            seen.valid_payloads += 1;
        }
    }
    seen
}

/// Asserts that feeding `bytes` to the decoder in pieces of `sizes` (cycled), as reads from a
/// socket arrive, gives the same frames and the same error as feeding it all at once.
pub fn assert_split_invariant(bytes: &[u8], sizes: &[usize]) {
    let (whole, whole_error) = decode_in_chunks(bytes, &[bytes.len()]);
    let (split, split_error) = decode_in_chunks(bytes, sizes);
    let brief = |frames: &[Frame]| -> Vec<(FrameKind, u64, Vec<u8>)> {
        frames
            .iter()
            .map(|f| (f.kind(), f.call_id(), f.payload.to_vec()))
            .collect()
    };
    assert_eq!(
        brief(&whole),
        brief(&split),
        "read sizes changed the frames"
    );
    assert_eq!(
        whole_error.map(|e| e.to_string()),
        split_error.map(|e| e.to_string()),
        "read sizes changed the error"
    );
}

/// Feeds `bytes` to one decoder in pieces of `sizes` (cycled; zeros ignored), decoding after
/// each piece, then ends the input. Returns the frames before the first error, and the error.
fn decode_in_chunks(bytes: &[u8], sizes: &[usize]) -> (Vec<Frame>, Option<WireError>) {
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = bytes;
    let mut sizes = sizes.iter().copied().filter(|&s| s > 0).cycle();
    while !rest.is_empty() {
        let n = sizes.next().unwrap_or(rest.len()).min(rest.len());
        buf.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => return (frames, None),
            Err(e) => return (frames, Some(e)),
        }
    }
}

/// Validates `frame`'s payload as every type its kind can carry; true if one of them took it.
fn validate(frame: &Frame) -> bool {
    match frame.kind() {
        FrameKind::Hello => both::<Hello, ArchivedHello>(frame, |h| {
            touch(h.name.as_str()) + touch(h.version.as_str()) + h.capabilities.len()
        }),
        FrameKind::Welcome => both::<Welcome, ArchivedWelcome>(frame, |w| touch(w.run_id.as_str())),
        FrameKind::Reject => both::<Reject, ArchivedReject>(frame, |r| touch(r.reason.as_str())),
        // A call is a `KernelCall` one way and a `HostCall` the other; a reply likewise.
        FrameKind::Call => {
            both::<KernelCall, ArchivedKernelCall>(frame, |_| 0)
                | both::<HostCall, ArchivedHostCall>(frame, |_| 0)
        }
        FrameKind::Reply => {
            both::<PluginReply, ArchivedPluginReply>(frame, |_| 0)
                | both::<HostReply, ArchivedHostReply>(frame, |_| 0)
        }
        FrameKind::LogBatch => both::<LogBatch, ArchivedLogBatch>(frame, |b| {
            b.chunks
                .iter()
                .map(|c| c.lines().map(str::len).sum::<usize>() + usize::from(c.stream))
                .sum()
        }),
        FrameKind::Credit => {
            both::<Credit, ArchivedCredit>(frame, |c| c.batches.to_native() as usize)
        }
        // Their meaning is all in the header; a payload is still just bytes to ignore.
        FrameKind::Cancel | FrameKind::Ping | FrameKind::Pong | FrameKind::Shutdown => {
            frame.payload.is_empty()
        }
    }
}

/// `access` then `decode` as `T`; `read` walks the archived value. Both must agree on whether
/// the payload is valid. Returns whether it is.
fn both<T, A>(frame: &Frame, read: impl Fn(&A) -> usize) -> bool
where
    T: rkyv::Archive<Archived = A>,
    A: rkyv::Portable
        + for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
{
    let accessed = frame
        .access::<A>()
        .map(|archived| std::hint::black_box(read(archived)));
    let decoded = frame.decode::<T>();
    assert_eq!(
        accessed.is_ok(),
        decoded.is_ok(),
        "access and decode disagree on a {:?} payload",
        frame.kind()
    );
    if let Err(e) = &decoded {
        assert!(
            matches!(e, FrameError::InvalidPayload { .. }),
            "an invalid payload is reported as such, got {e:?}"
        );
    }
    decoded.is_ok()
}

fn touch(s: &str) -> usize {
    s.len()
}
