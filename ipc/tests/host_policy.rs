//! `HostPolicy`: what a plugin may send the host, and when. Each case is a sequence of what the
//! host does (register a call, ping, grant credit) and frames the plugin sends, with the
//! verdict expected for each frame.

use hm_ipc::host::{CallKind, HostPolicy, Inbound, MAX_CALL_BYTES};
use hm_ipc::messages::{
    CallFailure, HookOutcome, HostCall, LogBatch, LogChunk, LogLevel, LogRecord, PluginReply,
    SubcommandExit,
};
use hm_ipc::{Frame, FrameKind, OutFrame};

/// A step of a case.
enum Step {
    /// The host registers call `id` of `kind`.
    Call(u64, CallKind),
    Ping(u64),
    Grant(u32),
    /// The plugin sends a frame; the policy must accept it as the named kind of inbound, or
    /// refuse it with a message containing the text.
    Send(Frame, Verdict),
}

enum Verdict {
    Log,
    Reply,
    HostCall,
    Oversized,
    Pong,
    Violation(&'static str),
}

fn frame(out: OutFrame) -> Frame {
    let mut frames = hm_ipc::codec::decode_all(&out.to_wire()).expect("a valid frame");
    assert_eq!(frames.len(), 1);
    frames.remove(0)
}

fn reply(call: u64, reply: PluginReply) -> Frame {
    frame(OutFrame::message(FrameKind::Reply, call, &reply).unwrap())
}

fn done() -> PluginReply {
    PluginReply::StepDone(Box::default())
}

fn failed() -> PluginReply {
    PluginReply::Failed(Box::new(CallFailure {
        message: "no".into(),
    }))
}

fn batch(call: u64, stream: u8, bytes: usize) -> Frame {
    let batch = LogBatch {
        chunks: vec![LogChunk {
            stream,
            text: "x".repeat(bytes),
        }],
    };
    frame(OutFrame::message(FrameKind::LogBatch, call, &batch).unwrap())
}

fn log_call(call: u64) -> Frame {
    let call_msg = HostCall::Log(Box::new(LogRecord {
        level: LogLevel::Info,
        message: "hi".into(),
    }));
    frame(OutFrame::message(FrameKind::Call, call, &call_msg).unwrap())
}

fn check(protocol: u32, credit: u32, max_batch: u32, steps: Vec<Step>) {
    let mut policy = HostPolicy::new(protocol, credit, max_batch, MAX_CALL_BYTES);
    for (n, step) in steps.into_iter().enumerate() {
        match step {
            Step::Call(id, kind) => policy.register(id, kind),
            Step::Ping(nonce) => policy.ping(nonce),
            Step::Grant(batches) => policy.grant(batches),
            Step::Send(frame, want) => {
                let got = policy.check(frame);
                match (&got, want) {
                    (Ok(Inbound::Log { .. }), Verdict::Log)
                    | (Ok(Inbound::Reply { .. }), Verdict::Reply)
                    | (Ok(Inbound::HostCall { .. }), Verdict::HostCall)
                    | (Ok(Inbound::OversizedCall { .. }), Verdict::Oversized)
                    | (Ok(Inbound::Pong { .. }), Verdict::Pong) => {}
                    (Err(v), Verdict::Violation(text)) => {
                        assert!(v.0.contains(text), "step {n}: {v} lacks {text:?}")
                    }
                    (got, _) => panic!("step {n}: unexpected verdict {got:?}"),
                }
            }
        }
    }
}

use Step::{Call, Grant, Ping, Send};
use Verdict::{HostCall as Host, Log, Oversized, Pong, Reply, Violation};

#[test]
fn replies_must_answer_a_waiting_call_with_a_kind_that_fits_it() {
    check(
        5,
        8,
        1024,
        vec![Send(reply(1, done()), Violation("never made"))],
    );
    check(
        5,
        8,
        1024,
        vec![
            Call(1, CallKind::Execute),
            Send(reply(1, done()), Reply),
            Send(reply(1, done()), Violation("already had answered")),
        ],
    );
    check(
        5,
        8,
        1024,
        vec![
            Call(1, CallKind::Execute),
            Send(
                reply(
                    1,
                    PluginReply::HookDone(Box::new(HookOutcome { abort: None })),
                ),
                Violation("answered ExecuteStep call 1 with HookDone"),
            ),
        ],
    );
    check(
        5,
        8,
        1024,
        vec![
            Call(2, CallKind::Hook),
            Send(
                reply(2, done()),
                Violation("answered OnEvent call 2 with StepDone"),
            ),
        ],
    );
    check(
        5,
        8,
        1024,
        vec![
            Call(3, CallKind::Hook),
            Send(reply(3, failed()), Reply),
            Call(0, CallKind::Init),
            Send(reply(0, PluginReply::Ready), Reply),
            Call(4, CallKind::Subcommand),
            Send(
                reply(
                    4,
                    PluginReply::SubcommandDone(Box::new(SubcommandExit { exit_code: 3 })),
                ),
                Reply,
            ),
        ],
    );
}

#[test]
fn replies_a_protocol_version_does_not_have_are_violations() {
    let oom = || PluginReply::StepOutOfMemory(Box::default());
    check(
        2,
        8,
        1024,
        vec![
            Call(1, CallKind::Execute),
            Send(reply(1, oom()), Violation("protocol 2 does not have")),
        ],
    );
    check(
        3,
        8,
        1024,
        vec![Call(1, CallKind::Execute), Send(reply(1, oom()), Reply)],
    );
    check(
        4,
        8,
        1024,
        vec![
            Call(1, CallKind::Hook),
            Send(
                reply(
                    1,
                    PluginReply::HookDone(Box::new(HookOutcome { abort: None })),
                ),
                Violation("added in version 5"),
            ),
        ],
    );
}

#[test]
fn output_needs_a_running_step_and_credit_and_fits_in_a_batch() {
    check(
        5,
        2,
        100,
        vec![
            Send(batch(1, 0, 10), Violation("not running")),
            Call(1, CallKind::Execute),
            Send(batch(1, 0, 10), Log),
            Send(batch(1, 1, 100), Log),
            // Two batches in flight, none granted back.
            Send(batch(1, 0, 1), Violation("without credit")),
        ],
    );
    check(
        5,
        1,
        100,
        vec![
            Call(1, CallKind::Execute),
            Send(batch(1, 0, 10), Log),
            Grant(1),
            Send(batch(1, 0, 10), Log),
            Grant(3),
            Send(batch(1, 0, 10), Log),
            Send(batch(1, 0, 10), Log),
            Send(batch(1, 0, 10), Log),
            Send(batch(1, 0, 10), Violation("without credit")),
        ],
    );
    check(
        5,
        8,
        100,
        vec![
            Call(1, CallKind::Execute),
            Send(batch(1, 0, 101), Violation("over the 100 bytes")),
        ],
    );
    check(
        5,
        8,
        100,
        vec![
            Call(1, CallKind::Execute),
            Send(batch(1, 2, 1), Violation("unknown stream 2")),
        ],
    );
    check(
        5,
        8,
        100,
        vec![
            Call(7, CallKind::Hook),
            Send(batch(7, 0, 1), Violation("OnEvent and has none")),
        ],
    );
}

#[test]
fn host_calls_pongs_and_frames_only_hm_may_send() {
    let big = HostCall::Log(Box::new(LogRecord {
        level: LogLevel::Info,
        message: "x".repeat(MAX_CALL_BYTES + 1),
    }));
    check(
        3,
        8,
        1024,
        vec![
            Send(log_call(1), Host),
            Send(
                frame(OutFrame::message(FrameKind::Call, 2, &big).unwrap()),
                Oversized,
            ),
            Send(
                frame(OutFrame::message(FrameKind::Call, 3, &HostCall::OpenArchive).unwrap()),
                Host,
            ),
            Send(
                frame(OutFrame::empty(FrameKind::Pong, 9)),
                Violation("never pinged"),
            ),
            Ping(9),
            Send(frame(OutFrame::empty(FrameKind::Pong, 9)), Pong),
            Send(
                frame(OutFrame::empty(FrameKind::Pong, 9)),
                Violation("answered already"),
            ),
            Send(
                frame(OutFrame::empty(FrameKind::Shutdown, 0)),
                Violation("only hm may send"),
            ),
            Send(
                frame(OutFrame::empty(FrameKind::Cancel, 1)),
                Violation("only hm may send"),
            ),
        ],
    );
    check(
        2,
        8,
        1024,
        vec![Send(
            frame(OutFrame::message(FrameKind::Call, 3, &HostCall::OpenArchive).unwrap()),
            Violation("OpenArchive on protocol 2"),
        )],
    );
    let mut garbled = OutFrame::empty(FrameKind::Call, 4);
    garbled.payload.extend_from_slice(&[0xab; 16]);
    check(
        5,
        8,
        1024,
        vec![Send(frame(garbled), Violation("invalid host call"))],
    );
}

fn put_artifacts(id: u64, step_call: u64, problem: Option<&str>, buffer: Option<&[u8]>) -> Frame {
    let upload = HostCall::PutArtifacts(Box::new(hm_ipc::messages::ArtifactUpload {
        step_call,
        len: buffer.map_or(0, |b| b.len() as u64),
        problem: problem.map(str::to_owned),
    }));
    let mut frame = frame(OutFrame::message(FrameKind::Call, id, &upload).unwrap());
    frame.buffer = buffer.map(|bytes| {
        let sealed = hm_ipc::SealedBuffer::from_bytes("hm-test-put", bytes).unwrap();
        sealed.map().unwrap()
    });
    frame
}

#[test]
fn a_steps_artifacts_come_once_while_it_runs_with_a_buffer_or_a_problem() {
    use Step::{Call, Send};
    use Verdict::{HostCall as Accepted, Reply, Violation};
    let tar: &[u8] = b"a tar";
    check(
        7,
        8,
        1024,
        vec![
            Call(7, CallKind::Execute),
            Send(
                put_artifacts(1, 7, None, None),
                Violation("without its buffer"),
            ),
        ],
    );
    check(
        7,
        8,
        1024,
        vec![
            Call(7, CallKind::Execute),
            Send(
                put_artifacts(1, 7, Some("over"), Some(tar)),
                Violation("both a problem and a buffer"),
            ),
        ],
    );
    check(
        7,
        8,
        1024,
        vec![
            Call(7, CallKind::Execute),
            Send(put_artifacts(1, 7, None, Some(tar)), Accepted),
            Send(put_artifacts(2, 7, Some("again"), None), Violation("twice")),
        ],
    );
    check(
        7,
        8,
        1024,
        vec![
            Call(7, CallKind::Execute),
            Send(put_artifacts(1, 7, Some("over the limit"), None), Accepted),
            Send(reply(7, done()), Reply),
            Send(
                put_artifacts(2, 7, None, Some(tar)),
                Violation("not a running step"),
            ),
        ],
    );
    check(
        6,
        8,
        1024,
        vec![
            Call(7, CallKind::Execute),
            Send(
                put_artifacts(1, 7, Some("x"), None),
                Violation("does not have it (added in version 7)"),
            ),
        ],
    );
    // Only PutArtifacts may bring a buffer.
    let mut log = log_call(3);
    log.buffer = Some(
        hm_ipc::SealedBuffer::from_bytes("hm-test-log", b"x")
            .unwrap()
            .map()
            .unwrap(),
    );
    check(
        7,
        8,
        1024,
        vec![Send(log, Violation("a Log host call, which has none"))],
    );
}

fn placed(id: u64, step_call: u64) -> Frame {
    let call = HostCall::Placed(Box::new(hm_ipc::messages::Placement {
        step_call,
        node: "node-2".into(),
    }));
    frame(OutFrame::message(FrameKind::Call, id, &call).unwrap())
}

#[test]
fn a_step_is_placed_only_while_it_runs_and_only_on_protocol_8() {
    check(
        8,
        8,
        1024,
        vec![
            Call(7, CallKind::Execute),
            Send(placed(1, 7), Host),
            Send(reply(7, done()), Reply),
            Send(placed(2, 7), Violation("not a running step")),
            Send(placed(3, 9), Violation("not a running step")),
        ],
    );
    check(
        7,
        8,
        1024,
        vec![
            Call(7, CallKind::Execute),
            Send(
                placed(1, 7),
                Violation("does not have it (added in version 8)"),
            ),
        ],
    );
}
