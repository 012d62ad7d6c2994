//! A deterministic corpus of 20,000 hostile inputs for the frame decoder and the payload
//! validators: random bytes, valid headers with random payloads, and valid frames mutated (bit
//! flips, truncation, changed length, kind and call-id fields, spliced streams). It runs the
//! same code as the libFuzzer target in `ipc/fuzz/` (included from there), on stable and in
//! every test run: nothing may panic, and the golden frames must still decode.

#[path = "../fuzz/src/frames.rs"]
mod frames;

use std::path::PathBuf;

use frames::{Exercised, assert_split_invariant, decode_and_validate};
use hm_ipc::messages::{
    CallFailure, Credit, Hello, HostCall, HostReply, Init, KernelCall, KvKey, KvScope, KvWrite,
    LogBatch, LogChunk, LogLevel, LogRecord, PluginReply, Reject, StepProcess, StepResult, Welcome,
};
use hm_ipc::{FrameKind, HEADER_LEN, INLINE_CAP, OutFrame};

const INPUTS: usize = 20_000;

/// xorshift64*: tiny, deterministic, good enough to scatter mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }

    /// Short text, sometimes with newlines, multi-byte characters or NULs.
    fn text(&mut self) -> String {
        const PIECES: &[&str] = &["a", "line", "\n", "é", "☃", "\0", " ", "executor:x", "{}"];
        let n = self.below(12);
        (0..n).map(|_| PIECES[self.below(PIECES.len())]).collect()
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Every committed golden frame, by file name, in a stable order.
fn golden_frames() -> Vec<(String, Vec<u8>)> {
    let mut frames: Vec<(String, Vec<u8>)> = std::fs::read_dir(golden_dir())
        .expect("the golden frames directory")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "bin"))
        .map(|path| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let bytes = std::fs::read(&path).expect("read a golden frame");
            (name, bytes)
        })
        .collect();
    frames.sort();
    assert!(frames.len() >= 10, "golden frames are missing: {frames:?}");
    frames
}

/// A valid frame of a random kind with random contents.
fn generated_frame(rng: &mut Rng) -> Vec<u8> {
    let call = rng.next() >> rng.below(64);
    let frame = match rng.below(14) {
        0 => OutFrame::message(
            FrameKind::Hello,
            0,
            &Hello {
                protocol_min: rng.below(4) as u32,
                protocol_max: rng.below(4) as u32,
                name: rng.text(),
                version: rng.text(),
                capabilities: (0..rng.below(4)).map(|_| rng.text()).collect(),
            },
        ),
        1 => OutFrame::message(
            FrameKind::Welcome,
            0,
            &Welcome {
                protocol: rng.next() as u32,
                run_id: rng.text(),
                log_credit: rng.next() as u32,
                max_batch_bytes: rng.next() as u32,
            },
        ),
        2 => OutFrame::message(FrameKind::Reject, 0, &Reject { reason: rng.text() }),
        3 => OutFrame::message(
            FrameKind::Call,
            call,
            &KernelCall::Init(Box::new(Init {
                config_json: rng.text(),
                pipeline: rng.text(),
            })),
        ),
        4 => OutFrame::message(
            FrameKind::Call,
            call,
            &HostCall::Log(Box::new(LogRecord {
                level: [
                    LogLevel::Error,
                    LogLevel::Warn,
                    LogLevel::Info,
                    LogLevel::Debug,
                ][rng.below(4)],
                message: rng.text(),
            })),
        ),
        5 => {
            let key = KvKey {
                scope: [KvScope::Plugin, KvScope::Run, KvScope::Step][rng.below(3)],
                step_call: rng.next(),
                key: rng.text(),
            };
            let call_body = if rng.one_in(2) {
                HostCall::KvGet(Box::new(key))
            } else {
                HostCall::KvSet(Box::new(KvWrite {
                    key,
                    value: rng.one_in(2).then(|| rng.text()),
                }))
            };
            OutFrame::message(FrameKind::Call, call, &call_body)
        }
        6 => OutFrame::message(
            FrameKind::Call,
            call,
            &HostCall::StepProcess(Box::new(StepProcess {
                step_call: rng.next(),
                pgid: rng.next() as i32,
            })),
        ),
        7 => OutFrame::message(FrameKind::Call, call, &HostCall::ReadConfig),
        8 => {
            let reply = match rng.below(3) {
                0 => PluginReply::Ready,
                1 => PluginReply::Failed(Box::new(CallFailure {
                    message: rng.text(),
                })),
                _ => PluginReply::StepDone(Box::new(StepResult {
                    exit_code: rng.one_in(2).then(|| rng.next() as i32),
                    signal: rng.one_in(2).then(|| rng.below(64) as i32),
                    core_dumped: rng.one_in(2),
                    leaked_processes: rng.next() as u32,
                    ..StepResult::default()
                })),
            };
            OutFrame::message(FrameKind::Reply, call, &reply)
        }
        9 => {
            let reply = match rng.below(3) {
                0 => HostReply::Ok,
                1 => HostReply::Value(Box::new(rng.one_in(2).then(|| rng.text()))),
                _ => HostReply::Error(Box::new(CallFailure {
                    message: rng.text(),
                })),
            };
            OutFrame::message(FrameKind::Reply, call, &reply)
        }
        10 | 11 => {
            let chunks = (0..rng.below(5))
                .map(|_| LogChunk {
                    stream: rng.below(2) as u8,
                    text: rng.text(),
                })
                .collect();
            OutFrame::message(FrameKind::LogBatch, call, &LogBatch { chunks })
        }
        12 => OutFrame::message(
            FrameKind::Credit,
            0,
            &Credit {
                batches: rng.next() as u32,
            },
        ),
        _ => Ok(OutFrame::empty(
            *rng.pick(&[
                FrameKind::Cancel,
                FrameKind::Ping,
                FrameKind::Pong,
                FrameKind::Shutdown,
            ]),
            call,
        )),
    };
    frame.expect("generated messages encode").to_wire()
}

/// A valid frame: a golden one or a generated one.
fn valid_frame(rng: &mut Rng, golden: &[(String, Vec<u8>)]) -> Vec<u8> {
    if rng.one_in(2) {
        rng.pick(golden).1.clone()
    } else {
        generated_frame(rng)
    }
}

/// One to three valid frames back to back, as they arrive on a socket.
fn valid_stream(rng: &mut Rng, golden: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut stream = Vec::new();
    for _ in 0..=rng.below(3) {
        stream.extend(valid_frame(rng, golden));
    }
    stream
}

/// Random bytes; half of the time behind the right magic, so the header checks go further.
fn random_bytes(rng: &mut Rng) -> Vec<u8> {
    let max = if rng.one_in(4) { 2048 } else { 64 };
    let len = rng.below(max);
    let mut bytes = rng.bytes(len);
    if rng.one_in(2) && bytes.len() >= 4 {
        bytes[..4].copy_from_slice(b"HMF1");
    }
    bytes
}

/// A well-formed header of any kind (and sometimes an unknown one) and a payload of random
/// bytes of the length it states, padded correctly: only the validators stand in the way.
fn random_payload(rng: &mut Rng) -> Vec<u8> {
    let kind = rng.below(12) as u16;
    let max = if rng.one_in(8) { 4096 } else { 160 };
    let len = rng.below(max);
    let mut frame = OutFrame::empty(FrameKind::Ping, rng.next()).to_wire();
    frame[4..6].copy_from_slice(&kind.to_le_bytes());
    frame[8..12].copy_from_slice(&(len as u32).to_le_bytes());
    frame.extend(rng.bytes(len));
    frame.resize(HEADER_LEN + len.div_ceil(8) * 8, 0);
    frame
}

/// A valid stream with a few bits flipped; half of the time only in the first payload, so the
/// header survives and the validators meet a damaged archive.
fn bit_flipped(rng: &mut Rng, golden: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut bytes = valid_stream(rng, golden);
    let payload_only = rng.one_in(2) && bytes.len() > HEADER_LEN;
    for _ in 0..=rng.below(8) {
        let at = if payload_only {
            HEADER_LEN + rng.below(bytes.len() - HEADER_LEN)
        } else {
            rng.below(bytes.len())
        };
        bytes[at] ^= 1 << rng.below(8);
    }
    bytes
}

fn truncated(rng: &mut Rng, golden: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut bytes = valid_stream(rng, golden);
    let keep = rng.below(bytes.len());
    bytes.truncate(keep);
    bytes
}

/// A valid stream whose first header has its length, kind, call id, flags or reserved field
/// changed.
fn header_changed(rng: &mut Rng, golden: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut bytes = valid_stream(rng, golden);
    let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    match rng.below(5) {
        0 | 1 => {
            let nudge = 1 + rng.below(16) as u32;
            let choices = [
                rng.next() as u32,
                len.wrapping_add(nudge),
                len.wrapping_sub(nudge),
                0,
                INLINE_CAP as u32,
                INLINE_CAP as u32 + 1,
                u32::MAX,
            ];
            let new_len = *rng.pick(&choices);
            bytes[8..12].copy_from_slice(&new_len.to_le_bytes());
        }
        // Another kind's validator meets this payload.
        2 => bytes[4..6].copy_from_slice(&(rng.below(13) as u16).to_le_bytes()),
        3 => bytes[16..24].copy_from_slice(&rng.next().to_le_bytes()),
        _ => {
            let at = *rng.pick(&[6, 7, 12, 13, 14, 15]);
            bytes[at] = 1 + rng.below(255) as u8;
        }
    }
    bytes
}

/// The start of one valid stream glued to the end of another.
fn spliced(rng: &mut Rng, golden: &[(String, Vec<u8>)]) -> Vec<u8> {
    let a = valid_stream(rng, golden);
    let b = valid_stream(rng, golden);
    let mut bytes = a[..rng.below(a.len() + 1)].to_vec();
    bytes.extend_from_slice(&b[rng.below(b.len() + 1)..]);
    bytes
}

#[test]
fn golden_frames_decode_and_validate() {
    for (name, bytes) in golden_frames() {
        assert_eq!(
            decode_and_validate(&bytes),
            Exercised {
                frames: 1,
                valid_payloads: 1
            },
            "{name}"
        );
    }
}

#[test]
fn generated_valid_frames_decode_and_validate() {
    let mut rng = Rng(0x5eed_0000_0000_0001);
    for i in 0..2_000 {
        let bytes = generated_frame(&mut rng);
        assert_eq!(
            decode_and_validate(&bytes),
            Exercised {
                frames: 1,
                valid_payloads: 1
            },
            "generated frame {i}: {bytes:02x?}"
        );
    }
}

#[test]
fn twenty_thousand_hostile_inputs_never_panic_the_decoder_or_the_validators() {
    let golden = golden_frames();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut by_kind = [Exercised::default(); 6];
    for i in 0..INPUTS {
        let kind = i % by_kind.len();
        let input = match kind {
            0 => random_bytes(&mut rng),
            1 => random_payload(&mut rng),
            2 => bit_flipped(&mut rng, &golden),
            3 => truncated(&mut rng, &golden),
            4 => header_changed(&mut rng, &golden),
            _ => spliced(&mut rng, &golden),
        };
        let seen = std::panic::catch_unwind(|| decode_and_validate(&input)).unwrap_or_else(|_| {
            panic!("input {i} (generator {kind}) panicked the decoder: {input:02x?}")
        });
        by_kind[kind] += seen;
        if i % 8 == 0 {
            let sizes = [1 + rng.below(64), 1, HEADER_LEN];
            if std::panic::catch_unwind(|| assert_split_invariant(&input, &sizes)).is_err() {
                panic!("input {i} decodes differently read in pieces of {sizes:?}: {input:02x?}");
            }
        }
    }
    // The corpus must reach past the header checks, and the validators must see both valid
    // and damaged archives, or it tests nothing.
    let [_, random_payloads, flipped, cut, changed, glued] = by_kind;
    assert!(
        random_payloads.frames > 2_000,
        "headers with random payloads decode: {random_payloads:?}"
    );
    assert!(
        random_payloads.valid_payloads < random_payloads.frames,
        "random payloads are mostly refused: {random_payloads:?}"
    );
    for (what, seen) in [
        ("bit flips", flipped),
        ("truncation", cut),
        ("header changes", changed),
        ("splicing", glued),
    ] {
        assert!(
            seen.frames > 300 && seen.valid_payloads > 100,
            "{what}: some frames still decode and validate: {seen:?}"
        );
    }
    assert!(
        flipped.valid_payloads < flipped.frames,
        "bit flips in payloads are caught by validation: {flipped:?}"
    );
    // The decoder keeps no state between inputs, but check anyway that it still reads the
    // golden frames after all that.
    for (name, bytes) in &golden {
        assert_eq!(decode_and_validate(bytes).valid_payloads, 1, "{name}");
    }
}
