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
use crate::files::{self, FileServer, Received, Registered};
use crate::service::{Ran, StepService};
use crate::services::Registry;
use crate::spec::Launch;
use crate::task::Ending;
use crate::{manager, prelude, spec, sweep, task};
use hm_plugin_docker::network;

/// What the plugin knows once it has started: its configuration, then the manager and the
/// run.
#[derive(Default)]
pub(crate) struct State {
    config: OnceLock<PluginConfig>,
    ready: tokio::sync::OnceCell<Ready>,
    /// The run's services on the swarm, and their network.
    pub(crate) services: Registry,
}

/// A manager that answered, the run this plugin serves, and the server of its tasks' files.
pub(crate) struct Ready {
    pub(crate) docker: Docker,
    pub(crate) owner: Owner,
    files: FileServer,
}

impl State {
    /// `Init`: `[plugins.swarm].config`.
    pub(crate) fn configure(&self, info: &InitInfo) -> Result<(), String> {
        let config = PluginConfig::parse(&info.config)?;
        let _ = self.config.set(config);
        Ok(())
    }

    /// `Init`, once the configuration is accepted: the daemon must answer and be a swarm
    /// manager, and the file server must have its address (else hm exits 4 saying what was
    /// tried), and services of dead runs are swept.
    pub(crate) fn start(&self, info: &InitInfo) -> Result<(), String> {
        let address = self.address();
        let owner = Owner::current(&info.run_id);
        let (docker, node_addr, swept) =
            hm_plugin_docker::daemon::block_on_fresh_runtime("the swarm manager", async {
                let (docker, node_addr) = manager::connect(&address).await?;
                let swept = sweep::orphans(&docker, &owner.host).await;
                Ok((docker, node_addr, swept))
            })?;
        let files = self.file_server(&address, node_addr.as_deref())?;
        match swept {
            Ok(0) => {}
            // The plugin's stderr is hm's diagnostics, never step output.
            Ok(swept) => eprintln!("swarm: removed {swept} service(s) left by runs that died"),
            Err(e) => eprintln!("swarm: {e}"),
        }
        let _ = self.ready.set(Ready {
            docker,
            owner,
            files,
        });
        Ok(())
    }

    /// The file server, on `[plugins.swarm].config.serve` or an address found for it.
    fn file_server(
        &self,
        manager: &Address,
        node_addr: Option<&str>,
    ) -> Result<FileServer, String> {
        let configured = self.config.get().and_then(|c| c.serve);
        let (address, why) = files::choose_address(configured, &manager.url, node_addr)?;
        FileServer::bind(address, why)
    }

    fn address(&self) -> Address {
        Address::resolve_for(
            crate::NAME,
            self.config.get().and_then(|c| c.host.as_deref()),
        )
    }

    /// The manager, connected at `Init`; or now, for a kernel that sends no `Init` (protocol 1).
    pub(crate) async fn ready(&self) -> Result<&Ready, StepError> {
        self.ready
            .get_or_try_init(|| async {
                let address = self.address();
                let (docker, node_addr) = manager::connect(&address)
                    .await
                    .map_err(StepError::Message)?;
                let files = self
                    .file_server(&address, node_addr.as_deref())
                    .map_err(StepError::Message)?;
                Ok(Ready {
                    docker,
                    owner: Owner::current(""),
                    files,
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
        let ready = self.state.ready().await?;
        let files = ready.files.register(&step, &ctx).await?;
        let mut env = prelude::env(&step, &files);
        let mut networks = Vec::new();
        if !step.services.is_empty() {
            // hm starts the services a step lists before the step: their network is there.
            let network = self.state.services.network().await.ok_or_else(|| {
                StepError::Message(
                    "the step lists services, but none of them runs on the swarm".into(),
                )
            })?;
            networks.push(network);
            // `HM_SERVICE_<NAME>_HOST` is the service's name on the network.
            network::rewrite_env(&mut env, &step.services);
        }
        let launch = Launch {
            command: prelude::command(&step),
            env,
            networks,
        };
        let name = spec::service_name(&ready.owner.run_id, &step.step, step.attempt);
        let definition = spec::definition(&step, &image, &ready.owner, &options, name, launch);
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
            Ran::Ended { ending, node } => {
                if !files.started()
                    && matches!(
                        ending,
                        Ending::Exited {
                            code: prelude::NOT_STARTED,
                            ..
                        }
                    )
                {
                    return Err(StepError::Message(format!(
                        "the step's task{} could not start the step: its log says why (the \
                         lines starting `hm: `)",
                        node.as_deref()
                            .map(|n| format!(" on node {n}"))
                            .unwrap_or_default()
                    )));
                }
                let result = task::verdict(
                    &ending,
                    &image,
                    node.as_deref(),
                    step.limits.memory_bytes.is_some(),
                )?;
                if result.exit_code == Some(0) {
                    deliver(&files, &step, &ctx).await?;
                }
                Ok(result)
            }
        }
    }
}

/// A passed step's outputs and artifacts, as its task sent them, handed to hm: the outputs
/// into hm's `$HM_OUTPUT` file, the artifacts as a tar (or the limit they passed). What the
/// task did not send fails the step: hm must never take the files on its own machine for
/// the step's.
async fn deliver(
    files: &Registered,
    step: &StepRequest,
    ctx: &StepContext,
) -> Result<(), StepError> {
    if let Some(host_file) = step.output_file() {
        let outputs = files.take_outputs().ok_or_else(|| {
            StepError::Message(
                "the step passed, but its task did not send its outputs ($HM_OUTPUT) to hm: \
                 its log says why (the lines starting `hm: `)"
                    .into(),
            )
        })?;
        tokio::fs::write(host_file, outputs).await.map_err(|e| {
            StepError::Message(format!(
                "cannot write the step's outputs to {}: {e}",
                host_file.display()
            ))
        })?;
    }
    match files.take_artifacts() {
        None => Ok(()),
        Some(Ok(Received::Tar(tar))) => ctx.put_artifacts(tar).await,
        Some(Ok(Received::Problem(problem))) => ctx.artifacts_problem(problem).await,
        Some(Err(e)) => Err(StepError::Message(format!(
            "the step passed, but its artifacts did not reach hm ({e}): its log says why (the \
             lines starting `hm: `)"
        ))),
    }
}

/// A step hm cancelled: its service is gone (or was never made).
fn cancelled() -> StepResult {
    StepResult {
        cancelled: true,
        ..StepResult::default()
    }
}
