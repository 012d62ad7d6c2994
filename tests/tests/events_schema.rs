//! The `--format json` event stream against its schema, `docs/events.schema.json`: real runs of
//! `hm` that between them produce every event kind and every step status, each line checked by
//! `jsonschema` (see `hm_tests::schema`), and proof that the check refuses what the schema
//! forbids.

use std::collections::{BTreeMap, BTreeSet};

use hm_tests::schema::{assert_valid_events, validate_events};
use hm_tests::{
    Bundle, Hm, MARKER_VAR, Project, RUN_DEADLINE, Run, Value, assert_no_process_left,
    assert_process_gone, marker, sh_wait_for_file,
};

const CRASH: &str = env!("CARGO_BIN_EXE_hm-fixture-crash");
const GATEKEEPER: &str = env!("CARGO_BIN_EXE_hm-fixture-hook");

const KINDS: [&str; 10] = [
    "build_start",
    "step_queued",
    "step_start",
    "step_log",
    "step_retry",
    "step_end",
    "plugin_start",
    "plugin_exit",
    "plugin_restart",
    "build_end",
];

/// `hm run --format json ARGS...` in `project`, with a fresh marker in hm's environment (its
/// plugins and steps inherit it). Once hm has exited, nothing it started may be left: no
/// process with the marker, no plugin instance, no cgroup of the run.
fn run(project: &Project, label: &str, args: &[&str]) -> Run {
    let m = marker(label);
    let mut all = vec!["run", "--format", "json"];
    all.extend_from_slice(args);
    let mut cmd = project.command(&all);
    cmd.env(MARKER_VAR, &m);
    let run = Hm::spawn(cmd).finish(RUN_DEADLINE).into_run();
    assert_no_process_left(&m);
    for start in run.of_kind("plugin_start") {
        if let Some(pid) = start["pid"].as_u64() {
            assert_process_gone(pid as u32);
        }
    }
    if let Some(id) = run.events.first().and_then(|e| e["run_id"].as_str()) {
        let left = hm_tests::cgroups::run_cgroup_dirs(id);
        assert!(left.is_empty(), "the run's cgroups are left: {left:?}");
    }
    run
}

/// What the stream promises whatever happened: `build_start` first and `build_end` last, one
/// final `step_end` per queued step, and every line of a step before its final `step_end`.
fn assert_stream_promises(run: &Run) {
    assert_eq!(run.kinds().first(), Some(&"build_start"), "{run}");
    run.build_end();
    run.assert_one_final_step_end_each();
    for step in run.queued() {
        if !run.of_step("step_log", step).is_empty() {
            assert!(
                run.last_index_of("step_log", step) < run.last_index_of("step_end", step),
                "a line of {step} after its last step_end; {run}"
            );
        }
    }
}

/// Validates the whole stdout of `run` against the schema: every line, and all of them.
fn assert_run_matches_schema(run: &Run) {
    let checked = assert_valid_events(&run.output.stdout);
    assert_eq!(checked, run.events.len(), "every line was checked; {run}");
}

/// Final statuses and causes of every queued step of `runs`, as `status/cause`.
fn outcomes(runs: &[&Run]) -> BTreeSet<String> {
    runs.iter()
        .flat_map(|run| {
            run.queued().into_iter().map(|step| {
                let end = run.step_end(step);
                format!(
                    "{}/{}",
                    end["status"].as_str().unwrap_or("?"),
                    end["cause"].as_str().unwrap_or("null")
                )
            })
        })
        .collect()
}

/// A green run with every kind: `fmt` writes to both streams, `test` fails once and is retried
/// (`step_retry`), `package` kills its plugin on its first attempt, so that the plugin is
/// restarted for the second (`plugin_exit` not clean, `plugin_restart`), `lint` fails with
/// `allow_failure`, and `matrix` has instances (`step_end.matrix`).
#[test]
fn a_real_stream_with_every_event_kind_matches_the_schema() {
    let project = Project::new(
        r#"
[pipeline]
name = "schema"

[steps.fmt]
run = "echo checking; echo 'warning: line too long' >&2"

[steps.test]
run = '''if [ -e test.tried ]; then echo "42 passed"; else touch test.tried; echo "1 failed" >&2; exit 3; fi'''
needs = ["fmt"]
retry = { attempts = 2, on = ["exit:3"] }

[steps.package]
executor = "crashy"
run = "echo packaged"
env = { CRASH_ONCE_FILE = "package.crashed" }
retry = { attempts = 2, on = ["crash"] }

[steps.lint]
run = "echo 'unused variable' >&2; exit 1"
allow_failure = true

[steps.matrix]
run = "echo ${{ matrix.os }} ${{ matrix.version }}"
matrix = { os = ["linux"], version = [3, 1.5] }

[steps.cached]
run = "mkdir -p out && echo data > out/f && echo 'k=v' >> $HM_OUTPUT && echo cached-ran"
inputs = ["hm.toml"]
artifacts = ["out/**"]
"#,
    );
    project.install(&Bundle::executor("fixture-crash", "crashy", CRASH));
    let run = run(&project, "schema-kinds", &["-j2"]);
    assert_eq!(run.code(), 0, "{run}");

    let seen: BTreeSet<&str> = run.kinds().into_iter().collect();
    let missing: Vec<&str> = KINDS.into_iter().filter(|k| !seen.contains(k)).collect();
    assert!(
        missing.is_empty(),
        "the run must produce every kind, or the check proves little: no {missing:?}; {run}"
    );
    let unknown: Vec<&&str> = seen.iter().filter(|k| !KINDS.contains(k)).collect();
    assert!(unknown.is_empty(), "kinds not documented: {unknown:?}");
    assert_run_matches_schema(&run);
    assert_stream_promises(&run);

    // The variants the schema tells apart were in what it accepted.
    let exits = run.of_plugin("plugin_exit", "fixture-crash");
    assert!(
        exits.iter().any(|e| e["clean"] == false) && exits.iter().any(|e| e["clean"] == true),
        "a crashed instance and a clean one; {run}"
    );
    assert_eq!(run.step_end("lint")["allowed_failure"], true, "{run}");
    assert_eq!(run.step_end("test")["attempt"], 2, "{run}");
    assert_eq!(
        run.step_end("matrix[os=linux,version=1.5]")["matrix"],
        serde_json::json!({"os": "linux", "version": "1.5"}),
        "{run}"
    );
    assert!(run.step_end("fmt")["matrix"].is_null(), "{run}");
    assert_eq!(run.step_end("cached")["cache"], "miss", "{run}");
    assert_eq!(run.step_end("cached")["outputs"]["k"], "v", "{run}");
    assert_eq!(
        run.step_end("cached")["artifacts"][0]["path"],
        "out/f",
        "{run}"
    );
    // Replayed from the cache: `cache`, `saved_ms` and the replayed log in the schema too.
    let again = self::run(&project, "schema-cache-hit", &["cached"]);
    assert_run_matches_schema(&again);
    assert_eq!(again.step_end("cached")["cache"], "hit", "{again}");
    assert!(again.step_end("cached")["saved_ms"].is_u64(), "{again}");
    let streams: BTreeSet<&str> = run
        .of_kind("step_log")
        .into_iter()
        .filter_map(|e| e["stream"].as_str())
        .collect();
    assert_eq!(streams, BTreeSet::from(["stderr", "stdout"]), "{run}");
}

/// Failing runs: under fail fast a step fails while another runs (`cancelled`) and others wait
/// (`skipped`); with keep-going a step times out (`timed_out`), its dependent is skipped, and
/// a hook aborts a step (`hook_abort`, and a hook plugin in the stream), a step's `dir` is
/// missing (`setup`) and one fails with an allowed exit code (`allowed_failure`).
#[test]
fn the_streams_of_failing_runs_match_the_schema() {
    let fail_fast = Project::new(&format!(
        r#"
[pipeline]
name = "schema-fail-fast"

[steps.long]
run = "touch long.started; sleep 1000"

[steps.build]
run = '''{wait}; echo "error: cannot find crate" >&2; exit 101'''

[steps.deploy]
run = "touch deploy.ran"
needs = ["build"]

[steps.docs]
run = "touch docs.ran"
needs = ["long"]
"#,
        wait = sh_wait_for_file("long.started"),
    ));
    let failed = run(&fail_fast, "schema-fail-fast", &["-j2", "--grace", "1s"]);
    assert_eq!(failed.code(), 1, "{failed}");
    assert_run_matches_schema(&failed);
    assert_stream_promises(&failed);

    let keep_going = Project::new(
        r#"
[pipeline]
name = "schema-keep-going"
keep_going = true

[plugins.gatekeeper]
config = { abort_prefix = "deploy" }

[steps.slow]
run = "sleep 1000"
timeout = "200ms"

[steps.after-slow]
run = "touch after-slow.ran"
needs = ["slow"]

[steps.deploy]
run = "touch deploy.ran"

[steps.docs]
run = "echo documented"

[steps.nowhere]
dir = "not-there"
run = "true"

[steps.tolerated]
run = "exit 77"
allow_failure = { exit_codes = [77] }
"#,
    );
    let out = keep_going.hm(&["plugin", "install", "--project", GATEKEEPER]);
    assert_eq!(out.code(), 0, "install failed:\n{}", out.stderr);
    let timed_out = run(&keep_going, "schema-keep-going", &["-j2", "--grace", "1s"]);
    assert_eq!(timed_out.code(), 124, "{timed_out}");
    assert_run_matches_schema(&timed_out);
    assert_stream_promises(&timed_out);
    assert!(
        !timed_out.of_plugin("plugin_start", "gatekeeper").is_empty(),
        "{timed_out}"
    );
    assert_eq!(
        timed_out.step_end("tolerated")["allowed_failure"],
        true,
        "{timed_out}"
    );

    let seen = outcomes(&[&failed, &timed_out]);
    let statuses: BTreeSet<&str> = seen.iter().filter_map(|o| o.split('/').next()).collect();
    assert_eq!(
        statuses,
        BTreeSet::from(["cancelled", "failed", "passed", "skipped", "timed_out"]),
        "every status was validated; outcomes: {seen:?}"
    );
    for outcome in [
        "failed/exit",
        "cancelled/cancelled",
        "skipped/dependency_failed",
        "timed_out/timeout",
        "failed/hook_abort",
        "failed/setup",
    ] {
        assert!(seen.contains(outcome), "no {outcome}: {seen:?}");
    }
    let ends: BTreeSet<&str> = [&failed, &timed_out]
        .iter()
        .filter_map(|run| run.build_end()["status"].as_str())
        .collect();
    assert_eq!(ends, BTreeSet::from(["failed", "timed_out"]));
}

/// Event `index` of `run`, changed by `change`, as a line.
fn changed(
    run: &Run,
    index: usize,
    change: impl FnOnce(&mut serde_json::Map<String, Value>),
) -> String {
    let mut event = run.events[index].clone();
    change(event.as_object_mut().expect("an event is an object"));
    event.to_string()
}

/// The report's complaints by line number: `line N (kind): ...` and `line N: ...`.
fn complaints(report: &str) -> BTreeMap<usize, Vec<&str>> {
    let mut by_line: BTreeMap<usize, Vec<&str>> = BTreeMap::new();
    for line in report.lines() {
        let number = line
            .strip_prefix("line ")
            .and_then(|rest| rest.split([' ', ':']).next())
            .and_then(|n| n.parse().ok());
        if let Some(number) = number {
            by_line.entry(number).or_default().push(line);
        }
    }
    by_line
}

/// The check is no rubber stamp. A real stream followed by copies of its events, each broken in
/// one way, is refused: the report blames exactly the broken lines, each for what is wrong with
/// it. What the schema allows of a plugin that fails its handshake (`protocol` null, a
/// `message` on a `plugin_exit` that is not clean) is accepted.
#[test]
fn the_schema_check_refuses_what_the_schema_forbids() {
    let project = Project::new(
        r#"
[steps.hello]
run = "echo hello; echo oops >&2"
"#,
    );
    let run = run(&project, "schema-refuses", &[]);
    assert_eq!(run.code(), 0, "{run}");
    assert_run_matches_schema(&run);
    let at = |kind: &str| {
        run.kinds()
            .iter()
            .position(|k| *k == kind)
            .unwrap_or_else(|| panic!("no {kind}; {run}"))
    };
    let (end, exit) = (at("step_end"), at("plugin_exit"));

    // Each broken line, and what the report must say about it.
    let broken: Vec<(String, &str)> = vec![
        (
            changed(&run, end, |e| {
                e.insert("surprise".into(), true.into());
            }),
            "'surprise' was unexpected",
        ),
        (
            changed(&run, end, |e| {
                e.insert("status".into(), "failed".into());
                e.insert("cause".into(), "bad_luck".into());
            }),
            "'bad_luck'",
        ),
        (
            changed(&run, end, |e| {
                e.insert("cause".into(), "exit".into());
            }),
            "at /cause: 'exit' is not of type 'null'",
        ),
        (
            changed(&run, end, |e| {
                e.insert("allowed_failure".into(), false.into());
            }),
            "at /allowed_failure:",
        ),
        (
            changed(&run, at("step_queued"), |e| {
                e.remove("run_id");
            }),
            "'run_id' is a required property",
        ),
        (
            changed(&run, at("step_start"), |e| {
                e.insert("attempt".into(), "1".into());
            }),
            "'1' is not of type 'integer'",
        ),
        (
            changed(&run, at("step_log"), |e| {
                e.insert("stream".into(), "stdlog".into());
            }),
            "'stdlog' is not one of",
        ),
        (
            changed(&run, at("step_log"), |e| {
                e.insert("ts".into(), "yesterday".into());
            }),
            "'yesterday' does not match",
        ),
        (
            changed(&run, at("build_start"), |e| {
                e.insert("kind".into(), "build_begin".into());
            }),
            "'build_begin' is not one of",
        ),
        (
            changed(&run, at("build_end"), |e| {
                e.insert("exit_code".into(), 124.into());
            }),
            "'timed_out' was expected",
        ),
        (
            changed(&run, exit, |e| {
                e.insert("message".into(), "a clean exit has no story".into());
            }),
            "['message']",
        ),
        ("not an event".to_owned(), "not JSON"),
    ];
    let mut stream = run.output.stdout.clone();
    for (line, _) in &broken {
        stream.push_str(line);
        stream.push('\n');
    }
    let report = match validate_events(&stream) {
        Ok(count) => panic!("{count} events with broken ones among them were accepted"),
        Err(report) => report,
    };
    let found = complaints(&report);
    let expected: Vec<usize> = (1..=broken.len()).map(|i| run.events.len() + i).collect();
    assert_eq!(
        found.keys().copied().collect::<Vec<_>>(),
        expected,
        "exactly the broken lines are blamed:\n{report}"
    );
    for ((line, says), number) in broken.iter().zip(&expected) {
        assert!(
            found[number].iter().any(|c| c.contains(says)),
            "line {number} ({line}) is blamed without {says:?}:\n{report}"
        );
    }
    assert!(
        validate_events("").is_err(),
        "no events at all is no valid stream"
    );

    // A plugin that started but failed its handshake: no protocol, and an exit with its story.
    let mut events: Vec<String> = run.events.iter().map(Value::to_string).collect();
    events[at("plugin_start")] = changed(&run, at("plugin_start"), |e| {
        e.insert("protocol".into(), Value::Null);
    });
    events[exit] = changed(&run, exit, |e| {
        e.insert("clean".into(), false.into());
        e.insert("cause".into(), "protocol_error".into());
        e.insert("exit_code".into(), Value::Null);
        e.insert("signal".into(), 9.into());
        e.insert(
            "message".into(),
            "plugin shell sent an invalid first frame\n  killed by signal 9".into(),
        );
    });
    assert_eq!(
        validate_events(&(events.join("\n") + "\n")),
        Ok(run.events.len()),
        "a failed handshake as the schema describes it"
    );
}
