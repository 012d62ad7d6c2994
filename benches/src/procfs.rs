//! What the benches read from `/proc`: one process's peak resident set, and the processes that
//! carry a marker in their environment (how a bench finds every process of a run, whatever
//! process group or parent it ended up with).

/// The process's peak resident set so far (`VmHWM` of `/proc/<pid>/status`), in bytes; `None`
/// once it has exited (its memory is gone, and with it the line) or if there is no such
/// process.
///
/// `VmHWM` belongs to the process's address space, so it counts the process and its threads,
/// and nothing it started.
pub fn peak_rss(pid: libc::pid_t) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<u64>()
        .ok()?;
    Some(kib * 1024)
}

/// The live processes (zombies left out) whose environment contains `marker`, this one aside.
///
/// A process's environment is the one its last `execve` was given, and only once that exec has
/// set up the new image: between fork and exec `/proc/<pid>/environ` shows the parent's, and
/// during exec, after a `vfork`-style spawner has already returned, it is empty. A process is
/// therefore found once it runs its own program, not the moment `spawn` returns.
pub fn processes_with(marker: &str) -> Vec<libc::pid_t> {
    let me = std::process::id() as libc::pid_t;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let needle = marker.as_bytes();
    dir.flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<libc::pid_t>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            environ.windows(needle.len()).any(|w| w == needle)
        })
        .filter(|&pid| !is_zombie(pid))
        .collect()
}

/// True for a zombie, or for a process that is gone.
fn is_zombie(pid: libc::pid_t) -> bool {
    hm_sdk::procfs::stat(pid).is_none_or(|stat| stat.is_dead())
}

/// Kills every process carrying its marker when dropped, so that a bench that fails half-way
/// leaves none of a run's processes behind.
pub struct KillMarkedOnDrop<'a> {
    pub marker: &'a str,
}

impl Drop for KillMarkedOnDrop<'_> {
    fn drop(&mut self) {
        for pid in processes_with(self.marker) {
            // SAFETY: kill has no memory-safety preconditions. The pid carried the marker a
            // moment ago; the marker is unique to this bench run.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_with_the_marker_is_found_and_this_process_is_not() {
        use std::io::BufRead;
        let marker = format!("hm-bench-procfs-test-{}", std::process::id());
        // The child says it runs its own program (so its environment is the one it was given)
        // and then waits on its stdin, which only closes when this test ends it.
        let mut child = std::process::Command::new("sh")
            .args(["-c", "echo ready; read -r _"])
            .env("HM_BENCH_MARKER", &marker)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        let stdout = child.stdout.take().unwrap();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n");
        let found = processes_with(&marker);
        {
            let _sweep = KillMarkedOnDrop { marker: &marker };
        }
        let status = child.wait().unwrap();
        assert_eq!(found, [child.id() as libc::pid_t]);
        // Killed by the sweep, not ended by its stdin closing.
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGKILL)
        );
        assert!(processes_with(&marker).is_empty());
    }

    #[test]
    fn the_peak_rss_of_a_live_process_is_read() {
        let own = peak_rss(std::process::id() as libc::pid_t).unwrap();
        assert!(own > 0);
        assert_eq!(peak_rss(-1), None);
    }
}
