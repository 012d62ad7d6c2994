//! Resource limits enforced by cgroups, per step: an OOM or a fork bomb in one step is
//! contained, named in plain words, and cleaned up while its siblings finish; nothing of the
//! run's cgroup tree is left behind, also after `hm` itself is SIGKILLed.

use std::path::PathBuf;
use std::time::Duration;

use hm_tests::cgroups::{cgroups_available, run_cgroup_dirs};
use hm_tests::{MARKER_VAR, Project, Signal, Value, assert_no_process_left, marker};

const WAIT: Duration = Duration::from_secs(20);

fn run_id(run: &hm_tests::Run) -> String {
    run.build_end()["run_id"]
        .as_str()
        .expect("run_id")
        .to_owned()
}

#[test]
fn oom_in_one_step_does_not_stop_siblings() {
    if !cgroups_available("oom_in_one_step_does_not_stop_siblings") {
        return;
    }
    let m = marker("oom");
    let project = Project::new(&format!(
        r#"
[steps.hog]
run = "echo allocating; head -c 1073741824 /dev/zero | tail"
limits = {{ memory = "64MiB" }}
env = {{ {MARKER_VAR} = "{m}" }}

[steps.sibling]
run = "sleep 2; echo done"
"#
    ));
    let run = project.run(&["-k"]);
    assert_eq!(run.code(), 1, "{run}");
    assert_eq!(run.status("hog"), "failed", "{run}");
    assert_eq!(run.cause("hog"), Some("oom"), "{run}");
    let end = run.step_end("hog");
    let message = end["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("out of memory (limit 64 MiB, peak"),
        "{message}"
    );
    // The OOM killer strikes at the limit, give or take what the kernel charged meanwhile.
    let peak = end["peak_memory_bytes"].as_u64().unwrap_or(0);
    assert!(
        (48 << 20..=(64 << 20) + (1 << 20)).contains(&peak),
        "peak {peak}; {run}"
    );
    assert_eq!(run.status("sibling"), "passed", "{run}");
    assert_eq!(run.lines("sibling"), ["done"], "{run}");
    // Every line the step wrote before the kill arrived (the shell may add its own "Killed").
    assert_eq!(run.stream_lines("hog", "stdout"), ["allocating"], "{run}");
    assert!(
        run_cgroup_dirs(&run_id(&run)).is_empty(),
        "cgroups left: {:?}",
        run_cgroup_dirs(&run_id(&run))
    );
    assert_no_process_left(&m);
}

#[test]
fn steps_that_wait_for_a_slot_keep_their_limits_and_leave_no_cgroup() {
    if !cgroups_available("steps_that_wait_for_a_slot_keep_their_limits_and_leave_no_cgroup") {
        return;
    }
    // With -j1, `hog` waits while `first` runs and still gets its own limit; `after` waits
    // while `hog` runs and never starts: `hog` runs out of memory and fail-fast stops the run.
    let m = marker("wait");
    let project = Project::new(&format!(
        r#"
[pipeline]
name = "wait"
env = {{ {MARKER_VAR} = "{m}" }}

[steps.first]
run = "sleep 1"

[steps.hog]
run = "head -c 1073741824 /dev/zero | tail"
limits = {{ memory = "64MiB" }}

[steps.after]
run = "echo never"
"#
    ));
    let run = project.run(&["-j1"]);
    assert_eq!(run.code(), 1, "{run}");
    assert_eq!(run.status("first"), "passed", "{run}");
    assert_eq!(run.cause("hog"), Some("oom"), "{run}");
    assert_ne!(run.status("after"), "passed", "{run}");
    assert!(run.lines("after").is_empty(), "{run}");
    assert!(
        run_cgroup_dirs(&run_id(&run)).is_empty(),
        "cgroups left: {:?}",
        run_cgroup_dirs(&run_id(&run))
    );
    assert_no_process_left(&m);
}

#[test]
fn the_human_summary_says_out_of_memory_in_words() {
    if !cgroups_available("the_human_summary_says_out_of_memory_in_words") {
        return;
    }
    let project = Project::new(
        r#"
[steps.hog]
run = "head -c 1073741824 /dev/zero | tail"
limits = { memory = "32MiB" }
"#,
    );
    let out = project.hm(&["run"]);
    assert_eq!(out.code(), 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("out of memory (limit 32 MiB, peak 32 MiB)"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("isolation cgroup_"), "{}", out.stderr);
}

#[test]
fn a_fork_bomb_under_a_pids_limit_is_contained() {
    if !cgroups_available("a_fork_bomb_under_a_pids_limit_is_contained") {
        return;
    }
    let m = marker("fork-bomb");
    let project = Project::new(&format!(
        r#"
[steps.bomb]
run = "echo forking; while :; do sleep 300 & done; : {m}"
limits = {{ pids = 32 }}
env = {{ {MARKER_VAR} = "{m}" }}

[steps.recursive]
run = "bomb() {{ bomb | bomb & }}; bomb; sleep 1; echo survived; : {m}"
limits = {{ pids = 32 }}
env = {{ {MARKER_VAR} = "{m}" }}

[steps.sibling]
run = "echo fine"
"#
    ));
    let run = project.run(&["-k", "-j3"]);
    assert_eq!(run.code(), 1, "{run}");
    assert_eq!(run.status("bomb"), "failed", "{run}");
    assert_eq!(run.cause("bomb"), Some("pids_limit"), "{run}");
    // The recursive bomb's own shell either survives its children's failed forks (and its
    // leftovers are killed) or fails to fork itself: contained either way, and named.
    match run.status("recursive") {
        "passed" => assert!(run.lines("recursive").contains(&"survived"), "{run}"),
        _ => assert_eq!(run.cause("recursive"), Some("pids_limit"), "{run}"),
    }
    assert_eq!(run.status("sibling"), "passed", "{run}");
    assert!(run_cgroup_dirs(&run_id(&run)).is_empty(), "{run}");
    assert_no_process_left(&m);
}

#[test]
fn every_step_reports_its_peak_memory_and_cpu_time() {
    if !cgroups_available("every_step_reports_its_peak_memory_and_cpu_time") {
        return;
    }
    let project = Project::new(
        r#"
[steps.work]
run = "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done; echo $i"
"#,
    );
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    let end = run.step_end("work");
    assert!(
        end["peak_memory_bytes"].as_u64().is_some_and(|b| b > 0),
        "{run}"
    );
    assert!(end["cpu_ms"].as_u64().is_some(), "{run}");
    assert!(
        run.of_kind("build_start")[0]["isolation"]
            .as_str()
            .is_some_and(|i| i.starts_with("cgroup_")),
        "{run}"
    );
}

#[test]
fn the_plugin_runs_in_its_own_leaf_and_its_step_in_the_steps_leaf() {
    if !cgroups_available("the_plugin_runs_in_its_own_leaf_and_its_step_in_the_steps_leaf") {
        return;
    }
    // The step's shell is a child of the plugin: its parent's cgroups are the plugin's.
    let project = Project::new(
        r#"
[steps.where]
run = "cat /proc/$PPID/cgroup; echo --; cat /proc/self/cgroup"
"#,
    );
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    let id = run_id(&run);
    let lines = run.lines("where");
    let split = lines
        .iter()
        .position(|l| *l == "--")
        .expect("the separator");
    // `hierarchy-id:controllers:path`; only the hierarchies where hm placed the process.
    let placed = |lines: &[&str]| -> Vec<(String, String)> {
        lines
            .iter()
            .filter_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                path.contains(&format!("/run-{id}/"))
                    .then(|| (controllers.to_owned(), path.to_owned()))
            })
            .collect()
    };
    let plugin = placed(&lines[..split]);
    let step = placed(&lines[split + 1..]);
    // On v1 the memory hierarchy, on v2 the one unified hierarchy (no controllers named).
    let main = |placed: &[(String, String)]| {
        placed
            .iter()
            .find(|(c, _)| c.is_empty() || c.split(',').any(|c| c == "memory"))
            .map(|(_, path)| path.clone())
    };
    assert!(
        main(&plugin).is_some_and(|p| p.ends_with("/shell/plugin")),
        "plugin: {plugin:?}; {run}"
    );
    assert!(
        plugin.iter().all(|(_, p)| p.ends_with("/shell/plugin")),
        "plugin: {plugin:?}; {run}"
    );
    assert!(
        main(&step).is_some_and(|p| p.ends_with("/shell/step-where-1")),
        "step: {step:?}; {run}"
    );
}

#[test]
fn a_process_that_leaves_the_step_process_group_is_killed_by_its_cgroup() {
    if !cgroups_available("a_process_that_leaves_the_step_process_group_is_killed_by_its_cgroup") {
        return;
    }
    let m = marker("setsid");
    let project = Project::new(&format!(
        r#"
[steps.escape]
run = "setsid sh -c 'echo $$ > escaped.pid; exec sleep 1000' < /dev/null > /dev/null 2>&1 & while [ ! -s escaped.pid ]; do :; done; echo spawned; : {m}"
env = {{ {MARKER_VAR} = "{m}" }}
"#
    ));
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    let lines = run.lines("escape");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("hm: killed 1 process(es) that left the step's process group")),
        "{run}"
    );
    assert_no_process_left(&m);
}

#[test]
fn sigkill_to_hm_leaves_no_cgroup_and_the_next_start_sweeps_stale_runs() {
    if !cgroups_available("sigkill_to_hm_leaves_no_cgroup_and_the_next_start_sweeps_stale_runs") {
        return;
    }
    let m = marker("sigkill-cgroup");
    let project = Project::new(&format!(
        r#"
[steps.long]
run = "echo started; sleep 1000; : {m}"
limits = {{ memory = "128MiB" }}
env = {{ {MARKER_VAR} = "{m}" }}
"#
    ));
    let mut hm = project.spawn_run(&[]);
    let started = hm.wait_for_event("the first log line", WAIT, |e: &Value| {
        e["kind"] == "step_log" && e["line"] == "started"
    });
    let id = started["run_id"].as_str().expect("run_id").to_owned();
    // The hierarchies hm uses here: where this run's tree is.
    let used = run_cgroup_dirs(&id);
    assert!(!used.is_empty(), "the run has cgroups while it runs");
    hm.signal(Signal::SIGKILL);
    hm.finish(WAIT);
    // The guardian removes the tree as soon as the kernel is gone; allow it a bounded moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !run_cgroup_dirs(&id).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        run_cgroup_dirs(&id).is_empty(),
        "left: {:?}",
        run_cgroup_dirs(&id)
    );
    assert_no_process_left(&m);

    // A run whose kernel and guardian both died: its tree is still there until the next start.
    // Its id names a pid that does not exist.
    let stale = "0-7ffffffe";
    let made: Vec<PathBuf> = used
        .iter()
        .filter_map(|dir| dir.parent())
        .map(|hm_dir| {
            hm_dir
                .join(format!("run-{stale}"))
                .join("shell")
                .join("plugin")
        })
        .filter(|dir| std::fs::create_dir_all(dir).is_ok())
        .collect();
    assert!(!made.is_empty(), "could not fake a stale run");
    let next = Project::new("[steps.ok]\nrun = \"true\"\n");
    let run = next.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(
        run_cgroup_dirs(stale).is_empty(),
        "the stale run was not swept: {:?}",
        run_cgroup_dirs(stale)
    );
}

/// `hm ARGS...` with cgroups turned off, as on a machine that has none.
fn without_cgroups(project: &Project, args: &[&str]) -> hm_tests::Output {
    let mut cmd = project.command(args);
    cmd.env("HM_CGROUPS", "off");
    hm_tests::Hm::spawn(cmd).finish(hm_tests::RUN_DEADLINE)
}

#[test]
fn require_isolation_without_cgroups_is_exit_4_and_starts_nothing() {
    let project = Project::new("[steps.a]\nrun = \"touch ran\"\n");
    let out = without_cgroups(&project, &["run", "--require-isolation"]);
    assert_eq!(out.code(), 4, "{}", out.stderr);
    assert!(out.stderr.contains("--require-isolation"), "{}", out.stderr);
    assert!(out.stderr.contains("HM_CGROUPS=off"), "{}", out.stderr);
    assert!(!project.exists("ran"));
    let doctor = without_cgroups(&project, &["doctor"]);
    assert_eq!(doctor.code(), 4, "{}", doctor.stdout);
}

#[test]
fn without_cgroups_the_run_says_so_and_still_limits_memory_with_an_rlimit() {
    let project = Project::new(
        r#"
[steps.hog]
run = "head -c 1073741824 /dev/zero | tail"
limits = { memory = "64MiB" }

[steps.fine]
run = "echo fine"
"#,
    );
    let run = without_cgroups(&project, &["run", "-k", "--format", "json"]).into_run();
    assert_eq!(run.code(), 1, "{run}");
    let start = &run.of_kind("build_start")[0];
    assert_eq!(start["isolation"], "rlimit", "{run}");
    assert!(
        start["isolation_reason"]
            .as_str()
            .is_some_and(|r| r.contains("HM_CGROUPS=off")),
        "{run}"
    );
    // The address-space limit makes the allocation fail; without a cgroup there is no OOM
    // killer verdict, only the step's own failure.
    assert_eq!(run.status("hog"), "failed", "{run}");
    assert_eq!(run.status("fine"), "passed", "{run}");
}
