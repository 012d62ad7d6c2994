//! The docker executor: runs a step's `run` with its shell (`sh -e -c` by default) in a fresh
//! container of the step's `image`, through the Docker Engine API (bollard). It ships inside the `hm` binary and also
//! builds as its own executable.
//!
//! Per step attempt: the image is used if present and pulled per `with.pull` otherwise, at most
//! once per run and image (`image`); one container is created with the step's environment, working directory,
//! limits and labels (`container`, [`owner`]); `/workspace` is filled from the workspace
//! archive and the artifacts of the steps it needs ([`workspace`]); the output is streamed live,
//! stdout and stderr apart; the exit code is the container's, and an OOM kill is reported as
//! one; a cancel stops the container (SIGTERM, SIGKILL after the grace); a step that passed has
//! its `$HM_OUTPUT` ([`outputs`]) and its artifacts ([`artifacts`]) read out of the container
//! (`download`) and handed to hm; and the container is removed with its volumes whatever
//! happened. At start, the plugin refuses to run without a daemon that answers ([`daemon`]:
//! hm exits 4) and sweeps the containers and networks of runs that died (`sweep`).
//!
//! It also runs the pipeline's services (`[services.NAME]`, [`service`]): a container per
//! service on the run's network ([`network`]) under the service's name, its ports published on
//! 127.0.0.1, up once its health command passes inside it, and stopped and removed with its
//! volumes when hm says (the network with the last one). A docker step that lists services
//! joins that network and reaches each at `<name>:<port>`.
//!
//! [`config`] (`[plugins.NAME].config`), [`daemon`] (reaching the daemon) and [`owner`] (the
//! labels of what hm creates, and the test for what dead runs left) are public: the swarm
//! plugin checks its configuration, reaches its manager and labels its services with them.

pub mod artifacts;
pub mod caches;
pub mod config;
mod container;
pub mod daemon;
mod download;
mod executor;
mod image;
pub mod network;
pub mod outputs;
pub mod owner;
pub mod service;
mod stats;
mod sweep;
pub mod workspace;

pub use container::WORKSPACE;

use std::sync::Arc;

use hm_sdk::Plugin;

pub use executor::DockerExecutor;
pub use service::DockerServices;

/// The executor name steps use: `executor = "docker"`, or implicitly by setting `image`.
pub const NAME: &str = "docker";

/// The docker plugin, ready for [`hm_sdk::serve`]. Building it does nothing else: the daemon
/// is contacted when hm starts the plugin (`Init`).
pub fn plugin() -> Plugin {
    let state = Arc::new(executor::State::default());
    let (configure, start) = (state.clone(), state.clone());
    let services = DockerServices {
        state: state.clone(),
    };
    Plugin::new(NAME, env!("CARGO_PKG_VERSION"))
        .description("runs steps and services in Docker containers")
        .executor(NAME, DockerExecutor { state })
        .services(services)
        .on_init(move |info| configure.configure(info))
        .check_environment(move |info| start.start(info))
}
