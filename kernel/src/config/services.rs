//! `[services.NAME]` (containers the steps that list them reach over the network) and a step's
//! `services = [...]`, checked against them.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use super::model::{Health, Service};
use crate::suggest::did_you_mean;
use crate::toml_check::{Checker, Field, join_path};

const SERVICE_KEYS: &[&str] = &[
    "image",
    "executor",
    "env",
    "entrypoint",
    "command",
    "ports",
    "health",
    "with",
    "limits",
];
const HEALTH_KEYS: &[&str] = &["run", "interval", "timeout", "retries"];
const HEALTH_HINT: &str =
    "write `health = { run = \"pg_isready -U postgres\", interval = \"1s\", retries = 30 }`";
const SERVICES_HINT: &str = "write `services = [\"db\"]`, naming `[services.db]` tables";

/// A service's health check when `health` leaves a part out.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_RETRIES: u32 = 30;

impl Checker<'_> {
    /// `[services]`: every `[services.NAME]` table.
    /// `[services]`. `defaults_executor` (`[defaults].executor`) runs the services that name
    /// no executor, unless it is `shell` (which runs no containers): then `docker` does.
    pub(super) fn services(
        &mut self,
        field: &Field<'_>,
        defaults_executor: Option<&str>,
    ) -> BTreeMap<String, Service> {
        let default_executor = defaults_executor
            .filter(|e| *e != "shell")
            .unwrap_or("docker");
        let mut services = BTreeMap::new();
        let Some(table) = field.item.as_table_like() else {
            let found = self.found(field.item);
            self.report.error(
                field.span(),
                format!("[services] must be a table of services, found {found}"),
                Some("write each service as `[services.<name>]` with `image = \"...\"`".into()),
            );
            return services;
        };
        for (name, _) in table.iter() {
            let Some((key, item)) = table.get_key_value(name) else {
                continue;
            };
            self.check_name(name, key.span(), "service");
            let path = join_path("services", name);
            let entry = Field {
                key,
                item,
                label: format!("[{path}]"),
            };
            if let Some(service) = self.service(name, &entry, &path, default_executor) {
                services.insert(name.to_owned(), service);
            }
        }
        services
    }

    fn service(
        &mut self,
        name: &str,
        entry: &Field<'_>,
        path: &str,
        default_executor: &str,
    ) -> Option<Service> {
        let shape = format!("write `[{path}]` on its own line, followed by `image = \"...\"`");
        let section = self.open(entry, path.to_owned(), SERVICE_KEYS, &shape)?;
        let location = self.report.location(self.report.global(entry.span()));
        let image = match section.get("image") {
            Some(f) => self.non_empty_string(&f).map(str::to_owned),
            None => {
                self.report.error(
                    entry.span(),
                    format!("[{path}] has no `image`"),
                    Some(format!(
                        "add the image it runs: `image = \"postgres:16\"` in [{path}]"
                    )),
                );
                None
            }
        };
        let mut service = Service {
            name: name.to_owned(),
            executor: default_executor.to_owned(),
            image: String::new(),
            env: BTreeMap::new(),
            entrypoint: None,
            command: None,
            ports: Vec::new(),
            health: None,
            with_json: "{}".to_owned(),
            limits: Default::default(),
            location,
        };
        let mut ok = image.is_some();
        if let Some(f) = section.get("executor") {
            match self.non_empty_string(&f) {
                Some(executor) => service.executor = executor.to_owned(),
                None => ok = false,
            }
        }
        if let Some(f) = section.get("env") {
            match self.env(&f, path) {
                Some(env) => service.env = env,
                None => ok = false,
            }
        }
        for key in ["entrypoint", "command"] {
            if let Some(f) = section.get(key) {
                match self.argv(&f) {
                    Some(argv) if key == "entrypoint" => service.entrypoint = Some(argv),
                    Some(argv) => service.command = Some(argv),
                    None => ok = false,
                }
            }
        }
        if let Some(f) = section.get("ports") {
            match self.ports(&f) {
                Some(ports) => service.ports = ports,
                None => ok = false,
            }
        }
        if let Some(f) = section.get("health") {
            service.health = self.health(&f, path);
            ok &= service.health.is_some();
        }
        if let Some(f) = section.get("with") {
            match self.json(&f) {
                Some(json) => service.with_json = json,
                None => ok = false,
            }
        }
        if let Some(f) = section.get("limits") {
            match self.limits(&f, path) {
                Some(limits) => service.limits = limits,
                None => ok = false,
            }
        }
        service.image = image?;
        ok.then_some(service)
    }

    /// `entrypoint`/`command`: the program and its arguments, as strings.
    fn argv(&mut self, field: &Field<'_>) -> Option<Vec<String>> {
        let hint = || {
            format!(
                "write `{} = [\"program\", \"arg\"]`",
                field.key.display_repr()
            )
        };
        let Some(array) = field.item.as_array() else {
            self.wrong_type(field, "an array of strings", Some(hint()));
            return None;
        };
        let mut argv = Vec::new();
        for element in array.iter() {
            match element.as_str() {
                Some(word) => argv.push(word.to_owned()),
                None => {
                    let found = self.found_value(element);
                    let message = format!("{} must hold strings, found {found}", field.label);
                    self.report.error(element.span(), message, Some(hint()));
                }
            }
        }
        (argv.len() == array.len()).then_some(argv)
    }

    /// `ports = [5432, ...]`: ports inside the service, published on the host's loopback.
    fn ports(&mut self, field: &Field<'_>) -> Option<Vec<u16>> {
        let hint = "write `ports = [5432]`: the ports the service listens on".to_owned();
        let Some(array) = field.item.as_array() else {
            self.wrong_type(field, "an array of port numbers", Some(hint));
            return None;
        };
        let mut ports = Vec::new();
        let mut ok = true;
        for element in array.iter() {
            match element.as_integer().and_then(|n| u16::try_from(n).ok()) {
                Some(port) if port > 0 => {
                    if !ports.contains(&port) {
                        ports.push(port);
                    }
                }
                _ => {
                    let found = self.found_value(element);
                    let message = format!(
                        "{} must hold port numbers from 1 to 65535, found {found}",
                        field.label
                    );
                    self.report
                        .error(element.span(), message, Some(hint.clone()));
                    ok = false;
                }
            }
        }
        ok.then_some(ports)
    }

    /// `health = { run, interval, timeout, retries }`.
    fn health(&mut self, field: &Field<'_>, parent: &str) -> Option<Health> {
        let section = self.open(field, join_path(parent, "health"), HEALTH_KEYS, HEALTH_HINT)?;
        let run = match section.get("run") {
            Some(f) => self.non_empty_string(&f).map(str::to_owned),
            None => {
                self.report.error(
                    field.span(),
                    format!("{} has no `run`", field.label),
                    Some(HEALTH_HINT.to_owned()),
                );
                None
            }
        };
        let zero = "leave it out for the default";
        let interval = match section.get("interval") {
            Some(f) => self.duration(&f, zero),
            None => Some(DEFAULT_INTERVAL),
        };
        let timeout = match section.get("timeout") {
            Some(f) => self.duration(&f, zero),
            None => Some(DEFAULT_TIMEOUT),
        };
        let retries = match section.get("retries") {
            Some(f) => self
                .integer(&f, 1, i64::from(u32::MAX), Some(zero))
                .and_then(|n| u32::try_from(n).ok()),
            None => Some(DEFAULT_RETRIES),
        };
        Some(Health {
            run: run?,
            interval: interval?,
            timeout: timeout?,
            retries: retries?,
        })
    }

    /// A step's `services = ["db", ...]`, with where each name is (global spans).
    pub(super) fn service_names(
        &mut self,
        field: &Field<'_>,
    ) -> Option<Vec<(String, Option<Range<usize>>)>> {
        let Some(array) = field.item.as_array() else {
            self.wrong_type(
                field,
                "an array of service names",
                Some(SERVICES_HINT.into()),
            );
            return None;
        };
        let mut names: Vec<(String, Option<Range<usize>>)> = Vec::new();
        for element in array.iter() {
            match element.as_str() {
                Some(name) if names.iter().any(|(n, _)| n == name) => {
                    let message = format!("{} lists `{name}` twice", field.label);
                    self.report.error(element.span(), message, None);
                }
                Some(name) => names.push((name.to_owned(), self.report.global(element.span()))),
                None => {
                    let found = self.found_value(element);
                    let message = format!(
                        "{} must list service names as strings, found {found}",
                        field.label
                    );
                    self.report
                        .error(element.span(), message, Some(SERVICES_HINT.into()));
                }
            }
        }
        Some(names)
    }

    /// Every name a step's `services` lists must be a `[services.NAME]` that a step on
    /// `executor` can reach ([`reaches`]).
    pub(super) fn check_service_names(
        &mut self,
        step: &str,
        executor: &str,
        names: &[(String, Option<Range<usize>>)],
        services: &[&str],
        parsed: &BTreeMap<String, Service>,
    ) {
        for (name, span) in names {
            if services.contains(&name.as_str()) {
                if let Some(service) = parsed.get(name)
                    && !reaches(executor, &service.executor)
                {
                    self.report.error_at(
                        span.clone(),
                        format!(
                            "step `{step}` runs on executor `{executor}` and lists service \
                             `{name}`, which runs on executor `{}`, out of its reach",
                            service.executor
                        ),
                        Some(if executor == "shell" {
                            format!(
                                "a step on this machine reaches the services docker runs: \
                                 `executor = \"docker\"` in [services.{name}]"
                            )
                        } else {
                            format!(
                                "run the service where the step runs: `executor = \
                                 \"{executor}\"` in [services.{name}] (or `[defaults] executor \
                                 = \"{executor}\"` for every step and service)"
                            )
                        }),
                    );
                }
                continue;
            }
            let hint = match did_you_mean(name, services.iter().copied()) {
                Some(known) => format!("did you mean `{known}`?"),
                None if services.is_empty() => {
                    format!("define it: `[services.{name}]` with `image = \"...\"`")
                }
                None => format!(
                    "the services are {}",
                    services
                        .iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            self.report.error_at(
                span.clone(),
                format!("step `{step}` lists service `{name}`, which is not defined"),
                Some(hint),
            );
        }
    }
}

/// Whether a step on `step_executor` reaches a service on `service_executor`: one on its own
/// executor (its network), and a step on the host one that docker runs (its ports published
/// on the host's loopback). A service on a cluster is not reachable from this machine, nor
/// one on this machine from a cluster's node.
fn reaches(step_executor: &str, service_executor: &str) -> bool {
    step_executor == service_executor || (step_executor == "shell" && service_executor == "docker")
}
