//! The hook: gathers the run's events into a [`Report`] and writes it at `build_end`.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use hm_sdk::{Hook, HookContext, HookEvent, HookVerdict, Subscription};

use crate::config::Config;
use crate::report::Report;
use crate::write::write_atomically;

/// How long hm waits for the report to be written. Generous next to the default 5 s that every
/// other event gets (those only update memory): a slow or busy disk should not get the hook
/// killed at the one moment it does real work.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The events the report is made of, all after they happened: the hook never holds up a step.
///
/// Not `step_log`: the output of a step would share the hook's bounded queue (1,024 events)
/// with the events the report cannot do without, and a chatty step would get `step_end`s
/// dropped. The report points at hm's own log instead.
pub fn subscriptions() -> Vec<Subscription> {
    vec![
        // The pipeline's name, the run's start time, isolation and parallelism.
        Subscription::after("build_start"),
        // Every step of the run, in pipeline order, before any of them ends.
        Subscription::after("step_queued"),
        // Which attempt is running, and its executor.
        Subscription::after("step_start"),
        // That the attempt that just ended is not the last.
        Subscription::after("step_retry"),
        Subscription::after("step_end"),
        Subscription::after("build_end").timeout(WRITE_TIMEOUT),
    ]
}

/// The hook's state: the report of the run it observes. hm delivers after-events one at a
/// time, in order, so the lock is never contended; it is what makes the hook `Sync`.
#[derive(Debug, Default)]
pub struct JunitHook {
    report: Mutex<Option<Report>>,
}

impl JunitHook {
    fn report(&self) -> MutexGuard<'_, Option<Report>> {
        // A poisoned lock means an earlier event panicked mid-update; what it holds is still
        // the best record there is.
        self.report.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Hook for JunitHook {
    async fn on_event(&self, event: HookEvent, ctx: HookContext) -> Result<HookVerdict, String> {
        let xml = {
            let mut guard = self.report();
            // `build_start` normally creates the report; a plugin restarted mid-run (after a
            // crash) starts from what `Init` said and lists what it sees from then on.
            let report = guard.get_or_insert_with(|| Report::new(ctx.pipeline(), ctx.run_id()));
            report.apply(&event.event);
            if event.kind != "build_end" {
                return Ok(HookVerdict::Continue);
            }
            crate::xml::render(report)
        };
        let config = Config::from_json(ctx.config()).map_err(|e| e.to_string())?;
        let path = config
            .output_path(ctx.project_dir().as_deref())
            .map_err(|e| e.to_string())?;
        // Blocking file I/O and an fsync: off the plugin's only runtime thread, which must
        // keep answering hm's pings.
        tokio::task::spawn_blocking(move || write_atomically(&path, xml.as_bytes()))
            .await
            .map_err(|e| format!("writing the JUnit report failed: {e}"))?
            .map_err(|e| e.to_string())?;
        Ok(HookVerdict::Continue)
    }
}
