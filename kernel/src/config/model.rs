//! The validated pipeline: what `hm.toml` means once every problem has been ruled out.
//! Nothing here can be in an invalid state; the parser is the only producer.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// A whole pipeline file, validated.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The file it came from (absolute).
    pub file: PathBuf,
    /// The directory that relative paths in the file are relative to (absolute).
    pub root: PathBuf,
    pub name: String,
    pub timeout: Option<Duration>,
    /// `None` means "number of CPUs"; `-j` overrides.
    pub parallelism: Option<usize>,
    pub keep_going: bool,
    pub env: BTreeMap<String, String>,
    /// Steps in file order. `needs` are indices into this vector, already checked for cycles.
    pub steps: Vec<Step>,
    /// `[plugins.<name>]` tables, by plugin name.
    pub plugins: BTreeMap<String, PluginSettings>,
}

/// One step with `[defaults]` already merged in (the step's own value wins).
#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub run: String,
    /// Indices into `Pipeline::steps`.
    pub needs: Vec<usize>,
    /// Absolute working directory (the pipeline root joined with `dir`).
    pub dir: PathBuf,
    /// The step's own env on top of the pipeline env (not yet `-e` overrides).
    pub env: BTreeMap<String, String>,
    pub timeout: Option<Duration>,
    pub allow_failure: bool,
    pub limits: Limits,
    pub retry: Retry,
    /// The executor name: explicit `executor`, else "docker" when `image` is set, else the
    /// `[defaults]` executor, else "shell".
    pub executor: String,
    pub image: Option<String>,
    /// `with = { ... }` as JSON text, opaque to the kernel, handed to the executor.
    pub with_json: String,
    /// Where the step is defined, for messages: "hm.toml:12:1".
    pub location: String,
}

/// Resource limits; `None` means no limit is set.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    pub pids: Option<u64>,
    /// Cores, fractions allowed.
    pub cpu: Option<f64>,
}

/// `retry = { attempts, on }`. `attempts` counts every attempt, the first included (>= 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    pub attempts: u32,
    pub on: Vec<RetryClass>,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 1,
            on: Vec::new(),
        }
    }
}

/// A retry class (`docs/pipeline.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryClass {
    /// Any failure.
    Failed,
    /// A non-zero exit with exactly this code.
    Exit(i32),
    Signal,
    Oom,
    Pids,
    Timeout,
    Crash,
}

/// `[plugins.<name>]`.
#[derive(Debug, Clone, Default)]
pub struct PluginSettings {
    pub limits: Limits,
    pub restart: RestartBudget,
    /// `config = { ... }` as JSON text, handed to the plugin in `Init` (protocol v2).
    pub config_json: String,
    pub required: bool,
    /// Handshake deadline; 10 s by default.
    pub handshake_timeout: Duration,
}

/// `restart = { max, within }`, default 3 within 60 s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartBudget {
    pub max: u32,
    pub within: Duration,
}

impl Default for RestartBudget {
    fn default() -> Self {
        Self {
            max: 3,
            within: Duration::from_secs(60),
        }
    }
}
