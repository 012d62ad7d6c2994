//! No orphans, ever: when `hm` itself is SIGKILLed mid-run, its guardian kills every plugin and
//! step process, backgrounded and daemonised grandchildren included.

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use hm_tests::{
    MARKER_VAR, Project, Signal, Value, assert_no_process_left, marker, wait_for_processes,
};

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn sigkill_to_hm_mid_run_leaves_no_plugin_or_step_process() {
    let m = marker("sigkill-hm");
    // A plain background child, a double-forked one (re-parented away from the step), and the
    // step's own foreground process, on two plugin-served steps running at once.
    let project = Project::new(&format!(
        r#"
[steps.one]
run = "sleep 1000 & (sleep 1001 &); echo started; sleep 1002; : {m}"
env = {{ {MARKER_VAR} = "{m}" }}

[steps.two]
run = "echo started; sleep 1003; : {m}"
env = {{ {MARKER_VAR} = "{m}" }}
"#
    ));
    let mut hm = project.spawn_run(&["-j2"]);
    hm.wait_for_event("the first log line", WAIT, |e: &Value| {
        e["kind"] == "step_log" && e["line"] == "started"
    });
    let plugin_pid = hm
        .events()
        .iter()
        .find(|e| e["kind"] == "plugin_start")
        .and_then(|e| e["pid"].as_u64())
        .expect("plugin_start with a pid");
    // Both steps are running: two shells and four sleeps.
    wait_for_processes(&m, 6, WAIT);
    hm.signal(Signal::SIGKILL);
    let output = hm.finish(WAIT);
    assert_eq!(output.status.signal(), Some(9), "hm was killed");
    // The guardian acts as soon as the pipe closes; give it a bounded moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline
        && (!hm_tests::processes_with(&m).is_empty()
            || std::path::Path::new(&format!("/proc/{plugin_pid}")).exists())
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_no_process_left(&m);
    assert!(
        !std::path::Path::new(&format!("/proc/{plugin_pid}")).exists(),
        "the plugin process {plugin_pid} survived hm"
    );
    // The run's directory of `$HM_OUTPUT` files goes with it.
    while std::time::Instant::now() < deadline
        && std::fs::read_dir(project.runtime_dir()).is_ok_and(|mut d| d.next().is_some())
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<_> = std::fs::read_dir(project.runtime_dir())
        .expect("the runtime dir")
        .collect();
    assert!(left.is_empty(), "hm's run left {left:?}");
}

#[test]
fn a_daemonised_process_is_reaped_while_the_run_goes_on() {
    let m = marker("reaped");
    // The double-forked `sleep` re-parents to hm (a child subreaper); hm kills it at the end of
    // its step. Its zombie is hm's to reap then, not at the end of the run.
    let project = Project::new(&format!(
        r#"
[steps.daemon]
run = "(sleep 1000 & echo $! > daemon.pid); : {m}"
env = {{ {MARKER_VAR} = "{m}" }}

[steps.later]
needs = ["daemon"]
run = "echo started; sleep 1001; : {m}"
env = {{ {MARKER_VAR} = "{m}" }}
"#
    ));
    let mut hm = project.spawn_run(&[]);
    hm.wait_for_event("the second step's first line", WAIT, |e: &Value| {
        e["kind"] == "step_log" && e["step"] == "later" && e["line"] == "started"
    });
    let killed = hm.events().iter().any(|e| {
        e["kind"] == "step_log"
            && e["step"] == "daemon"
            && e["line"]
                .as_str()
                .is_some_and(|l| l.contains("killed 1 process"))
    });
    assert!(killed, "the daemonised sleep was killed at its step's end");
    let daemon: i32 = project.read("daemon.pid").trim().parse().expect("a pid");
    let hm_pid = hm.pid() as i32;
    // Killed, it is a zombie child of hm until hm reaps it; reaped, it is gone from /proc.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut last = hm_sdk::procfs::stat(daemon);
    while let Some(stat) = last {
        assert_eq!(stat.ppid, hm_pid, "the daemon re-parented to hm");
        if std::time::Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
        last = hm_sdk::procfs::stat(daemon);
    }
    hm.signal(Signal::SIGINT);
    let output = hm.finish(WAIT);
    assert!(
        last.is_none(),
        "hm left the daemon {daemon} unreaped while the run went on: {last:?}"
    );
    assert_eq!(output.status.code(), Some(130), "the run was interrupted");
    assert_no_process_left(&m);
}
