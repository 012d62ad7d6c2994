//! The worked example in `examples/python/` runs green through `hm`, as the README says, on a
//! copy (so the repository stays clean): a matrix, a `changed` condition, a template from an
//! included file, and a cleanup that always runs.

use std::path::Path;
use std::process::Command;

use hm_tests::{Project, repo_root};

/// `examples/python` copied into a fresh project directory.
fn copy_of_the_example() -> Project {
    let project = Project::empty();
    copy_dir(&repo_root().join("examples/python"), project.root());
    project
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create directory");
    for entry in std::fs::read_dir(from).expect("read the example") {
        let entry = entry.expect("directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a file");
        }
    }
}

const INSTANCES: [&str; 2] = [
    "test[python=python3,mode=release]",
    "test[python=python3,mode=dev]",
];

#[test]
fn the_worked_example_runs_green() {
    let project = copy_of_the_example();
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    let mut expected = vec!["lint"];
    expected.extend(INSTANCES);
    expected.extend(["package", "smoke", "cleanup"]);
    assert_eq!(run.queued(), expected, "{run}");
    for step in expected {
        assert_eq!(run.status(step), "passed", "{step}; {run}");
    }
    assert!(
        run.lines(INSTANCES[1])
            .iter()
            .any(|l| l.starts_with("Ran 4 tests")),
        "{run}"
    );
    assert_eq!(
        run.step_end(INSTANCES[1])["matrix"]["flags"],
        "-X dev -W error",
        "{run}"
    );
    assert_eq!(run.lines("smoke"), ["Hello, hm!"], "{run}");
    assert!(
        !project.exists("out"),
        "cleanup removed the build output; {run}"
    );
    for left in ["src/greet/__pycache__", "tests/__pycache__"] {
        assert!(
            !project.exists(left),
            "the example writes nothing next to the sources: {left}"
        );
    }
}

#[test]
fn in_a_repository_with_nothing_changed_lint_is_skipped_and_the_rest_still_runs() {
    let project = copy_of_the_example();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(project.root())
            .env("GIT_AUTHOR_NAME", "hm tests")
            .env("GIT_AUTHOR_EMAIL", "tests@hm.invalid")
            .env("GIT_COMMITTER_NAME", "hm tests")
            .env("GIT_COMMITTER_EMAIL", "tests@hm.invalid")
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "example"]);
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(run.cause("lint"), Some("condition"), "{run}");
    for step in INSTANCES.iter().chain(&["package", "smoke", "cleanup"]) {
        assert_eq!(run.status(step), "passed", "{step}; {run}");
    }
    // One instance by its mode, and what it needs.
    let run = project.run(&["test[mode=dev]"]);
    assert_eq!(run.queued(), ["lint", INSTANCES[1]], "{run}");
}
