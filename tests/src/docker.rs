//! What the Docker tests need: a daemon that answers (or a clear skip, and a failure under
//! `HM_REQUIRE_DOCKER=1`), a tiny local image, and cleanup of everything they create. The
//! end-to-end tests use it, and so do the docker plugin's own tests against the daemon (a
//! dev-dependency of `hm-plugin-docker`, so this crate must never depend on that plugin).
//!
//! Images cannot be pulled on the project's machines, so each test builds its own: a root
//! filesystem holding a static busybox (Debian's `busybox-static`) and a link for each of its
//! applets, streamed as a tar into `docker import` under a tag unique to the test. The
//! [`DockerFixture`] guard removes the containers of every run it watched and then the image,
//! also when the test fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

/// Where Debian's `busybox-static` installs the binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// The `docker` command line, for what the tests check and clean up (hm itself uses the API).
pub fn docker(args: &[&str]) -> Output {
    docker_command(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run docker {args:?}: {e}"))
}

/// [`docker`] for cleanup, which may run while a failing test unwinds and so never panics:
/// `None` when the command cannot be run.
pub fn docker_quiet(args: &[&str]) -> Option<Output> {
    docker_command(args).output().ok()
}

fn docker_command(args: &[&str]) -> Command {
    let mut command = Command::new("docker");
    command.args(args).stdin(Stdio::null());
    command
}

/// Why Docker tests cannot run here, if they cannot: no daemon answering, or no static busybox
/// to build the image from.
pub fn unavailable_reason() -> Option<String> {
    match docker_command(&["version", "--format", "{{.Server.Version}}"]).output() {
        Err(e) => return Some(format!("the docker command line cannot be run ({e})")),
        Ok(out) if !out.status.success() => {
            return Some(format!(
                "no Docker daemon answers ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(_) => {}
    }
    match std::fs::read(BUSYBOX) {
        Err(e) => Some(format!(
            "{BUSYBOX} is missing ({e}): apt-get install busybox-static"
        )),
        Ok(elf) if !is_static_elf(&elf) => Some(format!(
            "{BUSYBOX} is not statically linked: apt-get install busybox-static"
        )),
        Ok(_) => None,
    }
}

/// Whether `elf` is a 64-bit little-endian ELF without a program interpreter (`PT_INTERP`),
/// which is what runs in an image holding nothing else.
fn is_static_elf(elf: &[u8]) -> bool {
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_le_bytes)
    };
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (u64_at(0x20), u16_at(0x36), u16_at(0x38))
    else {
        return false;
    };
    (0..phnum as usize).all(|i| {
        let header = phoff as usize + i * phentsize as usize;
        // PT_INTERP = 3
        u32_at(header).is_some_and(|p_type| p_type != 3)
    })
}

/// Says that Docker test `test` is skipped and why; under `HM_REQUIRE_DOCKER=1` fails it
/// instead.
pub fn skip(test: &str, reason: &str) {
    assert!(
        std::env::var_os("HM_REQUIRE_DOCKER").is_none_or(|v| v != "1"),
        "{test}: {reason}, and HM_REQUIRE_DOCKER=1"
    );
    eprintln!("{test}: skipped: {reason}");
}

/// `docker import` of a root filesystem holding busybox, a link for each of its applets and a
/// file `/generation` holding `generation`, under the reference `image`. Another generation
/// makes another image (another ID) whatever the clock says.
pub fn import_busybox(image: &str, generation: &str) {
    let busybox = std::fs::read(BUSYBOX).expect("read busybox");
    let mut rootfs = tar::Builder::new(Vec::new());
    for (path, mode, content) in [
        ("bin/busybox", 0o755, &busybox[..]),
        ("generation", 0o644, generation.as_bytes()),
    ] {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(mode);
        rootfs
            .append_data(&mut header, path, content)
            .expect("add a file to the root filesystem");
    }
    let list = Command::new(BUSYBOX)
        .arg("--list")
        .output()
        .expect("busybox --list");
    for applet in String::from_utf8_lossy(&list.stdout).lines().map(str::trim) {
        if applet.is_empty() || applet == "busybox" {
            continue;
        }
        let mut link = tar::Header::new_gnu();
        link.set_entry_type(tar::EntryType::Symlink);
        link.set_size(0);
        link.set_mode(0o777);
        rootfs
            .append_link(&mut link, format!("bin/{applet}"), "busybox")
            .expect("add an applet");
    }
    let rootfs = rootfs.into_inner().expect("the root filesystem's tar");
    let mut import = Command::new("docker")
        .args(["import", "-", image])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run docker import");
    import
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(&rootfs)
        .expect("stream the root filesystem into docker import");
    let out = import.wait_with_output().expect("wait for docker import");
    assert!(
        out.status.success(),
        "docker import failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Docker test's image and cleanup. Dropping it removes the containers and networks of every
/// run it watched (by their `hm.run` label) and then the image.
pub struct DockerFixture {
    image: String,
    runs: Mutex<Vec<String>>,
}

impl DockerFixture {
    /// Builds the test's image, or returns `None` (after saying why) when Docker tests cannot
    /// run here; with `HM_REQUIRE_DOCKER=1` that fails the test instead.
    pub fn new(test: &str) -> Option<Self> {
        if let Some(reason) = unavailable_reason() {
            skip(test, &reason);
            return None;
        }
        let image = format!("hm-e2e-busybox:{}", crate::marker(test).to_lowercase());
        let fixture = Self {
            image,
            runs: Mutex::new(Vec::new()),
        };
        import_busybox(&fixture.image, "first");
        Some(fixture)
    }

    /// The image's reference (`repository:tag`), unique to this test.
    pub fn image(&self) -> &str {
        &self.image
    }

    /// Removes the containers and networks of run `run_id` when the fixture is dropped,
    /// whatever the test found before.
    pub fn watch(&self, run_id: &str) {
        if let Ok(mut runs) = self.runs.lock() {
            runs.push(run_id.to_owned());
        }
    }

    /// Imports the image again under the same tag: another image (another ID) by the same
    /// name. The one it replaces is removed.
    pub fn rebuild(&self) {
        let id = |image: &str| {
            let out = docker(&["image", "inspect", "-f", "{{.Id}}", image]);
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        let old = id(&self.image);
        // Another file in it: another image, whatever the clock says.
        import_busybox(&self.image, "rebuilt");
        assert_ne!(id(&self.image), old, "the image was imported anew");
        let _ = docker(&["rmi", "-f", &old]);
    }
}

impl Drop for DockerFixture {
    fn drop(&mut self) {
        let runs = self.runs.lock().map(|r| r.clone()).unwrap_or_default();
        for run in runs {
            // Never a panic here: this may run while a failing test unwinds.
            let ids = list_run(&["ps", "-a"], &run).unwrap_or_default();
            if !ids.is_empty() {
                let mut args = vec!["rm", "-f", "-v"];
                args.extend(ids.iter().map(String::as_str));
                let _ = docker_quiet(&args);
            }
            // After the containers: a network with one on it cannot go.
            for network in list_run(&["network", "ls"], &run).unwrap_or_default() {
                let _ = docker_quiet(&["network", "rm", &network]);
            }
        }
        let _ = docker_quiet(&["rmi", "-f", &self.image]);
    }
}

/// `docker ps -a --filter label=hm.run=RUN_ID`: the ids of run `run_id`'s containers, in any
/// state.
pub fn containers_of_run(run_id: &str) -> Vec<String> {
    list_run(&["ps", "-a"], run_id).unwrap_or_else(|e| panic!("{e}"))
}

/// `docker network ls --filter label=hm.run=RUN_ID`: the ids of run `run_id`'s networks (its
/// services').
pub fn networks_of_run(run_id: &str) -> Vec<String> {
    list_run(&["network", "ls"], run_id).unwrap_or_else(|e| panic!("{e}"))
}

/// `docker LIST -q --no-trunc --filter label=hm.run=RUN_ID`.
fn list_run(list: &[&str], run_id: &str) -> Result<Vec<String>, String> {
    let label = format!("label=hm.run={run_id}");
    let out = docker_command(list)
        .args(["-q", "--no-trunc", "--filter", &label])
        .output()
        .map_err(|e| format!("cannot run docker {}: {e}", list.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "docker {} failed: {}",
            list.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect())
}

/// A path that is certainly not a Docker socket, for the unreachable-daemon tests.
pub fn nowhere_socket() -> PathBuf {
    Path::new("/nonexistent-hm-e2e").join("docker.sock")
}
