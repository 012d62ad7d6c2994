//! What a plugin is made of: its identity, its capabilities, and the traits it implements.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use hm_ipc::messages::StepResult;
use thiserror::Error;

use crate::context::StepContext;

/// One attempt of one step, as the executor receives it.
#[derive(Debug, Clone)]
pub struct StepRequest {
    pub step: String,
    pub attempt: u32,
    /// The command text (`run`).
    pub run: String,
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
}

impl StepRequest {
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

/// One argument of a subcommand, as `hm` parses it before it starts the plugin (DESIGN §3).
/// `hm VERB --help` shows `help`; the plugin receives the value under `name`.
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
        }
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
    /// Mostly for testing compatibility with older kernels.
    pub fn protocol(mut self, min: u32, max: u32) -> Self {
        self.protocol = (min, max);
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `executor:NAME`, ... as sent in `Hello`.
    pub fn capabilities(&self) -> Vec<String> {
        self.executor
            .iter()
            .map(|(name, _)| format!("executor:{name}"))
            .chain(
                self.subcommands
                    .iter()
                    .map(|s| format!("subcommand:{}", s.verb)),
            )
            .collect()
    }

    /// The `plugin.toml` this plugin would ship with, printed by `--hm-manifest`.
    pub fn manifest(&self, executable: &str) -> String {
        let caps: Vec<String> = self
            .capabilities()
            .iter()
            .map(|c| format!("{c:?}"))
            .collect();
        let mut text = format!(
            "name = {:?}\nversion = {:?}\ndescription = {:?}\nexecutable = {:?}\n\
             protocol = {{ min = {}, max = {} }}\ncapabilities = [{}]\n",
            self.name,
            self.version,
            self.description,
            executable,
            self.protocol.0,
            self.protocol.1,
            caps.join(", ")
        );
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
