//! Reuse through `hm`: `[templates.NAME]` and `extends` chains stacked over `[defaults]`, and
//! `include` of other files, with problems placed in the file they are in.

use hm_tests::Project;

/// `[defaults]` < `base` < `rust` (which extends `base`) < `fast` < the step's own keys.
const LAYERED: &str = r#"
include = ["ci/templates.toml"]

[defaults]
env = { LEVEL = "defaults", FROM_DEFAULTS = "d" }
shell = ["sh", "-c"]
timeout = "10m"

[templates.rust]
extends = ["base"]
env = { LEVEL = "rust", FROM_RUST = "r" }
limits = { memory = "1GiB" }
with = { b = "from rust" }

[templates.fast]
timeout = "1m"

[steps.test]
extends = ["rust", "fast"]
env = { LEVEL = "step" }
run = 'echo "$LEVEL $FROM_BASE $FROM_RUST $FROM_DEFAULTS"; false; echo "no -e: the shell came from defaults"'

[steps.inherited]
extends = ["rust"]
"#;

const TEMPLATES: &str = r#"
[templates.base]
env = { LEVEL = "base", FROM_BASE = "b" }
limits = { memory = "64MiB", pids = 64 }
with = { a = "from base", b = "from base" }
run = "echo run from base: $LEVEL"
dir = "work"

[steps.shared]
run = "pwd -P"
dir = "work"
"#;

fn layered() -> Project {
    let project = Project::new(LAYERED);
    project.write("ci/templates.toml", TEMPLATES);
    project.write("work/.keep", "");
    project
}

#[test]
fn extends_stacks_templates_over_defaults_and_under_the_step() {
    let project = layered();
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    // env merges key by key; `shell` came from [defaults] (no -e); `run` from the step.
    assert_eq!(
        run.lines("test"),
        ["step b r d", "no -e: the shell came from defaults"],
        "{run}"
    );
    // A step with no `run` of its own takes its template's, and its `dir`.
    assert_eq!(run.lines("inherited"), ["run from base: rust"], "{run}");

    let out = project.hm(&["run", "--dry-run"]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    // limits merge field by field (memory from `rust`, pids from `base`); `timeout` is
    // replaced as a whole by the last layer that sets it.
    assert!(
        out.stdout
            .contains("  test  (executor shell, memory 1 GiB, pids 64, timeout 1m)"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("  inherited  (executor shell, memory 1 GiB, pids 64, timeout 10m)"),
        "{}",
        out.stdout
    );
}

#[test]
fn included_steps_run_with_paths_relative_to_the_project() {
    let project = layered();
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    // The included file is in ci/, but its `dir` is the project's `work/`.
    let work = project.path("work").display().to_string();
    assert_eq!(run.lines("shared"), [work.as_str()], "{run}");
    // Included steps come first, as if the include stood at the top of the file.
    assert_eq!(run.queued(), ["shared", "test", "inherited"], "{run}");
}

#[test]
fn nested_includes_are_relative_to_the_file_that_names_them() {
    let project = Project::new("include = [\"ci/a.toml\"]\n[steps.main]\nrun = \"echo main\"\n");
    project.write(
        "ci/a.toml",
        "include = [\"more/b.toml\"]\n[steps.a]\nrun = \"echo a\"\n",
    );
    project.write("ci/more/b.toml", "[steps.b]\nrun = \"echo b\"\n");
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(run.queued(), ["b", "a", "main"], "{run}");
}

#[test]
fn problems_in_included_files_are_placed_in_them() {
    let project = Project::new(
        r#"include = ["ci/common.toml", "ci/missing.toml", "ci/broken.toml"]

[steps.test]
run = "echo main"

[steps.uses]
extends = ["bsae"]
"#,
    );
    project.write(
        "ci/common.toml",
        r#"[templates.base]
timeout = "forever"

[steps.test]
run = "echo included"

[pipeline]
name = "not here"
"#,
    );
    project.write("ci/broken.toml", "[steps.x\nrun = 1\n");
    let out = project.hm(&["validate"]);
    assert_eq!(out.code(), 2, "{}", out.stderr);
    for (position, words) in [
        ("ci/common.toml:2:11:", "`timeout` in [templates.base]"),
        (
            "ci/common.toml:7:2:",
            "`pipeline` cannot be in an included file",
        ),
        (
            "hm.toml:3:8:",
            "step `test` is defined twice: here and at ci/common.toml:4:1",
        ),
        (
            "hm.toml:1:30:",
            "cannot read included file `ci/missing.toml`",
        ),
        ("ci/broken.toml:1:9:", "invalid TOML"),
        (
            "hm.toml:7:12:",
            "step `uses` extends unknown template `bsae`",
        ),
    ] {
        assert!(
            out.stderr
                .lines()
                .any(|l| l.starts_with(position) && l.contains(words)),
            "no {position} {words:?} in:\n{}",
            out.stderr
        );
    }
    assert!(
        out.stderr.contains("hint: did you mean `base`?"),
        "{}",
        out.stderr
    );

    let project = Project::new("include = [\"hm.toml\"]\n[steps.a]\nrun = \"x\"\n");
    let out = project.hm(&["validate"]);
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("hm.toml:1:12: error: including `hm.toml` here makes a cycle"),
        "{}",
        out.stderr
    );
}
