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
