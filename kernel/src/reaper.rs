//! The kernel as a child subreaper: processes that daemonise out of a step are
//! re-parented to `hm` instead of init, so they stay within reach, and their zombies are reaped
//! here. Children tokio waits for (the plugins) and the guardian are never touched.

use std::collections::HashSet;

/// Makes orphaned descendants re-parent to this process.
pub fn become_subreaper() -> std::io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true).map_err(std::io::Error::from)
}

/// Reaps every zombie child of this process whose pid is not in `keep`; returns how many.
///
/// Only this process's children are looked at where Linux lists them: a look through all of
/// `/proc` reads every process's `stat` (75 of them on a quiet machine, thousands on a busy CI
/// host) each time a plugin exits.
pub fn reap_orphans(keep: &HashSet<u32>) -> usize {
    let me = std::process::id() as i32;
    let candidates =
        hm_ipc::procfs::own_children().unwrap_or_else(|| hm_ipc::procfs::pids().collect());
    let mut reaped = 0;
    for pid in candidates {
        if keep.contains(&(pid as u32)) {
            continue;
        }
        let Some(stat) = hm_ipc::procfs::stat(pid) else {
            continue;
        };
        if stat.state == 'Z' && stat.ppid == me {
            let pid = nix::unistd::Pid::from_raw(pid);
            if nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)).is_ok() {
                reaped += 1;
            }
        }
    }
    reaped
}
