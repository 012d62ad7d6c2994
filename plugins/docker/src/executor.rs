//! The docker executor: one step attempt = image ready, container created, `/workspace` filled,
//! run with its output streamed, its end classified, its outputs and artifacts handed to hm if
//! it passed, and the container removed whatever happened in between.

use std::sync::{Arc, OnceLock};

use bollard::Docker;
use hm_sdk::{
    Executor, InitInfo, LogLevel, OutputStream, StepContext, StepError, StepRequest, StepResult,
};

use crate::config::{PluginConfig, StepOptions};
use crate::container::{self, Container, Ended};
use crate::daemon::{self, Address};
use crate::owner::Owner;
use crate::{artifacts, image, outputs, service, sweep, workspace};

/// What the plugin knows once it has started: its configuration, then the daemon and the run;
/// and what its steps and services share in the run: the images pulled, the services running.
#[derive(Default)]
pub(crate) struct State {
    config: OnceLock<PluginConfig>,
    ready: tokio::sync::OnceCell<Ready>,
    pub(crate) pulls: image::Pulls,
    pub(crate) services: service::Registry,
}

/// A daemon that answered, and the run this plugin serves.
pub(crate) struct Ready {
    pub(crate) docker: Docker,
    pub(crate) owner: Owner,
}

impl State {
    /// `Init`: `[plugins.docker].config`.
    pub(crate) fn configure(&self, info: &InitInfo) -> Result<(), String> {
        let config = PluginConfig::parse(&info.config)?;
        let _ = self.config.set(config);
        Ok(())
    }

    /// `Init`, once the configuration is accepted: the daemon must answer (else hm exits 4
    /// with the address tried), and containers of dead runs are swept.
    pub(crate) fn start(&self, info: &InitInfo) -> Result<(), String> {
        let address = self.address();
        let owner = Owner::current(&info.run_id);
        let (docker, swept) = daemon::block_on_fresh_runtime("Docker", async {
            let docker = daemon::connect(&address).await.map_err(|e| e.to_string())?;
            let swept = sweep::orphans(&docker, &owner.host).await;
            Ok((docker, swept))
        })?;
        match swept {
            Ok(swept) if swept.is_empty() => {}
            // The plugin's stderr is hm's diagnostics, never step output.
            Ok(swept) => eprintln!("docker: removed {swept} left by runs that died"),
            Err(e) => eprintln!("docker: {e}"),
        }
        let _ = self.ready.set(Ready { docker, owner });
        Ok(())
    }

    fn address(&self) -> Address {
        Address::resolve(self.config.get().and_then(|c| c.host.as_deref()))
    }

    /// The daemon, connected at `Init`; or now, for a kernel that sends no `Init` (protocol 1).
    pub(crate) async fn ready(&self) -> Result<&Ready, StepError> {
        self.ready
            .get_or_try_init(|| async {
                let docker = daemon::connect(&self.address())
                    .await
                    .map_err(|e| StepError::Message(e.to_string()))?;
                Ok(Ready {
                    docker,
                    owner: Owner::current(""),
                })
            })
            .await
    }

    /// The daemon, if the plugin has reached it.
    pub(crate) fn connected(&self) -> Option<&Ready> {
        self.ready.get()
    }
}

pub struct DockerExecutor {
    pub(crate) state: Arc<State>,
}

impl Executor for DockerExecutor {
    async fn execute(&self, step: StepRequest, ctx: StepContext) -> Result<StepResult, StepError> {
        let Some(image) = step.image.clone() else {
            return Err(StepError::Message(
                "the docker executor runs a step in an image: set `image = \"...\"` on the step"
                    .into(),
            ));
        };
        let options = StepOptions::parse(&step.with).map_err(StepError::Message)?;
        let ready = self.state.ready().await?;
        let docker = &ready.docker;
        // A pull can take minutes: a cancel does not wait for it.
        let pull = image::ensure(docker, &self.state.pulls, &image, options.pull, Some(&ctx));
        tokio::select! {
            pulled = pull => pulled?,
            () = ctx.cancelled() => return Ok(result(Ended::before_start())),
        }
        crate::caches::ensure(docker, &step).await?;
        let mut definition =
            container::definition(&step, &image, &ready.owner, &workspace::working_dir(&step));
        service::join(&self.state, &step, &mut definition).await?;
        let name = (!ready.owner.run_id.is_empty())
            .then(|| format!("hm-{}-{}-{}", ready.owner.run_id, step.step, step.attempt));
        let container = Container::create(docker, name, definition).await?;
        let ended = run(docker, &container, &step, &ctx).await;
        // Whatever happened, the container goes, before the step's end is reported.
        if let Err(e) = container.remove().await {
            let _ = ctx
                .line(
                    OutputStream::Stderr,
                    format!("hm: {e}; the next docker step's start removes it"),
                )
                .await;
            let _ = ctx.log(LogLevel::Warn, e);
        }
        let ended = ended?;
        if ended.out_of_memory() {
            return Err(StepError::OutOfMemory(result(ended)));
        }
        Ok(result(ended))
    }
}

/// Fills `/workspace` and runs the container; a cancel while the workspace is uploaded ends it
/// before it starts. A step that passed has its outputs and artifacts handed to hm before
/// this returns, so before the container goes and the step answers.
async fn run(
    docker: &Docker,
    container: &Container,
    step: &StepRequest,
    ctx: &StepContext,
) -> Result<Ended, StepError> {
    tokio::select! {
        uploaded = workspace::upload(docker, container.id(), step, ctx) => uploaded?,
        () = ctx.cancelled() => return Ok(Ended::before_start()),
    }
    let ended = container.run(step, ctx).await?;
    if ended.exit_code != Some(0) || ended.cancelled {
        return Ok(ended);
    }
    // Artifacts can be large: a cancel does not wait for them.
    tokio::select! {
        handed = hand_over(docker, container.id(), step, ctx) => handed?,
        () = ctx.cancelled() => return Ok(Ended { cancelled: true, ..ended }),
    }
    Ok(ended)
}

/// What a passed step leaves for hm: its outputs, then its artifacts.
async fn hand_over(
    docker: &Docker,
    id: &str,
    step: &StepRequest,
    ctx: &StepContext,
) -> Result<(), StepError> {
    if let Some(host_file) = step.output_file() {
        outputs::copy_back(docker, id, host_file).await?;
    }
    artifacts::send(docker, id, step, ctx).await
}

impl Ended {
    fn before_start() -> Self {
        Self {
            exit_code: None,
            oom_killed: false,
            cancelled: true,
            usage: Default::default(),
            memory_limit: None,
        }
    }

    /// Out of memory only when the main process was killed (137) *and* the OOM killer
    /// acted: the daemon says so, or the container's memory use reached its limit. A step
    /// whose child was OOM-killed but which went on and exited on its own ended by its own
    /// exit code.
    fn out_of_memory(&self) -> bool {
        self.exit_code == Some(137)
            && (self.oom_killed || self.filled_its_memory())
            && !self.cancelled
    }
}

fn result(ended: Ended) -> StepResult {
    let measured = StepResult {
        peak_memory_bytes: ended.usage.peak_memory_bytes,
        cpu_ms: ended.usage.cpu_ms,
        ..StepResult::default()
    };
    if ended.out_of_memory() {
        // Killed by the OOM killer's SIGKILL, as a shell step's process would be.
        return StepResult {
            signal: Some(9),
            ..measured
        };
    }
    StepResult {
        exit_code: ended.exit_code.map(|c| c as i32),
        cancelled: ended.cancelled,
        ..measured
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Usage;

    fn ended(exit_code: i64, oom_killed: bool, cancelled: bool) -> Ended {
        Ended {
            exit_code: Some(exit_code),
            oom_killed,
            cancelled,
            usage: Usage::default(),
            memory_limit: None,
        }
    }

    #[test]
    fn oom_needs_both_137_and_the_daemons_word() {
        assert!(ended(137, true, false).out_of_memory());
        assert!(!ended(137, false, false).out_of_memory());
        assert!(!ended(0, true, false).out_of_memory());
        assert!(!ended(1, true, false).out_of_memory());
        assert!(!ended(137, true, true).out_of_memory());
        // Memory use at the limit is the OOM killer's doing before the daemon says so.
        let filled = |peak: u64| Ended {
            usage: Usage {
                peak_memory_bytes: Some(peak),
                cpu_ms: None,
            },
            memory_limit: Some(32 << 20),
            ..ended(137, false, false)
        };
        assert!(filled(32 << 20).out_of_memory());
        assert!(!filled(31 << 20).out_of_memory());
        assert!(
            !Ended {
                exit_code: Some(0),
                ..filled(32 << 20)
            }
            .out_of_memory()
        );
        assert_eq!(result(ended(137, true, false)).signal, Some(9));
        assert_eq!(result(ended(3, false, false)).exit_code, Some(3));
        assert!(result(ended(137, false, true)).cancelled);
    }

    #[test]
    fn the_containers_usage_is_the_steps_also_when_out_of_memory() {
        let usage = Usage {
            peak_memory_bytes: Some(64 << 20),
            cpu_ms: Some(1500),
        };
        for (exit_code, oom_killed) in [(0, false), (137, true)] {
            let result = result(Ended {
                usage,
                ..ended(exit_code, oom_killed, false)
            });
            assert_eq!(
                (result.peak_memory_bytes, result.cpu_ms),
                (Some(64 << 20), Some(1500))
            );
        }
    }
}
