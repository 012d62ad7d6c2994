//! Bench `call-round-trip`: one request/reply with a 64-byte payload each way through the
//! whole stack, against a raw 64-byte ping-pong on the same kind of socket.
//!
//! Ours: a real SDK plugin ([`hm_sdk::serve_on`]) whose executor calls the host API
//! (`StepContext::kv_get`) in a loop, and a kernel side built from the same pieces as
//! `kernel/src/supervisor/connection.rs` (`FramedRead<_, FrameCodec>`, `spawn_writer`,
//! `Frame::decode`) answering each call with a 64-byte value. Every frame is validated with
//! bytecheck and deserialized, call ids are matched on both sides, and each side's writes go
//! through its writer task, exactly as in hm. Baseline: a tokio `UnixStream` pair where one side
//! writes 64 bytes and reads 64 back, the other echoes them.
//!
//! Each side of each pair runs on its own thread with its own current-thread runtime, as two
//! processes would; a round is a batch of round trips timed by the side that starts them.

use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::mpsc as std_mpsc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hm_ipc::messages::{
    ExecuteStep, Hello, HostCall, HostReply, KernelCall, KvKey, KvScope, PluginReply, Welcome,
};
use hm_ipc::{FrameKind, OutFrame};
use hm_sdk::{Executor, Plugin, StepContext, StepError, StepRequest, StepResult};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use crate::Settings;
use crate::measure::{BenchError, Outcome, Plan, Samples, Target, interleave};

pub const NAME: &str = "call-round-trip";
/// The rkyv payload size of the call and of the reply, and the baseline's message size.
pub const PAYLOAD: usize = 64;
/// One round must finish within this, or the bench is stuck.
const ROUND_LIMIT: Duration = Duration::from_secs(30);

pub fn run(settings: &Settings) -> Result<Outcome, BenchError> {
    // Many short rounds (100 round trips, a few milliseconds) so a burst of load from
    // elsewhere on the machine lands on both sides of a pair of rounds, not on one side's
    // whole series; fresh pairs for each block of rounds so one odd pair cannot own the median.
    let (calls, blocks, rounds, budget) = if settings.quick {
        (100, 2, 50, Duration::from_secs(4))
    } else {
        (100, 6, 100, Duration::from_secs(5))
    };
    // Where the two threads of a pair run decides the round-trip time more than anything either
    // side does: on one CPU a hop is a context switch; on two, each hop wakes an idle vCPU,
    // which on this VM costs tens of microseconds. Left alone, the scheduler moves a pair onto
    // one CPU after a while, sooner for one pair than another, so an unpinned run can compare
    // ours in one placement with the baseline in the other (3× either way). Pinning every
    // thread of both pairs to one CPU compares like with like.
    let cpu = if settings.pin {
        Some(first_allowed_cpu()?)
    } else {
        None
    };
    let key = sized_text("the KvGet call", |text| {
        payload_len(OutFrame::message(
            FrameKind::Call,
            1,
            &HostCall::KvGet(Box::new(kv_key(text))),
        ))
    })?;
    let value = sized_text("the KvGet reply", |text| {
        payload_len(OutFrame::message(
            FrameKind::Reply,
            1,
            &HostReply::Value(Box::new(Some(text))),
        ))
    })?;
    let mut samples = Samples::default();
    for _ in 0..blocks {
        let ours = FullStack::start(key.clone(), value.clone(), cpu)?;
        let baseline = PingPong::start(cpu)?;
        let plan = Plan {
            rounds,
            budget,
            warm_up: true,
        };
        let block = interleave(plan, || ours.round(calls), || baseline.round(calls));
        // Stop both pairs whatever happened, then report the first problem.
        let stopped = ours.stop().and(baseline.stop());
        let block = block?;
        stopped?;
        samples.ours.extend(block.ours);
        samples.baseline.extend(block.baseline);
    }
    Ok(Outcome::new(
        NAME,
        &samples.per_op(calls),
        Target::TimeAtMost(1.3),
        format!("per round trip; {calls} round trips per round, {PAYLOAD} B payload each way"),
    ))
}

fn kv_key(key: String) -> KvKey {
    KvKey {
        scope: KvScope::Run,
        step_call: 0,
        key,
    }
}

/// The payload size of an encoded frame.
fn payload_len<T>(frame: Result<OutFrame, T>) -> usize {
    frame.map_or(usize::MAX, |frame| frame.payload.len())
}

/// A string whose message archives to exactly [`PAYLOAD`] bytes.
fn sized_text(what: &str, archived_len: impl Fn(String) -> usize) -> Result<String, BenchError> {
    (0..PAYLOAD)
        .map(|n| "k".repeat(n))
        .find(|text| archived_len(text.clone()) == PAYLOAD)
        .ok_or_else(|| BenchError::failed(NAME, format!("no text makes {what} {PAYLOAD} bytes")))
}

/// The lowest-numbered CPU this process may run on (respects `taskset`).
fn first_allowed_cpu() -> Result<usize, BenchError> {
    // SAFETY: cpu_set_t is plain data for which all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size passed.
    let got = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if got != 0 {
        return Err(BenchError::io("sched_getaffinity")(
            std::io::Error::last_os_error(),
        ));
    }
    (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, the number of bits in the set.
        .find(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .ok_or_else(|| BenchError::failed(NAME, "this process may run on no CPU"))
}

/// Pins the calling thread to `cpu`, if given.
fn pin_to(cpu: Option<usize>) -> Result<(), String> {
    let Some(cpu) = cpu else { return Ok(()) };
    // SAFETY: cpu_set_t is plain data for which all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` came from `first_allowed_cpu`, so it is below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) } != 0 {
        return Err(format!(
            "cannot pin a thread to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, BenchError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BenchError::io("failed to start a tokio runtime"))
}

/// A connected pair of non-blocking std sockets, to be handed to two threads.
fn socket_pair() -> Result<(StdUnixStream, StdUnixStream), BenchError> {
    let (a, b) = hm_ipc::transport::socket_pair().map_err(BenchError::io("socketpair"))?;
    a.set_nonblocking(true)
        .map_err(BenchError::io("socketpair"))?;
    b.set_nonblocking(true)
        .map_err(BenchError::io("socketpair"))?;
    Ok((a, b))
}

type RoundTimes = std_mpsc::Receiver<Result<Duration, String>>;

/// Asks the initiating side for one round of `calls` and waits for its timing.
fn ask_round(
    rounds: &mpsc::UnboundedSender<u32>,
    times: &RoundTimes,
    calls: u32,
    what: &str,
) -> Result<Duration, BenchError> {
    rounds
        .send(calls)
        .map_err(|_| BenchError::failed(what, "its thread has stopped"))?;
    match times.recv_timeout(ROUND_LIMIT) {
        Ok(Ok(elapsed)) => Ok(elapsed),
        Ok(Err(e)) => Err(BenchError::failed(what, e)),
        Err(std_mpsc::RecvTimeoutError::Timeout) => Err(BenchError::TimedOut {
            what: format!("a round of {what}"),
            limit: ROUND_LIMIT,
        }),
        Err(std_mpsc::RecvTimeoutError::Disconnected) => Err(BenchError::failed(
            what,
            "its thread stopped before answering",
        )),
    }
}

fn join(what: &str, thread: JoinHandle<Result<(), String>>) -> Result<(), BenchError> {
    match thread.join() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(BenchError::failed(what, e)),
        Err(_) => Err(BenchError::failed(what, "its thread panicked")),
    }
}

// ---- ours: SDK plugin ⇄ kernel-side connection loop ----

/// A plugin thread running `serve_on` and a kernel thread answering its host calls.
struct FullStack {
    rounds: mpsc::UnboundedSender<u32>,
    times: RoundTimes,
    kernel: JoinHandle<Result<(), String>>,
    plugin: JoinHandle<Result<(), String>>,
}

impl FullStack {
    fn start(key: String, value: String, cpu: Option<usize>) -> Result<Self, BenchError> {
        let (kernel_end, plugin_end) = socket_pair()?;
        let (report, times) = std_mpsc::channel();
        let (rounds, round_rx) = mpsc::unbounded_channel();
        let plugin_rt = runtime()?;
        let kernel_rt = runtime()?;
        let plugin = Plugin::new("bench", "0").executor("bench", HostCallLoop { key, report });
        let plugin = thread::spawn(move || {
            pin_to(cpu)?;
            plugin_rt.block_on(async move {
                let stream = UnixStream::from_std(plugin_end).map_err(|e| e.to_string())?;
                hm_sdk::serve_on(plugin, stream)
                    .await
                    .map_err(|e| format!("plugin side: {e}"))
            })
        });
        let kernel = thread::spawn(move || {
            pin_to(cpu)?;
            kernel_rt.block_on(kernel_side(kernel_end, round_rx, value))
        });
        Ok(Self {
            rounds,
            times,
            kernel,
            plugin,
        })
    }

    fn round(&self, calls: u32) -> Result<Duration, BenchError> {
        ask_round(&self.rounds, &self.times, calls, "the hm call round trip")
    }

    fn stop(self) -> Result<(), BenchError> {
        // Closing the round channel ends the kernel loop, which closes the socket; the plugin
        // then sees the end of the connection and returns from `serve_on`.
        drop(self.rounds);
        join("the kernel side", self.kernel)?;
        join("the plugin side", self.plugin)
    }
}

/// The executor: each `ExecuteStep` is one round; `run` says how many host calls to make.
struct HostCallLoop {
    key: String,
    report: std_mpsc::Sender<Result<Duration, String>>,
}

impl Executor for HostCallLoop {
    async fn execute(&self, step: StepRequest, ctx: StepContext) -> Result<StepResult, StepError> {
        let calls: u32 = step
            .run
            .parse()
            .map_err(|_| StepError::Message(format!("not a call count: {:?}", step.run)))?;
        let start = Instant::now();
        let mut outcome = Ok(());
        for _ in 0..calls {
            match ctx.kv_get(KvScope::Run, &self.key).await {
                Ok(Some(_)) => {}
                Ok(None) => outcome = Err("the kernel side answered without a value".to_owned()),
                Err(e) => outcome = Err(e.to_string()),
            }
            if outcome.is_err() {
                break;
            }
        }
        let _ = self.report.send(outcome.map(|()| start.elapsed()));
        Ok(StepResult::default())
    }
}

/// The kernel's end, built like `supervisor/connection.rs`: handshake, then every frame
/// validated and decoded, host calls answered through the writer task.
async fn kernel_side(
    stream: StdUnixStream,
    mut rounds: mpsc::UnboundedReceiver<u32>,
    value: String,
) -> Result<(), String> {
    let hm_ipc::transport::Connection {
        mut frames,
        writer,
        writer_task,
    } = hm_ipc::transport::connect_std(stream).map_err(|e| e.to_string())?;
    let send = |frame: Result<OutFrame, hm_ipc::codec::EncodeError>| {
        let frame = frame.map_err(|e| e.to_string())?;
        writer
            .send(frame)
            .map_err(|_| "kernel side: the writer task stopped".to_owned())
    };

    let hello = match frames.next().await {
        Some(Ok(frame)) if frame.kind() == FrameKind::Hello => frame,
        other => return Err(format!("kernel side: expected Hello, got {other:?}")),
    };
    let hello: Hello = hello.decode().map_err(|e| e.to_string())?;
    let protocol = hm_ipc::negotiate(
        (hm_ipc::PROTOCOL_MIN, hm_ipc::PROTOCOL_MAX),
        hello.protocol_min,
        hello.protocol_max,
    )?;
    let welcome = Welcome {
        protocol,
        run_id: "bench".into(),
        log_credit: 8,
        max_batch_bytes: 256 * 1024,
    };
    send(OutFrame::message(FrameKind::Welcome, 0, &welcome))?;

    let mut next_call = 1u64;
    loop {
        tokio::select! {
            round = rounds.recv() => {
                let Some(calls) = round else { break };
                let step = KernelCall::ExecuteStep(Box::new(ExecuteStep {
                    step: "bench".into(),
                    attempt: 1,
                    run: calls.to_string(),
                    dir: "/".into(),
                    env: Vec::new(),
                    image: None,
                    with_json: "{}".into(),
                    grace_ms: 1000,
                    cgroup_procs: Vec::new(),
                    limits: hm_ipc::messages::StepLimits::default(),
                }));
                send(OutFrame::message(FrameKind::Call, next_call, &step))?;
                next_call += 1;
            }
            frame = frames.next() => {
                let frame = match frame {
                    None => return Err("kernel side: the plugin closed the connection".into()),
                    Some(frame) => frame.map_err(|e| format!("kernel side: {e}"))?,
                };
                match frame.kind() {
                    FrameKind::Call => {
                        let call: HostCall = frame.decode().map_err(|e| e.to_string())?;
                        let reply = match call {
                            HostCall::KvGet(_) => HostReply::Value(Box::new(Some(value.clone()))),
                            _ => HostReply::Ok,
                        };
                        send(OutFrame::message(FrameKind::Reply, frame.call_id(), &reply))?;
                    }
                    FrameKind::Reply => match frame.decode::<PluginReply>().map_err(|e| e.to_string())? {
                        PluginReply::StepDone(_) => {}
                        other => return Err(format!("kernel side: unexpected reply {other:?}")),
                    },
                    other => return Err(format!("kernel side: unexpected {other:?} frame")),
                }
            }
        }
    }
    // Shut down our direction, then read until the plugin closes its end: closing the socket
    // with its last frames unread would reset the connection under it.
    drop(writer);
    match writer_task.await {
        Ok(result) => result.map_err(|e| e.to_string())?,
        Err(e) => return Err(e.to_string()),
    }
    while let Some(frame) = frames.next().await {
        frame.map_err(|e| format!("kernel side: {e}"))?;
    }
    Ok(())
}

// ---- baseline: raw 64-byte ping-pong ----

struct PingPong {
    rounds: mpsc::UnboundedSender<u32>,
    times: RoundTimes,
    client: JoinHandle<Result<(), String>>,
    server: JoinHandle<Result<(), String>>,
}

impl PingPong {
    fn start(cpu: Option<usize>) -> Result<Self, BenchError> {
        let (client_end, server_end) = socket_pair()?;
        let (report, times) = std_mpsc::channel();
        let (rounds, mut round_rx) = mpsc::unbounded_channel::<u32>();
        let client_rt = runtime()?;
        let server_rt = runtime()?;
        let client = thread::spawn(move || {
            pin_to(cpu)?;
            client_rt.block_on(async move {
                let mut stream = UnixStream::from_std(client_end).map_err(|e| e.to_string())?;
                let mut buf = [0x5au8; PAYLOAD];
                while let Some(calls) = round_rx.recv().await {
                    let start = Instant::now();
                    for _ in 0..calls {
                        stream.write_all(&buf).await.map_err(|e| e.to_string())?;
                        stream
                            .read_exact(&mut buf)
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    let _ = report.send(Ok(start.elapsed()));
                }
                Ok(())
            })
        });
        let server = thread::spawn(move || {
            pin_to(cpu)?;
            server_rt.block_on(async move {
                let mut stream = UnixStream::from_std(server_end).map_err(|e| e.to_string())?;
                let mut buf = [0u8; PAYLOAD];
                loop {
                    match stream.read_exact(&mut buf).await {
                        Ok(_) => stream.write_all(&buf).await.map_err(|e| e.to_string())?,
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                        Err(e) => return Err(e.to_string()),
                    }
                }
            })
        });
        Ok(Self {
            rounds,
            times,
            client,
            server,
        })
    }

    fn round(&self, calls: u32) -> Result<Duration, BenchError> {
        ask_round(&self.rounds, &self.times, calls, "the raw ping-pong")
    }

    fn stop(self) -> Result<(), BenchError> {
        drop(self.rounds);
        join("the ping-pong client", self.client)?;
        join("the ping-pong server", self.server)
    }
}
