//! The sweep at plugin start: containers that hm runs left behind when their kernel or their
//! docker plugin died (SIGKILL leaves no time to clean up) are removed with their volumes.

use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::ListContainersOptions;
use futures_util::future::join_all;

use crate::owner::{self, is_orphan};

/// How long the sweep may hold up the plugin's start; what is left waits for the next one.
const BUDGET: Duration = Duration::from_secs(5);

/// Removes every container of this machine whose owners are gone; returns how many.
pub async fn orphans(docker: &Docker, host: &str) -> Result<usize, String> {
    let options = ListContainersOptions {
        all: true,
        filters: Some([("label".to_owned(), vec![format!("{}={host}", owner::HOST)])].into()),
        ..Default::default()
    };
    let sweep = async {
        let containers = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| format!("cannot list containers: {}", crate::daemon::describe(&e)))?;
        let orphans: Vec<String> = containers
            .into_iter()
            .filter(|c| c.labels.as_ref().is_some_and(|l| is_orphan(l, host)))
            .filter_map(|c| c.id)
            .collect();
        let removed = join_all(
            orphans
                .iter()
                .map(|id| crate::container::remove(docker, id)),
        )
        .await;
        Ok(removed.iter().filter(|r| r.is_ok()).count())
    };
    tokio::time::timeout(BUDGET, sweep)
        .await
        .unwrap_or_else(|_| Err("the sweep of dead runs' containers ran out of time".into()))
}
