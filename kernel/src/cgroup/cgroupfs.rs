//! File primitives on cgroupfs: write and read interface files, make and remove cgroup
//! directories, list processes, wait for a cgroup to empty.
//!
//! The same calls work on a fake tree of plain files and directories (the v2 tests): writes
//! create the file when it is missing, and [`rmdir`] removes the plain files of a fake cgroup
//! before the directory, which on cgroupfs the kernel does itself.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::CgroupError;

pub(crate) const PROCS: &str = "cgroup.procs";

/// Writes one value to an interface file. cgroupfs takes each `write(2)` as one command, so
/// the value goes out in a single call (`fs::write` does exactly one for short values).
pub(crate) fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Write {
        path: path.to_owned(),
        value: value.to_owned(),
        source,
    })
}

pub(crate) fn read(path: &Path) -> Result<String, CgroupError> {
    hm_ipc::procfs::read_small(path).map_err(|source| CgroupError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads an interface file whose absence or unreadability only means "not known".
pub(crate) fn read_optional(path: &Path) -> Option<String> {
    hm_ipc::procfs::read_small(path).ok()
}

/// A number file (`memory.peak`, `cpuacct.usage`); `max` and garbage are `None`.
pub(crate) fn number(path: &Path) -> Option<u64> {
    read_optional(path)?.trim().parse().ok()
}

/// The value of `key` in a flat keyed file (`memory.events`, `cpu.stat`, `memory.oom_control`):
/// lines of `key value`.
pub(crate) fn keyed(path: &Path, key: &str) -> Option<u64> {
    keyed_in(&read_optional(path)?, key)
}

pub(crate) fn keyed_in(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// The processes in one cgroup directory (not its descendants). A missing directory has none.
pub(crate) fn procs(dir: &Path) -> Vec<i32> {
    read_optional(&dir.join(PROCS))
        .map(|text| parse_pids(&text))
        .unwrap_or_default()
}

/// Only positive pids: a pid ≤ 0 given to kill(2) would mean a process group or everyone.
pub(crate) fn parse_pids(text: &str) -> Vec<i32> {
    text.split_whitespace()
        .filter_map(|s| s.parse::<i32>().ok())
        .filter(|&pid| pid > 0)
        .collect()
}

/// An exclusive `flock(2)` on hm's own cgroup directory, released when dropped. Every hm
/// process in one cgroup shares `<own>/hm`: creating a run below it, removing it once empty
/// and (v2) changing `<own>`'s controllers happen under this lock, so that one hm never
/// removes `hm` while another is creating its run there. Nothing else may be taken while it is
/// held in that hierarchy: a second lock of the same directory, even in the same process,
/// waits for the first.
pub(crate) fn lock(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, CgroupError> {
    let fail = |source| CgroupError::Lock {
        path: dir.to_owned(),
        source,
    };
    let file = std::fs::File::open(dir).map_err(fail)?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| fail(io::Error::from(errno)))
}

/// Creates one cgroup directory. Returns whether it was created (false: it already existed).
pub(crate) fn mkdir(path: &Path) -> Result<bool, CgroupError> {
    match std::fs::create_dir(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // A name equal to an interface file (`tasks`, `cgroup.procs`) lands here.
            if path.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                Ok(false)
            } else {
                Err(CgroupError::NotADirectory {
                    path: path.to_owned(),
                })
            }
        }
        Err(source) => Err(CgroupError::Create {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Child directories of a cgroup (its child cgroups), sorted.
pub(crate) fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs
}

/// `dir` and all its descendants, children before parents (the order `rmdir` needs).
pub(crate) fn tree_bottom_up(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for child in subdirs(dir) {
            walk(&child, out);
        }
        out.push(dir.to_owned());
    }
    if dir.is_dir() {
        walk(dir, &mut out);
    }
    out
}

/// Removes one empty cgroup. A missing directory is already removed. `EBUSY` right after the
/// last process was killed is retried briefly: an exiting task leaves `cgroup.procs` a moment
/// before the cgroup stops counting it.
pub(crate) fn rmdir(path: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + Duration::from_millis(200);
    loop {
        let error = match std::fs::remove_dir(path) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => e,
        };
        if error.raw_os_error() == Some(libc::ENOTEMPTY) && !on_cgroupfs(path) {
            remove_fake_interface_files(path).map_err(|source| CgroupError::Remove {
                path: path.to_owned(),
                source,
            })?;
            continue;
        }
        if error.raw_os_error() == Some(libc::EBUSY)
            && procs(path).is_empty()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        return Err(CgroupError::Remove {
            path: path.to_owned(),
            source: error,
        });
    }
}

fn on_cgroupfs(path: &Path) -> bool {
    use nix::sys::statfs::{CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, statfs};
    statfs(path).is_ok_and(|s| {
        let t = s.filesystem_type();
        t == CGROUP_SUPER_MAGIC || t == CGROUP2_SUPER_MAGIC
    })
}

/// A fake cgroup (plain files, not on cgroupfs) behaves like a real one: it cannot be removed
/// while it has child cgroups or its `cgroup.procs` lists processes (`EBUSY`); otherwise its
/// plain files go and then the directory.
fn remove_fake_interface_files(dir: &Path) -> io::Result<()> {
    if !subdirs(dir).is_empty() || !procs(dir).is_empty() {
        return Err(io::Error::from_raw_os_error(libc::EBUSY));
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Polls `done` until it is true or `deadline` passes; returns whether it became true. The
/// pause grows from 1 ms to 20 ms, so a cgroup that empties at once costs almost nothing.
pub(crate) fn wait_until(deadline: Instant, mut done: impl FnMut() -> bool) -> bool {
    let mut pause = Duration::from_millis(1);
    loop {
        if done() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}
