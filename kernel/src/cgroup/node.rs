//! One cgroup as the same relative path in every hierarchy hm uses (one directory on v2, one
//! per hierarchy on v1), and what is done to it whatever its level: make, list, signal, kill,
//! remove.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::{CgroupError, cgroupfs};

/// How long a kill waits in total for the cgroup to empty, and per round of signals.
const KILL_DEADLINE: Duration = Duration::from_secs(2);
const KILL_ROUND: Duration = Duration::from_millis(500);
/// How long a v1 freeze may stay `FREEZING` (a task in uninterruptible sleep) before hm kills
/// anyway: a task that cannot freeze cannot fork either while it sleeps.
const FREEZE_WAIT: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Flavor {
    /// One unified hierarchy; `controllers` are the ones hm enables down its path, in the
    /// order written to `cgroup.subtree_control`.
    V2 { controllers: Vec<&'static str> },
    /// Separate hierarchies; which directory index plays which role.
    V1(V1Roles),
}

/// Indices into [`Node::dirs`] on cgroup v1. Detection guarantees memory, pids and freezer;
/// they are `Option`s so that a cgroup found by path alone ([`super::remove_run_path`]) can
/// be handled with whatever it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct V1Roles {
    pub freezer: Option<usize>,
    pub memory: Option<usize>,
    pub pids: Option<usize>,
    pub cpu: Option<usize>,
    pub cpuacct: Option<usize>,
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    pub flavor: Flavor,
    /// The cgroup's directory in each hierarchy; on v1 the freezer's comes first, so that a
    /// cleanup going path by path freezes before it kills elsewhere.
    pub dirs: Vec<PathBuf>,
}

impl Node {
    /// The child cgroup `name`. The caller has checked `name` (see `name::check`).
    pub fn child(&self, name: &str) -> Node {
        Node {
            flavor: self.flavor.clone(),
            dirs: self.dirs.iter().map(|d| d.join(name)).collect(),
        }
    }

    /// The same cgroup in only the v1 hierarchies at `keep` (indices into `dirs`, in order),
    /// its roles renumbered; a role whose hierarchy is left out has none. On v2 (one
    /// hierarchy) it is the cgroup itself.
    pub fn only(&self, keep: &[usize]) -> Node {
        let Flavor::V1(roles) = &self.flavor else {
            return self.clone();
        };
        let at = |role: Option<usize>| role.and_then(|i| keep.iter().position(|&k| k == i));
        Node {
            flavor: Flavor::V1(V1Roles {
                freezer: at(roles.freezer),
                memory: at(roles.memory),
                pids: at(roles.pids),
                cpu: at(roles.cpu),
                cpuacct: at(roles.cpuacct),
            }),
            dirs: keep
                .iter()
                .filter_map(|&i| self.dirs.get(i).cloned())
                .collect(),
        }
    }

    pub fn dir(&self, index: Option<usize>) -> Option<&Path> {
        index.and_then(|i| self.dirs.get(i)).map(PathBuf::as_path)
    }

    /// Creates the cgroup in every hierarchy. `exclusive`: it must not exist yet in any; then
    /// a failure removes what this call created, so nothing that was there before is touched.
    pub fn create(&self, exclusive: bool) -> Result<(), CgroupError> {
        let mut created = Vec::new();
        for dir in &self.dirs {
            let result = match cgroupfs::mkdir(dir) {
                Ok(false) if exclusive => Err(CgroupError::AlreadyExists { path: dir.clone() }),
                Ok(true) => {
                    created.push(dir);
                    Ok(())
                }
                other => other.map(drop),
            };
            if let Err(e) = result {
                for dir in created.into_iter().rev() {
                    let _ = cgroupfs::rmdir(dir);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Processes in this cgroup (with `subtree`, also in its descendants) in any hierarchy,
    /// sorted, without duplicates.
    pub fn pids(&self, subtree: bool) -> Vec<i32> {
        let mut pids = Vec::new();
        for dir in &self.dirs {
            if subtree {
                for d in cgroupfs::tree_bottom_up(dir) {
                    pids.extend(cgroupfs::procs(&d));
                }
            } else {
                pids.extend(cgroupfs::procs(dir));
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    fn is_empty(&self, subtree: bool) -> bool {
        // v2 keeps the answer for a whole subtree in one file; v1 has to list every directory.
        if let (Flavor::V2 { .. }, Some(dir)) = (&self.flavor, self.dirs.first()) {
            if let Some(populated) = cgroupfs::keyed(&dir.join("cgroup.events"), "populated") {
                return populated == 0;
            }
        }
        self.pids(subtree).is_empty()
    }

    /// Sends `signal` to every process listed now; returns how many were signalled. A process
    /// that exits in between is simply gone (`ESRCH`). Between reading `cgroup.procs` and
    /// `kill(2)` a pid could be reused: hm accepts that for SIGTERM; [`Node::kill`] avoids it
    /// with `cgroup.kill` (v2) or by freezing (v1: frozen tasks cannot exit).
    pub fn signal(&self, signal: Signal, subtree: bool) -> usize {
        let me = std::process::id() as i32;
        self.pids(subtree)
            .into_iter()
            .filter(|&pid| pid > 1 && pid != me)
            .filter(|&pid| kill(Pid::from_raw(pid), signal).is_ok())
            .count()
    }

    /// SIGKILLs every process (with `subtree`, of every descendant too) and waits until none
    /// is left, repeating the kill each round for processes that were forked meanwhile.
    pub fn kill(&self, subtree: bool) -> Result<(), CgroupError> {
        let deadline = Instant::now() + KILL_DEADLINE;
        loop {
            match &self.flavor {
                Flavor::V2 { .. } => {
                    // cgroup.kill (Linux 5.14) kills the whole subtree atomically; without
                    // it, signal what is listed and let the next round catch forks.
                    let v2_kill = self
                        .dirs
                        .first()
                        .is_some_and(|d| cgroupfs::write(&d.join("cgroup.kill"), "1").is_ok());
                    if !v2_kill {
                        self.signal(Signal::SIGKILL, subtree);
                    }
                }
                Flavor::V1(roles) => {
                    let freezer = self.dir(roles.freezer);
                    if let Some(freezer) = freezer {
                        freeze(freezer);
                    }
                    self.signal(Signal::SIGKILL, subtree);
                    // Killed tasks only die once thawed.
                    if let Some(freezer) = freezer {
                        thaw(freezer);
                    }
                }
            }
            let round = (Instant::now() + KILL_ROUND).min(deadline);
            if cgroupfs::wait_until(round, || self.is_empty(subtree)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::StillPopulated {
                    path: self.dirs.first().cloned().unwrap_or_default(),
                    pids: self.pids(subtree),
                });
            }
        }
    }

    /// Kills everything in this cgroup and below, then removes it bottom-up in every
    /// hierarchy. Missing directories count as removed, so it can be called again.
    ///
    /// A tree that holds no process (the end of a run that went well) is removed at once:
    /// freezing it first would cost milliseconds of polling for `FROZEN` for nothing. Linux
    /// refuses to remove a cgroup that holds a process, so one that got in after the look is
    /// found by the failed `rmdir` and killed as in any other tree.
    pub fn remove_tree(&self) -> Result<(), CgroupError> {
        if self.is_empty(true) && self.remove_bottom_up().is_ok() {
            return Ok(());
        }
        let killed = self.kill(true);
        let removed = self.remove_bottom_up();
        killed.and(removed)
    }

    /// Removes every directory of the tree, the deepest first; returns the first error.
    fn remove_bottom_up(&self) -> Result<(), CgroupError> {
        let mut first_error = None;
        for dir in &self.dirs {
            for d in cgroupfs::tree_bottom_up(dir) {
                if let Err(e) = cgroupfs::rmdir(&d) {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Removes this cgroup (which must be empty) in every hierarchy.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let mut first_error = None;
        for dir in &self.dirs {
            if let Err(e) = cgroupfs::rmdir(dir) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Freezes a v1 freezer cgroup (hierarchical: descendants freeze too) and waits briefly for
/// `FROZEN`. A cgroup that is gone, or has no `freezer.state`, is left alone.
fn freeze(dir: &Path) {
    let state = dir.join("freezer.state");
    if !state.exists() || cgroupfs::write(&state, "FROZEN").is_err() {
        return;
    }
    let deadline = Instant::now() + FREEZE_WAIT;
    cgroupfs::wait_until(deadline, || {
        cgroupfs::read_optional(&state).is_none_or(|s| s.trim() == "FROZEN")
    });
}

fn thaw(dir: &Path) {
    let state = dir.join("freezer.state");
    if state.exists() {
        let _ = cgroupfs::write(&state, "THAWED");
    }
}
