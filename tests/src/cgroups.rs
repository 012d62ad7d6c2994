//! What the end-to-end tests need to know of cgroups: where this process's own cgroup is in
//! each hierarchy (hm creates its runs below the same place), and whether a run left anything.

use std::path::PathBuf;

/// This process's own cgroup directory in every mounted hierarchy (v1 controllers and the v2
/// unified tree), from `/proc/self/cgroup` and `/proc/self/mountinfo`.
pub fn own_cgroup_dirs() -> Vec<PathBuf> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut dirs = Vec::new();
    for line in mountinfo.lines() {
        // `... mount_point options - fstype source super_options`
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let mut right = right.split(' ');
        let fstype = right.next().unwrap_or_default();
        let super_options = right.nth(1).unwrap_or_default();
        let mount_point = left.split(' ').nth(4).unwrap_or_default();
        let membership = match fstype {
            "cgroup2" => cgroup.lines().find(|l| l.starts_with("0::")),
            "cgroup" => cgroup.lines().find(|l| {
                let controllers = l.split(':').nth(1).unwrap_or_default();
                !controllers.is_empty()
                    && controllers
                        .split(',')
                        .all(|c| super_options.split(',').any(|o| o == c))
            }),
            _ => None,
        };
        if let Some(path) = membership.and_then(|l| l.splitn(3, ':').nth(2)) {
            dirs.push(PathBuf::from(mount_point).join(path.trim_start_matches('/')));
        }
    }
    dirs
}

/// The directories of run `run_id` that still exist, in any hierarchy.
pub fn run_cgroup_dirs(run_id: &str) -> Vec<PathBuf> {
    own_cgroup_dirs()
        .into_iter()
        .map(|dir| dir.join("hm").join(format!("run-{run_id}")))
        .filter(|dir| dir.exists())
        .collect()
}

/// Whether hm can use cgroups here: `hm doctor` exits 0. Tests that need them fail when
/// `HM_REQUIRE_CGROUPS=1` and they are missing, and otherwise say they were skipped.
pub fn cgroups_available(test: &str) -> bool {
    let available = std::process::Command::new(crate::hm_bin())
        .arg("doctor")
        .output()
        .is_ok_and(|out| out.status.success());
    if !available {
        assert!(
            std::env::var_os("HM_REQUIRE_CGROUPS").is_none_or(|v| v != "1"),
            "{test}: cgroups are not available (see `hm doctor`) and HM_REQUIRE_CGROUPS=1"
        );
        eprintln!("{test}: skipped: cgroups are not available here (see `hm doctor`)");
    }
    available
}
