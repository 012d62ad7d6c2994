//! `hm <verb>`: subcommands contributed by plugins (`docs/protocol.md`, subcommands). Their
//! verbs, help and arguments come from the manifests (`[[subcommand]]`, [`discover`]), so
//! listing them never starts a plugin. [`run`] starts the plugin with the terminal, sends
//! `RunSubcommand` (protocol v4) and returns the code of its `SubcommandDone`.

use std::path::Path;
use std::time::Duration;

use hm_ipc::host::{CallKind, Inbound};
use hm_ipc::messages::{KernelCall, PluginReply, RunSubcommand};
use hm_ipc::{FrameKind, FrameReader, OutFrame};
use tokio::signal::unix::{SignalKind, signal};

use crate::launch::Notice;
use crate::registry::probe::HANDSHAKE_TIMEOUT;
use crate::registry::{Builtin, Installed, PluginDirs, Registry, SubcommandSpec};
use crate::supervisor::handshake::{self, Expected, FailureKind, Offer};
use crate::supervisor::spawn::{describe_spawn_error, terminal_command};

/// The commands of `hm` itself, which no plugin verb may take.
pub const RESERVED: &[&str] = &[
    "run", "validate", "version", "doctor", "plugin", "cache", "help",
];
/// How long the plugin may take to exit after `Shutdown`.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// The call id of the one `RunSubcommand`.
const CALL: u64 = 1;

/// One verb in effect and the plugin that provides it.
#[derive(Debug, Clone)]
pub struct Verb {
    pub spec: SubcommandSpec,
    pub plugin: Installed,
}

/// The verbs of the plugins in effect from `cwd` (project and user layers, built-ins), sorted.
/// A verb that names a command of hm itself, or that two plugins claim, is left out: the
/// registry reports the conflict, `hm plugin list` and `hm doctor` show it.
pub fn discover(cwd: &Path, builtins: &[Builtin]) -> Vec<Verb> {
    let project = crate::config::find_pipeline_file(cwd)
        .and_then(|f| f.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| cwd.to_path_buf());
    let dirs = PluginDirs {
        project: Some(crate::registry::project_plugins_dir(&project)),
        user: crate::registry::user_plugins_dir(),
    };
    let registry = Registry::discover_in(&dirs, builtins);
    let mut verbs: Vec<Verb> = Vec::new();
    for plugin in registry.active() {
        for capability in &plugin.manifest.capabilities {
            let Some(verb) = capability.strip_prefix("subcommand:") else {
                continue;
            };
            if RESERVED.contains(&verb) {
                continue;
            }
            let spec = plugin
                .manifest
                .subcommands
                .iter()
                .find(|s| s.verb == verb)
                .cloned()
                .unwrap_or_else(|| SubcommandSpec {
                    verb: verb.to_owned(),
                    ..SubcommandSpec::default()
                });
            verbs.push(Verb {
                spec,
                plugin: plugin.clone(),
            });
        }
    }
    verbs.sort_by(|a, b| a.spec.verb.cmp(&b.spec.verb));
    // Claimed twice: neither runs (the registry's conflict error says which plugins).
    let mut unique: Vec<Verb> = Vec::new();
    for (i, verb) in verbs.iter().enumerate() {
        let twice = |j: usize| verbs.get(j).is_some_and(|v| v.spec.verb == verb.spec.verb);
        if !twice(i + 1) && (i == 0 || !twice(i - 1)) {
            unique.push(verb.clone());
        }
    }
    unique
}

/// Why a verb's plugin could not run it: hm exits 5 and says this.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerbError {
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// The plugin could not be started, failed its handshake, answered with an error,
    /// crashed or broke the protocol; the message says which.
    #[error("{0}")]
    Plugin(String),
}

/// Runs `verb` with `args_json` (every argument by name) and returns the plugin's exit code
/// (outside 0..=255: 1). The plugin's `Log` records go to `notice`, prefixed with its name.
pub fn run(verb: &Verb, args_json: String, notice: Notice) -> Result<i32, VerbError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(VerbError::Runtime)?;
    runtime
        .block_on(run_async(verb, args_json, notice))
        .map_err(VerbError::Plugin)
}

async fn run_async(verb: &Verb, args_json: String, notice: Notice) -> Result<i32, String> {
    let spec = verb.plugin.spec();
    let (kernel_end, plugin_end) =
        hm_ipc::transport::socket_pair().map_err(|e| format!("socket pair: {e}"))?;
    // The plugin shares the terminal's foreground process group, so Ctrl-C reaches it as well
    // as hm: hm ignores it and waits for the plugin's answer; SIGTERM to hm is passed on.
    let mut interrupts = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let mut terms = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut child = terminal_command(&spec, hm_ipc::transport::raw(&plugin_end))
        .spawn()
        .map_err(|e| describe_spawn_error(&spec, &e))?;
    drop(plugin_end);
    let pid = child.id().unwrap_or(0) as i32;
    let hm_ipc::transport::Connection {
        mut frames,
        writer,
        writer_task,
    } = hm_ipc::transport::connect_std(kernel_end).map_err(|e| e.to_string())?;
    let result = {
        let talk = converse(verb, args_json, &mut frames, &writer, &notice);
        tokio::pin!(talk);
        loop {
            tokio::select! {
                result = &mut talk => break result,
                _ = interrupts.recv() => {}
                _ = terms.recv() => {
                    if pid > 0 {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGTERM,
                        );
                    }
                }
            }
        }
    };
    drop(writer);
    let _ = writer_task.await;
    let status = tokio::time::timeout(EXIT_TIMEOUT, child.wait()).await;
    if status.is_err() {
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    result.map(|code| if (0..=255).contains(&code) { code } else { 1 })
}

async fn converse(
    verb: &Verb,
    args_json: String,
    frames: &mut FrameReader,
    writer: &tokio::sync::mpsc::UnboundedSender<OutFrame>,
    notice: &Notice,
) -> Result<i32, String> {
    let manifest = &verb.plugin.manifest;
    let expected = Expected {
        name: &manifest.name,
        capabilities: &manifest.capabilities,
        version: Some(&manifest.version),
        protocol: Some(manifest.protocol),
        needs: Some((
            hm_ipc::SUBCOMMANDS_SINCE,
            "rebuild the plugin against a newer hm-sdk",
        )),
    };
    let offer = Offer {
        run_id: format!("subcommand-{}", std::process::id()),
        log_credit: 1,
        max_batch_bytes: 64 * 1024,
    };
    let mut greeted = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        handshake::greet(frames, writer, &expected, offer),
    )
    .await
    {
        Err(_) => return Err("did not complete the handshake in time".to_owned()),
        Ok(Err(failure)) if failure.kind == FailureKind::Rejected => {
            return Err(format!("{failure} (reinstall the plugin, or fix it)"));
        }
        Ok(Err(failure)) => return Err(failure.message),
        Ok(Ok(greeted)) => greeted,
    };
    let call = KernelCall::RunSubcommand(Box::new(RunSubcommand {
        verb: verb.spec.verb.clone(),
        args_json,
    }));
    greeted.policy.register(CALL, CallKind::Subcommand);
    handshake::send(writer, OutFrame::message(FrameKind::Call, CALL, &call));
    loop {
        let inbound = handshake::next_inbound(frames, &mut greeted.policy, "the subcommand")
            .await
            .map_err(|f| match f.kind {
                FailureKind::Closed => "exited before it answered (it crashed?)".to_owned(),
                _ => f.message,
            })?;
        let refusal = "this host call is not available to subcommands";
        let log = |message: String| notice(&format!("{}: {message}", manifest.name));
        match handshake::answer_outside_a_run(writer, greeted.protocol, inbound, refusal, log) {
            None => {}
            Some(Inbound::Reply { reply, .. }) => {
                handshake::send(writer, Ok(OutFrame::empty(FrameKind::Shutdown, 0)));
                return match reply {
                    PluginReply::SubcommandDone(done) => Ok(done.exit_code),
                    PluginReply::Failed(failure) => Err(failure.message),
                    other => Err(format!("answered RunSubcommand with {other:?}")),
                };
            }
            // No step runs and no ping is sent: the policy lets nothing else through.
            Some(other) => return Err(format!("sent {other:?} during a subcommand")),
        }
    }
}
