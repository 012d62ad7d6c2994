//! Which backend this process can use: reads `/proc/self/cgroup` and `/proc/self/mountinfo`
//! (or the same text injected, for tests on a fake tree) and looks at hm's own cgroup in each
//! hierarchy. Detection only reads; it never creates or moves anything.

use std::path::{Path, PathBuf};

use nix::unistd::{AccessFlags, access};

use super::backend::{Backend, OwnCgroup};
use super::node::{Flavor, Node, V1Roles};
use super::v2;
use crate::events::Isolation;

/// What detection found: the level for `build_start`, the summary and `hm doctor`; why it is
/// not better (absent when it is the best there is); and the backend to create cgroups with.
#[derive(Debug, Clone)]
pub struct Detected {
    pub level: Isolation,
    pub reason: Option<String>,
    pub backend: Backend,
}

/// Detects the backend of the running system.
pub fn detect() -> Detected {
    let read =
        |path: &str| std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"));
    match (read("/proc/self/cgroup"), read("/proc/self/mountinfo")) {
        (Ok(cgroup), Ok(mountinfo)) => detect_from(&cgroup, &mountinfo),
        (Err(why), _) | (_, Err(why)) => none(why),
    }
}

/// Detects from the text of `/proc/self/cgroup` and `/proc/self/mountinfo`; the cgroup files
/// themselves are read where the mount points say, which may be a fake tree.
///
/// Prefers v2 when hm's own cgroup offers the memory and pids controllers (cpu optional), then
/// v1 when the memory, pids and freezer hierarchies are writable (cpu and cpuacct optional),
/// else none.
pub fn detect_from(proc_self_cgroup: &str, mountinfo: &str) -> Detected {
    let memberships = parse_proc_self_cgroup(proc_self_cgroup);
    let mounts = parse_mountinfo(mountinfo);
    let v2_why = match probe_v2(&memberships, &mounts) {
        Ok((own, note)) => {
            return Detected {
                level: Isolation::CgroupV2,
                reason: note,
                backend: Backend::V2(own),
            };
        }
        Err(why) => why,
    };
    match probe_v1(&memberships, &mounts) {
        Ok((own, notes)) => Detected {
            level: Isolation::CgroupV1,
            reason: Some(
                std::iter::once(v2_why)
                    .chain(notes)
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            backend: Backend::V1(own),
        },
        // A machine without any v1 hierarchy is a v2 machine: why v1 is unusable is noise.
        Err(_) if !mounts.iter().any(|m| m.fstype == "cgroup") => none(v2_why),
        Err(v1_why) => none(format!("{v2_why}; {v1_why}")),
    }
}

fn none(reason: String) -> Detected {
    Detected {
        level: Isolation::Rlimit,
        reason: Some(reason),
        backend: Backend::None,
    }
}

/// One line of `/proc/self/cgroup`: `hierarchy-id:controllers:path`.
#[derive(Debug)]
struct Membership<'a> {
    hierarchy: &'a str,
    controllers: Vec<&'a str>,
    path: &'a str,
}

fn parse_proc_self_cgroup(text: &str) -> Vec<Membership<'_>> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.splitn(3, ':');
            let hierarchy = fields.next()?;
            let controllers = fields.next()?;
            let path = fields.next()?;
            Some(Membership {
                hierarchy,
                controllers: controllers.split(',').filter(|c| !c.is_empty()).collect(),
                path,
            })
        })
        .collect()
}

/// One line of `/proc/self/mountinfo`, the fields detection needs.
#[derive(Debug)]
struct Mount {
    root: String,
    point: PathBuf,
    fstype: String,
    super_options: Vec<String>,
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            // id parent major:minor root point options [optional...] - fstype source super
            let dash = fields.iter().position(|f| *f == "-")?;
            if dash < 6 || fields.len() < dash + 4 {
                return None;
            }
            Some(Mount {
                root: unescape(fields[3]),
                point: PathBuf::from(unescape(fields[4])),
                fstype: fields[dash + 1].to_owned(),
                super_options: fields[dash + 3].split(',').map(str::to_owned).collect(),
            })
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            d.iter()
                .all(|b| (b'0'..=b'7').contains(b))
                .then(|| d.iter().fold(0u32, |n, b| n * 8 + u32::from(b - b'0')))
        });
        match (bytes[i], octal) {
            (b'\\', Some(n)) if n <= 0xff => {
                out.push(n as u8);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// hm's own cgroup directory through `mount`, if that mount shows it: the mount's root must
/// be a prefix of the cgroup path (a container may see only a subtree).
fn own_dir(mount: &Mount, cgroup_path: &str) -> Option<PathBuf> {
    if cgroup_path.ends_with(" (deleted)") {
        return None;
    }
    let relative = if mount.root == "/" {
        cgroup_path
    } else {
        let rest = cgroup_path.strip_prefix(mount.root.as_str())?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        rest
    };
    let mut dir = mount.point.clone();
    for part in relative.split('/').filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            return None;
        }
        dir.push(part);
    }
    Some(dir)
}

fn writable(dir: &Path) -> Result<(), String> {
    access(dir, AccessFlags::W_OK).map_err(|e| format!("{} is not writable ({e})", dir.display()))
}

fn probe_v2(
    memberships: &[Membership<'_>],
    mounts: &[Mount],
) -> Result<(OwnCgroup, Option<String>), String> {
    let membership = memberships
        .iter()
        .find(|m| m.hierarchy == "0" && m.controllers.is_empty())
        .ok_or("cgroup v2: hm is in no cgroup v2 hierarchy")?;
    let (mount, own) = mounts
        .iter()
        .filter(|m| m.fstype == "cgroup2")
        .find_map(|m| Some((m, own_dir(m, membership.path)?)))
        .ok_or("cgroup v2: the unified hierarchy is not mounted")?;
    // The hierarchy's real root is exempt from the no-internal-process rule (it always holds
    // processes: kernel threads, init), and hm stays in it.
    let root = mount.root == "/" && membership.path == "/";
    let available = std::fs::read_to_string(own.join("cgroup.controllers")).map_err(|e| {
        format!(
            "cgroup v2: cannot read {}: {e}",
            own.join("cgroup.controllers").display()
        )
    })?;
    let available: Vec<&str> = available.split_whitespace().collect();
    let missing: Vec<&str> = ["memory", "pids"]
        .into_iter()
        .filter(|c| !available.contains(c))
        .collect();
    if !missing.is_empty() {
        let noun = if missing.len() == 1 {
            "controller is"
        } else {
            "controllers are"
        };
        return Err(format!(
            "cgroup v2: the {} {noun} not available in {}",
            missing.join(" and "),
            own.display()
        ));
    }
    writable(&own).map_err(|why| format!("cgroup v2: {why}"))?;
    let mut controllers = vec!["memory", "pids"];
    let has_cpu = available.contains(&"cpu");
    if has_cpu {
        controllers.push("cpu");
    }
    let enabled = std::fs::read_to_string(own.join("cgroup.subtree_control")).unwrap_or_default();
    let all_enabled = controllers
        .iter()
        .all(|c| enabled.split_whitespace().any(|e| e == *c));
    if !all_enabled && !root && !v2::other_processes(&own).is_empty() {
        return Err(format!(
            "cgroup v2: {} also holds other processes, so hm cannot enable controllers below \
             it (no-internal-process rule); start hm in a cgroup of its own (e.g. \
             `systemd-run --scope -p Delegate=yes`)",
            own.display()
        ));
    }
    let note = (!has_cpu).then(|| {
        format!(
            "cgroup v2: the cpu controller is not available in {}, so cpu limits are not enforced",
            own.display()
        )
    });
    let node = Node {
        flavor: Flavor::V2 { controllers },
        dirs: vec![own],
    };
    Ok((OwnCgroup { node, root }, note))
}

fn probe_v1(
    memberships: &[Membership<'_>],
    mounts: &[Mount],
) -> Result<(OwnCgroup, Vec<String>), String> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut roles = V1Roles::default();
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    // The freezer comes first so that it is `dirs[0]` (see `Node::dirs`).
    for role in ["freezer", "memory", "pids", "cpu", "cpuacct"] {
        let found = (|| {
            let membership = memberships
                .iter()
                .find(|m| m.hierarchy != "0" && m.controllers.contains(&role))
                .ok_or_else(|| format!("{role} hierarchy not mounted"))?;
            let dir = mounts
                .iter()
                .filter(|m| m.fstype == "cgroup")
                .filter(|m| {
                    membership
                        .controllers
                        .iter()
                        .all(|c| m.super_options.iter().any(|o| o == c))
                })
                .find_map(|m| own_dir(m, membership.path))
                .ok_or_else(|| format!("{role} hierarchy not mounted"))?;
            // Co-mounted controllers (`cpu,cpuacct`) share one directory.
            if let Some(i) = dirs.iter().position(|d| *d == dir) {
                return Ok(i);
            }
            writable(&dir).map_err(|why| format!("{role} hierarchy: {why}"))?;
            dirs.push(dir);
            Ok::<_, String>(dirs.len() - 1)
        })();
        match (role, found) {
            (_, Ok(i)) => {
                let slot = match role {
                    "freezer" => &mut roles.freezer,
                    "memory" => &mut roles.memory,
                    "pids" => &mut roles.pids,
                    "cpu" => &mut roles.cpu,
                    _ => &mut roles.cpuacct,
                };
                *slot = Some(i);
            }
            ("cpu", Err(why)) => {
                notes.push(format!("cgroup v1: {why}, so cpu limits are not enforced"));
            }
            ("cpuacct", Err(why)) => {
                notes.push(format!("cgroup v1: {why}, so cpu time is not measured"));
            }
            (_, Err(why)) => problems.push(why),
        }
    }
    if !problems.is_empty() {
        return Err(format!("cgroup v1: {}", problems.join(", ")));
    }
    let node = Node {
        flavor: Flavor::V1(roles),
        dirs,
    };
    Ok((OwnCgroup { node, root: false }, notes))
}
