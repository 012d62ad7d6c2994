//! The workspace archive through the SDK (`StepContext::open_archive`), driven by
//! `hm_sdk::testing`: a 256 MiB archive arrives mapped and byte-exact (its SHA-256 equals the
//! test's), the plugin holds no mapping or descriptor of it once the step has answered, an
//! unsealed memfd from "hm" is a protocol violation, a kernel without shared buffers is told
//! apart, and host-API values above the 64 KiB threshold (shared buffers on v3) arrive intact.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;

use futures_util::StreamExt;
use hm_ipc::messages::{
    ArchiveBuffer, ExecuteStep, Hello, HostCall, HostReply, KernelCall, PluginReply, Welcome,
};
use hm_ipc::{BufferWriter, FrameKind, FrameReader, OutFrame, SealedBuffer};
use hm_sdk::testing::{Harness, HarnessOptions, step};
use hm_sdk::{Executor, Plugin, ServeError, StepContext, StepError, StepRequest, StepResult};
use sha2::{Digest, Sha256};

const MIB: usize = 1024 * 1024;

/// Opens the archive and prints its length and SHA-256 (read through `Read`, in 1 MiB
/// pieces), or the error.
struct HashArchive;

impl Executor for HashArchive {
    async fn execute(&self, _: StepRequest, ctx: StepContext) -> Result<StepResult, StepError> {
        let mut archive = ctx.open_archive().await?;
        let len = archive.len();
        let mut hasher = Sha256::new();
        let mut piece = vec![0u8; MIB];
        loop {
            let n = archive
                .read(&mut piece)
                .map_err(|e| StepError::Message(e.to_string()))?;
            if n == 0 {
                break;
            }
            hasher.update(&piece[..n]);
        }
        // In place too: the same bytes, no copy.
        let first = archive.first().copied();
        drop(archive);
        ctx.line(hm_sdk::OutputStream::Stdout, format!("len {len}"))
            .await?;
        ctx.line(
            hm_sdk::OutputStream::Stdout,
            format!("sha256 {}", hex(&hasher.finalize())),
        )
        .await?;
        ctx.line(hm_sdk::OutputStream::Stdout, format!("first {first:?}"))
            .await?;
        Ok(StepResult {
            exit_code: Some(0),
            ..StepResult::default()
        })
    }
}

fn plugin() -> Plugin {
    Plugin::new("test-archive", "0.0.0").executor("archive", HashArchive)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A sealed buffer of `len` bytes of varied content, named `name`.
fn archive_of(name: &str, len: usize) -> SealedBuffer {
    let mut writer = BufferWriter::new(name).expect("memfd");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let piece: Vec<u8> = (0..MIB)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let mut left = len;
    let mut index = 0u64;
    while left > 0 {
        // Each MiB differs from the others: its first bytes are its index.
        let n = left.min(MIB);
        writer.write_all(&index.to_le_bytes()).expect("fill");
        writer.write_all(&piece[8..n.max(8)]).expect("fill");
        left = left.saturating_sub(n.max(8));
        index += 1;
    }
    writer.seal().expect("seal")
}

/// Descriptors and mappings of memfd `name` in this process.
fn memfd_traces(name: &str) -> (usize, usize) {
    let needle = format!("memfd:{name}");
    let fds = std::fs::read_dir("/proc/self/fd")
        .expect("fd dir")
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|target| target.to_string_lossy().contains(&needle))
        .count();
    let maps = std::fs::read_to_string("/proc/self/maps")
        .expect("maps")
        .lines()
        .filter(|l| l.contains(&needle))
        .count();
    (fds, maps)
}

#[tokio::test]
async fn a_plugin_reads_a_256_mib_archive_in_place_and_its_sha256_matches() {
    let name = "hm-test-archive-256";
    let archive = archive_of(name, 256 * MIB);
    let expected = {
        let view = archive.map().expect("map");
        hex(&Sha256::digest(view.as_slice()))
    };
    assert_eq!(memfd_traces(name), (1, 0), "only the test's own descriptor");
    let harness = Harness::start(plugin()).await.unwrap();
    harness.provide_archive(archive);
    let run = harness.execute(step("hash")).await.unwrap();
    assert_eq!(
        run.result.as_ref().map(|r| r.exit_code),
        Ok(Some(0)),
        "{run:?}"
    );
    assert_eq!(
        run.stdout(),
        [
            format!("len {}", 256 * MIB).as_str(),
            format!("sha256 {expected}").as_str(),
            "first Some(0)",
        ]
    );
    assert_eq!(harness.archive_requests(), 1);
    // The plugin answered: it holds no mapping and no descriptor of the archive (the one
    // descriptor left is the harness's own, playing hm's).
    assert_eq!(memfd_traces(name), (1, 0));
    harness.shutdown().await.unwrap();
}

#[tokio::test]
async fn every_open_is_its_own_mapping_of_the_same_bytes() {
    let name = "hm-test-archive-twice";
    let harness = Harness::start(plugin()).await.unwrap();
    harness.provide_archive(SealedBuffer::from_bytes(name, b"tar bytes").expect("buffer"));
    let first = harness.start_execute(step("a")).unwrap();
    let second = harness.start_execute(step("b")).unwrap();
    let (first, second) = (
        first.finish().await.unwrap(),
        second.finish().await.unwrap(),
    );
    let sha = hex(&Sha256::digest(b"tar bytes"));
    for run in [&first, &second] {
        assert_eq!(run.stdout()[1], format!("sha256 {sha}"), "{run:?}");
    }
    assert_eq!(harness.archive_requests(), 2);
    assert_eq!(memfd_traces(name), (1, 0));
    harness.shutdown().await.unwrap();
}

#[tokio::test]
async fn no_archive_is_a_step_error_not_a_crash() {
    let harness = Harness::start(plugin()).await.unwrap();
    let run = harness.execute(step("hash")).await.unwrap();
    let error = run.result.unwrap_err();
    assert!(
        error.contains("could not provide the workspace archive"),
        "{error}"
    );
    harness.shutdown().await.unwrap();
}

#[tokio::test]
async fn on_protocol_2_open_archive_says_hm_is_too_old() {
    let options = HarnessOptions {
        protocol_max: 2,
        ..Default::default()
    };
    let harness = Harness::start_with(plugin(), options).await.unwrap();
    harness.provide_archive(SealedBuffer::from_bytes("hm-test-v2", b"x").expect("buffer"));
    let run = harness.execute(step("hash")).await.unwrap();
    let error = run.result.unwrap_err();
    assert!(
        error.contains("protocol 2") && error.contains("upgrade hm"),
        "{error}"
    );
    assert_eq!(harness.archive_requests(), 0, "nothing was asked on v2");
    harness.shutdown().await.unwrap();
}

/// Plays hm by hand up to the plugin's `OpenArchive`, and answers it with `fd`; returns what
/// the plugin's serve loop returned.
async fn answer_open_archive_with(fd: OwnedFd, len: u64) -> Result<(), ServeError> {
    let (kernel_end, plugin_end) = tokio::net::UnixStream::pair().unwrap();
    let serve = tokio::spawn(hm_sdk::serve_on(plugin(), plugin_end));
    let (read_half, write_half) = hm_ipc::socket::split(kernel_end).unwrap();
    let mut frames = FrameReader::new(read_half);
    let (out, _writer) = hm_ipc::transport::spawn_writer(write_half);
    let hello: Hello = frames.next().await.unwrap().unwrap().decode().unwrap();
    assert_eq!(hello.protocol_max, hm_ipc::PROTOCOL_MAX);
    let welcome = Welcome {
        protocol: hm_ipc::PROTOCOL_MAX,
        run_id: "hand".into(),
        log_credit: 8,
        max_batch_bytes: 65536,
    };
    out.send(OutFrame::message(FrameKind::Welcome, 0, &welcome).unwrap())
        .unwrap();
    frames.allow_fds(true);
    let execute = KernelCall::ExecuteStep(Box::new(ExecuteStep {
        run: "hash".into(),
        ..step("hash")
    }));
    out.send(OutFrame::message(FrameKind::Call, 1, &execute).unwrap())
        .unwrap();
    let call = frames.next().await.unwrap().unwrap();
    assert_eq!(call.kind(), FrameKind::Call);
    assert_eq!(call.decode::<HostCall>().unwrap(), HostCall::OpenArchive);
    let reply = HostReply::Archive(Box::new(ArchiveBuffer { len }));
    out.send(
        OutFrame::message(FrameKind::Reply, call.call_id(), &reply)
            .unwrap()
            .with_buffer(fd),
    )
    .unwrap();
    // On success the plugin answers the step; on a violation it fails it ("lost the
    // connection to hm") and ends the connection.
    let done: PluginReply = loop {
        let frame = frames.next().await.unwrap().unwrap();
        if frame.kind() == FrameKind::Reply {
            break frame.decode().unwrap();
        }
    };
    let served_ok = matches!(done, PluginReply::StepDone(_));
    drop(out);
    let served = serve.await.unwrap();
    assert_eq!(served_ok, served.is_ok(), "{done:?} {served:?}");
    served
}

/// A memfd with `bytes` and no seals at all.
fn unsealed(bytes: &[u8]) -> OwnedFd {
    use nix::sys::memfd::{MFdFlags, memfd_create};
    let fd = memfd_create(
        "hm-test-unsealed",
        MFdFlags::MFD_ALLOW_SEALING | MFdFlags::MFD_CLOEXEC,
    )
    .unwrap();
    let mut file = std::fs::File::from(fd);
    file.write_all(bytes).unwrap();
    OwnedFd::from(file)
}

#[tokio::test]
async fn an_unsealed_memfd_from_hm_is_a_protocol_violation() {
    let served = answer_open_archive_with(unsealed(b"changeable"), 10).await;
    match served {
        Err(ServeError::Wire(e)) => {
            let message = e.to_string();
            assert!(
                message.contains("protocol violation") && message.contains("not sealed"),
                "{message}"
            );
        }
        other => panic!("expected a protocol violation, got {other:?}"),
    }
}

#[tokio::test]
async fn an_archive_whose_length_is_not_the_buffers_is_a_protocol_violation() {
    let buffer = SealedBuffer::from_bytes("hm-test-short", b"1234").unwrap();
    let served = answer_open_archive_with(buffer.share().unwrap(), 5).await;
    assert!(
        matches!(&served, Err(ServeError::Protocol(m)) if m.contains("5 bytes")),
        "{served:?}"
    );
    // And the same by hand with the right length works, proving the scaffold itself.
    let served = answer_open_archive_with(buffer.share().unwrap(), 4).await;
    assert!(served.is_ok(), "{served:?}");
}

/// Stores a value of `len` bytes in the run scope, reads it back and says whether it is the
/// same: both the call and the reply are above the shared-buffer threshold.
struct BigValue;

impl Executor for BigValue {
    async fn execute(&self, step: StepRequest, ctx: StepContext) -> Result<StepResult, StepError> {
        let len: usize = step
            .run
            .parse()
            .map_err(|_| StepError::Message("len".into()))?;
        let value: String = (0..len)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        ctx.kv_set(hm_sdk::KvScope::Run, "big", Some(value.clone()))
            .await?;
        let back = ctx.kv_get(hm_sdk::KvScope::Run, "big").await?;
        let same = back.as_deref() == Some(value.as_str());
        ctx.line(hm_sdk::OutputStream::Stdout, format!("same {same}"))
            .await?;
        Ok(StepResult {
            exit_code: Some(0),
            ..StepResult::default()
        })
    }
}

#[tokio::test]
async fn values_above_the_threshold_round_trip_through_shared_buffers() {
    for protocol_max in [hm_ipc::PROTOCOL_MAX, 2] {
        let options = HarnessOptions {
            protocol_max,
            ..Default::default()
        };
        let plugin = Plugin::new("test-big", "0.0.0").executor("big", BigValue);
        let harness = Harness::start_with(plugin, options).await.unwrap();
        for len in [hm_ipc::SHM_THRESHOLD - 100, 3 * hm_ipc::SHM_THRESHOLD] {
            let run = harness.execute(step(&len.to_string())).await.unwrap();
            assert_eq!(
                run.stdout(),
                ["same true"],
                "v{protocol_max}, {len}: {run:?}"
            );
            let stored = harness.kv(hm_sdk::KvScope::Run, 0, "big").unwrap();
            assert_eq!(stored.len(), len);
        }
        harness.shutdown().await.unwrap();
    }
}
