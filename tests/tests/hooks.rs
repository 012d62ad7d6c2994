//! Hooks end to end: the fixture hook `gatekeeper` installed in the project
//! from its executable, configured by `[plugins.gatekeeper]`, observing real runs of `hm`.

use hm_tests::{Bundle, Project, Run, assert_no_process_left, marker};

const GATEKEEPER: &str = env!("CARGO_BIN_EXE_hm-fixture-hook");

/// A project with `pipeline` as its hm.toml and `gatekeeper` installed in its plugins layer.
fn project(pipeline: &str) -> Project {
    let project = Project::new(pipeline);
    let out = project.hm(&["plugin", "install", "--project", GATEKEEPER]);
    assert_eq!(out.code(), 0, "install failed:\n{}", out.stderr);
    let manifest = project.read(".hm/plugins/gatekeeper/plugin.toml");
    assert!(manifest.contains("phase = \"before\""), "{manifest}");
    project
}

fn show(run: &Run) -> String {
    format!("stderr:\n{}\nevents:\n{:#?}", run.stderr(), run.events)
}

fn recorded(project: &Project) -> Vec<String> {
    project
        .read("record.txt")
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn a_before_hook_aborts_exactly_the_steps_it_names() {
    let project = project(
        r#"
[pipeline]
keep_going = true

[plugins.gatekeeper]
config = { abort_prefix = "deploy", record = "record.txt" }

[steps.build]
run = "echo built"
[steps.test]
run = "echo tested"
needs = ["build"]
[steps.deploy-staging]
run = "touch deployed-staging"
needs = ["test"]
[steps.deploy-prod]
run = "touch deployed-prod"
needs = ["test"]
[steps.docs]
run = "echo documented"
[steps.redeploy]
run = "echo not a deploy step"
needs = ["deploy-staging"]
"#,
    );
    let run = project.run(&[]);
    assert_eq!(run.code(), 1, "{}", show(&run));
    for step in ["build", "test", "docs"] {
        assert_eq!(run.status(step), "passed", "{step}: {}", show(&run));
    }
    for step in ["deploy-staging", "deploy-prod"] {
        assert_eq!(run.status(step), "failed", "{step}: {}", show(&run));
        assert_eq!(run.cause(step), Some("hook_abort"), "{}", show(&run));
        let message = run.step_end(step)["message"].as_str().unwrap_or_default();
        assert_eq!(
            message,
            format!("aborted by hook gatekeeper: {step} is frozen"),
            "{}",
            show(&run)
        );
        // Aborted before any executor saw it: no step_start, and its command never ran.
        assert!(run.of_step("step_start", step).is_empty(), "{}", show(&run));
        assert_eq!(
            run.of_step("step_end", step).len(),
            1,
            "no retry of an abort"
        );
    }
    assert!(!project.exists("deployed-staging") && !project.exists("deployed-prod"));
    // Its need failed; a name that merely contains "deploy" is not aborted by the prefix.
    assert_eq!(run.cause("redeploy"), Some("dependency_failed"));
    run.assert_one_final_step_end_each();

    let record = recorded(&project);
    for step in ["build", "test", "deploy-staging", "deploy-prod", "docs"] {
        assert!(
            record.contains(&format!("before step_start {step}")),
            "{record:?}"
        );
    }
    assert!(
        record.contains(&"step_end build passed".to_owned()),
        "{record:?}"
    );
    assert!(
        record.contains(&"step_end deploy-prod failed".to_owned()),
        "{record:?}"
    );
    assert_eq!(
        record.last().map(String::as_str),
        Some("build_end"),
        "{record:?}"
    );
    assert_eq!(run.kinds().last(), Some(&"build_end"), "{}", show(&run));
}

#[test]
fn hooks_observe_only_projects_that_configure_them() {
    let project = project("[steps.deploy]\nrun = \"echo deployed\"\n");
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{}", show(&run));
    assert_eq!(run.status("deploy"), "passed");
    assert!(
        run.of_kind("plugin_start")
            .iter()
            .all(|e| e["plugin"] != "gatekeeper"),
        "{}",
        show(&run)
    );
}

#[test]
fn a_crashing_hook_is_reported_restarted_and_does_not_fail_the_run() {
    let tag = marker("hook-crash");
    let project = project(&format!(
        r#"
[plugins.gatekeeper]
config = {{ crash_on_step = "a", record = "record.txt" }}

[pipeline]
env = {{ HM_E2E_MARKER = "{tag}" }}

[steps.a]
run = "echo a"
[steps.b]
run = "echo b"
needs = ["a"]
[steps.c]
run = "echo c"
needs = ["b"]
"#
    ));
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{}", show(&run));
    for step in ["a", "b", "c"] {
        assert_eq!(run.status(step), "passed", "{}", show(&run));
    }
    let exits = run.of_kind("plugin_exit");
    assert!(
        exits
            .iter()
            .any(|e| e["plugin"] == "gatekeeper" && e["cause"] == "signal"),
        "{}",
        show(&run)
    );
    assert!(
        run.of_kind("plugin_restart")
            .iter()
            .any(|e| e["plugin"] == "gatekeeper"),
        "{}",
        show(&run)
    );
    assert!(
        run.stderr()
            .contains("plugin gatekeeper was killed by signal SIGABRT"),
        "{}",
        show(&run)
    );
    // The restarted hook saw what came after the crash.
    let record = recorded(&project);
    assert!(
        record.contains(&"step_end c passed".to_owned()),
        "{record:?}"
    );
    assert_eq!(
        record.last().map(String::as_str),
        Some("build_end"),
        "{record:?}"
    );
    assert!(
        run.stderr().contains("hook gatekeeper missed 1 event(s)"),
        "{}",
        show(&run)
    );
    assert_no_process_left(&tag);
}

#[test]
fn a_required_hook_that_crashes_fails_the_run() {
    let project = project(
        r#"
[plugins.gatekeeper]
required = true
config = { crash_on_step = "a" }

[steps.a]
run = "echo a"
"#,
    );
    let run = project.run(&[]);
    assert_eq!(run.code(), 5, "{}", show(&run));
    assert_eq!(run.status("a"), "passed", "{}", show(&run));
    assert!(run.stderr().contains("required"), "{}", show(&run));
    let end = run.of_kind("build_end");
    assert_eq!(end.len(), 1);
    assert_eq!(end[0]["exit_code"], 5, "{}", show(&run));
}

#[test]
fn a_hook_that_hangs_before_a_step_is_killed_and_the_step_runs() {
    let project = project(
        r#"
[plugins.gatekeeper]
config = { hang_on_step = "a", abort_prefix = "deploy", record = "record.txt" }

[steps.a]
run = "echo a"
[steps.deploy]
run = "touch deployed"
needs = ["a"]
"#,
    );
    let run = project.run(&[]);
    assert_eq!(run.code(), 1, "{}", show(&run));
    assert_eq!(run.status("a"), "passed", "{}", show(&run));
    assert!(
        run.stderr().contains(
            "hook gatekeeper failed on `step_start`: did not answer `step_start` within 2s"
        ),
        "{}",
        show(&run)
    );
    // Restarted for the next step, it still does its job.
    assert_eq!(run.cause("deploy"), Some("hook_abort"), "{}", show(&run));
    assert!(!project.exists("deployed"));
}

#[test]
fn a_required_hook_that_cannot_decide_aborts_the_step() {
    let project = project(
        r#"
[plugins.gatekeeper]
required = true
config = { fail_on_step = "a" }

[steps.a]
run = "touch ran"
"#,
    );
    let run = project.run(&[]);
    assert_eq!(run.code(), 5, "{}", show(&run));
    assert_eq!(run.cause("a"), Some("hook_abort"), "{}", show(&run));
    let message = run.step_end("a")["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("required hook gatekeeper could not decide: refusing to judge a"),
        "{}",
        show(&run)
    );
    assert!(!project.exists("ran"));
}

#[test]
fn a_slow_hook_drops_events_and_says_so_without_losing_output() {
    let project = project(
        r#"
[plugins.gatekeeper]
config = { log_delay_ms = 5 }

[steps.chatty]
run = "i=0; while [ $i -lt 3000 ]; do echo line $i; i=$((i+1)); done"
"#,
    );
    let run = project.run(&[]);
    assert_eq!(run.code(), 0, "{}", show(&run));
    assert_eq!(
        run.lines("chatty").len(),
        3000,
        "every line reaches the renderers"
    );
    let stderr = run.stderr();
    let missed = stderr
        .lines()
        .find_map(|l| l.split("hook gatekeeper missed ").nth(1))
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(
        missed.is_some_and(|n| n > 0 && n < 3000),
        "expected a count of dropped events:\n{stderr}"
    );
}

#[test]
fn a_hook_without_the_hooks_protocol_is_refused_before_anything_starts() {
    let project = Project::new("[plugins.old]\n\n[steps.a]\nrun = \"touch ran\"\n");
    let mut bundle = Bundle::executor("old", "old", GATEKEEPER).protocol(1, 4);
    bundle.capabilities = vec!["hook:step_end".into()];
    project.install(&bundle);
    let out = project.hm(&["run"]);
    assert_eq!(out.code(), 5, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "plugin `old` declares hooks but speaks protocol 1..=4, and hooks need protocol 5"
        ),
        "{}",
        out.stderr
    );
    assert!(!project.exists("ran"));
}

#[test]
fn plugin_info_shows_what_a_hook_observes() {
    let project = project("[steps.a]\nrun = \"true\"\n");
    let out = project.hm(&["plugin", "info", "gatekeeper"]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    for row in [
        "before step_start (timeout 2s)",
        "after step_log (timeout 2s)",
        "after step_end (timeout 5s)",
        "after build_end (timeout 5s)",
    ] {
        assert!(out.stdout.contains(row), "{row}:\n{}", out.stdout);
    }
    let out = project.hm(&["plugin", "info", "gatekeeper", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("json");
    assert_eq!(doc["hooks"][0]["phase"], "before", "{doc:#}");
    assert_eq!(doc["hooks"][0]["timeout_ms"], 2000, "{doc:#}");
}

#[test]
fn a_hook_that_refuses_its_configuration_is_reported_and_only_fails_a_required_run() {
    // A required hook that cannot start cannot let a step through either.
    for (required, code, status) in [(false, 0, "passed"), (true, 5, "failed")] {
        let project = project(&format!(
            "[plugins.gatekeeper]\nrequired = {required}\n\
             config = {{ refuse = \"no path given\" }}\n\n[steps.a]\nrun = \"echo a\"\n"
        ));
        let run = project.run(&[]);
        assert_eq!(run.code(), code, "required = {required}: {}", show(&run));
        assert_eq!(run.status("a"), status, "{}", show(&run));
        assert!(
            run.stderr()
                .contains("refused its configuration: no path given"),
            "{}",
            show(&run)
        );
        assert!(!run.stderr().contains("signal"), "{}", show(&run));
    }
}

#[test]
fn a_cancelled_run_still_tells_its_hooks_how_it_ended() {
    let tag = marker("hook-cancel");
    let project = project(&format!(
        r#"
[plugins.gatekeeper]
config = {{ record = "record.txt" }}

[pipeline]
env = {{ HM_E2E_MARKER = "{tag}" }}

[steps.long]
run = "sleep 30"
"#
    ));
    let mut hm = project.spawn_run(&[]);
    hm.wait_for_event("the step's start", hm_tests::RUN_DEADLINE, |e| {
        e["kind"] == "step_start" && e["step"] == "long"
    });
    hm.signal(nix::sys::signal::Signal::SIGINT);
    let run = hm.finish(hm_tests::RUN_DEADLINE).into_run();
    assert_eq!(run.code(), 130, "{}", show(&run));
    assert_eq!(run.kinds().last(), Some(&"build_end"), "{}", show(&run));
    let record = recorded(&project);
    assert!(
        record.contains(&"step_end long cancelled".to_owned()),
        "{record:?}"
    );
    assert_eq!(
        record.last().map(String::as_str),
        Some("build_end"),
        "{record:?}"
    );
    assert_no_process_left(&tag);
}

#[test]
fn a_dry_run_lists_the_hooks_that_would_observe_the_run() {
    let project = project("[plugins.gatekeeper]\n\n[steps.a]\nrun = \"touch ran\"\n");
    let out = project.hm(&["run", "--dry-run"]);
    assert_eq!(out.code(), 0, "{}", out.stderr);
    assert!(
        out.stdout
            .contains("hook gatekeeper: before step_start, step_log, step_end, build_end"),
        "{}",
        out.stdout
    );
    assert!(!project.exists("ran"));
    assert!(!project.exists("record.txt"));
}
