//! The process at the other end of a plugin's connection: how it is confined (its cgroup
//! leaf, or an rlimit), watched (its output captured, its pid kept from the reaper), waited for
//! and killed, and the story told when it did not start.

use std::collections::{HashSet, VecDeque};
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::events::lock;
use crate::cgroup::{CgroupError, Leaf};
use crate::registry::PluginSpec;

/// How long a plugin may take to exit once its socket is closed.
pub(super) const EXIT_GRACE: Duration = Duration::from_secs(2);
/// How many lines of a plugin's output are kept for the story of its failure.
const STDERR_TAIL: usize = 20;

pub(super) type Tail = Arc<Mutex<VecDeque<String>>>;

/// Where a plugin process is confined: its cgroup leaf, or without cgroups a best-effort
/// address-space rlimit.
#[derive(Debug, Clone, Default)]
pub struct Confinement {
    pub leaf: Option<Leaf>,
    pub memory_rlimit: Option<u64>,
}

/// Why a plugin could not be put in its place.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfineError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("cannot set its memory rlimit: {0}")]
    Rlimit(std::io::Error),
}

impl Confinement {
    /// Puts the just-spawned plugin in its place. A plugin with a leaf joined it itself
    /// before exec ([`super::spawn::ChildJoin`]); one without gets its memory rlimit here.
    /// Nothing of the plugin runs before its handshake, and it starts no process before its
    /// first call, so limiting it right after the spawn leaves nothing outside.
    pub(super) fn apply(&self, pid: u32) -> Result<(), ConfineError> {
        if self.leaf.is_some() {
            return Ok(());
        }
        if let Some(bytes) = self.memory_rlimit {
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            // SAFETY: prlimit reads `limit` and writes nothing (null old-limit pointer).
            let rc = unsafe {
                libc::prlimit(
                    pid as libc::pid_t,
                    libc::RLIMIT_AS,
                    &limit,
                    std::ptr::null_mut(),
                )
            };
            if rc == -1 {
                return Err(ConfineError::Rlimit(std::io::Error::last_os_error()));
            }
        }
        Ok(())
    }
}

/// The process at the other end of a connection: one hm started, or one that attached.
#[expect(
    clippy::large_enum_variant,
    reason = "one per plugin instance, never moved around in bulk"
)]
pub(super) enum PluginProcess {
    Spawned {
        child: tokio::process::Child,
        /// The tasks collecting its stdout and stderr, and the last lines they saw.
        capture: Vec<tokio::task::JoinHandle<()>>,
        tail: Tail,
        _registered: Registered,
    },
    /// Started by hand (`--attach`): not hm's child, not in a group or cgroup of hm's, its
    /// output on its own terminal. hm only ever signals the process itself.
    Attached,
}

impl PluginProcess {
    pub(super) fn kill(&self, pid: u32) {
        match self {
            PluginProcess::Spawned { .. } => kill_group(pid),
            PluginProcess::Attached if pid > 0 => {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            PluginProcess::Attached => {}
        }
    }

    /// After its end: kills what is left in the process group hm started it in. An attached
    /// plugin was not started by hm and may still be exiting on its own; it is left alone.
    pub(super) fn clean_up(&self, pid: u32) {
        if let PluginProcess::Spawned { .. } = self {
            kill_group(pid);
        }
    }

    /// Its exit status, killing it if it takes longer than [`EXIT_GRACE`]. An attached
    /// plugin's status is not hm's to collect: its connection closing is its end.
    pub(super) async fn wait(&mut self, pid: u32) -> Option<ExitStatus> {
        let PluginProcess::Spawned { child, .. } = self else {
            return None;
        };
        match tokio::time::timeout(EXIT_GRACE, child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                kill_group(pid);
                child.wait().await.ok()
            }
        }
    }

    /// The last lines of its output, once the capture has read everything.
    pub(super) async fn finish(self) -> Vec<String> {
        let PluginProcess::Spawned { capture, tail, .. } = self else {
            return Vec::new();
        };
        for task in capture {
            let _ = tokio::time::timeout(EXIT_GRACE, task).await;
        }
        tail.lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }
}

pub(super) async fn capture_lines<R: tokio::io::AsyncRead + Unpin>(reader: R, tail: Tail) {
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::debug!("plugin output: {line}");
        if let Ok(mut tail) = tail.lock() {
            if tail.len() == STDERR_TAIL {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
}

/// Removes a plugin's pid from the reaper's keep-set once tokio has waited for it.
pub(super) struct Registered {
    pub(super) set: Arc<Mutex<HashSet<u32>>>,
    pub(super) pid: u32,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.set).remove(&self.pid);
    }
}

pub(super) fn kill_group(pid: u32) {
    if pid > 0 {
        let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

/// The full story of a plugin that did not start: what went wrong, how it exited, and the
/// last lines it wrote to stderr.
pub(super) fn start_failure(
    spec: &PluginSpec,
    reason: &str,
    status: Option<ExitStatus>,
    tail: &[String],
) -> String {
    use std::os::unix::process::ExitStatusExt;
    let mut message = format!("plugin {} ({}) {reason}", spec.name, spec.origin);
    match status {
        Some(s) if s.code().is_some() => {
            message.push_str(&format!("\n  exit status: {}", s.code().unwrap_or(0)))
        }
        Some(s) => message.push_str(&format!("\n  killed by signal {}", s.signal().unwrap_or(0))),
        None => {}
    }
    if !tail.is_empty() {
        message.push_str("\n  last lines of its output:");
        for line in tail {
            message.push_str("\n    ");
            message.push_str(line);
        }
    }
    message
}
