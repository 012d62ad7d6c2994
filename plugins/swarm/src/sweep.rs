//! The sweep at plugin start: services that hm runs on this machine left behind when their
//! kernel or their swarm plugin died (SIGKILL leaves no time to clean up) are removed, by the
//! docker plugin's ownership rule ([`is_orphan`]): labelled for this machine and pid namespace,
//! and their kernel or creating plugin process gone.

use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::ListServicesOptions;
use futures_util::future::join_all;
use hm_plugin_docker::daemon::describe;
use hm_plugin_docker::owner::{self, is_orphan};

/// How long the sweep may hold up the plugin's start; what is left waits for the next one.
const BUDGET: Duration = Duration::from_secs(5);

/// Removes every service of this machine whose owners are gone; says how many went.
pub async fn orphans(docker: &Docker, host: &str) -> Result<usize, String> {
    let sweep = async {
        let options = ListServicesOptions {
            filters: Some([("label".to_owned(), vec![format!("{}={host}", owner::HOST)])].into()),
            ..Default::default()
        };
        let services = docker
            .list_services(Some(options))
            .await
            .map_err(|e| format!("cannot list services: {}", describe(&e)))?;
        let orphans: Vec<String> = services
            .into_iter()
            .filter(|s| {
                s.spec
                    .as_ref()
                    .and_then(|spec| spec.labels.as_ref())
                    .is_some_and(|labels| is_orphan(labels, host))
            })
            .filter_map(|s| s.id)
            .collect();
        let removed = join_all(orphans.iter().map(|id| crate::service::remove(docker, id))).await;
        Ok(removed.iter().filter(|r| r.is_ok()).count())
    };
    tokio::time::timeout(BUDGET, sweep)
        .await
        .unwrap_or_else(|_| Err("the sweep of what dead runs left ran out of time".into()))
}
