//! The two guests the scenarios run in, what each needs on the host, and the scenario scripts
//! each runs (`tests/vm/minimal/*.sh`, `tests/vm/systemd/*.sh`).

use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::image;

/// A VM the scenarios run in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Guest {
    /// A busybox initramfs whose `/init` mounts cgroup2 and runs the scenarios as root: hm in
    /// cgroups set up by hand (its own, a shared one, the root).
    Minimal,
    /// Debian with systemd as PID 1, logind, and a lingering user `hmuser` (uid 1000) with a
    /// running user manager: hm from login shells, as root and as that user.
    Systemd,
}

impl Guest {
    pub const ALL: [Guest; 2] = [Guest::Minimal, Guest::Systemd];

    /// Its name: the directory of its scenarios, and its image in the cache.
    pub fn name(self) -> &'static str {
        match self {
            Guest::Minimal => "minimal",
            Guest::Systemd => "systemd",
        }
    }

    /// Guest memory: the systemd image is unpacked into RAM (root on tmpfs).
    pub(crate) fn memory_mib(self) -> u32 {
        match self {
            Guest::Minimal => 1024,
            Guest::Systemd => 2048,
        }
    }

    /// The kernel command line, without the scenario selection.
    pub(crate) fn kernel_args(self) -> &'static str {
        match self {
            Guest::Minimal => "console=ttyS0 rdinit=/init panic=-1",
            // No /etc/initrd-release: systemd takes the initramfs for the real root. No getty:
            // without udev, /dev/ttyS0 never becomes a device unit, and a serial getty would
            // wait 90 s for it before multi-user.target.
            Guest::Systemd => {
                "console=ttyS0 rdinit=/sbin/init systemd.unified_cgroup_hierarchy=1 \
                 systemd.getty_auto=0 panic=-1"
            }
        }
    }

    /// `tests/vm/<name>/`: its scenario scripts.
    pub fn scenario_dir(self) -> PathBuf {
        super::vm_dir().join(self.name())
    }

    /// Its scenarios in the order they run: the script names without the `NN-` ordering
    /// prefix and `.sh`, with their scripts.
    pub fn scenarios(self) -> Vec<(String, PathBuf)> {
        let mut scripts: Vec<PathBuf> = std::fs::read_dir(self.scenario_dir())
            .map(|dir| dir.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        scripts.retain(|p| p.extension().is_some_and(|e| e == "sh"));
        scripts.sort();
        scripts
            .into_iter()
            .map(|path| (scenario_name(&path), path))
            .collect()
    }

    /// Why this guest cannot be booted here, if it cannot: each missing tool with the package
    /// that brings it.
    pub fn unavailable_reason(self) -> Option<String> {
        let mut missing = Vec::new();
        for (tool, package) in [
            ("qemu-system-x86_64", "qemu-system-x86"),
            ("apt-get", "apt"),
            ("apt-cache", "apt"),
            ("dpkg-deb", "dpkg"),
            ("strip", "binutils"),
            ("setpriv", "util-linux"),
        ] {
            if !on_path(tool) {
                missing.push(format!("{tool} (apt-get install {package})"));
            }
        }
        if self == Guest::Systemd && !on_path("debootstrap") {
            missing.push("debootstrap (apt-get install debootstrap)".to_owned());
        }
        if !missing.is_empty() {
            return Some(format!("missing {}", missing.join(", ")));
        }
        if self == Guest::Systemd && !nix::unistd::geteuid().is_root() {
            return Some("building the systemd image needs root (debootstrap)".to_owned());
        }
        if let Err(why) = image::cache_usable() {
            return Some(why);
        }
        image::inputs_known(self).err()
    }
}

/// `20-oom.sh` → `oom`.
fn scenario_name(script: &std::path::Path) -> String {
    let stem = script
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    match stem.split_once('-') {
        Some((order, name)) if order.bytes().all(|b| b.is_ascii_digit()) => name.to_owned(),
        _ => stem,
    }
}

fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", "command -v \"$1\"", "sh", tool])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
