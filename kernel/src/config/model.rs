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
#[derive(Debug, Clone)]
pub struct PluginSettings {
    pub limits: Limits,
    pub restart: RestartBudget,
    /// `config = { ... }` as JSON text, handed to the plugin in `Init` (protocol v2).
    pub config_json: String,
    pub required: bool,
    /// Handshake deadline; 10 s by default.
    pub handshake_timeout: Duration,
}

/// What a plugin gets without a `[plugins.<name>]` table: no limits, the default restart
/// budget, an empty configuration, 10 s for the handshake.
impl Default for PluginSettings {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            restart: RestartBudget::default(),
            config_json: "{}".to_owned(),
            required: false,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// These limits, with `defaults` wherever a field is unset.
    pub fn or(self, defaults: Limits) -> Limits {
        Limits {
            memory_bytes: self.memory_bytes.or(defaults.memory_bytes),
            pids: self.pids.or(defaults.pids),
            cpu: self.cpu.or(defaults.cpu),
        }
    }
}

impl Pipeline {
    /// The settings of plugin `name`: its `[plugins.<name>]` table, or the defaults.
    pub fn plugin_settings(&self, name: &str) -> PluginSettings {
        self.plugins.get(name).cloned().unwrap_or_default()
    }

    /// Puts a plugin's own default limits (from its manifest) under the fields its
    /// `[plugins.<name>].limits` leaves unset.
    pub fn add_plugin_default_limits(&mut self, name: &str, defaults: Limits) {
        if defaults == Limits::default() {
            return;
        }
        let settings = self.plugins.entry(name.to_owned()).or_default();
        settings.limits = settings.limits.or(defaults);
    }
}

impl Step {
    /// The step's environment as its process gets it: its `env` (over the pipeline's), then
    /// `overrides` (`-e KEY=VALUE`), then `HM_PROJECT_DIR`, which hm always sets.
    pub fn environment(
        &self,
        overrides: &[(String, String)],
        project_dir: &std::path::Path,
    ) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .filter(|(k, _)| {
                !overrides.iter().any(|(o, _)| o == *k) && k.as_str() != PROJECT_DIR_ENV
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        env.extend(
            overrides
                .iter()
                .filter(|(k, _)| k != PROJECT_DIR_ENV)
                .cloned(),
        );
        env.push((
            PROJECT_DIR_ENV.to_owned(),
            project_dir.display().to_string(),
        ));
        env
    }
}

/// The variable that names the project's root in every step's environment.
pub const PROJECT_DIR_ENV: &str = hm_ipc::messages::PROJECT_DIR_ENV;

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
