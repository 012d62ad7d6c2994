//! Step and pipeline timeouts: the verdict, exit 124, and nothing of the step left running.

use std::time::Duration;

use hm_tests::{MARKER_VAR, Project, Run, assert_no_process_left, marker, wait_for_processes};

const WAIT: Duration = Duration::from_secs(20);

/// Runs the project with `--grace 1s`, first checking (while the step runs) that `processes`
/// processes carry the marker, so that "none left" afterwards means something.
fn run_seeing_processes(project: &Project, m: &str, processes: usize) -> Run {
    let mut hm = project.spawn_run(&["--grace", "1s"]);
    hm.wait_for_event("the step's first line", WAIT, |e| {
        e["kind"] == "step_log" && e["line"] == "started"
    });
    wait_for_processes(m, processes, WAIT);
    hm.finish(WAIT).into_run()
}

fn timed_out_step(m: &str, run: &str) -> Project {
    Project::new(&format!(
        r#"
[steps.slow]
run = '''echo started; {run}; : {m}'''
timeout = "1s"
env = {{ {MARKER_VAR} = "{m}" }}

[steps.after]
run = "touch after.ran"
needs = ["slow"]
"#
    ))
}

fn assert_timed_out(project: &Project, run: &Run, m: &str) {
    assert_eq!(run.code(), 124, "{run}");
    assert_eq!(run.status("slow"), "timed_out", "{run}");
    assert_eq!(run.cause("slow"), Some("timeout"), "{run}");
    let duration = run.step_end("slow")["duration_ms"].as_u64().unwrap_or(0);
    assert!(
        duration >= 1000,
        "the step ran its full timeout, not {duration} ms; {run}"
    );
    assert_eq!(run.status("after"), "skipped", "{run}");
    assert!(!project.exists("after.ran"));
    assert_eq!(run.build_end()["exit_code"], 124, "{run}");
    assert!(run.output.elapsed < Duration::from_secs(10), "{run}");
    run.assert_one_final_step_end_each();
    assert_no_process_left(m);
}

#[test]
fn a_step_timeout_kills_the_steps_whole_process_tree() {
    let m = marker("step-timeout");
    let project = timed_out_step(&m, "sleep 1000 & sleep 1001");
    // The shell and both sleeps.
    let run = run_seeing_processes(&project, &m, 3);
    assert_timed_out(&project, &run, &m);
}

#[test]
fn a_step_timeout_kills_a_background_child_that_ignores_sigterm() {
    let m = marker("step-timeout-term");
    let project = timed_out_step(&m, r#"sh -c "trap '' TERM; sleep 1000; :" & sleep 1001"#);
    // Two shells and two sleeps.
    let run = run_seeing_processes(&project, &m, 4);
    assert_timed_out(&project, &run, &m);
}

#[test]
fn a_step_that_ignores_sigterm_is_killed_after_the_grace() {
    let m = marker("step-timeout-ignore");
    // The step's shell ignores TERM itself (and so does its `sleep`, which inherits that).
    let project = timed_out_step(&m, "trap '' TERM; sleep 1000");
    let run = run_seeing_processes(&project, &m, 2);
    assert_timed_out(&project, &run, &m);
}

#[test]
fn the_pipeline_timeout_stops_the_run_with_124() {
    let m = marker("pipeline-timeout");
    let pipeline = format!(
        r#"
[steps.slow]
run = "sleep 1000; : {m}"
env = {{ {MARKER_VAR} = "{m}" }}

[steps.after]
run = "touch after.ran"
needs = ["slow"]
"#
    );
    // From the command line, and from the file.
    for (file_table, args) in [
        ("", vec!["--timeout", "1s", "--grace", "1s"]),
        ("[pipeline]\ntimeout = \"1s\"\n", vec!["--grace", "1s"]),
    ] {
        let project = Project::new(&format!("{file_table}{pipeline}"));
        let run = project.run(&args);
        assert_eq!(run.code(), 124, "{run}");
        assert_eq!(run.status("slow"), "timed_out", "{run}");
        assert_eq!(run.cause("slow"), Some("timeout"), "{run}");
        assert_eq!(run.status("after"), "skipped", "{run}");
        assert!(!project.exists("after.ran"));
        let end = run.build_end();
        assert_eq!(end["exit_code"], 124, "{run}");
        assert_eq!(end["status"], "timed_out", "{run}");
        assert!(run.output.elapsed < Duration::from_secs(10), "{run}");
        run.assert_one_final_step_end_each();
        assert_no_process_left(&m);
    }
}

#[test]
fn a_step_that_finishes_within_its_timeout_passes() {
    let project = Project::new("[steps.quick]\nrun = \"echo quick\"\ntimeout = \"30s\"\n");
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(run.status("quick"), "passed", "{run}");
}

#[test]
fn a_background_process_left_by_a_passing_step_is_killed_and_reported() {
    let m = marker("leak");
    let project = Project::new(&format!(
        r#"
[steps.leaky]
run = "sleep 1000 & echo left one behind; : {m}"
env = {{ {MARKER_VAR} = "{m}" }}

[steps.after]
run = "echo after"
needs = ["leaky"]
"#
    ));
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(run.status("leaky"), "passed", "{run}");
    let said = run.stream_lines("leaky", "stderr");
    assert!(
        said.iter().any(|l| l.contains("killed 1 process")),
        "the step's log says what was killed: {said:?}"
    );
    assert!(
        run.index_of("step_start", "after") > run.index_of("step_end", "leaky"),
        "{run}"
    );
    assert_no_process_left(&m);
}
