//! The step cache through the binary: a second run of an unchanged project replays every step
//! with `inputs` instead of running it (its log, outputs and artifacts as they were), a change
//! reruns exactly the steps it concerns and those after them, a damaged entry is a miss, and
//! two runs at once share the cache safely.

use hm_tests::{Hm, Project, Run};

const PIPELINE: &str = r#"
[steps.gen]
run = '''
cp src/a.txt gen.txt
echo "gen ran on $(cat src/a.txt)"
echo "v=$(cat src/a.txt)" >> "$HM_OUTPUT"
'''
inputs = ["src/**"]
artifacts = ["gen.txt"]

[steps.build]
needs = ["gen"]
run = '''
mkdir -p dist/${{ matrix.n }}
echo "build ${{ matrix.n }} of ${{ steps.gen.outputs.v }} in $MODE" | tee dist/${{ matrix.n }}/out
'''
inputs = ["gen.txt"]
env = { MODE = "fast" }
artifacts = ["dist/${{ matrix.n }}/**"]
matrix = { n = ["1", "2"] }

[steps.other]
run = "echo other"
inputs = ["other/**"]

[steps.plain]
run = "echo plain"
"#;

fn project() -> Project {
    let project = Project::new(PIPELINE);
    project.write("src/a.txt", "one");
    project.write("other/x", "x");
    project.write("README", "not an input");
    project
}

const CACHED: [&str; 4] = ["gen", "build[n=1]", "build[n=2]", "other"];

fn cache_of<'r>(run: &'r Run, step: &str) -> &'r serde_json::Value {
    &run.step_end(step)["cache"]
}

fn assert_caches(run: &Run, expected: &[(&str, &str)]) {
    for (step, cache) in expected {
        assert_eq!(cache_of(run, step), *cache, "{step}: {run}");
        assert_eq!(run.status(step), "passed", "{step}: {run}");
    }
}

#[test]
fn an_unchanged_project_replays_every_cached_step_and_a_change_reruns_what_it_concerns() {
    let project = project();
    let first = project.run(&[]);
    assert_eq!(first.code(), 0, "{first}");
    assert_caches(&first, &CACHED.map(|s| (s, "miss")));
    assert_eq!(
        cache_of(&first, "plain"),
        &serde_json::Value::Null,
        "{first}"
    );

    // Nothing changed: nothing with inputs runs, and everything reads as before.
    std::fs::remove_dir_all(project.path("dist")).expect("rm dist");
    std::fs::remove_file(project.path("gen.txt")).expect("rm gen.txt");
    let second = project.run(&[]);
    assert_eq!(second.code(), 0, "{second}");
    assert_caches(&second, &CACHED.map(|s| (s, "hit")));
    for step in CACHED {
        assert_eq!(second.lines(step), first.lines(step), "{step}: {second}");
        assert!(
            second.of_step("step_start", step).is_empty(),
            "{step} started: {second}"
        );
        assert!(
            second
                .of_step("step_log", step)
                .iter()
                .all(|e| e["replayed"] == true),
            "{step}: every line replayed: {second}"
        );
        assert!(
            first
                .of_step("step_log", step)
                .iter()
                .all(|e| e.get("replayed").is_none()),
            "{step}: no line replayed: {first}"
        );
        assert_eq!(
            second.step_end(step)["artifacts"],
            first.step_end(step)["artifacts"],
            "{step}: {second}"
        );
        assert_eq!(
            second.step_end(step)["outputs"],
            first.step_end(step)["outputs"],
            "{step}: {second}"
        );
    }
    assert_eq!(project.read("gen.txt"), "one");
    assert_eq!(project.read("dist/2/out"), "build 2 of one in fast\n");
    // The plain step is not cached: it ran, in a plugin.
    assert_eq!(second.lines("plain"), ["plain"], "{second}");

    // A file outside every step's inputs changes nothing.
    project.write("README", "changed");
    let third = project.run(&[]);
    assert_caches(&third, &CACHED.map(|s| (s, "hit")));

    // An input of `gen`: gen and the builds after it run, `other` does not.
    project.write("src/a.txt", "two");
    let fourth = project.run(&[]);
    assert_caches(
        &fourth,
        &[
            ("gen", "miss"),
            ("build[n=1]", "miss"),
            ("build[n=2]", "miss"),
            ("other", "hit"),
        ],
    );
    assert_eq!(
        fourth.lines("build[n=1]"),
        ["build 1 of two in fast"],
        "{fourth}"
    );

    // A different environment for the builds only.
    project.write(
        "hm.toml",
        &PIPELINE.replace("MODE = \"fast\"", "MODE = \"slow\""),
    );
    let fifth = project.run(&[]);
    assert_caches(
        &fifth,
        &[
            ("gen", "hit"),
            ("build[n=1]", "miss"),
            ("build[n=2]", "miss"),
            ("other", "hit"),
        ],
    );

    // A different command.
    project.write(
        "hm.toml",
        &PIPELINE
            .replace("MODE = \"fast\"", "MODE = \"slow\"")
            .replace("echo other", "echo other!"),
    );
    let sixth = project.run(&[]);
    assert_caches(
        &sixth,
        &[
            ("gen", "hit"),
            ("build[n=1]", "hit"),
            ("build[n=2]", "hit"),
            ("other", "miss"),
        ],
    );

    // `-e` is every step's environment: nothing is replayed.
    let seventh = project.run(&["-e", "EXTRA=1"]);
    assert_caches(&seventh, &CACHED.map(|s| (s, "miss")));

    // --no-cache runs everything, and stores it.
    let eighth = project.run(&["--no-cache"]);
    assert_caches(&eighth, &CACHED.map(|s| (s, "miss")));
    let ninth = project.run(&[]);
    assert_caches(&ninth, &CACHED.map(|s| (s, "hit")));
}

#[test]
fn a_truncated_blob_is_a_miss_with_a_warning_and_the_entry_is_replaced() {
    let project = project();
    let first = project.run(&["other"]);
    assert_caches(&first, &[("other", "miss")]);
    // Truncate every blob of the cache: the log of `other` among them.
    let blobs = project.cache_home().join("hm/v1/blobs");
    let mut truncated = 0;
    for blob in std::fs::read_dir(&blobs).expect("blobs") {
        let path = blob.expect("blob").path();
        std::fs::write(&path, "").expect("truncate");
        truncated += 1;
    }
    assert!(truncated > 0, "no blob in {}", blobs.display());
    let second = project.run(&["other"]);
    assert_caches(&second, &[("other", "miss")]);
    let lines = second.lines("other");
    assert_eq!(lines.len(), 2, "{second}");
    assert!(
        lines[0].starts_with("hm: the cached result could not be used (blob "),
        "{second}"
    );
    assert_eq!(lines[1], "other", "{second}");
    // Stored anew: the next run is a hit again.
    let third = project.run(&["other"]);
    assert_caches(&third, &[("other", "hit")]);
    assert_eq!(third.lines("other"), ["other"], "{third}");
}

#[test]
fn two_runs_at_once_share_the_cache_and_both_are_right() {
    // Two copies of the project and one cache (keys do not depend on where the project is):
    // the runs race for the same entries while their steps write into working trees of their
    // own. Two runs in one tree race on its files too, which is the pipeline's business, not
    // the cache's: `cp` creates a file that did not exist with O_EXCL, and fails when the
    // other run's `cp` created it in between.
    let project = project();
    let twin = project.root().with_file_name("twin");
    for file in ["hm.toml", "src/a.txt", "other/x", "README"] {
        let to = twin.join(file);
        std::fs::create_dir_all(to.parent().expect("a parent")).expect("twin directories");
        std::fs::copy(project.path(file), &to).expect("copy into the twin");
    }
    let a = project.spawn_run(&[]);
    let b = Hm::spawn(project.command_in(&twin, &["run", "--format", "json"]));
    let a = a.finish(hm_tests::RUN_DEADLINE).into_run();
    let b = b.finish(hm_tests::RUN_DEADLINE).into_run();
    for run in [&a, &b] {
        assert_eq!(run.code(), 0, "{run}");
        assert_eq!(run.lines("build[n=1]"), ["build 1 of one in fast"], "{run}");
    }
    let third = project.run(&[]);
    assert_caches(&third, &CACHED.map(|s| (s, "hit")));
    // Nothing is left half-written.
    let tmp = project.cache_home().join("hm/v1/tmp");
    assert_eq!(std::fs::read_dir(&tmp).expect("tmp").count(), 0);
}

#[test]
fn hm_cache_lists_shows_prunes_and_clears_what_runs_stored() {
    let project = project();
    assert_eq!(project.run(&["other"]).code(), 0);
    let again = project.run(&["other"]);
    assert_caches(&again, &[("other", "hit")]);
    let list = project.hm(&["cache", "list"]);
    assert_eq!(list.code(), 0, "{}", list.stderr);
    let row = list
        .stdout
        .lines()
        .find(|l| l.contains(" other "))
        .unwrap_or_else(|| panic!("no row for `other`:\n{}", list.stdout));
    assert!(row.trim_end().ends_with(" 1"), "one hit: {row}");
    assert!(list.stdout.contains("1 entries"), "{}", list.stdout);
    let key = row.split_whitespace().next().expect("a key");
    let show = project.hm(&["cache", "show", key]);
    assert_eq!(show.code(), 0, "{}", show.stderr);
    assert!(show.stdout.contains("step: other"), "{}", show.stdout);
    let unknown = project.hm(&["cache", "show", "ffffffffffff"]);
    assert_eq!(unknown.code(), 2, "{}", unknown.stderr);
    assert!(
        unknown.stderr.contains("no cache entry"),
        "{}",
        unknown.stderr
    );
    // Used just now: a week's pruning keeps it; pruning what was unused for no time does not.
    let kept = project.hm(&["cache", "prune"]);
    assert!(
        kept.stdout.starts_with("removed 0 entries"),
        "{}",
        kept.stdout
    );
    let pruned = project.hm(&["cache", "prune", "--unused-for", "0s"]);
    assert!(
        pruned.stdout.starts_with("removed 1 entries"),
        "{}",
        pruned.stdout
    );
    assert_caches(&project.run(&["other"]), &[("other", "miss")]);
    let cleared = project.hm(&["cache", "clear"]);
    assert_eq!(cleared.code(), 0, "{}", cleared.stderr);
    assert_caches(&project.run(&["other"]), &[("other", "miss")]);
}
