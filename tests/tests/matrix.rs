//! `matrix` through `hm`: the instances a matrix makes (axes, `exclude`, `include`), what each
//! sees (`${{ matrix.KEY }}`, the key as an upper-cased variable, `${{ env.NAME }}`), how
//! `needs` pairs the instances of two matrix steps, and selecting instances on the command line.

use std::collections::BTreeSet;

use hm_tests::Project;

/// 2×3 axes, one combination excluded, one added: six instances. `build` shares `rust` with
/// `test`, so each `test` instance needs only the `build` instance with its `rust`.
const PIPELINE: &str = r#"
[pipeline]
env = { GREETING = "hi" }

[steps.build]
run = "echo built $RUST > built-${{ matrix.rust }}.txt"
matrix = { rust = ["stable", "1.85", "nightly"] }

[steps.test]
run = 'echo "${{ env.GREETING }} rust=${{ matrix.rust }} target=${{ matrix.target }} RUST=$RUST TARGET=$TARGET from=$(cat built-$RUST.txt)"'
needs = ["build"]

[steps.test.matrix]
rust = ["stable", "1.85"]
target = ["x86_64", "aarch64", "riscv64"]
exclude = [{ rust = "1.85", target = "riscv64" }]
include = [{ rust = "nightly", target = "x86_64" }]

[steps.report]
run = "echo all tested"
needs = ["test"]
"#;

fn instances(run: &hm_tests::Run, prefix: &str) -> BTreeSet<String> {
    run.queued()
        .into_iter()
        .filter(|name| name.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_matrix_runs_exactly_its_instances_with_their_values() {
    let project = Project::new(PIPELINE);
    let run = project.run(&["-j1"]);
    assert_eq!(run.code(), 0, "{run}");
    let expected: BTreeSet<String> = [
        "test[rust=stable,target=x86_64]",
        "test[rust=stable,target=aarch64]",
        "test[rust=stable,target=riscv64]",
        "test[rust=1.85,target=x86_64]",
        "test[rust=1.85,target=aarch64]",
        "test[rust=nightly,target=x86_64]",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(instances(&run, "test["), expected, "{run}");
    for name in &expected {
        let end = run.step_end(name);
        assert_eq!(end["status"], "passed", "{name}; {run}");
        let matrix = &end["matrix"];
        let (rust, target) = (
            matrix["rust"].as_str().unwrap_or_default(),
            matrix["target"].as_str().unwrap_or_default(),
        );
        assert_eq!(
            format!("test[rust={rust},target={target}]"),
            *name,
            "step_end.matrix holds the instance's values in order; {run}"
        );
        assert_eq!(
            run.lines(name),
            [format!(
                "hi rust={rust} target={target} RUST={rust} TARGET={target} from=built {rust}"
            )],
            "{run}"
        );
    }
    assert!(run.step_end("report")["matrix"].is_null(), "{run}");
    assert_eq!(run.lines("report"), ["all tested"], "{run}");
}

#[test]
fn instances_that_share_a_key_are_paired_and_others_wait_for_every_instance() {
    // The nightly build fails: only the test instance with rust=nightly needs it.
    let project = Project::new(&PIPELINE.replace(
        "run = \"echo built $RUST > built-${{ matrix.rust }}.txt\"",
        "run = \"test $RUST != nightly; echo built $RUST > built-${{ matrix.rust }}.txt\"",
    ));
    let run = project.run(&["-k"]);
    assert_eq!(run.code(), 1, "{run}");
    assert_eq!(run.status("build[rust=nightly]"), "failed", "{run}");
    for name in instances(&run, "test[") {
        let expected = if name.contains("rust=nightly") {
            ("skipped", Some("dependency_failed"))
        } else {
            ("passed", None)
        };
        assert_eq!(
            (run.status(&name), run.cause(&name)),
            expected,
            "{name}; {run}"
        );
    }
    // `report` has no matrix: it needs every test instance, so one skipped is enough.
    assert_eq!(run.cause("report"), Some("dependency_failed"), "{run}");

    let project = Project::new(PIPELINE);
    let run = project.run(&[]);
    let report = run.index_of("step_start", "report");
    for name in instances(&run, "test[") {
        assert!(run.index_of("step_end", &name) < report, "{name}; {run}");
    }
}

#[test]
fn selecting_instances_runs_them_and_only_what_they_need() {
    let project = Project::new(PIPELINE);
    let run = project.run(&["test[rust=stable]"]);
    assert_eq!(run.code(), 0, "{run}");
    let queued: BTreeSet<&str> = run.queued().into_iter().collect();
    assert_eq!(
        queued,
        BTreeSet::from([
            "build[rust=stable]",
            "test[rust=stable,target=x86_64]",
            "test[rust=stable,target=aarch64]",
            "test[rust=stable,target=riscv64]",
        ]),
        "{run}"
    );

    // A whole instance name, several filters, and the step's name for all of them.
    let run = project.run(&["test[rust=1.85,target=aarch64]", "build[rust=nightly]"]);
    let queued: BTreeSet<&str> = run.queued().into_iter().collect();
    assert_eq!(
        queued,
        BTreeSet::from([
            "build[rust=1.85]",
            "build[rust=nightly]",
            "test[rust=1.85,target=aarch64]"
        ]),
        "{run}"
    );
    let run = project.run(&["build"]);
    assert_eq!(instances(&run, "").len(), 3, "{run}");

    // What matches nothing is a usage error that lists the instances.
    for (selector, words) in [
        ("test[rust=beta]", "none has those values"),
        ("test[os=linux]", "`os` is not one of its matrix keys"),
        ("report[rust=stable]", "it has no matrix"),
    ] {
        let out = project.hm(&["run", selector]);
        assert_eq!(out.code(), 2, "{selector}: {}", out.stderr);
        assert!(
            out.stderr.contains(words) && out.stderr.contains("its instances:"),
            "{selector}: {}",
            out.stderr
        );
    }
    let out = project.hm(&["run", "tset[rust=stable]"]);
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(
        out.stderr.contains("unknown step `tset[rust=stable]`"),
        "{}",
        out.stderr
    );
}

#[test]
fn dry_run_and_summary_show_instances() {
    let project = Project::new(PIPELINE);
    let out = project.hm(&["run", "--dry-run", "test[target=riscv64]"]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(
        out.stdout.contains(
            "test[rust=stable,target=riscv64]  (executor shell, needs build[rust=stable])"
        ),
        "{}",
        out.stdout
    );
    let out = project.hm(&["run", "test[target=riscv64]"]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    let summary_row = out
        .stderr
        .lines()
        .find(|l| l.starts_with("test[rust=stable,target=riscv64]"))
        .unwrap_or_default();
    assert!(summary_row.contains("passed"), "{}", out.stderr);
}

#[test]
fn an_expression_is_rendered_once_so_a_value_is_never_read_as_one() {
    let project = Project::new(
        r#"
[steps.echo]
run = "printf '%s|%s\n' '${{ matrix.v }}' '$${{ matrix.v }}'"
matrix = { v = ["$${{ env.HOME }}", "plain"] }
"#,
    );
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    let mut lines: Vec<String> = run
        .of_kind("step_log")
        .into_iter()
        .filter_map(|e| e["line"].as_str().map(str::to_owned))
        .collect();
    lines.sort();
    // A matrix value goes in as it is written, and is not read again; an escaped `$${{` in
    // `run` is a literal `${{`.
    assert_eq!(
        lines,
        ["$${{ env.HOME }}|${{ matrix.v }}", "plain|${{ matrix.v }}"],
        "{run}"
    );
}
