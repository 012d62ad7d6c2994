//! The few Docker Engine requests the kernel makes itself (`hm doctor`'s version check, `hm
//! cache prune`'s volume removal, the removal of a run's containers and networks by hm at its
//! exit and by the guardian when hm was killed), in plain HTTP/1.0 on the daemon's unix socket:
//! the kernel links no Docker client, and requests with a two-second deadline are all these
//! need.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The daemon's socket: `DOCKER_HOST` when it is `unix://...`, else the default socket;
/// `None` for a `DOCKER_HOST` that is no unix socket.
pub fn socket() -> Option<PathBuf> {
    let host =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    host.strip_prefix("unix://").map(PathBuf::from)
}

/// The socket of the daemon a project's docker steps use: `[plugins.docker].config.host`
/// (given as `config_json`) when it sets one, else [`socket`]. `None` for a daemon that is no
/// unix socket.
pub fn socket_of(config_json: Option<&str>) -> Option<PathBuf> {
    let host = config_json
        .and_then(|json| serde_json::from_str::<serde_json::Value>(json).ok())
        .and_then(|config| config.get("host")?.as_str().map(str::to_owned));
    match host {
        Some(host) if host.starts_with('/') => Some(PathBuf::from(host)),
        Some(host) => host.strip_prefix("unix://").map(PathBuf::from),
        None => socket(),
    }
}

/// Removes every swarm service, then force-removes every container (with its anonymous
/// volumes) and every network that carries the label `hm.run=<run_id>`; returns how many
/// containers and networks were removed (services take their tasks' containers with them). A
/// daemon that is no swarm manager has no services to remove.
pub fn remove_run(socket: &Path, run_id: &str) -> Result<(usize, usize), String> {
    let filter = percent_encode(&format!(r#"{{"label":["hm.run={run_id}"]}}"#));
    // A swarm task's container goes with its service, by the swarm's own stop.
    let ids = |target: &str| -> Result<Vec<String>, String> {
        let body = request(socket, "GET", target, &["200"])?;
        let listed: Vec<serde_json::Value> =
            serde_json::from_str(&body).map_err(|e| format!("unreadable answer: {e}"))?;
        Ok(listed
            .iter()
            .filter(|item| item["Labels"].get(SWARM_TASK_LABEL).is_none())
            .filter_map(|item| item.get("Id")?.as_str().map(str::to_owned))
            .collect())
    };
    // 503: not a swarm manager, so no services.
    if let Ok(body) = request(
        socket,
        "GET",
        &format!("/services?filters={filter}"),
        &["200"],
    ) {
        let listed: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap_or_default();
        for id in listed.iter().filter_map(|s| s.get("ID")?.as_str()) {
            request(
                socket,
                "DELETE",
                &format!("/services/{id}"),
                &["200", "404"],
            )?;
        }
    }
    let mut containers = 0;
    for id in ids(&format!("/containers/json?all=1&filters={filter}"))? {
        request(
            socket,
            "DELETE",
            &format!("/containers/{id}?force=1&v=1"),
            &["204", "404", "409"],
        )?;
        containers += 1;
    }
    let mut networks = 0;
    for id in ids(&format!("/networks?filters={filter}"))? {
        request(
            socket,
            "DELETE",
            &format!("/networks/{id}"),
            &["204", "404"],
        )?;
        networks += 1;
    }
    Ok((containers, networks))
}

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

/// `METHOD target` on the daemon at `socket`; the body when the status is one of `ok`,
/// else what the daemon answered.
pub fn request(socket: &Path, method: &str, target: &str, ok: &[&str]) -> Result<String, String> {
    let timeout = Some(Duration::from_secs(2));
    let mut stream = UnixStream::connect(socket).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(timeout)
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(timeout)
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("{method} {target} HTTP/1.0\r\nHost: docker\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .take(1024 * 1024)
        .read_to_end(&mut response)
        .map_err(|e| e.to_string())?;
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
    fn the_projects_host_wins_when_it_is_a_unix_socket() {
        let config = |host: &str| format!(r#"{{"host":"{host}"}}"#);
        assert_eq!(
            socket_of(Some(&config("unix:///run/x.sock"))),
            Some(PathBuf::from("/run/x.sock"))
        );
        assert_eq!(
            socket_of(Some(&config("/run/y.sock"))),
            Some(PathBuf::from("/run/y.sock"))
        );
        assert_eq!(socket_of(Some(&config("tcp://10.0.0.1:2375"))), None);
    }
}
