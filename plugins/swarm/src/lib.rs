//! The swarm executor: runs a step's `run` with its shell (`sh -e -c` by default) as a one-task
//! Docker Swarm service of the step's `image`, on whichever node of the swarm the manager
//! places it, through the Engine API of a manager (bollard). It ships inside the `hm` binary
//! and also builds as its own executable.
//!
//! Per step attempt: one service `hm-<run id>-<step>-<attempt>`, replicated with one replica
//! and restart condition `none`, labelled like the docker plugin's containers, with the step's
//! limits as the task's limits and reservations and its `with.constraints` as placement
//! (`spec`); its task's state polled (`task`: waiting for a node is a queue, not a failure;
//! its exit code is the step's), its logs followed live and completed with a final read once
//! the task has ended (`logs`); a cancel removes the service (SIGTERM, SIGKILL after the
//! grace); and the service is removed whatever happened (`service`). At start, the plugin
//! refuses to run without a daemon that answers and is a swarm manager (`manager`: hm exits
//! 4) and removes the services of runs that died (`sweep`).
//!
//! A node cannot reach hm's files, so the plugin serves them (`files`: HTTP on an address
//! every node reaches, a random token per run and key per attempt): the task's prelude
//! (`prelude`) fetches the workspace and the artifacts of the steps it needs into
//! `/workspace`, runs the step, and once it has passed sends back its outputs and artifacts.
//! Dependency caches are volumes on the node (`spec`). Services with `executor = "swarm"`
//! are swarm services on the run's overlay network, reached by name (`services`).
//!
//! Not yet: peak memory and CPU time (the node's daemon is not reachable in general).

mod config;
mod executor;
mod files;
mod logs;
mod manager;
mod prelude;
mod service;
mod services;
mod spec;
mod sweep;
mod task;

use std::sync::Arc;

use hm_sdk::Plugin;

pub use executor::SwarmExecutor;
pub use services::SwarmServices;

/// The executor name steps use: `executor = "swarm"`.
pub const NAME: &str = "swarm";

/// The swarm plugin, ready for [`hm_sdk::serve`]. Building it does nothing else: the manager
/// is contacted when hm starts the plugin (`Init`).
pub fn plugin() -> Plugin {
    let state = Arc::new(executor::State::default());
    let (configure, start) = (state.clone(), state.clone());
    let services = SwarmServices {
        state: state.clone(),
    };
    Plugin::new(NAME, env!("CARGO_PKG_VERSION"))
        .description("runs steps and services as Docker Swarm services on the nodes of a swarm")
        .executor(NAME, SwarmExecutor { state })
        .services(services)
        .on_init(move |info| configure.configure(info))
        .check_environment(move |info| start.start(info))
}
