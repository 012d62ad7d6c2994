//! Services (`[services.NAME]`, protocol 8): a container per service on the run's network
//! ([`network`]), under the service's name, its ports published on the host's loopback; up
//! once its health command passes inside it; stopped with its grace and removed with its
//! volumes when hm says, and the network with the last of them.
//!
//! hm starts services concurrently and may stop one while it is still starting (a cancelled
//! run). The `Registry` is what keeps that orderly: it holds every service from the start of
//! its start until its container is gone, a stop waits for a start it interrupts, and the
//! network is made by the first start and removed only once no service is registered and no
//! container is still being removed (a network with a container on it cannot go).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, EndpointSettings, NetworkingConfig, PortBinding,
    PortMap,
};
use bollard::query_parameters::{
    CreateContainerOptions, LogsOptions, StopContainerOptions, WaitContainerOptions,
};
use futures_util::StreamExt;
use hm_sdk::{
    HealthCheck, PublishedPort, ServiceError, ServiceRequest, Services, StepError, StepRequest,
};
use tokio::sync::{Mutex, OwnedMutexGuard};
use tokio_util::sync::CancellationToken;

use crate::config::StepOptions;
use crate::daemon::{describe, is_status};
use crate::executor::{Ready, State};
use crate::{container, image, network};

/// Where services' ports are published: steps on the host reach them there, and nothing
/// beyond the machine does.
pub const LOOPBACK: &str = "127.0.0.1";
/// How many of a failed service's last lines of output hm shows.
pub const LOG_LINES: usize = 20;
/// The longest line of a failed service's output shown; the rest is cut.
const MAX_LOG_LINE: usize = 4096;
/// How often to ask whether a health command whose output has ended has also exited.
const EXEC_POLL: Duration = Duration::from_millis(20);

/// The docker plugin's services: the plugin's shared state, whose `Registry` the executor
/// also asks for the network.
pub struct DockerServices {
    pub(crate) state: Arc<State>,
}

/// The run's services, and their network while any is there.
#[derive(Default)]
pub(crate) struct Registry {
    run: Mutex<RunServices>,
}

#[derive(Default)]
struct RunServices {
    /// The network's ID, from the first start until the last service has gone.
    network: Option<String>,
    services: HashMap<String, Entry>,
    /// Containers of services taken out of `services` whose removal has not finished: the
    /// network waits for them.
    leaving: usize,
}

/// One service, from the start of its start until a stop or a failure takes it out.
struct Entry {
    /// Set once the container is created.
    container: Option<String>,
    /// How long its stop may take before it is killed.
    grace: Duration,
    /// Cancelled by a stop that comes while the service is starting.
    stop: CancellationToken,
    /// Held by its start until it has answered, having cleaned up after a failure: a stop
    /// waits for it.
    starting: Arc<Mutex<()>>,
}

impl Registry {
    /// The ID of the services' network, while a service runs.
    pub(crate) async fn network(&self) -> Option<String> {
        self.run.lock().await.network.clone()
    }

    /// Registers service `service` as starting, creating the network if it is the first;
    /// returns the network's ID, the token a stop cancels, and the start's hold.
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
        // Under the lock: concurrent first starts make one network.
        let network = match &run.network {
            Some(id) => id.clone(),
            None => {
                let id = network::create(&ready.docker, &ready.owner)
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
                container: None,
                grace: service.grace,
                stop: stop.clone(),
                starting,
            },
        );
        Ok((network, stop, hold))
    }

    /// Records the container of service `name`, so that whoever takes it out removes it.
    async fn created(&self, name: &str, id: &str) {
        if let Some(entry) = self.run.lock().await.services.get_mut(name) {
            entry.container = Some(id.to_owned());
        }
    }

    /// Takes out service `name`, whose start (holding `starting`) failed: its container is
    /// removed at once.
    async fn abandon(
        &self,
        docker: &Docker,
        name: &str,
        starting: &Arc<Mutex<()>>,
    ) -> Result<(), String> {
        let entry = self.take(name, starting).await;
        let removed = match entry.and_then(|e| e.container) {
            Some(id) => container::remove(docker, &id).await,
            None => Ok(()),
        };
        let released = self.release(docker).await;
        removed.and(released)
    }

    /// Stops service `name` (SIGTERM, SIGKILL after its grace) and removes it with its volumes,
    /// and the network once no service is left. A start under way is cancelled and waited for.
    async fn stop(&self, docker: &Docker, name: &str) -> Result<(), String> {
        let (stop, starting) = {
            let run = self.run.lock().await;
            match run.services.get(name) {
                Some(entry) => (entry.stop.clone(), entry.starting.clone()),
                // Never started, or already gone (its start failed).
                None => return Ok(()),
            }
        };
        stop.cancel();
        // A start that was cancelled has taken itself out by the time it lets go.
        let _started = starting.lock().await;
        let Some(entry) = self.take(name, &starting).await else {
            return Ok(());
        };
        let removed = match &entry.container {
            Some(id) => stop_and_remove(docker, id, entry.grace).await,
            None => Ok(()),
        };
        let released = self.release(docker).await;
        removed.and(released)
    }

    /// Takes service `name` out, counting its container as leaving until [`Self::release`]; only
    /// the one whose start held `starting`, not a later start's of the same name.
    async fn take(&self, name: &str, starting: &Arc<Mutex<()>>) -> Option<Entry> {
        let mut run = self.run.lock().await;
        let same = run
            .services
            .get(name)
            .is_some_and(|e| Arc::ptr_eq(starting, &e.starting));
        if !same {
            return None;
        }
        run.leaving += 1;
        run.services.remove(name)
    }

    /// One leaving container is gone; removes the network if it was the last thing on it.
    async fn release(&self, docker: &Docker) -> Result<(), String> {
        let mut run = self.run.lock().await;
        run.leaving = run.leaving.saturating_sub(1);
        if !run.services.is_empty() || run.leaving > 0 {
            return Ok(());
        }
        let Some(id) = run.network.take() else {
            return Ok(());
        };
        // Under the lock: a start that comes meanwhile makes a new network after this one went.
        let removed = network::remove(docker, &id).await;
        if removed.is_err() {
            // Still there: the next start uses it, the next release tries again, and the sweep
            // removes it after the run.
            run.network = Some(id);
        }
        removed
    }
}

impl Services for DockerServices {
    async fn start(&self, service: ServiceRequest) -> Result<Vec<PublishedPort>, ServiceError> {
        let ready = self
            .state
            .ready()
            .await
            .map_err(|e| failed(e.to_string()))?;
        let options = StepOptions::parse(&service.with)
            .map_err(|e| failed(format!("service {:?}: {e}", service.name)))?;
        let registry = &self.state.services;
        let (network, stop, hold) = registry.enter(ready, &service).await?;
        let up = bring_up(&self.state, ready, &service, options, &network, &stop).await;
        if up.is_err() {
            // The start answers after its container is gone; what cannot be removed now is
            // swept at the next plugin start.
            let starting = OwnedMutexGuard::mutex(&hold);
            if let Err(e) = registry
                .abandon(&ready.docker, &service.name, starting)
                .await
            {
                eprintln!("docker: {e}");
            }
        }
        drop(hold);
        up
    }

    async fn stop(&self, name: String) -> Result<(), String> {
        // A plugin that never reached the daemon started nothing.
        let Some(ready) = self.state.connected() else {
            return Ok(());
        };
        self.state.services.stop(&ready.docker, &name).await
    }
}

/// Image, container, start, published ports, health: the service up, or why not (its
/// container, if any, is left for the caller to remove). `stop` ends the pull and the wait
/// for health, the slow parts, but never comes between the container's creation and its
/// record in the registry, without which nobody would remove it.
async fn bring_up(
    state: &State,
    ready: &Ready,
    service: &ServiceRequest,
    options: StepOptions,
    network: &str,
    stop: &CancellationToken,
) -> Result<Vec<PublishedPort>, ServiceError> {
    let docker = &ready.docker;
    let name = &service.name;
    let stopped = || failed(format!("service {name:?} was stopped before it was up"));
    // The pull's progress has no step log to go to.
    let pull = image::ensure(docker, &state.pulls, &service.image, options.pull, None);
    tokio::select! {
        biased;
        () = stop.cancelled() => return Err(stopped()),
        pulled = pull => pulled?,
    }
    let create = CreateContainerOptions {
        name: Some(format!("{}-svc-{name}", network::name(&ready.owner))),
        ..Default::default()
    };
    let id = docker
        .create_container(Some(create), definition(service, ready, network))
        .await
        .map_err(|e| {
            failed(format!(
                "cannot create the container of service {name:?}: {}",
                describe(&e)
            ))
        })?
        .id;
    state.services.created(name, &id).await;
    if let Err(e) = docker.start_container(&id, None).await {
        return Err(ServiceError::Failed {
            message: format!("cannot start service {name:?}: {}", describe(&e)),
            log: last_lines(docker, &id).await,
        });
    }
    let inspected = inspect(docker, &id).await?;
    if let Some(code) = exit_code_if_stopped(&inspected) {
        return Err(down(docker, &id, service, Down::Exited { code }).await);
    }
    let ports = inspected
        .network_settings
        .and_then(|settings| settings.ports);
    let published = published(&service.ports, ports.as_ref())
        .map_err(|e| failed(format!("service {name:?}: {e}")))?;
    if let Some(health) = &service.health {
        let healthy = tokio::select! {
            biased;
            () = stop.cancelled() => return Err(stopped()),
            healthy = until_healthy(docker, &id, health) => healthy,
        };
        if let Err(why) = healthy {
            return Err(down(docker, &id, service, why).await);
        }
    }
    Ok(published)
}

/// The failure of a service whose container `id` started: why, and its last lines.
async fn down(docker: &Docker, id: &str, service: &ServiceRequest, why: Down) -> ServiceError {
    ServiceError::Failed {
        message: why.message(&service.name, service.health.is_some()),
        log: last_lines(docker, id).await,
    }
}

/// The service's container: its image with its entrypoint and command as the service says,
/// its environment, limits and labels, on the run's network as `name` (also its host name),
/// its ports published on the loopback at ports the daemon picks, its output kept by the
/// daemon's default log driver so that its last lines can be read when it fails.
fn definition(service: &ServiceRequest, ready: &Ready, network: &str) -> ContainerCreateBody {
    let port_keys: Vec<String> = service.ports.iter().map(|p| port_key(*p)).collect();
    let bindings: PortMap = port_keys
        .iter()
        .map(|key| {
            let binding = PortBinding {
                host_ip: Some(LOOPBACK.to_owned()),
                // Empty: any free port, read back once it runs.
                host_port: Some(String::new()),
            };
            (key.clone(), Some(vec![binding]))
        })
        .collect();
    let host_config = bollard::models::HostConfig {
        network_mode: Some(network.to_owned()),
        port_bindings: Some(bindings).filter(|b| !b.is_empty()),
        ..container::limited(&service.limits)
    };
    let endpoint = EndpointSettings {
        aliases: Some(vec![service.name.clone()]),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(service.image.clone()),
        hostname: Some(service.name.clone()),
        entrypoint: service.entrypoint.clone(),
        cmd: service.command.clone(),
        env: Some(
            service
                .env
                .iter()
                .map(|(name, value)| format!("{name}={value}"))
                .collect(),
        ),
        labels: Some(ready.owner.service_labels(&service.name)),
        exposed_ports: Some(port_keys).filter(|p| !p.is_empty()),
        host_config: Some(host_config),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(HashMap::from([(network.to_owned(), endpoint)])),
        }),
        ..Default::default()
    }
}

/// `8080/tcp`, as the Engine keys ports.
fn port_key(port: u16) -> String {
    format!("{port}/tcp")
}

/// Where each of `ports` is published on the loopback, from the container's
/// `NetworkSettings.Ports`.
fn published(ports: &[u16], map: Option<&PortMap>) -> Result<Vec<PublishedPort>, String> {
    ports
        .iter()
        .map(|&port| {
            let bindings = map
                .and_then(|m| m.get(&port_key(port)))
                .and_then(Option::as_ref)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let host_port = bindings
                .iter()
                .filter(|b| b.host_ip.as_deref() == Some(LOOPBACK))
                .find_map(|b| b.host_port.as_deref()?.parse::<u16>().ok())
                .ok_or_else(|| format!("the daemon did not publish port {port} on {LOOPBACK}"))?;
            Ok(PublishedPort {
                port,
                host: LOOPBACK.to_owned(),
                host_port,
            })
        })
        .collect()
}

/// Why a service that started is not up.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Down {
    /// Its main process ended.
    Exited { code: i64 },
    /// Its health command never passed.
    Unhealthy {
        tries: u32,
        interval: Duration,
        /// How the last try ended: `exit code 1`, `timed out after 10s`, or what went wrong.
        last: String,
    },
}

impl Down {
    fn message(&self, name: &str, has_health: bool) -> String {
        match self {
            Down::Exited { code } if has_health => {
                format!("service {name:?} exited with code {code} before it became healthy")
            }
            Down::Exited { code } => {
                format!("service {name:?} exited with code {code} as soon as it started")
            }
            Down::Unhealthy {
                tries,
                interval,
                last,
            } => {
                let tries = match tries {
                    1 => "1 try".to_owned(),
                    n => format!("{n} tries {} apart", duration(*interval)),
                };
                format!("service {name:?} did not become healthy after {tries} (last: {last})")
            }
        }
    }
}

/// `1s`, `200ms`, `1.5s`, `2m`: a duration as `hm.toml` would write it.
fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 || ms % 1000 != 0 {
        if ms < 1000 {
            return format!("{ms}ms");
        }
        let text = format!("{:.3}", d.as_secs_f64());
        return format!("{}s", text.trim_end_matches('0').trim_end_matches('.'));
    }
    let secs = ms / 1000;
    match secs {
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Runs the health command in container `id` until it exits 0: at most `retries` tries, each
/// up to `timeout`, `interval` apart. A container that stops meanwhile ends the wait at once.
async fn until_healthy(docker: &Docker, id: &str, health: &HealthCheck) -> Result<(), Down> {
    let stopped = stopped(docker, id);
    tokio::pin!(stopped);
    let tries = health.retries.max(1);
    let mut last = String::new();
    for n in 1..=tries {
        if n > 1 {
            tokio::select! {
                biased;
                code = &mut stopped => return Err(Down::Exited { code }),
                () = tokio::time::sleep(health.interval) => {}
            }
        }
        let tried = tokio::select! {
            biased;
            code = &mut stopped => return Err(Down::Exited { code }),
            tried = tokio::time::timeout(health.timeout, probe(docker, id, &health.command)) => tried,
        };
        last = match tried {
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(code)) => format!("exit code {code}"),
            Ok(Err(e)) => e,
            // The command may go on inside: the Engine cannot kill an exec.
            Err(_) => format!("timed out after {}", duration(health.timeout)),
        };
    }
    Err(Down::Unhealthy {
        tries,
        interval: health.interval,
        last,
    })
}

/// Runs `command` once in container `id` and returns its exit code.
async fn probe(docker: &Docker, id: &str, command: &[String]) -> Result<i64, String> {
    let cannot =
        |e: bollard::errors::Error| format!("cannot run the health command: {}", describe(&e));
    let options = CreateExecOptions {
        cmd: Some(command.to_vec()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        ..Default::default()
    };
    let exec = docker.create_exec(id, options).await.map_err(cannot)?.id;
    // Its output is not shown; that it ends is how to know the command did.
    if let StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&exec, None).await.map_err(cannot)?
    {
        while let Some(Ok(_)) = output.next().await {}
    }
    // A command can close its output before it exits.
    loop {
        let inspected = docker.inspect_exec(&exec).await.map_err(cannot)?;
        if inspected.running != Some(true) {
            return inspected
                .exit_code
                .ok_or_else(|| "the health command's exit code is unknown".to_owned());
        }
        tokio::time::sleep(EXEC_POLL).await;
    }
}

/// Resolves with the exit code once container `id` stops running; never while it runs.
async fn stopped(docker: &Docker, id: &str) -> i64 {
    let until = WaitContainerOptions {
        condition: "not-running".to_owned(),
    };
    match docker.wait_container(id, Some(until)).next().await {
        Some(Ok(response)) => return response.status_code,
        // A non-zero exit comes as an error of its own.
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => return code,
        Some(Err(_)) | None => {}
    }
    // The daemon ended the wait without an answer: it can still say whether the container runs.
    match inspect(docker, id).await {
        Ok(inspected) => match exit_code_if_stopped(&inspected) {
            Some(code) => code,
            None => std::future::pending().await,
        },
        Err(_) => std::future::pending().await,
    }
}

async fn inspect(docker: &Docker, id: &str) -> Result<ContainerInspectResponse, ServiceError> {
    docker.inspect_container(id, None).await.map_err(|e| {
        failed(format!(
            "cannot inspect the service's container: {}",
            describe(&e)
        ))
    })
}

/// The exit code of a container that is not running (created, exited, dead).
fn exit_code_if_stopped(inspected: &ContainerInspectResponse) -> Option<i64> {
    let state = inspected.state.as_ref()?;
    match state.running {
        Some(true) => None,
        _ => Some(state.exit_code.unwrap_or(-1)),
    }
}

/// The container's last [`LOG_LINES`] lines of output, stdout and stderr as the daemon
/// interleaved them; none when its log driver keeps none.
async fn last_lines(docker: &Docker, id: &str) -> Vec<String> {
    let options = LogsOptions {
        stdout: true,
        stderr: true,
        tail: LOG_LINES.to_string(),
        ..Default::default()
    };
    let mut output = Vec::new();
    let mut logs = docker.logs(id, Some(options));
    while let Some(Ok(chunk)) = logs.next().await {
        if let LogOutput::StdOut { message } | LogOutput::StdErr { message } = chunk {
            output.extend_from_slice(&message);
        }
    }
    lines(&output)
}

/// `output` as at most its last [`LOG_LINES`] lines, each cut at `MAX_LOG_LINE` bytes.
pub fn lines(output: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(output);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(LOG_LINES)..]
        .iter()
        .map(|line| {
            if line.len() <= MAX_LOG_LINE {
                return (*line).to_owned();
            }
            let mut end = MAX_LOG_LINE;
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}…", &line[..end])
        })
        .collect()
}

/// Stops container `id` (its stop signal, SIGKILL after `grace`), then removes it with its
/// anonymous volumes.
async fn stop_and_remove(docker: &Docker, id: &str, grace: Duration) -> Result<(), String> {
    let seconds = grace.as_millis().div_ceil(1000);
    let options = StopContainerOptions {
        t: Some(i32::try_from(seconds).unwrap_or(i32::MAX)),
        ..Default::default()
    };
    match docker.stop_container(id, Some(options)).await {
        // 304: it had stopped already.
        Err(e) if !is_status(&e, 304) && !is_status(&e, 404) => {
            eprintln!("docker: cannot stop container {id}: {}", describe(&e));
        }
        _ => {}
    }
    container::remove(docker, id).await
}

/// Puts the container of a docker step that lists services on their network, with its
/// `HM_SERVICE_*` variables pointing there.
pub(crate) async fn join(
    state: &State,
    step: &StepRequest,
    definition: &mut ContainerCreateBody,
) -> Result<(), StepError> {
    if step.services.is_empty() {
        return Ok(());
    }
    let Some(network) = state.services.network().await else {
        return Err(StepError::Message(format!(
            "the step lists services ({}) but none of them runs: hm starts a step's services \
             before the step, so this is a bug in hm or in the docker plugin",
            step.services.join(", ")
        )));
    };
    network::join(definition, &network, &step.services);
    Ok(())
}

fn failed(message: String) -> ServiceError {
    ServiceError::Failed {
        message,
        log: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
