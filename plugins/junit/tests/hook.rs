//! The plugin through `hm_sdk::testing::Harness`: the protocol as hm speaks it, the events of a
//! recorded run, the configuration check at `Init`, and the file written at `build_end`.

mod support;

use std::path::Path;

use expect_test::expect;
use hm_sdk::testing::Harness;
use hm_sdk::{HookPhase, HookVerdict};
use serde_json::{Value, json};

/// `hm run --format json` of this pipeline, as hm printed it:
///
/// ```toml
/// [pipeline]
/// name = "ci"
/// keep_going = true
///
/// [plugins.junit]
/// config = { path = "reports/junit.xml" }
///
/// [steps.build]
/// run = "echo built"
///
/// [steps.unit]
/// run = "echo 'unit tests failed' >&2; exit 3"
/// needs = ["build"]
///
/// [steps.package]
/// run = "echo packaging"
/// needs = ["unit"]
///
/// [steps.lint]
/// run = "echo 'style <problem> & \"quotes\"' >&2; exit 1"
/// allow_failure = true
///
/// [steps.flaky]
/// run = "if [ -e attempted ]; then echo ok; else touch attempted; exit 1; fi"
/// retry = { attempts = 2, on = ["exit:1"] }
///
/// [steps.killed]
/// run = "kill -9 $$"
///
/// [steps.slow]
/// run = "sleep 30"
/// timeout = "500ms"
/// ```
const RECORDED: &str = r#"
{"ts":"2026-11-22T05:03:02.136Z","run_id":"4577c2f2e72f-5a25","kind":"build_start","pipeline":"ci","steps":7,"parallelism":2,"isolation":"cgroup_v1","isolation_reason":"cgroup v2: the memory and pids controllers are not available in /sys/fs/cgroup/unified"}
{"ts":"2026-11-22T05:03:02.136Z","run_id":"4577c2f2e72f-5a25","kind":"step_queued","step":"build"}
{"ts":"2026-11-22T05:03:02.136Z","run_id":"4577c2f2e72f-5a25","kind":"step_queued","step":"unit"}
{"ts":"2026-11-22T05:03:02.136Z","run_id":"4577c2f2e72f-5a25","kind":"step_queued","step":"package"}
{"ts":"2026-11-22T05:03:02.136Z","run_id":"4577c2f2e72f-5a25","kind":"step_queued","step":"lint"}
{"ts":"2026-11-22T05:03:02.136Z","run_id":"4577c2f2e72f-5a25","kind":"step_queued","step":"flaky"}
{"ts":"2026-11-22T05:03:02.136Z","run_id":"4577c2f2e72f-5a25","kind":"step_queued","step":"killed"}
{"ts":"2026-11-22T05:03:02.136Z","run_id":"4577c2f2e72f-5a25","kind":"step_queued","step":"slow"}
{"ts":"2026-11-22T05:03:02.167Z","run_id":"4577c2f2e72f-5a25","kind":"plugin_start","plugin":"junit","pid":23079,"protocol":5}
{"ts":"2026-11-22T05:03:02.168Z","run_id":"4577c2f2e72f-5a25","kind":"plugin_start","plugin":"shell","pid":23080,"protocol":5}
{"ts":"2026-11-22T05:03:02.169Z","run_id":"4577c2f2e72f-5a25","kind":"step_start","step":"build","attempt":1,"executor":"shell","plugin_pid":23080}
{"ts":"2026-11-22T05:03:02.169Z","run_id":"4577c2f2e72f-5a25","kind":"step_start","step":"lint","attempt":1,"executor":"shell","plugin_pid":23080}
{"ts":"2026-11-22T05:03:02.172Z","run_id":"4577c2f2e72f-5a25","kind":"step_log","step":"build","stream":"stdout","line":"built"}
{"ts":"2026-11-22T05:03:02.172Z","run_id":"4577c2f2e72f-5a25","kind":"step_end","step":"build","attempt":1,"status":"passed","cause":null,"exit_code":0,"signal":null,"duration_ms":3,"peak_memory_bytes":262144,"cpu_ms":1}
{"ts":"2026-11-22T05:03:02.172Z","run_id":"4577c2f2e72f-5a25","kind":"step_start","step":"unit","attempt":1,"executor":"shell","plugin_pid":23080}
{"ts":"2026-11-22T05:03:02.174Z","run_id":"4577c2f2e72f-5a25","kind":"step_log","step":"lint","stream":"stderr","line":"style <problem> & \"quotes\""}
{"ts":"2026-11-22T05:03:02.174Z","run_id":"4577c2f2e72f-5a25","kind":"step_end","step":"lint","attempt":1,"status":"failed","cause":"exit","exit_code":1,"signal":null,"duration_ms":5,"peak_memory_bytes":524288,"cpu_ms":0,"message":"exited with code 1","allowed_failure":true}
{"ts":"2026-11-22T05:03:02.175Z","run_id":"4577c2f2e72f-5a25","kind":"step_start","step":"flaky","attempt":1,"executor":"shell","plugin_pid":23080}
{"ts":"2026-11-22T05:03:02.177Z","run_id":"4577c2f2e72f-5a25","kind":"step_log","step":"unit","stream":"stderr","line":"unit tests failed"}
{"ts":"2026-11-22T05:03:02.177Z","run_id":"4577c2f2e72f-5a25","kind":"step_end","step":"unit","attempt":1,"status":"failed","cause":"exit","exit_code":3,"signal":null,"duration_ms":5,"peak_memory_bytes":262144,"cpu_ms":0,"message":"exited with code 3"}
{"ts":"2026-11-22T05:03:02.177Z","run_id":"4577c2f2e72f-5a25","kind":"step_end","step":"package","attempt":1,"status":"skipped","cause":"dependency_failed","exit_code":null,"signal":null,"duration_ms":0,"peak_memory_bytes":null,"cpu_ms":null}
{"ts":"2026-11-22T05:03:02.178Z","run_id":"4577c2f2e72f-5a25","kind":"step_start","step":"killed","attempt":1,"executor":"shell","plugin_pid":23080}
{"ts":"2026-11-22T05:03:02.180Z","run_id":"4577c2f2e72f-5a25","kind":"step_end","step":"flaky","attempt":1,"status":"failed","cause":"exit","exit_code":1,"signal":null,"duration_ms":5,"peak_memory_bytes":520192,"cpu_ms":2,"message":"exited with code 1"}
{"ts":"2026-11-22T05:03:02.180Z","run_id":"4577c2f2e72f-5a25","kind":"step_retry","step":"flaky","attempt":2,"cause":"exit"}
{"ts":"2026-11-22T05:03:02.181Z","run_id":"4577c2f2e72f-5a25","kind":"step_start","step":"flaky","attempt":2,"executor":"shell","plugin_pid":23080}
{"ts":"2026-11-22T05:03:02.184Z","run_id":"4577c2f2e72f-5a25","kind":"step_end","step":"killed","attempt":1,"status":"failed","cause":"signal","exit_code":null,"signal":9,"duration_ms":6,"peak_memory_bytes":262144,"cpu_ms":0,"message":"killed by signal SIGKILL (9)"}
{"ts":"2026-11-22T05:03:02.184Z","run_id":"4577c2f2e72f-5a25","kind":"step_start","step":"slow","attempt":1,"executor":"shell","plugin_pid":23080}
{"ts":"2026-11-22T05:03:02.186Z","run_id":"4577c2f2e72f-5a25","kind":"step_log","step":"flaky","stream":"stdout","line":"ok"}
{"ts":"2026-11-22T05:03:02.187Z","run_id":"4577c2f2e72f-5a25","kind":"step_end","step":"flaky","attempt":2,"status":"passed","cause":null,"exit_code":0,"signal":null,"duration_ms":5,"peak_memory_bytes":262144,"cpu_ms":0}
{"ts":"2026-11-22T05:03:02.690Z","run_id":"4577c2f2e72f-5a25","kind":"step_end","step":"slow","attempt":1,"status":"timed_out","cause":"timeout","exit_code":null,"signal":15,"duration_ms":505,"peak_memory_bytes":520192,"cpu_ms":2}
{"ts":"2026-11-22T05:03:02.693Z","run_id":"4577c2f2e72f-5a25","kind":"plugin_exit","plugin":"shell","pid":23080,"clean":true,"cause":null,"exit_code":0,"signal":null}
{"ts":"2026-11-22T05:03:02.693Z","run_id":"4577c2f2e72f-5a25","kind":"build_end","status":"timed_out","exit_code":124,"duration_ms":557,"passed":2,"failed":4,"skipped":1,"cancelled":0}
"#;

fn recorded_events() -> Vec<Value> {
    RECORDED
        .lines()
        .filter(|line| !line.is_empty())
        .map(|line| serde_json::from_str(line).expect("a recorded event is JSON"))
        .collect()
}

/// Starts the plugin and sends `Init` with `config`, as hm does before the first event.
async fn start(config: Value) -> Harness {
    let harness = Harness::start(hm_plugin_junit::plugin())
        .await
        .expect("the plugin starts");
    harness
        .init(&config.to_string())
        .await
        .expect("the configuration is accepted");
    harness
}

/// Sends `events` as hm would: only the kinds the plugin subscribes to, one at a time, in
/// order, each after the answer to the one before.
async fn deliver(harness: &Harness, events: &[Value]) {
    let plugin = hm_plugin_junit::plugin();
    let subscribed: Vec<&str> = plugin
        .subscriptions()
        .iter()
        .map(|s| s.event.as_str())
        .collect();
    for event in events {
        let kind = event["kind"].as_str().unwrap_or_default();
        if !subscribed.contains(&kind) {
            continue;
        }
        assert_eq!(
            harness.on_event(HookPhase::After, event).await,
            Ok(HookVerdict::Continue),
            "answer to {event}"
        );
    }
}

#[tokio::test]
async fn a_recorded_run_becomes_one_testcase_per_step() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reports/junit.xml");
    let harness = start(json!({ "path": path })).await;
    deliver(&harness, &recorded_events()).await;
    harness.shutdown().await.unwrap();

    support::assert_valid(&path);
    let xml = std::fs::read_to_string(&path).unwrap();
    expect![[r#"
        <?xml version="1.0" encoding="UTF-8"?>
        <testsuites name="ci" tests="7" failures="3" errors="0" time="0.557">
          <testsuite name="ci" tests="7" failures="3" errors="0" skipped="2" time="0.557" timestamp="2026-11-22T05:03:02.136Z">
            <properties>
              <property name="hm.run_id" value="4577c2f2e72f-5a25"/>
              <property name="hm.status" value="timed_out"/>
              <property name="hm.exit_code" value="124"/>
              <property name="hm.isolation" value="cgroup_v1"/>
              <property name="hm.parallelism" value="2"/>
            </properties>
            <testcase name="build" classname="ci" time="0.003" status="passed"/>
            <testcase name="unit" classname="ci" time="0.005" status="failed">
              <failure message="exited with code 3" type="exit">status: failed
        cause: exit
        exit code: 3
        attempt: 1
        executor: shell
        duration: 0.005s
        peak memory: 262144 bytes
        cpu time: 0 ms</failure>
            </testcase>
            <testcase name="package" classname="ci" time="0.000" status="skipped">
              <skipped message="skipped: a step it needs failed"/>
            </testcase>
            <testcase name="lint" classname="ci" time="0.005" status="failed">
              <skipped message="failure allowed: exited with code 1">status: failed
        cause: exit
        exit code: 1
        attempt: 1
        executor: shell
        duration: 0.005s
        peak memory: 524288 bytes
        cpu time: 0 ms</skipped>
            </testcase>
            <testcase name="flaky" classname="ci" time="0.005" status="passed">
              <system-err>attempt 1 failed after 0.005s: exited with code 1; hm retried it (exit)
        </system-err>
            </testcase>
            <testcase name="killed" classname="ci" time="0.006" status="failed">
              <failure message="killed by signal SIGKILL (9)" type="signal">status: failed
        cause: signal
        signal: 9
        attempt: 1
        executor: shell
        duration: 0.006s
        peak memory: 262144 bytes
        cpu time: 0 ms</failure>
            </testcase>
            <testcase name="slow" classname="ci" time="0.505" status="timed_out">
              <failure message="timed out after 0.505s" type="timeout">status: timed_out
        cause: timeout
        signal: 15
        attempt: 1
        executor: shell
        duration: 0.505s
        peak memory: 520192 bytes
        cpu time: 2 ms</failure>
            </testcase>
          </testsuite>
        </testsuites>
    "#]].assert_eq(&xml);
}

#[tokio::test]
async fn nothing_is_written_before_build_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("junit.xml");
    let harness = start(json!({ "path": path })).await;
    let events = recorded_events();
    let (before_end, end) = events.split_at(events.len() - 1);
    deliver(&harness, before_end).await;
    assert!(!path.exists(), "written before build_end");
    deliver(&harness, end).await;
    assert!(path.is_file(), "not written at build_end");
    harness.shutdown().await.unwrap();
}

#[tokio::test]
async fn init_refuses_a_configuration_with_unknown_keys_or_wrong_types() {
    let harness = Harness::start(hm_plugin_junit::plugin()).await.unwrap();
    let refusal = harness
        .init(r#"{"path": ["a.xml"], "format": "xunit"}"#)
        .await
        .unwrap_err();
    assert_eq!(
        refusal,
        "[plugins.junit] config: unknown key `format` (the junit plugin knows: path); \
         `path` must be a string, not an array"
    );
    harness.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_report_that_cannot_be_written_fails_build_end_with_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-directory");
    std::fs::write(&blocker, "").unwrap();
    let harness = start(json!({ "path": blocker.join("junit.xml") })).await;
    let answer = harness
        .on_event(
            HookPhase::After,
            &json!({ "kind": "build_end", "status": "passed", "exit_code": 0,
                     "duration_ms": 1, "passed": 0, "failed": 0, "skipped": 0,
                     "cancelled": 0 }),
        )
        .await;
    let message = answer.unwrap_err();
    assert!(
        message.starts_with(&format!(
            "cannot create the directory {} for the JUnit report",
            blocker.display()
        )),
        "{message}"
    );
    // The hook keeps serving: the next run's report can still be written.
    harness.ping().await.unwrap();
    harness.shutdown().await.unwrap();
    assert!(Path::new(&blocker).is_file());
}
