//! Fixture plugin that reads the workspace archive. Executor `archive` does what the step's
//! `ARCHIVE` says:
//!
//! - `print:PATH`: opens the archive, writes `entry NAME` for every entry of the tar, in order,
//!   then `content LINE` for every line of the file `PATH` in it, and drops the archive before
//!   it answers;
//! - `crash`: opens the archive, reads every byte of it, writes `read N bytes` (confirmed: hm
//!   has the line), and dies by SIGKILL with the archive still mapped;
//! - `wait:PATH`: waits (at most 10 s) until `PATH` (relative to the step's directory) exists,
//!   without touching the archive.
//!
//! With `FIXTURE_HOLD_EXIT=PATH` in its environment, the plugin does not exit when hm shuts it
//! down until `PATH` exists (at most 10 s): the run stays alive after its last step, so a test
//! can look at hm then.

use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use hm_sdk::{Executor, OutputStream, Plugin, StepContext, StepError, StepRequest, StepResult};
use hm_tests::fixture;

struct ArchiveFixture;

impl Executor for ArchiveFixture {
    async fn execute(&self, step: StepRequest, ctx: StepContext) -> Result<StepResult, StepError> {
        let mode = fixture::var(&step, "ARCHIVE")
            .unwrap_or_default()
            .to_owned();
        if let Some(path) = mode.strip_prefix("print:") {
            print(path, &ctx).await?;
        } else if mode == "crash" {
            let archive = ctx.open_archive().await?;
            // Every page of the mapping is touched, then the process dies holding it.
            let sum = archive.iter().fold(0u8, |a, &b| a.wrapping_add(b));
            let line = format!("read {} bytes (sum {sum})", archive.len());
            ctx.line(OutputStream::Stdout, line).await?;
            ctx.flush().await?;
            fixture::confirm(&ctx).await?;
            let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
        } else if let Some(path) = mode.strip_prefix("wait:") {
            if !wait_for(&step.dir.join(path)).await {
                return Err(StepError::Message(format!("gave up waiting for {path}")));
            }
        } else {
            return Err(StepError::Message(format!("unknown ARCHIVE mode {mode:?}")));
        }
        Ok(StepResult {
            exit_code: Some(0),
            ..StepResult::default()
        })
    }
}

async fn print(path: &str, ctx: &StepContext) -> Result<(), StepError> {
    let failed = |e: std::io::Error| StepError::Message(format!("reading the archive: {e}"));
    let archive = ctx.open_archive().await?;
    let mut names = Vec::new();
    let mut content = None;
    // `Archive` is a `Read` over the mapping: the tar is parsed in place.
    let mut tar = tar::Archive::new(archive);
    for entry in tar.entries().map_err(failed)? {
        let mut entry = entry.map_err(failed)?;
        let name = entry.path().map_err(failed)?.to_string_lossy().into_owned();
        if name == path {
            let mut text = String::new();
            entry.read_to_string(&mut text).map_err(failed)?;
            content = Some(text);
        }
        names.push(name);
    }
    // Unmapped before the step answers.
    drop(tar);
    for name in names {
        ctx.line(OutputStream::Stdout, format!("entry {name}"))
            .await?;
    }
    let Some(content) = content else {
        return Err(StepError::Message(format!("{path} is not in the archive")));
    };
    for line in content.lines() {
        ctx.line(OutputStream::Stdout, format!("content {line}"))
            .await?;
    }
    Ok(())
}

/// Waits until `path` exists, for at most 10 s.
async fn wait_for(path: &Path) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

fn plugin() -> Plugin {
    Plugin::new("fixture-archive", env!("CARGO_PKG_VERSION"))
        .description("reads the workspace archive as each step asks")
        .executor("archive", ArchiveFixture)
}

fn main() {
    fixture::note_socket_fd();
    let Some(hold) = std::env::var_os("FIXTURE_HOLD_EXIT") else {
        hm_sdk::serve(plugin())
    };
    // What `hm_sdk::serve` does, then a wait before exiting.
    let served = hm_ipc::transport::inherited()
        .map_err(|e| e.to_string())
        .and_then(|socket| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async move {
                let stream = tokio::net::UnixStream::from_std(socket).map_err(|e| e.to_string())?;
                hm_sdk::serve_on(plugin(), stream)
                    .await
                    .map_err(|e| e.to_string())?;
                wait_for(Path::new(&hold)).await;
                Ok(())
            })
        });
    if let Err(e) = served {
        eprintln!("fixture-archive: {e}");
        std::process::exit(1);
    }
}
