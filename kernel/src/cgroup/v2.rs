//! cgroup v2 files: controllers enabled down the path, limits on a leaf, and its accounting.

use std::path::Path;

use super::cgroupfs::{self, PROCS};
use super::{CgroupError, LeafStats};
use crate::config::Limits;

/// The leaf below `<own>/hm` that hm moves itself into when its own cgroup must hand its
/// controllers down (the no-internal-process rule).
pub(crate) const KERNEL_LEAF: &str = "kernel";

/// The CPU bandwidth period, for v2 `cpu.max` and v1 `cpu.cfs_period_us` alike (the kernel
/// default).
pub(crate) const CPU_PERIOD_US: u64 = 100_000;

/// The quota per period for `cores` CPUs; the kernel refuses less than 1 ms.
pub(crate) fn cpu_quota_us(cores: f64) -> u64 {
    ((cores * CPU_PERIOD_US as f64).round() as u64).max(1_000)
}

/// `+memory +pids +cpu`, for `cgroup.subtree_control`.
fn subtree_line(controllers: &[&str]) -> String {
    controllers
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn enable(dir: &Path, controllers: &[&str]) -> Result<(), CgroupError> {
    cgroupfs::write(
        &dir.join("cgroup.subtree_control"),
        &subtree_line(controllers),
    )
}

fn enabled(dir: &Path, controllers: &[&str]) -> Result<bool, CgroupError> {
    let line = cgroupfs::read(&dir.join("cgroup.subtree_control"))?;
    Ok(controllers
        .iter()
        .all(|c| line.split_whitespace().any(|e| e == *c)))
}

/// The processes in `own` other than hm, which keep hm from enabling controllers there.
pub(crate) fn other_processes(own: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    cgroupfs::procs(own)
        .into_iter()
        .filter(|&p| p != me)
        .collect()
}

/// Makes `controllers` available below hm's own cgroup. If they are not enabled there yet,
/// hm moves itself (all its threads) into `<own>/hm/kernel` and enables them; it refuses when
/// other processes share its cgroup, because moving those is not hm's business.
pub(crate) fn prepare_own(own: &Path, controllers: &[&str]) -> Result<(), CgroupError> {
    if enabled(own, controllers)? {
        return Ok(());
    }
    let others = other_processes(own);
    if !others.is_empty() {
        return Err(CgroupError::InternalProcesses {
            path: own.to_owned(),
            pids: others,
        });
    }
    let me = std::process::id();
    if cgroupfs::procs(own).contains(&(me as i32)) {
        let hm = own.join("hm");
        cgroupfs::mkdir(&hm)?;
        let kernel = hm.join(KERNEL_LEAF);
        cgroupfs::mkdir(&kernel)?;
        cgroupfs::write(&kernel.join(PROCS), &me.to_string())?;
    }
    enable(own, controllers)
}

/// Writes only the configured limits. A memory limit also forbids swap (`memory.swap.max`
/// 0, where swap accounting exists), so that the limit means what it says on both backends.
pub(crate) fn set_limits(
    dir: &Path,
    controllers: &[&str],
    limits: &Limits,
) -> Result<(), CgroupError> {
    if let Some(bytes) = limits.memory_bytes {
        cgroupfs::write(&dir.join("memory.max"), &bytes.to_string())?;
        let swap = dir.join("memory.swap.max");
        if swap.exists() {
            cgroupfs::write(&swap, "0")?;
        }
    }
    if let Some(pids) = limits.pids {
        cgroupfs::write(&dir.join("pids.max"), &pids.to_string())?;
    }
    // Without the cpu controller (detection said so) a cpu limit is not enforced.
    if let Some(cores) = limits.cpu.filter(|_| controllers.contains(&"cpu")) {
        let value = format!("{} {CPU_PERIOD_US}", cpu_quota_us(cores));
        cgroupfs::write(&dir.join("cpu.max"), &value)?;
    }
    Ok(())
}

pub(crate) fn stats(dir: &Path) -> LeafStats {
    let events = dir.join("memory.events");
    LeafStats {
        oom_kills: cgroupfs::keyed(&events, "oom_kill"),
        memory_limit_hits: cgroupfs::keyed(&events, "max"),
        pids_limit_hits: cgroupfs::keyed(&dir.join("pids.events"), "max"),
        // `max` (no limit) does not parse and is `None`.
        memory_limit: cgroupfs::number(&dir.join("memory.max")),
        ..usage(dir)
    }
}

/// Peak memory and CPU time only.
pub(crate) fn usage(dir: &Path) -> LeafStats {
    LeafStats {
        peak_memory_bytes: cgroupfs::number(&dir.join("memory.peak")),
        cpu_ms: cgroupfs::keyed(&dir.join("cpu.stat"), "usage_usec").map(|us| us / 1_000),
        ..LeafStats::default()
    }
}
