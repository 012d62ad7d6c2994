//! What the kernel reads from `/proc` about other processes: one parser of
//! `/proc/<pid>/stat`, the list of pids, and a process's command name. Nothing else in the
//! kernel opens `/proc/<pid>/...` (cgroupfs and `/proc/self` are the `cgroup` module's).

/// The fields of `/proc/<pid>/stat` the kernel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    pub ppid: i32,
    /// The process group.
    pub pgrp: i32,
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
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Parses the text of `/proc/<pid>/stat`. The command name is in parentheses and may contain
/// anything, spaces and parentheses included: the fields start after the *last* `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = text.get(text.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(Stat { state, ppid, pgrp })
}

/// The pids of every process, in `/proc`'s order.
pub fn pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse().ok())
}

/// The command name of `pid` (`/proc/<pid>/comm`, at most 15 bytes), if it exists.
pub fn comm(pid: u32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim_end_matches('\n').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_follow_the_last_parenthesis_of_the_command_name() {
        let check = |text: &str, want: Option<(char, i32, i32)>| {
            let got = parse_stat(text).map(|s| (s.state, s.ppid, s.pgrp));
            assert_eq!(got, want, "{text:?}");
        };
        check("42 (sh) S 1 42 42 0 -1", Some(('S', 1, 42)));
        check("7 (a) b) (c) Z 3 9 9 0", Some(('Z', 3, 9)));
        check("7 (x y) R 1 2 3", Some(('R', 1, 2)));
        check("7 (no end S 1 2", None);
        check("7 (short) S 1", None);
        check("", None);
    }

    #[test]
    fn this_process_is_found_alive_with_its_parent() {
        let me = std::process::id() as i32;
        let stat = stat(me).expect("this process exists");
        assert!(!stat.is_dead());
        assert_eq!(stat.ppid, std::os::unix::process::parent_id() as i32);
        assert!(pids().any(|pid| pid == me));
        assert!(comm(me as u32).is_some_and(|c| !c.is_empty()));
        assert_eq!(super::stat(-1), None);
    }
}
