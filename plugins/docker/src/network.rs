//! The run's network: one user-defined bridge per run (`hm-<run id>`, with the owner's
//! labels), made when its first service starts and removed when its last one is stopped
//! ([`crate::service`] decides when). A service is on it under its name; a docker step that
//! lists services joins it and reaches each at `<name>:<port>`, so the `HM_SERVICE_*`
//! variables hm writes for steps on the host (`127.0.0.1` and the published port) are
//! rewritten for it to the name and the service's own port.
//!
//! The network is named for people (`docker network ls`) but always used by its ID: Engines
//! before API 1.44 accept a second network of the same name, and a name would then be
//! ambiguous.

use bollard::Docker;
use bollard::models::{ContainerCreateBody, HostConfig, NetworkCreateRequest};

use crate::daemon::{describe, is_status};
use crate::owner::Owner;

/// `hm-<run id>`; for a plugin that was never told its run (protocol 1), its own process.
pub fn name(owner: &Owner) -> String {
    if owner.run_id.is_empty() {
        format!("hm-plugin-{}", std::process::id())
    } else {
        format!("hm-{}", owner.run_id)
    }
}

/// Creates the run's network; returns its ID.
pub async fn create(docker: &Docker, owner: &Owner) -> Result<String, String> {
    let name = name(owner);
    let request = NetworkCreateRequest {
        name: name.clone(),
        driver: Some("bridge".to_owned()),
        labels: Some(owner.run_labels()),
        ..Default::default()
    };
    match docker.create_network(request).await {
        Ok(created) => Ok(created.id),
        Err(e) => Err(format!(
            "cannot create the network {name} for the run's services: {}",
            describe(&e)
        )),
    }
}

/// Removes network `id`; one the daemon no longer has counts as removed.
pub async fn remove(docker: &Docker, id: &str) -> Result<(), String> {
    match docker.remove_network(id).await {
        Ok(()) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(format!(
            "cannot remove the services' network {id}: {}",
            describe(&e)
        )),
    }
}

/// Puts a step's container on the services' network `id` and points its `HM_SERVICE_*`
/// variables for `services` at them there.
pub fn join(definition: &mut ContainerCreateBody, id: &str, services: &[String]) {
    let host_config = definition
        .host_config
        .get_or_insert_with(HostConfig::default);
    host_config.network_mode = Some(id.to_owned());
    if let Some(env) = definition.env.as_mut() {
        rewrite_env(env, services);
    }
}

/// `HM_SERVICE_<NAME>_HOST=127.0.0.1` → `<name>`, `HM_SERVICE_<NAME>_PORT_<port>=<host port>`
/// → `<port>`, for each of `services`; everything else as it is. `env` holds `NAME=value`.
pub fn rewrite_env(env: &mut [String], services: &[String]) {
    for variable in env.iter_mut() {
        let Some((key, _)) = variable.split_once('=') else {
            continue;
        };
        let inside = services.iter().find_map(|service| {
            let prefix = env_prefix(service);
            let rest = key.strip_prefix(&prefix)?;
            if rest == "HOST" {
                return Some(service.clone());
            }
            // Only a port number: `HM_SERVICE_WEB_PORT_X` may belong to a service `web-port`.
            let port = rest.strip_prefix("PORT_")?;
            port.parse::<u16>().ok().map(|p| p.to_string())
        });
        if let Some(value) = inside {
            *variable = format!("{key}={value}");
        }
    }
}

/// `HM_SERVICE_<NAME>_` as hm writes it: the name upper-cased, `-` and `.` (which a
/// variable's name cannot hold) as `_`.
fn env_prefix(service: &str) -> String {
    let name: String = service
        .chars()
        .map(|c| match c {
            '-' | '.' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    format!("HM_SERVICE_{name}_")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(env: &[&str], services: &[&str], expected: &[&str]) {
        let mut env: Vec<String> = env.iter().map(|v| (*v).to_owned()).collect();
        let services: Vec<String> = services.iter().map(|s| (*s).to_owned()).collect();
        rewrite_env(&mut env, &services);
        assert_eq!(env, expected);
    }

    #[test]
    fn a_step_in_a_container_reaches_a_service_by_name_and_its_own_port() {
        check(
            &[
                "CI=true",
                "HM_SERVICE_WEB_HOST=127.0.0.1",
                "HM_SERVICE_WEB_PORT_8080=32768",
                "HM_SERVICE_WEB_PORT_9090=32769",
            ],
            &["web"],
            &[
                "CI=true",
                "HM_SERVICE_WEB_HOST=web",
                "HM_SERVICE_WEB_PORT_8080=8080",
                "HM_SERVICE_WEB_PORT_9090=9090",
            ],
        );
    }

    #[test]
    fn dashes_and_dots_are_underscores_in_the_variable_but_the_host_keeps_them() {
        check(
            &[
                "HM_SERVICE_MY_DB_MAIN_HOST=127.0.0.1",
                "HM_SERVICE_MY_DB_MAIN_PORT_5432=40000",
            ],
            &["my-db.main"],
            &[
                "HM_SERVICE_MY_DB_MAIN_HOST=my-db.main",
                "HM_SERVICE_MY_DB_MAIN_PORT_5432=5432",
            ],
        );
    }

    #[test]
    fn only_the_listed_services_variables_change() {
        check(
            &[
                // Another service's, and the step's own look-alikes.
                "HM_SERVICE_CACHE_HOST=127.0.0.1",
                "HM_SERVICE_WEB_HOSTNAME=x",
                "HM_SERVICE_WEB_PORT_http=1",
                "HM_SERVICE_WEB_PORT_99999=1",
                "MY_HM_SERVICE_WEB_HOST=127.0.0.1",
                "HM_SERVICE_WEB_HOST",
            ],
            &["web"],
            &[
                "HM_SERVICE_CACHE_HOST=127.0.0.1",
                "HM_SERVICE_WEB_HOSTNAME=x",
                "HM_SERVICE_WEB_PORT_http=1",
                "HM_SERVICE_WEB_PORT_99999=1",
                "MY_HM_SERVICE_WEB_HOST=127.0.0.1",
                "HM_SERVICE_WEB_HOST",
            ],
        );
    }

    #[test]
    fn services_whose_names_prefix_each_other_keep_their_own_variables() {
        check(
            &[
                "HM_SERVICE_WEB_HOST=127.0.0.1",
                "HM_SERVICE_WEB_PORT_HOST=127.0.0.1",
                "HM_SERVICE_WEB_PORT_PORT_80=40001",
            ],
            &["web", "web-port"],
            &[
                "HM_SERVICE_WEB_HOST=web",
                "HM_SERVICE_WEB_PORT_HOST=web-port",
                "HM_SERVICE_WEB_PORT_PORT_80=80",
            ],
        );
    }

    #[test]
    fn joining_sets_the_network_and_keeps_the_rest_of_the_host_config() {
        let mut definition = ContainerCreateBody {
            env: Some(vec!["HM_SERVICE_DB_HOST=127.0.0.1".into()]),
            host_config: Some(HostConfig {
                memory: Some(1 << 20),
                ..Default::default()
            }),
            ..Default::default()
        };
        join(&mut definition, "abc123", &["db".to_owned()]);
        let host = definition.host_config.unwrap_or_default();
        assert_eq!(host.network_mode.as_deref(), Some("abc123"));
        assert_eq!(host.memory, Some(1 << 20));
        assert_eq!(definition.env, Some(vec!["HM_SERVICE_DB_HOST=db".into()]));
    }

    #[test]
    fn the_network_is_named_after_the_run() {
        assert_eq!(name(&Owner::current("19abc-2a")), "hm-19abc-2a");
        assert!(name(&Owner::current("")).starts_with("hm-plugin-"));
    }
}
