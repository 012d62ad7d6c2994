//! Reaching a swarm manager: the daemon at the plugin's address (the docker plugin's
//! [`daemon`] module: `[plugins.swarm].config.host`, else `DOCKER_HOST`, else the default
//! socket), which must answer and be a manager of an active swarm, or hm exits 4 saying which
//! address it tried and how to fix it.

use bollard::Docker;
use bollard::models::{LocalNodeState, SwarmInfo};
use hm_plugin_docker::daemon::{self, Address};

/// A client for the manager at `address`, its API version negotiated down to the daemon's, and
/// the address the manager's node gives the other nodes of the swarm (if it says).
pub async fn connect(address: &Address) -> Result<(Docker, Option<String>), String> {
    let docker = daemon::connect(address).await.map_err(|e| e.to_string())?;
    let info = tokio::time::timeout(daemon::PING_TIMEOUT, docker.info())
        .await
        .map_err(|_| {
            format!(
                "the Docker daemon at {address} did not say whether it is a swarm manager in time"
            )
        })?
        .map_err(|e| {
            format!(
                "cannot ask the Docker daemon at {address} about its swarm: {}",
                daemon::describe(&e)
            )
        })?;
    match not_a_manager(info.swarm.as_ref()) {
        None => Ok((docker, info.swarm.and_then(|swarm| swarm.node_addr))),
        Some(why) => Err(format!(
            "the Docker daemon at {address} is not a swarm manager ({why})\n  hint: run `docker \
             swarm init` there to make it the manager of a new swarm, or point \
             [plugins.swarm].config.host (or DOCKER_HOST) at a manager of your swarm"
        )),
    }
}

/// Why a daemon whose `/info` says `swarm` cannot take services, if it cannot.
fn not_a_manager(swarm: Option<&SwarmInfo>) -> Option<String> {
    let Some(swarm) = swarm else {
        return Some("it says nothing of a swarm".into());
    };
    if swarm.control_available == Some(true) {
        return None;
    }
    let why = match swarm.local_node_state {
        Some(LocalNodeState::ACTIVE) => "it is a worker of its swarm".to_owned(),
        Some(LocalNodeState::INACTIVE) | None => "swarm mode is inactive".to_owned(),
        Some(state) => {
            let error = swarm.error.as_deref().filter(|e| !e.is_empty());
            match error {
                Some(error) => format!("its swarm state is {state}: {error}"),
                None => format!("its swarm state is {state}"),
            }
        }
    };
    Some(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_manager_of_an_active_swarm_will_do() {
        let swarm = |state, control| SwarmInfo {
            local_node_state: Some(state),
            control_available: Some(control),
            ..Default::default()
        };
        assert_eq!(
            not_a_manager(Some(&swarm(LocalNodeState::ACTIVE, true))),
            None
        );
        assert_eq!(
            not_a_manager(Some(&swarm(LocalNodeState::ACTIVE, false))).as_deref(),
            Some("it is a worker of its swarm")
        );
        assert_eq!(
            not_a_manager(Some(&swarm(LocalNodeState::INACTIVE, false))).as_deref(),
            Some("swarm mode is inactive")
        );
        assert_eq!(
            not_a_manager(Some(&swarm(LocalNodeState::LOCKED, false))).as_deref(),
            Some("its swarm state is locked")
        );
        assert!(not_a_manager(None).is_some());
    }

    #[tokio::test]
    async fn a_missing_socket_names_the_swarm_setting() {
        let address = Address::resolve_for(crate::NAME, Some("unix:///nonexistent/hm-swarm.sock"));
        let e = connect(&address).await.unwrap_err();
        assert!(
            e.contains("unix:///nonexistent/hm-swarm.sock (from [plugins.swarm].config.host)"),
            "{e}"
        );
        assert!(e.contains("[plugins.swarm].config.host at a daemon"), "{e}");
    }
}
