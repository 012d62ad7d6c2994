//! What a plugin is made of: its identity, its capabilities, and the traits it implements.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hm_ipc::messages::{HookPhase, StepResult};
use thiserror::Error;

use crate::context::StepContext;

/// One attempt of one step, as the executor receives it.
#[derive(Debug, Clone)]
pub struct StepRequest {
    pub step: String,
    pub attempt: u32,
    /// The command text (`run`).
    pub run: String,
    /// The program and first arguments that run `run` (appended as the last argument):
    /// `["sh", "-e", "-c"]` unless the step sets `shell`. From an hm that speaks protocol 5 or
    /// older, `["sh", "-c"]`.
    pub shell: Vec<String>,
    pub dir: PathBuf,
    /// Variables to set on top of the plugin's own environment.
    pub env: Vec<(String, String)>,
    pub image: Option<String>,
    /// `with = { ... }` as JSON.
    pub with: serde_json::Value,
    /// How long the step may take to stop after a cancel before it is killed.
    pub grace: std::time::Duration,
    /// The `cgroup.procs` files the step's processes join (empty without cgroups); the
    /// process helper does this for you.
    pub cgroup_procs: Vec<PathBuf>,
    /// The step's limits; the process helper applies them as rlimits when there is no cgroup.
    pub limits: hm_ipc::messages::StepLimits,
    /// The step's `artifacts` globs, relative to the project root (`dist/**`); empty when it
    /// has none, and always from an hm older than protocol 7. An executor that runs the step
    /// where hm cannot see its files sends the files they match with
    /// [`StepContext::put_artifacts`] (match them with [`crate::artifacts::ArtifactGlobs`]).
    pub artifacts: Vec<String>,
    /// How much the step's artifacts may be (`[pipeline] artifacts_max`).
    pub artifact_limits: ArtifactLimits,
    /// Directories the step keeps across runs (`cache = [{ key, paths }]`): each path gets
    /// the named volume. An executor whose steps run on the host ignores them (the paths are
    /// there already); one that starts each step from a fresh file system mounts them.
    pub caches: Vec<hm_ipc::messages::CacheMount>,
    /// The services the step lists (`services = [...]`), started by this plugin's
    /// [`Services`] and healthy; empty from an hm older than protocol 8. The environment
    /// already has `HM_SERVICE_<NAME>_HOST` / `_PORT_<port>` for reaching them from the host.
    pub services: Vec<String>,
}

/// The most a step's artifacts may be: past either limit, the executor sends
/// [`StepContext::artifacts_problem`] with [`crate::artifacts::Tally`]'s message instead of a tar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArtifactLimits {
    pub max_files: u64,
    /// Bytes of file contents.
    pub max_bytes: u64,
}

impl ArtifactLimits {
    /// A tally that counts files against these limits.
    pub fn tally(&self) -> hm_ipc::artifacts::Tally {
        hm_ipc::artifacts::Tally::new(self.max_files, self.max_bytes)
    }
}

impl Default for ArtifactLimits {
    /// hm's defaults (10,000 files, 4 GiB), which is also what a step from an hm older than
    /// protocol 7 gets.
    fn default() -> Self {
        Self {
            max_files: hm_ipc::artifacts::DEFAULT_MAX_FILES,
            max_bytes: hm_ipc::artifacts::DEFAULT_MAX_BYTES,
        }
    }
}

impl StepRequest {
    /// The step's whole command line: `shell` followed by `run`.
    pub fn command_line(&self) -> Vec<String> {
        let mut argv = self.shell.clone();
        argv.push(self.run.clone());
        argv
    }

    /// The project's root directory (where the pipeline file is, and what the workspace
    /// archive holds), from `HM_PROJECT_DIR` in the step's environment; `None` from an hm that
    /// does not set it.
    pub fn project_dir(&self) -> Option<&std::path::Path> {
        self.env
            .iter()
            .rev()
            .find(|(name, _)| name == hm_ipc::messages::PROJECT_DIR_ENV)
            .map(|(_, dir)| std::path::Path::new(dir))
    }

    /// The file the step appends its outputs to (`key=value` lines), from `HM_OUTPUT` in the
    /// step's environment; `None` from an hm that does not set it. hm creates it before the
    /// step and reads it afterwards: an executor that runs the step elsewhere gives the step a
    /// file of its own and writes what it holds into this one when the step has ended.
    pub fn output_file(&self) -> Option<&std::path::Path> {
        self.env
            .iter()
            .rev()
            .find(|(name, _)| name == hm_ipc::messages::OUTPUT_ENV)
            .map(|(_, file)| std::path::Path::new(file))
    }
}

/// Why an executor could not run a step at all (as opposed to a step that ran and failed,
/// which is a [`StepResult`] with a non-zero exit).
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StepError {
    #[error("{0}")]
    Message(String),
    #[error("failed to start the step's process: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("lost the connection to hm")]
    Disconnected,
    /// The step ran and was killed for running out of memory, which the executor learned from
    /// its runtime (Docker's `OOMKilled`) rather than from hm's cgroup. hm reports it with
    /// cause `oom`; the result says how the process ended (SIGKILL).
    #[error("the step ran out of memory")]
    OutOfMemory(StepResult),
    /// The step's image could not be found or pulled (what was tried and how to fix it): hm
    /// reports cause `image`, which `retry.on` may list (protocol 8; older hm: a failure).
    #[error("{0}")]
    Image(String),
    /// The machine the step ran on (a cluster's node) went down under it (what is known of
    /// it): hm reports cause `node_lost`, which `retry.on` may list (protocol 8; older hm: a
    /// failure).
    #[error("{0}")]
    NodeLost(String),
}

/// A service to start (`[services.NAME]` in `hm.toml`, protocol 8).
#[derive(Debug, Clone)]
pub struct ServiceRequest {
    /// The host name steps reach it by.
    pub name: String,
    pub image: String,
    pub env: Vec<(String, String)>,
    /// Replaces the image's entrypoint when set.
    pub entrypoint: Option<Vec<String>>,
    /// Replaces the image's command when set.
    pub command: Option<Vec<String>>,
    /// Ports to publish on the host's loopback for steps on the host.
    pub ports: Vec<u16>,
    /// Run inside the service until it passes; `None`: ready once it runs.
    pub health: Option<HealthCheck>,
    /// The service's `with = { ... }`.
    pub with: serde_json::Value,
    pub limits: hm_ipc::messages::StepLimits,
    /// How long it may take to stop before it is killed.
    pub grace: Duration,
}

/// A service's health check (`health = { run, interval, timeout, retries }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub command: Vec<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
}

/// Why a service is not up.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// Its image could not be found or pulled: the steps that list it fail with cause `image`.
    #[error("{0}")]
    Image(String),
    /// It could not be started or never became healthy: the steps that list it fail with
    /// cause `service`, `log` (its last lines of output, oldest first) shown with the reason.
    #[error("{message}")]
    Failed { message: String, log: Vec<String> },
}

/// Runs a pipeline's services (protocol 8): containers that the steps listing them reach over
/// the network. hm starts each before the first step that lists it, and stops it after the
/// last; everything is stopped before the run ends.
pub trait Services: Send + Sync + 'static {
    /// Starts `service` and returns once it is healthy, with where its ports are published.
    fn start(
        &self,
        service: ServiceRequest,
    ) -> impl Future<Output = Result<Vec<hm_ipc::messages::PublishedPort>, ServiceError>> + Send;

    /// Stops and removes service `name` (and what the run's services share once none is left).
    /// hm also sends it for a service that is still starting, when the run ends: the start
    /// should then give up, clean up after itself and answer, and the stop answer after it.
    fn stop(&self, name: String) -> impl Future<Output = Result<(), String>> + Send;
}

pub(crate) trait DynServices: Send + Sync {
    fn start(
        self: Arc<Self>,
        service: ServiceRequest,
    ) -> BoxFuture<Result<Vec<hm_ipc::messages::PublishedPort>, ServiceError>>;
    fn stop(self: Arc<Self>, name: String) -> BoxFuture<Result<(), String>>;
}

impl<S: Services> DynServices for S {
    fn start(
        self: Arc<Self>,
        service: ServiceRequest,
    ) -> BoxFuture<Result<Vec<hm_ipc::messages::PublishedPort>, ServiceError>> {
        Box::pin(async move { Services::start(&*self, service).await })
    }

    fn stop(self: Arc<Self>, name: String) -> BoxFuture<Result<(), String>> {
        Box::pin(async move { Services::stop(&*self, name).await })
    }
}

/// Runs steps. The plugin serves many steps at once: `execute` is called concurrently.
pub trait Executor: Send + Sync + 'static {
    fn execute(
        &self,
        step: StepRequest,
        ctx: StepContext,
    ) -> impl Future<Output = Result<StepResult, StepError>> + Send;
}

/// What `Init` (protocol v2) tells the plugin before its first real call.
#[derive(Debug, Clone)]
pub struct InitInfo {
    /// `[plugins.<name>].config`.
    pub config: serde_json::Value,
    pub pipeline: String,
    /// The id of the run this plugin instance serves (as in every event of `--format json`).
    pub run_id: String,
}

/// One argument of a subcommand, as `hm` parses it before it starts the plugin
/// (README, "Plugins"). `hm VERB --help` shows `help`; the plugin receives the value under
/// `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubcommandArg {
    pub name: String,
    /// The long option, without `--`.
    pub long: String,
    /// Takes a value (`--flag x`, a string or `null` when absent) or is a switch (`--loud`,
    /// `true` or `false`).
    pub takes_value: bool,
    pub help: String,
}

impl SubcommandArg {
    /// `--NAME VALUE`.
    pub fn value(name: impl Into<String>, help: impl Into<String>) -> Self {
        let name = name.into();
        Self {
            long: name.clone(),
            name,
            takes_value: true,
            help: help.into(),
        }
    }

    /// `--NAME`, a switch.
    pub fn switch(name: impl Into<String>, help: impl Into<String>) -> Self {
        let name = name.into();
        Self {
            long: name.clone(),
            name,
            takes_value: false,
            help: help.into(),
        }
    }
}

/// `hm VERB ...` (protocol v4). The plugin's stdin, stdout and stderr are the terminal's while it
/// runs; the returned code is what `hm` exits with.
pub trait Subcommand: Send + Sync + 'static {
    /// `args` is a JSON object: every argument by its name.
    fn run(&self, args: serde_json::Value) -> impl Future<Output = i32> + Send;
}

pub(crate) trait DynSubcommand: Send + Sync {
    fn run(self: Arc<Self>, args: serde_json::Value) -> BoxFuture<i32>;
}

impl<S: Subcommand> DynSubcommand for S {
    fn run(self: Arc<Self>, args: serde_json::Value) -> BoxFuture<i32> {
        Box::pin(async move { Subcommand::run(&*self, args).await })
    }
}

#[derive(Clone)]
pub(crate) struct SubcommandEntry {
    pub(crate) verb: String,
    pub(crate) about: String,
    pub(crate) args: Vec<SubcommandArg>,
    pub(crate) handler: Arc<dyn DynSubcommand>,
}

/// How long hm waits for a hook's answer to one event unless the subscription says otherwise.
pub const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// One event kind a hook observes, in one phase. `hm` reads these from the
/// manifest (`capabilities = ["hook:EVENT"]` and a `[[hook]]` table each) without starting the
/// plugin, and starts it on the first event it subscribes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// An event kind of `docs/events.md` (`build_start`, `step_start`, `step_end`, ...), or `*` for
    /// all of them.
    pub event: String,
    pub phase: HookPhase,
    /// How long hm waits for the answer to one event. A hook that takes longer is treated as
    /// hung: it is killed, reported, and restarted for the next event within its budget.
    pub timeout: Duration,
}

impl Subscription {
    /// Observe `event` after it happened: hm does not wait for the hook, whose events queue
    /// up (a bounded queue; what does not fit is dropped, counted and reported).
    pub fn after(event: impl Into<String>) -> Self {
        Self {
            event: event.into(),
            phase: HookPhase::After,
            timeout: DEFAULT_HOOK_TIMEOUT,
        }
    }

    /// See `event` before it takes effect: hm waits for the answer. Only `step_start` has a
    /// before phase; a [`HookVerdict::Abort`] there stops the step (cause `hook_abort`).
    pub fn before(event: impl Into<String>) -> Self {
        Self {
            event: event.into(),
            phase: HookPhase::Before,
            timeout: DEFAULT_HOOK_TIMEOUT,
        }
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// One event of the run as a hook receives it.
#[derive(Debug, Clone)]
pub struct HookEvent {
    pub phase: HookPhase,
    /// The event's `kind`: `step_start`, `step_end`, `build_end`, ...
    pub kind: String,
    /// The whole event, exactly as one line of `hm run --format json` (`docs/events.md`).
    pub event: serde_json::Value,
}

/// What a hook knows about the run it observes.
#[derive(Debug, Clone)]
pub struct HookContext {
    pub(crate) info: Arc<InitInfo>,
}

impl HookContext {
    /// `[plugins.<name>].config` from the project's `hm.toml`.
    pub fn config(&self) -> &serde_json::Value {
        &self.info.config
    }

    pub fn run_id(&self) -> &str {
        &self.info.run_id
    }

    pub fn pipeline(&self) -> &str {
        &self.info.pipeline
    }

    /// The project's root directory (where `hm.toml` is): relative paths in the plugin's
    /// configuration are relative to it. `None` from an hm that does not say.
    pub fn project_dir(&self) -> Option<PathBuf> {
        std::env::var_os(hm_ipc::messages::PROJECT_DIR_ENV).map(PathBuf::from)
    }
}

/// A hook's answer to one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookVerdict {
    Continue,
    /// Stop the step of a `before` `step_start` event, with the reason shown to the user. Read
    /// as `Continue` anywhere else.
    Abort(String),
}

/// Observes the run's events (protocol v5). The plugin may be called for several events at
/// once. An `Err` is reported as the hook failing (and fails the run only when the project
/// sets `required = true` for the plugin); so is a panic.
pub trait Hook: Send + Sync + 'static {
    fn on_event(
        &self,
        event: HookEvent,
        ctx: HookContext,
    ) -> impl Future<Output = Result<HookVerdict, String>> + Send;
}

pub(crate) trait DynHook: Send + Sync {
    fn on_event(
        self: Arc<Self>,
        event: HookEvent,
        ctx: HookContext,
    ) -> BoxFuture<Result<HookVerdict, String>>;
}

impl<H: Hook> DynHook for H {
    fn on_event(
        self: Arc<Self>,
        event: HookEvent,
        ctx: HookContext,
    ) -> BoxFuture<Result<HookVerdict, String>> {
        Box::pin(async move { Hook::on_event(&*self, event, ctx).await })
    }
}

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type InitFn = dyn Fn(&InitInfo) -> Result<(), String> + Send + Sync;

/// Object-safe form of [`Executor`], so a plugin can hold any executor behind one pointer.
pub(crate) trait DynExecutor: Send + Sync {
    fn execute(
        self: Arc<Self>,
        step: StepRequest,
        ctx: StepContext,
    ) -> BoxFuture<Result<StepResult, StepError>>;
}

impl<E: Executor> DynExecutor for E {
    fn execute(
        self: Arc<Self>,
        step: StepRequest,
        ctx: StepContext,
    ) -> BoxFuture<Result<StepResult, StepError>> {
        Box::pin(async move { Executor::execute(&*self, step, ctx).await })
    }
}

/// A plugin: name, version, protocol range and capabilities. Build it and hand it to
/// [`crate::serve`].
#[derive(Clone)]
pub struct Plugin {
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) description: String,
    pub(crate) protocol: (u32, u32),
    pub(crate) executor: Option<(String, Arc<dyn DynExecutor>)>,
    pub(crate) init: Option<Arc<InitFn>>,
    pub(crate) environment: Option<Arc<InitFn>>,
    pub(crate) subcommands: Vec<SubcommandEntry>,
    pub(crate) hook: Option<(Vec<Subscription>, Arc<dyn DynHook>)>,
    pub(crate) services: Option<Arc<dyn DynServices>>,
}

impl Plugin {
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: version.into(),
            description: String::new(),
            protocol: (hm_ipc::PROTOCOL_MIN, hm_ipc::PROTOCOL_MAX),
            executor: None,
            init: None,
            environment: None,
            subcommands: Vec::new(),
            hook: None,
            services: None,
        }
    }

    /// Makes this plugin run services (protocol 8) for the steps of its executor: capability
    /// `service:NAME`, NAME being the executor's (so set the executor too).
    pub fn services(mut self, services: impl Services) -> Self {
        self.services = Some(Arc::new(services));
        self
    }

    /// Makes this plugin a hook (protocol v5) that observes the events of `subscriptions`.
    /// hm runs a plugin's hooks only in projects whose `hm.toml` has a `[plugins.<name>]`
    /// table for it.
    pub fn hook(
        mut self,
        hook: impl Hook,
        subscriptions: impl IntoIterator<Item = Subscription>,
    ) -> Self {
        self.hook = Some((subscriptions.into_iter().collect(), Arc::new(hook)));
        self
    }

    /// Adds `hm <verb>` (protocol v4) with `about` for `hm --help` and its arguments, which
    /// `hm` parses from the manifest without starting the plugin.
    pub fn subcommand(
        mut self,
        verb: impl Into<String>,
        about: impl Into<String>,
        args: Vec<SubcommandArg>,
        handler: impl Subcommand,
    ) -> Self {
        self.subcommands.push(SubcommandEntry {
            verb: verb.into(),
            about: about.into(),
            args,
            handler: Arc::new(handler),
        });
        self
    }

    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.description = text.into();
        self
    }

    /// Provides the executor called `name` (what `executor = "..."` names in `hm.toml`).
    pub fn executor(mut self, name: impl Into<String>, executor: impl Executor) -> Self {
        self.executor = Some((name.into(), Arc::new(executor)));
        self
    }

    /// Checks `[plugins.<name>].config` before the first real call (protocol v2). An `Err`
    /// fails the run at its start with the message shown to the user.
    pub fn on_init(
        mut self,
        check: impl Fn(&InitInfo) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.init = Some(Arc::new(check));
        self
    }

    /// Checks, once [`Self::on_init`] has accepted the configuration, that what the plugin
    /// needs from the machine is there: a daemon it talks to, a device, a tool. An `Err` fails
    /// the run at its start as *environment unavailable* (hm exits 4, on protocol 3 and later)
    /// with the message shown to the user: say what was tried and how to fix it. It runs on
    /// the plugin's runtime thread, before any step; do blocking work on a thread of its own.
    pub fn check_environment(
        mut self,
        check: impl Fn(&InitInfo) -> Result<(), String> + Send + Sync + 'static,
    ) -> Self {
        self.environment = Some(Arc::new(check));
        self
    }

    /// Restricts the protocol versions this plugin offers (the default is all the SDK speaks).
    /// Mostly for testing compatibility with older kernels. What the plugin provides still
    /// raises the lowest version it offers (see [`Self::protocol_range`]).
    pub fn protocol(mut self, min: u32, max: u32) -> Self {
        self.protocol = (min, max);
        self
    }

    /// The protocol versions this plugin speaks, as its `Hello` and its manifest say: the range
    /// it was given, from no lower than the version that added what it provides (subcommands
    /// need 4, hooks 5), so no hm that could not use it is offered it.
    pub fn protocol_range(&self) -> (u32, u32) {
        let mut needs = 0;
        if !self.subcommands.is_empty() {
            needs = needs.max(hm_ipc::SUBCOMMANDS_SINCE);
        }
        if self.hook.is_some() {
            needs = needs.max(hm_ipc::HOOKS_SINCE);
        }
        if self.services.is_some() {
            needs = needs.max(hm_ipc::SERVICES_SINCE);
        }
        (self.protocol.0.max(needs), self.protocol.1)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `executor:NAME`, ... as sent in `Hello`.
    pub fn capabilities(&self) -> Vec<String> {
        let mut hooks: Vec<String> = Vec::new();
        for sub in self.subscriptions() {
            let capability = format!("hook:{}", sub.event);
            if !hooks.contains(&capability) {
                hooks.push(capability);
            }
        }
        self.executor
            .iter()
            .map(|(name, _)| format!("executor:{name}"))
            .chain(hooks)
            .chain(
                self.executor
                    .iter()
                    .filter(|_| self.services.is_some())
                    .map(|(name, _)| format!("service:{name}")),
            )
            .chain(
                self.subcommands
                    .iter()
                    .map(|s| format!("subcommand:{}", s.verb)),
            )
            .collect()
    }

    /// The events this plugin's hook observes.
    pub fn subscriptions(&self) -> &[Subscription] {
        self.hook.as_ref().map_or(&[], |(subs, _)| subs.as_slice())
    }

    /// The `plugin.toml` this plugin would ship with, printed by `--hm-manifest`.
    pub fn manifest(&self, executable: &str) -> String {
        let caps: Vec<String> = self
            .capabilities()
            .iter()
            .map(|c| format!("{c:?}"))
            .collect();
        let (min, max) = self.protocol_range();
        let mut text = format!(
            "name = {:?}\nversion = {:?}\ndescription = {:?}\nexecutable = {:?}\n\
             protocol = {{ min = {min}, max = {max} }}\ncapabilities = [{}]\n",
            self.name,
            self.version,
            self.description,
            executable,
            caps.join(", ")
        );
        for sub in self.subscriptions() {
            let phase = match sub.phase {
                HookPhase::Before => "before",
                HookPhase::After => "after",
            };
            text.push_str(&format!(
                "\n[[hook]]\nevent = {:?}\nphase = {phase:?}\ntimeout = \"{}ms\"\n",
                sub.event,
                sub.timeout.as_millis()
            ));
        }
        for sub in &self.subcommands {
            text.push_str(&format!(
                "\n[[subcommand]]\nverb = {:?}\nabout = {:?}\nargs = [\n",
                sub.verb, sub.about
            ));
            for arg in &sub.args {
                text.push_str(&format!(
                    "  {{ name = {:?}, long = {:?}, takes_value = {}, help = {:?} }},\n",
                    arg.name, arg.long, arg.takes_value, arg.help
                ));
            }
            text.push_str("]\n");
        }
        text
    }
}
