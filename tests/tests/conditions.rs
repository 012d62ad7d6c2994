//! When steps run: `if = { changed, exists, env }` (against a real git repository with
//! commits, staged, unstaged and untracked changes), optional needs, and `when = "always" |
//! "on_failure" | "manual"`, through `hm`.

use std::path::Path;
use std::process::Command;

use hm_tests::{Project, Run};

/// Runs git in `dir` with a fixed identity, and fails the test if git fails.
fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "hm tests")
        .env("GIT_AUTHOR_EMAIL", "tests@hm.invalid")
        .env("GIT_COMMITTER_NAME", "hm tests")
        .env("GIT_COMMITTER_EMAIL", "tests@hm.invalid")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .output()
        .expect("git runs (install git)");
    assert!(
        out.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

const CHANGED: &str = r#"
[steps.lint]
run = "echo linting"
if = { changed = ["src/**"] }

[steps.after-lint]
run = "echo after lint"
needs = ["lint"]

[steps.maybe-after-lint]
run = "echo maybe after lint"
needs = [{ step = "lint", optional = true }]
"#;

/// A repository on `main` with one commit holding `src/lib.rs`, `README.md` and `hm.toml`,
/// then a branch `feature` with nothing changed yet.
fn repository() -> Project {
    let project = Project::new(CHANGED);
    project.write("src/lib.rs", "pub fn f() {}\n");
    project.write("README.md", "hello\n");
    project.write(".gitignore", "ignored/\n");
    let root = project.root();
    git(root, &["init", "-q", "-b", "main"]);
    git(root, &["add", "-A"]);
    git(root, &["commit", "-q", "-m", "start"]);
    git(root, &["checkout", "-q", "-b", "feature"]);
    project
}

fn ran(run: &Run, step: &str) -> bool {
    run.status(step) == "passed"
}

#[test]
fn changed_runs_only_when_a_matching_file_changed_in_any_way() {
    let project = repository();
    let root = project.root().to_path_buf();

    // Nothing changed since the merge base with main: lint and what needs it are skipped,
    // except the step that needs it optionally.
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    let end = run.step_end("lint");
    assert_eq!(
        (end["status"].as_str(), end["cause"].as_str()),
        (Some("skipped"), Some("condition")),
        "{run}"
    );
    let message = end["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("no file matching `src/**` changed since main (merge base"),
        "{run}"
    );
    assert_eq!(run.cause("after-lint"), Some("condition"), "{run}");
    assert!(ran(&run, "maybe-after-lint"), "{run}");

    // A change outside `src/`, and an ignored file inside it, change nothing.
    project.write("README.md", "changed\n");
    project.write("src/ignored/x.rs", "");
    std::fs::write(root.join(".gitignore"), "ignored/\nsrc/ignored/\n").expect("write");
    let run = project.run(&[]);
    assert_eq!(run.cause("lint"), Some("condition"), "{run}");

    // Each kind of change to a matching file makes it run: untracked, unstaged, staged,
    // committed.
    project.write("src/new.rs", "");
    assert!(ran(&project.run(&[]), "lint"), "an untracked file");
    git(&root, &["add", "src/new.rs"]);
    assert!(ran(&project.run(&[]), "lint"), "a staged file");
    git(&root, &["commit", "-q", "-m", "new file"]);
    let run = project.run(&[]);
    assert!(ran(&run, "lint"), "a committed file; {run}");
    assert!(ran(&run, "after-lint"), "{run}");
    git(&root, &["checkout", "-q", "main"]);
    git(&root, &["merge", "-q", "--ff-only", "feature"]);
    assert_eq!(
        project.run(&[]).cause("lint"),
        Some("condition"),
        "merged: nothing new on main"
    );
    project.write("src/lib.rs", "pub fn g() {}\n");
    assert!(ran(&project.run(&[]), "lint"), "an unstaged change");
    git(&root, &["checkout", "-q", "--", "src/lib.rs"]);
    std::fs::remove_file(root.join("src/lib.rs")).expect("remove");
    assert!(ran(&project.run(&[]), "lint"), "a deleted file");
    git(&root, &["checkout", "-q", "--", "src/lib.rs"]);

    // --since and HM_SINCE choose the base; a name git does not know is a usage error.
    let first = git(&root, &["rev-list", "--max-parents=0", "HEAD"]);
    assert!(
        ran(&project.run(&["--since", &first]), "lint"),
        "src/new.rs since the first commit"
    );
    assert_eq!(
        project.run(&["--since", "HEAD"]).cause("lint"),
        Some("condition")
    );
    let out = project
        .command(&["run", "--format", "json"])
        .env("HM_SINCE", &first)
        .output()
        .expect("hm runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(r#""step":"lint","attempt":1,"status":"passed""#),
        "{stdout}"
    );
    let out = project.hm(&["run", "--since", "no-such-branch"]);
    assert_eq!(out.code(), 2, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("error: --since `no-such-branch` is not a commit of the repository"),
        "{}",
        out.stderr
    );
}

#[test]
fn outside_git_every_file_counts_as_changed() {
    let project = Project::new(CHANGED);
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(ran(&run, "lint") && ran(&run, "after-lint"), "{run}");
}

#[test]
fn exists_and_env_conditions_look_at_the_project_and_the_environment() {
    let project = Project::new(
        r#"
[steps.rust]
run = "echo rust project"
if = { exists = ["Cargo.toml"] }

[steps.python]
run = "echo python project"
if = { exists = ["**/*.py"] }

[steps.built]
run = "echo found the build"
if = { exists = ["target/*/hm"] }
needs = ["make"]

[steps.make]
run = "mkdir -p target/debug && touch target/debug/hm"

[steps.main-only]
run = "echo on main"
if = { env = { BRANCH = ["main", "release"] } }
"#,
    );
    project.write("Cargo.toml", "");
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(ran(&run, "rust"), "{run}");
    assert_eq!(run.cause("python"), Some("condition"), "{run}");
    assert!(
        ran(&run, "built"),
        "exists is looked at when the step is about to start; {run}"
    );
    let end = run.step_end("main-only");
    assert_eq!(end["cause"], "condition", "{run}");
    assert!(
        end["message"]
            .as_str()
            .unwrap_or_default()
            .contains("`BRANCH` is not set (the condition wants `main` or `release`)"),
        "{run}"
    );
    assert!(ran(&project.run(&["-e", "BRANCH=release"]), "main-only"));
    let out = project
        .command(&["run", "--format", "json", "main-only"])
        .env("BRANCH", "main")
        .output()
        .expect("hm runs");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(r#""status":"passed""#),
        "hm's own environment counts"
    );
    project.write("lib/deep/x.py", "");
    assert!(ran(&project.run(&[]), "python"));
}

const WHEN: &str = r#"
[steps.build]
run = "echo building; exit ${BUILD_EXIT:-0}"

[steps.test]
run = "echo testing"
needs = ["build"]

[steps.slow]
run = "sleep 0.3; echo slow done"

[steps.cleanup]
run = "echo cleaning up"
needs = ["test", "slow"]
when = "always"

[steps.report-failure]
run = "echo reporting the failure"
needs = ["test"]
when = "on_failure"

[steps.deploy]
run = "echo deploying"
needs = ["test"]
when = "manual"

[steps.announce]
run = "echo announcing"
needs = ["deploy"]
"#;

#[test]
fn always_and_on_failure_run_after_a_failure_even_under_fail_fast() {
    let project = Project::new(WHEN);
    let run = project.run(&["-e", "BUILD_EXIT=1"]);
    assert_eq!(run.code(), 1, "{run}");
    assert_eq!(run.status("build"), "failed", "{run}");
    assert_eq!(run.cause("test"), Some("dependency_failed"), "{run}");
    assert_eq!(run.lines("cleanup"), ["cleaning up"], "{run}");
    assert_eq!(
        run.lines("report-failure"),
        ["reporting the failure"],
        "{run}"
    );
    // Fail fast stopped `slow`; `cleanup` waited for it to end.
    assert!(
        run.index_of("step_end", "slow") < run.index_of("step_start", "cleanup"),
        "{run}"
    );
    assert_eq!(run.cause("deploy"), Some("manual"), "{run}");

    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    assert!(ran(&run, "cleanup"), "{run}");
    let end = run.step_end("report-failure");
    assert_eq!(
        (end["status"].as_str(), end["cause"].as_str()),
        (Some("skipped"), Some("condition")),
        "{run}"
    );
}

#[test]
fn a_manual_step_runs_only_when_named() {
    let project = Project::new(WHEN);
    let run = project.run(&[]);
    assert_eq!(run.cause("deploy"), Some("manual"), "{run}");
    assert_eq!(
        run.cause("announce"),
        Some("manual"),
        "its dependents are skipped too; {run}"
    );
    // Needed by a named step is not named.
    let run = project.run(&["announce"]);
    assert_eq!(run.cause("deploy"), Some("manual"), "{run}");
    assert_eq!(run.cause("announce"), Some("manual"), "{run}");
    let run = project.run(&["deploy", "announce"]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(run.lines("deploy"), ["deploying"], "{run}");
    assert_eq!(run.lines("announce"), ["announcing"], "{run}");
    assert!(ran(&run, "test"), "what it needs runs; {run}");

    let out = project.hm(&["run"]);
    assert!(
        out.stderr
            .contains("[deploy] skipped: a manual step runs only when named: `hm run 'deploy'`"),
        "{}",
        out.stderr
    );
}
