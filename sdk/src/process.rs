//! Running a step's process right: its own process group, a parent-death signal, output
//! streamed line by line to hm, and the kill ladder on cancel (SIGTERM to the group, then
//! SIGKILL after the grace period). After the main process exits, anything it left running in
//! its group is killed and reported, so a step never outlives its `step_end`.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use hm_ipc::messages::StepResult;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;

pub use crate::command::StepCommand;
use crate::context::{OutputStream, StepContext};
use crate::plugin::{StepError, StepRequest};
use crate::spawn::{ChildSetup, SpawnError};

/// How long output may keep arriving after the step's process group is gone. Only a process
/// that escaped the group (setsid) can hold the pipes that long; cgroups catch those.
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(1);
const READ_CHUNK: usize = 256 * 1024;
/// Step output pipes are enlarged to this (best effort), so a fast writer is read in few, large
/// reads rather than many 64 KiB ones. From the start: a reader that keeps up with the writer
/// never finds the pipe full, so enlarging only once a read does would seldom happen (it was
/// measured: small reads to the end), and the cost for a quiet step is about 1% of its start.
const PIPE_SIZE: i32 = 1024 * 1024;

/// The step's command line (`shell` then `run`, `sh -e -c RUN` by default) in the step's
/// directory with the step's environment. The program is looked up in the step's `PATH`.
pub fn shell_command(step: &StepRequest) -> StepCommand {
    let (program, args) = step
        .shell
        .split_first()
        .map_or(("sh", &[][..]), |(p, a)| (p.as_str(), a));
    let mut cmd = StepCommand::new(program);
    cmd.args(args).arg(&step.run).current_dir(&step.dir);
    cmd.envs(step.env.iter().map(|(k, v)| (k, v)));
    cmd
}

/// A failed start, said in the step's terms: which program was not found, which directory
/// or cgroup could not be entered.
fn spawn_error(cmd: &StepCommand, step: &StepRequest, e: SpawnError) -> StepError {
    let program = cmd.get_program().to_string_lossy();
    let io = |kind, message: String| std::io::Error::new(kind, message);
    match e {
        SpawnError::Nul(message) => StepError::Spawn(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            message,
        )),
        SpawnError::Setup(e) => StepError::Spawn(e),
        SpawnError::Cgroup(index, e) => {
            let path = step
                .cgroup_procs
                .get(index)
                .map(|p| p.display().to_string());
            StepError::Message(format!(
                "cannot join the step's cgroup {}: {e}",
                path.unwrap_or_default()
            ))
        }
        SpawnError::Dir(dir, e) => {
            let message = format!("cannot enter the step's directory {}: {e}", dir.display());
            StepError::Spawn(io(e.kind(), message))
        }
        SpawnError::Exec(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let message = format!("`{program}` is not installed or not on the step's PATH ({e})");
            StepError::Spawn(io(e.kind(), message))
        }
        SpawnError::Exec(e) => {
            StepError::Spawn(io(e.kind(), format!("cannot run `{program}`: {e}")))
        }
    }
}

/// Starts `cmd` as the step's process and runs it to the end, streaming its output to hm.
///
/// The process gets stdin from /dev/null, stdout and stderr piped, its own process group,
/// SIGKILL as parent-death signal, default signal handling, and is in the step's cgroup
/// (`cgroup_procs`) before exec: started in it on cgroup v2, joined before exec otherwise. On
/// cancel the group gets SIGTERM, then SIGKILL once the step's grace period has passed.
pub async fn run(
    cmd: StepCommand,
    step: &StepRequest,
    ctx: &StepContext,
) -> Result<StepResult, StepError> {
    let cgroups = open_cgroup_procs(&step.cgroup_procs)?;
    let cgroup_dir = cgroup_v2_dir(&step.cgroup_procs);
    let setup = ChildSetup {
        cgroup_procs: &cgroups,
        cgroup_dir: cgroup_dir.as_ref(),
        // Without a cgroup, a memory limit is the best an rlimit can do (address space).
        memory_rlimit: if cgroups.is_empty() {
            step.limits.memory_bytes
        } else {
            None
        },
    };
    let spawned = crate::spawn::spawn(&cmd, &setup).map_err(|e| spawn_error(&cmd, step, e))?;
    drop(cgroups);
    let mut child = spawned.process;
    // The child made its own group, numbered after itself, before exec.
    let pgid = child.id();
    // Until the step has ended and its leftovers are killed, an early return (hm went away) or
    // the dropping of this future must not leave anything of the group running: dropping
    // `child` only kills the main process.
    let mut group = GroupGuard(Some(pgid));
    ctx.report_process_group(pgid)?;
    enlarge_pipe(&spawned.stdout);
    enlarge_pipe(&spawned.stderr);
    let mut stdout = Some(spawned.stdout);
    let mut stderr = Some(spawned.stderr);
    let mut out_lines = LineSplitter::new(OutputStream::Stdout, ctx.max_line_bytes());
    let mut err_lines = LineSplitter::new(OutputStream::Stderr, ctx.max_line_bytes());
    // Not zeroed: pages are only touched as output arrives, so a quiet step costs nothing here.
    let mut out_buf = Vec::with_capacity(READ_CHUNK);
    let mut err_buf = Vec::with_capacity(READ_CHUNK);

    let mut status: Option<ExitStatus> = None;
    let mut cancelled = false;
    let mut kill_at: Option<tokio::time::Instant> = None;
    let mut drain_until: Option<tokio::time::Instant> = None;
    let mut leaked = 0u32;
    let far = tokio::time::Instant::now() + Duration::from_secs(86400 * 365);

    loop {
        if status.is_some() && stdout.is_none() && stderr.is_none() {
            break;
        }
        tokio::select! {
            n = read_some(&mut stdout, &mut out_buf) => {
                match n {
                    Some(n) => {
                        out_lines.feed(&out_buf[..n], ctx).await?;
                        // A full read means more is waiting: batch it. Otherwise the pipe is
                        // drained and what we have goes out as soon as hm has taken in the
                        // batches before it, so output stays live.
                        if n < READ_CHUNK { ctx.flush_or_defer().await?; }
                    }
                    None => { out_lines.finish(ctx).await?; stdout = None; ctx.flush().await?; }
                }
            }
            n = read_some(&mut stderr, &mut err_buf) => {
                match n {
                    Some(n) => {
                        err_lines.feed(&err_buf[..n], ctx).await?;
                        if n < READ_CHUNK { ctx.flush_or_defer().await?; }
                    }
                    None => { err_lines.finish(ctx).await?; stderr = None; ctx.flush().await?; }
                }
            }
            () = ctx.deferred() => ctx.flush().await?,
            exit = child.wait(), if status.is_none() => {
                status = Some(exit.map_err(StepError::Spawn)?);
                // The main process is gone; whatever is left in its group was left behind.
                leaked = kill_leftovers(pgid);
                if leaked > 0 {
                    // Said in the step's own log, so every renderer and hook sees it.
                    ctx.line(OutputStream::Stderr, format!(
                        "hm: killed {leaked} process(es) the step left running in the background"
                    )).await?;
                }
                drain_until = Some(tokio::time::Instant::now() + DRAIN_AFTER_EXIT);
            }
            () = ctx.cancelled(), if !cancelled && status.is_none() => {
                cancelled = true;
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGTERM);
                kill_at = Some(tokio::time::Instant::now() + step.grace);
            }
            () = tokio::time::sleep_until(kill_at.unwrap_or(far)), if kill_at.is_some() && status.is_none() => {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                kill_at = None;
            }
            () = tokio::time::sleep_until(drain_until.unwrap_or(far)), if drain_until.is_some() => {
                // Pipes still open after the group is gone: an escaped process holds them.
                out_lines.finish(ctx).await?;
                err_lines.finish(ctx).await?;
                stdout = None;
                stderr = None;
            }
        }
    }
    // The group is gone: the main process was reaped, its leftovers killed.
    group.0 = None;
    ctx.flush().await?;
    let status = status.unwrap_or_else(|| ExitStatus::from_raw(0));
    Ok(StepResult {
        exit_code: status.code(),
        signal: status.signal(),
        core_dumped: status.core_dumped(),
        cancelled,
        leaked_processes: leaked,
        peak_memory_bytes: None,
        cpu_ms: None,
    })
}

/// The directory of the step's one `cgroup.procs` when it is a cgroup v2 directory (one
/// file and no `tasks` beside it: on v1 there is one per hierarchy, each with `tasks`), which
/// the child can then be started in. Best effort: without it the child joins by writing.
fn cgroup_v2_dir(paths: &[std::path::PathBuf]) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let [procs] = paths else { return None };
    if procs.file_name()? != "cgroup.procs" {
        return None;
    }
    let dir = procs.parent()?;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)
        .ok()
        .filter(|_| !dir.join("tasks").exists())
}

/// Opens, for each `cgroup.procs` file, what the child writes `0` into to join that cgroup, or
/// says which one the step cannot join.
///
/// On cgroup v1 that is the `tasks` file beside it: the child is a single thread until it
/// execs, so moving that thread moves the whole process, and a thread that moves itself
/// (`0` into `tasks`) is the one move the kernel makes without its system-wide lock on every
/// fork, exit and exec (`cgroup_threadgroup_rwsem`), which a `cgroup.procs` write takes for
/// writing. A file named otherwise, or a cgroup v2 directory (no `tasks`), gets the file as
/// given; `0` there means the writing process.
fn open_cgroup_procs(paths: &[std::path::PathBuf]) -> Result<Vec<std::fs::File>, StepError> {
    let open = |path: &Path| std::fs::OpenOptions::new().write(true).open(path);
    paths
        .iter()
        .map(|path| {
            let tasks = match path.file_name() {
                Some(name) if name == "cgroup.procs" => open(&path.with_file_name("tasks")).ok(),
                _ => None,
            };
            tasks.map_or_else(|| open(path), Ok).map_err(|e| {
                StepError::Message(format!(
                    "cannot join the step's cgroup {}: {e}",
                    path.display()
                ))
            })
        })
        .collect()
}

/// Reads once from an open pipe; `None` at end of file (or on a read error, which for a pipe
/// means the same). A closed pipe never resolves, so `select!` ignores it.
async fn read_some<R: tokio::io::AsyncRead + Unpin>(
    pipe: &mut Option<R>,
    buf: &mut Vec<u8>,
) -> Option<usize> {
    match pipe {
        None => std::future::pending().await,
        Some(reader) => {
            buf.clear();
            match reader.read_buf(buf).await {
                Ok(0) | Err(_) => None,
                Ok(n) => Some(n),
            }
        }
    }
}

/// SIGKILLs the process group it holds when dropped.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
}

/// Best effort: a pipe that cannot grow (a lower `pipe-max-size`) works the same, only slower.
fn enlarge_pipe(pipe: &impl std::os::fd::AsFd) {
    let _ = nix::fcntl::fcntl(pipe.as_fd(), nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
}

/// Kills every process still in the group and says how many there were.
fn kill_leftovers(pgid: i32) -> u32 {
    // The common case, an empty group, costs one syscall instead of a scan of /proc.
    if killpg(Pid::from_raw(pgid), None).is_err() {
        return 0;
    }
    let members = crate::procfs::group_members(pgid);
    if !members.is_empty() {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
    members.len() as u32
}

/// Cuts a byte stream into lines (without the `\n`) of step output, as [`run`] does for a
/// process's pipes: lines longer than one batch are split (never dropped), invalid UTF-8 is
/// replaced, and a last line without a newline still counts. For executors whose output
/// arrives in chunks from elsewhere (a container runtime's stream): feed every chunk in order,
/// then call [`LineSplitter::finish`] once at the end.
pub struct LineSplitter {
    stream: OutputStream,
    partial: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    /// Lines of `stream`, each at most `max` bytes (pass [`StepContext::max_line_bytes`]).
    pub fn new(stream: OutputStream, max: usize) -> Self {
        Self {
            stream,
            partial: Vec::new(),
            max: max.saturating_sub(64).max(256),
        }
    }

    /// Queues the whole lines `bytes` completes; call [`StepContext::flush`] when no more
    /// output is immediately available.
    pub async fn feed(&mut self, mut bytes: &[u8], ctx: &StepContext) -> Result<(), StepError> {
        loop {
            // First the end of a line that began earlier (in an earlier read, or a line
            // longer than `max` in this one).
            if !self.partial.is_empty() {
                let Some(pos) = memchr::memchr(b'\n', bytes) else {
                    self.partial.extend_from_slice(bytes);
                    return self.split_long(ctx).await;
                };
                // Its end may still make it too long.
                self.partial.extend_from_slice(&bytes[..pos]);
                self.split_long(ctx).await?;
                let line = text(&self.partial);
                self.partial.clear();
                ctx.line(self.stream, line).await?;
                bytes = &bytes[pos + 1..];
            }
            // Then the whole lines of the next `max + 1` bytes as one block (joined by their
            // newlines, at most `max` bytes): the common case costs one search for the last
            // newline per block, not one per line, and a read larger than a batch is cut into
            // blocks that fit one.
            let window = &bytes[..bytes.len().min(self.max + 1)];
            if let Some(last) = memchr::memrchr(b'\n', window) {
                ctx.lines(self.stream, &text_cow(&bytes[..last])).await?;
                bytes = &bytes[last + 1..];
                continue;
            }
            // No newline in the window: the rest is the start of a line, longer than `max`
            // when the window is full, and it waits in `partial` for its end.
            if window.len() <= self.max {
                self.partial.extend_from_slice(bytes);
                return self.split_long(ctx).await;
            }
            let end = memchr::memchr(b'\n', bytes).unwrap_or(bytes.len());
            self.partial.extend_from_slice(&bytes[..end]);
            self.split_long(ctx).await?;
            bytes = &bytes[end..];
            if bytes.is_empty() {
                return Ok(());
            }
            // `partial` is not empty (a piece of exactly `max` waits): the loop's first
            // branch ends the line at the newline.
        }
    }

    /// Sends the front of a line longer than `max` as pieces of at most `max` bytes. A piece
    /// of exactly `max` waits: if the line ends there, it is one line, not a piece and an
    /// empty line.
    async fn split_long(&mut self, ctx: &StepContext) -> Result<(), StepError> {
        while self.partial.len() > self.max {
            let rest = self.partial.split_off(cut_at(&self.partial, self.max));
            let piece = String::from_utf8_lossy(&self.partial).into_owned();
            self.partial = rest;
            ctx.line(self.stream, piece).await?;
        }
        Ok(())
    }

    /// End of stream: a last line without a newline is still a line.
    pub async fn finish(&mut self, ctx: &StepContext) -> Result<(), StepError> {
        if !self.partial.is_empty() {
            let line = text(&self.partial);
            self.partial.clear();
            ctx.line(self.stream, line).await?;
        }
        Ok(())
    }
}

/// Where to cut `bytes` (longer than `max`) so the piece before the cut is at most `max`
/// bytes and no UTF-8 character is cut in two; text that is not UTF-8 is cut at `max`.
fn cut_at(bytes: &[u8], max: usize) -> usize {
    // A continuation byte (0b10xx_xxxx) at the cut means a character straddles it; characters
    // are at most 4 bytes long.
    (max.saturating_sub(3).max(1)..=max)
        .rev()
        .find(|&at| bytes[at] & 0xC0 != 0x80)
        .unwrap_or(max)
}

/// Like [`text`], borrowing when the bytes are valid UTF-8. `String::from_utf8_lossy` would
/// borrow too, but validates through a much slower path.
fn text_cow(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(valid) => std::borrow::Cow::Borrowed(valid),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// Output bytes as text: byte-exact when they are UTF-8 (almost always), with replacement
/// characters where they are not.
fn text(bytes: &[u8]) -> String {
    // The strict check is much faster than the lossy one.
    match std::str::from_utf8(bytes) {
        Ok(valid) => valid.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}
