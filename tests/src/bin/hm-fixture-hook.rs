//! Fixture plugin `gatekeeper` 1.0.0, a hook (tests/tests/hooks.rs). Before `step_start` it
//! aborts steps whose names start with `config.abort_prefix`; it records the events it sees in
//! the file `config.record` (relative to the project); and on request it fails, crashes or hangs
//! on one step, or takes `config.log_delay_ms` for every `step_log`, so the tests can watch hm
//! handle a misbehaving hook.

use std::io::Write;
use std::time::Duration;

use hm_sdk::{Hook, HookContext, HookEvent, HookPhase, HookVerdict, Plugin, Subscription};

struct Gatekeeper;

impl Gatekeeper {
    fn record(ctx: &HookContext, line: &str) -> Result<(), String> {
        let Some(record) = ctx.config()["record"].as_str() else {
            return Ok(());
        };
        let path = ctx.project_dir().unwrap_or_default().join(record);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        writeln!(file, "{line}").map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

impl Hook for Gatekeeper {
    async fn on_event(&self, event: HookEvent, ctx: HookContext) -> Result<HookVerdict, String> {
        let config = ctx.config();
        let step = event.event["step"].as_str().unwrap_or_default();
        let is = |key: &str| !step.is_empty() && config[key].as_str() == Some(step);
        match (event.phase, event.kind.as_str()) {
            (HookPhase::Before, "step_start") => {
                if is("hang_on_step") {
                    std::future::pending::<()>().await;
                }
                if is("fail_on_step") {
                    return Err(format!("refusing to judge {step}"));
                }
                Self::record(&ctx, &format!("before step_start {step}"))?;
                let prefix = config["abort_prefix"].as_str();
                if prefix.is_some_and(|p| step.starts_with(p)) {
                    return Ok(HookVerdict::Abort(format!("{step} is frozen")));
                }
            }
            (_, "step_log") => {
                if let Some(ms) = config["log_delay_ms"].as_u64() {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
            }
            (_, "step_end") => {
                if is("crash_on_step") {
                    std::process::abort();
                }
                let status = event.event["status"].as_str().unwrap_or_default();
                Self::record(&ctx, &format!("step_end {step} {status}"))?;
            }
            (_, kind) => Self::record(&ctx, kind)?,
        }
        Ok(HookVerdict::Continue)
    }
}

fn main() {
    hm_sdk::serve(
        Plugin::new("gatekeeper", "1.0.0")
            .description("test fixture: a hook that aborts, records, fails, crashes or hangs")
            .on_init(|info| match info.config["refuse"].as_str() {
                Some(why) => Err(why.to_owned()),
                None => Ok(()),
            })
            .hook(
                Gatekeeper,
                [
                    Subscription::before("step_start").timeout(Duration::from_secs(2)),
                    Subscription::after("step_log").timeout(Duration::from_secs(2)),
                    Subscription::after("step_end"),
                    Subscription::after("build_end"),
                ],
            ),
    )
}
