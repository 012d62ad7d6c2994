//! Fixture plugin that breaks the protocol in the middle of a step. Executor `wire` does the
//! handshake through the SDK, writes `FIXTURE_LINES` lines that hm provably has, then writes the
//! bytes the step's `WIRE` names straight to its socket (the fd `HM_IPC_FD` named), behind the
//! SDK's back:
//!
//! - `garbage`: text and noise instead of a frame header;
//! - `oversized`: a `LogBatch` header whose length exceeds the 16 MiB inline cap;
//! - `truncated`: the first half of a valid `LogBatch` frame, then the plugin exits with a
//!   frame from hm unread (so hm sees the connection reset, not a clean end of file);
//! - `bad-payload`: a valid `LogBatch` header followed by bytes that are no rkyv archive;
//! - `bad-stream`: a valid `LogBatch` archive whose chunk names stream 7 (only 0 and 1 exist);
//! - `hello`: a second `Hello`, after the handshake;
//! - `welcome`: a `Welcome`, which only hm may send;
//! - `unknown-reply`: a `StepDone` reply to a call hm never made;
//! - `flood`: `FLOOD_MIB` MiB (default 1024) of log batches, one 1 KiB line each, sixteen to a
//!   write, as fast as the socket takes them, without ever waiting for credit. Sixteen small
//!   frames travel in one piece, so whatever hm's pace, one read brings it twice its credit of
//!   eight (a flood of large batches, one at a time, can be rendered as fast as it comes).
//!
//! A kernel that notices kills the plugin. One that does not answers the host call made right
//! after, and the step then passes, so a test sees the difference without waiting on a clock.

use std::os::fd::RawFd;
use std::time::Duration;

use hm_ipc::messages::{Hello, LogBatch, LogChunk, PluginReply, StepResult, Welcome};
use hm_ipc::{FrameKind, INLINE_CAP, OutFrame};
use hm_sdk::{Executor, Plugin, StepContext, StepError, StepRequest};
use hm_tests::fixture;

struct Wire;

impl Executor for Wire {
    async fn execute(&self, step: StepRequest, ctx: StepContext) -> Result<StepResult, StepError> {
        let mode = fixture::var(&step, "WIRE").unwrap_or_default().to_owned();
        if mode == "flood" {
            fixture::write_confirmed_lines(&step, &ctx).await?;
            let mib: usize = fixture::var(&step, "FLOOD_MIB")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1024);
            flood(fixture::socket_fd()?, ctx.call_id(), mib)?;
            return Ok(StepResult {
                exit_code: Some(0),
                ..StepResult::default()
            });
        }
        let bytes = bytes_for(&mode, ctx.call_id())?;
        fixture::write_confirmed_lines(&step, &ctx).await?;
        if mode == "truncated" {
            // Exit the common way, with a frame from hm still unread (see the fixture docs).
            fixture::await_unread_frame(&ctx)?;
        }
        write_raw(fixture::socket_fd()?, &bytes)
            .map_err(|e| StepError::Message(format!("raw write: {e}")))?;
        if mode == "truncated" {
            std::process::exit(0);
        }
        // Bounded only in case hm is left waiting for the rest of a frame it should have refused.
        let _ = tokio::time::timeout(Duration::from_secs(3), fixture::confirm(&ctx)).await;
        Ok(StepResult {
            exit_code: Some(0),
            ..StepResult::default()
        })
    }
}

/// The bytes of each kind of violation; `call` is the id of the step's `ExecuteStep` call.
fn bytes_for(mode: &str, call: u64) -> Result<Vec<u8>, StepError> {
    let encode = |frame: Result<OutFrame, hm_ipc::codec::EncodeError>| {
        frame
            .map(|f| f.to_wire())
            .map_err(|e| StepError::Message(e.to_string()))
    };
    let batch = |stream: u8| LogBatch {
        chunks: vec![LogChunk {
            stream,
            text: "this line must never be shown".into(),
        }],
    };
    Ok(match mode {
        "garbage" => b"this is not an hm frame header, only bytes \x00\xff\x13\x37\n".to_vec(),
        "oversized" => {
            let mut header = OutFrame::empty(FrameKind::LogBatch, call).to_wire();
            header[8..12].copy_from_slice(&(INLINE_CAP as u32 + 1).to_le_bytes());
            header
        }
        "truncated" => {
            let mut frame = encode(OutFrame::message(FrameKind::LogBatch, call, &batch(0)))?;
            frame.truncate(frame.len() / 2);
            frame
        }
        "bad-payload" => {
            let mut frame = OutFrame::empty(FrameKind::LogBatch, call);
            frame.payload.extend_from_slice(&[0xab; 32]);
            frame.to_wire()
        }
        "bad-stream" => encode(OutFrame::message(FrameKind::LogBatch, call, &batch(7)))?,
        "hello" => encode(OutFrame::message(
            FrameKind::Hello,
            0,
            &Hello {
                protocol_min: 1,
                protocol_max: 2,
                name: "fixture-wire".into(),
                version: "0.1.0".into(),
                capabilities: vec!["executor:wire".into()],
            },
        ))?,
        "welcome" => encode(OutFrame::message(
            FrameKind::Welcome,
            0,
            &Welcome {
                protocol: 2,
                run_id: "forged".into(),
                log_credit: 1_000_000,
                max_batch_bytes: u32::MAX,
            },
        ))?,
        "unknown-reply" => encode(OutFrame::message(
            FrameKind::Reply,
            call + 1_000_000,
            &PluginReply::StepDone(Box::new(StepResult {
                exit_code: Some(0),
                ..StepResult::default()
            })),
        ))?,
        other => return Err(StepError::Message(format!("unknown WIRE mode {other:?}"))),
    })
}

/// Writes `mib` MiB of 256 KiB log batches for call `call` to the socket, credit or not. A
/// kernel that enforces its credit kills the plugin long before the end; one that does not
/// gets them all.
fn flood(fd: RawFd, call: u64, mib: usize) -> Result<(), StepError> {
    const LINE: usize = 1024;
    const PER_WRITE: usize = 16;
    let frame = OutFrame::message(
        FrameKind::LogBatch,
        call,
        &LogBatch {
            chunks: vec![LogChunk {
                stream: 0,
                text: "f".repeat(LINE - 1),
            }],
        },
    )
    .map_err(|e| StepError::Message(e.to_string()))?
    .to_wire();
    let burst = frame.repeat(PER_WRITE);
    for _ in 0..mib * 1024 * 1024 / (LINE * PER_WRITE) {
        write_raw(fd, &burst).map_err(|e| StepError::Message(format!("flood: {e}")))?;
    }
    Ok(())
}

/// Writes all of `bytes` to the non-blocking socket `fd`, waiting for room when it is full.
fn write_raw(fd: RawFd, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        // SAFETY: `fd` stays open for the plugin's whole life (the SDK's stream owns it), and
        // `bytes` is a valid buffer of the given length.
        let written = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if written >= 0 {
            bytes = &bytes[written as usize..];
            continue;
        }
        let error = std::io::Error::last_os_error();
        match error.kind() {
            std::io::ErrorKind::Interrupted => {}
            std::io::ErrorKind::WouldBlock => {
                let mut poll = libc::pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd, for at most a second.
                unsafe { libc::poll(&mut poll, 1, 1000) };
            }
            _ => return Err(error),
        }
    }
    Ok(())
}

fn main() {
    fixture::note_socket_fd();
    hm_sdk::serve(
        Plugin::new("fixture-wire", env!("CARGO_PKG_VERSION"))
            .description("breaks the protocol mid-step, as each step asks")
            .executor("wire", Wire),
    )
}
