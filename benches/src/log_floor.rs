//! Bench `log-floor`: the most any runner can reach on `log-throughput` when it isolates the
//! step as hm does, against the same writer piped to `cat >/dev/null`.
//!
//! Not a target of its own: it tells how much of `log-throughput`'s target is left for hm once
//! the isolation is paid. Ours, per round:
//!
//! 1. the step's shell moves itself into a leaf of its own in the memory, cpuacct and freezer
//!    hierarchies, below a run cgroup made the way `hm run` makes it (as in `steps-floor`), and
//!    runs the writer there, so the pages of its pipe are charged to the step, as a step's
//!    memory must be;
//! 2. another process reads the step's pipe and passes the bytes on over a Unix socket, as an
//!    executor plugin, a process of its own so that a crash of it cannot take the run down,
//!    passes them to the kernel: `cat`, with the socket as its stdout;
//! 3. this process reads the socket to the end, in 256 KiB blocking reads, and drops the bytes.
//!
//! Nothing else of hm: no lines, no frames, no flow control, no JSON. Machines without cgroup v1
//! skip the bench and say so.

use std::io::{ErrorKind, Read};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::Settings;
use crate::log_throughput::Shape;
use crate::measure::{BenchError, Outcome, Plan, Target, interleave};
use crate::steps_floor::{Hierarchies, cgroup_error};

pub const NAME: &str = "log-floor";
const READ_BYTES: usize = 256 * 1024;

pub fn run(settings: &Settings) -> Result<Outcome, BenchError> {
    let shape = Shape::of(settings);
    let hierarchies = Hierarchies::create("logfloor")?;
    let dir = tempfile::Builder::new()
        .prefix("hm-bench-log-floor-")
        .tempdir()
        .map_err(BenchError::io("failed to create a temporary directory"))?;
    let plan = Plan {
        rounds: shape.rounds,
        budget: shape.budget,
        warm_up: false,
    };
    let mut round = 0;
    let samples = interleave(
        plan,
        || {
            round += 1;
            let leaves = hierarchies
                .runs
                .clone()
                .map(|run| run.join(format!("r{round}")));
            for leaf in &leaves {
                std::fs::create_dir(leaf).map_err(cgroup_error("mkdir", leaf))?;
            }
            let timed = time_isolated(&shape, &leaves);
            // Removed whatever happened (the run's removal would take what is left).
            for leaf in &leaves {
                let _ = std::fs::remove_dir(leaf);
            }
            timed
        },
        || shape.time_pipe(dir.path()),
    )?;
    Ok(Outcome::new(
        NAME,
        &samples,
        Target::ThroughputFloor(0.8),
        shape.unit(),
    ))
}

/// One round of ours (steps 1–3 above), from just before the step's spawn to the reaping of
/// the step and the relay. Past the shape's limit without a byte, both are killed.
fn time_isolated(shape: &Shape, leaves: &[PathBuf; 3]) -> Result<Duration, BenchError> {
    let (relay_end, mut ours) = UnixStream::pair().map_err(BenchError::io("socketpair failed"))?;
    ours.set_read_timeout(Some(shape.limit))
        .map_err(BenchError::io("failed to set a read timeout"))?;
    let start = Instant::now();
    let mut step = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "for tasks; do echo 0 > \"$tasks\"; done; {}",
            shape.writer()
        ))
        .arg("sh")
        .args(leaves.iter().map(|leaf| leaf.join("tasks")))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(BenchError::io("failed to start the step"))?;
    let out = step.stdout.take();
    let mut step = Reaped(Some(step));
    let mut relay = Reaped(Some(
        Command::new("cat")
            .stdin(out.map_or_else(Stdio::null, Stdio::from))
            .stdout(OwnedFd::from(relay_end))
            .process_group(0)
            .spawn()
            .map_err(BenchError::io("failed to start the relay"))?,
    ));
    let mut buf = vec![0u8; READ_BYTES];
    let mut got = 0u64;
    loop {
        match ours.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n as u64,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(BenchError::io("failed to read the relay's socket")(e)),
        }
    }
    let step_status = step.wait()?;
    let relay_status = relay.wait()?;
    let elapsed = start.elapsed();
    if !step_status.success() || !relay_status.success() {
        return Err(BenchError::failed(
            "the isolated writer",
            format!("step {step_status}, relay {relay_status}"),
        ));
    }
    if got != shape.bytes {
        return Err(BenchError::failed(
            "the isolated writer",
            format!("{got} bytes came through, not {}", shape.bytes),
        ));
    }
    Ok(elapsed)
}

/// A child that is killed (its whole group) and reaped if the round ends early.
struct Reaped(Option<Child>);

impl Reaped {
    fn wait(&mut self) -> Result<ExitStatus, BenchError> {
        let mut child = self.0.take().expect("waited once");
        child
            .wait()
            .map_err(BenchError::io("failed to wait for a child"))
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // SAFETY: killpg has no memory-safety preconditions; the group is the child's own
            // and the child is not reaped yet, so its id cannot have been reused.
            unsafe { libc::killpg(child.id() as libc::pid_t, libc::SIGKILL) };
            let _ = child.wait();
        }
    }
}
