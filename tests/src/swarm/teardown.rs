//! Taking a swarm apart, and showing that it is gone. Everything is found from the swarm's
//! tag, never from what the fixture remembers, so the same code removes a swarm being dropped
//! and one that a killed test process left behind ([`sweep_stale`]), and the check after a
//! drop ([`Footprint::leftovers`]) looks at the host itself.
//!
//! The order matters: every process first (SIGKILL: the swarm is thrown away, and a dockerd
//! asked to stop would give each running task its 10 s stop timeout), so that the nodes'
//! mount namespaces, and their overlay mounts, go with them; then the links and namespaces;
//! then the cgroups (empty only once their processes are gone); then the sockets the shims
//! left in containerd's shared `/run/containerd/s`; the directory last.

use std::collections::BTreeSet;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::network;
use super::tag::{Tag, base_dir};

/// How long the killed processes get to be gone.
const KILL_DEADLINE: Duration = Duration::from_secs(10);
/// How long a cgroup whose processes are gone may stay busy.
const CGROUP_DEADLINE: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(10);

/// What the teardown of one swarm met: what it could not remove, and the sockets outside the
/// swarm's directory that it removed (the check after the drop looks that they stay gone).
#[derive(Debug, Default)]
pub(super) struct Removal {
    problems: Vec<String>,
    sockets: Vec<PathBuf>,
}

impl Removal {
    /// Whether everything could be removed.
    pub(super) fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Kills every process of the swarm `tag`, then removes its mounts, links, namespaces,
/// cgroups, stray sockets and directory. `daemons` are the dockerd children of this process,
/// reaped here. Never panics (it runs in `Drop`, maybe while a failing test unwinds): what it
/// could not do is in the result.
pub(super) fn remove(tag: &Tag, daemons: Vec<Child>) -> Removal {
    let mut removal = Removal::default();
    let dir = tag.dir();
    for mut daemon in daemons {
        let _ = daemon.kill();
        let _ = daemon.wait();
    }
    let deadline = Instant::now() + KILL_DEADLINE;
    let mut sockets = BTreeSet::new();
    loop {
        let pids = processes(tag);
        if pids.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            removal.problems.push(format!(
                "processes still alive {KILL_DEADLINE:?} after SIGKILL: {pids:?}"
            ));
            break;
        }
        for pid in pids {
            // Before the kill: a shim's socket in /run/containerd/s is known only from the
            // live shim, and a killed shim does not remove it.
            sockets.extend(listening_sockets(pid, &dir));
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(POLL);
    }
    for point in mounts_below(&dir) {
        if let Err(e) = run("umount", &["--lazy", &point]) {
            removal.problems.push(e);
        }
    }
    if network::host_links().iter().any(|l| l == tag.host_link()) {
        if let Err(e) = network::ip(&["link", "del", tag.host_link()]) {
            removal.problems.push(e);
        }
    }
    for netns in network::netns_names() {
        if tag.owns(&netns) {
            if let Err(e) = network::ip(&["netns", "del", &netns]) {
                removal.problems.push(e);
            }
        }
    }
    for cgroup in cgroup_dirs(tag) {
        if let Err(e) = remove_cgroup(&cgroup, Instant::now() + CGROUP_DEADLINE) {
            removal.problems.push(e);
        }
    }
    for socket in sockets {
        let is_socket = std::fs::symlink_metadata(&socket).is_ok_and(|m| m.file_type().is_socket());
        if is_socket {
            if let Err(e) = std::fs::remove_file(&socket) {
                removal
                    .problems
                    .push(format!("cannot remove {}: {e}", socket.display()));
            }
        }
        removal.sockets.push(socket);
    }
    if dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            removal
                .problems
                .push(format!("cannot remove {}: {e}", dir.display()));
        }
    }
    removal
}

/// Removes every swarm whose owner is dead (a test process that was killed, or that crashed
/// before its swarms were dropped), found by any piece of it that is left. The caller holds
/// [`super::tag::lock`], so no swarm being made is mistaken for a stale one.
pub(super) fn sweep_stale() {
    let mut names = network::netns_names();
    names.extend(network::host_links());
    for root in cgroup_roots() {
        names.extend(dir_names(&root));
    }
    names.extend(dir_names(&base_dir()));
    let tags: BTreeSet<Tag> = names.iter().filter_map(|n| Tag::of_name(n)).collect();
    for tag in tags {
        if tag.owner_alive() {
            continue;
        }
        let removal = remove(&tag, Vec::new());
        eprintln!(
            "removed swarm {} left by process {} (gone){}",
            tag.as_str(),
            tag.owner().unwrap_or_default(),
            if removal.problems.is_empty() {
                String::new()
            } else {
                format!(", but: {:?}", removal.problems)
            }
        );
    }
}

/// What a swarm is made of on the host, kept to check, once the swarm is dropped, that none
/// of it is left ([`assert_nothing_left`]).
#[derive(Debug, Clone)]
pub struct Footprint {
    tag: Tag,
    removal: Arc<Mutex<Option<Removal>>>,
}

impl Footprint {
    pub(super) fn new(tag: Tag, removal: Arc<Mutex<Option<Removal>>>) -> Self {
        Self { tag, removal }
    }

    /// The footprint of the swarm tagged `tag` (see [`super::Swarm::tag`]), which another
    /// process may have made; `None` when `tag` is not a swarm's tag.
    pub fn of_tag(tag: &str) -> Option<Self> {
        let tag = Tag::of_name(tag).filter(|t| t.as_str() == tag)?;
        Some(Self::new(tag, Arc::default()))
    }

    /// What of the swarm is still on the host, one line each: a process (found by the
    /// swarm's directory in its command line; a container's keeps its cgroup), a
    /// network namespace, the host's link, a cgroup, a mount, the directory, a socket it
    /// removed; and whatever its teardown reported it could not do.
    pub fn leftovers(&self) -> Vec<String> {
        let tag = &self.tag;
        let mut left = Vec::new();
        for (pid, cmdline) in processes_naming(&tag.needle()) {
            left.push(format!("process {pid}: {cmdline}"));
        }
        for cgroup in cgroup_dirs(tag) {
            left.push(format!("cgroup {}", cgroup.display()));
        }
        for netns in network::netns_names() {
            if tag.owns(&netns) {
                left.push(format!("network namespace {netns}"));
            }
        }
        if network::host_links().iter().any(|l| l == tag.host_link()) {
            left.push(format!("host link {}", tag.host_link()));
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mountinfo.lines() {
            let point = line.split(' ').nth(4).unwrap_or_default();
            if point.contains(&tag.needle()) || point.contains(&format!("/{}-", tag.as_str())) {
                left.push(format!("mount {point}"));
            }
        }
        if tag.dir().exists() {
            left.push(format!("directory {}", tag.dir().display()));
        }
        if let Ok(removal) = self.removal.lock() {
            if let Some(removal) = removal.as_ref() {
                for socket in &removal.sockets {
                    if socket.exists() {
                        left.push(format!("socket {}", socket.display()));
                    }
                }
                for problem in &removal.problems {
                    left.push(format!("teardown: {problem}"));
                }
            }
        }
        left
    }

    /// The swarm's tag.
    pub fn tag(&self) -> &str {
        self.tag.as_str()
    }
}

/// Asserts that nothing of the swarm `footprint` describes is left on the host (see
/// [`Footprint::leftovers`]). Call it after dropping the swarm.
pub fn assert_nothing_left(footprint: &Footprint) {
    let left = footprint.leftovers();
    assert!(
        left.is_empty(),
        "swarm {} left behind:\n  {}",
        footprint.tag(),
        left.join("\n  ")
    );
}

/// The live processes of the swarm: those with its directory in their command line (each
/// dockerd, containerd and shim), and those in its nodes' cgroups (the containers). Not a
/// process with a node's socket in its environment only (`DOCKER_HOST`): that may be a
/// developer's shell.
fn processes(tag: &Tag) -> BTreeSet<i32> {
    let mut pids: BTreeSet<i32> = processes_naming(&tag.needle())
        .into_iter()
        .map(|(pid, _)| pid)
        .collect();
    for cgroup in cgroup_dirs(tag) {
        for dir in dirs_below(&cgroup) {
            let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
    }
    pids.retain(|&pid| is_alive(pid));
    pids
}

/// Live processes other than this one whose command line contains `needle`, with it.
fn processes_naming(needle: &str) -> Vec<(i32, String)> {
    let me = std::process::id() as i32;
    hm_sdk::procfs::pids()
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (cmdline.contains(needle) && is_alive(pid)).then(|| (pid, cmdline.trim().to_owned()))
        })
        .collect()
}

/// Whether `pid` is running (not gone, not a zombie).
fn is_alive(pid: i32) -> bool {
    hm_sdk::procfs::stat(pid).is_some_and(|s| !s.is_dead())
}

/// The unix sockets outside `dir` that process `pid` listens on. `/proc/PID/net/unix` lists
/// the sockets of the process's network namespace (the node's); the process's own are those
/// whose inode is one of its descriptors.
fn listening_sockets(pid: i32, dir: &Path) -> Vec<PathBuf> {
    let inodes: BTreeSet<u64> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .filter_map(|target| {
                    let target = target.to_string_lossy().into_owned();
                    target
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/unix")).unwrap_or_default();
    // `Num RefCount Protocol Flags Type St Inode Path`; flag 0x10000 is a listening socket.
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let flags = u32::from_str_radix(fields.get(3)?, 16).ok()?;
            let inode: u64 = fields.get(6)?.parse().ok()?;
            let path = Path::new(fields.get(7)?);
            let ours = flags & 0x1_0000 != 0 && inodes.contains(&inode);
            (ours && path.is_absolute() && !path.starts_with(dir)).then(|| path.to_path_buf())
        })
        .collect()
}

/// Mount points at or below `dir`, deepest first. With the nodes' mount namespaces gone there
/// are none (their mounts never reached the host's table); this is for a host where they did.
fn mounts_below(dir: &Path) -> Vec<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<String> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|point| Path::new(point).starts_with(dir))
        .map(str::to_owned)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points
}

/// The mount points of every cgroup hierarchy (each v1 controller, the v2 tree).
fn cgroup_roots() -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split(' ').next()?;
            let point = left.split(' ').nth(4)?;
            matches!(fstype, "cgroup" | "cgroup2").then(|| PathBuf::from(point))
        })
        .collect()
}

/// The cgroup parents of the swarm's nodes (`/<tag>-node-N`) in every hierarchy, as far as
/// they exist.
fn cgroup_dirs(tag: &Tag) -> Vec<PathBuf> {
    cgroup_roots()
        .into_iter()
        .flat_map(|root| {
            dir_names(&root)
                .into_iter()
                .filter(|name| tag.owns(name))
                .map(move |name| root.join(name))
        })
        .collect()
}

/// `dir` and every directory below it, parents before children.
fn dirs_below(dir: &Path) -> Vec<PathBuf> {
    let mut all = vec![dir.to_path_buf()];
    let mut next = 0;
    while next < all.len() {
        if let Ok(entries) = std::fs::read_dir(&all[next]) {
            all.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        next += 1;
    }
    all
}

/// Removes a cgroup and the ones below it, children first. A cgroup whose last process was
/// just killed can stay busy for a moment, so each `rmdir` is retried until `deadline`.
fn remove_cgroup(cgroup: &Path, deadline: Instant) -> Result<(), String> {
    for dir in dirs_below(cgroup).iter().rev() {
        loop {
            match std::fs::remove_dir(dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if Instant::now() >= deadline => {
                    return Err(format!("cannot remove cgroup {}: {e}", dir.display()));
                }
                Err(_) => std::thread::sleep(POLL),
            }
        }
    }
    Ok(())
}

/// The names of the entries of `dir` (none when it cannot be read).
fn dir_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn run(tool: &str, args: &[&str]) -> Result<(), String> {
    let out = std::process::Command::new(super::host::tool(tool))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {tool}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{tool} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
