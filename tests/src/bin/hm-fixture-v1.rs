//! Fixture plugin that speaks only protocol version 1: executor `v1exec` runs steps like the
//! shell executor. The SDK refuses `Init` on version 1 (a protocol error that ends the
//! plugin), so a kernel that sent `Init` to it would fail the step and the plugin's clean exit.
//!
//! Each call it serves is appended to the file named by the step's `HM_FIXTURE_JOURNAL`, so a
//! test can check what the plugin actually received.

use std::io::Write;

use hm_sdk::{Executor, Plugin, StepContext, StepError, StepRequest, StepResult};

struct V1Exec;

impl Executor for V1Exec {
    async fn execute(&self, step: StepRequest, ctx: StepContext) -> Result<StepResult, StepError> {
        if let Some((_, journal)) = step.env.iter().find(|(k, _)| k == "HM_FIXTURE_JOURNAL") {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(journal)
                .map_err(|e| {
                    StepError::Message(format!("cannot open the journal {journal}: {e}"))
                })?;
            writeln!(file, "execute {} attempt {}", step.step, step.attempt)
                .map_err(|e| StepError::Message(format!("cannot write the journal: {e}")))?;
        }
        let cmd = hm_sdk::process::shell_command(&step);
        hm_sdk::process::run(cmd, &step, &ctx).await
    }
}

fn main() {
    hm_sdk::serve(
        Plugin::new("fixture-v1", env!("CARGO_PKG_VERSION"))
            .description("runs steps with sh -c, speaking protocol version 1 only")
            .protocol(1, 1)
            .executor("v1exec", V1Exec),
    )
}
