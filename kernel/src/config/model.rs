//! The validated pipeline: what `hm.toml` means once every problem has been ruled out.
//! Nothing here can be in an invalid state; the parser is the only producer.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

pub use super::matrix::MatrixValues;

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
    /// Values may be secret references ([`referenced_secret`](super::referenced_secret)).
    pub env: BTreeMap<String, String>,
    /// `artifacts_max`: what one step may produce as artifacts.
    pub artifacts_max: ArtifactLimits,
    /// `[cache]`: where the step cache is and how big it may grow.
    pub cache: CacheSettings,
    /// Steps in file order. `needs` are indices into this vector, already checked for cycles.
    pub steps: Vec<Step>,
    /// `[plugins.<name>]` tables, by plugin name.
    pub plugins: BTreeMap<String, PluginSettings>,
    /// `[services.<name>]` tables, by name.
    pub services: BTreeMap<String, Service>,
}

/// `[services.NAME]`: a container started before the first step that lists it and stopped
/// after the last, reachable by those steps.
#[derive(Debug, Clone)]
pub struct Service {
    /// The host name steps reach it by.
    pub name: String,
    /// The executor whose plugin runs it ("docker").
    pub executor: String,
    pub image: String,
    /// Values may be secret references ([`referenced_secret`](super::referenced_secret)).
    pub env: BTreeMap<String, String>,
    pub entrypoint: Option<Vec<String>>,
    pub command: Option<Vec<String>>,
    /// Ports inside the service, published on the host's loopback for steps on the host.
    pub ports: Vec<u16>,
    pub health: Option<Health>,
    /// `with = { ... }` as JSON text, for the executor (`pull`).
    pub with_json: String,
    pub limits: Limits,
    /// Where it is defined, for messages: "hm.toml:12:1".
    pub location: String,
}

/// `health = { run, interval, timeout, retries }`: `sh -c RUN` inside the service until it
/// exits 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub run: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
}

/// One step with `[defaults]` already merged in (the step's own value wins); for a step with
/// a `matrix`, one instance of it.
///
/// `run`, `image`, `env` values, strings in `with` and `dir_template` may hold expressions
/// (`${{ ... }}`, `config::expr`), checked when the file was read and rendered when the step
/// starts ([`Step::prepare`]).
#[derive(Debug, Clone)]
pub struct Step {
    /// The name in events and on the command line: `NAME`, or `NAME[key=value,...]` for a
    /// matrix instance.
    pub name: String,
    /// `NAME` as in `[steps.NAME]`.
    pub base: String,
    /// The instance's matrix values; `None` for a step without a matrix.
    pub matrix: Option<MatrixValues>,
    /// Which instance of its step this is (0 without a matrix), for names that must be safe
    /// as file names (cgroups).
    pub instance: usize,
    pub run: String,
    /// Indices into `Pipeline::steps`.
    pub needs: Vec<usize>,
    /// The needs listed with `optional = true`: skipped by their condition (or as manual),
    /// they do not skip this step.
    pub optional_needs: Vec<usize>,
    /// `if`: what must hold for the step to run.
    pub condition: Option<Condition>,
    pub when: When,
    /// Absolute working directory (the pipeline root joined with `dir`), unless
    /// `dir_template` says it is only known when the step starts.
    pub dir: PathBuf,
    /// `dir` as written, when it has expressions that only the step's start can fill (`env`,
    /// step outputs).
    pub dir_template: Option<String>,
    /// The step's own env on top of the pipeline env and its matrix variables (not yet `-e`
    /// overrides).
    /// Values may be secret references ([`referenced_secret`](super::referenced_secret)).
    pub env: BTreeMap<String, String>,
    pub timeout: Option<Duration>,
    pub allow_failure: AllowFailure,
    /// `artifacts`: globs of the files the step hands to the steps after it.
    pub artifacts: Vec<String>,
    /// `inputs`: globs of the files whose contents decide whether the step must run again;
    /// empty means the step is not cached.
    pub inputs: Vec<String>,
    /// `cache = [{ key, paths }]`: directories kept across runs for steps in containers.
    pub caches: Vec<DependencyCache>,
    /// How `run` is run.
    pub shell: Shell,
    pub limits: Limits,
    pub retry: Retry,
    /// The executor name: explicit `executor`, else a `[defaults]` executor other than
    /// "shell", else "docker" when `image` is set, else "shell".
    pub executor: String,
    pub image: Option<String>,
    /// `with = { ... }` as JSON text, opaque to the kernel, handed to the executor.
    pub with_json: String,
    /// `services`: names of `[services.NAME]` the step reaches, up before it starts.
    pub services: Vec<String>,
    /// Where the step is defined, for messages: "hm.toml:12:1".
    pub location: String,
}

/// One `{ key = [...], paths = [...] }` of a step's `cache`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyCache {
    /// Globs of the files whose contents name the cache (`Cargo.lock`).
    pub key: Vec<String>,
    /// The directories kept: absolute, or relative to the step's workspace.
    pub paths: Vec<String>,
}

/// `[cache] dir = "...", max_size = "5GiB"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    /// The cache directory (absolute); `None`: `$XDG_CACHE_HOME/hm`.
    pub dir: Option<PathBuf>,
    /// The most its blobs may hold; the least recently used entries go first.
    pub max_bytes: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            dir: None,
            max_bytes: 5 * 1024 * 1024 * 1024,
        }
    }
}

/// `[pipeline] artifacts_max = { files, bytes }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArtifactLimits {
    pub files: u64,
    pub bytes: u64,
}

/// `if = { ... }`: every part given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Condition {
    /// Globs, relative to the project: one changed file must match one of them.
    pub changed: Option<Vec<String>>,
    /// Globs, relative to the project: one existing path must match one of them.
    pub exists: Option<Vec<String>>,
    /// Each variable must have one of its values.
    pub env: Vec<(String, Vec<String>)>,
}

/// `when`: which outcomes of the steps it needs let a step run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum When {
    /// Every step it needs passed (the default).
    #[default]
    OnSuccess,
    /// Once every step it needs has ended, whatever they did.
    Always,
    /// Once they have ended, if one of them (or one they need) failed.
    OnFailure,
    /// Only when named on the command line.
    Manual,
}

impl When {
    pub fn as_str(self) -> &'static str {
        match self {
            When::OnSuccess => "on_success",
            When::Always => "always",
            When::OnFailure => "on_failure",
            When::Manual => "manual",
        }
    }
}

/// `shell`: the program that runs a step's `run` (appended as its last argument).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Shell {
    /// `sh -e -c RUN`: a failing line fails the step. The default.
    #[default]
    Sh,
    /// `bash --noprofile --norc -e -o pipefail -c RUN`: a failing stage of a pipeline fails it
    /// too.
    Bash,
    /// Any program and its first arguments, e.g. `["python3", "-c"]`. Never empty.
    Argv(Vec<String>),
}

impl Shell {
    /// The program and arguments before `run`.
    pub fn argv(&self) -> Vec<String> {
        let words: &[&str] = match self {
            Shell::Sh => &hm_ipc::messages::DEFAULT_SHELL,
            Shell::Bash => &BASH,
            Shell::Argv(argv) => return argv.clone(),
        };
        words.iter().map(|&w| w.to_owned()).collect()
    }
}

const BASH: [&str; 7] = [
    "bash",
    "--noprofile",
    "--norc",
    "-e",
    "-o",
    "pipefail",
    "-c",
];

/// `allow_failure`: which failures of the step keep the run green (and let its dependents
/// run). The step still ends `failed`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum AllowFailure {
    #[default]
    No,
    /// `true`: any failure.
    Any,
    /// `{ exit_codes = [...] }`: only a non-zero exit with one of these codes.
    ExitCodes(Vec<i32>),
}

impl AllowFailure {
    /// Whether a failed attempt that exited with `exit_code` (`None`: it did not exit on its
    /// own: a signal, a limit, a timeout, ...) is allowed.
    pub fn covers(&self, exit_code: Option<i32>) -> bool {
        match self {
            AllowFailure::No => false,
            AllowFailure::Any => true,
            AllowFailure::ExitCodes(codes) => exit_code.is_some_and(|code| codes.contains(&code)),
        }
    }
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
    /// Cause `image`: the image could not be found or pulled.
    Image,
    /// Cause `service`: a service the step lists is not up.
    Service,
    /// Cause `node_lost`: the cluster node the step ran on went down.
    NodeLost,
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

/// An output of a step the rendered step needs: `(step, key)` → value.
pub type OutputLookup<'a> = &'a dyn Fn(&str, &str) -> Option<String>;

/// What hm knows about an attempt that goes into its environment.
#[derive(Clone, Copy)]
pub struct AttemptEnv<'a> {
    /// The `-e KEY=VALUE` overrides, in order.
    pub overrides: &'a [(String, String)],
    pub project_dir: &'a std::path::Path,
    pub run_id: &'a str,
    pub attempt: u32,
    /// `CI` in hm's own environment, if any.
    pub inherited_ci: Option<&'a str>,
    /// The value of a secret, by name (every secret the run uses has one).
    pub secrets: &'a dyn Fn(&str) -> Option<String>,
    /// The outputs of the steps this one needs.
    pub outputs: OutputLookup<'a>,
    /// The file the step appends its outputs to (`$HM_OUTPUT`), when hm collects them.
    pub output_file: Option<&'a std::path::Path>,
}

impl Step {
    /// A name for files and cgroups: the step's name, and for a matrix instance its number
    /// (values may hold `/` and other characters file names cannot).
    pub fn file_name(&self) -> String {
        match self.matrix {
            None => self.name.clone(),
            Some(_) => format!("{}-m{}", self.base, self.instance),
        }
    }

    /// The step's environment as its process gets it: its `env` (over the pipeline's), then
    /// `overrides` (`-e KEY=VALUE`); `CI` (from those, else hm's own, else `true`); then the
    /// variables hm always sets over anything else: [`HM_VARIABLES`].
    pub fn environment(&self, attempt: AttemptEnv<'_>) -> Vec<(String, String)> {
        let ours = |k: &str| HM_VARIABLES.contains(&k);
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .filter(|(k, _)| !attempt.overrides.iter().any(|(o, _)| o == *k) && !ours(k))
            .map(|(k, v)| {
                let value = match super::referenced_secret(v) {
                    Some(secret) => (attempt.secrets)(secret).unwrap_or_default(),
                    None => self.render(v, &[], attempt.outputs),
                };
                (k.clone(), value)
            })
            .collect();
        env.extend(attempt.overrides.iter().filter(|(k, _)| !ours(k)).cloned());
        if !env.iter().any(|(k, _)| k == CI_ENV) {
            let ci = attempt.inherited_ci.unwrap_or("true");
            env.push((CI_ENV.to_owned(), ci.to_owned()));
        }
        let set = [
            (PROJECT_DIR_ENV, attempt.project_dir.display().to_string()),
            (RUN_ID_ENV, attempt.run_id.to_owned()),
            (STEP_ENV, self.name.clone()),
            (ATTEMPT_ENV, attempt.attempt.to_string()),
        ];
        env.extend(set.into_iter().map(|(k, v)| (k.to_owned(), v)));
        if let Some(file) = attempt.output_file {
            env.push((OUTPUT_ENV.to_owned(), file.display().to_string()));
        }
        env
    }
}

/// The variable that names the project's root in every step's environment.
pub const PROJECT_DIR_ENV: &str = hm_ipc::messages::PROJECT_DIR_ENV;
/// `true` in every step unless the step, `-e` or hm's own environment sets it, as on every CI.
pub const CI_ENV: &str = "CI";
/// The run's id, as in every event.
pub const RUN_ID_ENV: &str = "HM_RUN_ID";
/// The step's name.
pub const STEP_ENV: &str = "HM_STEP";
/// The attempt, from 1.
pub const ATTEMPT_ENV: &str = "HM_ATTEMPT";
/// The file a step appends its outputs to.
pub const OUTPUT_ENV: &str = hm_ipc::messages::OUTPUT_ENV;
/// The variables hm sets in every step over any value from `hm.toml` or `-e`.
pub const HM_VARIABLES: [&str; 5] = [
    PROJECT_DIR_ENV,
    RUN_ID_ENV,
    STEP_ENV,
    ATTEMPT_ENV,
    OUTPUT_ENV,
];

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
