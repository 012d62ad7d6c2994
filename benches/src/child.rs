//! Runs an external process to its end with a deadline, for the benches that time whole
//! programs (`hm run`, `make`, a shell pipeline).
//!
//! Each process gets its own process group, so a deadline kills everything it started; its
//! stderr is kept (the last few KiB) to explain a failure.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::measure::BenchError;

/// How much of a failed process's stderr is shown.
const STDERR_TAIL: usize = 4096;

/// Spawns `cmd` (stdin from /dev/null, stderr captured, stdout as the caller set it), waits
/// for it and returns how long that took from just before the spawn. A non-zero exit is an
/// error that shows the end of its stderr; past `limit` the whole process group is killed.
pub fn time_to_exit(
    cmd: &mut Command,
    limit: Duration,
    what: &str,
) -> Result<Duration, BenchError> {
    cmd.stdin(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0);
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(BenchError::io(format!("failed to start {what}")))?;
    let pgid = child.id() as libc::pid_t;
    let stderr = child.stderr.take();
    let tail = thread::spawn(move || read_tail(stderr));
    let (finished, wait_finish) = mpsc::channel::<()>();
    let watchdog = thread::spawn(move || {
        if wait_finish.recv_timeout(limit) == Err(mpsc::RecvTimeoutError::Timeout) {
            // SAFETY: killpg has no memory-safety preconditions; the group is ours (its leader
            // is not reaped yet, so the id cannot have been reused).
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
            return true;
        }
        false
    });
    let status = child.wait();
    let elapsed = start.elapsed();
    drop(finished);
    let killed = watchdog.join().unwrap_or(false);
    let stderr = tail.join().unwrap_or_default();
    let status = status.map_err(BenchError::io(format!("failed to wait for {what}")))?;
    if killed {
        return Err(BenchError::TimedOut {
            what: what.to_owned(),
            limit,
        });
    }
    if !status.success() {
        let stderr = stderr.trim_end();
        let detail = if stderr.is_empty() {
            format!("{status} (no stderr)")
        } else {
            format!("{status}; end of its stderr:\n{stderr}")
        };
        return Err(BenchError::failed(what, detail));
    }
    Ok(elapsed)
}

fn read_tail(stderr: Option<std::process::ChildStderr>) -> String {
    let Some(mut stderr) = stderr else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = stderr.read(&mut buf) {
        if n == 0 {
            break;
        }
        kept.extend_from_slice(&buf[..n]);
        if kept.len() > 2 * STDERR_TAIL {
            kept.drain(..kept.len() - STDERR_TAIL);
        }
    }
    let start = kept.len().saturating_sub(STDERR_TAIL);
    String::from_utf8_lossy(&kept[start..]).into_owned()
}
