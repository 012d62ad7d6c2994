//! The few Docker Engine requests the kernel makes itself (`hm doctor`'s version check, `hm
//! cache prune`'s volume removal), in plain HTTP/1.0 on the daemon's unix socket: the kernel
//! links no Docker client, and one request with a two-second deadline is all these need.

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
