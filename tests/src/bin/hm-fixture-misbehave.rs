//! Fixture plugin that misbehaves as a process, in the middle of a step. Executor `misbehave`
//! first writes `FIXTURE_LINES` lines and makes sure hm has them (see
//! `hm_tests::fixture::write_confirmed_lines`), then does what the step's `MISBEHAVE` says:
//!
//! - `segfault`: dies of a real SIGSEGV (a write to an unmapped address);
//! - `abort`: `std::process::abort()` (SIGABRT);
//! - `panic`: the executor panics, with its lines only queued; the SDK catches the panic, sends
//!   the queued lines and fails the step, and the plugin lives on;
//! - `exit-101`: the whole process goes down the way a Rust program whose main thread panicked
//!   does (a panic message on stderr, exit status 101), outside the SDK's reach: a thread
//!   panics and the plugin exits with that status;
//! - `hang`: blocks the plugin's only runtime thread for good, so hm's pings go unanswered;
//! - `ignore-cancel`: ignores SIGTERM, runs `run` in a process group of its own (reported to
//!   hm, so hm can kill it) and waits for it without ever honouring a `Cancel`;
//! - `leak`: runs `run` in a process group of its own and returns as soon as its main process
//!   exits, leaving whatever it started in the background running;
//! - `claim-pgid`: tells hm the step runs in process group `CLAIM_PGID` (a number, or `parent`
//!   for hm's own pid), which it does not own, then aborts: hm must not kill that group;
//! - unset: passes after writing the lines.
//!
//! `segfault`, `abort` and `exit-101` die with a frame from hm unread on their socket, as a
//! plugin that crashes while hm talks to it does (a log batch's credit, a ping): see
//! `hm_tests::fixture::await_unread_frame`. Crashes are made not to dump core, whatever the
//! machine's `ulimit -c`.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::time::Duration;

use hm_sdk::{Executor, Plugin, StepContext, StepError, StepRequest, StepResult};
use hm_tests::fixture;

struct Misbehave;

impl Executor for Misbehave {
    async fn execute(&self, step: StepRequest, ctx: StepContext) -> Result<StepResult, StepError> {
        let mode = fixture::var(&step, "MISBEHAVE")
            .unwrap_or_default()
            .to_owned();
        match mode.as_str() {
            "panic" => {
                fixture::queue_lines(&step, &ctx).await?;
                panic!("misbehave: the executor panics on purpose");
            }
            "ignore-cancel" => return ignore_cancel(&step, &ctx).await,
            "leak" => return leak(&step, &ctx).await,
            "claim-pgid" => return claim_pgid(&step, &ctx).await,
            _ => {}
        }
        fixture::write_confirmed_lines(&step, &ctx).await?;
        if matches!(mode.as_str(), "segfault" | "abort" | "exit-101") {
            fixture::await_unread_frame(&ctx)?;
        }
        match mode.as_str() {
            "" => Ok(exited(0)),
            "segfault" => segfault(),
            "abort" => {
                no_core_dump();
                std::process::abort()
            }
            "exit-101" => {
                let _ = std::thread::spawn(|| panic!("misbehave: the plugin's main work panicked"))
                    .join();
                std::process::exit(101)
            }
            "hang" => loop {
                // Blocks the current-thread runtime: no frame is read or answered any more.
                std::thread::sleep(Duration::from_secs(3600));
            },
            other => Err(StepError::Message(format!(
                "unknown MISBEHAVE mode {other:?}"
            ))),
        }
    }
}

/// Runs `run` with `sh -c` in a new process group, with the step's directory and environment
/// and no output; reports the group to hm and confirms hm has it (and the lines).
async fn spawn_step_group(
    step: &StepRequest,
    ctx: &StepContext,
) -> Result<tokio::process::Child, StepError> {
    let child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(&step.run)
        .current_dir(&step.dir)
        .envs(step.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(StepError::Spawn)?;
    if let Some(pid) = child.id() {
        ctx.report_process_group(pid as i32)?;
    }
    fixture::write_confirmed_lines(step, ctx).await?;
    Ok(child)
}

async fn ignore_cancel(step: &StepRequest, ctx: &StepContext) -> Result<StepResult, StepError> {
    // SAFETY: setting a signal's disposition to "ignore" installs no handler code; SIG_IGN is
    // also inherited by the step's shell, which therefore ignores SIGTERM too.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
    let mut child = spawn_step_group(step, ctx).await?;
    // No select on `ctx.cancelled()`: a Cancel changes nothing here.
    let status = child.wait().await.map_err(StepError::Spawn)?;
    Ok(StepResult {
        exit_code: status.code(),
        signal: status.signal(),
        ..StepResult::default()
    })
}

async fn leak(step: &StepRequest, ctx: &StepContext) -> Result<StepResult, StepError> {
    let mut child = spawn_step_group(step, ctx).await?;
    let status = child.wait().await.map_err(StepError::Spawn)?;
    // Nothing kills the rest of the group: what `run` put in the background stays.
    Ok(StepResult {
        exit_code: status.code(),
        signal: status.signal(),
        ..StepResult::default()
    })
}

async fn claim_pgid(step: &StepRequest, ctx: &StepContext) -> Result<StepResult, StepError> {
    let claimed = match fixture::var(step, "CLAIM_PGID") {
        Some("parent") => nix::unistd::getppid().as_raw(),
        Some(number) => number
            .parse()
            .map_err(|_| StepError::Message(format!("CLAIM_PGID={number:?} is not a number")))?,
        None => return Err(StepError::Message("CLAIM_PGID is not set".into())),
    };
    ctx.report_process_group(claimed)?;
    // `write_confirmed_lines` follows: its round trip also proves hm has the claim. Then abort.
    fixture::write_confirmed_lines(step, ctx).await?;
    no_core_dump();
    std::process::abort()
}

fn exited(code: i32) -> StepResult {
    StepResult {
        exit_code: Some(code),
        ..StepResult::default()
    }
}

fn segfault() -> ! {
    no_core_dump();
    // SAFETY: deliberate. The first page is never mapped, so this write faults and the kernel
    // kills the process with SIGSEGV (Rust's own SIGSEGV handler only catches stack-guard hits,
    // and re-raises anything else by restoring the default action). The address is non-null
    // and aligned, so it is a real memory access, not a precondition panic.
    unsafe {
        std::ptr::write_volatile(std::ptr::without_provenance_mut::<u64>(64), 1);
        // Unreachable in practice; if the write somehow did not fault, still die of SIGSEGV.
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        libc::raise(libc::SIGSEGV);
    }
    std::process::abort()
}

fn no_core_dump() {
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads the struct we pass and nothing else; lowering a limit is allowed.
    unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &none);
    }
}

fn main() {
    fixture::note_socket_fd();
    hm_sdk::serve(
        Plugin::new("fixture-misbehave", env!("CARGO_PKG_VERSION"))
            .description("crashes, hangs, ignores cancels or leaks, as each step asks")
            .executor("misbehave", Misbehave),
    )
}
