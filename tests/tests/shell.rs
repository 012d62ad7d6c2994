//! How a step's command runs: `shell` (`sh -e -c` by default, `bash` with pipefail, any argv),
//! `allow_failure = { exit_codes }`, the variables hm sets in every step (`CI`, `HM_RUN_ID`,
//! `HM_STEP`, `HM_ATTEMPT`), and `dir`, checked when the step starts (cause `setup`).

use hm_tests::{Bundle, Project};

const FIXTURE_V1: &str = env!("CARGO_BIN_EXE_hm-fixture-v1");

/// Two lines: the first fails. Only a shell that stops at a failing line fails the step.
const FIRST_LINE_FAILS: &str = "false\necho after the failure";

#[test]
fn a_failing_line_fails_the_step_unless_the_shell_says_otherwise() {
    let project = Project::new(&format!(
        r#"
[steps.default]
run = """
{FIRST_LINE_FAILS}
"""

[steps.plain-sh]
shell = ["sh", "-c"]
run = """
{FIRST_LINE_FAILS}
"""
"#
    ));
    let run = project.run(&["-k"]);
    assert_eq!(run.code(), 1, "{run}");
    assert_eq!(run.status("default"), "failed", "{run}");
    assert_eq!(run.step_end("default")["exit_code"], 1, "{run}");
    assert!(run.lines("default").is_empty(), "{run}");
    // The argv form runs exactly what it says: plain `sh -c`, where the last line decides.
    assert_eq!(run.status("plain-sh"), "passed", "{run}");
    assert_eq!(run.lines("plain-sh"), ["after the failure"], "{run}");
}

#[test]
fn bash_fails_on_a_failing_pipeline_stage_and_sh_does_not() {
    let project = Project::new(
        r#"
[steps.bash]
shell = "bash"
run = "false | cat; echo after"

[steps.sh]
run = "false | cat; echo after"

[steps.bash-features]
shell = "bash"
run = "words=(a b c); echo ${#words[@]} $BASH_VERSINFO"
"#,
    );
    let run = project.run(&["-k"]);
    assert_eq!(run.code(), 1, "{run}");
    assert_eq!(run.status("bash"), "failed", "{run}");
    assert!(run.lines("bash").is_empty(), "{run}");
    assert_eq!(run.status("sh"), "passed", "{run}");
    assert_eq!(run.lines("sh"), ["after"], "{run}");
    let lines = run.lines("bash-features");
    assert_eq!(lines.len(), 1, "{run}");
    assert!(lines[0].starts_with("3 "), "{run}");
}

#[test]
fn any_program_can_be_the_shell_and_a_missing_one_says_so() {
    let project = Project::new(
        r#"
[steps.python]
shell = ["python3", "-c"]
run = "import os, sys; print(os.environ['HM_STEP'], sys.argv)"

[steps.missing]
shell = ["hm-no-such-shell", "-c"]
run = "true"
"#,
    );
    let run = project.run(&["-k"]);
    assert_eq!(run.status("python"), "passed", "{run}");
    // `python3 -c RUN`: the program's argv after the code is just ["-c"].
    assert_eq!(run.lines("python"), ["python ['-c']"], "{run}");
    assert_eq!(run.status("missing"), "failed", "{run}");
    let message = run.step_end("missing")["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("`hm-no-such-shell` is not installed or not on the step's PATH"),
        "{run}"
    );
}

#[test]
fn allow_failure_exit_codes_allow_only_those_codes() {
    let project = Project::new(
        r#"
[steps.skipped-tests]
run = "exit 77"
allow_failure = { exit_codes = [77] }

[steps.after]
run = "echo ran"
needs = ["skipped-tests"]
"#,
    );
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "an allowed code keeps the run green; {run}");
    let end = run.step_end("skipped-tests");
    assert_eq!(end["status"], "failed", "{run}");
    assert_eq!(end["exit_code"], 77, "{run}");
    assert_eq!(end["allowed_failure"], true, "{run}");
    assert_eq!(run.lines("after"), ["ran"], "dependents run; {run}");

    project.write(
        "hm.toml",
        r#"
[steps.broken]
run = "exit 1"
allow_failure = { exit_codes = [77] }

[steps.after]
run = "echo ran"
needs = ["broken"]
"#,
    );
    let run = project.run(&[]);
    assert_eq!(run.code(), 1, "another code fails the run; {run}");
    assert_eq!(run.status("broken"), "failed", "{run}");
    assert!(
        run.step_end("broken").get("allowed_failure").is_none(),
        "{run}"
    );
    assert_eq!(run.cause("after"), Some("dependency_failed"), "{run}");
}

#[test]
fn every_step_knows_the_run_its_name_and_its_attempt() {
    let project = Project::new(
        r#"
[steps.show]
run = 'echo "CI=$CI run=$HM_RUN_ID step=$HM_STEP attempt=$HM_ATTEMPT"; test "$HM_ATTEMPT" = 2'
retry = { attempts = 2 }
env = { HM_STEP = "not this", HM_ATTEMPT = "nor this" }
"#,
    );
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    let run_id = run.of_kind("build_start")[0]["run_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!run_id.is_empty(), "{run}");
    assert_eq!(
        run.lines("show"),
        [
            format!("CI=true run={run_id} step=show attempt=1"),
            format!("CI=true run={run_id} step=show attempt=2"),
        ],
        "{run}"
    );

    // `CI` from `-e`, or from hm's own environment, is kept.
    let run = project.run(&["-e", "CI=false"]);
    assert!(run.lines("show")[0].starts_with("CI=false "), "{run}");
    let out = project
        .command(&["run", "--format", "json"])
        .env("CI", "woodpecker")
        .output()
        .expect("hm runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("CI=woodpecker run="), "{stdout}");
}

#[test]
fn dir_is_checked_when_the_step_starts() {
    let project = Project::new(
        r#"
[steps.make-dir]
run = "mkdir -p out/sub"

[steps.inside]
dir = "out/sub"
run = "pwd -P"
needs = ["make-dir"]

[steps.nowhere]
dir = "not/there"
run = "echo never"
"#,
    );
    // Not a problem of the file: the directory may come from an earlier step.
    let out = project.hm(&["validate"]);
    assert_eq!(out.code(), 0, "{}", out.stderr);

    let run = project.run(&["-k"]);
    assert_eq!(run.code(), 1, "{run}");
    assert_eq!(run.status("inside"), "passed", "{run}");
    let inside = project.path("out/sub").display().to_string();
    assert_eq!(run.lines("inside"), [inside.as_str()], "{run}");

    let end = run.step_end("nowhere");
    assert_eq!(end["status"], "failed", "{run}");
    assert_eq!(end["cause"], "setup", "{run}");
    let message = end["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`not/there` does not exist")
            && message.contains(&project.path("not/there").display().to_string())
            && message.contains("hm.toml:10:1"),
        "{run}"
    );
    assert!(
        run.of_step("step_start", "nowhere").is_empty(),
        "no executor saw it; {run}"
    );
    let human = project.hm(&["run", "-k", "nowhere"]);
    assert!(
        human
            .stderr
            .contains("[nowhere] failed: its dir `not/there` does not exist"),
        "{}",
        human.stderr
    );
}

#[test]
fn an_executor_too_old_to_be_told_the_shell_fails_only_the_steps_that_set_one() {
    let project = Project::new(
        r#"
[steps.default]
executor = "v1exec"
run = """
false
echo legacy sh -c runs every line
"""

[steps.bash]
executor = "v1exec"
shell = "bash"
run = "echo never"
"#,
    );
    project.install(&Bundle::executor("fixture-v1", "v1exec", FIXTURE_V1).protocol(1, 1));
    let run = project.run(&["-k"]);
    assert_eq!(run.status("default"), "passed", "{run}");
    assert_eq!(
        run.lines("default"),
        ["legacy sh -c runs every line"],
        "{run}"
    );
    let end = run.step_end("bash");
    assert_eq!(end["cause"], "setup", "{run}");
    let message = end["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("`fixture-v1` speaks protocol 1") && message.contains("`shell`"),
        "{run}"
    );
}
