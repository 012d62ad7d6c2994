//! The one place that builds a plugin's `Command`: its own process group, SIGKILL as
//! parent-death signal, stdin from /dev/null, stdout and stderr captured as diagnostics, and
//! the plugin's end of the socket pair at fd 3 (`HM_IPC_FD=3`). A subcommand's plugin
//! ([`terminal_command`]) instead shares hm's terminal and process group. A plugin with a
//! cgroup leaf joins it itself before exec ([`ChildJoin`]).

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::process::Stdio;

use hm_ipc::transport::{CHILD_FD, IPC_FD_ENV, place_in_child};
use tokio::process::Command;

use crate::registry::PluginSpec;

pub fn plugin_command(spec: &PluginSpec, plugin_end: RawFd) -> Command {
    let mut cmd = base_command(spec, plugin_end);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    cmd
}

/// The command for `hm VERB`: the plugin inherits hm's stdin, stdout and stderr and stays in
/// hm's process group, so it is in the terminal's foreground group: it reads the terminal
/// without SIGTTIN and gets the terminal's Ctrl-C itself. Parent-death SIGKILL still applies.
pub fn terminal_command(spec: &PluginSpec, plugin_end: RawFd) -> Command {
    let mut cmd = base_command(spec, plugin_end);
    cmd.stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit());
    cmd
}

fn base_command(spec: &PluginSpec, plugin_end: RawFd) -> Command {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env(IPC_FD_ENV, CHILD_FD.to_string())
        .kill_on_drop(true);
    let kernel = std::process::id() as i32;
    // SAFETY: runs between fork and exec; prctl, getppid, dup2, fcntl, close_range and _exit are
    // all async-signal-safe, and nothing here allocates.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The kernel may have died between fork and prctl; then no signal would come.
            if libc::getppid() != kernel {
                libc::_exit(1);
            }
            place_in_child(plugin_end)?;
            // Descriptors hm inherited without close-on-exec (from a shell, a CI agent) must
            // not reach plugins and steps. Marking them close-on-exec rather than closing them
            // keeps the pipe std uses to report a failed exec working. Linux 5.11+; on older
            // kernels this fails harmlessly.
            libc::syscall(
                libc::SYS_close_range,
                CHILD_FD as libc::c_uint + 1,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
            );
            Ok(())
        });
    }
    cmd
}

/// A cgroup leaf the plugin's child joins itself, between fork and exec, by writing `0` into
/// each of its files ([`crate::cgroup::Leaf::self_join_files`]): the plugin then never runs a
/// moment outside its leaf, and hm takes no system-wide cgroup lock to put it there. A join
/// that fails stops the spawn; the child says which file and why on a pipe of its own, since
/// the spawn's error carries only an errno, which could be mistaken for the exec's.
pub struct ChildJoin {
    files: Vec<(PathBuf, File)>,
    /// The child writes the failed file's index and the errno here.
    report: (OwnedFd, OwnedFd),
}

impl ChildJoin {
    /// Opens the files (close-on-exec: the plugin never holds them).
    pub fn open(paths: Vec<PathBuf>) -> Result<Self, String> {
        let files = paths
            .into_iter()
            .map(
                |path| match std::fs::OpenOptions::new().write(true).open(&path) {
                    Ok(file) => Ok((path, file)),
                    Err(e) => Err(format!(
                        "cannot open {} to join its cgroup: {e}",
                        path.display()
                    )),
                },
            )
            .collect::<Result<Vec<_>, _>>()?;
        let report = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| format!("cannot make a pipe: {e}"))?;
        Ok(Self { files, report })
    }

    /// Makes the child of `cmd` join the leaf before it execs.
    pub fn add_to(&self, cmd: &mut Command) {
        let fds: Vec<RawFd> = self.files.iter().map(|(_, f)| f.as_raw_fd()).collect();
        let report = self.report.1.as_raw_fd();
        // SAFETY: runs between fork and exec; write and the errno location are
        // async-signal-safe, and nothing here allocates (`fds` was built before the fork).
        unsafe {
            cmd.pre_exec(move || {
                for (index, &fd) in fds.iter().enumerate() {
                    if libc::write(fd, b"0".as_ptr().cast(), 1) == 1 {
                        continue;
                    }
                    let errno = *libc::__errno_location();
                    let mut said = [0u8; 5];
                    said[0] = index as u8;
                    said[1..].copy_from_slice(&errno.to_ne_bytes());
                    libc::write(report, said.as_ptr().cast(), said.len());
                    return Err(std::io::Error::from_raw_os_error(errno));
                }
                Ok(())
            });
        }
    }

    /// After a failed spawn: the join that failed, in words, if it was a join.
    pub fn failure(self) -> Option<String> {
        let (read_end, write_end) = self.report;
        drop(write_end);
        let mut said = Vec::new();
        File::from(read_end).read_to_end(&mut said).ok()?;
        let (&index, errno) = said.split_first()?;
        let errno = i32::from_ne_bytes(errno.try_into().ok()?);
        let (path, _) = self.files.get(usize::from(index))?;
        Some(format!(
            "cannot join its cgroup ({}): {}",
            path.display(),
            std::io::Error::from_raw_os_error(errno)
        ))
    }
}

/// Explains a failed exec in words a user can act on.
pub fn describe_spawn_error(spec: &PluginSpec, error: &std::io::Error) -> String {
    let path = spec.program.display();
    match error.raw_os_error() {
        Some(libc::ENOENT) => format!("{path} does not exist (reinstall the plugin)"),
        Some(libc::EACCES) => format!("{path} is not executable (chmod +x it, or reinstall)"),
        Some(libc::ENOEXEC) => {
            format!("{path} is not a program for this machine (wrong architecture or format)")
        }
        _ => format!("cannot start {path}: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use super::ChildJoin;
    use tokio::process::Command;

    #[tokio::test]
    async fn the_child_writes_its_join_before_it_execs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("tasks");
        std::fs::write(&file, "").expect("create");
        let join = ChildJoin::open(vec![file.clone()]).expect("open");
        let mut cmd = Command::new("true");
        join.add_to(&mut cmd);
        let mut child = cmd.spawn().expect("spawn");
        // The spawn returns once the child has exec'd: the join was written before.
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "0");
        assert!(child.wait().await.expect("wait").success());
    }

    #[tokio::test]
    async fn a_join_that_fails_stops_the_spawn_and_is_named() {
        // Every write to /dev/full fails with ENOSPC, as a cgroup that refuses a process might.
        let join = ChildJoin::open(vec!["/dev/full".into()]).expect("open");
        let mut cmd = Command::new("true");
        join.add_to(&mut cmd);
        let error = cmd.spawn().expect_err("the join failed");
        assert_eq!(error.raw_os_error(), Some(libc::ENOSPC));
        let why = join.failure().expect("the child said why");
        assert!(
            why.starts_with("cannot join its cgroup (/dev/full): No space left on device"),
            "{why}"
        );
    }

    #[tokio::test]
    async fn a_spawn_that_fails_for_another_reason_is_no_join_failure() {
        let join = ChildJoin::open(vec!["/dev/null".into()]).expect("open");
        let mut cmd = Command::new("/nonexistent/hm-no-such-program");
        join.add_to(&mut cmd);
        let error = cmd.spawn().expect_err("no such program");
        assert_eq!(error.raw_os_error(), Some(libc::ENOENT));
        assert_eq!(join.failure(), None);
    }
}
