//! Ctrl-C: the first SIGINT cancels cooperatively (the kill ladder), a second one kills at once;
//! either way hm exits 130 and nothing of the run is left.

use std::time::{Duration, Instant};

use hm_tests::{
    MARKER_VAR, Project, Signal, Value, assert_no_process_left, marker, wait_for_processes,
};

const WAIT: Duration = Duration::from_secs(20);

fn is_log(step: &'static str, line: &'static str) -> impl Fn(&Value) -> bool {
    move |e| e["kind"] == "step_log" && e["step"] == step && e["line"] == line
}

#[test]
fn ctrl_c_cancels_running_steps_and_exits_130() {
    let m = marker("ctrl-c");
    let project = Project::new(&format!(
        r#"
[steps.long]
run = "echo started; sleep 1000 & sleep 1001; : {m}"
env = {{ {MARKER_VAR} = "{m}" }}

[steps.after]
run = "touch after.ran"
needs = ["long"]
"#
    ));
    let mut hm = project.spawn_run(&["--grace", "2s"]);
    hm.wait_for_event(
        "the first log line of `long`",
        WAIT,
        is_log("long", "started"),
    );
    // The shell and both sleeps are running.
    wait_for_processes(&m, 3, WAIT);
    let interrupted = Instant::now();
    hm.signal(Signal::SIGINT);
    let run = hm.finish(WAIT).into_run();
    let took = interrupted.elapsed();
    assert_eq!(run.code(), 130, "{run}");
    assert!(
        took < Duration::from_secs(2) + Duration::from_millis(1500),
        "exit took {took:?}, more than the grace; {run}"
    );
    assert_eq!(run.status("long"), "cancelled", "{run}");
    assert_eq!(run.cause("long"), Some("cancelled"), "{run}");
    assert_eq!(run.status("after"), "cancelled", "{run}");
    assert!(!project.exists("after.ran"));
    let end = run.build_end();
    assert_eq!(end["exit_code"], 130, "{run}");
    assert_eq!(end["status"], "cancelled", "{run}");
    run.assert_one_final_step_end_each();
    assert_no_process_left(&m);
}

/// The step ignores SIGTERM, and so does every process it starts (an ignored signal stays
/// ignored across exec): only SIGKILL ends it.
fn stubborn_step(m: &str) -> Project {
    Project::new(&format!(
        r#"
[steps.stubborn]
run = '''trap '' TERM; echo started; while :; do sleep 0.1; done; : {m}'''
env = {{ {MARKER_VAR} = "{m}" }}
"#
    ))
}

#[test]
fn a_second_ctrl_c_kills_a_step_that_ignores_the_first() {
    let m = marker("ctrl-c-twice");
    let project = stubborn_step(&m);
    // A grace far longer than the test's patience: only the second Ctrl-C can end this quickly.
    let mut hm = project.spawn_run(&["--grace", "60s"]);
    hm.wait_for_event("the first log line", WAIT, is_log("stubborn", "started"));
    hm.signal(Signal::SIGINT);
    // hm has taken the first Ctrl-C (and says how to kill at once), so the next one is the second.
    hm.wait_for_stderr("Ctrl-C again", WAIT);
    let second = Instant::now();
    hm.signal(Signal::SIGINT);
    let run = hm.finish(Duration::from_secs(10)).into_run();
    let took = second.elapsed();
    assert_eq!(run.code(), 130, "{run}");
    assert!(
        took < Duration::from_secs(3),
        "the second Ctrl-C took {took:?} to end the run; {run}"
    );
    assert_eq!(run.status("stubborn"), "cancelled", "{run}");
    assert_eq!(run.cause("stubborn"), Some("cancelled"), "{run}");
    run.assert_one_final_step_end_each();
    assert_no_process_left(&m);
}

#[test]
fn one_ctrl_c_kills_a_step_that_ignores_it_once_the_grace_has_passed() {
    let m = marker("ctrl-c-grace");
    let project = stubborn_step(&m);
    let mut hm = project.spawn_run(&["--grace", "1s"]);
    hm.wait_for_event("the first log line", WAIT, is_log("stubborn", "started"));
    let interrupted = Instant::now();
    hm.signal(Signal::SIGINT);
    let run = hm.finish(WAIT).into_run();
    let took = interrupted.elapsed();
    assert_eq!(run.code(), 130, "{run}");
    // Nothing but the SIGKILL at the end of the grace can have ended the step.
    assert!(
        took >= Duration::from_secs(1),
        "the step ignoring SIGTERM ended after {took:?}, within the grace; {run}"
    );
    assert!(
        took < Duration::from_secs(5),
        "the kill ladder took {took:?}; {run}"
    );
    assert_eq!(run.status("stubborn"), "cancelled", "{run}");
    run.assert_one_final_step_end_each();
    assert_no_process_left(&m);
}

#[test]
fn sigterm_to_hm_cancels_like_ctrl_c() {
    let m = marker("sigterm");
    let project = Project::new(&format!(
        r#"
[steps.long]
run = "echo started; sleep 1000; : {m}"
env = {{ {MARKER_VAR} = "{m}" }}
"#
    ));
    let mut hm = project.spawn_run(&["--grace", "1s"]);
    hm.wait_for_event("the first log line", WAIT, is_log("long", "started"));
    hm.signal(Signal::SIGTERM);
    let run = hm.finish(WAIT).into_run();
    assert_eq!(run.code(), 130, "{run}");
    assert_eq!(run.status("long"), "cancelled", "{run}");
    assert_no_process_left(&m);
}
