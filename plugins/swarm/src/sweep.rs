//! The sweep at plugin start: services (and their networks) that hm runs on this machine left behind when their
//! kernel or their swarm plugin died (SIGKILL leaves no time to clean up) are removed, by the
//! docker plugin's ownership rule ([`is_orphan`]): labelled for this machine and pid namespace,
//! and their kernel or creating plugin process gone.

use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{ListNetworksOptions, ListServicesOptions};
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
        // The overlay networks of dead runs' services: those of runs whose services just
        // went are still in use until the nodes have stopped the tasks, and go at a later
        // start.
        let options = ListNetworksOptions {
            filters: Some([("label".to_owned(), vec![format!("{}={host}", owner::HOST)])].into()),
        };
        let networks = docker
            .list_networks(Some(options))
            .await
            .unwrap_or_default();
        for network in networks {
            let orphan = network
                .labels
                .as_ref()
                .is_some_and(|labels| is_orphan(labels, host));
            if let (true, Some(id)) = (orphan, network.id) {
                let _ = docker.remove_network(&id).await;
            }
        }
        Ok(removed.iter().filter(|r| r.is_ok()).count())
    };
    tokio::time::timeout(BUDGET, sweep)
        .await
        .unwrap_or_else(|_| Err("the sweep of what dead runs left ran out of time".into()))
}
