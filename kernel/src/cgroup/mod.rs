//! cgroupfs: the one module that knows cgroup files.
//!
//! Start with [`detect`], which reads `/proc/self/cgroup` and `/proc/self/mountinfo` once at
//! startup and picks a backend: cgroup v2 when hm's own cgroup offers the memory and pids
//! controllers, else cgroup v1 when the memory, pids and freezer hierarchies are writable,
//! else none (the caller falls back to process groups and rlimits, and shows the reason).
//! [`Backend::create_run`] then builds, in every hierarchy used,
//!
//! ```text
//! <hm's own cgroup>/hm/run-<run id>/<plugin>/{plugin, step-<name>-<attempt>}
//! ```
//!
//! and [`RunCgroup::leaf`] makes the leaves processes join. Processes live only in leaves.
//!
//! **Invariant:** nothing is ever written outside `<own cgroup>/hm/`, with one exception that
//! cgroup v2 forces (see below): `<own cgroup>/cgroup.subtree_control`. Every name that becomes
//! a path component is checked first (`[A-Za-z0-9._-]`, not starting with `.` or `-`), so no
//! name can climb out of the tree.
//!
//! **Invariant:** no signal ever goes to pid ≤ 1 or to hm itself, whatever a `cgroup.procs`
//! file says.
//!
//! cgroup v2 and the no-internal-process rule: controllers can only be enabled in
//! `cgroup.subtree_control` of a cgroup that holds no processes, and hm's own cgroup holds at
//! least hm. So when they are not enabled yet, hm moves itself into `<own>/hm/kernel` (once,
//! before the first run cgroup) and enables them — but only when hm is the only process there
//! (as under `systemd-run --scope -p Delegate=yes`). If other processes share hm's cgroup,
//! detection says so and falls back; hm never moves processes that are not its own.
//!
//! Everything here blocks (file I/O; a kill waits up to ~2 s for the cgroup to empty): call it
//! from a blocking context, not from an async task.

mod backend;
mod cgroupfs;
mod detect;
mod error;
mod janitor;
mod name;
mod node;
mod run;
mod v1;
pub(crate) mod v2;

#[cfg(test)]
mod tests;

pub use backend::{Backend, OwnCgroup, remove_run_path, sweep_stale};
pub use detect::{Detected, detect, detect_from};
pub use error::CgroupError;
pub use janitor::LeafJanitor;
pub use run::{Leaf, LeafStats, RunCgroup};
pub use v2::{OwnChanges, restore_own};
