//! cgroup v1 files: limits on a leaf across the memory, pids and cpu hierarchies, and its
//! accounting from memory, pids and cpuacct.

use super::node::{Node, V1Roles};
use super::v2::{CPU_PERIOD_US, cpu_quota_us};
use super::{CgroupError, LeafStats, cgroupfs};
use crate::config::Limits;

/// v1 reports "no limit" as the largest page-aligned counter (9223372036854771712 with 4 KiB
/// pages); anything this large is no limit.
const UNLIMITED_FROM: u64 = 1 << 62;

/// Writes only the configured limits. A limit whose hierarchy is missing (cpu is optional,
/// detection said so) is not enforced.
pub(crate) fn set_limits(leaf: &Node, roles: V1Roles, limits: &Limits) -> Result<(), CgroupError> {
    if let (Some(bytes), Some(dir)) = (limits.memory_bytes, leaf.dir(roles.memory)) {
        let bytes = bytes.to_string();
        cgroupfs::write(&dir.join("memory.limit_in_bytes"), &bytes)?;
        // With swap on, memory+swap equal to memory means no swap, as v2's memory.swap.max 0
        // (written second: it must stay >= memory). Without swap it is pointless, and it would
        // cost the limit-hit count: the memsw counter then trips first, and Linux 6.15+ keeps
        // no failcnt for it.
        let memsw = dir.join("memory.memsw.limit_in_bytes");
        if memsw.exists() && swap_is_on() {
            cgroupfs::write(&memsw, &bytes)?;
        }
    }
    if let (Some(pids), Some(dir)) = (limits.pids, leaf.dir(roles.pids)) {
        cgroupfs::write(&dir.join("pids.max"), &pids.to_string())?;
    }
    if let (Some(cores), Some(dir)) = (limits.cpu, leaf.dir(roles.cpu)) {
        cgroupfs::write(&dir.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
        cgroupfs::write(
            &dir.join("cpu.cfs_quota_us"),
            &cpu_quota_us(cores).to_string(),
        )?;
    }
    Ok(())
}

pub(crate) fn stats(leaf: &Node, roles: V1Roles) -> LeafStats {
    let memory = leaf.dir(roles.memory);
    let memory_file = |name: &str| memory.map(|dir| dir.join(name));
    LeafStats {
        // `oom_kill` appeared in Linux 4.13; older kernels leave it unknown.
        oom_kills: memory_file("memory.oom_control").and_then(|p| cgroupfs::keyed(&p, "oom_kill")),
        memory_limit_hits: memory_file("memory.failcnt").and_then(|p| cgroupfs::number(&p)),
        pids_limit_hits: leaf
            .dir(roles.pids)
            .and_then(|dir| cgroupfs::keyed(&dir.join("pids.events"), "max")),
        memory_limit: memory_file("memory.limit_in_bytes")
            .and_then(|p| cgroupfs::number(&p))
            .filter(|&b| b < UNLIMITED_FROM),
        ..usage(leaf, roles)
    }
}

/// Peak memory and CPU time only.
pub(crate) fn usage(leaf: &Node, roles: V1Roles) -> LeafStats {
    LeafStats {
        peak_memory_bytes: leaf
            .dir(roles.memory)
            .and_then(|dir| cgroupfs::number(&dir.join("memory.max_usage_in_bytes"))),
        cpu_ms: leaf
            .dir(roles.cpuacct)
            .and_then(|dir| cgroupfs::number(&dir.join("cpuacct.usage")))
            .map(|ns| ns / 1_000_000),
        ..LeafStats::default()
    }
}

fn swap_is_on() -> bool {
    cgroupfs::read_optional(std::path::Path::new("/proc/meminfo"))
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("SwapTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .is_some_and(|kib| kib > 0)
}
