//! The names of one swarm's pieces on the host, all derived from its tag
//! (`hmsw<owner pid, hex>_<counter, 3 hex digits>`), and who owns a tag: a stale swarm is found
//! from whichever of its pieces is left, and its owner told dead from the name alone.

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use nix::fcntl::{Flock, FlockArg};

/// What every name of every swarm starts with.
const PREFIX: &str = "hmsw";

/// One swarm's tag. It is also the name of the swarm's link in the host's namespace, so it
/// stays within the 15 bytes of an interface name: `hmsw` + up to 7 hex digits of a pid
/// (`pid_max` is at most 2^22) + `_` + 3 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Tag(String);

impl Tag {
    /// A tag that no other live swarm has: this process's pid and the next of its counter.
    pub(super) fn next() -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed) % 0x1000;
        Self(format!("{PREFIX}{:x}_{n:03x}", std::process::id()))
    }

    /// The tag that `name` (a netns, a link, a cgroup, a directory) starts with, if it is one.
    /// The character after the tag, if any, must be `-`, so that no tag is read from a longer
    /// one.
    pub(super) fn of_name(name: &str) -> Option<Self> {
        let rest = name.strip_prefix(PREFIX)?;
        let (pid, rest) = rest.split_once('_')?;
        let counter = rest.get(..3)?;
        let lower_hex = |s: &str| s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let valid = (1..=7).contains(&pid.len())
            && lower_hex(pid)
            && lower_hex(counter)
            && matches!(rest.as_bytes().get(3), None | Some(b'-'));
        valid.then(|| Self(format!("{PREFIX}{pid}_{counter}")))
    }

    pub(super) fn as_str(&self) -> &str {
        &self.0
    }

    /// The pid of the process that made this swarm.
    pub(super) fn owner(&self) -> Option<i32> {
        let pid = self.0.strip_prefix(PREFIX)?.split_once('_')?.0;
        i32::from_str_radix(pid, 16).ok()
    }

    /// Whether the process that made this swarm is still running: its pid is alive and, when
    /// the swarm's `owner` file says when that process started, it is the same process (a pid
    /// can be reused once its owner is gone).
    pub(super) fn owner_alive(&self) -> bool {
        let Some(stat) = self.owner().and_then(hm_sdk::procfs::stat) else {
            return false;
        };
        if stat.is_dead() {
            return false;
        }
        let recorded = std::fs::read_to_string(self.dir().join("owner"))
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok());
        recorded.is_none_or(|start| start == stat.start_time)
    }

    /// Writes the `owner` file that [`Tag::owner_alive`] reads: this process's pid and start
    /// time.
    pub(super) fn record_owner(&self) -> std::io::Result<()> {
        let pid = std::process::id() as i32;
        let start = hm_sdk::procfs::stat(pid).map_or(0, |s| s.start_time);
        std::fs::write(self.dir().join("owner"), format!("{pid} {start}\n"))
    }

    /// What every process of the swarm but its containers has in its command line: dockerd,
    /// containerd and each shim name paths in the swarm's directory.
    pub(super) fn needle(&self) -> String {
        format!("/{}/", self.0)
    }

    /// The directory holding every node's data root, exec root, socket, config and log.
    pub(super) fn dir(&self) -> PathBuf {
        base_dir().join(&self.0)
    }

    /// The network namespace holding the swarm's bridge.
    pub(super) fn hub_netns(&self) -> String {
        format!("{}-hub", self.0)
    }

    /// Node `index`'s network namespace, and the name of its cgroup parent.
    pub(super) fn node_netns(&self, index: usize) -> String {
        format!("{}-node-{index}", self.0)
    }

    /// The name of the host's end of the veth into the hub.
    pub(super) fn host_link(&self) -> &str {
        &self.0
    }

    /// Whether a name (of a netns, a cgroup, a directory) belongs to this swarm.
    pub(super) fn owns(&self, name: &str) -> bool {
        name == self.0
            || name
                .strip_prefix(self.0.as_str())
                .is_some_and(|rest| rest.starts_with('-'))
    }
}

/// Where the swarms' directories are: `$TMPDIR/hm-swarm` (a disk-backed directory on the
/// project's machines; a manager's data root holds ~125 MB, most of it raft's preallocated
/// log).
pub(super) fn base_dir() -> PathBuf {
    std::env::temp_dir().join("hm-swarm")
}

/// The lock every [`super::Swarm::start`] holds while it sweeps stale swarms and claims a
/// subnet, so that two starts (in two test processes) never claim the same one and never
/// remove what the other is creating: an `flock` on [`base_dir`] itself, so that no lock file
/// is left.
pub(super) fn lock() -> Result<Flock<File>, String> {
    let dir = base_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let file = File::open(&dir).map_err(|e| format!("cannot open {}: {e}", dir.display()))?;
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("cannot lock {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tag_is_read_back_from_every_name_made_from_it_and_from_nothing_else() {
        let tag = Tag::next();
        assert!(tag.as_str().len() <= 15, "{tag:?} is too long for a link");
        for name in [tag.as_str().to_owned(), tag.hub_netns(), tag.node_netns(12)] {
            assert_eq!(Tag::of_name(&name).as_ref(), Some(&tag), "{name}");
            assert!(tag.owns(&name), "{name}");
        }
        assert_eq!(tag.owner(), Some(std::process::id() as i32));
        assert!(tag.owner_alive());
        for name in [
            "hmsw",
            "hmsw_000",
            "hmsw12_00",
            "hmsw12_0000",
            "hmswXY_000",
            "docker0",
        ] {
            assert_eq!(Tag::of_name(name), None, "{name}");
        }
        let longer = Tag::of_name("hmsw1_0010").map(|t| t.as_str().to_owned());
        assert_eq!(longer, None);
        assert!(!tag.owns(&format!("{}0", tag.as_str())));
    }

    #[test]
    fn the_owner_of_a_tag_whose_process_is_gone_is_dead() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let pid = child.id();
        child.wait().expect("reap true");
        let tag = Tag::of_name(&format!("{PREFIX}{pid:x}_000")).expect("a tag");
        assert!(!tag.owner_alive(), "{tag:?}");
    }
}
