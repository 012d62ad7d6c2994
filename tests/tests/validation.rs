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

/// Every invalid form of a step key, one step each: (the step's lines, where in them the
/// error points, what the message says, what the hint says). A step without `run` gets
/// `run = "true"`. All are reported in one `hm validate`.
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
    // matrix
    (
        "matrix = []",
        "[]",
        "`matrix` in [steps.",
        "[steps.NAME.matrix]",
    ),
    ("matrix = {}", "{}", "has no axes", "rust = [\"stable\""),
    (
        "matrix = { rust = [] }",
        "[]",
        "is empty, so the step would never run",
        "",
    ),
    (
        r#"matrix = { rust = "stable" }"#,
        r#""stable""#,
        "must be an array of values",
        r#"write `rust = ["a", "b"]`"#,
    ),
    (
        r#"matrix = { rust = ["a", "a"] }"#,
        r#""a"]"#,
        "lists `a` twice",
        "",
    ),
    (
        "matrix = { rust = [[1]] }",
        "[1]",
        "must hold strings, numbers or booleans",
        "",
    ),
    (
        r#"matrix = { rust = ["a,b"] }"#,
        r#""a,b""#,
        "which cannot name an instance",
        "`step[key=value]`",
    ),
    (
        r#"matrix = { my-axis = ["a"] }"#,
        "my-axis",
        "invalid matrix key `my-axis`",
        "upper-cased",
    ),
    (
        r#"matrix = { path = ["a"] }"#,
        "path",
        "would set `PATH`, which the step needs",
        "rename the key",
    ),
    (
        r#"matrix = { hm_step = ["a"] }"#,
        "hm_step",
        "would set `HM_STEP`",
        "",
    ),
    (
        r#"matrix = { rust = ["a"], exclude = [{ rust = "b" }] }"#,
        r#"{ rust = "b" }"#,
        "has `rust = b`, which is not a value of `rust`",
        "did you mean `a`?",
    ),
    (
        r#"matrix = { rust = ["a"], exclude = [{ os = "x" }] }"#,
        r#"{ os = "x" }"#,
        "names `os`, which is not an axis",
        "the axes are `rust`",
    ),
    (
        r#"matrix = { rust = ["a"], exclude = [{ rust = "a" }] }"#,
        "{ rust = [",
        "excludes every combination",
        "",
    ),
    ("matrix = { include = [{}] }", "{}]", "has an empty row", ""),
    (
        r#"matrix = { rust = ["a"], include = "x" }"#,
        r#""x""#,
        "must be an array of tables",
        "",
    ),
    (
        "matrix = { include = [{ a = 1 }, { a = 1 }] }",
        "{ include",
        "makes instance `s29[a=1]` twice",
        "remove or change one",
    ),
    (
        "matrix = { a = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17], b = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16] }",
        "{ a = [",
        "makes 272 instances, more than 256",
        "split the step",
    ),
    (r#"matrix = { rust = ["a"] }"#, "", "", ""),
    // expressions
    (
        r#"run = "${{ matix.rust }}""#,
        "${{ matix",
        "unknown expression `matix.rust` in `run` in [steps.",
        "did you mean `matrix.`",
    ),
    (
        r#"run = "echo ${{ matrix.rust""#,
        "${{ matrix",
        "`${{` is not closed with `}}`",
        "`$${{` for a literal",
    ),
    (
        r#"run = "${{ matrix.rust }}""#,
        "${{ matrix",
        "uses `matrix.rust`, but step `s34` has no matrix",
        "",
    ),
    (
        "run = \"${{ matrix.rsut }}\"\nmatrix = { rust = [\"a\"] }",
        "${{ matrix",
        "uses `matrix.rsut`, which is not a key of the step's matrix",
        "did you mean `matrix.rust`?",
    ),
    (
        r#"image = "rust:${{ matrix.rust }}""#,
        "${{ matrix",
        "`image` in [steps.s36] uses `matrix.rust`, but step `s36` has no matrix",
        "",
    ),
    (
        r#"run = "${{ env.NOPE }}""#,
        "${{ env",
        "uses `env.NOPE`, which neither the pipeline's nor the step's `env` sets",
        "[pipeline].env",
    ),
    (
        r#"env = { A = "${{ env.B }}" }"#,
        "${{ env",
        "an `env` value cannot refer to `env`",
        "`$NAME` in `run`",
    ),
    (
        r#"run = "${{ steps.nothere.outputs.x }}""#,
        "${{ steps",
        "there is no step `nothere`",
        "",
    ),
    (
        r#"run = "${{ steps.s0.outputs.x }}""#,
        "${{ steps",
        "but step `s40` does not need `s0`",
        "add `s0` to its `needs`",
    ),
    (
        r#"run = "${{ steps.s0.outputz.x }}""#,
        "${{ steps",
        "is not a step output",
        "steps.STEP.outputs.KEY",
    ),
    (
        r#"with = { x = "${{ nope }}" }"#,
        "${{ nope",
        "unknown expression `nope` in `with` in [steps.",
        "",
    ),
    (
        "dir = \"${{ matrix.d }}\"\nmatrix = { d = [\"a\", \"..\"] }",
        "\"${{",
        "leaves the pipeline's directory: `..` (for `s43[d=..]`)",
        "relative to the directory",
    ), // conditions
    (
        r#"if = "x""#,
        r#""x""#,
        "`if` in [steps.s44] must be a table",
        "changed = [\"src/**\"]",
    ),
    (
        "if = {}",
        "{}",
        "`if` in [steps.s45] is empty, so it says nothing",
        "",
    ),
    (
        r#"if = { chnged = ["a"] }"#,
        "chnged",
        "unknown key `chnged` in [steps.s46.if]",
        "did you mean `changed`?",
    ),
    (
        r#"if = { changed = "src/**" }"#,
        r#""src/**""#,
        "must be an array of globs",
        r#"write `changed = ["src/**"]`"#,
    ),
    (
        "if = { changed = [] }",
        "[]",
        "is empty, so it could never hold",
        "",
    ),
    (
        r#"if = { changed = ["/abs"] }"#,
        r#""/abs""#,
        "`/abs` in `changed` in [steps.s49.if] must be relative",
        "relative to the directory",
    ),
    (
        r#"if = { exists = ["../up"] }"#,
        r#""../up""#,
        "`../up` in `exists` in [steps.s50.if] leaves the pipeline's directory",
        "",
    ),
    (
        r#"if = { changed = ["src/[x"] }"#,
        r#""src/[x""#,
        "is not a valid glob",
        "",
    ),
    (
        "if = { changed = [1] }",
        "1]",
        "must list globs as strings, found an integer `1`",
        "",
    ),
    (
        "if = { env = { B = 1 } }",
        "1 }",
        "must be a string or a non-empty array of strings",
        r#"`B = ["main", "release"]`"#,
    ),
    (
        "if = { env = {} }",
        "{} }",
        "`env` in [steps.s54.if] is empty",
        "",
    ),
    (
        r#"when = "allways""#,
        r#""allways""#,
        "`when` in [steps.s55] must be one of `on_success`, `always`, `on_failure` or `manual`",
        "did you mean `always`?",
    ),
    (
        "when = 1",
        "1",
        "`when` in [steps.s56] must be a string",
        "",
    ),
    (
        r#"needs = [{ step = "s0", optionl = true }]"#,
        "optionl",
        "unknown key `optionl` in [steps.s57.needs]",
        "did you mean `optional`?",
    ),
    (
        "needs = [{ optional = true }]",
        "{ optional",
        "needs `step`",
        "optional = true }",
    ),
    (
        r#"needs = [{ step = "s0", optional = "yes" }]"#,
        r#""yes""#,
        "must be true or false",
        "",
    ),
    (
        r#"needs = [{ step = "nope" }]"#,
        r#""nope""#,
        "step `s60` needs unknown step `nope`",
        "",
    ), // reuse
    (
        r#"extends = "base""#,
        r#""base""#,
        "`extends` in [steps.s61] must be an array of template names",
        r#"write `extends = ["base"]`"#,
    ),
    (
        "extends = [1]",
        "1]",
        "must list template names as strings, found an integer `1`",
        "",
    ),
    (
        "matrix = { a = [1], include = [{ a = 2, x = 1 }, { a = 2, x = 2 }] }",
        "{ a = [",
        "makes instance `s63[a=2]` twice",
        "remove or change one",
    ),
    (
        r#"extends = ["nope"]"#,
        r#""nope""#,
        "step `s64` extends unknown template `nope`",
        "define it: `[templates.nope]`",
    ),
    (
        r#"artifacts = "dist/**""#,
        r#""dist/**""#,
        "`artifacts` in [steps.s",
        r#"write `artifacts = ["dist/**"]`"#,
    ),
    (
        r#"artifacts = ["/etc/passwd"]"#,
        r#""/etc/passwd""#,
        "glob `/etc/passwd` is absolute",
        "relative to the directory that holds hm.toml",
    ),
    (
        r#"inputs = ["../x/**"]"#,
        r#""../x/**""#,
        "glob `../x/**` climbs out of the project",
        "",
    ),
    (
        r#"inputs = "src""#,
        r#""src""#,
        "`inputs` in [steps.s",
        r#"write `inputs = ["src"]`"#,
    ),
    (
        r#"cache = [{ key = [], paths = ["/c"] }]"#,
        "[]",
        "`key` in `cache` in [steps.s",
        "write `cache = [{ key = ",
    ),
    (
        r#"cache = [{ key = ["Cargo.lock"] }]"#,
        "{ key",
        "has no `paths`",
        "write `cache = [{ key",
    ),
];

#[test]
fn every_invalid_form_of_a_step_key_is_a_positioned_error() {
    let mut toml = String::from(
        "[pipeline]\nenv = { P = \"${{ matrix.x }}\" }\n[defaults]\nshell = \"fish\"\n",
    );
    let mut expected = vec![
        (
            2,
            14,
            "[pipeline].env cannot use `matrix.x`: expressions belong to steps",
            "move the variable to the step's `env`",
        ),
        (
            4,
            9,
            "`shell` in [defaults] names an unknown shell `fish`",
            r#"Give another program with its arguments: `shell = ["fish", "-c"]`"#,
        ),
    ];
    for (i, (lines, anchor, message, hint)) in INVALID_FORMS.iter().enumerate() {
        toml.push_str(&format!("[steps.s{i}]\n"));
        if !lines.starts_with("run =") {
            toml.push_str("run = \"true\"\n");
        }
        let first_line = toml.lines().count() + 1;
        toml.push_str(lines);
        toml.push('\n');
        if message.is_empty() {
            continue; // a valid step that others refer to
        }
        let at = lines
            .find(anchor)
            .unwrap_or_else(|| panic!("{anchor} in {lines}"));
        let line = first_line + lines[..at].matches('\n').count();
        let column = at - lines[..at].rfind('\n').map_or(0, |n| n + 1) + 1;
        expected.push((line, column, message, hint));
    }
    let project = Project::new(&toml);
    let out = project.hm(&["validate"]);
    assert_eq!(out.code(), 2, "{}", out.stderr);
    let lines: Vec<&str> = out.stderr.lines().collect();
    let mut missing = Vec::new();
    for (line, column, message, hint) in &expected {
        let position = format!("hm.toml:{line}:{column}: error: ");
        let Some(at) = lines
            .iter()
            .position(|l| l.contains(&position) && l.contains(message))
        else {
            missing.push(format!("{position}...{message}"));
            continue;
        };
        if !hint.is_empty() {
            let next = lines.get(at + 1).copied().unwrap_or_default();
            if !(next.starts_with("  hint: ") && next.contains(hint)) {
                missing.push(format!("{position}{message} with hint {hint:?}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "missing:\n{}\nin:\n{}",
        missing.join("\n"),
        out.stderr
    );
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

/// The first block of `lang` after `heading` in a document of the repository.
fn block_after(doc: &str, heading: &str, lang: &str) -> String {
    let text = std::fs::read_to_string(hm_tests::repo_root().join(doc)).expect("the document");
    let section = &text[text
        .find(heading)
        .unwrap_or_else(|| panic!("{heading} in {doc}"))..];
    let fence = format!("```{lang}\n");
    let body = &section[section.find(&fence).expect("a code block") + fence.len()..];
    body[..body.find("```").expect("the end of the block")].to_owned()
}

#[test]
fn the_complete_example_of_the_pipeline_docs_means_what_its_plan_says() {
    let toml = block_after("docs/pipeline.md", "## A complete example", "toml");
    let plan = block_after(
        "docs/pipeline.md",
        "`hm run --dry-run` shows what hm makes",
        "text",
    );
    let project = Project::new(&toml);
    let out = project.hm(&["run", "--dry-run"]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert_eq!(out.stdout, plan);
}

#[test]
fn the_services_example_of_the_pipeline_docs_is_valid_and_its_plan_shows_the_service() {
    let toml = block_after("docs/pipeline.md", "## Services", "toml");
    let project = Project::new(&toml);
    let out = project.hm(&["run", "--dry-run"]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("  test  (executor docker, image rust:1, services pg)\n"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("service pg  (image postgres:16, on docker)\n"),
        "{}",
        out.stdout
    );
}
