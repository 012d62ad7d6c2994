//! Hooks and subcommands through `hm_sdk::testing`: the `OnEvent` and `RunSubcommand` calls
//! (protocol v5 and v4) as the kernel sends them, and the manifest a hook plugin prints.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hm_sdk::testing::{Harness, HarnessError, HarnessOptions};
use hm_sdk::{
    Hook, HookContext, HookEvent, HookPhase, HookVerdict, Plugin, Subcommand, Subscription,
};
use serde_json::json;

/// Aborts steps whose names start with `deploy`; remembers every event it saw.
#[derive(Clone, Default)]
struct Gate {
    seen: Arc<Mutex<Vec<(HookPhase, String, String)>>>,
}

impl Hook for Gate {
    async fn on_event(&self, event: HookEvent, ctx: HookContext) -> Result<HookVerdict, String> {
        let step = event.event["step"].as_str().unwrap_or_default().to_owned();
        self.seen
            .lock()
            .unwrap()
            .push((event.phase, event.kind.clone(), step.clone()));
        if ctx.config()["fail"] == true {
            return Err("configured to fail".into());
        }
        if event.kind == "step_start" && step.starts_with("deploy") {
            return Ok(HookVerdict::Abort(format!("{step} is frozen")));
        }
        Ok(HookVerdict::Continue)
    }
}

fn gate_plugin(gate: Gate) -> Plugin {
    Plugin::new("gate", "1.0.0").hook(
        gate,
        [
            Subscription::before("step_start").timeout(Duration::from_secs(2)),
            Subscription::after("step_end"),
        ],
    )
}

fn step_start(step: &str) -> serde_json::Value {
    json!({ "kind": "step_start", "ts": "2026-01-01T00:00:00.000Z", "run_id": "r",
            "step": step, "attempt": 1, "executor": "shell", "plugin_pid": 0 })
}

#[tokio::test]
async fn a_before_hook_aborts_only_the_steps_it_names() {
    let gate = Gate::default();
    let harness = Harness::start(gate_plugin(gate.clone())).await.unwrap();
    harness.init("{}").await.unwrap();
    assert_eq!(
        harness
            .on_event(HookPhase::Before, &step_start("deploy-prod"))
            .await,
        Ok(HookVerdict::Abort("deploy-prod is frozen".into()))
    );
    assert_eq!(
        harness
            .on_event(HookPhase::Before, &step_start("build"))
            .await,
        Ok(HookVerdict::Continue)
    );
    let end = json!({ "kind": "step_end", "step": "build", "status": "passed" });
    assert_eq!(
        harness.on_event(HookPhase::After, &end).await,
        Ok(HookVerdict::Continue)
    );
    harness.shutdown().await.unwrap();
    let seen = gate.seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            (HookPhase::Before, "step_start".into(), "deploy-prod".into()),
            (HookPhase::Before, "step_start".into(), "build".into()),
            (HookPhase::After, "step_end".into(), "build".into()),
        ]
    );
}

#[tokio::test]
async fn a_failing_hook_answers_with_its_message_and_keeps_serving() {
    let harness = Harness::start(gate_plugin(Gate::default())).await.unwrap();
    harness.init(r#"{"fail": true}"#).await.unwrap();
    let answer = harness
        .on_event(HookPhase::Before, &step_start("build"))
        .await;
    assert_eq!(answer, Err("configured to fail".into()));
    harness.ping().await.unwrap();
    harness.shutdown().await.unwrap();
}

struct Panics;

impl Hook for Panics {
    async fn on_event(&self, _: HookEvent, _: HookContext) -> Result<HookVerdict, String> {
        panic!("boom");
    }
}

#[tokio::test]
async fn a_panicking_hook_fails_the_call_not_the_plugin() {
    let plugin = Plugin::new("panics", "1.0.0").hook(Panics, [Subscription::after("*")]);
    let harness = Harness::start(plugin).await.unwrap();
    harness.init("{}").await.unwrap();
    let answer = harness
        .on_event(HookPhase::After, &json!({ "kind": "build_start" }))
        .await;
    assert_eq!(answer, Err("the hook panicked: boom".into()));
    harness.ping().await.unwrap();
    harness.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_hook_plugin_offers_protocol_5_only_so_a_protocol_4_kernel_refuses_it() {
    let plugin = gate_plugin(Gate::default());
    assert_eq!(plugin.protocol_range(), (5, hm_ipc::PROTOCOL_MAX));
    let options = HarnessOptions {
        protocol_max: 4,
        ..Default::default()
    };
    match Harness::start_with(plugin, options).await {
        Err(HarnessError::Rejected(reason)) => assert!(reason.contains("upgrade hm"), "{reason}"),
        Err(other) => panic!("expected a rejection, got {other}"),
        Ok(_) => panic!("expected a rejection, got a connection"),
    }
}

#[test]
fn the_manifest_declares_each_event_once_with_its_phase_and_timeout() {
    let plugin = Plugin::new("gate", "1.0.0").hook(
        Gate::default(),
        [
            Subscription::before("step_start").timeout(Duration::from_millis(1500)),
            Subscription::after("step_end"),
        ],
    );
    assert_eq!(plugin.capabilities(), ["hook:step_start", "hook:step_end"]);
    let manifest = plugin.manifest("hm-plugin-gate");
    assert!(
        manifest.contains(
            "[[hook]]\nevent = \"step_start\"\nphase = \"before\"\ntimeout = \"1500ms\"\n"
        ),
        "{manifest}"
    );
    assert!(
        manifest
            .contains("[[hook]]\nevent = \"step_end\"\nphase = \"after\"\ntimeout = \"5000ms\"\n"),
        "{manifest}"
    );
}

struct Echo;

impl Subcommand for Echo {
    async fn run(&self, args: serde_json::Value) -> i32 {
        args["code"].as_i64().unwrap_or(0) as i32
    }
}

#[tokio::test]
async fn subcommands_run_through_the_harness() {
    let plugin = Plugin::new("echo", "1.0.0").subcommand("echo", "echo", vec![], Echo);
    let harness = Harness::start(plugin).await.unwrap();
    harness.init("{}").await.unwrap();
    assert_eq!(
        harness.run_subcommand("echo", &json!({ "code": 7 })).await,
        Ok(7)
    );
    let unknown = harness
        .run_subcommand("nope", &json!({}))
        .await
        .unwrap_err();
    assert!(unknown.contains("no subcommand `nope`"), "{unknown}");
    harness.shutdown().await.unwrap();
}
