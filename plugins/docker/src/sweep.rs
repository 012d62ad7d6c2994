//! The sweep at plugin start: containers (of steps and of services) that hm runs left behind
//! when their kernel or their docker plugin died (SIGKILL leaves no time to clean up) are
//! removed with their volumes, and then the services' networks of those runs.

use std::fmt;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{ListContainersOptions, ListNetworksOptions};
use futures_util::future::join_all;

use crate::owner::{self, is_orphan};

/// How long the sweep may hold up the plugin's start; what is left waits for the next one.
const BUDGET: Duration = Duration::from_secs(5);

/// What a sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Swept {
    pub containers: usize,
    pub networks: usize,
}

impl Swept {
    pub fn is_empty(&self) -> bool {
        self.containers == 0 && self.networks == 0
    }
}

impl fmt::Display for Swept {
    /// `2 container(s) and 1 network(s)`, leaving out a zero.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.containers, self.networks) {
            (c, 0) => write!(f, "{c} container(s)"),
            (0, n) => write!(f, "{n} network(s)"),
            (c, n) => write!(f, "{c} container(s) and {n} network(s)"),
        }
    }
}

/// Removes every container of this machine whose owners are gone, then every such network
/// (a network with a container on it cannot be removed).
pub async fn orphans(docker: &Docker, host: &str) -> Result<Swept, String> {
    let sweep = async {
        let containers = containers(docker, host).await?;
        let networks = networks(docker, host).await?;
        Ok(Swept {
            containers,
            networks,
        })
    };
    tokio::time::timeout(BUDGET, sweep)
        .await
        .unwrap_or_else(|_| Err("the sweep of what dead runs left ran out of time".into()))
}

/// The `label` filter for what hm made on this machine and in this pid namespace.
fn here(host: &str) -> std::collections::HashMap<String, Vec<String>> {
    [("label".to_owned(), vec![format!("{}={host}", owner::HOST)])].into()
}

async fn containers(docker: &Docker, host: &str) -> Result<usize, String> {
    let options = ListContainersOptions {
        all: true,
        filters: Some(here(host)),
        ..Default::default()
    };
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
}

async fn networks(docker: &Docker, host: &str) -> Result<usize, String> {
    let options = ListNetworksOptions {
        filters: Some(here(host)),
    };
    let networks = docker
        .list_networks(Some(options))
        .await
        .map_err(|e| format!("cannot list networks: {}", crate::daemon::describe(&e)))?;
    let orphans: Vec<String> = networks
        .into_iter()
        .filter(|n| n.labels.as_ref().is_some_and(|l| is_orphan(l, host)))
        .filter_map(|n| n.id)
        .collect();
    let removed = join_all(orphans.iter().map(|id| crate::network::remove(docker, id))).await;
    Ok(removed.iter().filter(|r| r.is_ok()).count())
}

#[cfg(test)]
mod tests {
    use super::Swept;

    #[test]
    fn what_was_swept_reads_as_a_phrase() {
        let swept = |containers, networks| {
            Swept {
                containers,
                networks,
            }
            .to_string()
        };
        assert_eq!(swept(2, 0), "2 container(s)");
        assert_eq!(swept(0, 1), "1 network(s)");
        assert_eq!(swept(3, 1), "3 container(s) and 1 network(s)");
        assert!(Swept::default().is_empty());
    }
}
