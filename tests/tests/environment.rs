//! What a step's process sees: pipeline env, step env, `-e` overrides, its working directory.

use hm_tests::Project;

#[test]
fn env_layers_pipeline_then_step_then_command_line() {
    let project = Project::new(
        r#"
[pipeline]
env = { FROM_PIPELINE = "pipeline", SHADOWED = "pipeline", OVERRIDDEN = "pipeline" }

[steps.show]
run = 'echo "p=$FROM_PIPELINE s=$SHADOWED o=$OVERRIDDEN c=$FROM_CLI"'
env = { SHADOWED = "step", OVERRIDDEN = "step" }

[steps.other]
run = 'echo "p=$FROM_PIPELINE s=$SHADOWED o=$OVERRIDDEN c=$FROM_CLI"'
"#,
    );
    let run = project.run(&["-e", "OVERRIDDEN=cli", "-e", "FROM_CLI=a=b c"]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(
        run.lines("show"),
        ["p=pipeline s=step o=cli c=a=b c"],
        "{run}"
    );
    assert_eq!(
        run.lines("other"),
        ["p=pipeline s=pipeline o=cli c=a=b c"],
        "{run}"
    );

    let run = project.run(&[]);
    assert_eq!(run.lines("show"), ["p=pipeline s=step o=step c="], "{run}");
}

#[test]
fn a_malformed_env_override_is_a_usage_error() {
    let project = Project::new("[steps.a]\nrun = \"touch a.ran\"\n");
    for bad in ["NOEQUALS", "=value", "1ABC=x", "A-B=x"] {
        let out = project.hm(&["run", "-e", bad]);
        assert_eq!(out.code(), 2, "-e {bad}: {}", out.stderr);
        assert!(!project.exists("a.ran"));
    }
}

#[test]
fn a_step_runs_in_its_dir_relative_to_hm_toml() {
    let project = Project::new(
        r#"
[steps.inside]
run = "pwd -P; ls"
dir = "sub/inner"

[steps.top]
run = "pwd -P"
"#,
    );
    project.write("sub/inner/here.txt", "");
    let expected_inner = project.path("sub/inner").display().to_string();
    let expected_top = project.root().display().to_string();
    // From the project root, and from a subdirectory (hm.toml is found in a parent, and paths
    // stay relative to it, not to where hm was started).
    for cwd in [project.root().to_path_buf(), project.path("sub")] {
        let run = project.run_in(&cwd, &[]);
        assert_eq!(run.code(), 0, "{run}");
        assert_eq!(
            run.lines("inside"),
            [expected_inner.as_str(), "here.txt"],
            "{run}"
        );
        assert_eq!(run.lines("top"), [expected_top.as_str()], "{run}");
    }
}

#[test]
fn steps_read_nothing_from_stdin() {
    // stdin is /dev/null: `cat` ends at once instead of waiting on hm's stdin.
    let project = Project::new("[steps.reader]\nrun = \"cat; echo done\"\n");
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(run.lines("reader"), ["done"], "{run}");
}

#[test]
fn steps_do_not_inherit_the_plugin_socket() {
    // A step holding the plugin's end of the socket could speak the protocol to hm.
    let project = Project::new(
        r#"
[steps.snoop]
run = 'echo "fd=${HM_IPC_FD:-none}"; for fd in /proc/$$/fd/*; do readlink "$fd" || true; done'
"#,
    );
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    let lines = run.lines("snoop");
    assert_eq!(lines.first().copied(), Some("fd=none"), "{run}");
    assert!(lines.len() >= 4, "the step listed its descriptors; {run}");
    assert!(
        !lines.iter().any(|l| l.starts_with("socket:")),
        "a socket leaked into the step: {lines:?}"
    );
}
