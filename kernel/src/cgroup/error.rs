//! The errors of cgroup operations; each names the cgroup path and what was being done.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CgroupError {
    #[error("no cgroup backend is available: {reason}")]
    Unavailable { reason: String },
    #[error("refusing cgroup name {name:?}: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("failed to create cgroup {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cgroup {} already exists", path.display())]
    AlreadyExists { path: PathBuf },
    #[error("{} exists but is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("failed to lock cgroup {} against other hm processes", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to remove cgroup {}", path.display())]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to write {value:?} to {}", path.display())]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to move process {pid} into cgroup {}", path.display())]
    Join {
        path: PathBuf,
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error(
        "cgroup v2: {} also holds other processes ({pids:?}), so controllers cannot be \
         enabled below it (no-internal-process rule); start hm in a cgroup of its own, e.g. \
         `systemd-run --scope -p Delegate=yes hm ...`",
        path.display()
    )]
    InternalProcesses { path: PathBuf, pids: Vec<i32> },
    #[error("cgroup {} still has processes {pids:?} after killing them", path.display())]
    StillPopulated { path: PathBuf, pids: Vec<i32> },
}
