//! What both ends of the protocol read from `/proc` about processes: the one parser of
//! `/proc/<pid>/stat` in hm. The kernel judges the process groups a plugin names (`StepProcess`)
//! and reaps and sweeps by it; the SDK's process helper and test harness find a step's group
//! members with it; plugins use it to tell whether a process is still the one they mean (its
//! start time). It lives in `hm-ipc` because that is the one crate both ends share.

/// The fields of `/proc/<pid>/stat` plugins use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    pub ppid: i32,
    /// The process group.
    pub pgrp: i32,
    /// When the process started, in clock ticks after boot: with the pid, it names one
    /// process for good (pids are reused, start times with them are not).
    pub start_time: u64,
}

impl Stat {
    /// A zombie, or a process that is gone but not yet removed from `/proc`.
    pub fn is_dead(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }
}

/// The `stat` of process `pid`; `None` when it does not exist (any more).
pub fn stat(pid: i32) -> Option<Stat> {
    if pid <= 0 {
        return None;
    }
    parse_stat(&read_small(format!("/proc/{pid}/stat")).ok()?)
}

/// Reads a small pseudo-file of procfs or cgroupfs whole. Such files say their size is 0, so
/// `fs::read_to_string` asks for it (`statx`) and then reads 32 bytes, 32 more, 64, 128...:
/// seven calls for a `/proc/<pid>/stat`, which the kernel reads for every step (and
/// `Read::read_to_end` of a `File` asks for the size and the position first too). Here a
/// 4 KiB buffer takes nearly all of them in one read, then the read that finds the end; a
/// longer one is still read whole.
pub fn read_small(path: impl AsRef<std::path::Path>) -> std::io::Result<String> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut bytes = vec![0u8; 4096];
    let mut len = 0;
    loop {
        if len == bytes.len() {
            bytes.resize(len * 2, 0);
        }
        match file.read(&mut bytes[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    bytes.truncate(len);
    String::from_utf8(bytes).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Parses the text of `/proc/<pid>/stat`. The command name is in parentheses and may contain
/// anything, spaces and parentheses included: the fields start after the *last* `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = text.get(text.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    // `state` is field 3 of the file, the start time field 22.
    let start_time = fields.nth(16)?.parse().ok()?;
    Some(Stat {
        state,
        ppid,
        pgrp,
        start_time,
    })
}

/// The pids of every process, in `/proc`'s order.
pub fn pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
}

/// The pids of this process's children, as Linux lists them for each of its threads
/// (`/proc/self/task/<tid>/children`): a child stays with the thread that started it, and an
/// orphan re-parented to a child subreaper joins the subreaper's first live thread. Zombies are
/// listed until they are reaped. `None` where Linux has no such file (built without
/// `CONFIG_PROC_CHILDREN`): then [`pids`] is what there is to look through.
///
/// Linux warns that the list may miss a child when children come and go during the read: it
/// resumes each `read` after the last child shown. Each thread's list is read with one `read`
/// (a 4 KiB buffer holds about 500 pids), so a long list is the only way to miss one, and a
/// zombie missed stays a zombie child, found by the next look.
pub fn own_children() -> Option<Vec<i32>> {
    let mut children = Vec::new();
    let mut listed = false;
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        match read_small(task.path().join("children")) {
            Ok(text) => {
                listed = true;
                children.extend(
                    text.split_ascii_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
            // The thread has ended since the directory was read, or Linux has no such file.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => return None,
        }
    }
    listed.then_some(children)
}

/// The command name of `pid` (`/proc/<pid>/comm`, at most 15 bytes), if it exists.
pub fn comm(pid: u32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim_end_matches('\n').to_owned())
}

/// The live (not zombie) processes of process group `pgid`.
pub fn group_members(pgid: i32) -> Vec<i32> {
    pids()
        .filter(|&pid| stat(pid).is_some_and(|s| s.pgrp == pgid && !s.is_dead()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_children_lists_a_child_until_it_is_reaped() {
        let Some(before) = own_children() else {
            return; // Linux without CONFIG_PROC_CHILDREN: `pids` is used instead.
        };
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        assert!(!before.contains(&pid));
        // Exited or not, it is a child until it is reaped.
        assert!(own_children().unwrap().contains(&pid));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while stat(pid).is_some_and(|s| s.state != 'Z') {
            assert!(std::time::Instant::now() < deadline, "`true` never exited");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(own_children().unwrap().contains(&pid), "a zombie is listed");
        child.wait().unwrap();
        assert!(!own_children().unwrap().contains(&pid));
    }

    #[test]
    fn fields_follow_the_last_parenthesis_of_the_command_name() {
        let line = |comm: &str| {
            format!("42 ({comm}) S 1 40 40 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 12345 1000 10")
        };
        for comm in ["sh", "a) b", "x y", "(("] {
            let stat = parse_stat(&line(comm)).expect(comm);
            assert_eq!(
                (stat.state, stat.ppid, stat.pgrp, stat.start_time),
                ('S', 1, 40, 12345),
                "{comm}"
            );
        }
        assert_eq!(parse_stat("7 (cut) S 1 2 3"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn this_process_is_alive_in_its_group() {
        let me = std::process::id() as i32;
        let stat = stat(me).expect("this process exists");
        assert!(!stat.is_dead() && stat.start_time > 0);
        assert!(group_members(stat.pgrp).contains(&me));
        assert_eq!(stat.ppid, std::os::unix::process::parent_id() as i32);
        assert!(pids().any(|pid| pid == me));
        assert!(comm(me as u32).is_some_and(|c| !c.is_empty()));
        assert_eq!(super::stat(0), None);
    }

    #[test]
    fn a_pseudo_file_is_read_whole_however_long() {
        // /proc/self/smaps of a test binary is tens of KiB, far longer than the first read; it
        // must come whole, to its last line.
        let smaps = read_small("/proc/self/smaps").expect("smaps");
        assert!(smaps.len() > 3 * 4096, "{} bytes", smaps.len());
        let last = smaps.lines().last().expect("a line");
        assert!(
            smaps.ends_with('\n') && last.starts_with("VmFlags:"),
            "{last}"
        );
        let stat = read_small("/proc/self/stat").expect("stat");
        assert!(parse_stat(&stat).is_some_and(|s| s.ppid > 0), "{stat}");
        let missing = read_small("/proc/self/hm-no-such-file").expect_err("missing");
        assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    }
}
