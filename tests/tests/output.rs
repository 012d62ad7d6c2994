//! What hm prints: the `--format json` event stream (`docs/events.md`), no lost log lines, GitHub
//! groups, and plain `[step] line` output.

use std::collections::BTreeSet;

use std::process::Command;

use hm_tests::{Project, Value};

/// `flaky` fails once (exit 3) and is retried; `after` needs it; both write to both streams.
fn retrying_pipeline() -> Project {
    Project::new(
        r#"
[pipeline]
name = "events"

[steps.flaky]
run = '''if [ -e tried ]; then echo "second try"; else touch tried; echo "first try" >&2; exit 3; fi'''
retry = { attempts = 2, on = ["exit:3"] }

[steps.after]
run = "echo out; echo err >&2"
needs = ["flaky"]
"#,
    )
}

/// `2026-01-01T00:00:00.000Z`: RFC 3339, UTC, milliseconds.
fn is_rfc3339_millis(ts: &str) -> bool {
    let b = ts.as_bytes();
    b.len() == 24
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'.',
            23 => c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

#[test]
fn json_is_one_event_object_per_line_with_kind_ts_and_run_id() {
    let project = retrying_pipeline();
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(run.output.stdout.lines().count(), run.events.len());
    let run_id = run.events[0]["run_id"]
        .as_str()
        .expect("run_id is a string")
        .to_owned();
    assert!(!run_id.is_empty());
    for event in &run.events {
        assert!(event["kind"].is_string(), "no kind: {event}");
        let ts = event["ts"]
            .as_str()
            .unwrap_or_else(|| panic!("no ts: {event}"));
        assert!(
            is_rfc3339_millis(ts),
            "ts is not RFC 3339 with milliseconds: {event}"
        );
        assert_eq!(
            event["run_id"],
            run_id.as_str(),
            "one run_id for the whole run: {event}"
        );
    }
    // Nothing else on stdout; a second run gets another id.
    let again = project.run(&[]);
    assert_ne!(
        again.events[0]["run_id"],
        run_id.as_str(),
        "run ids are unique"
    );
}

#[test]
fn json_carries_every_event_kind_a_run_produces() {
    let project = retrying_pipeline();
    let run = project.run(&["-j2"]);
    assert_eq!(run.code(), 0, "{run}");
    let kinds: BTreeSet<&str> = run.kinds().into_iter().collect();
    for kind in [
        "build_start",
        "step_queued",
        "step_start",
        "step_log",
        "step_retry",
        "step_end",
        "plugin_start",
        "plugin_exit",
        "build_end",
    ] {
        assert!(kinds.contains(kind), "no {kind} event; {run}");
    }
    assert_eq!(run.kinds()[0], "build_start", "{run}");
    run.build_end();

    let start = &run.of_kind("build_start")[0];
    assert_eq!(start["pipeline"], "events");
    assert_eq!(start["steps"], 2);
    assert_eq!(start["parallelism"], 2);
    assert!(
        ["cgroup_v2", "cgroup_v1", "rlimit"].contains(&start["isolation"].as_str().unwrap_or("")),
        "{start}"
    );

    // Every step is queued before anything starts.
    let first_start = run
        .kinds()
        .iter()
        .position(|k| *k == "step_start")
        .expect("a step_start");
    let queued: Vec<usize> = run
        .events
        .iter()
        .enumerate()
        .filter(|(_, e)| e["kind"] == "step_queued")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(queued.len(), 2, "{run}");
    assert!(queued.iter().all(|&i| i < first_start), "{run}");

    // The plugin: started once, a pid that is not hm's, a clean exit after the last step.
    let plugin_starts = run.of_kind("plugin_start");
    assert_eq!(plugin_starts.len(), 1, "{run}");
    let plugin_pid = plugin_starts[0]["pid"].as_u64().expect("plugin pid");
    assert_eq!(plugin_starts[0]["plugin"], "shell");
    assert_eq!(
        plugin_starts[0]["protocol"],
        hm_ipc::PROTOCOL_MAX,
        "the built-in shell plugin speaks the newest protocol"
    );
    assert_ne!(
        plugin_pid,
        u64::from(run.output.pid),
        "plugins run in their own process"
    );
    for start in run.of_kind("step_start") {
        assert_eq!(start["plugin_pid"].as_u64(), Some(plugin_pid), "{start}");
        assert_ne!(
            start["plugin_pid"].as_u64(),
            Some(u64::from(run.output.pid)),
            "{start}"
        );
        assert_eq!(start["executor"], "shell", "{start}");
    }
    let exits = run.of_kind("plugin_exit");
    assert_eq!(exits.len(), 1, "{run}");
    assert_eq!(exits[0]["pid"].as_u64(), Some(plugin_pid));
    assert_eq!(exits[0]["clean"], true, "{run}");
    assert!(
        run.kinds().iter().rposition(|k| *k == "step_end")
            < run.kinds().iter().position(|k| *k == "plugin_exit")
    );

    // The retry says which attempt follows and why.
    let retry = run.of_step("step_retry", "flaky");
    assert_eq!(retry.len(), 1, "{run}");
    assert_eq!(
        (&retry[0]["attempt"], &retry[0]["cause"]),
        (&Value::from(2), &Value::from("exit"))
    );

    // step_end has every field `docs/events.md` lists, null where unknown.
    for end in run.of_kind("step_end") {
        for field in [
            "step",
            "attempt",
            "status",
            "cause",
            "exit_code",
            "signal",
            "duration_ms",
            "peak_memory_bytes",
            "cpu_ms",
        ] {
            assert!(end.get(field).is_some(), "step_end without {field}: {end}");
        }
    }
    let first = &run.of_step("step_end", "flaky")[0];
    assert_eq!(
        (&first["status"], &first["cause"], &first["exit_code"]),
        (
            &Value::from("failed"),
            &Value::from("exit"),
            &Value::from(3)
        )
    );
    assert_eq!(run.step_end("after")["cause"], Value::Null);

    // Logs keep their stream; every line comes before its step's step_end.
    assert_eq!(run.stream_lines("flaky", "stderr"), ["first try"]);
    assert_eq!(run.stream_lines("flaky", "stdout"), ["second try"]);
    assert_eq!(run.stream_lines("after", "stdout"), ["out"]);
    assert_eq!(run.stream_lines("after", "stderr"), ["err"]);
    assert!(run.last_index_of("step_log", "after") < run.index_of("step_end", "after"));

    let end = run.build_end();
    assert_eq!(end["status"], "passed");
    assert_eq!(end["exit_code"], 0);
    let counts = ["passed", "failed", "skipped", "cancelled"].map(|f| end[f].as_u64());
    assert_eq!(counts, [Some(2), Some(0), Some(0), Some(0)], "{end}");
    assert!(end["duration_ms"].is_u64(), "{end}");
    run.assert_one_final_step_end_each();
}

#[test]
fn a_step_writing_100000_lines_loses_none() {
    let project = Project::new("[steps.chatty]\nrun = \"seq 1 100000; seq 1 1000 >&2\"\n");
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    let out = run.stream_lines("chatty", "stdout");
    assert_eq!(out.len(), 100_000, "stdout lines lost or added");
    assert_eq!((out[0], out[out.len() - 1]), ("1", "100000"));
    let expected: Vec<String> = (1..=100_000).map(|n| n.to_string()).collect();
    assert!(
        out.iter().zip(&expected).all(|(a, b)| a == b),
        "stdout lines out of order"
    );
    let err = run.stream_lines("chatty", "stderr");
    let expected: Vec<String> = (1..=1000).map(|n| n.to_string()).collect();
    assert_eq!(err, expected, "stderr lines lost or out of order");
    assert!(
        run.last_index_of("step_log", "chatty") < run.index_of("step_end", "chatty"),
        "every line comes before step_end"
    );
}

#[test]
fn a_line_longer_than_a_batch_is_split_without_losing_a_byte() {
    let project = Project::new(
        "[steps.wide]\nrun = '''head -c 1000000 /dev/zero | tr '\\000' x; echo; echo next'''\n",
    );
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    let lines = run.lines("wide");
    let (last, wide) = lines.split_last().expect("some lines");
    assert_eq!(*last, "next", "{run}");
    assert!(
        wide.iter().all(|l| l.bytes().all(|b| b == b'x')),
        "only the x's, in pieces"
    );
    let total: usize = wide.iter().map(|l| l.len()).sum();
    assert_eq!(
        total,
        1_000_000,
        "bytes lost or added in {} pieces",
        wide.len()
    );
}

#[test]
fn a_last_line_without_a_newline_is_kept() {
    let project = Project::new("[steps.tail]\nrun = \"printf 'one\\\\ntwo'\"\n");
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{run}");
    assert_eq!(run.lines("tail"), ["one", "two"], "{run}");
}

/// Two steps running together, each writing lines, and one failing.
fn grouped_pipeline() -> Project {
    Project::new(
        r#"
[steps.alpha]
run = "echo alpha 1; echo alpha 2"

[steps.beta]
run = "echo beta 1; echo beta 2 >&2"

[steps.broken]
run = "echo broken 1; exit 2"
needs = ["alpha"]
"#,
    )
}

/// The lines inside `::group::TITLE` ... `::endgroup::`.
fn group<'a>(stdout: &'a str, title: &str) -> Vec<&'a str> {
    let mut lines = stdout
        .lines()
        .skip_while(|l| *l != format!("::group::{title}"));
    assert!(lines.next().is_some(), "no group {title:?} in:\n{stdout}");
    lines.take_while(|l| *l != "::endgroup::").collect()
}

#[test]
fn github_format_groups_each_steps_log_and_marks_failures() {
    let project = grouped_pipeline();
    let out = project.hm(&["run", "--format", "github", "-k", "-j2"]);
    assert_eq!(out.code(), 1, "{}", out.stderr);
    assert_eq!(
        group(&out.stdout, "alpha (passed)"),
        ["alpha 1", "alpha 2"],
        "{}",
        out.stdout
    );
    let mut beta = group(&out.stdout, "beta (passed)");
    beta.sort_unstable();
    assert_eq!(beta, ["beta 1", "beta 2"], "{}", out.stdout);
    assert_eq!(
        group(&out.stdout, "broken (failed)"),
        ["broken 1"],
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("::error") && l.contains("broken")),
        "the failure is annotated:\n{}",
        out.stdout
    );
    // Groups never nest: each opened group is closed before the next opens.
    let mut open = false;
    for line in out.stdout.lines() {
        if line.starts_with("::group::") {
            assert!(!open, "nested group in:\n{}", out.stdout);
            open = true;
        } else if line == "::endgroup::" {
            assert!(open, "endgroup without group in:\n{}", out.stdout);
            open = false;
        }
    }
    assert!(!open);
}

#[test]
fn github_actions_environment_selects_the_github_format() {
    let project = grouped_pipeline();
    let mut cmd = project.command(&["run", "-k"]);
    cmd.env("GITHUB_ACTIONS", "true");
    let out = hm_tests::Hm::spawn(cmd).finish(hm_tests::RUN_DEADLINE);
    assert_eq!(out.code(), 1, "{}", out.stderr);
    assert_eq!(
        group(&out.stdout, "alpha (passed)"),
        ["alpha 1", "alpha 2"],
        "{}",
        out.stdout
    );
}

#[test]
fn plain_output_prefixes_every_log_line_with_its_step() {
    let project = grouped_pipeline();
    let out = project.hm(&["run", "-k", "-j2"]);
    assert_eq!(out.code(), 1, "{}", out.stderr);
    assert_eq!(out.stdout, "", "human output goes to stderr");
    for line in [
        "[alpha] alpha 1",
        "[alpha] alpha 2",
        "[beta] beta 1",
        "[beta] beta 2",
        "[broken] broken 1",
    ] {
        assert!(
            out.stderr.lines().any(|l| l == line),
            "no {line:?} in:\n{}",
            out.stderr
        );
    }
    let alpha: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("[alpha] alpha"))
        .collect();
    assert_eq!(
        alpha,
        ["[alpha] alpha 1", "[alpha] alpha 2"],
        "a step's lines keep their order"
    );
    assert!(
        !out.stderr.contains('\u{1b}'),
        "NO_COLOR means no escape codes:\n{}",
        out.stderr
    );
    // The summary table names every step with its status.
    for (step, status) in [
        ("alpha", "passed"),
        ("beta", "passed"),
        ("broken", "failed"),
    ] {
        assert!(
            out.stderr
                .lines()
                .any(|l| l.split_whitespace().take(2).eq([step, status])),
            "no summary row for {step}:\n{}",
            out.stderr
        );
    }
}

/// A pipeline whose run makes hm print one of its own diagnostics (the pipeline timeout
/// passing) besides the summary.
fn diagnostic_pipeline() -> Project {
    Project::new(
        r#"
[steps.slow]
run = "sleep 30"
"#,
    )
}

#[test]
fn diagnostics_have_no_escape_codes_when_stderr_is_not_a_terminal() {
    let project = diagnostic_pipeline();
    let mut cmd = project.command(&["run", "--timeout", "300ms"]);
    // Not NO_COLOR: only stderr not being a terminal says there is no colour.
    cmd.env_remove("NO_COLOR");
    let out = hm_tests::Hm::spawn(cmd).finish(hm_tests::RUN_DEADLINE);
    assert_eq!(out.code(), 124, "{}", out.stderr);
    assert!(
        out.stderr.contains("WARN the pipeline timeout"),
        "hm's diagnostic is missing:\n{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains('\u{1b}'),
        "stderr is a pipe: no escape codes:\n{}",
        out.stderr
    );
}

#[test]
fn no_color_removes_escape_codes_on_a_terminal_too() {
    let project = diagnostic_pipeline();
    // `script` runs hm with a pseudo-terminal as its stdin, stdout and stderr, and copies what
    // it wrote to its own stdout.
    let hm = hm_tests::hm_bin();
    let run = |flags: &str| {
        let mut cmd = project.command(&[]);
        cmd.env_remove("NO_COLOR");
        let mut script = Command::new("script");
        script
            .args(["-q", "-e", "-c"])
            .arg(format!("{} run --timeout 300ms {flags}", hm.display()))
            .arg("/dev/null")
            .current_dir(project.root())
            .envs(cmd.get_envs().filter_map(|(k, v)| Some((k, v?))))
            .env_remove("NO_COLOR");
        hm_tests::Hm::spawn(script).finish(hm_tests::RUN_DEADLINE)
    };
    let coloured = run("");
    assert!(
        has_sgr(&coloured.stdout),
        "on a terminal hm colours its output (else this test proves nothing):\n{}",
        coloured.stdout
    );
    let plain = run("--no-color");
    assert_eq!(plain.code(), 124, "{}", plain.stdout);
    assert!(
        plain.stdout.contains("WARN the pipeline timeout"),
        "hm's diagnostic is missing:\n{}",
        plain.stdout
    );
    // The live view still moves the cursor; colours and bold are SGR sequences (`ESC [ ... m`).
    let coloured_lines: Vec<&str> = plain.stdout.lines().filter(|l| has_sgr(l)).collect();
    assert!(
        coloured_lines.is_empty(),
        "--no-color leaves no colour codes, in the live view or hm's diagnostics: \
         {coloured_lines:#?}"
    );
}

/// Whether `text` holds a Select Graphic Rendition sequence (colour, bold, reset).
fn has_sgr(text: &str) -> bool {
    text.split('\u{1b}').skip(1).any(|rest| {
        rest.strip_prefix('[').is_some_and(|params| {
            let end = params.trim_start_matches(|c: char| c.is_ascii_digit() || c == ';');
            end.starts_with('m')
        })
    })
}

#[test]
fn hm_log_shows_hms_own_diagnostics_in_their_run_plugin_and_step_spans() {
    let project = Project::new("[steps.greet]\nrun = \"echo hi\"\n");
    let mut cmd = project.command(&["run"]);
    cmd.env("HM_LOG", "debug");
    let out = hm_tests::Hm::spawn(cmd).finish(hm_tests::RUN_DEADLINE);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    for needle in [
        "run{run_id=",
        "}:plugin{plugin=shell generation=1 pid=",
        "}:step{step=greet attempt=1}: execute call=",
        "}:step{step=greet attempt=1}: attempt ended status=\"passed\"",
    ] {
        assert!(
            out.stderr.contains(needle),
            "no {needle:?} in:\n{}",
            out.stderr
        );
    }
    // By default only warnings and errors are shown, without span context.
    let out = project.hm(&["run"]);
    assert!(
        !out.stderr.contains("DEBUG") && !out.stderr.contains("run{"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_closed_stdout_is_the_end_of_the_output_not_a_crash() {
    let project = Project::new("[steps.greet]\nrun = \"echo hi\"\n");
    for args in [
        &["version"][..],
        &["doctor"],
        &["validate"],
        &["plugin", "list"],
        &["plugin", "info", "shell"],
        &["run", "--dry-run"],
        &["run", "--format", "json"],
    ] {
        // A pipe whose reader is gone: every write to it fails with EPIPE.
        let (read, write) = nix::unistd::pipe().expect("a pipe");
        drop(read);
        let mut cmd = project.command(args);
        cmd.stdout(std::fs::File::from(write))
            .stderr(std::process::Stdio::piped());
        let out = cmd.output().expect("run hm");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked") && out.status.code().is_some_and(|c| c != 101),
            "hm {args:?} with a closed stdout: {:?}\n{stderr}",
            out.status
        );
    }
}
