//! Golden frames: the exact bytes of one frame of every kind and every message variant are
//! committed under `tests/golden/`, so a change to the wire format cannot go unnoticed.
//! After a deliberate, versioned change, regenerate with `HM_BLESS=1 cargo test -p hm-ipc`.

use std::path::PathBuf;

use hm_ipc::messages::*;
use hm_ipc::{FrameKind, OutFrame};

fn frame<T>(kind: FrameKind, call_id: u64, value: &T) -> OutFrame
where
    T: for<'a> rkyv::Serialize<
            rkyv::api::high::HighSerializer<
                rkyv::util::AlignedVec,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rkyv::rancor::Error,
            >,
        >,
{
    OutFrame::message(kind, call_id, value).expect("golden messages encode")
}

fn cases() -> Vec<(&'static str, OutFrame)> {
    use FrameKind as K;
    let hello = Hello {
        protocol_min: 1,
        protocol_max: 2,
        name: "shell".into(),
        version: "0.1.0".into(),
        capabilities: vec!["executor:shell".into()],
    };
    let welcome = Welcome {
        protocol: 2,
        run_id: "r-0001".into(),
        log_credit: 16,
        max_batch_bytes: 65536,
    };
    let step = ExecuteStep {
        step: "build".into(),
        attempt: 1,
        run: "make".into(),
        dir: "/src".into(),
        env: vec![EnvVar {
            name: "CI".into(),
            value: "true".into(),
        }],
        image: None,
        with_json: "{}".into(),
        grace_ms: 10_000,
        cgroup_procs: vec!["/sys/fs/cgroup/hm/run-1/shell/step-build-1/cgroup.procs".into()],
        limits: StepLimits {
            memory_bytes: Some(64 << 20),
            pids: Some(32),
            cpu_millicores: Some(1500),
        },
    };
    let execute = KernelCall::ExecuteStep(Box::new(step.clone()));
    let execute_v6 = KernelCall::Execute(Box::new(Execute {
        step,
        shell: vec!["sh".into(), "-e".into(), "-c".into()],
    }));
    let init = KernelCall::Init(Box::new(Init {
        config_json: "{\"a\":1}".into(),
        pipeline: "ci".into(),
    }));
    let done = PluginReply::StepDone(Box::new(StepResult {
        exit_code: Some(3),
        signal: None,
        core_dumped: false,
        cancelled: false,
        leaked_processes: 1,
        peak_memory_bytes: Some(1 << 20),
        cpu_ms: Some(12),
    }));
    let failed = PluginReply::Failed(Box::new(CallFailure {
        message: "bad config".into(),
    }));
    let log = HostCall::Log(Box::new(LogRecord {
        level: LogLevel::Warn,
        message: "careful".into(),
    }));
    let kv_set = HostCall::KvSet(Box::new(KvWrite {
        key: KvKey {
            scope: KvScope::Run,
            step_call: 0,
            key: "k".into(),
        },
        value: Some("v".into()),
    }));
    let step_process = HostCall::StepProcess(Box::new(StepProcess {
        step_call: 7,
        pgid: 4242,
    }));
    let value = HostReply::Value(Box::new(Some("v".into())));
    // v3: the archive reply carries the archive's buffer (FLAG_FD); the descriptor itself is
    // not part of the bytes.
    let archive = OutFrame::message(
        K::Reply,
        5,
        &HostReply::Archive(Box::new(ArchiveBuffer { len: 10240 })),
    )
    .expect("golden messages encode")
    .with_buffer(memfd());
    let step_v7 = KernelCall::Step(Box::new(hm_ipc::messages::StepCall {
        execute: match &execute_v6 {
            KernelCall::Execute(execute) => (**execute).clone(),
            _ => unreachable!("execute_v6 is an Execute"),
        },
        artifacts: vec!["dist/**".into(), "target/release/hm".into()],
        artifacts_max_files: 10_000,
        artifacts_max_bytes: 4 << 30,
        caches: vec![hm_ipc::messages::CacheMount {
            volume: "hm-cache-0123456789abcdef".into(),
            path: "/usr/local/cargo/registry".into(),
        }],
    }));
    let attempt_v8 = KernelCall::Attempt(Box::new(AttemptCall {
        step: match &step_v7 {
            KernelCall::Step(call) => (**call).clone(),
            _ => unreachable!("step_v7 is a Step"),
        },
        services: vec!["pg".into()],
    }));
    let start_service = KernelCall::StartService(Box::new(ServiceStart {
        name: "pg".into(),
        image: "postgres:16".into(),
        env: vec![EnvVar {
            name: "POSTGRES_PASSWORD".into(),
            value: "test".into(),
        }],
        entrypoint: None,
        command: Some(vec!["postgres".into(), "-F".into()]),
        ports: vec![5432],
        health: Some(ServiceHealth {
            command: vec!["sh".into(), "-c".into(), "pg_isready".into()],
            interval_ms: 1000,
            timeout_ms: 10_000,
            retries: 30,
        }),
        with_json: "{}".into(),
        limits: StepLimits {
            memory_bytes: Some(256 << 20),
            pids: None,
            cpu_millicores: None,
        },
        grace_ms: 10_000,
    }));
    let service_up = PluginReply::ServiceUp(Box::new(ServiceUp {
        ports: vec![PublishedPort {
            port: 5432,
            host: "127.0.0.1".into(),
            host_port: 49153,
        }],
    }));
    let service_failed = PluginReply::ServiceFailed(Box::new(ServiceFailure {
        image: false,
        message: "did not become healthy after 30 tries".into(),
        log: vec!["starting".into(), "FATAL: bad config".into()],
    }));
    let put_artifacts = OutFrame::message(
        K::Call,
        7,
        &HostCall::PutArtifacts(Box::new(hm_ipc::messages::ArtifactUpload {
            step_call: 7,
            len: 10240,
            problem: None,
        })),
    )
    .expect("golden messages encode")
    .with_buffer(memfd());
    let batch = LogBatch {
        chunks: vec![
            LogChunk {
                stream: 0,
                text: "compiling\nlinking".into(),
            },
            LogChunk {
                stream: 1,
                text: "warning: x".into(),
            },
        ],
    };
    vec![
        ("hello", frame(K::Hello, 0, &hello)),
        ("welcome", frame(K::Welcome, 0, &welcome)),
        (
            "reject",
            frame(
                K::Reject,
                0,
                &Reject {
                    reason: "no".into(),
                },
            ),
        ),
        ("call_execute_step", frame(K::Call, 7, &execute)),
        ("call_execute", frame(K::Call, 7, &execute_v6)),
        ("call_step", frame(K::Call, 7, &step_v7)),
        ("call_attempt", frame(K::Call, 7, &attempt_v8)),
        ("call_start_service", frame(K::Call, 11, &start_service)),
        (
            "call_stop_service",
            frame(
                K::Call,
                12,
                &KernelCall::StopService(Box::new(ServiceStop { name: "pg".into() })),
            ),
        ),
        ("reply_service_up", frame(K::Reply, 11, &service_up)),
        ("reply_service_failed", frame(K::Reply, 11, &service_failed)),
        (
            "reply_service_stopped",
            frame(K::Reply, 12, &PluginReply::ServiceStopped),
        ),
        (
            "host_call_placed",
            frame(
                K::Call,
                3,
                &HostCall::Placed(Box::new(Placement {
                    step_call: 7,
                    node: "node-2".into(),
                })),
            ),
        ),
        (
            "reply_node_lost",
            frame(
                K::Reply,
                7,
                &PluginReply::NodeLost(Box::new(CallFailure {
                    message: "node ci-2 went down while the step ran on it".into(),
                })),
            ),
        ),
        (
            "reply_image_unavailable",
            frame(
                K::Reply,
                7,
                &PluginReply::ImageUnavailable(Box::new(CallFailure {
                    message: "image x:1 is not present locally".into(),
                })),
            ),
        ),
        ("call_init", frame(K::Call, 1, &init)),
        ("reply_step_done", frame(K::Reply, 7, &done)),
        ("reply_ready", frame(K::Reply, 1, &PluginReply::Ready)),
        (
            "call_run_subcommand",
            frame(
                K::Call,
                1,
                &KernelCall::RunSubcommand(Box::new(hm_ipc::messages::RunSubcommand {
                    verb: "greet".into(),
                    args_json: "{\"flag\":\"x\"}".into(),
                })),
            ),
        ),
        (
            "reply_subcommand_done",
            frame(
                K::Reply,
                1,
                &PluginReply::SubcommandDone(Box::new(hm_ipc::messages::SubcommandExit {
                    exit_code: 7,
                })),
            ),
        ),
        (
            "call_on_event",
            frame(
                K::Call,
                9,
                &KernelCall::OnEvent(Box::new(hm_ipc::messages::HookEvent {
                    phase: hm_ipc::messages::HookPhase::Before,
                    kind: "step_start".into(),
                    event_json: "{\"kind\":\"step_start\",\"step\":\"deploy\"}".into(),
                })),
            ),
        ),
        (
            "reply_hook_done",
            frame(
                K::Reply,
                9,
                &PluginReply::HookDone(Box::new(hm_ipc::messages::HookOutcome {
                    abort: Some("frozen".into()),
                })),
            ),
        ),
        ("reply_failed", frame(K::Reply, 1, &failed)),
        ("host_call_log", frame(K::Call, 2, &log)),
        ("host_call_kv_set", frame(K::Call, 3, &kv_set)),
        ("host_call_step_process", frame(K::Call, 4, &step_process)),
        ("host_reply_value", frame(K::Reply, 3, &value)),
        (
            "host_call_open_archive",
            frame(K::Call, 5, &HostCall::OpenArchive),
        ),
        ("host_reply_archive", archive),
        (
            "host_call_open_artifacts",
            frame(
                K::Call,
                6,
                &HostCall::OpenArtifacts(Box::new(hm_ipc::messages::StepRef { step_call: 7 })),
            ),
        ),
        ("host_call_put_artifacts", put_artifacts),
        (
            "host_call_put_artifacts_problem",
            frame(
                K::Call,
                8,
                &HostCall::PutArtifacts(Box::new(hm_ipc::messages::ArtifactUpload {
                    step_call: 7,
                    len: 0,
                    problem: Some("over the limit".into()),
                })),
            ),
        ),
        ("log_batch", frame(K::LogBatch, 7, &batch)),
        (
            "credit",
            frame(K::Credit, 0, &hm_ipc::messages::Credit { batches: 4 }),
        ),
        ("cancel", OutFrame::empty(K::Cancel, 7)),
        ("ping", OutFrame::empty(K::Ping, 99)),
        ("pong", OutFrame::empty(K::Pong, 99)),
        ("shutdown", OutFrame::empty(K::Shutdown, 0)),
    ]
}

/// Any descriptor will do: golden frames are bytes, and the descriptor is not among them.
fn memfd() -> std::os::fd::OwnedFd {
    hm_ipc::SealedBuffer::from_bytes("hm-golden", b"")
        .and_then(|b| b.share())
        .expect("a memfd")
}

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn every_frame_matches_its_committed_bytes() {
    let bless = std::env::var_os("HM_BLESS").is_some();
    let mut mismatched = Vec::new();
    for (name, frame) in cases() {
        let path = golden_dir().join(format!("{name}.bin"));
        let bytes = frame.to_wire();
        if bless {
            std::fs::write(&path, &bytes).expect("write golden frame");
            continue;
        }
        match std::fs::read(&path) {
            Ok(expected) if expected == bytes => {}
            Ok(_) => mismatched.push(format!("{name}: bytes differ from {}", path.display())),
            Err(e) => mismatched.push(format!("{name}: cannot read {}: {e}", path.display())),
        }
    }
    assert!(
        mismatched.is_empty(),
        "the wire format changed (bump the protocol version and HM_BLESS=1 if deliberate):\n{}",
        mismatched.join("\n")
    );
}

#[test]
fn committed_golden_frames_decode_and_validate() {
    for (name, frame) in cases() {
        let bytes = std::fs::read(golden_dir().join(format!("{name}.bin"))).expect("golden file");
        let frames = hm_ipc::codec::decode_all(&bytes).expect("golden frame decodes");
        assert_eq!(frames.len(), 1, "{name}");
        let got = &frames[0];
        assert_eq!(got.kind(), frame.kind, "{name}");
        assert_eq!(got.call_id(), frame.call_id, "{name}");
        assert_eq!(got.header.flags, frame.flags(), "{name}");
        assert_eq!(got.payload.as_slice(), frame.payload.as_slice(), "{name}");
    }
    // Hello is frozen: an old kernel must read it. Check the fields survive the round trip.
    let bytes = std::fs::read(golden_dir().join("hello.bin")).expect("hello golden");
    let frames = hm_ipc::codec::decode_all(&bytes).expect("decode");
    let hello: Hello = frames[0].decode().expect("hello validates");
    assert_eq!(hello.name, "shell");
    assert_eq!(hello.capabilities, vec!["executor:shell".to_string()]);
}
