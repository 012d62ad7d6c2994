//! Who owns a container or a network: the labels every container of a step or a service
//! carries (run; step and attempt, or service; the kernel and plugin processes behind them),
//! which the run's network carries too, and the test that tells one whose owners are gone,
//! which the sweep at plugin start removes.
//!
//! A process is named by its pid *and* its start time (`/proc/<pid>/stat`, field 22), so a pid
//! reused by another process never passes for the owner. Containers are also labelled with the
//! machine's boot id and this pid namespace: a daemon shared by several machines or containers
//! (a mounted `docker.sock`) holds containers whose pids mean nothing here, and the sweep must
//! leave those alone.

use std::collections::HashMap;

/// The run id (`hm run`'s `run_id`, as in every JSON event).
pub const RUN: &str = "hm.run";
pub const STEP: &str = "hm.step";
pub const ATTEMPT: &str = "hm.attempt";
/// `<pid>:<start time>` of the `hm` kernel that ran the step.
pub const KERNEL: &str = "hm.kernel";
/// `<pid>:<start time>` of the docker plugin process that created the container.
pub const PLUGIN: &str = "hm.plugin";
/// `<boot id>:<pid namespace>`: where the pids of the two labels above mean something.
pub const HOST: &str = "hm.host";
/// The name of the service (`[services.NAME]`) a container runs, instead of a step and attempt.
pub const SERVICE: &str = "hm.service";

/// One process, by pid and start time (clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: u32,
    pub start: u64,
}

impl ProcessId {
    /// The live process `pid`, if there is one.
    pub fn of(pid: u32) -> Option<Self> {
        start_time(pid).map(|start| Self { pid, start })
    }

    /// Whether this very process is still running (a zombie is not).
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start)
    }

    fn label(&self) -> String {
        format!("{}:{}", self.pid, self.start)
    }

    fn parse(text: &str) -> Option<Self> {
        let (pid, start) = text.split_once(':')?;
        Some(Self {
            pid: pid.parse().ok()?,
            start: start.parse().ok()?,
        })
    }
}

/// The run and processes this plugin instance serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub run_id: String,
    pub kernel: Option<ProcessId>,
    pub plugin: Option<ProcessId>,
    pub host: String,
}

impl Owner {
    /// This plugin process, serving run `run_id` for the kernel whose pid the run id ends with
    /// (`<time>-<pid>`, both hex) or, if it does not, for its parent process.
    pub fn current(run_id: &str) -> Self {
        let kernel_pid = run_id
            .rsplit_once('-')
            .and_then(|(_, pid)| u32::from_str_radix(pid, 16).ok())
            .unwrap_or_else(std::os::unix::process::parent_id);
        Self {
            run_id: run_id.to_owned(),
            kernel: ProcessId::of(kernel_pid),
            plugin: ProcessId::of(std::process::id()),
            host: host_scope(),
        }
    }

    /// The labels of the container running `attempt` of `step`.
    pub fn labels(&self, step: &str, attempt: u32) -> HashMap<String, String> {
        let mut labels = self.run_labels();
        labels.insert(STEP.to_owned(), step.to_owned());
        labels.insert(ATTEMPT.to_owned(), attempt.to_string());
        labels
    }

    /// The labels of the container running service `name`.
    pub fn service_labels(&self, name: &str) -> HashMap<String, String> {
        let mut labels = self.run_labels();
        labels.insert(SERVICE.to_owned(), name.to_owned());
        labels
    }

    /// The labels of what belongs to the run as a whole (its services' network), which every
    /// container's labels start from: enough for the sweep to tell when its owners are gone.
    pub fn run_labels(&self) -> HashMap<String, String> {
        let mut labels = HashMap::from([
            (RUN.to_owned(), self.run_id.clone()),
            (HOST.to_owned(), self.host.clone()),
        ]);
        if let Some(kernel) = self.kernel {
            labels.insert(KERNEL.to_owned(), kernel.label());
        }
        if let Some(plugin) = self.plugin {
            labels.insert(PLUGIN.to_owned(), plugin.label());
        }
        labels
    }
}

/// Whether a container with these labels was left behind: it belongs to this machine and pid
/// namespace, and its kernel or the plugin process that created it is gone. A plugin that dies
/// (SIGKILL) cannot remove its containers, and a kernel that dies takes its plugins with it;
/// either way nobody will wait for the container any more.
pub fn is_orphan(labels: &HashMap<String, String>, host: &str) -> bool {
    if labels.get(HOST).map(String::as_str) != Some(host) {
        return false;
    }
    let gone = |key: &str| {
        labels
            .get(key)
            .and_then(|text| ProcessId::parse(text))
            .is_some_and(|owner| !owner.alive())
    };
    gone(KERNEL) || gone(PLUGIN)
}

/// `<boot id>:<pid namespace inode>` of this process.
pub fn host_scope() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let ns = std::fs::read_link("/proc/self/ns/pid")
        .map(|link| link.to_string_lossy().into_owned())
        .unwrap_or_default();
    // `pid:[4026531836]` → `4026531836`
    let ns = ns.trim_start_matches("pid:[").trim_end_matches(']');
    format!("{}:{ns}", boot.trim())
}

/// The start time of `pid`, or `None` for a process that is gone or a zombie.
fn start_time(pid: u32) -> Option<u64> {
    hm_sdk::procfs::stat(pid as i32)
        .filter(|stat| !stat.is_dead())
        .map(|stat| stat.start_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_reused_pid_is_not() {
        let me = ProcessId::of(std::process::id()).expect("this process has a start time");
        assert!(me.alive());
        let reused = ProcessId {
            start: me.start + 1,
            ..me
        };
        assert!(!reused.alive());
        assert_eq!(ProcessId::parse(&me.label()), Some(me));
        assert_eq!(ProcessId::parse("12"), None);
        assert_eq!(ProcessId::parse("x:1"), None);
    }

    #[test]
    fn the_kernel_pid_comes_from_the_run_id() {
        let owner = Owner::current(&format!("19abc-{:x}", std::process::id()));
        assert_eq!(owner.kernel.map(|k| k.pid), Some(std::process::id()));
        let labels = owner.labels("build", 2);
        assert_eq!(labels[STEP], "build");
        assert_eq!(labels[ATTEMPT], "2");
        assert_eq!(labels[HOST], host_scope());
        let service = owner.service_labels("db");
        assert_eq!(service[SERVICE], "db");
        assert_eq!(service[RUN], owner.run_id);
        assert!(!service.contains_key(STEP) && !service.contains_key(ATTEMPT));
        assert_eq!(service[PLUGIN], labels[PLUGIN]);
    }

    #[test]
    fn only_containers_of_dead_owners_here_are_orphans() {
        let host = host_scope();
        let me = ProcessId::of(std::process::id()).expect("this process has a start time");
        let dead = ProcessId {
            start: me.start + 1,
            ..me
        };
        let labels = |kernel: ProcessId, plugin: ProcessId, host: &str| {
            HashMap::from([
                (KERNEL.to_owned(), kernel.label()),
                (PLUGIN.to_owned(), plugin.label()),
                (HOST.to_owned(), host.to_owned()),
            ])
        };
        assert!(!is_orphan(&labels(me, me, &host), &host));
        assert!(is_orphan(&labels(dead, me, &host), &host));
        assert!(is_orphan(&labels(me, dead, &host), &host));
        // Another machine's or namespace's pids say nothing about processes here.
        assert!(!is_orphan(&labels(dead, dead, "elsewhere:1"), &host));
        // Labels hm did not write are left alone.
        assert!(!is_orphan(&HashMap::new(), &host));
    }
}
