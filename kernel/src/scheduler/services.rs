//! Services in a run (`[services.NAME]`): each is started on its plugin (`StartService`) when
//! the first step that lists it is dispatched, the steps that list it wait (state
//! `AwaitingServices`, holding their slot) until it is up, and it is stopped (`StopService`)
//! once every step that lists it has ended. A service that cannot start fails the steps that
//! wait for it, and those dispatched later, with cause `service` (or `image`) and its last
//! lines of output; a retry of such a step (`retry.on = ["service"]`) starts it again.

use std::collections::HashMap;

use hm_ipc::host::CallKind;
use hm_ipc::messages::{
    EnvVar, KernelCall, PublishedPort, ServiceFailure, ServiceHealth, ServiceStart, ServiceStop,
    StepLimits,
};

use super::plugins::PluginState;
use super::run_loop::Scheduler;
use super::steps::StepState;
use super::verdict::Verdict;
use crate::config::{Service, referenced_secret};
use crate::events::{Cause, Stream};

/// How many of a failed service's last lines go into the log of each step it fails.
const LOG_LINES: usize = 20;

/// One service of the run and where it is in its life.
pub(super) struct ServiceSlot {
    pub(super) name: String,
    /// The plugin slot that runs it.
    pub(super) plugin: usize,
    pub(super) state: ServiceState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum ServiceState {
    /// Not started, or stopped.
    Idle,
    /// Its plugin is starting; the start goes out once it is ready.
    Waiting,
    Starting {
        call: u64,
        /// The run is ending and hm asked the plugin to give the start up (`StopService`).
        given_up: bool,
    },
    /// Up and healthy; `env` is what steps on the host get to reach it.
    Up {
        env: Vec<(String, String)>,
    },
    /// It could not start: the steps that list it fail with `cause` and `message`.
    Failed {
        cause: Cause,
        message: String,
        log: Vec<String>,
    },
    Stopping {
        call: u64,
    },
}

/// The run's services, and which of their calls are in flight.
#[derive(Default)]
pub(super) struct Services {
    pub(super) slots: Vec<ServiceSlot>,
    /// `StartService`/`StopService` calls waiting for their answer → slot.
    calls: HashMap<u64, usize>,
}

impl Services {
    pub(super) fn add(&mut self, name: String, plugin: usize) {
        self.slots.push(ServiceSlot {
            name,
            plugin,
            state: ServiceState::Idle,
        });
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.name == name)
    }

    /// Whether no service is starting or stopping (the run may end).
    pub(super) fn settled(&self) -> bool {
        self.slots.iter().all(|s| {
            !matches!(
                s.state,
                ServiceState::Waiting
                    | ServiceState::Starting { .. }
                    | ServiceState::Stopping { .. }
            )
        })
    }

    /// Whether `call` is a service call of plugin slot `p`.
    pub(super) fn owns(&self, p: usize, call: u64) -> bool {
        self.calls
            .get(&call)
            .is_some_and(|&s| self.slots[s].plugin == p)
    }
}

/// `HM_SERVICE_<NAME>_HOST` and `HM_SERVICE_<NAME>_PORT_<port>` for a service up with `ports`.
pub(super) fn host_env(name: &str, ports: &[PublishedPort]) -> Vec<(String, String)> {
    let prefix = format!("HM_SERVICE_{}", variable_part(name));
    let host = ports
        .first()
        .map_or_else(|| "127.0.0.1".to_owned(), |p| p.host.clone());
    let mut env = vec![(format!("{prefix}_HOST"), host)];
    env.extend(
        ports
            .iter()
            .map(|p| (format!("{prefix}_PORT_{}", p.port), p.host_port.to_string())),
    );
    env
}

/// A service name as part of a variable name: upper case, `-` and `.` as `_`.
pub(super) fn variable_part(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            'a'..='z' => c.to_ascii_uppercase(),
            '-' | '.' => '_',
            c => c,
        })
        .collect()
}

impl Scheduler<'_> {
    /// Whether step `i` must wait for its services (it is left `AwaitingServices`), or has
    /// ended because one of them failed; `false` when all of them are up.
    pub(super) fn await_services(&mut self, i: usize) -> bool {
        let def = &self.pipeline.steps[self.steps[i].index];
        if def.services.is_empty() {
            return false;
        }
        let mut waiting = false;
        for name in def.services.clone() {
            let Some(s) = self.services.position(&name) else {
                continue;
            };
            if let ServiceState::Failed { .. } = self.services.slots[s].state {
                // A retry of a step that failed because of it starts it again.
                if self.steps[i].attempt > 1 {
                    self.services.slots[s].state = ServiceState::Idle;
                }
            }
            match &self.services.slots[s].state {
                ServiceState::Up { .. } => {}
                ServiceState::Failed {
                    cause,
                    message,
                    log,
                } => {
                    let (cause, message, log) = (*cause, message.clone(), log.clone());
                    self.fail_for_service(i, &name, cause, message, &log);
                    return true;
                }
                ServiceState::Idle => {
                    self.start_service(s);
                    waiting = true;
                }
                ServiceState::Waiting
                | ServiceState::Starting { .. }
                | ServiceState::Stopping { .. } => waiting = true,
            }
        }
        if waiting {
            // The step's timeout counts from here: a service that never comes up (one no node
            // of a cluster can take) must not hold the step, and the run, for ever.
            let timeout = self.pipeline.steps[self.steps[i].index].timeout;
            let step = &mut self.steps[i];
            step.state = StepState::AwaitingServices;
            if step.deadline.is_none() {
                step.deadline = timeout.map(|t| tokio::time::Instant::now() + t);
            }
        }
        waiting
    }

    /// The environment steps on the host get for the services step `i` lists.
    pub(super) fn service_env(&self, i: usize) -> Vec<(String, String)> {
        let def = &self.pipeline.steps[self.steps[i].index];
        def.services
            .iter()
            .filter_map(|name| self.services.position(name))
            .flat_map(|s| match &self.services.slots[s].state {
                ServiceState::Up { env } => env.clone(),
                _ => Vec::new(),
            })
            .collect()
    }

    fn fail_for_service(
        &mut self,
        i: usize,
        name: &str,
        cause: Cause,
        message: String,
        log: &[String],
    ) {
        if !log.is_empty() {
            let line = format!("hm: the last lines of service {name}:");
            self.step_log_line(i, Stream::Stderr, &line);
            for line in log.iter().rev().take(LOG_LINES).rev() {
                let line = format!("[{name}] {line}");
                self.step_log_line(i, Stream::Stderr, &line);
            }
        }
        self.steps[i].state = StepState::Running;
        self.end_attempt(i, Verdict::failed(cause, message));
    }

    /// Sends `StartService` for slot `s`, starting its plugin first if needed.
    fn start_service(&mut self, s: usize) {
        let p = self.services.slots[s].plugin;
        match &self.plugins[p].state {
            PluginState::Ready { .. } => self.send_start_service(s),
            PluginState::Starting => self.services.slots[s].state = ServiceState::Waiting,
            PluginState::Idle => {
                self.services.slots[s].state = ServiceState::Waiting;
                self.start_plugin(p);
            }
            PluginState::Exited => {
                self.services.slots[s].state = ServiceState::Waiting;
                if !self.restart_plugin(p) {
                    self.start_service(s);
                }
            }
            PluginState::Failed(message) => {
                let message = format!("its plugin could not run: {message}");
                self.services.slots[s].state = ServiceState::Failed {
                    cause: Cause::Service,
                    message,
                    log: Vec::new(),
                };
            }
        }
    }

    fn send_start_service(&mut self, s: usize) {
        let p = self.services.slots[s].plugin;
        let name = self.services.slots[s].name.clone();
        let Some(service) = self.pipeline.services.get(&name) else {
            return;
        };
        let request = match self.service_request(service) {
            Ok(request) => request,
            Err(message) => {
                self.on_service_failed(s, Cause::Service, message, Vec::new());
                return;
            }
        };
        let PluginState::Ready { link, .. } = &self.plugins[p].state else {
            return;
        };
        let call = self.next_call;
        self.next_call += 1;
        let sent = link.call(
            call,
            CallKind::StartService,
            &KernelCall::StartService(Box::new(request)),
        );
        match sent {
            Ok(()) => {
                self.services.calls.insert(call, s);
                self.services.slots[s].state = ServiceState::Starting {
                    call,
                    given_up: false,
                };
            }
            Err(e) => {
                let message = format!("its plugin could not be asked to start it: {e}");
                self.on_service_failed(s, Cause::Service, message, Vec::new());
            }
        }
    }

    /// What the plugin is sent to start `service`: its secrets filled in.
    fn service_request(&self, service: &Service) -> Result<ServiceStart, String> {
        let mut env = Vec::with_capacity(service.env.len());
        for (name, value) in &service.env {
            let value = match referenced_secret(value) {
                Some(secret) => self.secret_value(secret).ok_or_else(|| {
                    format!(
                        "secret {secret} of `{name}` in [services.{}] has no value",
                        service.name
                    )
                })?,
                None => value.clone(),
            };
            env.push(EnvVar {
                name: name.clone(),
                value,
            });
        }
        Ok(ServiceStart {
            name: service.name.clone(),
            image: service.image.clone(),
            env,
            entrypoint: service.entrypoint.clone(),
            command: service.command.clone(),
            ports: service.ports.clone(),
            health: service.health.as_ref().map(|h| ServiceHealth {
                command: vec!["sh".to_owned(), "-c".to_owned(), h.run.clone()],
                interval_ms: h.interval.as_millis() as u64,
                timeout_ms: h.timeout.as_millis() as u64,
                retries: h.retries,
            }),
            with_json: service.with_json.clone(),
            limits: StepLimits {
                memory_bytes: service.limits.memory_bytes,
                pids: service.limits.pids,
                cpu_millicores: service.limits.cpu.map(|c| (c * 1000.0).round() as u64),
            },
            grace_ms: self.opts.grace.as_millis() as u64,
        })
    }

    /// Sends the starts of the services that waited for plugin slot `p` to be ready.
    pub(super) fn on_service_plugin_ready(&mut self, p: usize) {
        for s in 0..self.services.slots.len() {
            if self.services.slots[s].plugin == p
                && self.services.slots[s].state == ServiceState::Waiting
            {
                self.send_start_service(s);
            }
        }
    }

    /// Plugin slot `p` failed to start or exited: its services are gone.
    pub(super) fn on_service_plugin_gone(&mut self, p: usize, why: &str) {
        let gone: Vec<u64> = self
            .services
            .calls
            .iter()
            .filter(|&(_, &s)| self.services.slots[s].plugin == p)
            .map(|(&call, _)| call)
            .collect();
        for call in gone {
            self.services.calls.remove(&call);
        }
        for s in 0..self.services.slots.len() {
            if self.services.slots[s].plugin != p {
                continue;
            }
            match self.services.slots[s].state {
                ServiceState::Waiting | ServiceState::Starting { .. } | ServiceState::Up { .. } => {
                    let message = format!("its plugin {why}");
                    self.on_service_failed(s, Cause::Service, message, Vec::new());
                }
                ServiceState::Stopping { .. } => self.services.slots[s].state = ServiceState::Idle,
                ServiceState::Idle | ServiceState::Failed { .. } => {}
            }
        }
    }

    pub(super) fn on_service_up(&mut self, call: u64, ports: Vec<PublishedPort>) {
        let Some(s) = self.services.calls.remove(&call) else {
            return;
        };
        let env = host_env(&self.services.slots[s].name, &ports);
        self.services.slots[s].state = ServiceState::Up { env };
        self.wake_awaiting();
    }

    pub(super) fn on_service_start_failed(&mut self, call: u64, failure: ServiceFailure) {
        let Some(s) = self.services.calls.remove(&call) else {
            return;
        };
        let cause = if failure.image {
            Cause::Image
        } else {
            Cause::Service
        };
        let log: Vec<String> = failure
            .log
            .iter()
            .map(|l| self.masker.mask(l).into_owned())
            .collect();
        self.on_service_failed(s, cause, failure.message, log);
    }

    /// A call of a service was refused (`Failed`): a start fails the service, a stop is done.
    pub(super) fn on_service_call_failed(&mut self, call: u64, message: String) {
        let Some(s) = self.services.calls.remove(&call) else {
            return;
        };
        match self.services.slots[s].state {
            ServiceState::Starting { call: start, .. } if start == call => {
                self.on_service_failed(s, Cause::Service, message, Vec::new());
            }
            _ => {
                let name = &self.services.slots[s].name;
                tracing::warn!(service = %name, "cannot stop the service: {message}");
                self.on_service_stopped(call);
            }
        }
    }

    /// A stop is done. The service is idle again, unless this was the stop that gave up its
    /// start (which answered for itself).
    pub(super) fn on_service_stopped(&mut self, call: u64) {
        self.services.calls.remove(&call);
        if let Some(s) = self
            .services
            .slots
            .iter()
            .position(|slot| slot.state == ServiceState::Stopping { call })
        {
            self.services.slots[s].state = ServiceState::Idle;
            // A retry may have come for it meanwhile.
            self.wake_awaiting();
        }
    }

    fn on_service_failed(&mut self, s: usize, cause: Cause, message: String, log: Vec<String>) {
        let name = self.services.slots[s].name.clone();
        let message = format!("service {name} is not up: {message}");
        self.services.slots[s].state = ServiceState::Failed {
            cause,
            message,
            log,
        };
        self.wake_awaiting();
    }

    /// Dispatches again every step that waits for services: each starts, or fails, or waits
    /// on.
    fn wake_awaiting(&mut self) {
        for i in 0..self.steps.len() {
            if self.steps[i].state != StepState::AwaitingServices {
                continue;
            }
            if let Some(reason) = self.steps[i].stop {
                self.steps[i].state = StepState::Running;
                self.end_attempt(i, Verdict::stopped(reason, None));
                continue;
            }
            self.steps[i].state = StepState::Starting;
            self.dispatch(i);
        }
    }

    /// Stops every service that is up and that no step still to end lists; with `all` (the
    /// run is ending), every service that is up, and those still starting are given up.
    pub(super) fn release_services(&mut self, all: bool) {
        if self.services.slots.is_empty() {
            return;
        }
        for s in 0..self.services.slots.len() {
            if let ServiceState::Starting { given_up, .. } = &mut self.services.slots[s].state
                && all
                && !*given_up
            {
                // The start answers (`ServiceFailed`) once it has cleaned up; so does the stop.
                *given_up = true;
                self.send_stop(s);
                continue;
            }
            if !matches!(self.services.slots[s].state, ServiceState::Up { .. }) {
                continue;
            }
            let name = &self.services.slots[s].name;
            let needed = !all
                && self.steps.iter().any(|step| {
                    step.state != StepState::Done
                        && self.pipeline.steps[step.index].services.contains(name)
                });
            if !needed {
                self.stop_service(s);
            }
        }
    }

    fn stop_service(&mut self, s: usize) {
        self.services.slots[s].state = match self.send_stop(s) {
            Some(call) => ServiceState::Stopping { call },
            None => ServiceState::Idle,
        };
    }

    /// Sends `StopService` for slot `s`; the call's id, unless its plugin is gone.
    fn send_stop(&mut self, s: usize) -> Option<u64> {
        let p = self.services.slots[s].plugin;
        let PluginState::Ready { link, .. } = &self.plugins[p].state else {
            return None;
        };
        let call = self.next_call;
        self.next_call += 1;
        let request = KernelCall::StopService(Box::new(ServiceStop {
            name: self.services.slots[s].name.clone(),
        }));
        link.call(call, CallKind::StopService, &request).ok()?;
        self.services.calls.insert(call, s);
        Some(call)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_steps_get_the_host_and_each_published_port() {
        let ports = [
            PublishedPort {
                port: 5432,
                host: "127.0.0.1".into(),
                host_port: 49153,
            },
            PublishedPort {
                port: 8080,
                host: "127.0.0.1".into(),
                host_port: 49154,
            },
        ];
        assert_eq!(
            host_env("my-db.main", &ports),
            [
                (
                    "HM_SERVICE_MY_DB_MAIN_HOST".to_owned(),
                    "127.0.0.1".to_owned()
                ),
                (
                    "HM_SERVICE_MY_DB_MAIN_PORT_5432".to_owned(),
                    "49153".to_owned()
                ),
                (
                    "HM_SERVICE_MY_DB_MAIN_PORT_8080".to_owned(),
                    "49154".to_owned()
                ),
            ]
        );
        assert_eq!(
            host_env("cache", &[]),
            [("HM_SERVICE_CACHE_HOST".to_owned(), "127.0.0.1".to_owned())]
        );
    }
}
