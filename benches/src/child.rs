//! Runs external processes with a deadline: [`time_to_exit`] for the benches that time whole
//! programs (`hm run`, `make`, a shell pipeline), [`Leader`] for those that watch one while it
//! runs (its memory, its output, a signal sent to it).
//!
//! Each process gets its own process group, so a deadline or an error kills everything it
//! started; its stderr is kept (the last few KiB) to explain a failure.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
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
        return Err(exit_failure(what, status, &stderr));
    }
    Ok(elapsed)
}

/// The error for a process that exited with `status`, showing the end of its stderr.
pub fn exit_failure(what: &str, status: ExitStatus, stderr: &str) -> BenchError {
    let stderr = stderr.trim_end();
    let detail = if stderr.is_empty() {
        format!("{status} (no stderr)")
    } else {
        format!("{status}; end of its stderr:\n{stderr}")
    };
    BenchError::failed(what, detail)
}

/// A running process that leads its own process group, watched through a pidfd: the benches
/// can wait for its exit with a timeout, and read its `/proc` entry until then, without reaping
/// it. Dropped before it was reaped, it kills its whole group with SIGKILL and reaps the
/// leader, so no error path leaves it running. (hm's plugins and steps have process groups of
/// their own; when hm dies its guardian kills them.)
pub struct Leader {
    child: Child,
    pidfd: OwnedFd,
    what: String,
    reaped: bool,
}

impl Leader {
    /// Starts `cmd` in a new process group with stdin from /dev/null (stdout and stderr as the
    /// caller set them). `spawn` returns only once the child has exec'd (std waits on a
    /// close-on-exec pipe, or on `vfork`), so from then on `/proc/<pid>` describes the program,
    /// not the copy of this process that `fork` made.
    pub fn spawn(cmd: &mut Command, what: &str) -> Result<Self, BenchError> {
        cmd.stdin(Stdio::null()).process_group(0);
        let mut child = cmd
            .spawn()
            .map_err(BenchError::io(format!("failed to start {what}")))?;
        let pid = child.id() as libc::pid_t;
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; the
        // child is not reaped yet, so the pid is still its own.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: as in `kill` below: the group's leader is not reaped yet.
            unsafe { libc::killpg(pid, libc::SIGKILL) };
            let _ = child.wait();
            return Err(BenchError::io(format!("failed to open a pidfd for {what}"))(e));
        }
        Ok(Self {
            child,
            // SAFETY: pidfd_open succeeded, so `fd` is a new descriptor nobody else owns.
            pidfd: unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) },
            what: what.to_owned(),
            reaped: false,
        })
    }

    pub fn pid(&self) -> libc::pid_t {
        self.child.id() as libc::pid_t
    }

    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// Sends `signal` to the process (not its group: a Ctrl-C on a terminal reaches hm's
    /// group, and hm is alone in it).
    pub fn signal(&self, signal: libc::c_int) -> Result<(), BenchError> {
        // SAFETY: kill has no memory-safety preconditions; the process is not reaped, so the
        // pid is still its own.
        if unsafe { libc::kill(self.pid(), signal) } != 0 {
            return Err(BenchError::io(format!("failed to signal {}", self.what))(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit, without reaping it: `true` once it has.
    pub fn exited_within(&self, timeout: Duration) -> Result<bool, BenchError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut poll = libc::pollfd {
                fd: self.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let millis = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
            // SAFETY: `poll` points to one valid pollfd for the duration of the call.
            let ready = unsafe { libc::poll(&mut poll, 1, millis) };
            if ready > 0 {
                return Ok(true);
            }
            if ready == 0 {
                return Ok(false);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(BenchError::io(format!("failed to wait for {}", self.what))(
                    e,
                ));
            }
        }
    }

    /// Waits for the process to exit, up to `limit` (past it the group is killed), and reaps it.
    pub fn wait_within(&mut self, limit: Duration) -> Result<ExitStatus, BenchError> {
        if !self.exited_within(limit)? {
            self.kill();
            return Err(BenchError::TimedOut {
                what: self.what.clone(),
                limit,
            });
        }
        self.reap()
    }

    /// Reaps the process once [`Self::exited_within`] said it has exited.
    pub fn reap(&mut self) -> Result<ExitStatus, BenchError> {
        let status = self
            .child
            .wait()
            .map_err(BenchError::io(format!("failed to wait for {}", self.what)))?;
        self.reaped = true;
        Ok(status)
    }

    /// Kills the whole group with SIGKILL and reaps the leader.
    pub fn kill(&mut self) {
        if self.reaped {
            return;
        }
        // SAFETY: killpg has no memory-safety preconditions; the group is ours (its leader is
        // not reaped yet, so the id cannot have been reused).
        unsafe { libc::killpg(self.pid(), libc::SIGKILL) };
        let _ = self.child.wait();
        self.reaped = true;
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads `stderr` to its end on a thread of its own; the thread returns the last few KiB.
pub fn keep_tail(stderr: Option<ChildStderr>) -> thread::JoinHandle<String> {
    thread::spawn(move || read_tail(stderr))
}

fn read_tail(stderr: Option<ChildStderr>) -> String {
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
