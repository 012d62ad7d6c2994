//! One node of a swarm: a dockerd of its own in a network namespace of its own, with its own
//! hostname, data root, exec root, socket and cgroup parent; and the ways a test talks to it:
//! the `docker` command line, and (for the fixture's own waits) the Engine API over the socket.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::host::{search_path, tool};
use super::network::Subnet;
use super::tag::Tag;

/// How long one `docker` command or API request may take before the test gives up on it.
pub(super) const DOCKER_DEADLINE: Duration = Duration::from_secs(60);

/// How often a wait for a daemon asks again.
const POLL: Duration = Duration::from_millis(20);
/// How often [`output_within`] looks whether its command has ended.
const OUTPUT_POLL: Duration = Duration::from_millis(2);

/// A node of a [`super::Swarm`].
pub struct SwarmNode {
    index: usize,
    name: String,
    netns: String,
    address: Ipv4Addr,
    dir: PathBuf,
    socket: PathBuf,
    /// The daemon, for the teardown to reap (it kills every process of the swarm by what it
    /// has in its command line, this one included).
    pub(super) dockerd: Option<Child>,
}

/// The port every node's daemon also listens on, on its own address, without TLS (the
/// namespaces' network is private to this machine).
const TCP_PORT: u16 = 2375;

impl SwarmNode {
    /// Starts node `index`'s dockerd in its namespace (already made by
    /// [`super::network::create_node`]); it answers some time later
    /// ([`SwarmNode::wait_until_answering`]).
    ///
    /// `nsenter --net` rather than `ip netns exec`, which remounts `/sys` and so loses the
    /// cgroup mounts dockerd needs; `unshare --uts` for a hostname of its own (the swarm's
    /// name for the node); `unshare --mount` so that its overlay and netns mounts stay out of
    /// the host's mount table (`--propagation slave`: the host's unmounts, such as `ip netns
    /// delete`, still reach it). The empty `--config-file` keeps the host's
    /// /etc/docker/daemon.json (its data root, its storage driver) out. Its containers' cgroups
    /// go below a parent of its own, which the teardown removes.
    /// `DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1` makes it run a task from a loaded image without
    /// first trying (for 20 s, with no network) to pull it.
    pub(super) fn spawn(tag: &Tag, subnet: Subnet, index: usize) -> Result<Self, String> {
        let name = format!("node-{index}");
        let netns = tag.node_netns(index);
        let dir = tag.dir().join(&name);
        for sub in ["data", "exec"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| format!("cannot create {}: {e}", dir.join(sub).display()))?;
        }
        let config = dir.join("daemon.json");
        std::fs::write(&config, "{}\n")
            .map_err(|e| format!("cannot write {}: {e}", config.display()))?;
        let log_path = dir.join("dockerd.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("cannot share {}: {e}", log_path.display()))?;
        let socket = dir.join("docker.sock");
        let path = |p: &Path| p.to_string_lossy().into_owned();
        let mut command = Command::new(tool("nsenter"));
        command
            .arg(format!("--net=/run/netns/{netns}"))
            .arg(tool("unshare"))
            .args(["--uts", "--mount", "--propagation", "slave"])
            .arg(tool("sh"))
            .args([
                "-c",
                r#"echo "$0" > /proc/sys/kernel/hostname && exec "$@""#,
            ])
            .arg(&name)
            .arg(tool("dockerd"))
            .args(["--config-file", &path(&config)])
            .args(["--data-root", &path(&dir.join("data"))])
            .args(["--exec-root", &path(&dir.join("exec"))])
            .args(["--pidfile", &path(&dir.join("docker.pid"))])
            .args(["-H", &format!("unix://{}", socket.display())])
            .args(["-H", &format!("tcp://{}:{TCP_PORT}", subnet.node(index))])
            .arg("--tls=false")
            .args(["--cgroup-parent", &format!("/{netns}")])
            .env("DOCKER_SERVICE_PREFER_OFFLINE_IMAGE", "1")
            .env("PATH", search_path())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let dockerd = command
            .spawn()
            .map_err(|e| format!("cannot start dockerd for {name}: {e}"))?;
        Ok(Self {
            index,
            name,
            netns,
            address: subnet.node(index),
            dir,
            socket,
            dockerd: Some(dockerd),
        })
    }

    /// Its place in [`super::Swarm::nodes`]; node 0 is the manager.
    pub fn index(&self) -> usize {
        self.index
    }

    /// Its hostname, which is also its name in the swarm (`node-0`, `node-1`, ...): what
    /// `--constraint node.hostname==NAME` and `docker node update NAME` take.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its network namespace (`ip -n NETNS ...`, `nsenter --net=/run/netns/NETNS`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// Its daemon's plain-TCP address, on the swarm's network (which the host reaches):
    /// `tcp://<address>:2375`, as a remote manager is usually reached.
    pub fn tcp_host(&self) -> String {
        format!("tcp://{}:{TCP_PORT}", self.address)
    }

    /// Its address on the swarm's network, which it advertises to the swarm.
    pub fn address(&self) -> Ipv4Addr {
        self.address
    }

    /// Its daemon's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Its daemon as `DOCKER_HOST` takes it: `unix:///...`.
    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Its daemon's log (stdout and stderr).
    pub fn log(&self) -> PathBuf {
        self.dir.join("dockerd.log")
    }

    /// `docker ARGS` against this node's daemon, not yet run: `DOCKER_HOST` is its socket
    /// (and no context or TLS setting of the caller's applies).
    pub fn docker_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(tool("docker"));
        command
            .args(args)
            .env("DOCKER_HOST", self.docker_host())
            .env_remove("DOCKER_CONTEXT")
            .env_remove("DOCKER_TLS_VERIFY")
            .env_remove("DOCKER_CERT_PATH")
            .stdin(Stdio::null());
        command
    }

    /// Runs `docker ARGS` against this node; panics when it cannot be run or does not finish
    /// within a minute, not when it fails (the caller looks at the status).
    pub fn docker(&self, args: &[&str]) -> Output {
        output_within(&mut self.docker_command(args), None, DOCKER_DEADLINE)
            .unwrap_or_else(|e| panic!("docker {args:?} against {}: {e}", self.name))
    }

    /// Runs `docker ARGS` against this node, which must succeed; returns its stdout, trimmed.
    pub fn docker_ok(&self, args: &[&str]) -> String {
        let out = self.docker(args);
        assert!(
            out.status.success(),
            "docker {args:?} against {} failed ({}): {}",
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Waits until the daemon answers `/_ping`; fails with its log when it exits or does not
    /// answer in time.
    pub(super) fn wait_until_answering(&mut self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            if self.ping() {
                return Ok(());
            }
            if let Some(Ok(Some(status))) = self.dockerd.as_mut().map(Child::try_wait) {
                return Err(format!(
                    "dockerd of {} exited ({status}) before it answered; its log ends:\n{}",
                    self.name,
                    self.log_tail()
                ));
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "dockerd of {} did not answer within {within:?}; its log ends:\n{}",
                    self.name,
                    self.log_tail()
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    fn ping(&self) -> bool {
        self.request("/_ping")
            .is_ok_and(|(status, body)| status == 200 && body == "OK")
    }

    /// `GET PATH` of the Engine API, the body of a 200 answer as JSON.
    pub(super) fn api_get(&self, path: &str) -> Result<Value, String> {
        let (status, body) = self.request(path)?;
        if status != 200 {
            return Err(format!("GET {path} from {}: {status} {body}", self.name));
        }
        serde_json::from_str(&body)
            .map_err(|e| format!("GET {path} from {}: not JSON ({e}): {body}", self.name))
    }

    /// One HTTP/1.0 request over the socket, whose answer ends when the daemon closes the
    /// connection (it neither keeps a 1.0 connection open nor chunks the body).
    fn request(&self, path: &str) -> Result<(u16, String), String> {
        let failed = |e: std::io::Error| format!("GET {path} from {}: {e}", self.name);
        let mut stream = UnixStream::connect(&self.socket).map_err(failed)?;
        stream
            .set_read_timeout(Some(DOCKER_DEADLINE))
            .map_err(failed)?;
        stream
            .set_write_timeout(Some(DOCKER_DEADLINE))
            .map_err(failed)?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: docker\r\n\r\n").map_err(failed)?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).map_err(failed)?;
        let answer = String::from_utf8_lossy(&answer);
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("GET {path} from {}: no HTTP answer", self.name))?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("GET {path} from {}: no status in {head:?}", self.name))?;
        Ok((status, body.to_owned()))
    }

    /// The last 40 lines of the daemon's log, for failure messages.
    pub(super) fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl std::fmt::Debug for SwarmNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwarmNode")
            .field("name", &self.name)
            .field("netns", &self.netns)
            .field("address", &self.address)
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

/// Runs `command` to the end with `input` on its stdin, its output captured; kills it past
/// `limit`.
pub(super) fn output_within(
    command: &mut Command,
    input: Option<Vec<u8>>,
    limit: Duration,
) -> Result<Output, String> {
    if input.is_some() {
        command.stdin(Stdio::piped());
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run it: {e}"))?;
    // Each pipe has a thread of its own: a command that writes much before it reads would
    // otherwise block on a full stdout pipe while we block on its full stdin pipe.
    let writer = child
        .stdin
        .take()
        .zip(input)
        .map(|(mut stdin, input)| std::thread::spawn(move || stdin.write_all(&input)));
    let read_all = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = read_all(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = read_all(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    // Polled rather than waited for on another thread so that the kill can only hit the
    // command itself: it is not reaped (its pid not reusable) until `try_wait` says it ended.
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(OUTPUT_POLL),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("it did not finish within {limit:?}"));
            }
            Err(e) => return Err(format!("cannot wait for it: {e}")),
        }
    };
    let output = Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    if let Some(Ok(Err(e))) = writer.map(std::thread::JoinHandle::join) {
        if output.status.success() {
            return Err(format!("cannot write its input: {e}"));
        }
    }
    Ok(output)
}
