//! What this host must have for a swarm, and where its tools are: the skip (or, under
//! `HM_REQUIRE_SWARM=1`, the failure) when it cannot have one.

use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::tag::base_dir;

/// Where root's tools are that a user's `PATH` may lack (`ip`, `dockerd`, `iptables`).
const SBIN: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin"];

/// The tools a swarm is made with, and the Debian package of each.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("nsenter", "util-linux"),
    ("unshare", "util-linux"),
    ("umount", "mount"),
    ("dockerd", "docker.io"),
    ("containerd", "containerd"),
    ("runc", "runc"),
    ("docker", "docker.io"),
];

/// `PATH` with root's `sbin` directories added, for the tools and for dockerd (which runs
/// `iptables`, `containerd` and `runc` from it).
pub(super) fn search_path() -> OsString {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for sbin in SBIN {
        if !dirs.iter().any(|d| d.as_os_str() == *sbin) {
            dirs.push(PathBuf::from(sbin));
        }
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// The path of `name` on [`search_path`], or `name` itself when it is not there (running it
/// then fails with an error that names it).
pub(super) fn tool(name: &str) -> PathBuf {
    find(name).unwrap_or_else(|| PathBuf::from(name))
}

fn find(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&search_path())
        .map(|dir| dir.join(name))
        .find(|path| {
            std::fs::metadata(path)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Why a swarm cannot run here, if it cannot: not root, a tool missing, no network or mount
/// namespaces, no cgroups, or a temp directory too deep for the daemons' socket paths.
pub fn unavailable_reason() -> Option<String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Some("a swarm needs root (network namespaces, links, dockerd)".to_owned());
    }
    for (name, package) in TOOLS {
        if find(name).is_none() {
            return Some(format!(
                "{name} is not installed (apt-get install {package})"
            ));
        }
    }
    let probe = Command::new(tool("unshare"))
        .args(["--net", "--uts", "--mount", "true"])
        .stdin(Stdio::null())
        .output();
    match probe {
        Err(e) => return Some(format!("cannot run unshare: {e}")),
        Ok(out) if !out.status.success() => {
            return Some(format!(
                "cannot make network, hostname and mount namespaces: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(_) => {}
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if !mountinfo.contains(" - cgroup") {
        return Some("no cgroup hierarchy is mounted".to_owned());
    }
    // The deepest socket a node has: containerd's in its exec root (a unix socket's path has
    // at most 107 bytes).
    let deepest = base_dir().join("hmsw0000000_000/node-99/exec/containerd/containerd.sock");
    if deepest.as_os_str().len() > 107 {
        return Some(format!(
            "the temp directory is too deep for the daemons' sockets ({} is over 107 bytes): \
             set TMPDIR to a shorter one",
            deepest.display()
        ));
    }
    None
}

/// Says that swarm test `test` is skipped and why; under `HM_REQUIRE_SWARM=1` fails it
/// instead.
pub fn skip(test: &str, reason: &str) {
    assert!(
        std::env::var_os("HM_REQUIRE_SWARM").is_none_or(|v| v != "1"),
        "{test}: {reason}, and HM_REQUIRE_SWARM=1"
    );
    eprintln!("{test}: skipped: {reason}");
}
