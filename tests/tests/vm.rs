//! hm's isolation on real kernels: the scenarios of `tests/vm/` in QEMU guests (see
//! `hm_tests::vm` and tests/vm/README.md), one test per scenario. Each guest boots once for all
//! of its scenarios; a test fails with every failed check of its scenario and the guest's
//! context. Without qemu and the image tools the tests say they were skipped, and fail instead
//! under `HM_REQUIRE_VM=1` (set by `.ci/run`).

use hm_tests::vm::{Guest, assert_scenario};

/// Every scenario script, with the test that asserts it.
const SCENARIOS: &[(Guest, &str)] = &[
    (Guest::Minimal, "root-cgroup"),
    (Guest::Minimal, "oom"),
    (Guest::Minimal, "pids"),
    (Guest::Minimal, "cpu"),
    (Guest::Minimal, "sigkill"),
    (Guest::Minimal, "shared-cgroup"),
    (Guest::Systemd, "root-oom"),
    (Guest::Systemd, "user-oom"),
    (Guest::Systemd, "user-pids"),
];

#[test]
fn every_scenario_script_has_its_test() {
    for guest in Guest::ALL {
        let scripts: Vec<String> = guest.scenarios().into_iter().map(|(n, _)| n).collect();
        let tested: Vec<String> = SCENARIOS
            .iter()
            .filter(|(g, _)| *g == guest)
            .map(|(_, n)| (*n).to_owned())
            .collect();
        assert_eq!(
            scripts,
            tested,
            "the scripts in {} and the tests in tests/vm.rs differ",
            guest.scenario_dir().display()
        );
    }
}

// ---- the minimal VM: a busybox initramfs, cgroup2, hm as root in cgroups set up by hand ----

#[test]
fn minimal_in_the_root_cgroup_hm_isolates_and_leaves_the_root_as_it_was() {
    assert_scenario(Guest::Minimal, "root-cgroup");
}

#[test]
fn minimal_in_its_own_cgroup_an_oom_kill_spares_the_sibling() {
    assert_scenario(Guest::Minimal, "oom");
}

#[test]
fn minimal_in_its_own_cgroup_a_fork_storm_hits_the_pids_limit() {
    assert_scenario(Guest::Minimal, "pids");
}

#[test]
fn minimal_in_its_own_cgroup_the_cpu_quota_holds_and_is_accounted() {
    assert_scenario(Guest::Minimal, "cpu");
}

#[test]
fn minimal_sigkill_of_hm_leaves_no_grandchild_and_no_cgroup() {
    assert_scenario(Guest::Minimal, "sigkill");
}

#[test]
fn minimal_in_a_shared_cgroup_hm_falls_back_to_rlimits_and_says_why() {
    assert_scenario(Guest::Minimal, "shared-cgroup");
}

// ---- the systemd VM: hm from login shells, in a scope systemd delegates ----

#[test]
fn systemd_root_from_a_login_shell_gets_a_delegated_scope_with_memory_limits() {
    assert_scenario(Guest::Systemd, "root-oom");
}

#[test]
fn systemd_user_from_a_login_shell_gets_a_delegated_scope_with_memory_limits() {
    assert_scenario(Guest::Systemd, "user-oom");
}

#[test]
fn systemd_user_from_a_login_shell_gets_pids_limits() {
    assert_scenario(Guest::Systemd, "user-pids");
}
