//! A run's cgroup tree (`<own>/hm/run-<id>`) and its leaves (`<plugin>/plugin`,
//! `<plugin>/step-<name>-<attempt>`): what the scheduler and the supervisor hold.

use std::path::PathBuf;

use nix::sys::signal::Signal;

use super::node::{Flavor, Node};
use super::{CgroupError, cgroupfs, name, v1, v2};
use crate::config::Limits;

/// The cgroup tree of one run, in every hierarchy used.
///
/// **Invariant:** dropping it kills every process left in the tree and removes the tree, so a
/// run that ends in any way (an error, a panic) leaves no cgroup behind. [`RunCgroup::remove`]
/// does the same and reports what failed; both may happen, in any order, any number of times.
#[derive(Debug)]
pub struct RunCgroup {
    id: String,
    node: Node,
    /// Plugin directories already created in this run.
    plugins: std::sync::Mutex<std::collections::HashSet<String>>,
    /// The limits of each plugin's own leaf ([`RunCgroup::plugin_leaf`]), by plugin.
    plugin_limits: std::sync::Mutex<std::collections::HashMap<String, Limits>>,
    /// hm's own v2 cgroup and what making room for this run changed in it.
    own: Option<(PathBuf, v2::OwnChanges)>,
}

impl RunCgroup {
    /// Takes charge of an existing run directory (made by `create_run`, or found by a sweep).
    pub(crate) fn adopt(id: String, node: Node) -> Self {
        Self {
            id,
            node,
            plugins: Default::default(),
            plugin_limits: Default::default(),
            own: None,
        }
    }

    pub(crate) fn with_own_changes(mut self, own: Option<(PathBuf, v2::OwnChanges)>) -> Self {
        self.own = own;
        self
    }

    /// hm's own v2 cgroup and what this run changed in it, for the guardian.
    pub fn own_changes(&self) -> Option<&(PathBuf, v2::OwnChanges)> {
        self.own.as_ref()
    }

    /// Once the run is over and removed: gives hm's own cgroup back as it found it, when no
    /// other run of hm uses it ([`super::restore_own`]).
    pub fn restore_own(&self) -> Result<(), CgroupError> {
        match &self.own {
            Some((own, changes)) => v2::restore_own(own, changes, std::process::id()),
            None => Ok(()),
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Creates the leaf `<plugin>/<leaf>` (the plugin directory if needed) and sets only the
    /// limits that are configured. Fails if the leaf exists already: a leaf is fresh, so its
    /// counters (OOM kills, limit hits) belong to it alone.
    pub fn leaf(&self, plugin: &str, leaf: &str, limits: &Limits) -> Result<Leaf, CgroupError> {
        let all: Vec<usize> = (0..self.node.dirs.len()).collect();
        self.make_leaf(plugin, leaf, limits, &all, Vec::new())
    }

    /// Creates a plugin instance's own leaf, like [`Self::leaf`], and remembers its limits:
    /// its steps may stay in it where it has none ([`Self::step_leaf`]).
    pub fn plugin_leaf(
        &self,
        plugin: &str,
        leaf: &str,
        limits: &Limits,
    ) -> Result<Leaf, CgroupError> {
        let made = self.leaf(plugin, leaf, limits)?;
        if let Ok(mut known) = self.plugin_limits.lock() {
            known.insert(plugin.to_owned(), *limits);
        }
        Ok(made)
    }

    /// Creates a step's leaf. On v2 (one hierarchy) it is [`Self::leaf`]. On v1 the leaf is
    /// made only in the hierarchies the step's limits and accounting need: the freezer (the
    /// kill of the whole step), memory (peak, OOM kills, limit hits) and cpuacct (CPU time)
    /// always, pids and cpu only for a pids or cpu limit. A `mkdir`, an `rmdir` and a join
    /// fewer in each hierarchy left out is most of a small step's cgroup cost. There the step
    /// stays where its plugin forked it, in the plugin's own leaf, when that has no limit in
    /// the hierarchy; else (or for a plugin hm did not start) it joins the plugin's directory,
    /// which never has one, so a plugin's limits never apply to its steps.
    pub fn step_leaf(
        &self,
        plugin: &str,
        leaf: &str,
        limits: &Limits,
    ) -> Result<Leaf, CgroupError> {
        let Flavor::V1(roles) = &self.node.flavor else {
            return self.leaf(plugin, leaf, limits);
        };
        let plugin_limits = self
            .plugin_limits
            .lock()
            .ok()
            .and_then(|known| known.get(plugin).copied());
        let plugin_dir = self.node.child(plugin);
        let mut keep = Vec::new();
        let mut joins = Vec::new();
        for i in 0..self.node.dirs.len() {
            let is = |role: Option<usize>| role == Some(i);
            let needed = is(roles.freezer)
                || is(roles.memory)
                || is(roles.cpuacct)
                || (is(roles.pids) && limits.pids.is_some())
                || (is(roles.cpu) && limits.cpu.is_some());
            let plugin_limited = plugin_limits.is_none_or(|l| {
                (is(roles.pids) && l.pids.is_some()) || (is(roles.cpu) && l.cpu.is_some())
            });
            if needed {
                keep.push(i);
            } else if plugin_limited {
                joins.extend(plugin_dir.dirs.get(i).map(|d| d.join(cgroupfs::PROCS)));
            }
        }
        self.make_leaf(plugin, leaf, limits, &keep, joins)
    }

    /// Makes `<plugin>/<leaf>` in the hierarchies at `keep`; `joins` are the `cgroup.procs`
    /// files elsewhere that a process joining the leaf writes to as well.
    fn make_leaf(
        &self,
        plugin: &str,
        leaf: &str,
        limits: &Limits,
        keep: &[usize],
        joins: Vec<PathBuf>,
    ) -> Result<Leaf, CgroupError> {
        name::check(plugin)?;
        name::check(leaf)?;
        let plugin_node = self.node.child(plugin);
        // A plugin's directory is made once per run: every step of it would otherwise pay a
        // failing mkdir (and a subtree_control write on v2) in each hierarchy.
        let known = self
            .plugins
            .lock()
            .map(|set| set.contains(plugin))
            .unwrap_or(false);
        if !known {
            plugin_node.create(false)?;
            if let Flavor::V2 { controllers } = &plugin_node.flavor {
                for dir in &plugin_node.dirs {
                    v2::enable(dir, controllers)?;
                }
            }
            if let Ok(mut set) = self.plugins.lock() {
                set.insert(plugin.to_owned());
            }
        }
        let leaf = Leaf {
            node: plugin_node.child(leaf).only(keep),
            joins,
        };
        leaf.node.create(true)?;
        let limited = match &leaf.node.flavor {
            Flavor::V2 { controllers } => leaf
                .node
                .dirs
                .iter()
                .try_for_each(|dir| v2::set_limits(dir, controllers, limits)),
            Flavor::V1(roles) => v1::set_limits(&leaf.node, *roles, limits),
        };
        if let Err(e) = limited {
            let _ = leaf.node.remove();
            return Err(e);
        }
        Ok(leaf)
    }

    /// SIGKILLs every process in the run's tree and waits until it is empty.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        self.node.kill(true)
    }

    /// Kills what is left and removes the whole tree bottom-up, and `<own>/hm` too when no
    /// other run uses it. Idempotent: what is already gone counts as removed.
    pub fn remove(&self) -> Result<(), CgroupError> {
        remove_run_node(&self.node)
    }

    /// The run's directory in each hierarchy (on v1 the freezer's first), for the guardian;
    /// see [`super::remove_run_path`].
    pub fn paths(&self) -> Vec<PathBuf> {
        self.node.dirs.clone()
    }
}

impl Drop for RunCgroup {
    fn drop(&mut self) {
        if let Err(e) = self.remove() {
            tracing::warn!(run = %self.id, "cannot clean up the run's cgroups: {e}");
        }
    }
}

/// Removes a run's tree, then `hm` above it if that is now empty. The `hm` directory is shared
/// by concurrent runs: it is looked at and removed under the lock on hm's own cgroup
/// ([`cgroupfs::lock`]), and failing to remove it (hm's own v2 `kernel` leaf is in it) is
/// expected and ignored.
pub(crate) fn remove_run_node(run: &Node) -> Result<(), CgroupError> {
    let result = run.remove_tree();
    for dir in &run.dirs {
        let Some(hm) = dir.parent() else { continue };
        let _own_lock = hm.parent().map(cgroupfs::lock);
        if cgroupfs::subdirs(hm).is_empty() {
            let _ = cgroupfs::rmdir(hm);
        }
    }
    result
}

/// One leaf cgroup (a plugin's or a step's) in every hierarchy used. Dropping it does
/// nothing: the run removes what its leaves leave behind.
#[derive(Debug, Clone)]
pub struct Leaf {
    node: Node,
    /// `cgroup.procs` files outside the leaf that a process joining it writes to as well: on
    /// v1, the plugin's directory in hierarchies where a step has no leaf of its own.
    joins: Vec<PathBuf>,
}

/// Accounting of one leaf since it was created; `None` where this kernel or backend does not
/// tell.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeafStats {
    /// v2 `memory.peak`, v1 `memory.max_usage_in_bytes`.
    pub peak_memory_bytes: Option<u64>,
    /// v2 `cpu.stat` `usage_usec`, v1 `cpuacct.usage`.
    pub cpu_ms: Option<u64>,
    /// Processes killed by the OOM killer: v2 `memory.events` `oom_kill`, v1
    /// `memory.oom_control` `oom_kill`.
    pub oom_kills: Option<u64>,
    /// Times usage ran into the memory limit: v2 `memory.events` `max`, v1 `memory.failcnt`.
    pub memory_limit_hits: Option<u64>,
    /// Forks refused by the pids limit: `pids.events` `max` on both.
    pub pids_limit_hits: Option<u64>,
    /// The memory limit in force (page-rounded on v1); `None` for no limit.
    pub memory_limit: Option<u64>,
}

impl Leaf {
    /// The leaf's directory in each hierarchy.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.node.dirs.clone()
    }

    /// `cgroup.procs` of this leaf in every hierarchy it is in, then those it joins besides
    /// ([`RunCgroup::step_leaf`]): a process joins by writing its pid (or `0` for itself, e.g.
    /// between fork and exec) to each of them.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.node
            .dirs
            .iter()
            .map(|d| d.join(cgroupfs::PROCS))
            .chain(self.joins.iter().cloned())
            .collect()
    }

    /// The files a process writes `0` into to join the leaf itself, between fork and exec: on
    /// v1 the `tasks` file beside each `cgroup.procs` (it moves the one thread the child is,
    /// and moving the writer itself is the one move Linux makes without taking its system-wide
    /// lock for writing, whose first taking in a while waits for an RCU grace period: 12–20 ms
    /// on a VM), on v2 `cgroup.procs` itself.
    pub fn self_join_files(&self) -> Vec<PathBuf> {
        let v1 = matches!(self.node.flavor, Flavor::V1(_));
        self.procs_files()
            .into_iter()
            .map(|path| match v1 {
                true => path.with_file_name("tasks"),
                false => path,
            })
            .collect()
    }

    /// Moves process `pid` (all its threads) into the leaf in every hierarchy. A failure
    /// part-way leaves it in some of them: the caller should kill it. Refuses hm itself.
    pub fn join(&self, pid: u32) -> Result<(), CgroupError> {
        for file in self.procs_files() {
            // `0` would move the writer, hm; hm is never in a leaf.
            let source = if pid == 0 || pid == std::process::id() {
                Some(std::io::Error::from(std::io::ErrorKind::InvalidInput))
            } else {
                std::fs::write(&file, pid.to_string()).err()
            };
            if let Some(source) = source {
                return Err(CgroupError::Join {
                    path: file,
                    pid,
                    source,
                });
            }
        }
        Ok(())
    }

    /// The processes in the leaf now, in any hierarchy, sorted.
    pub fn pids(&self) -> Vec<i32> {
        self.node.pids(false)
    }

    /// Sends `signal` to every process in the leaf (the SIGTERM rung of the kill ladder);
    /// returns how many were signalled.
    pub fn signal(&self, signal: Signal) -> usize {
        self.node.signal(signal, false)
    }

    /// SIGKILLs every process in the leaf (v2 `cgroup.kill`; v1 freeze, kill, thaw) and waits
    /// until it is empty, for at most about 2 s.
    pub fn kill(&self) -> Result<(), CgroupError> {
        self.node.kill(false)
    }

    pub fn stats(&self) -> LeafStats {
        match &self.node.flavor {
            Flavor::V2 { .. } => self
                .node
                .dirs
                .first()
                .map(|d| v2::stats(d))
                .unwrap_or_default(),
            Flavor::V1(roles) => v1::stats(&self.node, *roles),
        }
    }

    /// Peak memory and CPU time only: what a step that passed reports. Two reads instead of
    /// six, for the common case of the run loop.
    pub fn usage(&self) -> LeafStats {
        match &self.node.flavor {
            Flavor::V2 { .. } => self
                .node
                .dirs
                .first()
                .map(|d| v2::usage(d))
                .unwrap_or_default(),
            Flavor::V1(roles) => v1::usage(&self.node, *roles),
        }
    }

    /// The processes in the leaf now, read from one hierarchy: enough to see whether a step
    /// left anything behind (its processes joined every hierarchy at once). [`Self::remove`]
    /// fails on a leaf another hierarchy still holds processes in.
    pub fn pids_quick(&self) -> Vec<i32> {
        self.node
            .dirs
            .first()
            .map(|dir| cgroupfs::procs(dir))
            .unwrap_or_default()
    }

    /// Removes the leaf, which must be empty (kill it first). Idempotent.
    pub fn remove(&self) -> Result<(), CgroupError> {
        self.node.remove()
    }
}
