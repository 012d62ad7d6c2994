//! What a manifest says: the types `plugin.toml` reads into, and the keys and values it allows.

use std::fmt;

pub use hm_ipc::messages::HookPhase;

use crate::config::Limits;

/// The manifest's file name inside a bundle directory.
pub const MANIFEST_FILE: &str = "plugin.toml";

pub(super) const KEYS: &[&str] = &[
    "name",
    "version",
    "description",
    "executable",
    "protocol",
    "capabilities",
    "limits",
    "subcommand",
    "hook",
];
pub(super) const HOOK_KEYS: &[&str] = &["event", "phase", "timeout"];
/// The event kinds a hook may subscribe to (`docs/events.md`), and `*` for all of them.
pub const HOOK_EVENTS: &[&str] = &[
    "build_start",
    "step_queued",
    "step_start",
    "step_log",
    "step_retry",
    "step_end",
    "plugin_start",
    "plugin_exit",
    "plugin_restart",
    "build_end",
    "*",
];
/// How long hm waits for a hook's answer when its `[[hook]]` table does not say.
pub const DEFAULT_HOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// The longest `timeout` a `[[hook]]` may ask for: a before-hook holds a step that long.
pub(super) const MAX_HOOK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);
pub(super) const SUBCOMMAND_KEYS: &[&str] = &["verb", "about", "args"];
pub(super) const ARG_KEYS: &[&str] = &["name", "long", "takes_value", "help"];
pub(super) const PROTOCOL_KEYS: &[&str] = &["min", "max"];
/// The kinds of capability a manifest may declare.
pub(super) const CAPABILITY_KINDS: &[&str] = &["executor", "service", "hook", "subcommand"];

/// What a bundle says about its plugin.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    pub description: String,
    /// The executable's file name inside the bundle.
    pub executable: String,
    /// The protocol versions the plugin speaks, inclusive.
    pub protocol: (u32, u32),
    /// `executor:NAME`, `hook:EVENT`, `subcommand:VERB`, exactly as the plugin's `Hello` says.
    pub capabilities: Vec<String>,
    /// Limits for the plugin's own cgroup when `[plugins.<name>].limits` does not set them.
    pub limits: Limits,
    /// `[[subcommand]]`: what `hm --help` and `hm VERB --help` show, and how `hm` parses the
    /// verb's arguments, without starting the plugin.
    pub subcommands: Vec<SubcommandSpec>,
    /// One entry per `hook:EVENT` capability: its `[[hook]]` table, or the defaults (the
    /// `after` phase, [`DEFAULT_HOOK_TIMEOUT`]).
    pub hooks: Vec<HookSpec>,
}

/// One event a hook observes: `[[hook]]` with `event`, `phase` and `timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookSpec {
    /// An entry of [`HOOK_EVENTS`].
    pub event: &'static str,
    pub phase: HookPhase,
    pub timeout: std::time::Duration,
}

impl HookSpec {
    /// Whether this subscription covers events of `kind`.
    pub fn covers(&self, kind: &str) -> bool {
        self.event == "*" || self.event == kind
    }
}

/// One `[[subcommand]]` table: `verb`, `about`, and `args = [{ name, long, takes_value, help }]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubcommandSpec {
    pub verb: String,
    pub about: String,
    pub args: Vec<ArgSpec>,
}

/// One argument of a subcommand: `--LONG VALUE` (`takes_value = true`) or the switch `--LONG`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgSpec {
    /// The key of its value in the JSON object the plugin receives.
    pub name: String,
    pub long: String,
    pub takes_value: bool,
    pub help: String,
}

/// What one capability claims for its plugin alone: an executor name or a verb. Hooks claim
/// nothing; any number of plugins may observe one event.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Claim {
    Executor(String),
    Verb(String),
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Claim::Executor(name) => write!(f, "executor `{name}`"),
            Claim::Verb(verb) => write!(f, "subcommand `hm {verb}`"),
        }
    }
}

impl Manifest {
    /// The executor names this plugin provides.
    pub fn executors(&self) -> impl Iterator<Item = &str> {
        self.capabilities
            .iter()
            .filter_map(|c| c.strip_prefix("executor:"))
    }

    /// The executors whose services this plugin runs (`service:NAME`).
    pub fn runs_services_for(&self, executor: &str) -> bool {
        self.capabilities
            .iter()
            .filter_map(|c| c.strip_prefix("service:"))
            .any(|e| e == executor)
    }

    /// Everything this plugin claims exclusively.
    pub fn claims(&self) -> Vec<Claim> {
        self.capabilities
            .iter()
            .filter_map(|c| {
                let (kind, value) = c.split_once(':')?;
                match kind {
                    "executor" => Some(Claim::Executor(value.to_owned())),
                    "subcommand" => Some(Claim::Verb(value.to_owned())),
                    _ => None,
                }
            })
            .collect()
    }
}
