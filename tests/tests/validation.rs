//! Problems found before anything runs: an invalid pipeline (exit 2, every problem with
//! file:line:col) and steps whose executor no plugin provides (exit 7).

use hm_tests::Project;

/// Five problems, each at a known line and column.
const INVALID: &str = r#"[pipeline]
timeout = "forever"
bogus = 1

[steps.a]
run = "touch a.ran"
needs = ["zzz"]

[steps.b]
run = 5

[steps.c]
run = "touch c.ran"
needs = ["d"]

[steps.d]
run = "touch d.ran"
needs = ["c"]
"#;

fn assert_reports_every_problem(project: &Project, stderr: &str) {
    for (position, words) in [
        ("hm.toml:2:11:", "forever"),
        ("hm.toml:3:1:", "bogus"),
        ("hm.toml:7:10:", "zzz"),
        ("hm.toml:10:7:", "run"),
        ("cycle", "c -> d -> c"),
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.contains(position) && l.contains(words)),
            "no problem {position} {words:?} in:\n{stderr}"
        );
    }
    assert!(
        stderr
            .lines()
            .filter(|l| l.starts_with("hm.toml:") && l.contains("error"))
            .count()
            >= 5,
        "every problem is reported with its position:\n{stderr}"
    );
    for step in ["a", "c", "d"] {
        assert!(
            !project.exists(&format!("{step}.ran")),
            "step {step} ran from an invalid pipeline"
        );
    }
}

#[test]
fn an_invalid_pipeline_reports_every_problem_with_its_position_and_exits_2() {
    let project = Project::new(INVALID);
    let out = project.hm(&["run", "--format", "json"]);
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert_eq!(out.stdout, "", "no events for a run that never started");
    assert_reports_every_problem(&project, &out.stderr);

    let out = project.hm(&["validate"]);
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert_reports_every_problem(&project, &out.stderr);
}

#[test]
fn a_missing_pipeline_file_is_a_usage_error() {
    let project = Project::empty();
    let out = project.hm(&["run"]);
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(out.stderr.contains("hm.toml"), "{}", out.stderr);
    let out = project.hm(&["run", "-f", "nope.toml"]);
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(out.stderr.contains("nope.toml"), "{}", out.stderr);
}

#[test]
fn steps_whose_executor_no_plugin_provides_exit_7_before_anything_runs() {
    let project = Project::new(
        r#"
[steps.fine]
run = "touch fine.ran"

[steps.custom]
executor = "nope"
run = "true"
"#,
    );
    let out = project.hm(&["run", "--format", "json"]);
    assert_eq!(out.code(), 7, "{}", out.stderr);
    assert!(
        !project.exists("fine.ran"),
        "nothing runs when an executor is missing"
    );
    let line = |step: &str| {
        out.stderr
            .lines()
            .find(|l| l.contains(&format!("\"{step}\"")))
            .map(str::to_owned)
    };
    let custom =
        line("custom").unwrap_or_else(|| panic!("step custom not named in:\n{}", out.stderr));
    assert!(
        custom.contains("nope") && custom.starts_with("hm.toml:"),
        "{custom}"
    );
    assert!(
        out.stderr.contains("docker, shell"),
        "the hint lists the executors there are:\n{}",
        out.stderr
    );

    let out = project.hm(&["validate"]);
    assert_eq!(out.code(), 7, "{}", out.stderr);
}

#[test]
fn a_missing_executor_outside_the_selection_does_not_matter() {
    let project = Project::new(
        r#"
[steps.fine]
run = "touch fine.ran"

[steps.custom]
executor = "nope"
run = "true"
"#,
    );
    let run = project.run(&["fine"]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(project.exists("fine.ran"));
}
