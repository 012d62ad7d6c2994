//! The backend detection chose, and what works on a whole backend: creating a run's tree,
//! sweeping runs whose kernel died, cleaning up a run by path (the guardian).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::node::{Flavor, Node, V1Roles};
use super::run::remove_run_node;
use super::{CgroupError, RunCgroup, cgroupfs, name, v2};

/// The directory below hm's own cgroup that holds everything hm creates.
const HM_DIR: &str = "hm";
const RUN_PREFIX: &str = "run-";

/// Where hm's cgroups go. Made by [`super::detect`] once at startup: on v2 hm may move itself
/// into `<own>/hm/kernel` at the first run, after which detecting again would see that leaf as
/// hm's own cgroup.
#[derive(Debug, Clone)]
pub enum Backend {
    V2(OwnCgroup),
    V1(OwnCgroup),
    /// Neither is usable: the caller uses process groups and best-effort rlimits.
    None,
}

/// hm's own cgroup in every hierarchy used.
#[derive(Debug, Clone)]
pub struct OwnCgroup {
    pub(crate) node: Node,
    /// hm's own cgroup is the root of the v2 hierarchy, where processes and enabled
    /// controllers may coexist: hm enables them there without moving.
    pub(crate) root: bool,
}

impl OwnCgroup {
    /// hm's own cgroup directory in each hierarchy.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.node.dirs
    }
}

impl Backend {
    pub fn own(&self) -> Option<&OwnCgroup> {
        match self {
            Backend::V2(own) | Backend::V1(own) => Some(own),
            Backend::None => None,
        }
    }

    /// Creates `<own>/hm/run-<run_id>` in every hierarchy. It must not exist yet.
    pub fn create_run(&self, run_id: &str) -> Result<RunCgroup, CgroupError> {
        name::check(run_id)?;
        let Some(own) = self.own() else {
            return Err(CgroupError::Unavailable {
                reason: "no usable cgroup hierarchy was detected".into(),
            });
        };
        let controllers = match &own.node.flavor {
            Flavor::V2 { controllers } => Some(controllers),
            Flavor::V1(_) => None,
        };
        // hm's own cgroup is locked in every hierarchy, always in the same order; a removal
        // holds one of these locks at a time, so the two never wait for each other.
        let own_locks = own
            .node
            .dirs
            .iter()
            .map(|d| cgroupfs::lock(d))
            .collect::<Result<Vec<_>, _>>()?;
        let mut changes = None;
        if let (Some(controllers), Some(own_dir)) = (controllers, own.node.dirs.first()) {
            let made = v2::prepare_own(own_dir, controllers, own.root)?;
            changes = Some((own_dir.clone(), made));
        }
        let hm = own.node.child(HM_DIR);
        let run = hm.child(&format!("{RUN_PREFIX}{run_id}"));
        hm.create(false)?;
        if let Some(controllers) = controllers {
            hm.dirs
                .iter()
                .try_for_each(|d| v2::enable(d, controllers))?;
        }
        run.create(true)?;
        // Removing the run (below, on a failure) takes the lock again.
        drop(own_locks);
        // From here on, dropping `created` removes the tree again.
        let created = RunCgroup::adopt(run_id.to_owned(), run).with_own_changes(changes);
        if let Some(controllers) = controllers {
            for dir in created.paths() {
                v2::enable(&dir, controllers)?;
            }
        }
        Ok(created)
    }

    /// The ids of the runs found under `<own>/hm` in any hierarchy.
    fn run_ids(&self) -> BTreeSet<String> {
        let Some(own) = self.own() else {
            return BTreeSet::new();
        };
        own.node
            .child(HM_DIR)
            .dirs
            .iter()
            .flat_map(|dir| cgroupfs::subdirs(dir))
            .filter_map(|path| {
                let id = path.file_name()?.to_str()?.strip_prefix(RUN_PREFIX)?;
                name::check(id).is_ok().then(|| id.to_owned())
            })
            .collect()
    }
}

/// Kills and removes every run tree below hm's own cgroup whose owner is dead
/// (`is_alive(run_id)` is false); returns the ids removed. A run whose removal fails is left
/// for the next sweep and logged. Also removes hm's v2 `kernel` leaf once it is empty.
pub fn sweep_stale(backend: &Backend, is_alive: impl Fn(&str) -> bool) -> Vec<String> {
    let Some(own) = backend.own() else {
        return Vec::new();
    };
    let hm = own.node.child(HM_DIR);
    let mut removed = Vec::new();
    for id in backend.run_ids() {
        if is_alive(&id) {
            continue;
        }
        match remove_run_node(&hm.child(&format!("{RUN_PREFIX}{id}"))) {
            Ok(()) => removed.push(id),
            Err(e) => tracing::warn!(run = %id, "cannot remove a stale run's cgroups: {e}"),
        }
    }
    if let Flavor::V2 { .. } = own.node.flavor {
        // hm moves itself into `kernel` under the lock (`prepare_own`), so it is looked at
        // under the lock too.
        let _own_lock = own.node.dirs.first().map(|d| cgroupfs::lock(d));
        for dir in &hm.child(v2::KERNEL_LEAF).dirs {
            if cgroupfs::procs(dir).is_empty() {
                let _ = cgroupfs::rmdir(dir);
            }
        }
    }
    removed
}

/// Kills everything below one run directory and removes it, knowing only its path (as the
/// guardian does, from [`RunCgroup::paths`]). Refuses any path that is not `…/hm/run-<id>`.
/// Which kill applies is read from the directory: v2 `cgroup.kill`, v1 freezer, else signals.
pub fn remove_run_path(path: &Path) -> Result<(), CgroupError> {
    let id = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix(RUN_PREFIX));
    let under_hm = path
        .parent()
        .and_then(Path::file_name)
        .is_some_and(|n| n == HM_DIR);
    if !under_hm || id.is_none_or(|id| name::check(id).is_err()) {
        return Err(CgroupError::InvalidName {
            name: path.display().to_string(),
            why: "not a run cgroup of hm (…/hm/run-<id>)",
        });
    }
    let flavor = if path.join("cgroup.controllers").exists() {
        Flavor::V2 {
            controllers: Vec::new(),
        }
    } else {
        Flavor::V1(V1Roles {
            freezer: path.join("freezer.state").exists().then_some(0),
            ..V1Roles::default()
        })
    };
    remove_run_node(&Node {
        flavor,
        dirs: vec![path.to_owned()],
    })
}
