//! The SDK's side of the protocol, driven by `hm_sdk::testing`: version negotiation, `Init`,
//! ping while a step runs, the key-value host API, a step whose executor panics, hm going
//! away or the harness dropped in the middle of a step, and the harness's own checks.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hm_ipc::messages::KvScope;
use hm_sdk::testing::{self, Harness, HarnessError, HarnessOptions, step};
use hm_sdk::{Executor, InitInfo, Plugin, StepContext, StepError, StepRequest, StepResult};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use support::{assert_nothing_left, shell_plugin};

/// Records every `Init` the plugin receives and refuses configs whose `level` is not a number.
fn recording_plugin(min: u32, max: u32) -> (Plugin, Arc<Mutex<Vec<InitInfo>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let plugin = shell_plugin().protocol(min, max).on_init(move |info| {
        record.lock().unwrap().push(info.clone());
        match info.config.get("level") {
            Some(level) if !level.is_number() => {
                Err(format!("level must be a number, not {level}"))
            }
            _ => Ok(()),
        }
    });
    (plugin, seen)
}

#[tokio::test]
async fn a_v1_plugin_negotiates_1_and_is_never_sent_init() {
    let (plugin, seen) = recording_plugin(1, 1);
    let harness = Harness::start(plugin).await.unwrap();
    assert_eq!(harness.protocol(), 1);
    assert_eq!(
        (harness.hello().protocol_min, harness.hello().protocol_max),
        (1, 1)
    );
    assert_eq!(harness.hello().capabilities, ["executor:shell"]);
    let refused = harness.init("{}").await.unwrap_err();
    assert!(refused.contains("protocol 1"), "{refused}");
    // The plugin keeps working, and its serve loop would have failed on an Init on v1.
    let run = harness.execute(step("echo still here")).await.unwrap();
    assert_eq!(run.stdout(), ["still here"]);
    harness.shutdown().await.unwrap();
    assert!(seen.lock().unwrap().is_empty(), "on_init ran on protocol 1");
}

#[tokio::test]
async fn a_v2_plugin_negotiates_the_highest_common_version() {
    let cases = [(2, 2), (1, 1)];
    for (harness_max, expected) in cases {
        let options = HarnessOptions {
            protocol_max: harness_max,
            ..Default::default()
        };
        let harness = Harness::start_with(shell_plugin(), options).await.unwrap();
        assert_eq!(
            harness.protocol(),
            expected,
            "harness offering up to {harness_max}"
        );
        harness.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_plugin_without_a_common_version_is_rejected() {
    // (plugin's range, harness's newest version, the advice in the reason)
    let cases = [
        ((3, 4), 2, "upgrade hm"),
        ((2, 2), 1, "upgrade hm"),
        ((0, 0), 2, "rebuild the plugin"),
    ];
    for ((min, max), harness_max, advice) in cases {
        let plugin = shell_plugin().protocol(min, max);
        let options = HarnessOptions {
            protocol_max: harness_max,
            ..Default::default()
        };
        match Harness::start_with(plugin, options).await {
            Err(HarnessError::Rejected(reason)) => assert!(reason.contains(advice), "{reason}"),
            Err(other) => panic!("{min}..={max}: expected a rejection, got {other}"),
            Ok(_) => panic!("{min}..={max}: expected a rejection, got a connection"),
        }
    }
}

#[tokio::test]
async fn a_v2_plugin_gets_init_and_can_refuse_its_config() {
    let (plugin, seen) = recording_plugin(1, 2);
    let harness = Harness::start(plugin).await.unwrap();
    assert_eq!(harness.protocol(), 2);
    harness.init(r#"{"level": 3}"#).await.unwrap();
    let refused = harness.init(r#"{"level": "high"}"#).await.unwrap_err();
    assert_eq!(refused, r#"level must be a number, not "high""#);
    harness.shutdown().await.unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].config, serde_json::json!({ "level": 3 }));
    assert_eq!(seen[0].pipeline, hm_sdk::testing::PIPELINE);
}

#[tokio::test]
async fn ping_is_answered_while_a_step_runs() {
    let harness = Harness::start(shell_plugin()).await.unwrap();
    let mut call = harness
        .start_execute(step("echo started; sleep 100"))
        .unwrap();
    call.wait_for_line(|_, text| text == "started")
        .await
        .unwrap();
    for _ in 0..3 {
        harness.ping().await.unwrap();
    }
    harness.cancel(&call).unwrap();
    let run = call.finish().await.unwrap();
    // Cancelled, so the step was still running during every ping.
    assert!(run.result.as_ref().unwrap().cancelled, "{:?}", run.result);
    harness.shutdown().await.unwrap();
    assert_nothing_left(&run).await;
}

/// Runs `run` as `;`-separated commands against the key-value host API: `set SCOPE KEY VALUE`,
/// `del SCOPE KEY`, and `get SCOPE KEY`, which prints `KEY=VALUE` (or `KEY=<none>`).
struct KvScript;

impl Executor for KvScript {
    async fn execute(&self, step: StepRequest, ctx: StepContext) -> Result<StepResult, StepError> {
        for command in step.run.split(';').map(str::trim) {
            let words: Vec<&str> = command.split(' ').collect();
            let scope = match words.get(1) {
                Some(&"plugin") => KvScope::Plugin,
                Some(&"run") => KvScope::Run,
                Some(&"step") => KvScope::Step,
                other => return Err(StepError::Message(format!("bad scope {other:?}"))),
            };
            match words[..] {
                ["set", _, key, value] => ctx.kv_set(scope, key, Some(value.to_owned())).await?,
                ["del", _, key] => ctx.kv_set(scope, key, None).await?,
                ["get", _, key] => {
                    let value = ctx.kv_get(scope, key).await?;
                    let value = value.as_deref().unwrap_or("<none>");
                    ctx.line(hm_sdk::OutputStream::Stdout, format!("{key}={value}"))
                        .await?;
                }
                _ => return Err(StepError::Message(format!("bad command {command:?}"))),
            }
        }
        Ok(StepResult {
            exit_code: Some(0),
            ..StepResult::default()
        })
    }
}

#[tokio::test]
async fn kv_values_round_trip_through_the_host_api_per_scope() {
    let plugin = Plugin::new("kv", "0.0.0").executor("kv", KvScript);
    let harness = Harness::start(plugin).await.unwrap();

    let first = harness
        .start_execute(step(
            "set run color blue; set step tmp 1; set plugin n 7; get step tmp; get run color",
        ))
        .unwrap();
    let first_id = first.id();
    let first = first.finish().await.unwrap();
    assert_eq!(
        first.result.as_ref().map(|r| r.exit_code),
        Ok(Some(0)),
        "{:?}",
        first.result
    );
    assert_eq!(first.stdout(), ["tmp=1", "color=blue"]);
    assert_eq!(
        harness.kv(KvScope::Run, 0, "color").as_deref(),
        Some("blue")
    );
    assert_eq!(harness.kv(KvScope::Plugin, 0, "n").as_deref(), Some("7"));
    // Step-scoped state ends with its step.
    assert_eq!(harness.kv(KvScope::Step, first_id, "tmp"), None);

    let second = harness
        .execute(step(
            "get step tmp; get run color; get plugin n; del run color; get run color",
        ))
        .await
        .unwrap();
    assert_eq!(
        second.stdout(),
        ["tmp=<none>", "color=blue", "n=7", "color=<none>"]
    );
    assert_eq!(harness.kv(KvScope::Run, 0, "color"), None);
    harness.shutdown().await.unwrap();
}

struct Panics;

impl Executor for Panics {
    async fn execute(&self, step: StepRequest, _: StepContext) -> Result<StepResult, StepError> {
        if step.run == "panic" {
            panic!("executor gave up");
        }
        Ok(StepResult::default())
    }
}

#[tokio::test]
async fn a_panicking_executor_fails_its_step_and_the_plugin_keeps_serving() {
    let plugin = Plugin::new("panics", "0.0.0").executor("panics", Panics);
    let harness = Harness::start(plugin).await.unwrap();
    let run = harness.execute(step("panic")).await.unwrap();
    let message = run.result.unwrap_err();
    assert!(message.contains("executor gave up"), "{message}");
    assert!(harness.execute(step("fine")).await.unwrap().result.is_ok());
    harness.shutdown().await.unwrap();
}

#[tokio::test]
async fn when_hm_goes_away_mid_step_the_step_and_its_processes_are_stopped() {
    // One batch of credit and a step that never stops writing: when the connection closes the
    // step is waiting for credit that will never come.
    let options = HarnessOptions {
        log_credit: 1,
        timeout: Duration::from_secs(10),
        ..Default::default()
    };
    let harness = Harness::start_with(shell_plugin(), options).await.unwrap();
    let mut call = harness.start_execute(step("sleep 100 & yes")).unwrap();
    let pgid = call.process_group().await.unwrap();
    call.wait_for_line(|_, text| text == "y").await.unwrap();
    // The serve loop must return; writing what was still queued to the closed socket may fail.
    match harness.disconnect().await {
        Ok(()) | Err(HarnessError::Serve(_)) => {}
        Err(other) => panic!("the plugin did not stop serving: {other}"),
    }
    if let Err(e) = testing::wait_for_group_exit(pgid, Duration::from_secs(5)).await {
        // Not left behind by this test run either.
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        panic!("the step's processes outlived the connection: {e}");
    }
}

#[tokio::test]
async fn dropping_the_harness_mid_step_leaves_no_process() {
    let harness = Harness::start(shell_plugin()).await.unwrap();
    let mut call = harness
        .start_execute(step("sleep 100 & sleep 100"))
        .unwrap();
    let pgid = call.process_group().await.unwrap();
    drop(harness);
    if let Err(e) = testing::wait_for_group_exit(pgid, Duration::from_secs(5)).await {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        panic!("the step's processes outlived the harness: {e}");
    }
}

/// Sends one line one byte longer than a batch may carry, then a line of two-byte characters
/// that long.
struct Oversized;

impl Executor for Oversized {
    async fn execute(&self, _: StepRequest, ctx: StepContext) -> Result<StepResult, StepError> {
        let max = ctx.max_line_bytes();
        ctx.line(hm_sdk::OutputStream::Stdout, "x".repeat(max + 1))
            .await?;
        ctx.line(hm_sdk::OutputStream::Stdout, "é".repeat(max / 2 + 1))
            .await?;
        Ok(StepResult::default())
    }
}

fn oversized_plugin() -> Plugin {
    Plugin::new("oversized", "0.0.0").executor("oversized", Oversized)
}

#[tokio::test]
async fn a_line_longer_than_a_batch_is_split_into_lines_that_fit() {
    let harness = Harness::start(oversized_plugin()).await.unwrap();
    let max = HarnessOptions::default().max_batch_bytes as usize;
    let run = harness.execute(step("")).await.unwrap();
    let lines = run.stdout();
    assert!(
        lines.iter().all(|l| l.len() <= max),
        "{:?}",
        lines.iter().map(|l| l.len()).collect::<Vec<_>>()
    );
    let xs: String = lines
        .iter()
        .filter(|l| l.starts_with('x'))
        .copied()
        .collect();
    let es: String = lines
        .iter()
        .filter(|l| l.starts_with('é'))
        .copied()
        .collect();
    assert_eq!(xs, "x".repeat(max + 1), "nothing lost");
    assert_eq!(
        es,
        "é".repeat(max / 2 + 1),
        "cut between characters, nothing lost"
    );
    assert!(lines.len() >= 4, "each long line went out in pieces");
    harness.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_harness_fails_calls_of_a_plugin_that_breaks_the_protocol() {
    // A host that allows batches smaller than any the SDK can keep to (a character and its
    // separator): the plugin's first batch is over the limit.
    let options = HarnessOptions {
        max_batch_bytes: 4,
        ..Default::default()
    };
    let harness = Harness::start_with(oversized_plugin(), options)
        .await
        .unwrap();
    match harness.execute(step("")).await {
        Err(HarnessError::Protocol(why)) => assert!(why.contains("max_batch_bytes"), "{why}"),
        other => panic!("expected a protocol violation, got {other:?}"),
    }
    // The connection is over for every later call too, and shutdown reports why.
    assert!(matches!(
        harness.ping().await,
        Err(HarnessError::Protocol(_))
    ));
    assert!(matches!(
        harness.shutdown().await,
        Err(HarnessError::Protocol(_))
    ));
}
