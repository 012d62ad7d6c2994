//! The guardian: a tiny process per run (this binary re-executed as `hm __guardian`) that
//! outlives the kernel and cleans up after it if it dies.
//!
//! The kernel holds the write end of a pipe; the guardian reads the other end as its stdin.
//! The kernel tells it, one line at a time, what to clean up should it die: `pgid N` for every
//! process group it starts, `cgroup PATH` for the run's cgroup directories, `dir PATH` for the
//! run's private directory (its `$HM_OUTPUT` files). When the run ends
//! normally the kernel writes `bye` and the guardian exits. When the pipe closes without `bye`
//! (the kernel crashed or was SIGKILLed) the guardian kills every recorded process group and
//! every process in the recorded cgroups, removes those cgroups and the run's directory, and
//! exits.
//!
//! The guardian runs in its own session (no terminal signals reach it) and outside the run's
//! cgroups, and nothing but the kernel holds the pipe's write end (it is close-on-exec).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// The internal entry the guardian runs under: `hm __guardian`.
pub const GUARDIAN_ENTRY: &str = "__guardian";

/// The kernel's handle on its guardian.
pub struct Guardian {
    pipe: std::fs::File,
    child: Child,
}

impl Guardian {
    /// Starts the guardian for this run.
    pub fn start() -> std::io::Result<Self> {
        let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.arg(GUARDIAN_ENTRY)
            .stdin(Stdio::from(read_end))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setsid is async-signal-safe; it detaches the guardian from the terminal's
        // process group so a Ctrl-C meant for hm never reaches it.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        Ok(Self {
            pipe: std::fs::File::from(write_end),
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Records a process group to kill if the kernel dies.
    pub fn watch_pgid(&mut self, pgid: i32) {
        self.say(&format!("pgid {pgid}"));
    }

    /// Records a cgroup directory to empty and remove if the kernel dies.
    pub fn watch_cgroup(&mut self, path: &std::path::Path) {
        self.say(&format!("cgroup {}", path.display()));
    }

    /// Records what the run changed in hm's own v2 cgroup, to undo if the kernel dies.
    pub fn watch_own(&mut self, own: &std::path::Path, changes: &crate::cgroup::OwnChanges) {
        let enabled = match changes.enabled.is_empty() {
            true => "-".to_owned(),
            false => changes.enabled.join(","),
        };
        self.say(&format!(
            "own {} {enabled} {}",
            u8::from(changes.moved),
            own.display()
        ));
    }

    /// Records the Docker daemon whose containers and networks labelled with `run_id` (step
    /// containers, services, their network) to remove if the kernel dies.
    pub fn watch_docker(&mut self, daemon: &crate::engine::Daemon, run_id: &str) {
        self.say(&format!("docker {run_id} {daemon}"));
    }

    /// Records the run's own directory (`hm-RUN`) to remove if the kernel dies.
    pub fn watch_dir(&mut self, path: &std::path::Path) {
        self.say(&format!("dir {}", path.display()));
    }

    fn say(&mut self, line: &str) {
        // One write per line (the pipe is unbuffered: `writeln!` would make two, and wake the
        // guardian twice). A guardian that died early cannot be helped; the run goes on
        // without one.
        if let Err(e) = self.pipe.write_all(format!("{line}\n").as_bytes()) {
            tracing::debug!("guardian pipe: {e}");
        }
    }

    /// The run is over and cleaned up: the guardian leaves without touching anything.
    pub fn dismiss(mut self) {
        self.say("bye");
        drop(self.pipe);
        let _ = self.child.wait();
    }
}

/// `hm __guardian`: reads instructions from stdin until it closes; cleans up unless told
/// `bye`. Returns the process exit code.
pub fn guardian_main(cleanup_cgroup: impl Fn(&std::path::Path)) -> i32 {
    let mut pgids = Vec::new();
    let mut cgroups: Vec<PathBuf> = Vec::new();
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut own: Option<(PathBuf, crate::cgroup::OwnChanges)> = None;
    let mut dockers: Vec<(String, crate::engine::Daemon)> = Vec::new();
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if line == "bye" {
            return 0;
        }
        if let Some(pgid) = line
            .strip_prefix("pgid ")
            .and_then(|n| n.parse::<i32>().ok())
        {
            if pgid > 1 {
                pgids.push(pgid);
            }
        } else if let Some(path) = line.strip_prefix("cgroup ") {
            cgroups.push(PathBuf::from(path));
        } else if let Some(path) = line.strip_prefix("dir ") {
            dirs.push(PathBuf::from(path));
        } else if let Some((run_id, daemon)) = line
            .strip_prefix("docker ")
            .and_then(|rest| rest.split_once(' '))
            .and_then(|(run_id, address)| Some((run_id, crate::engine::Daemon::parse(address)?)))
        {
            dockers.push((run_id.to_owned(), daemon));
        } else if let Some(rest) = line.strip_prefix("own ") {
            let mut fields = rest.splitn(3, ' ');
            if let (Some(moved), Some(enabled), Some(path)) =
                (fields.next(), fields.next(), fields.next())
            {
                let changes = crate::cgroup::OwnChanges {
                    enabled: enabled
                        .split(',')
                        .filter(|c| *c != "-" && !c.is_empty())
                        .map(str::to_owned)
                        .collect(),
                    moved: moved == "1",
                };
                own = Some((PathBuf::from(path), changes));
            }
        }
    }
    // The kernel is gone without saying goodbye: nothing of its run may survive it.
    for &pgid in &pgids {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
    for path in &cgroups {
        cleanup_cgroup(path);
    }
    // With the plugins dead, nothing creates containers any more: the run's go, and then
    // the network its services shared.
    for (run_id, daemon) in &dockers {
        let _ = crate::engine::remove_run(daemon, run_id);
    }
    // The kernel's `hm/kernel` holds only this guardian now: it takes hm's place going back.
    if let Some((path, changes)) = &own {
        let _ = crate::cgroup::restore_own(path, changes, std::process::id());
    }
    // Only a run's own directory: never anything a line could name by mistake.
    for path in dirs.iter().filter(|p| {
        p.is_absolute()
            && p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("hm-"))
    }) {
        let _ = std::fs::remove_dir_all(path);
    }
    0
}
