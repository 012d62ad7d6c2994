//! Benches `shm-handoff`, `shm-handoff-map` and `shm-vs-socket`: handing a 256 MiB workspace
//! archive to a plugin through a sealed shared buffer (`docs/protocol.md`).
//!
//! Ours, in every one: the "kernel" holds the archive in a [`SealedBuffer`] (filled once,
//! before timing: that is the writer's own copy). A round duplicates its descriptor and queues
//! a `HostReply::Archive` reply with it on hm's writer task ([`hm_ipc::transport::spawn_writer`],
//! `SCM_RIGHTS` with the frame's first byte); the "plugin", a thread with its own runtime as
//! in a plugin process, reads it with hm's [`FrameReader`] (the descriptor is checked for its
//! seals, mapped read-only and closed), validates and decodes the reply as the SDK does, checks
//! the length, then consumes the buffer, unmaps it and reports. Timed by the kernel side from
//! before the duplicate to the report.
//!
//! - `shm-handoff`: the plugin reads every byte (an xor of all 64-bit words) before it
//!   reports. Baseline: the plugin reading the same bytes from its own memory: the same read
//!   (`fold`) over an ordinary heap buffer of 256 MiB whose pages are already mapped. Reading
//!   is the floor of any handoff whose plugin reads everything; target ≤ 1.1×.
//! - `shm-handoff-map`: the plugin reports as soon as it holds the mapped, validated archive:
//!   what handing it over costs, with nothing read. Baseline: one 256 MiB `memcpy` into a
//!   buffer whose pages are already mapped. Target ≤ 0.02× (zero copy).
//! - `shm-vs-socket`: ours as in `shm-handoff`; baseline: the same 256 MiB written to a Unix
//!   stream socket (plain `write`/`read`, no framing: the cheapest way through the socket)
//!   into the plugin's buffer (pages already mapped), which then reads every byte the same
//!   way. Target: ours ≥ 5× faster (throughput).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::mpsc as std_mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hm_ipc::messages::{ArchiveBuffer, HostReply};
use hm_ipc::{FrameKind, FrameReader, OutFrame, SealedBuffer};
use tokio::sync::mpsc;

use crate::Settings;
use crate::measure::{BenchError, Outcome, Plan, Target, interleave};

pub const HANDOFF: &str = "shm-handoff";
pub const HANDOFF_MAP: &str = "shm-handoff-map";
pub const VS_SOCKET: &str = "shm-vs-socket";
/// The archive's size, as in its target.
pub const SIZE: usize = 256 * 1024 * 1024;
/// One round must finish within this, or the bench is stuck.
const ROUND_LIMIT: Duration = Duration::from_secs(30);

/// What the plugin does with the archive before it reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Consumer {
    /// Reads every byte.
    ReadAll,
    /// Only holds the mapping.
    MapOnly,
}

pub fn run_handoff(settings: &Settings) -> Result<Outcome, BenchError> {
    let source = source();
    let mut ours = Handoff::start(&source, Consumer::ReadAll)?;
    // The plugin's own copy of the bytes, its pages mapped before timing: the baseline is
    // the read alone, the floor of any handoff whose plugin reads every byte.
    let own = source.clone();
    let expected = fold(&source);
    let samples = interleave(
        plan(settings),
        || ours.round(),
        || {
            let start = Instant::now();
            let sum = fold(std::hint::black_box(&own));
            let elapsed = start.elapsed();
            if sum == expected {
                Ok(elapsed)
            } else {
                Err(BenchError::failed(
                    HANDOFF,
                    format!("the baseline read {sum:#x}, expected {expected:#x}"),
                ))
            }
        },
    );
    let stopped = ours.stop();
    let samples = samples?;
    stopped?;
    Ok(Outcome::new(
        HANDOFF,
        &samples,
        Target::TimeAtMost(1.1),
        "per 256 MiB handed over and read by the plugin; \
         baseline: the same read of the plugin's own memory",
    ))
}

pub fn run_handoff_map(settings: &Settings) -> Result<Outcome, BenchError> {
    let source = source();
    let mut ours = Handoff::start(&source, Consumer::MapOnly)?;
    // Mapped before timing: the baseline is the copy, not the page faults of a new buffer.
    let mut copy = vec![1u8; SIZE];
    let samples = interleave(
        plan(settings),
        || ours.round(),
        || {
            let start = Instant::now();
            copy.copy_from_slice(&source);
            std::hint::black_box(&mut copy);
            Ok(start.elapsed())
        },
    );
    let stopped = ours.stop();
    let samples = samples?;
    stopped?;
    Ok(Outcome::new(
        HANDOFF_MAP,
        &samples,
        Target::TimeAtMost(0.02),
        "per 256 MiB handed over, mapped, not read; baseline: memcpy",
    ))
}

pub fn run_vs_socket(settings: &Settings) -> Result<Outcome, BenchError> {
    let source = source();
    let mut ours = Handoff::start(&source, Consumer::ReadAll)?;
    let baseline = SocketPair::start()?;
    let expected = fold(&source);
    let samples = interleave(
        plan(settings),
        || ours.round(),
        || baseline.round(&source, expected),
    );
    let stopped = ours.stop().and(baseline.stop());
    let samples = samples?;
    stopped?;
    Ok(Outcome::new(
        VS_SOCKET,
        &samples,
        Target::ThroughputAtLeast(5.0),
        "per 256 MiB read by the plugin; baseline: the same bytes through the socket",
    ))
}

pub(crate) fn plan(settings: &Settings) -> Plan {
    if settings.quick {
        Plan {
            rounds: 5,
            budget: Duration::from_secs(5),
            warm_up: true,
        }
    } else {
        Plan {
            rounds: 21,
            budget: Duration::from_secs(15),
            warm_up: true,
        }
    }
}

/// 256 MiB of varied bytes (xorshift).
pub(crate) fn source() -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut bytes = Vec::with_capacity(SIZE);
    while bytes.len() < SIZE {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes
}

/// Reads every byte: the xor of all 64-bit words (eight at a time, so it runs at memory
/// speed), with the tail bytes folded in.
pub(crate) fn fold(bytes: &[u8]) -> u64 {
    let mut lanes = [0u64; 8];
    let mut blocks = bytes.chunks_exact(64);
    for block in &mut blocks {
        for (lane, word) in lanes.iter_mut().zip(block.chunks_exact(8)) {
            let mut raw = [0u8; 8];
            raw.copy_from_slice(word);
            *lane ^= u64::from_ne_bytes(raw);
        }
    }
    let mut folded = lanes.iter().fold(0, |a, b| a ^ b);
    for &byte in blocks.remainder() {
        folded ^= u64::from(byte);
    }
    folded
}

fn runtime() -> Result<tokio::runtime::Runtime, BenchError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BenchError::io("failed to start a tokio runtime"))
}

fn join(what: &str, thread: JoinHandle<Result<(), String>>) -> Result<(), BenchError> {
    match thread.join() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(BenchError::failed(what, e)),
        Err(_) => Err(BenchError::failed(what, "its thread panicked")),
    }
}

// ---- ours: a sealed buffer handed over next to a frame ----

struct Handoff {
    runtime: tokio::runtime::Runtime,
    buffer: SealedBuffer,
    expected: u64,
    out: mpsc::UnboundedSender<OutFrame>,
    reports: mpsc::UnboundedReceiver<Result<u64, String>>,
    plugin: JoinHandle<Result<(), String>>,
    writer: tokio::task::JoinHandle<Result<(), hm_ipc::codec::WireError>>,
    next_call: u64,
}

impl Handoff {
    fn start(source: &[u8], consumer: Consumer) -> Result<Self, BenchError> {
        let buffer = SealedBuffer::from_bytes("hm-bench-archive", source)
            .map_err(|e| BenchError::failed("the shared buffer", e.to_string()))?;
        let expected = match consumer {
            Consumer::ReadAll => fold(source),
            Consumer::MapOnly => source.len() as u64,
        };
        let (kernel_end, plugin_end) =
            hm_ipc::transport::socket_pair().map_err(BenchError::io("socketpair"))?;
        for end in [&kernel_end, &plugin_end] {
            end.set_nonblocking(true)
                .map_err(BenchError::io("socketpair"))?;
        }
        let (report, reports) = mpsc::unbounded_channel();
        let plugin_runtime = runtime()?;
        let plugin = thread::spawn(move || {
            plugin_runtime.block_on(plugin_side(plugin_end, consumer, report))
        });
        let runtime = runtime()?;
        let (out, writer) = {
            let _entered = runtime.enter();
            let (_, write_half) = hm_ipc::socket::split_std(kernel_end)
                .map_err(BenchError::io("the kernel's end"))?;
            hm_ipc::transport::spawn_writer(write_half)
        };
        Ok(Self {
            runtime,
            buffer,
            expected,
            out,
            reports,
            plugin,
            writer,
            next_call: 1,
        })
    }

    fn round(&mut self) -> Result<Duration, BenchError> {
        let start = Instant::now();
        let fd = self
            .buffer
            .share()
            .map_err(|e| BenchError::failed(HANDOFF, e.to_string()))?;
        let reply = HostReply::Archive(Box::new(ArchiveBuffer {
            len: self.buffer.len() as u64,
        }));
        let frame = OutFrame::message(FrameKind::Reply, self.next_call, &reply)
            .map_err(|e| BenchError::failed(HANDOFF, e.to_string()))?
            .with_buffer(fd);
        self.next_call += 1;
        let (out, reports) = (&self.out, &mut self.reports);
        let got = self.runtime.block_on(async {
            out.send(frame)
                .map_err(|_| "the writer task has stopped".to_owned())?;
            match tokio::time::timeout(ROUND_LIMIT, reports.recv()).await {
                Ok(Some(got)) => got,
                Ok(None) => Err("the plugin thread stopped".to_owned()),
                Err(_) => Err(format!("no answer within {ROUND_LIMIT:?}")),
            }
        });
        let elapsed = start.elapsed();
        match got {
            Ok(sum) if sum == self.expected => Ok(elapsed),
            Ok(sum) => Err(BenchError::failed(
                HANDOFF,
                format!("the plugin read {sum:#x}, expected {:#x}", self.expected),
            )),
            Err(e) => Err(BenchError::failed(HANDOFF, e)),
        }
    }

    fn stop(self) -> Result<(), BenchError> {
        // Closing the writer closes the socket; the plugin sees the end of the connection.
        drop(self.out);
        let written = self.runtime.block_on(self.writer);
        join("the plugin side", self.plugin)?;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BenchError::failed("the writer task", e.to_string())),
            Err(e) => Err(BenchError::failed("the writer task", e.to_string())),
        }
    }
}

/// The plugin: every frame is an archive reply with its buffer, read as the SDK reads it.
async fn plugin_side(
    socket: StdUnixStream,
    consumer: Consumer,
    report: mpsc::UnboundedSender<Result<u64, String>>,
) -> Result<(), String> {
    let (read_half, _write_half) = hm_ipc::socket::split_std(socket).map_err(|e| e.to_string())?;
    let mut frames = FrameReader::new(read_half);
    frames.allow_fds(true);
    while let Some(frame) = frames.next().await {
        let outcome = (|| {
            let mut frame = frame.map_err(|e| e.to_string())?;
            let len = match frame.decode::<HostReply>().map_err(|e| e.to_string())? {
                HostReply::Archive(info) => info.len,
                other => return Err(format!("expected an archive, got {other:?}")),
            };
            let buffer = frame.take_buffer().ok_or("no buffer came with the reply")?;
            if buffer.len() as u64 != len {
                return Err(format!("a buffer of {} bytes for {len}", buffer.len()));
            }
            Ok(match consumer {
                Consumer::ReadAll => fold(&buffer),
                Consumer::MapOnly => buffer.len() as u64,
            })
            // The buffer is unmapped here, before the report: part of the round.
        })();
        let failed = outcome.is_err();
        let _ = report.send(outcome);
        if failed {
            break;
        }
    }
    Ok(())
}

// ---- baseline: the same bytes through the socket ----

pub(crate) struct SocketPair {
    kernel_end: StdUnixStream,
    reports: std_mpsc::Receiver<Result<u64, String>>,
    plugin: JoinHandle<Result<(), String>>,
}

impl SocketPair {
    pub(crate) fn start() -> Result<Self, BenchError> {
        let (kernel_end, mut plugin_end) =
            hm_ipc::transport::socket_pair().map_err(BenchError::io("socketpair"))?;
        let (report, reports) = std_mpsc::channel();
        let plugin = thread::spawn(move || {
            // The plugin's buffer, its pages mapped before the first round.
            let mut buffer = vec![1u8; SIZE];
            loop {
                match plugin_end.read_exact(&mut buffer) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                    Err(e) => return Err(e.to_string()),
                }
                if report.send(Ok(fold(&buffer))).is_err() {
                    return Ok(());
                }
            }
        });
        Ok(Self {
            kernel_end,
            reports,
            plugin,
        })
    }

    pub(crate) fn round(&self, source: &[u8], expected: u64) -> Result<Duration, BenchError> {
        let start = Instant::now();
        (&self.kernel_end)
            .write_all(source)
            .map_err(BenchError::io("writing to the socket"))?;
        let got = self.reports.recv_timeout(ROUND_LIMIT);
        let elapsed = start.elapsed();
        match got {
            Ok(Ok(sum)) if sum == expected => Ok(elapsed),
            Ok(Ok(sum)) => Err(BenchError::failed(
                VS_SOCKET,
                format!("the plugin read {sum:#x}, expected {expected:#x}"),
            )),
            Ok(Err(e)) => Err(BenchError::failed(VS_SOCKET, e)),
            Err(e) => Err(BenchError::failed(VS_SOCKET, e.to_string())),
        }
    }

    pub(crate) fn stop(self) -> Result<(), BenchError> {
        drop(self.kernel_end);
        join("the socket plugin side", self.plugin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_reads_every_byte() {
        let mut bytes = vec![0u8; 1000];
        let base = fold(&bytes);
        for at in [0, 7, 63, 64, 999] {
            bytes[at] ^= 0x10;
            assert_ne!(fold(&bytes), base, "a change at {at} is seen");
            bytes[at] ^= 0x10;
        }
    }
}
