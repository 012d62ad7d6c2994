//! The swarm executor: one step attempt = a service created on the manager, watched until its
//! task has ended (or hm cancels), its end classified, and the service removed whatever
//! happened in between.

use std::sync::{Arc, OnceLock};

use bollard::Docker;
use hm_plugin_docker::daemon::Address;
use hm_plugin_docker::owner::Owner;
use hm_sdk::{
    Executor, InitInfo, LogLevel, OutputStream, StepContext, StepError, StepRequest, StepResult,
};

use crate::config::{PluginConfig, StepOptions};
use crate::service::{Ran, StepService};
use crate::{manager, spec, sweep, task};

/// What the plugin knows once it has started: its configuration, then the manager and the
/// run.
#[derive(Default)]
pub(crate) struct State {
    config: OnceLock<PluginConfig>,
    ready: tokio::sync::OnceCell<Ready>,
}

/// A manager that answered, and the run this plugin serves.
pub(crate) struct Ready {
    docker: Docker,
    owner: Owner,
}

impl State {
    /// `Init`: `[plugins.swarm].config`.
    pub(crate) fn configure(&self, info: &InitInfo) -> Result<(), String> {
        let config = PluginConfig::parse(&info.config)?;
        let _ = self.config.set(config);
        Ok(())
    }

    /// `Init`, once the configuration is accepted: the daemon must answer and be a swarm
    /// manager (else hm exits 4 with the address tried), and services of dead runs are swept.
    pub(crate) fn start(&self, info: &InitInfo) -> Result<(), String> {
        let address = self.address();
        let owner = Owner::current(&info.run_id);
        let (docker, swept) =
            hm_plugin_docker::daemon::block_on_fresh_runtime("the swarm manager", async {
                let docker = manager::connect(&address).await?;
                let swept = sweep::orphans(&docker, &owner.host).await;
                Ok((docker, swept))
            })?;
        match swept {
            Ok(0) => {}
            // The plugin's stderr is hm's diagnostics, never step output.
            Ok(swept) => eprintln!("swarm: removed {swept} service(s) left by runs that died"),
            Err(e) => eprintln!("swarm: {e}"),
        }
        let _ = self.ready.set(Ready { docker, owner });
        Ok(())
    }

    fn address(&self) -> Address {
        Address::resolve_for(
            crate::NAME,
            self.config.get().and_then(|c| c.host.as_deref()),
        )
    }

    /// The manager, connected at `Init`; or now, for a kernel that sends no `Init` (protocol 1).
    async fn ready(&self) -> Result<&Ready, StepError> {
        self.ready
            .get_or_try_init(|| async {
                let docker = manager::connect(&self.address())
                    .await
                    .map_err(StepError::Message)?;
                Ok(Ready {
                    docker,
                    owner: Owner::current(""),
                })
            })
            .await
    }
}

pub struct SwarmExecutor {
    pub(crate) state: Arc<State>,
}

impl Executor for SwarmExecutor {
    async fn execute(&self, step: StepRequest, ctx: StepContext) -> Result<StepResult, StepError> {
        let image = step.image.clone().ok_or_else(|| {
            StepError::Message(
                "the swarm executor runs a step in an image on a node of the swarm: set \
                 `image = \"...\"` on the step"
                    .into(),
            )
        })?;
        let options = StepOptions::parse(&step.with).map_err(StepError::Message)?;
        unsupported(&step)?;
        let ready = self.state.ready().await?;
        let name = spec::service_name(&ready.owner.run_id, &step.step, step.attempt);
        let definition = spec::definition(&step, &image, &ready.owner, &options, name);
        // Not raced with a cancel: a creation cut short could leave a service nobody knows
        // the ID of. A cancel that came meanwhile is seen at once by `run`.
        let service = StepService::create(&ready.docker, definition).await?;
        let ran = service.run(&step, &ctx).await;
        // Whatever happened, the service goes, before the step's end is reported.
        if let Err(e) = service.remove().await {
            let _ = ctx
                .line(
                    OutputStream::Stderr,
                    format!("hm: {e}; the next swarm step's start removes it"),
                )
                .await;
            let _ = ctx.flush().await;
            let _ = ctx.log(LogLevel::Warn, e);
        }
        match ran? {
            Ran::Cancelled => Ok(cancelled()),
            // How the step ended is unknown; `retry.on = ["node_lost"]` runs it again wherever
            // the manager places the new attempt.
            Ran::NodeLost { message } => Err(StepError::NodeLost(message)),
            Ran::Ended { ending, node } => task::verdict(
                &ending,
                &image,
                node.as_deref(),
                step.limits.memory_bytes.is_some(),
            ),
        }
    }
}

/// What the swarm executor cannot do yet fails the step before anything is created, rather
/// than running it without what it asked for.
fn unsupported(step: &StepRequest) -> Result<(), StepError> {
    let problem = if !step.artifacts.is_empty() {
        "the step lists `artifacts`, which are not carried from swarm tasks yet"
    } else if !step.caches.is_empty() {
        "the step has dependency caches (`cache`), which are not mounted on swarm nodes yet"
    } else if !step.services.is_empty() {
        "the step lists `services`, which swarm tasks cannot reach yet"
    } else {
        return Ok(());
    };
    Err(StepError::Message(format!(
        "{problem}: run it with the docker or shell executor (see docs/cluster.md)"
    )))
}

/// A step hm cancelled: its service is gone (or was never made).
fn cancelled() -> StepResult {
    StepResult {
        cancelled: true,
        ..StepResult::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn step() -> StepRequest {
        StepRequest {
            step: "remote".into(),
            attempt: 1,
            run: "true".into(),
            shell: vec!["sh".into(), "-e".into(), "-c".into()],
            dir: "/project".into(),
            env: Vec::new(),
            image: Some("busybox".into()),
            with: serde_json::Value::Null,
            grace: Duration::from_secs(10),
            cgroup_procs: Vec::new(),
            limits: Default::default(),
            artifacts: Vec::new(),
            artifact_limits: Default::default(),
            caches: Vec::new(),
            services: Vec::new(),
        }
    }

    fn problem(step: &StepRequest) -> Option<String> {
        unsupported(step).err().map(|e| e.to_string())
    }

    #[test]
    fn what_swarm_steps_cannot_have_yet_fails_them_saying_so() {
        assert_eq!(problem(&step()), None);
        let artifacts = StepRequest {
            artifacts: vec!["dist/**".into()],
            ..step()
        };
        let message = problem(&artifacts).unwrap_or_default();
        assert!(
            message.contains("`artifacts`, which are not carried from swarm tasks yet"),
            "{message}"
        );
        let services = StepRequest {
            services: vec!["db".into()],
            ..step()
        };
        let message = problem(&services).unwrap_or_default();
        assert!(message.contains("`services`"), "{message}");
        assert!(message.contains("docs/cluster.md"), "{message}");
    }
}
