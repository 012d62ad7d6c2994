//! Plugin bundles from a project's `.hm/plugins/`: an older-protocol plugin keeps working; a
//! bundle whose executable is missing is a plugin problem (exit 5) that names the path; an
//! executor that dies under a step is classified, restarted and retried by policy.

use hm_tests::{Bundle, Project, Value};

const FIXTURE_V1: &str = env!("CARGO_BIN_EXE_hm-fixture-v1");

#[test]
fn a_protocol_1_plugin_runs_steps_and_is_never_sent_init() {
    let project = Project::new(
        r#"
[steps.old]
executor = "v1exec"
run = "echo from v1; echo $HM_FIXTURE_JOURNAL_SEEN"
env = { HM_FIXTURE_JOURNAL = "journal.txt", HM_FIXTURE_JOURNAL_SEEN = "env reaches the step" }

[steps.new]
run = "echo from shell"
needs = ["old"]

[plugins.fixture-v1]
config = { anything = true }
"#,
    );
    project.install(&Bundle::executor("fixture-v1", "v1exec", FIXTURE_V1).protocol(1, 1));
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(run.status("old"), "passed", "{run}");
    assert_eq!(
        run.lines("old"),
        ["from v1", "env reaches the step"],
        "{run}"
    );
    assert_eq!(run.lines("new"), ["from shell"], "{run}");

    let starts = run.of_kind("plugin_start");
    let v1 = starts
        .iter()
        .find(|e| e["plugin"] == "fixture-v1")
        .unwrap_or_else(|| panic!("{run}"));
    assert_eq!(
        v1["protocol"], 1,
        "negotiated down to the plugin's only version; {run}"
    );
    let step_start = &run.of_step("step_start", "old")[0];
    assert_eq!(step_start["executor"], "v1exec");
    assert_eq!(step_start["plugin_pid"], v1["pid"]);

    // A v1 plugin that received Init would have died of a protocol error instead.
    let exit = run
        .of_kind("plugin_exit")
        .into_iter()
        .find(|e| e["plugin"] == "fixture-v1");
    let exit = exit.unwrap_or_else(|| panic!("no plugin_exit for fixture-v1; {run}"));
    assert_eq!(exit["clean"], true, "{run}");
    assert_eq!(exit["exit_code"], 0, "{run}");
    assert_eq!(project.read("journal.txt"), "execute old attempt 1\n");
}

#[test]
fn a_bundle_whose_executable_is_missing_fails_with_its_path_and_exit_5() {
    let project = Project::new(
        r#"
[steps.ghostly]
executor = "ghost"
run = "touch ghostly.ran"
"#,
    );
    let bundle = project
        .install(&Bundle::executor("ghost", "ghost", "/nonexistent/ghost-bin").without_binary());
    let run = project.run(&[]);
    let missing = bundle.join("ghost-bin").display().to_string();
    assert!(
        run.stderr().contains(&missing),
        "the error names {missing}; {run}"
    );
    assert_eq!(run.code(), 5, "{run}");
    assert_eq!(run.build_end()["exit_code"], 5, "{run}");
    assert!(!project.exists("ghostly.ran"));
    assert_eq!(run.status("ghostly"), "failed", "{run}");
    run.assert_one_final_step_end_each();
}

const FIXTURE_CRASH: &str = env!("CARGO_BIN_EXE_hm-fixture-crash");

/// `fragile` runs on the crashing fixture (its first attempt kills the plugin); `bystander`
/// runs on the shell executor next to it.
fn crashing_project(retry: &str) -> Project {
    let project = Project::new(&format!(
        r#"
[steps.fragile]
executor = "crashy"
run = "echo survived"
env = {{ CRASH_ONCE_FILE = "crashed" }}
{retry}

[steps.bystander]
run = "echo fine"
"#
    ));
    project.install(&Bundle::executor("fixture-crash", "crashy", FIXTURE_CRASH));
    project
}

#[test]
fn a_crashed_executor_is_restarted_and_the_step_retried_when_crash_is_listed() {
    let project = crashing_project(r#"retry = { attempts = 2, on = ["crash"] }"#);
    let run = project.run(&["-j2"]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(project.exists("crashed"), "the fixture did crash");
    let ends = run.of_step("step_end", "fragile");
    assert_eq!(ends.len(), 2, "{run}");
    assert_eq!(
        (&ends[0]["status"], &ends[0]["cause"]),
        (&Value::from("failed"), &Value::from("executor_crash")),
        "{run}"
    );
    let retry = run.of_step("step_retry", "fragile");
    assert_eq!(retry.len(), 1, "{run}");
    assert_eq!(retry[0]["cause"], "executor_crash", "{run}");
    assert_eq!(run.status("fragile"), "passed", "{run}");
    assert_eq!(run.lines("fragile"), ["survived"], "{run}");
    assert_eq!(run.status("bystander"), "passed", "{run}");

    let exits: Vec<&Value> = run
        .of_kind("plugin_exit")
        .into_iter()
        .filter(|e| e["plugin"] == "fixture-crash")
        .collect();
    assert_eq!(
        exits.len(),
        2,
        "the crashed instance and the restarted one; {run}"
    );
    assert_eq!(
        (&exits[0]["clean"], &exits[0]["cause"], &exits[0]["signal"]),
        (&Value::from(false), &Value::from("signal"), &Value::from(9)),
        "{run}"
    );
    assert_eq!(exits[1]["clean"], true, "{run}");
    let restarts = run.of_kind("plugin_restart");
    assert_eq!(restarts.len(), 1, "{run}");
    assert_eq!(
        (&restarts[0]["plugin"], &restarts[0]["restarts"]),
        (&Value::from("fixture-crash"), &Value::from(1)),
        "{run}"
    );
    assert!(restarts[0]["max"].as_u64().is_some_and(|m| m >= 1), "{run}");
    let starts: Vec<&Value> = run
        .of_kind("plugin_start")
        .into_iter()
        .filter(|e| e["plugin"] == "fixture-crash")
        .collect();
    assert_eq!(starts.len(), 2, "{run}");
    assert_ne!(starts[0]["pid"], starts[1]["pid"], "a new process; {run}");
    run.assert_one_final_step_end_each();
}

#[test]
fn a_crashed_executor_fails_its_step_and_the_run_goes_on() {
    let project = crashing_project("");
    let run = project.run(&["-k", "-j2"]);
    assert_eq!(run.code(), 1, "{run}");
    assert_eq!(run.status("fragile"), "failed", "{run}");
    assert_eq!(run.cause("fragile"), Some("executor_crash"), "{run}");
    assert!(
        run.of_kind("step_retry").is_empty(),
        "crash is not listed: no retry; {run}"
    );
    assert_eq!(run.status("bystander"), "passed", "{run}");
    assert_eq!(run.lines("bystander"), ["fine"], "{run}");
    run.assert_one_final_step_end_each();
}
