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

/// Every invalid form of a step key, one step each: (the key's line, where in it the error
/// points, what the message says, what the hint says). All are reported in one `hm validate`.
const INVALID_FORMS: &[(&str, &str, &str, &str)] = &[
    (
        r#"shell = "zsh""#,
        r#""zsh""#,
        "names an unknown shell `zsh`",
        r#"`shell = ["zsh", "-c"]`"#,
    ),
    (
        r#"shell = "bahs""#,
        r#""bahs""#,
        "names an unknown shell `bahs`",
        "did you mean `bash`?",
    ),
    (
        "shell = []",
        "[]",
        "must name a program, found an empty array",
        "`shell = \"bash\"`",
    ),
    (
        r#"shell = ["bash", 1]"#,
        "1]",
        "as strings, found an integer `1`",
        "",
    ),
    (
        r#"shell = ["", "-c"]"#,
        r#""""#,
        "must start with a program name",
        "",
    ),
    (
        "shell = 5",
        "5",
        "must be a shell name or an array of strings",
        "`shell = \"sh\"`",
    ),
    (
        r#"allow_failure = "yes""#,
        r#""yes""#,
        "must be true, false or a table",
        "exit_codes = [77]",
    ),
    (
        "allow_failure = {}",
        "{}",
        "needs `exit_codes`",
        "exit_codes = [77]",
    ),
    (
        "allow_failure = { exit_codes = [1], exit_cod = [2] }",
        "exit_cod =",
        "unknown key `exit_cod`",
        "did you mean `exit_codes`?",
    ),
    (
        "allow_failure = { exit_codes = [] }",
        "[]",
        "is empty, so no failure would be allowed",
        "leave `allow_failure` out",
    ),
    (
        "allow_failure = { exit_codes = [0] }",
        "0]",
        "1 to 255, found `0`",
        "exit code 0 is a pass",
    ),
    (
        "allow_failure = { exit_codes = [1, 256] }",
        "256",
        "1 to 255, found `256`",
        "",
    ),
    (
        r#"allow_failure = { exit_codes = ["77"] }"#,
        r#""77""#,
        "as integers, found a string",
        "",
    ),
    (
        "allow_failure = { exit_codes = 77 }",
        "77",
        "must be an array of exit codes",
        "write `exit_codes = [77]`",
    ),
];

#[test]
fn every_invalid_form_of_a_step_key_is_a_positioned_error() {
    let mut toml = String::from("[defaults]\nshell = \"fish\"\n");
    let mut expected = vec![(
        2,
        9,
        "`shell` in [defaults] names an unknown shell `fish`",
        r#"Give another program with its arguments: `shell = ["fish", "-c"]`"#,
    )];
    for (i, (line, anchor, message, hint)) in INVALID_FORMS.iter().enumerate() {
        toml.push_str(&format!("[steps.s{i}]\nrun = \"true\"\n{line}\n"));
        let line_number = toml.lines().count();
        let column = line
            .find(anchor)
            .unwrap_or_else(|| panic!("{anchor} in {line}"))
            + 1;
        expected.push((line_number, column, message, hint));
    }
    let project = Project::new(&toml);
    let out = project.hm(&["validate"]);
    assert_eq!(out.code(), 2, "{}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    for (line, column, message, hint) in &expected {
        let position = format!("hm.toml:{line}:{column}: error: ");
        let at = lines
            .iter()
            .position(|l| l.contains(&position) && l.contains(message))
            .unwrap_or_else(|| panic!("no `{position}...{message}` in:\n{}", out.stderr));
        if !hint.is_empty() {
            let next = lines.get(at + 1).copied().unwrap_or_default();
            assert!(
                next.starts_with("  hint: ") && next.contains(hint),
                "hint of {position}{message} should say {hint:?}:\n{}",
                out.stderr
            );
        }
    }
    let errors = lines.iter().filter(|l| l.contains(": error: ")).count();
    assert_eq!(
        errors,
        expected.len(),
        "one error per case:\n{}",
        out.stderr
    );
}

#[test]
fn the_readme_tour_is_a_valid_pipeline() {
    let readme = std::fs::read_to_string(hm_tests::repo_root().join("README.md")).expect("README");
    let start = readme
        .find("```toml\n# hm.toml\n")
        .expect("the tour's hm.toml in README.md");
    let body = &readme[start + "```toml\n".len()..];
    let tour = &body[..body.find("```").expect("the end of the tour's hm.toml")];
    let project = Project::new(tour);
    let out = project.hm(&["validate"]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
}
