//! Scheduling through the real binary: DAG order, the parallelism bound, `STEP...` selection
//! and `--dry-run`.

use hm_tests::{Project, sh_wait_for_file};

/// The example's shape: `a` first, then `b` and `c`, then `d`. Each step also checks on disk that
/// what it needs has run, so the order is proven by the steps themselves as well as the events.
/// `d` comes first in the file: order follows `needs`, not the file.
fn diamond(extra: &str) -> String {
    format!(
        r#"
[steps.d]
run = "test -e b.done && test -e c.done && echo d"
needs = ["b", "c"]

[steps.a]
run = "{extra} echo a && touch a.done"

[steps.b]
run = "test -e a.done && {extra} echo b && touch b.done"
needs = ["a"]

[steps.c]
run = "test -e a.done && {extra} echo c && touch c.done"
needs = ["a"]
"#
    )
}

fn assert_diamond_order(run: &hm_tests::Run) {
    assert_eq!(run.code(), 0, "{run}");
    for step in ["a", "b", "c", "d"] {
        assert_eq!(run.status(step), "passed", "{run}");
        assert_eq!(run.lines(step), [step], "{run}");
    }
    let end_a = run.index_of("step_end", "a");
    assert!(
        run.index_of("step_start", "b") > end_a,
        "b starts only after a ended; {run}"
    );
    assert!(
        run.index_of("step_start", "c") > end_a,
        "c starts only after a ended; {run}"
    );
    let start_d = run.index_of("step_start", "d");
    assert!(
        start_d > run.index_of("step_end", "b"),
        "d starts only after b ended; {run}"
    );
    assert!(
        start_d > run.index_of("step_end", "c"),
        "d starts only after c ended; {run}"
    );
    run.assert_one_final_step_end_each();
}

#[test]
fn diamond_runs_each_step_after_everything_it_needs() {
    let project = Project::new(&diamond(""));
    let run = project.run(&[]);
    assert_diamond_order(&run);
}

#[test]
fn one_job_never_runs_two_steps_at_once() {
    // `mkdir` is atomic: a second step running at the same time would find the lock taken.
    let project = Project::new(&diamond("mkdir lock && rmdir lock &&"));
    let run = project.run(&["-j1"]);
    assert_diamond_order(&run);
    assert_eq!(run.of_kind("build_start")[0]["parallelism"], 1, "{run}");
    assert_eq!(run.max_concurrency(), 1, "{run}");
}

#[test]
fn two_jobs_run_independent_steps_at_the_same_time() {
    // `b` and `c` each wait (bounded) for the other to have started: both pass only if they
    // overlap, whatever the timing.
    let project = Project::new(&format!(
        r#"
[steps.a]
run = "true"

[steps.b]
run = '''touch b.started; {wait_c}; echo b saw c'''
needs = ["a"]

[steps.c]
run = '''touch c.started; {wait_b}; echo c saw b'''
needs = ["a"]

[steps.d]
run = "true"
needs = ["b", "c"]
"#,
        wait_c = sh_wait_for_file("c.started"),
        wait_b = sh_wait_for_file("b.started"),
    ));
    let run = project.run(&["-j2"]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(run.lines("b"), ["b saw c"], "{run}");
    assert_eq!(run.lines("c"), ["c saw b"], "{run}");
    assert_eq!(run.max_concurrency(), 2, "{run}");
    run.assert_one_final_step_end_each();
}

#[test]
fn parallelism_from_the_file_bounds_the_run_and_j_overrides_it() {
    let project = Project::new(
        r#"
[pipeline]
parallelism = 1

[steps.a]
run = "mkdir lock && rmdir lock"
[steps.b]
run = "mkdir lock && rmdir lock"
[steps.c]
run = "mkdir lock && rmdir lock"
"#,
    );
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(run.of_kind("build_start")[0]["parallelism"], 1, "{run}");
    assert_eq!(run.max_concurrency(), 1, "{run}");

    let run = project.run(&["-j3"]);
    assert_eq!(run.of_kind("build_start")[0]["parallelism"], 3, "{run}");
}

#[test]
fn named_steps_run_with_their_needs_and_nothing_else() {
    let project = Project::new(
        r#"
[steps.a]
run = "touch a.ran"
[steps.b]
run = "touch b.ran"
needs = ["a"]
[steps.c]
run = "touch c.ran"
[steps.e]
run = "touch e.ran"
needs = ["b"]
"#,
    );
    let run = project.run(&["b"]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(run.queued(), ["a", "b"], "{run}");
    assert_eq!(run.of_kind("build_start")[0]["steps"], 2, "{run}");
    assert!(project.exists("a.ran") && project.exists("b.ran"));
    assert!(!project.exists("c.ran"), "an unrelated step ran");
    assert!(
        !project.exists("e.ran"),
        "a step that needs the selection ran"
    );
    run.assert_one_final_step_end_each();
}

#[test]
fn an_unknown_step_name_is_a_usage_error() {
    let project = Project::new("[steps.build]\nrun = \"touch build.ran\"\n");
    let run = project.run(&["biuld"]);
    assert_eq!(run.code(), 2, "{run}");
    assert!(run.stderr().contains("biuld"), "{run}");
    assert!(
        run.stderr().contains("build"),
        "the message suggests the right name; {run}"
    );
    assert!(!project.exists("build.ran"));
}

#[test]
fn dry_run_prints_the_levels_and_starts_nothing() {
    let project = Project::new(
        r#"
[steps.a]
run = "touch a.ran"
[steps.b]
run = "touch b.ran"
needs = ["a"]
[steps.c]
run = "touch c.ran"
needs = ["a"]
timeout = "5m"
[steps.d]
run = "touch d.ran"
needs = ["b", "c"]
"#,
    );
    let out = project.hm(&["run", "--dry-run"]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    for step in ["a", "b", "c", "d"] {
        assert!(
            !project.exists(&format!("{step}.ran")),
            "--dry-run ran step {step}"
        );
    }
    // Which level each step is listed under.
    let mut level = None;
    let mut levels = Vec::new();
    for line in out.stdout.lines() {
        if let Some(n) = line
            .strip_prefix("level ")
            .and_then(|l| l.strip_suffix(':'))
        {
            level = Some(n.parse::<usize>().expect("a level number"));
        } else if let (Some(level), Some(step)) = (level, line.split_whitespace().next()) {
            if line.starts_with(' ') {
                levels.push((step.to_owned(), level));
            }
        }
    }
    let expected: Vec<(String, usize)> = [("a", 0), ("b", 1), ("c", 1), ("d", 2)]
        .iter()
        .map(|(s, l)| (s.to_string(), *l))
        .collect();
    assert_eq!(levels, expected, "dry-run plan:\n{}", out.stdout);
    assert!(
        out.stdout.contains("timeout 5m"),
        "the plan shows step settings:\n{}",
        out.stdout
    );
}
