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

/// The processes in `own` other than hm, which keep hm from enabling controllers there.
pub(crate) fn other_processes(own: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    cgroupfs::procs(own)
        .into_iter()
        .filter(|&p| p != me)
        .collect()
}

/// What hm changed in its own cgroup to enable controllers below it, for [`restore_own`] to
/// undo when the last run of hm there ends (or the guardian, if hm was killed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnChanges {
    /// The controllers hm enabled in `<own>/cgroup.subtree_control`.
    pub enabled: Vec<String>,
    /// hm moved itself into `<own>/hm/kernel` to do it.
    pub moved: bool,
}

/// Makes `controllers` available below hm's own cgroup. If they are not enabled there yet,
/// hm moves itself (all its threads) into `<own>/hm/kernel` and enables them; it refuses when
/// other processes share its cgroup, because moving those is not hm's business. In the
/// hierarchy's root (`root`), which may hold processes and enabled controllers at once, hm
/// only enables them.
pub(crate) fn prepare_own(
    own: &Path,
    controllers: &[&str],
    root: bool,
) -> Result<OwnChanges, CgroupError> {
    let line = cgroupfs::read(&own.join("cgroup.subtree_control"))?;
    let missing: Vec<&str> = controllers
        .iter()
        .copied()
        .filter(|c| !line.split_whitespace().any(|e| e == *c))
        .collect();
    if missing.is_empty() {
        return Ok(OwnChanges::default());
    }
    let mut moved = false;
    if !root {
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
            moved = true;
        }
    }
    enable(own, &missing)?;
    Ok(OwnChanges {
        enabled: missing.iter().map(|c| (*c).to_owned()).collect(),
        moved,
    })
}

/// Gives hm's own cgroup back as it was before the first run, once no run of hm is left
/// below it: the controllers enabled in `<own>/hm` and (if hm enabled them) in `<own>` are
/// disabled, `mover` (hm itself, or its guardian when hm is gone) goes back into `<own>` if
/// hm had moved, and `<own>/hm/kernel` and `<own>/hm` are removed. A cgroup that is still in
/// use (another run, a process in `kernel`) is left as it is.
pub fn restore_own(own: &Path, changes: &OwnChanges, mover: u32) -> Result<(), CgroupError> {
    let _own_lock = cgroupfs::lock(own)?;
    let hm = own.join("hm");
    let runs_left = cgroupfs::subdirs(&hm).iter().any(|dir| {
        dir.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("run-"))
    });
    if runs_left {
        return Ok(());
    }
    let kernel = hm.join(KERNEL_LEAF);
    if kernel.exists() && cgroupfs::procs(&kernel).iter().any(|&p| p != mover as i32) {
        return Ok(());
    }
    // Children first: a controller can be disabled only where no child has it enabled.
    if let Some(line) = cgroupfs::read_optional(&hm.join("cgroup.subtree_control")) {
        let off = disable_line(line.split_whitespace());
        if !off.is_empty() {
            cgroupfs::write(&hm.join("cgroup.subtree_control"), &off)?;
        }
    }
    if !changes.enabled.is_empty() {
        let off = disable_line(changes.enabled.iter().map(String::as_str));
        cgroupfs::write(&own.join("cgroup.subtree_control"), &off)?;
    }
    if changes.moved && kernel.exists() {
        cgroupfs::write(&own.join(PROCS), &mover.to_string())?;
    }
    if kernel.exists() {
        cgroupfs::rmdir(&kernel)?;
    }
    if hm.exists() && cgroupfs::subdirs(&hm).is_empty() {
        cgroupfs::rmdir(&hm)?;
    }
    Ok(())
}

/// `-memory -pids`, for `cgroup.subtree_control`.
fn disable_line<'a>(controllers: impl Iterator<Item = &'a str>) -> String {
    controllers
        .map(|c| format!("-{c}"))
        .collect::<Vec<_>>()
        .join(" ")
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
