//! Fixture plugin whose process dies under a step: executor `crashy` runs steps like the shell
//! executor, except that when the step's `CRASH_ONCE_FILE` (relative to the step's directory)
//! does not exist yet, it creates it and kills itself with SIGKILL before starting anything.
//! So the first attempt meets a crashed executor and a retry (on a restarted plugin) passes.

use hm_sdk::{Executor, Plugin, StepContext, StepError, StepRequest, StepResult};

struct Crashy;

impl Executor for Crashy {
    async fn execute(&self, step: StepRequest, ctx: StepContext) -> Result<StepResult, StepError> {
        if let Some((_, file)) = step.env.iter().find(|(k, _)| k == "CRASH_ONCE_FILE") {
            let path = step.dir.join(file);
            if !path.exists() {
                std::fs::write(&path, "crashed\n").map_err(|e| {
                    StepError::Message(format!("cannot write {}: {e}", path.display()))
                })?;
                // SIGKILL cannot be caught: the kernel sees the plugin vanish mid-call.
                let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
            }
        }
        let cmd = hm_sdk::process::shell_command(&step);
        hm_sdk::process::run(cmd, &step, &ctx).await
    }
}

fn main() {
    hm_sdk::serve(
        Plugin::new("fixture-crash", env!("CARGO_PKG_VERSION"))
            .description("runs steps with their shell, but dies under a step's first attempt")
            .executor("crashy", Crashy),
    )
}
