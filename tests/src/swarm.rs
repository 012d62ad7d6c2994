//! A real multi-node Docker Swarm on this one machine, for the tests of what runs steps on a
//! swarm: [`Swarm::start`] gives a swarm of N nodes (node 0 the manager), each a dockerd of
//! its own in a network namespace of its own, with its own data root, exec root, socket,
//! hostname and cgroup parent, joined over a private network that the host is on too
//! ([`Swarm::host_address`]). The host's own daemon is never touched: it stays out of any
//! swarm. Nodes cannot pull, so a test copies its image in ([`Swarm::load_image`], e.g. one
//! from [`crate::docker::DockerFixture`]).
//!
//! Without root, the tools or namespaces the swarm says it was skipped (`None`), and under
//! `HM_REQUIRE_SWARM=1` (set by `.ci/run`) fails instead. Dropping it removes everything it
//! made, also when the test panicked; [`assert_nothing_left`] shows it, from a [`Footprint`]
//! taken before the drop. Every name on the host starts with the swarm's tag
//! (`hmsw<pid>_<counter>`), unique per process and swarm, so that parallel tests never
//! collide and the next [`Swarm::start`] can remove what a killed test process left.
//!
//! IPVS is missing on the project's machines, so swarm virtual IPs and published ports do not
//! work: services use `--endpoint-mode dnsrr`.
//!
//! `tag.rs` names the pieces; `host.rs` says whether the host can have a swarm; `network.rs`
//! makes the namespaces, bridge and links; `node.rs` starts and talks to one node's daemon;
//! `cluster.rs` makes the swarm and holds what a test does with it; `teardown.rs` removes a
//! swarm and looks for what is left.

mod cluster;
mod host;
mod network;
mod node;
mod tag;
mod teardown;

pub use cluster::Swarm;
pub use host::{skip, unavailable_reason};
pub use node::SwarmNode;
pub use teardown::{Footprint, assert_nothing_left};
