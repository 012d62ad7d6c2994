//! [`Swarm`]: the nodes made, started and joined; what a test does with the running swarm
//! (images, labels, cutting a node off); and its teardown when dropped.

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::host::{skip, tool, unavailable_reason};
use super::network::{self, Subnet};
use super::node::{DOCKER_DEADLINE, SwarmNode, output_within};
use super::tag::{self, Tag};
use super::teardown::{self, Footprint, Removal};

/// How long a swarm may take to come up, from nothing to every node `Ready`. It takes a few
/// seconds; this only bounds a hang on a loaded machine.
const START_DEADLINE: Duration = Duration::from_secs(120);
/// How often the manager is asked whether every node is ready.
const READY_POLL: Duration = Duration::from_millis(50);
/// The dispatcher's heartbeat period. A node is marked down when it has missed its heartbeat
/// for three periods: with Docker's default of 5 s that is ~15 s after its link is cut, with
/// this ~3 s, which keeps node-loss tests short.
const HEARTBEAT: &str = "1s";

/// A real Docker Swarm of several nodes on this machine: one dockerd per node, each in a
/// network namespace of its own, joined over a private network; node 0 is the manager. The
/// host's own daemon is never touched. Dropping it kills every process it started and removes
/// every namespace, link, cgroup, mount, socket and directory it made, also when the test
/// panicked; a swarm whose test process was killed is removed by the next
/// [`Swarm::start`] on the machine.
pub struct Swarm {
    test: String,
    tag: Tag,
    subnet: Option<Subnet>,
    nodes: Vec<SwarmNode>,
    removal: Arc<Mutex<Option<Removal>>>,
}

impl Swarm {
    /// Starts a swarm of `nodes` nodes (1 manager, the rest workers) for test `test`, every
    /// node `Ready` when it returns. `None` (after saying why) when this machine cannot run
    /// one; with `HM_REQUIRE_SWARM=1` that fails the test instead. A swarm that can run here
    /// but does not come up fails the test, with the daemons' logs.
    pub fn start(test: &str, nodes: usize) -> Option<Self> {
        assert!(
            (1..=100).contains(&nodes),
            "a swarm has 1 to 100 nodes, not {nodes}"
        );
        if let Some(reason) = unavailable_reason() {
            skip(test, &reason);
            return None;
        }
        let started = Instant::now();
        let mut swarm = Self {
            test: test.to_owned(),
            tag: Tag::next(),
            subnet: None,
            nodes: Vec::new(),
            removal: Arc::default(),
        };
        // On an error or a panic, the swarm's drop removes what was made so far.
        if let Err(e) = swarm.build(nodes) {
            panic!(
                "{test}: the swarm {} of {nodes} nodes did not come up: {e}",
                swarm.tag.as_str()
            );
        }
        eprintln!(
            "{test}: swarm {} of {nodes} nodes ready in {:.1?}",
            swarm.tag.as_str(),
            started.elapsed()
        );
        Some(swarm)
    }

    fn build(&mut self, count: usize) -> Result<(), String> {
        let subnet = {
            let _lock = tag::lock()?;
            teardown::sweep_stale();
            let dir = self.tag.dir();
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            self.tag
                .record_owner()
                .map_err(|e| format!("cannot write {}/owner: {e}", dir.display()))?;
            let subnet = network::free_subnet()?;
            self.subnet = Some(subnet);
            network::create_hub(&self.tag, subnet)?;
            subnet
        };
        for index in 0..count {
            network::create_node(&self.tag, subnet, index)?;
            self.nodes.push(SwarmNode::spawn(&self.tag, subnet, index)?);
        }
        let deadline = Instant::now() + START_DEADLINE;
        for node in &mut self.nodes {
            node.wait_until_answering(deadline.saturating_duration_since(Instant::now()))?;
        }
        let manager = self.manager();
        let listen = format!("{}:2377", manager.address());
        manager.docker_ok(&[
            "swarm",
            "init",
            "--advertise-addr",
            &manager.address().to_string(),
            "--listen-addr",
            &listen,
            "--dispatcher-heartbeat",
            HEARTBEAT,
        ]);
        let token = manager.docker_ok(&["swarm", "join-token", "--quiet", "worker"]);
        std::thread::scope(|scope| {
            for worker in self.workers() {
                let (token, listen) = (&token, &listen);
                scope.spawn(move || {
                    let address = worker.address().to_string();
                    worker.docker_ok(&[
                        "swarm",
                        "join",
                        "--token",
                        token,
                        "--advertise-addr",
                        &address,
                        "--listen-addr",
                        &format!("{address}:2377"),
                        listen,
                    ]);
                });
            }
        });
        self.wait_until_ready(deadline)
    }

    /// Waits until the manager lists every node by its hostname as ready.
    fn wait_until_ready(&self, deadline: Instant) -> Result<(), String> {
        loop {
            let listed = self.manager().api_get("/nodes")?;
            let ready: Vec<&str> = listed
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter(|n| n["Status"]["State"] == "ready")
                .filter_map(|n| n["Description"]["Hostname"].as_str())
                .collect();
            if self.nodes.iter().all(|n| ready.contains(&n.name())) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not every node was ready within {START_DEADLINE:?}; the manager lists \
                     {listed}\nthe manager's log ends:\n{}",
                    self.manager().log_tail()
                ));
            }
            std::thread::sleep(READY_POLL);
        }
    }

    /// The name every piece of this swarm on the host starts with (its link, namespaces,
    /// cgroups, directory); [`Footprint::of_tag`] takes it.
    pub fn tag(&self) -> &str {
        self.tag.as_str()
    }

    /// Every node, the manager first.
    pub fn nodes(&self) -> &[SwarmNode] {
        &self.nodes
    }

    /// Node `index` (0 is the manager).
    pub fn node(&self, index: usize) -> &SwarmNode {
        &self.nodes[index]
    }

    /// The manager, node 0.
    pub fn manager(&self) -> &SwarmNode {
        &self.nodes[0]
    }

    /// The workers: every node but the manager.
    pub fn workers(&self) -> &[SwarmNode] {
        &self.nodes[1..]
    }

    /// The manager's daemon as `DOCKER_HOST` takes it (`unix:///...`): where services are
    /// created.
    pub fn docker_host(&self) -> String {
        self.manager().docker_host()
    }

    /// The manager's socket.
    pub fn manager_socket(&self) -> &Path {
        self.manager().socket()
    }

    /// The host's address on the swarm's network, which every node (and every task, through
    /// its node's NAT) reaches: where a test serves what tasks fetch.
    pub fn host_address(&self) -> Ipv4Addr {
        self.subnet.expect("a started swarm has its subnet").host()
    }

    /// Runs `docker ARGS` against the manager (see [`SwarmNode::docker`]).
    pub fn docker(&self, args: &[&str]) -> Output {
        self.manager().docker(args)
    }

    /// Runs `docker ARGS` against the manager, which must succeed; its stdout, trimmed.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        self.manager().docker_ok(args)
    }

    /// The manager's view of the swarm's nodes (`GET /nodes` of the Engine API).
    pub fn node_list(&self) -> Vec<Value> {
        let listed = self
            .manager()
            .api_get("/nodes")
            .unwrap_or_else(|e| panic!("{e}"));
        listed.as_array().cloned().unwrap_or_default()
    }

    /// Copies `image` from the host's daemon into every node: `docker save` there, `docker
    /// load` into each (nodes cannot pull).
    pub fn load_image(&self, image: &str) {
        let mut save = Command::new(tool("docker"));
        save.args(["save", image]);
        let saved = output_within(&mut save, None, DOCKER_DEADLINE)
            .unwrap_or_else(|e| panic!("docker save {image} from the host's daemon: {e}"));
        assert!(
            saved.status.success(),
            "docker save {image} from the host's daemon failed: {}",
            String::from_utf8_lossy(&saved.stderr).trim()
        );
        std::thread::scope(|scope| {
            for node in &self.nodes {
                let archive = saved.stdout.clone();
                scope.spawn(move || {
                    let out = output_within(
                        &mut node.docker_command(&["load", "--quiet"]),
                        Some(archive),
                        DOCKER_DEADLINE,
                    )
                    .unwrap_or_else(|e| panic!("docker load {image} into {}: {e}", node.name()));
                    assert!(
                        out.status.success(),
                        "docker load {image} into {} failed: {}",
                        node.name(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                });
            }
        });
    }

    /// Sets label `key=value` on `node` (`docker node update --label-add`), for
    /// `--constraint node.labels.KEY==VALUE`.
    pub fn label_node(&self, node: &SwarmNode, key: &str, value: &str) {
        self.docker_ok(&[
            "node",
            "update",
            "--label-add",
            &format!("{key}={value}"),
            node.name(),
        ]);
    }

    /// Cuts `node` off the network (its port on the swarm's bridge goes down): its daemon and
    /// tasks go on running, but it misses its heartbeats and the manager marks it `down` after
    /// ~3 s (three heartbeat periods), its tasks still `running` as far as the manager knows.
    pub fn cut_link(&self, node: &SwarmNode) {
        network::set_port(&self.tag, node.index(), false).unwrap_or_else(|e| panic!("{e}"));
    }

    /// Connects `node` again after [`Swarm::cut_link`].
    pub fn restore_link(&self, node: &SwarmNode) {
        network::set_port(&self.tag, node.index(), true).unwrap_or_else(|e| panic!("{e}"));
    }

    /// What this swarm is made of on the host, to check after dropping it that nothing is left
    /// (see [`super::assert_nothing_left`]); it also carries what the teardown reported.
    pub fn footprint(&self) -> Footprint {
        Footprint::new(self.tag.clone(), Arc::clone(&self.removal))
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let started = Instant::now();
        let daemons = self
            .nodes
            .iter_mut()
            .filter_map(|node| node.dockerd.take())
            .collect();
        let removal = teardown::remove(&self.tag, daemons);
        eprintln!(
            "{}: swarm {} removed in {:.1?}{}",
            self.test,
            self.tag.as_str(),
            started.elapsed(),
            if removal.is_clean() {
                String::new()
            } else {
                format!(", but: {removal:?}")
            }
        );
        *self.removal.lock().unwrap_or_else(PoisonError::into_inner) = Some(removal);
    }
}

impl std::fmt::Debug for Swarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swarm")
            .field("tag", &self.tag.as_str())
            .field("nodes", &self.nodes)
            .finish_non_exhaustive()
    }
}
