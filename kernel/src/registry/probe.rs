//! Asking a plugin executable about itself before it is installed: its manifest
//! (`--hm-manifest`) and a real handshake (Hello → Welcome, a Ping answered, Shutdown, a clean
//! exit). Both start the process exactly as the kernel does (`supervisor::spawn`), with a
//! deadline, and kill its process group if it does not finish in time.

use std::collections::VecDeque;
use std::path::Path;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hm_ipc::host::Inbound;
use hm_ipc::{FrameKind, FrameReader, OutFrame};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::Child;

use super::discover::PluginSpec;
use super::manifest::Manifest;
use crate::supervisor::handshake::{self, Expected, FailureKind, Offer};
use crate::supervisor::spawn::{describe_spawn_error, plugin_command};

/// How long `--hm-manifest` may take.
pub const MANIFEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the whole probe handshake may take (`docs/protocol.md`).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a plugin may take to exit after `Shutdown`.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// The most manifest text read from a plugin's stdout.
const MAX_MANIFEST_BYTES: u64 = 64 * 1024;
const STDERR_TAIL: usize = 10;

fn spec_for(executable: &Path, args: &[&str]) -> PluginSpec {
    PluginSpec {
        name: executable
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned()),
        version: String::new(),
        program: executable.to_path_buf(),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        capabilities: Vec::new(),
        hooks: Vec::new(),
        protocol: (hm_ipc::PROTOCOL_MIN, hm_ipc::PROTOCOL_MAX),
        origin: executable.display().to_string(),
    }
}

/// A started plugin process with its diagnostics being collected.
struct Probed {
    child: Child,
    pid: u32,
    stderr: Arc<Mutex<VecDeque<String>>>,
}

impl Probed {
    fn start(
        spec: &PluginSpec,
        plugin_end: &std::os::unix::net::UnixStream,
    ) -> Result<Self, String> {
        let mut child = plugin_command(spec, hm_ipc::transport::raw(plugin_end))
            .spawn()
            .map_err(|e| describe_spawn_error(spec, &e))?;
        let pid = child.id().unwrap_or(0);
        let stderr = Arc::new(Mutex::new(VecDeque::new()));
        if let Some(err) = child.stderr.take() {
            tokio::spawn(collect_tail(err, stderr.clone()));
        }
        Ok(Self { child, pid, stderr })
    }

    fn kill(&self) {
        if self.pid != 0 {
            let _ = killpg(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        }
    }

    /// Waits for the exit within `timeout`, killing the group if it does not come.
    async fn finish(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.ok(),
            Err(_) => {
                self.kill();
                None
            }
        };
        // Anything it left in its process group goes with it.
        self.kill();
        let _ = self.child.wait().await;
        status
    }

    /// The last lines of its stderr, indented, for a failure message.
    fn stderr_tail(&self) -> String {
        let tail = self.stderr.lock().map(|t| t.clone()).unwrap_or_default();
        if tail.is_empty() {
            return String::new();
        }
        let mut text = String::from("\n  its stderr ended with:");
        for line in tail {
            text.push_str("\n    ");
            text.push_str(&line);
        }
        text
    }
}

impl Drop for Probed {
    fn drop(&mut self) {
        // A probe abandoned half-way (an error, a timeout) leaves nothing running.
        self.kill();
    }
}

async fn collect_tail(stream: impl AsyncRead + Unpin, tail: Arc<Mutex<VecDeque<String>>>) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if let Ok(mut tail) = tail.lock() {
            if tail.len() == STDERR_TAIL {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }
}

fn describe_status(status: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status {
        None => "did not exit in time and was killed".to_owned(),
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => format!("was killed by signal {sig}"),
            _ => format!("ended with {s}"),
        },
    }
}

/// Runs `executable --hm-manifest` and returns what it printed.
pub async fn manifest_text(executable: &Path) -> Result<String, String> {
    let spec = spec_for(executable, &["--hm-manifest"]);
    let (_kernel_end, plugin_end) =
        hm_ipc::transport::socket_pair().map_err(|e| format!("socket pair: {e}"))?;
    let mut probed = Probed::start(&spec, &plugin_end)?;
    drop(plugin_end);
    let mut stdout = probed.child.stdout.take();
    let read = async {
        let mut text = Vec::new();
        if let Some(out) = stdout.as_mut() {
            let _ = out.take(MAX_MANIFEST_BYTES).read_to_end(&mut text).await;
        }
        text
    };
    let text = match tokio::time::timeout(MANIFEST_TIMEOUT, read).await {
        Ok(text) => text,
        Err(_) => {
            probed.kill();
            return Err(format!(
                "`{} --hm-manifest` did not answer within {}",
                executable.display(),
                humantime::format_duration(MANIFEST_TIMEOUT)
            ));
        }
    };
    drop(stdout);
    let status = probed.finish(EXIT_TIMEOUT).await;
    if !status.is_some_and(|s| s.success()) {
        return Err(format!(
            "`{} --hm-manifest` {}: it is not an hm plugin, or not built on hm-sdk{}",
            executable.display(),
            describe_status(status),
            probed.stderr_tail()
        ));
    }
    String::from_utf8(text).map_err(|_| {
        format!(
            "`{} --hm-manifest` printed something that is not UTF-8 text",
            executable.display()
        )
    })
}

/// What the plugin said in its `Hello`.
#[derive(Debug, Clone)]
pub struct Greeting {
    pub protocol: u32,
    pub version: String,
}

/// Starts the plugin the way the kernel does, completes the handshake, checks that its
/// `Hello` says what `manifest` says (name, version, protocol range, capabilities), has it
/// answer a `Ping`, shuts it down and requires a clean exit.
pub async fn handshake(spec: &PluginSpec, manifest: &Manifest) -> Result<Greeting, String> {
    let (kernel_end, plugin_end) =
        hm_ipc::transport::socket_pair().map_err(|e| format!("socket pair: {e}"))?;
    let mut probed = Probed::start(spec, &plugin_end)?;
    drop(plugin_end);
    if let Some(out) = probed.child.stdout.take() {
        // Plugins never write to stdout; whatever comes is drained so it cannot block them.
        tokio::spawn(collect_tail(out, Arc::new(Mutex::new(VecDeque::new()))));
    }
    let talk = async {
        let hm_ipc::transport::Connection {
            mut frames,
            writer,
            writer_task,
        } = hm_ipc::transport::connect_std(kernel_end).map_err(|e| e.to_string())?;
        let result = converse(manifest, &mut frames, &writer).await;
        drop(writer);
        let _ = writer_task.await;
        result
    };
    let greeting = match tokio::time::timeout(HANDSHAKE_TIMEOUT, talk).await {
        Ok(Ok(greeting)) => greeting,
        Ok(Err(reason)) => {
            let status = probed.finish(Duration::from_millis(500)).await;
            let exited = match status {
                Some(_) => format!(" (it then {})", describe_status(status)),
                None => String::new(),
            };
            return Err(format!("{reason}{exited}{}", probed.stderr_tail()));
        }
        Err(_) => {
            probed.kill();
            return Err(format!(
                "did not complete the handshake within {}{}",
                humantime::format_duration(HANDSHAKE_TIMEOUT),
                probed.stderr_tail()
            ));
        }
    };
    let status = probed.finish(EXIT_TIMEOUT).await;
    if !status.is_some_and(|s| s.success()) {
        return Err(format!(
            "completed the handshake but {} when asked to shut down{}",
            describe_status(status),
            probed.stderr_tail()
        ));
    }
    Ok(greeting)
}

async fn converse(
    manifest: &Manifest,
    frames: &mut FrameReader,
    writer: &tokio::sync::mpsc::UnboundedSender<OutFrame>,
) -> Result<Greeting, String> {
    // The probe is stricter than a run: the Hello must say all the manifest says.
    let expected = Expected {
        name: &manifest.name,
        capabilities: &manifest.capabilities,
        version: Some(&manifest.version),
        protocol: Some(manifest.protocol),
        needs: None,
    };
    let offer = Offer {
        run_id: format!("install-probe-{}", std::process::id()),
        log_credit: 1,
        max_batch_bytes: 64 * 1024,
    };
    let mut greeted = handshake::greet(frames, writer, &expected, offer)
        .await
        .map_err(|f| f.message)?;
    const NONCE: u64 = 0x6870_726f_6265; // "hprobe"
    greeted.policy.ping(NONCE);
    handshake::send(writer, Ok(OutFrame::empty(FrameKind::Ping, NONCE)));
    loop {
        let inbound = handshake::next_inbound(frames, &mut greeted.policy, "the probe")
            .await
            .map_err(|f| match f.kind {
                FailureKind::Closed => "closed its socket instead of answering a Ping".to_owned(),
                _ => f.message,
            })?;
        // A diagnostic is fine; answer it so the plugin does not wait.
        let refusal = "the install probe answers no host call but Log";
        match handshake::answer_outside_a_run(writer, greeted.protocol, inbound, refusal, drop) {
            None => {}
            Some(Inbound::Pong { .. }) => break,
            // The probe makes no call: the policy lets no reply or output through.
            Some(other) => return Err(format!("answered a Ping with {other:?}")),
        }
    }
    handshake::send(writer, Ok(OutFrame::empty(FrameKind::Shutdown, 0)));
    Ok(Greeting {
        protocol: greeted.protocol,
        version: greeted.hello.version,
    })
}
