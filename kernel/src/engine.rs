//! The few Docker Engine requests the kernel makes itself (`hm doctor`'s version check, `hm
//! cache prune`'s volume removal, the removal of a run's containers and networks by hm at its
//! exit and by the guardian when hm was killed), in plain HTTP/1.0 on the daemon's unix socket
//! or plain TCP address: the kernel links no Docker client, and requests with a two-second
//! deadline are all these need.

use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A Docker daemon the kernel talks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Daemon {
    /// Its unix socket.
    Unix(PathBuf),
    /// `host:port` of its plain-TCP API (`tcp://` or `http://`).
    Tcp(String),
}

impl Daemon {
    /// A daemon address as `DOCKER_HOST` and `[plugins.*].config.host` take it
    /// (`unix:///path`, a bare absolute path, `tcp://host:port`, `http://host:port`); `None`
    /// for anything else (TLS, SSH).
    pub fn parse(host: &str) -> Option<Self> {
        if host.starts_with('/') {
            return Some(Self::Unix(PathBuf::from(host)));
        }
        if let Some(path) = host.strip_prefix("unix://") {
            return Some(Self::Unix(PathBuf::from(path)));
        }
        let remote = host
            .strip_prefix("tcp://")
            .or_else(|| host.strip_prefix("http://"))?
            .trim_end_matches('/');
        (!remote.is_empty()).then(|| Self::Tcp(remote.to_owned()))
    }
}

impl fmt::Display for Daemon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Tcp(remote) => write!(f, "tcp://{remote}"),
        }
    }
}

/// The daemon's socket: `DOCKER_HOST` when it is `unix://...`, else the default socket;
/// `None` for a `DOCKER_HOST` that is no unix socket.
pub fn socket() -> Option<PathBuf> {
    let host =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    host.strip_prefix("unix://").map(PathBuf::from)
}

/// The daemon a project's docker (or swarm) steps use: `[plugins.NAME].config.host` (given as
/// `config_json`) when it sets one, else `DOCKER_HOST`, else the default socket. `None` for an
/// address the kernel cannot reach (TLS, SSH).
pub fn daemon_of(config_json: Option<&str>) -> Option<Daemon> {
    let host = config_json
        .and_then(|json| serde_json::from_str::<serde_json::Value>(json).ok())
        .and_then(|config| config.get("host")?.as_str().map(str::to_owned))
        .or_else(|| std::env::var("DOCKER_HOST").ok())
        .unwrap_or_else(|| "unix:///var/run/docker.sock".into());
    Daemon::parse(&host)
}

/// Removes every swarm service, then force-removes every container (with its anonymous
/// volumes) and every network that carries the label `hm.run=<run_id>`; returns how many
/// containers and networks were removed (services take their tasks' containers with them). A
/// daemon that is no swarm manager has no services to remove. A swarm's overlay network
/// cannot go until the nodes have stopped the removed services' tasks: its removal is tried
/// again for up to [`SWARM_NETWORK_WAIT`].
pub fn remove_run(daemon: &Daemon, run_id: &str) -> Result<(usize, usize), String> {
    let filter = percent_encode(&format!(r#"{{"label":["hm.run={run_id}"]}}"#));
    // A swarm task's container goes with its service, by the swarm's own stop.
    let ids = |target: &str| -> Result<Vec<String>, String> {
        let body = request(daemon, "GET", target, &["200"])?;
        let listed: Vec<serde_json::Value> =
            serde_json::from_str(&body).map_err(|e| format!("unreadable answer: {e}"))?;
        Ok(listed
            .iter()
            .filter(|item| item["Labels"].get(SWARM_TASK_LABEL).is_none())
            .filter_map(|item| item.get("Id")?.as_str().map(str::to_owned))
            .collect())
    };
    // 503: not a swarm manager, so no services.
    let mut services = 0;
    if let Ok(body) = request(
        daemon,
        "GET",
        &format!("/services?filters={filter}"),
        &["200"],
    ) {
        let listed: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
        for id in listed.iter().filter_map(|s| s.get("ID")?.as_str()) {
            request(
                daemon,
                "DELETE",
                &format!("/services/{id}"),
                &["200", "404"],
            )?;
            services += 1;
        }
    }
    let mut containers = 0;
    for id in ids(&format!("/containers/json?all=1&filters={filter}"))? {
        request(
            daemon,
            "DELETE",
            &format!("/containers/{id}?force=1&v=1"),
            &["204", "404", "409"],
        )?;
        containers += 1;
    }
    let mut networks = 0;
    let deadline = Instant::now() + SWARM_NETWORK_WAIT;
    for id in ids(&format!("/networks?filters={filter}"))? {
        loop {
            match request(
                daemon,
                "DELETE",
                &format!("/networks/{id}"),
                &["204", "404"],
            ) {
                Ok(_) => break,
                // Still in use by the tasks of services just removed.
                Err(_) if services > 0 && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => return Err(e),
            }
        }
        networks += 1;
    }
    Ok((containers, networks))
}

/// How long the removal of a run's networks waits for the nodes to stop the tasks of the
/// services just removed (their grace, 10 s by default, and a second or two more).
pub const SWARM_NETWORK_WAIT: Duration = Duration::from_secs(20);

/// The label Docker puts on the container of a swarm service's task.
const SWARM_TASK_LABEL: &str = "com.docker.swarm.task.id";

/// `text` with every byte outside the URL-safe set as `%XX`.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `METHOD target` on `daemon`; the body when the status is one of `ok`, else what the
/// daemon answered.
pub fn request(daemon: &Daemon, method: &str, target: &str, ok: &[&str]) -> Result<String, String> {
    let timeout = Duration::from_secs(2);
    let request = format!("{method} {target} HTTP/1.0\r\nHost: docker\r\n\r\n");
    let response = match daemon {
        Daemon::Unix(path) => {
            let stream = UnixStream::connect(path).map_err(|e| e.to_string())?;
            stream
                .set_read_timeout(Some(timeout))
                .and_then(|()| stream.set_write_timeout(Some(timeout)))
                .map_err(|e| e.to_string())?;
            exchange(stream, &request)?
        }
        Daemon::Tcp(remote) => {
            let address = remote
                .to_socket_addrs()
                .map_err(|e| e.to_string())?
                .next()
                .ok_or_else(|| format!("{remote} has no address"))?;
            let stream =
                TcpStream::connect_timeout(&address, timeout).map_err(|e| e.to_string())?;
            stream
                .set_read_timeout(Some(timeout))
                .and_then(|()| stream.set_write_timeout(Some(timeout)))
                .map_err(|e| e.to_string())?;
            exchange(stream, &request)?
        }
    };
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| "not an HTTP answer".to_owned())?;
    let status = head.lines().next().unwrap_or_default();
    match status.split_whitespace().nth(1) {
        Some(code) if ok.contains(&code) => Ok(body.to_owned()),
        _ if body.trim().is_empty() => Err(format!("it answered `{status}`")),
        _ => Err(format!("it answered `{status}`: {}", body.trim())),
    }
}

/// Writes `request` and reads the answer (1 MiB at most: a list of a run's objects is far less).
fn exchange(mut stream: impl Read + Write, request: &str) -> Result<Vec<u8>, String> {
    stream
        .write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .take(1024 * 1024)
        .read_to_end(&mut response)
        .map_err(|e| e.to_string())?;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_percent_encoded() {
        assert_eq!(
            percent_encode(r#"{"label":["hm.run=1a-2"]}"#),
            "%7B%22label%22%3A%5B%22hm.run%3D1a-2%22%5D%7D"
        );
    }

    #[test]
    fn daemon_addresses_the_kernel_can_reach() {
        let unix = |p: &str| Some(Daemon::Unix(PathBuf::from(p)));
        assert_eq!(Daemon::parse("unix:///run/x.sock"), unix("/run/x.sock"));
        assert_eq!(Daemon::parse("/run/y.sock"), unix("/run/y.sock"));
        assert_eq!(
            Daemon::parse("tcp://10.0.0.1:2375"),
            Some(Daemon::Tcp("10.0.0.1:2375".into()))
        );
        assert_eq!(
            Daemon::parse("http://manager:2375/"),
            Some(Daemon::Tcp("manager:2375".into()))
        );
        assert_eq!(Daemon::parse("ssh://me@box"), None);
        assert_eq!(Daemon::parse("tcp://"), None);
        // The guardian reads back what it was told.
        for daemon in [unix("/run/x.sock"), Daemon::parse("tcp://10.0.0.1:2375")] {
            let daemon = daemon.expect("parsed");
            assert_eq!(Daemon::parse(&daemon.to_string()), Some(daemon));
        }
    }

    #[test]
    fn the_projects_host_wins() {
        let config = |host: &str| format!(r#"{{"host":"{host}"}}"#);
        assert_eq!(
            daemon_of(Some(&config("unix:///run/x.sock"))),
            Some(Daemon::Unix(PathBuf::from("/run/x.sock")))
        );
        assert_eq!(
            daemon_of(Some(&config("tcp://10.0.0.1:2375"))),
            Some(Daemon::Tcp("10.0.0.1:2375".into()))
        );
    }
}
