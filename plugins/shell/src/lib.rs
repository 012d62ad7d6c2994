//! The shell executor: runs a step's `run` with its shell (`sh -e -c` by default) in the step's directory and
//! environment, through the SDK's process helper (own process group, streamed output, kill
//! ladder). It is hm's default executor and ships inside the `hm` binary.

use hm_sdk::{Executor, Plugin, StepContext, StepError, StepRequest, StepResult};

/// The executor name steps use: `executor = "shell"` (the default).
pub const NAME: &str = "shell";

pub struct ShellExecutor;

impl Executor for ShellExecutor {
    async fn execute(&self, step: StepRequest, ctx: StepContext) -> Result<StepResult, StepError> {
        if let Some(image) = &step.image {
            return Err(StepError::Message(format!(
                "the shell executor cannot run image {image:?}; use the docker executor"
            )));
        }
        let cmd = hm_sdk::process::shell_command(&step);
        hm_sdk::process::run(cmd, &step, &ctx).await
    }
}

/// The shell plugin, ready for [`hm_sdk::serve`].
pub fn plugin() -> Plugin {
    Plugin::new(NAME, env!("CARGO_PKG_VERSION"))
        .description("runs steps with their shell (sh -e -c by default) on the local machine")
        .executor(NAME, ShellExecutor)
}
