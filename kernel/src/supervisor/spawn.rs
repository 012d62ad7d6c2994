//! The one place that builds a plugin's `Command`: its own process group, SIGKILL as
//! parent-death signal, stdin from /dev/null, stdout and stderr captured as diagnostics, and
//! the plugin's end of the socket pair at fd 3 (`HM_IPC_FD=3`). A subcommand's plugin
//! ([`terminal_command`]) instead shares hm's terminal and process group.

use std::os::fd::RawFd;
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
