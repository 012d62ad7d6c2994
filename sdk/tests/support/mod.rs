//! What the SDK's integration tests share: a shell executor built on `hm_sdk::process` (the
//! real shell plugin depends on the SDK, so the SDK's tests cannot use it) and the check that a
//! step left no process behind.

use std::time::Duration;

use hm_sdk::testing::{self, StepRun};
use hm_sdk::{Executor, Plugin, StepContext, StepError, StepRequest, StepResult};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// Runs `run` with the step's shell (`sh -e -c` by default) through the SDK's process helper, as the shell plugin does.
pub struct Shell;

impl Executor for Shell {
    async fn execute(&self, step: StepRequest, ctx: StepContext) -> Result<StepResult, StepError> {
        let cmd = hm_sdk::process::shell_command(&step);
        hm_sdk::process::run(cmd, &step, &ctx).await
    }
}

pub fn shell_plugin() -> Plugin {
    Plugin::new("test-shell", "0.0.0").executor("shell", Shell)
}

/// Fails unless every process group the step reported is empty (waiting for processes that
/// were killed to finish dying) and at least one was reported.
pub async fn assert_nothing_left(run: &StepRun) {
    assert!(
        !run.process_groups.is_empty(),
        "the step reported no process group: {run:?}"
    );
    for &pgid in &run.process_groups {
        if let Err(e) = testing::wait_for_group_exit(pgid, Duration::from_secs(5)).await {
            // Not left behind by this test run either.
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            panic!("the step left processes behind: {e}");
        }
    }
}
