//! The v2 backend on a fake cgroupfs: which files it writes, what it reads, what it removes.

use expect_test::expect;

use super::FakeTree;
use crate::cgroup::{Backend, CgroupError, LeafStats, detect_from, remove_run_path, sweep_stale};
use crate::config::Limits;
use crate::events::Isolation;

const OWN: &str = "unified/user.slice/x.scope";
const RUN: &str = "unified/user.slice/x.scope/hm/run-r1";
/// Above the largest pid_max (2^22): listing it in a fake `cgroup.procs` can never signal
/// a real process.
const NO_SUCH_PID: &str = "4194305";

/// A delegated scope holding only hm, with the cpu, memory and pids controllers available.
fn v2() -> (FakeTree, Backend) {
    let fake = FakeTree::new();
    fake.write(
        &format!("{OWN}/cgroup.controllers"),
        "cpuset cpu io memory pids\n",
    );
    fake.write(&format!("{OWN}/cgroup.subtree_control"), "\n");
    fake.write(
        &format!("{OWN}/cgroup.procs"),
        &format!("{}\n", std::process::id()),
    );
    let detected = detect_from(
        "0::/user.slice/x.scope\n",
        &fake.mount("unified", "cgroup2", "rw"),
    );
    assert_eq!(detected.level, Isolation::CgroupV2, "{:?}", detected.reason);
    (fake, detected.backend)
}

fn limits(memory_bytes: Option<u64>, pids: Option<u64>, cpu: Option<f64>) -> Limits {
    Limits {
        memory_bytes,
        pids,
        cpu,
    }
}

#[test]
fn a_run_and_its_leaves_write_controllers_and_only_the_configured_limits() {
    let (fake, backend) = v2();
    let run = backend.create_run("r1").expect("create run");
    let step = run
        .leaf(
            "shell",
            "step-build-1",
            &limits(Some(512 << 20), Some(64), Some(1.5)),
        )
        .expect("step leaf");
    run.leaf("shell", "plugin", &Limits::default())
        .expect("plugin leaf");
    expect![[r#"
        unified/
        unified/user.slice/
        unified/user.slice/x.scope/
        unified/user.slice/x.scope/cgroup.controllers: cpuset cpu io memory pids
        unified/user.slice/x.scope/cgroup.procs: <hm>
        unified/user.slice/x.scope/cgroup.subtree_control: +memory +pids +cpu
        unified/user.slice/x.scope/hm/
        unified/user.slice/x.scope/hm/cgroup.subtree_control: +memory +pids +cpu
        unified/user.slice/x.scope/hm/kernel/
        unified/user.slice/x.scope/hm/kernel/cgroup.procs: <hm>
        unified/user.slice/x.scope/hm/run-r1/
        unified/user.slice/x.scope/hm/run-r1/cgroup.subtree_control: +memory +pids +cpu
        unified/user.slice/x.scope/hm/run-r1/shell/
        unified/user.slice/x.scope/hm/run-r1/shell/cgroup.subtree_control: +memory +pids +cpu
        unified/user.slice/x.scope/hm/run-r1/shell/plugin/
        unified/user.slice/x.scope/hm/run-r1/shell/step-build-1/
        unified/user.slice/x.scope/hm/run-r1/shell/step-build-1/cpu.max: 150000 100000
        unified/user.slice/x.scope/hm/run-r1/shell/step-build-1/memory.max: 536870912
        unified/user.slice/x.scope/hm/run-r1/shell/step-build-1/pids.max: 64
    "#]]
    .assert_eq(&fake.listing());
    assert_eq!(run.paths(), vec![fake.path(RUN)]);
    assert_eq!(
        step.procs_files(),
        vec![fake.path(&format!("{RUN}/shell/step-build-1/cgroup.procs"))]
    );
}

#[test]
fn controllers_enabled_already_leave_hm_where_it_is() {
    let (fake, backend) = v2();
    fake.write(
        &format!("{OWN}/cgroup.subtree_control"),
        "cpu memory pids\n",
    );
    let _run = backend.create_run("r1").expect("create run");
    assert!(!fake.path(&format!("{OWN}/hm/kernel")).exists());
    assert_eq!(
        fake.read(&format!("{OWN}/cgroup.subtree_control")),
        "cpu memory pids\n"
    );
}

#[test]
fn other_processes_in_hms_cgroup_stop_the_run_cgroup() {
    let (fake, backend) = v2();
    fake.write(
        &format!("{OWN}/cgroup.procs"),
        &format!("{}\n{NO_SUCH_PID}\n", std::process::id()),
    );
    let err = backend.create_run("r1").expect_err("must refuse");
    assert!(
        matches!(&err, CgroupError::InternalProcesses { pids, .. } if pids == &[4194305]),
        "{err}"
    );
    assert!(!fake.path(&format!("{OWN}/hm")).exists());
}

#[test]
fn a_memory_limit_also_forbids_swap_where_swap_is_accounted() {
    let fake = FakeTree::new();
    fake.write("leaf/memory.swap.max", "max\n");
    crate::cgroup::v2::set_limits(
        &fake.path("leaf"),
        &["memory", "pids"],
        &limits(Some(1 << 20), None, Some(2.0)),
    )
    .expect("set limits");
    expect![[r#"
        leaf/
        leaf/memory.max: 1048576
        leaf/memory.swap.max: 0
    "#]]
    .assert_eq(&fake.listing());
}

#[test]
fn tiny_cpu_limits_are_raised_to_the_kernels_minimum_quota() {
    let fake = FakeTree::new();
    std::fs::create_dir(fake.path("leaf")).expect("mkdir");
    crate::cgroup::v2::set_limits(
        &fake.path("leaf"),
        &["cpu"],
        &limits(None, None, Some(0.001)),
    )
    .expect("set limits");
    assert_eq!(fake.read("leaf/cpu.max"), "1000 100000");
}

#[test]
fn stats_are_read_from_the_v2_accounting_files() {
    let (fake, backend) = v2();
    let run = backend.create_run("r1").expect("create run");
    let leaf = run
        .leaf("shell", "step-a-1", &Limits::default())
        .expect("leaf");
    let dir = format!("{RUN}/shell/step-a-1");
    assert_eq!(
        leaf.stats(),
        LeafStats::default(),
        "no files, nothing known"
    );
    fake.write(
        &format!("{dir}/memory.events"),
        "low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\noom_group_kill 0\n",
    );
    fake.write(&format!("{dir}/pids.events"), "max 3\n");
    fake.write(&format!("{dir}/memory.peak"), "536870912\n");
    fake.write(
        &format!("{dir}/cpu.stat"),
        "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\n",
    );
    fake.write(&format!("{dir}/memory.max"), "max\n");
    assert_eq!(
        leaf.stats(),
        LeafStats {
            peak_memory_bytes: Some(536_870_912),
            cpu_ms: Some(1234),
            oom_kills: Some(2),
            memory_limit_hits: Some(7),
            pids_limit_hits: Some(3),
            memory_limit: None,
        }
    );
    fake.write(&format!("{dir}/memory.max"), "1048576\n");
    assert_eq!(leaf.stats().memory_limit, Some(1 << 20));
}

#[test]
fn kill_writes_cgroup_kill_and_waits_until_it_is_unpopulated() {
    let (fake, backend) = v2();
    let run = backend.create_run("r1").expect("create run");
    let leaf = run
        .leaf("shell", "step-a-1", &Limits::default())
        .expect("leaf");
    fake.write(
        &format!("{RUN}/shell/step-a-1/cgroup.events"),
        "populated 0\nfrozen 0\n",
    );
    leaf.kill().expect("kill");
    assert_eq!(fake.read(&format!("{RUN}/shell/step-a-1/cgroup.kill")), "1");
    run.kill_all().expect("kill all");
    assert_eq!(fake.read(&format!("{RUN}/cgroup.kill")), "1");
}

#[test]
fn pids_lists_cgroup_procs_and_a_populated_leaf_is_not_removed() {
    let (fake, backend) = v2();
    let run = backend.create_run("r1").expect("create run");
    let leaf = run
        .leaf("shell", "step-a-1", &Limits::default())
        .expect("leaf");
    let procs = format!("{RUN}/shell/step-a-1/cgroup.procs");
    fake.write(&procs, &format!("{NO_SUCH_PID}\n0\n-1\n"));
    assert_eq!(leaf.pids(), vec![4194305], "only positive pids count");
    let err = leaf.remove().expect_err("populated");
    assert!(matches!(err, CgroupError::Remove { .. }), "{err}");
    fake.write(&procs, "");
    leaf.remove().expect("remove");
    leaf.remove().expect("remove again");
    assert!(!fake.path(&format!("{RUN}/shell/step-a-1")).exists());
}

#[test]
fn join_writes_the_pid_to_cgroup_procs_and_refuses_hm_itself() {
    let (fake, backend) = v2();
    let run = backend.create_run("r1").expect("create run");
    let leaf = run
        .leaf("shell", "plugin", &Limits::default())
        .expect("leaf");
    leaf.join(4_194_305).expect("join");
    assert_eq!(
        fake.read(&format!("{RUN}/shell/plugin/cgroup.procs")),
        NO_SUCH_PID
    );
    fake.write(&format!("{RUN}/shell/plugin/cgroup.procs"), "");
    for pid in [0, std::process::id()] {
        assert!(matches!(leaf.join(pid), Err(CgroupError::Join { .. })));
    }
}

#[test]
fn remove_takes_the_whole_run_and_can_be_repeated() {
    let (fake, backend) = v2();
    let run = backend.create_run("r1").expect("create run");
    run.leaf("shell", "plugin", &limits(Some(1 << 20), None, None))
        .expect("leaf");
    run.leaf("docker", "step-b-2", &Limits::default())
        .expect("leaf");
    run.remove().expect("remove");
    assert!(!fake.path(RUN).exists());
    run.remove().expect("remove again");
    // hm's own leaf stays while hm is in it.
    assert!(fake.path(&format!("{OWN}/hm/kernel")).exists());
}

#[test]
fn dropping_the_run_removes_it() {
    let (fake, backend) = v2();
    let run = backend.create_run("r1").expect("create run");
    run.leaf("shell", "plugin", &Limits::default())
        .expect("leaf");
    drop(run);
    assert!(!fake.path(RUN).exists());
}

#[test]
fn a_run_id_in_use_is_refused_and_left_alone() {
    let (fake, backend) = v2();
    let _run = backend.create_run("r1").expect("create run");
    let err = backend.create_run("r1").expect_err("exists");
    assert!(matches!(err, CgroupError::AlreadyExists { .. }), "{err}");
    assert!(fake.path(RUN).exists());
}

#[test]
fn names_that_could_leave_the_tree_are_refused() {
    let (fake, backend) = v2();
    let run = backend.create_run("r1").expect("create run");
    let before = fake.listing();
    for bad in [
        "", ".", "..", "../x", "a/b", "/abs", "-x", ".hidden", "a b", "é", "a\0b",
    ] {
        let refused = |r: Result<_, CgroupError>| matches!(r, Err(CgroupError::InvalidName { .. }));
        assert!(
            refused(run.leaf(bad, "plugin", &Limits::default()).map(drop)),
            "{bad:?}"
        );
        assert!(
            refused(run.leaf("shell", bad, &Limits::default()).map(drop)),
            "{bad:?}"
        );
        assert!(refused(backend.create_run(bad).map(drop)), "{bad:?}");
    }
    assert_eq!(fake.listing(), before, "nothing was created");
}

#[test]
fn a_name_that_is_an_interface_file_is_not_a_cgroup() {
    let (fake, backend) = v2();
    let run = backend.create_run("r1").expect("create run");
    fake.write(&format!("{RUN}/memory.stat"), "anon 0\n");
    let err = run
        .leaf("memory.stat", "plugin", &Limits::default())
        .expect_err("a file");
    assert!(matches!(err, CgroupError::NotADirectory { .. }), "{err}");
}

#[test]
fn sweep_removes_only_runs_whose_owner_is_dead() {
    let (fake, backend) = v2();
    let live = backend.create_run("alive").expect("create run");
    fake.write(
        &format!("{OWN}/hm/run-dead/shell/step-x-1/cgroup.procs"),
        "",
    );
    fake.write(
        &format!("{OWN}/hm/run-dead/shell/plugin/memory.max"),
        "1024\n",
    );
    fake.write(&format!("{OWN}/hm/not-a-run/cgroup.procs"), "");
    let removed = sweep_stale(&backend, |id| id == "alive");
    assert_eq!(removed, vec!["dead".to_owned()]);
    assert!(!fake.path(&format!("{OWN}/hm/run-dead")).exists());
    assert!(live.paths().iter().all(|p| p.exists()));
    assert!(fake.path(&format!("{OWN}/hm/not-a-run")).exists());
    assert!(
        fake.path(&format!("{OWN}/hm/kernel")).exists(),
        "hm is in it"
    );
}

#[test]
fn remove_run_path_takes_only_hm_run_directories() {
    let (fake, backend) = v2();
    let run = backend.create_run("r1").expect("create run");
    fake.write("run-r1/cgroup.procs", "");
    for bad in [
        fake.path(OWN),
        fake.path(&format!("{OWN}/hm")),
        fake.path("run-r1"),
    ] {
        let err = remove_run_path(&bad).expect_err("refused");
        assert!(matches!(err, CgroupError::InvalidName { .. }), "{err}");
        assert!(bad.exists());
    }
    fake.write(&format!("{RUN}/cgroup.controllers"), "memory pids cpu\n");
    remove_run_path(&run.paths()[0]).expect("remove by path");
    assert!(!fake.path(RUN).exists());
}
