//! Bench `cold-start`: a plugin from nothing to the answer of its first call, against spawn +
//! wait of a Rust program that does nothing.
//!
//! Ours, with the kernel's own code where it is public: the plugin's cgroup leaf created
//! (`RunCgroup::leaf`, when this machine has cgroups), a socket pair, `hm __plugin shell`
//! spawned with the kernel's `Command` (`hm_kernel::supervisor::spawn::plugin_command`: fd 3
//! and `HM_IPC_FD=3`, own process group, parent-death signal, stdin from /dev/null, stdout and
//! stderr piped, other fds close-on-exec) whose child joins the leaf before it execs
//! (`ChildJoin`, as the kernel's does), stdout/stderr read by a
//! task each; then read `Hello`, send `Welcome` (protocol 2), send `Init` and wait for `Ready`
//! (the handshake and the first call); then close the socket and wait for the plugin to exit.
//! The leaf is removed after the clock stops (the kernel does that at the end of the run).
//! Baseline: `bench-true` (`fn main() {}`) spawned with the very same `plugin_command`,
//! socket pair included, then waited for. Both are timed from the first step to the wait.

use std::path::Path;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hm_ipc::messages::{Hello, Init, KernelCall, PluginReply, Welcome};
use hm_ipc::{FrameKind, OutFrame};
use hm_kernel::cgroup::RunCgroup;
use hm_kernel::config::Limits;
use hm_kernel::registry::PluginSpec;
use hm_kernel::supervisor::spawn::{ChildJoin, plugin_command};
use tokio::io::AsyncReadExt;

use crate::Settings;
use crate::measure::{BenchError, Outcome, Plan, Target, interleave};

pub const NAME: &str = "cold-start";
/// The built-in plugin started, and the argument that makes `hm` one.
const PLUGIN: &str = "shell";
/// A start that takes longer than this is stuck.
const START_LIMIT: Duration = Duration::from_secs(10);

pub fn run(settings: &Settings) -> Result<Outcome, BenchError> {
    let (rounds, budget) = if settings.quick {
        (15, Duration::from_secs(5))
    } else {
        (61, Duration::from_secs(30))
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(BenchError::io("failed to start a tokio runtime"))?;
    let cgroups = Cgroups::new();
    let plugin = spec(PLUGIN, &settings.hm, &["__plugin", PLUGIN]);
    let trivial = spec("bench-true", &settings.bench_true, &[]);
    let within_limit = |what: &str, result: Result<Result<Duration, BenchError>, _>| {
        result.unwrap_or_else(|_| {
            Err(BenchError::TimedOut {
                what: what.to_owned(),
                limit: START_LIMIT,
            })
        })
    };
    let mut starts = 0u32;
    let plan = Plan {
        rounds,
        budget,
        warm_up: true,
    };
    let samples = interleave(
        plan,
        || {
            starts += 1;
            let start = async {
                tokio::time::timeout(START_LIMIT, plugin_start(&plugin, &cgroups, starts)).await
            };
            within_limit("starting the shell plugin", runtime.block_on(start))
        },
        || {
            let start = async { tokio::time::timeout(START_LIMIT, trivial_start(&trivial)).await };
            within_limit("starting bench-true", runtime.block_on(start))
        },
    )?;
    Ok(Outcome::new(
        NAME,
        &samples,
        Target::TimeAtMost(2.0),
        format!(
            "per start: {} + spawn + Hello/Welcome + Init/Ready + exit, vs spawn + exit",
            cgroups.describe()
        ),
    ))
}

fn spec(name: &str, program: &Path, args: &[&str]) -> PluginSpec {
    PluginSpec {
        name: name.to_owned(),
        version: String::new(),
        program: program.to_path_buf(),
        args: args.iter().map(|&a| a.to_owned()).collect(),
        capabilities: Vec::new(),
        hooks: Vec::new(),
        protocol: (hm_ipc::PROTOCOL_MIN, hm_ipc::PROTOCOL_MAX),
        origin: "bench".to_owned(),
    }
}

/// The run cgroup the plugins' leaves go in, as `hm run` makes it, if this machine has
/// cgroups; dropping it removes the tree.
struct Cgroups {
    run: Option<RunCgroup>,
    why_not: Option<String>,
}

impl Cgroups {
    fn new() -> Self {
        let detected = hm_kernel::cgroup::detect();
        // The last `-` part is not hex, so no `hm run` sweeps this tree as a dead run's.
        match detected
            .backend
            .create_run(&format!("bench-p{}", std::process::id()))
        {
            Ok(run) => Self {
                run: Some(run),
                why_not: None,
            },
            Err(e) => Self {
                run: None,
                why_not: Some(e.to_string()),
            },
        }
    }

    fn describe(&self) -> String {
        match (&self.run, &self.why_not) {
            (Some(_), _) => "cgroup leaf".to_owned(),
            (None, Some(why)) => format!("no cgroup leaf ({why})"),
            (None, None) => "no cgroup leaf".to_owned(),
        }
    }
}

/// Spawns with the kernel's `Command` (its child joining `join`'s leaf first), captures
/// stdout/stderr the way the kernel does (a task each), runs `between` with the socket, waits.
async fn spawn_and_wait(
    spec: &PluginSpec,
    join: Option<&ChildJoin>,
    between: impl AsyncFnOnce(std::os::unix::net::UnixStream) -> Result<(), String>,
) -> Result<(), BenchError> {
    let what = spec.program.display().to_string();
    let (kernel_end, plugin_end) =
        hm_ipc::transport::socket_pair().map_err(BenchError::io("socketpair"))?;
    let mut command = plugin_command(spec, hm_ipc::transport::raw(&plugin_end));
    if let Some(join) = join {
        join.add_to(&mut command);
    }
    let mut child = command
        .spawn()
        .map_err(BenchError::io(format!("failed to start {what}")))?;
    // The child has its copy now; ours must go so its exit is seen as the end of the stream.
    drop(plugin_end);
    let capture = [
        child.stdout.take().map(capture),
        child.stderr.take().map(capture),
    ];
    let talked = between(kernel_end).await;
    let status = child
        .wait()
        .await
        .map_err(BenchError::io(format!("failed to wait for {what}")))?;
    let mut output = String::new();
    for task in capture.into_iter().flatten() {
        output.push_str(&task.await.unwrap_or_default());
    }
    match talked {
        Ok(()) if status.success() => Ok(()),
        Ok(()) => Err(BenchError::failed(
            what,
            format!("exited with {status}; output: {output}"),
        )),
        Err(e) => Err(BenchError::failed(
            what,
            format!("{e}; exit: {status}; output: {output}"),
        )),
    }
}

fn capture<R>(mut pipe: R) -> tokio::task::JoinHandle<String>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes).await;
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

async fn trivial_start(spec: &PluginSpec) -> Result<Duration, BenchError> {
    let start = Instant::now();
    spawn_and_wait(spec, None, async |_| Ok(())).await?;
    Ok(start.elapsed())
}

async fn plugin_start(
    spec: &PluginSpec,
    cgroups: &Cgroups,
    n: u32,
) -> Result<Duration, BenchError> {
    let start = Instant::now();
    let leaf = match &cgroups.run {
        Some(run) => Some(
            run.leaf(PLUGIN, &format!("plugin-{n}"), &Limits::default())
                .map_err(|e| BenchError::failed("creating the plugin's cgroup", e.to_string()))?,
        ),
        None => None,
    };
    let join = leaf
        .as_ref()
        .map(|leaf| ChildJoin::open(leaf.self_join_files()))
        .transpose()
        .map_err(|e| BenchError::failed("joining the plugin's cgroup", e))?;
    let started = spawn_and_wait(spec, join.as_ref(), handshake).await;
    let elapsed = start.elapsed();
    if let Some(leaf) = leaf {
        leaf.remove()
            .map_err(|e| BenchError::failed("removing the plugin's cgroup", e.to_string()))?;
    }
    started.map(|()| elapsed)
}

/// Hello → Welcome, Init → Ready, then close: what `connection.rs` does before the first
/// `ExecuteStep`.
async fn handshake(kernel_end: std::os::unix::net::UnixStream) -> Result<(), String> {
    let hm_ipc::transport::Connection {
        mut frames,
        writer,
        writer_task,
    } = hm_ipc::transport::connect_std(kernel_end).map_err(|e| e.to_string())?;
    let send = |frame: Result<OutFrame, hm_ipc::codec::EncodeError>| {
        let frame = frame.map_err(|e| e.to_string())?;
        writer
            .send(frame)
            .map_err(|_| "the writer task stopped".to_owned())
    };

    let hello = match frames.next().await {
        Some(Ok(frame)) if frame.kind() == FrameKind::Hello => frame,
        other => return Err(format!("expected Hello, got {other:?}")),
    };
    let hello: Hello = hello.decode().map_err(|e| e.to_string())?;
    if hello.name != PLUGIN {
        return Err(format!("the plugin says its name is {:?}", hello.name));
    }
    let protocol = hm_ipc::negotiate(
        (hm_ipc::PROTOCOL_MIN, hm_ipc::PROTOCOL_MAX),
        hello.protocol_min,
        hello.protocol_max,
    )?;
    if protocol < hm_ipc::handshake::INIT_SINCE {
        return Err(format!(
            "the plugin speaks protocol {protocol}, which has no Init"
        ));
    }
    let welcome = Welcome {
        protocol,
        run_id: "bench".into(),
        log_credit: 8,
        max_batch_bytes: 256 * 1024,
    };
    send(OutFrame::message(FrameKind::Welcome, 0, &welcome))?;
    let init = KernelCall::Init(Box::new(Init {
        config_json: "{}".into(),
        pipeline: "bench".into(),
    }));
    send(OutFrame::message(FrameKind::Call, 0, &init))?;
    match frames.next().await {
        Some(Ok(frame)) if frame.kind() == FrameKind::Reply && frame.call_id() == 0 => {
            match frame.decode::<PluginReply>().map_err(|e| e.to_string())? {
                PluginReply::Ready => {}
                other => return Err(format!("Init answered with {other:?}")),
            }
        }
        other => return Err(format!("expected the reply to Init, got {other:?}")),
    }
    drop(writer);
    drop(frames);
    match writer_task.await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}
