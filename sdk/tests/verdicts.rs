//! The plugin's own verdicts (protocol 3): an environment check that refuses `Init` as
//! *unavailable*, and a step the executor reports as killed for running out of memory; on
//! older protocols both fall back to what those kernels understand.

use std::sync::{Arc, Mutex};

use hm_sdk::testing::{Harness, HarnessError, HarnessOptions, step};
use hm_sdk::{Executor, Plugin, StepContext, StepError, StepRequest, StepResult};

/// Reports every step as OOM-killed, as the docker executor does when Docker says so.
struct OutOfMemory;

impl Executor for OutOfMemory {
    async fn execute(&self, _: StepRequest, _: StepContext) -> Result<StepResult, StepError> {
        Err(StepError::OutOfMemory(StepResult {
            signal: Some(9),
            ..StepResult::default()
        }))
    }
}

/// A plugin whose environment check fails, recording the run id it was told.
fn daemonless(protocol_max: u32) -> (Plugin, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let plugin = Plugin::new("daemonless", "0.1.0")
        .protocol(1, protocol_max)
        .executor("daemonless", OutOfMemory)
        .on_init(|info| match info.config.get("ok") {
            Some(serde_json::Value::Bool(false)) => Err("config says no".into()),
            _ => Ok(()),
        })
        .check_environment(move |info| {
            record.lock().unwrap().push(info.run_id.clone());
            Err("no daemon at unix:///nowhere".into())
        });
    (plugin, seen)
}

#[tokio::test]
async fn an_unavailable_environment_refuses_init_as_unavailable_on_v3() {
    let (plugin, seen) = daemonless(3);
    let harness = Harness::start(plugin).await.unwrap();
    assert!(harness.protocol() >= 3);
    let refused = harness.init("{}").await.unwrap_err();
    assert!(refused.contains("Unavailable"), "{refused}");
    assert!(
        refused.contains("no daemon at unix:///nowhere"),
        "{refused}"
    );
    // The check learns which run it serves.
    assert_eq!(*seen.lock().unwrap(), [hm_sdk::testing::RUN_ID]);
    harness.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_refused_config_is_reported_before_the_environment_is_checked() {
    let (plugin, seen) = daemonless(3);
    let harness = Harness::start(plugin).await.unwrap();
    let refused = harness.init(r#"{"ok": false}"#).await.unwrap_err();
    assert_eq!(refused, "config says no");
    assert!(seen.lock().unwrap().is_empty());
    harness.shutdown().await.unwrap();
}

#[tokio::test]
async fn on_v2_an_unavailable_environment_is_a_plain_refusal() {
    let (plugin, _) = daemonless(2);
    let harness = Harness::start(plugin).await.unwrap();
    assert_eq!(harness.protocol(), 2);
    let refused = harness.init("{}").await.unwrap_err();
    assert_eq!(refused, "no daemon at unix:///nowhere");
    harness.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_oom_verdict_is_its_own_reply_on_v3_and_a_sigkill_before() {
    let (plugin, _) = daemonless(3);
    let harness = Harness::start(plugin).await.unwrap();
    match harness.execute(step("allocate")).await {
        Err(HarnessError::Protocol(reply)) => {
            assert!(reply.contains("StepOutOfMemory"), "{reply}");
            assert!(reply.contains("signal: Some(9)"), "{reply}");
        }
        other => panic!("expected the StepOutOfMemory reply, got {other:?}"),
    }
    harness.shutdown().await.unwrap();

    let (plugin, _) = daemonless(3);
    let options = HarnessOptions {
        protocol_max: 2,
        ..Default::default()
    };
    let harness = Harness::start_with(plugin, options).await.unwrap();
    let run = harness.execute(step("allocate")).await.unwrap();
    assert_eq!(run.result.unwrap().signal, Some(9));
    harness.shutdown().await.unwrap();
}
