//! What a failing step does to the run: fail fast, keep-going, `allow_failure`, and retries
//! by class.

use hm_tests::{MARKER_VAR, Project, assert_no_process_left, marker, sh_wait_for_file};

/// `long` runs until cancelled; `fail` fails once `long` is running; `after_fail` needs `fail`,
/// `after_long` needs `long`, and `independent` needs nothing but waits for a slot (`-j2`).
fn fail_fast_pipeline(m: &str) -> Project {
    Project::new(&format!(
        r#"
[steps.long]
run = "touch long.started; sleep 1000; : {m}"
env = {{ {MARKER_VAR} = "{m}" }}

[steps.fail]
run = '''{wait}; echo failing; exit 1'''

[steps.independent]
run = "touch independent.ran"

[steps.after_fail]
run = "touch after_fail.ran"
needs = ["fail"]

[steps.after_long]
run = "touch after_long.ran"
needs = ["long"]
"#,
        wait = sh_wait_for_file("long.started"),
    ))
}

#[test]
fn a_failure_skips_dependents_and_cancels_running_siblings() {
    let m = marker("failfast");
    let project = fail_fast_pipeline(&m);
    let run = project.run(&["-j2", "--grace", "1s"]);
    assert_eq!(run.code(), 1, "{run}");
    assert_eq!(run.status("fail"), "failed", "{run}");
    assert_eq!(run.cause("fail"), Some("exit"), "{run}");
    assert_eq!(run.step_end("fail")["exit_code"], 1, "{run}");
    assert_eq!(run.status("long"), "cancelled", "{run}");
    assert_eq!(run.cause("long"), Some("cancelled"), "{run}");
    // Only what needs the failed step is skipped for it; the rest was stopped by fail fast.
    for (step, cause) in [
        ("after_fail", "dependency_failed"),
        ("after_long", "cancelled"),
        ("independent", "cancelled"),
    ] {
        assert_eq!(run.status(step), "skipped", "{run}");
        assert_eq!(run.cause(step), Some(cause), "{step}; {run}");
        assert!(
            run.of_step("step_start", step).is_empty(),
            "{step} must not start; {run}"
        );
        assert!(!project.exists(&format!("{step}.ran")), "{step} ran");
    }
    run.assert_one_final_step_end_each();
    let end = run.build_end();
    assert_eq!(
        (
            end["failed"].as_u64(),
            end["skipped"].as_u64(),
            end["cancelled"].as_u64()
        ),
        (Some(1), Some(3), Some(1)),
        "{run}"
    );
    assert_no_process_left(&m);
}

#[test]
fn the_human_summary_says_the_run_stopped_at_the_first_failure_and_how_to_keep_going() {
    let m = marker("failfast-human");
    let project = fail_fast_pipeline(&m);
    let mut cmd = project.command(&["run", "-j2", "--grace", "1s"]);
    cmd.env(MARKER_VAR, &m);
    let out = hm_tests::Hm::spawn(cmd).finish(hm_tests::RUN_DEADLINE);
    assert_eq!(out.code(), 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "stopped at the first failure (fail): 3 steps cancelled or not started; \
             -k (--keep-going) lets the steps that do not need it finish"
        ),
        "{}",
        out.stderr
    );
    assert_no_process_left(&m);
}

/// `fail` fails; `dep` needs it; `x` ends only after `fail` has failed, so `y` (which needs `x`)
/// starts after the failure: under fail fast it would be skipped or cancelled.
fn keep_going_pipeline(pipeline_table: &str) -> Project {
    Project::new(&format!(
        r#"
{pipeline_table}

[steps.fail]
run = "echo failing; touch fail.done; exit 1"

[steps.dep]
run = "touch dep.ran"
needs = ["fail"]

[steps.x]
run = '''{wait}; echo x'''

[steps.y]
run = "echo y; touch y.ran"
needs = ["x"]
"#,
        wait = sh_wait_for_file("fail.done"),
    ))
}

fn assert_kept_going(project: &Project, run: &hm_tests::Run) {
    assert_eq!(run.code(), 1, "{run}");
    assert_eq!(run.status("fail"), "failed", "{run}");
    assert_eq!(run.status("dep"), "skipped", "{run}");
    assert_eq!(run.cause("dep"), Some("dependency_failed"), "{run}");
    assert_eq!(run.status("x"), "passed", "{run}");
    assert_eq!(run.status("y"), "passed", "{run}");
    assert!(project.exists("y.ran"));
    assert!(!project.exists("dep.ran"));
    run.assert_one_final_step_end_each();
    let end = run.build_end();
    let counts = (
        end["passed"].as_u64(),
        end["failed"].as_u64(),
        end["skipped"].as_u64(),
    );
    assert_eq!(counts, (Some(2), Some(1), Some(1)), "{run}");
}

#[test]
fn keep_going_finishes_independent_branches_and_skips_only_dependents() {
    let project = keep_going_pipeline("");
    let run = project.run(&["-k", "-j4"]);
    assert_kept_going(&project, &run);
}

#[test]
fn keep_going_from_the_file_works_like_the_flag() {
    let project = keep_going_pipeline("[pipeline]\nkeep_going = true");
    let run = project.run(&["-j4"]);
    assert_kept_going(&project, &run);
}

#[test]
fn an_allowed_failure_keeps_the_run_green_and_its_dependents_run() {
    let project = Project::new(
        r#"
[steps.flaky]
run = "echo trying; exit 1"
allow_failure = true

[steps.after]
run = "touch after.ran"
needs = ["flaky"]
"#,
    );
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    let flaky = run.step_end("flaky");
    assert_eq!(flaky["status"], "failed", "{run}");
    assert_eq!(flaky["allowed_failure"], true, "{run}");
    assert_eq!(run.status("after"), "passed", "{run}");
    assert!(project.exists("after.ran"));
    assert_eq!(run.build_end()["exit_code"], 0, "{run}");
}

/// A step that counts its attempts in a file and passes on attempt `passes_on`, exiting 3
/// before that.
fn counting_step(retry: &str, passes_on: u32) -> String {
    format!(
        r#"
[steps.flaky]
run = '''n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; echo "attempt $n"; if [ $n -lt {passes_on} ]; then exit 3; fi'''
retry = {retry}
"#
    )
}

#[test]
fn a_listed_exit_code_is_retried_until_the_step_passes() {
    let project = Project::new(&counting_step(r#"{ attempts = 3, on = ["exit:3"] }"#, 3));
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(project.read("count").trim(), "3");
    let ends = run.of_step("step_end", "flaky");
    let attempts: Vec<(u64, &str)> = ends
        .iter()
        .map(|e| {
            (
                e["attempt"].as_u64().unwrap_or(0),
                e["status"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        attempts,
        [(1, "failed"), (2, "failed"), (3, "passed")],
        "{run}"
    );
    let retries = run.of_step("step_retry", "flaky");
    let retried: Vec<(u64, &str)> = retries
        .iter()
        .map(|e| {
            (
                e["attempt"].as_u64().unwrap_or(0),
                e["cause"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(retried, [(2, "exit"), (3, "exit")], "{run}");
    let starts: Vec<u64> = run
        .of_step("step_start", "flaky")
        .iter()
        .filter_map(|e| e["attempt"].as_u64())
        .collect();
    assert_eq!(starts, [1, 2, 3], "{run}");
    assert_eq!(
        run.lines("flaky"),
        ["attempt 1", "attempt 2", "attempt 3"],
        "{run}"
    );
    assert_eq!(run.status("flaky"), "passed", "{run}");
    run.assert_one_final_step_end_each();
}

#[test]
fn failures_of_unlisted_classes_are_not_retried() {
    for on in [
        r#"["signal"]"#,
        r#"["exit:4"]"#,
        r#"["timeout", "crash", "oom"]"#,
    ] {
        let project = Project::new(&counting_step(&format!("{{ attempts = 3, on = {on} }}"), 3));
        let run = project.run(&[]);
        assert_eq!(run.code(), 1, "on = {on}: {run}");
        assert_eq!(project.read("count").trim(), "1", "on = {on}");
        assert!(run.of_kind("step_retry").is_empty(), "on = {on}: {run}");
        assert_eq!(
            run.of_step("step_end", "flaky").len(),
            1,
            "on = {on}: {run}"
        );
        assert_eq!(run.status("flaky"), "failed", "on = {on}: {run}");
        assert_eq!(run.step_end("flaky")["exit_code"], 3, "on = {on}: {run}");
    }
}

#[test]
fn retries_stop_after_the_last_attempt() {
    let project = Project::new(&counting_step(r#"{ attempts = 2, on = ["failed"] }"#, 100));
    let run = project.run(&[]);
    assert_eq!(run.code(), 1, "{run}");
    assert_eq!(project.read("count").trim(), "2");
    assert_eq!(run.of_step("step_retry", "flaky").len(), 1, "{run}");
    assert_eq!(run.step_end("flaky")["attempt"], 2, "{run}");
    run.assert_one_final_step_end_each();
}

#[test]
fn a_step_timeout_is_retried_when_timeout_is_listed() {
    let m = marker("retry-timeout");
    let project = Project::new(&format!(
        r#"
[steps.slow]
run = '''n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; if [ $n -lt 2 ]; then sleep 1000; fi; : {m}'''
timeout = "1s"
retry = {{ attempts = 2, on = ["timeout"] }}
env = {{ {MARKER_VAR} = "{m}" }}
"#
    ));
    let run = project.run(&["--grace", "1s"]);
    assert_eq!(
        run.of_step("step_retry", "slow").len(),
        1,
        "a timeout with on = [\"timeout\"] is retried; {run}"
    );
    assert_eq!(run.status("slow"), "passed", "{run}");
    assert_eq!(run.code(), 0, "{run}");
    assert_no_process_left(&m);
}

#[test]
fn a_step_killed_by_a_signal_is_retried_when_signal_is_listed() {
    let project = Project::new(
        r#"
[steps.shot]
run = '''n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; if [ $n -lt 2 ]; then kill -KILL $$; fi; echo alive'''
retry = { attempts = 2, on = ["signal"] }
"#,
    );
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    let first = &run.of_step("step_end", "shot")[0];
    assert_eq!(
        (&first["status"], &first["cause"], &first["signal"]),
        (&"failed".into(), &"signal".into(), &9.into()),
        "{run}"
    );
    assert_eq!(
        run.of_step("step_retry", "shot")[0]["cause"],
        "signal",
        "{run}"
    );
    assert_eq!(run.status("shot"), "passed", "{run}");
    assert_eq!(run.lines("shot"), ["alive"], "{run}");
}

#[test]
fn a_timeout_outranks_a_failure_in_the_exit_code() {
    let m = marker("precedence");
    let project = Project::new(&format!(
        r#"
[steps.fail]
run = "exit 1"

[steps.slow]
run = "sleep 1000; : {m}"
timeout = "1s"
env = {{ {MARKER_VAR} = "{m}" }}
"#
    ));
    let run = project.run(&["-k", "--grace", "1s"]);
    assert_eq!(run.status("fail"), "failed", "{run}");
    assert_eq!(run.status("slow"), "timed_out", "{run}");
    assert_eq!(run.code(), 124, "130 > 124 > 1; {run}");
    assert_no_process_left(&m);
}
