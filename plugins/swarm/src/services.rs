//! Services on the swarm (`[services.NAME]` with `executor = "swarm"`): each a swarm service
//! of one replica on the run's overlay network (`hm-<run id>-<n>`, made by the first service
//! and removed after the last; a later service makes the next), reached there under the
//! service's name by the swarm steps that list it. Up once its task runs, which for a service with a health command is once the
//! command has passed inside it: the node's agent holds the task in `starting` until the
//! container's health check says healthy, and fails it when the check says unhealthy.
//!
//! hm starts services concurrently and may stop one while it is still starting (a cancelled
//! run); the [`Registry`] keeps that orderly as the docker plugin's does: a stop cancels a
//! start and waits for it, and the network goes only once no service is left.

use std::collections::HashMap;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{
    HealthConfig, NetworkAttachmentConfig, NetworkCreateRequest, ServiceSpec, TaskSpecContainerSpec,
};
use bollard::query_parameters::{ListTasksOptions, LogsOptions};
use futures_util::StreamExt;
use hm_plugin_docker::daemon::{describe, is_status};
use hm_plugin_docker::owner::Owner;
use hm_plugin_docker::service::{LOG_LINES, lines};
use hm_sdk::{PublishedPort, ServiceError, ServiceRequest, Services};
use std::sync::Arc;
use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio_util::sync::CancellationToken;

use crate::config::StepOptions;
use crate::executor::{Ready, State};
use crate::spec;
use crate::task::{self, Ending, Phase};

/// How often a starting service's task is asked about.
const POLL: Duration = Duration::from_millis(250);
/// How long the run's network may take to go once its last service is removed: the nodes
/// detach the tasks' endpoints once the tasks have stopped (their grace, and a second or so).
const NETWORK_GRACE: Duration = Duration::from_secs(15);

pub struct SwarmServices {
    pub(crate) state: Arc<State>,
}

/// The run's services on the swarm, and their network while any is there.
#[derive(Default)]
pub(crate) struct Registry {
    run: Mutex<RunServices>,
}

#[derive(Default)]
struct RunServices {
    /// The network's ID, from the first start until the last service has gone.
    network: Option<String>,
    /// How many networks the run has made: each is `hm-<run id>-<n>`, as the last one may
    /// still be on its way out (the nodes let go of it seconds after its services are gone)
    /// when a later service makes the next, and a swarm refuses two of one name.
    networks_made: u32,
    services: HashMap<String, Entry>,
}

struct Entry {
    /// The swarm service's ID, once created.
    id: Option<String>,
    grace: Duration,
    /// Cancelled by a stop that comes while the service is starting.
    stop: CancellationToken,
    /// Held by its start until it has answered: a stop waits for it.
    starting: Arc<Mutex<()>>,
}

impl Registry {
    /// The run's network, while a service is on it.
    pub(crate) async fn network(&self) -> Option<String> {
        self.run.lock().await.network.clone()
    }

    async fn enter(
        &self,
        ready: &Ready,
        service: &ServiceRequest,
    ) -> Result<(String, CancellationToken, OwnedMutexGuard<()>), ServiceError> {
        let mut run = self.run.lock().await;
        if run.services.contains_key(&service.name) {
            return Err(failed(format!(
                "service {:?} is already started in this run",
                service.name
            )));
        }
        let network = match &run.network {
            Some(id) => id.clone(),
            None => {
                run.networks_made += 1;
                let id = create_network(&ready.docker, &ready.owner, run.networks_made)
                    .await
                    .map_err(failed)?;
                run.network = Some(id.clone());
                id
            }
        };
        let starting = Arc::new(Mutex::new(()));
        let hold = starting.clone().lock_owned().await;
        let stop = CancellationToken::new();
        run.services.insert(
            service.name.clone(),
            Entry {
                id: None,
                grace: service.grace,
                stop: stop.clone(),
                starting,
            },
        );
        Ok((network, stop, hold))
    }

    async fn created(&self, name: &str, id: &str) {
        if let Some(entry) = self.run.lock().await.services.get_mut(name) {
            entry.id = Some(id.to_owned());
        }
    }

    /// Takes service `name` out: its swarm service is removed, and the network once it was
    /// the last.
    async fn leave(&self, docker: &Docker, name: &str) -> Result<(), String> {
        let (entry, network) = {
            let mut run = self.run.lock().await;
            let entry = run.services.remove(name);
            let network = if run.services.is_empty() {
                run.network.take()
            } else {
                None
            };
            (entry, network)
        };
        let mut result = Ok(());
        let mut grace = Duration::ZERO;
        if let Some(Entry {
            id: Some(id),
            grace: g,
            ..
        }) = entry
        {
            grace = g;
            result = crate::service::remove(docker, &id).await;
        }
        if let Some(network) = network {
            let removed = remove_network(docker, &network, grace + NETWORK_GRACE).await;
            result = result.and(removed);
        }
        result
    }
}

impl Services for SwarmServices {
    async fn start(&self, service: ServiceRequest) -> Result<Vec<PublishedPort>, ServiceError> {
        let ready = self
            .state
            .ready()
            .await
            .map_err(|e| failed(e.to_string()))?;
        let options = StepOptions::parse(&service.with).map_err(failed)?;
        let registry = &self.state.services;
        let (network, stop, hold) = registry.enter(ready, &service).await?;
        let spec = definition(&service, &ready.owner, &options, &network);
        let started = async {
            let created = ready.docker.create_service(spec, None).await.map_err(|e| {
                failed(format!(
                    "cannot create the swarm service for service {}: {}",
                    service.name,
                    describe(&e)
                ))
            })?;
            let id = created.id.unwrap_or_default();
            registry.created(&service.name, &id).await;
            until_up(&ready.docker, &id, &service).await
        };
        let outcome = tokio::select! {
            outcome = started => outcome,
            () = stop.cancelled() => Err(failed(format!(
                "service {} was stopped while it was starting",
                service.name
            ))),
        };
        if outcome.is_err() {
            // Its stop, if one came, waits for this: the service is gone when it answers.
            let _ = registry.leave(&ready.docker, &service.name).await;
        }
        drop(hold);
        outcome?;
        // Steps on the swarm reach it by name, at its own ports.
        Ok(service
            .ports
            .iter()
            .map(|&port| PublishedPort {
                port,
                host: service.name.clone(),
                host_port: port,
            })
            .collect())
    }

    async fn stop(&self, name: String) -> Result<(), String> {
        let ready = self.state.ready().await.map_err(|e| e.to_string())?;
        let registry = &self.state.services;
        let starting = {
            let run = registry.run.lock().await;
            run.services.get(&name).map(|entry| {
                entry.stop.cancel();
                entry.starting.clone()
            })
        };
        let Some(starting) = starting else {
            return Ok(());
        };
        // A start being cancelled cleans up after itself first.
        drop(starting.lock().await);
        registry.leave(&ready.docker, &name).await
    }
}

/// Polls service `id`'s task until it runs (healthy, if it has a health command), or ends.
async fn until_up(docker: &Docker, id: &str, service: &ServiceRequest) -> Result<(), ServiceError> {
    let mut poll = tokio::time::interval(POLL);
    loop {
        poll.tick().await;
        let options = ListTasksOptions {
            filters: Some([("service".to_owned(), vec![id.to_owned()])].into()),
        };
        let tasks = match docker.list_tasks(Some(options)).await {
            Ok(tasks) => tasks,
            Err(e) if is_status(&e, 404) => {
                return Err(failed(format!(
                    "the swarm service of service {} was removed by someone else",
                    service.name
                )));
            }
            // The manager busy (a leader election): asked again at the next poll.
            Err(_) => continue,
        };
        match task::phase(task::current(&tasks)) {
            Phase::Running { .. } => return Ok(()),
            Phase::Waiting { .. } | Phase::Starting { .. } => {}
            Phase::Ended(ending) => return Err(ended(docker, id, service, &ending).await),
        }
    }
}

/// Why a service whose task ended is not up, with its last lines of output.
async fn ended(
    docker: &Docker,
    id: &str,
    service: &ServiceRequest,
    ending: &Ending,
) -> ServiceError {
    let name = &service.name;
    let message = match ending {
        Ending::Rejected { reason, .. } if task::image_missing(reason) => {
            return ServiceError::Image(format!(
                "image {} of service {name} is not available on the node the swarm chose: \
                 {reason}\n  hint: every node that may run the service needs the image: push \
                 it to a registry the nodes can pull from, or load it on each node",
                service.image
            ));
        }
        Ending::Rejected { reason, .. } => {
            format!("the swarm rejected service {name}'s task: {reason}")
        }
        // The node stops a task whose health check says unhealthy (SIGTERM, then SIGKILL
        // after the grace): with a health command, any end before the task ran is that.
        Ending::Exited { code, .. } if service.health.is_some() => {
            format!("service {name} never became healthy: it was stopped with exit code {code}")
        }
        Ending::Exited { code, .. } => format!("service {name} exited with code {code}"),
        Ending::Stopped { reason, .. } if service.health.is_some() => {
            format!("service {name} never became healthy (its task: {reason})")
        }
        Ending::Stopped { state, reason } => {
            format!("service {name}'s task ended ({state}: {reason})")
        }
    };
    ServiceError::Failed {
        message,
        log: last_lines(docker, id).await,
    }
}

/// The service's last lines of output, as far as the nodes answer within a few seconds.
async fn last_lines(docker: &Docker, id: &str) -> Vec<String> {
    let options = LogsOptions {
        stdout: true,
        stderr: true,
        tail: LOG_LINES.to_string(),
        ..Default::default()
    };
    let mut output = Vec::new();
    let read = async {
        let mut logs = docker.service_logs(id, Some(options));
        while let Some(Ok(chunk)) = logs.next().await {
            if let LogOutput::StdOut { message } | LogOutput::StdErr { message } = chunk {
                output.extend_from_slice(&message);
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    lines(&output)
}

/// The swarm service running `service`: one replica never restarted, on the run's network
/// under the service's name (an alias: the swarm service's own name is the run's), its health
/// command as the container's health check, its limits as the task's limits and reservations.
fn definition(
    service: &ServiceRequest,
    owner: &Owner,
    options: &StepOptions,
    network: &str,
) -> ServiceSpec {
    let labels = owner.service_labels(&service.name);
    let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    let health_check = service.health.as_ref().map(|health| HealthConfig {
        test: Some(
            std::iter::once("CMD".to_owned())
                .chain(health.command.iter().cloned())
                .collect(),
        ),
        interval: Some(nanos(health.interval)),
        timeout: Some(nanos(health.timeout)),
        retries: Some(i64::from(health.retries.max(1))),
        start_period: None,
        start_interval: None,
    });
    let container = TaskSpecContainerSpec {
        image: Some(service.image.clone()),
        hostname: Some(service.name.clone()),
        // The swarm's `command` is the entrypoint, and its `args` the command.
        command: service.entrypoint.clone(),
        args: service.command.clone(),
        env: Some(
            service
                .env
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect(),
        ),
        labels: Some(labels.clone()),
        health_check,
        stop_grace_period: Some(nanos(service.grace)),
        ..Default::default()
    };
    let name = spec::service_name(&owner.run_id, &format!("service-{}", service.name), 1);
    let network = NetworkAttachmentConfig {
        target: Some(network.to_owned()),
        aliases: Some(vec![service.name.clone()]),
        ..Default::default()
    };
    spec::one_task(
        name,
        labels,
        container,
        &service.limits,
        options,
        vec![network],
    )
}

/// The run's `n`th overlay network, `hm-<run id>-<n>`, labelled like everything of the run;
/// its ID.
async fn create_network(docker: &Docker, owner: &Owner, n: u32) -> Result<String, String> {
    let name = format!("hm-{}-{n}", owner.run_id);
    let request = NetworkCreateRequest {
        name: name.clone(),
        driver: Some("overlay".to_owned()),
        labels: Some(owner.run_labels()),
        ..Default::default()
    };
    docker
        .create_network(request)
        .await
        .map(|created| created.id)
        .map_err(|e| {
            format!(
                "cannot create the overlay network {name} for the run's services: {}",
                describe(&e)
            )
        })
}

/// Removes network `id`, waiting up to `within` for the nodes to detach the endpoints of the
/// tasks that were on it; one the manager no longer has counts as removed.
pub(crate) async fn remove_network(
    docker: &Docker,
    id: &str,
    within: Duration,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match docker.remove_network(id).await {
            Ok(()) => return Ok(()),
            Err(e) if is_status(&e, 404) => return Ok(()),
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(POLL).await;
            }
            Err(e) => {
                return Err(format!(
                    "cannot remove the services' network {id}: {}",
                    describe(&e)
                ));
            }
        }
    }
}

fn failed(message: impl Into<String>) -> ServiceError {
    ServiceError::Failed {
        message: message.into(),
        log: Vec::new(),
    }
}
