//! Detection from injected `/proc/self/cgroup` and mountinfo text over fake trees.

use expect_test::{Expect, expect};

use super::FakeTree;
use crate::cgroup::{Backend, detect_from};

/// A v2 tree like a systemd scope with every controller delegated and only hm in it.
fn v2_tree(fake: &FakeTree, controllers: &str, procs: &str) -> (String, String) {
    fake.write("unified/user.slice/x.scope/cgroup.controllers", controllers);
    fake.write("unified/user.slice/x.scope/cgroup.subtree_control", "");
    fake.write("unified/user.slice/x.scope/cgroup.procs", procs);
    (
        "0::/user.slice/x.scope\n".to_owned(),
        fake.mount("unified", "cgroup2", "rw,nsdelegate"),
    )
}

/// This project's machines: v1 controllers mounted separately, a v2 hierarchy without any.
fn v1_tree(fake: &FakeTree, skip: &[&str]) -> (String, String) {
    let mut cgroup = String::new();
    let mut mountinfo = String::new();
    for (n, ctrl) in [
        "cpu",
        "cpuacct",
        "memory",
        "freezer",
        "pids",
        "name=systemd",
    ]
    .into_iter()
    .enumerate()
    {
        let own = if ctrl == "memory" {
            "/process_api/abc"
        } else {
            "/"
        };
        cgroup.push_str(&format!("{}:{ctrl}:{own}\n", n + 1));
        if skip.contains(&ctrl) {
            continue;
        }
        let dir = ctrl.trim_start_matches("name=");
        fake.write(&format!("{dir}{own}/cgroup.procs"), "");
        mountinfo.push_str(&fake.mount(dir, "cgroup", &format!("rw,{ctrl}")));
    }
    fake.write("unified/cgroup.controllers", "");
    cgroup.push_str("0::/\n");
    mountinfo.push_str(&fake.mount("unified", "cgroup2", "rw"));
    (cgroup, mountinfo)
}

fn check(fake: &FakeTree, (cgroup, mountinfo): (String, String), expected: Expect) {
    let detected = detect_from(&cgroup, &mountinfo);
    let dirs = match &detected.backend {
        Backend::V2(own) => format!("v2 {:?}", own.dirs()),
        Backend::V1(own) => format!("v1 {:?}", own.dirs()),
        Backend::None => "none".to_owned(),
    };
    let actual = format!(
        "{:?}: {}\n{dirs}\n",
        detected.level,
        detected.reason.as_deref().unwrap_or("-")
    );
    expected.assert_eq(&fake.redact(&actual));
}

#[test]
fn v2_with_memory_pids_and_cpu_is_preferred() {
    let fake = FakeTree::new();
    let me = std::process::id().to_string();
    let tree = v2_tree(&fake, "cpuset cpu io memory hugetlb pids", &me);
    check(
        &fake,
        tree,
        expect![[r#"
            CgroupV2: -
            v2 ["<root>/unified/user.slice/x.scope"]
        "#]],
    );
}

#[test]
fn v2_without_cpu_is_used_and_says_cpu_limits_are_not_enforced() {
    let fake = FakeTree::new();
    let tree = v2_tree(&fake, "memory pids", "");
    check(
        &fake,
        tree,
        expect![[r#"
            CgroupV2: cgroup v2: the cpu controller is not available in <root>/unified/user.slice/x.scope, so cpu limits are not enforced
            v2 ["<root>/unified/user.slice/x.scope"]
        "#]],
    );
}

#[test]
fn v2_shared_with_other_processes_falls_back_with_the_rule_named() {
    let fake = FakeTree::new();
    let procs = format!("{}\n4194305\n", std::process::id());
    let tree = v2_tree(&fake, "cpu memory pids", &procs);
    check(
        &fake,
        tree,
        expect![[r#"
            Rlimit: cgroup v2: <root>/unified/user.slice/x.scope also holds other processes, so hm cannot enable controllers below it (no-internal-process rule); start hm in a cgroup of its own (e.g. `systemd-run --scope -p Delegate=yes`)
            none
        "#]],
    );
}

#[test]
fn v2_with_controllers_enabled_already_does_not_care_who_is_in_it() {
    let fake = FakeTree::new();
    let tree = v2_tree(&fake, "cpu memory pids", "4194305\n");
    fake.write(
        "unified/user.slice/x.scope/cgroup.subtree_control",
        "cpu memory pids\n",
    );
    check(
        &fake,
        tree,
        expect![[r#"
            CgroupV2: -
            v2 ["<root>/unified/user.slice/x.scope"]
        "#]],
    );
}

#[test]
fn v1_is_used_when_v2_has_no_controllers() {
    let fake = FakeTree::new();
    let tree = v1_tree(&fake, &[]);
    check(
        &fake,
        tree,
        expect![[r#"
            CgroupV1: cgroup v2: the memory and pids controllers are not available in <root>/unified
            v1 ["<root>/freezer", "<root>/memory/process_api/abc", "<root>/pids", "<root>/cpu", "<root>/cpuacct"]
        "#]],
    );
}

#[test]
fn v1_without_cpu_hierarchies_is_used_and_says_what_is_missing() {
    let fake = FakeTree::new();
    let tree = v1_tree(&fake, &["cpu", "cpuacct"]);
    check(
        &fake,
        tree,
        expect![[r#"
            CgroupV1: cgroup v2: the memory and pids controllers are not available in <root>/unified; cgroup v1: cpu hierarchy not mounted, so cpu limits are not enforced; cgroup v1: cpuacct hierarchy not mounted, so cpu time is not measured
            v1 ["<root>/freezer", "<root>/memory/process_api/abc", "<root>/pids"]
        "#]],
    );
}

#[test]
fn v1_without_a_freezer_is_not_enough() {
    let fake = FakeTree::new();
    let tree = v1_tree(&fake, &["freezer"]);
    check(
        &fake,
        tree,
        expect![[r#"
            Rlimit: cgroup v2: the memory and pids controllers are not available in <root>/unified; cgroup v1: freezer hierarchy not mounted
            none
        "#]],
    );
}

#[test]
fn co_mounted_v1_controllers_share_one_directory() {
    let fake = FakeTree::new();
    for dir in ["cpu,cpuacct", "memory", "freezer", "pids"] {
        fake.write(&format!("{dir}/cgroup.procs"), "");
    }
    let cgroup = "4:cpu,cpuacct:/\n3:memory:/\n2:freezer:/\n1:pids:/\n".to_owned();
    let mountinfo = fake.mount("cpu,cpuacct", "cgroup", "rw,cpu,cpuacct")
        + &fake.mount("memory", "cgroup", "rw,memory")
        + &fake.mount("freezer", "cgroup", "rw,freezer")
        + &fake.mount("pids", "cgroup", "rw,pids");
    check(
        &fake,
        (cgroup, mountinfo),
        expect![[r#"
            CgroupV1: cgroup v2: hm is in no cgroup v2 hierarchy
            v1 ["<root>/freezer", "<root>/memory", "<root>/pids", "<root>/cpu,cpuacct"]
        "#]],
    );
}

#[test]
fn a_mount_of_a_subtree_is_followed_and_escapes_are_decoded() {
    let fake = FakeTree::new();
    fake.write("my cg/sub/cgroup.controllers", "memory pids cpu");
    fake.write("my cg/sub/cgroup.subtree_control", "");
    fake.write("my cg/sub/cgroup.procs", "");
    let point = fake
        .path("my cg")
        .display()
        .to_string()
        .replace(' ', "\\040");
    let mountinfo = format!("41 31 0:38 /docker/abc {point} rw - cgroup2 cgroup2 rw\n");
    check(
        &fake,
        ("0::/docker/abc/sub\n".to_owned(), mountinfo),
        expect![[r#"
            CgroupV2: -
            v2 ["<root>/my cg/sub"]
        "#]],
    );
}

#[test]
fn nothing_mounted_means_no_cgroups_and_says_why() {
    let fake = FakeTree::new();
    check(
        &fake,
        ("0::/\n".to_owned(), String::new()),
        expect![[r#"
            Rlimit: cgroup v2: the unified hierarchy is not mounted
            none
        "#]],
    );
}

#[test]
fn v2_in_the_real_root_is_used_whoever_else_is_there() {
    let fake = FakeTree::new();
    fake.write("unified/cgroup.controllers", "cpu memory pids");
    fake.write("unified/cgroup.subtree_control", "");
    // Kernel threads and init are always in the root.
    fake.write("unified/cgroup.procs", "1\n2\n4194305\n");
    let tree = (
        "0::/\n".to_owned(),
        fake.mount("unified", "cgroup2", "rw,nsdelegate"),
    );
    check(
        &fake,
        tree,
        expect![[r#"
            CgroupV2: -
            v2 ["<root>/unified"]
        "#]],
    );
}
