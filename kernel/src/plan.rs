//! What `hm run` and `hm validate` decide before anything starts: the pipeline file found and
//! read, the steps selected, the installed plugins checked, each selected step's executor and
//! the project's hooks resolved. Every problem is an error value with the exit code it means;
//! what is worth saying but stops nothing is collected as a warning. Nothing here prints.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::condition::Changes;
use crate::config::{self, LoadError, Pipeline};
use crate::registry::{Builtin, PluginSpec, Registry, RegistryError};
use crate::{dag, exit};

/// A run's plan: what runs, on which plugins, observed by which hooks.
#[derive(Debug)]
pub struct Plan {
    pub pipeline: Pipeline,
    /// Indices of the steps to run (the selection and everything it needs), in file order.
    pub selected: Vec<usize>,
    /// The plugin serving each selected step's executor, by step index.
    pub executors: HashMap<usize, PluginSpec>,
    /// The hook plugins the project configures (`[plugins.<name>]`).
    pub hooks: Vec<PluginSpec>,
    /// The plugin running each service a selected step lists, by service name.
    pub services: HashMap<String, PluginSpec>,
    /// The steps named on the command line (manual steps run only then).
    pub named: Vec<usize>,
}

/// Why a run cannot start. Each says what is wrong and what to do, and maps to its exit code.
#[derive(Debug)]
#[non_exhaustive]
pub enum PlanError {
    /// The current directory cannot be read.
    Cwd(std::io::Error),
    /// No `hm.toml` in the directory or its parents.
    NoPipeline { searched_from: PathBuf },
    /// The pipeline file cannot be read, or is not valid (every problem at once).
    Pipeline { path: PathBuf, error: LoadError },
    /// `hm run STEP...` names no such step.
    Selection(String),
    /// The installed plugins have problems (bad manifests, conflicts): a run must not guess
    /// which of two plugins was meant, nor skip one the user installed.
    Registry(Vec<RegistryError>),
    /// Steps name executors no plugin provides; plugins this hm cannot talk to serve others.
    NoExecutor {
        /// One line per step: where it is and what it names.
        steps: Vec<String>,
        available: Vec<String>,
        incompatible: Vec<String>,
    },
    /// Plugins the run uses cannot talk to this hm (protocol ranges, hooks below 5).
    Incompatible(Vec<String>),
    /// `--attach NAME=...` names a plugin the run does not use, or one twice.
    Attach(String),
    /// `--since REF` (or `HM_SINCE`) names no commit, or there is no repository.
    Since(String),
    /// A secret the run needs has no value, or `--secret-file` cannot be read.
    Secret(String),
}

impl PlanError {
    /// The exit code this problem means (`docs/exit-codes.md`).
    pub fn exit_code(&self) -> i32 {
        match self {
            PlanError::Cwd(_)
            | PlanError::NoPipeline { .. }
            | PlanError::Pipeline { .. }
            | PlanError::Selection(_)
            | PlanError::Attach(_)
            | PlanError::Since(_)
            | PlanError::Secret(_) => exit::USAGE,
            PlanError::Registry(_) | PlanError::Incompatible(_) => exit::PLUGIN,
            PlanError::NoExecutor { .. } => exit::NO_EXECUTOR,
        }
    }
}

impl fmt::Display for PlanError {
    /// Every line is a message of its own: positioned diagnostics say `error:` themselves,
    /// hints are indented, and the rest gets `error: ` from whoever prints it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlanError::Cwd(e) => write!(f, "cannot read the current directory: {e}"),
            PlanError::NoPipeline { searched_from } => write!(
                f,
                "no {} in {} or any parent directory\n  hint: create one, or pass -f PATH",
                config::FILE_NAME,
                searched_from.display()
            ),
            PlanError::Pipeline {
                path,
                error: LoadError::Invalid(diagnostics),
            } => {
                let n = diagnostics.len();
                let s = if n == 1 { "" } else { "s" };
                write!(f, "{diagnostics}\n{} has {n} problem{s}", display(path))
            }
            PlanError::Pipeline { error, .. } => {
                write!(f, "{error}")?;
                if let Some(source) = std::error::Error::source(error) {
                    write!(f, ": {source}")?;
                }
                Ok(())
            }
            PlanError::Selection(message)
            | PlanError::Attach(message)
            | PlanError::Since(message)
            | PlanError::Secret(message) => f.write_str(message),
            PlanError::Registry(errors) => {
                for error in errors {
                    writeln!(f, "{error}")?;
                }
                let n = errors.len();
                let s = if n == 1 { "" } else { "s" };
                write!(
                    f,
                    "{n} problem{s} with the installed plugins; `hm plugin list` shows them all"
                )
            }
            PlanError::NoExecutor {
                steps,
                available,
                incompatible,
            } => {
                for problem in incompatible {
                    writeln!(f, "{problem}")?;
                }
                for step in steps {
                    writeln!(f, "{step}")?;
                }
                write!(
                    f,
                    "  hint: available executors: {}; install a plugin that provides it with \
                     `hm plugin install SOURCE` (`hm plugin list` shows what is installed)",
                    available.join(", ")
                )
            }
            PlanError::Incompatible(problems) => f.write_str(&problems.join("\n")),
        }
    }
}

impl std::error::Error for PlanError {}

/// Which steps a plan is for.
#[derive(Debug, Clone, Copy)]
pub enum Selection<'a> {
    /// `hm validate`: every step, as if all were selected.
    All,
    /// `hm run [STEP...]`: the named steps and what they need (none named: all).
    Named(&'a [String]),
}

/// Plans a run of `file` (else the `hm.toml` of the current directory or a parent). Warnings
/// (shadowed plugins, loose files, a `[plugins.x]` table for no installed plugin, an
/// incompatible plugin the run does not use) go to `warnings`, also when planning fails.
pub fn plan(
    file: Option<&Path>,
    selection: Selection<'_>,
    builtins: &[Builtin],
    warnings: &mut Vec<String>,
) -> Result<Plan, PlanError> {
    let mut pipeline = load(file)?;
    let (selected, named) = match selection {
        Selection::All => ((0..pipeline.steps.len()).collect(), Vec::new()),
        Selection::Named(steps) => (
            dag::select(&pipeline, steps).map_err(|e| PlanError::Selection(e.to_string()))?,
            dag::named(&pipeline, steps),
        ),
    };
    let registry = Registry::discover(&pipeline.root, builtins);
    warnings.extend(registry.warnings.iter().cloned());
    if !registry.errors.is_empty() {
        return Err(PlanError::Registry(registry.errors));
    }
    let executors = resolve_executors(&pipeline, &selected, &registry)?;
    let services = resolve_services(&pipeline, &selected, &registry)?;
    let hooks = resolve_hooks(&pipeline, &registry, warnings)?;
    // A plugin this hm cannot talk to fails a run that uses it (above); one the run does not
    // use is only named, with the fix, so that the run does not depend on an unrelated
    // install but the problem is not hidden either.
    let used: Vec<&str> = executors
        .values()
        .chain(services.values())
        .chain(&hooks)
        .map(|spec| spec.name.as_str())
        .collect();
    for (plugin, problem) in registry.incompatible() {
        if !used.contains(&plugin.manifest.name.as_str()) {
            warnings.push(format!("{problem} (this run does not use it)"));
        }
    }
    // Each plugin's own default limits go under what `[plugins.<name>].limits` leaves unset.
    for &i in &selected {
        if let Some(plugin) = registry.executor(&pipeline.steps[i].executor) {
            let (name, limits) = (plugin.manifest.name.clone(), plugin.manifest.limits);
            pipeline.add_plugin_default_limits(&name, limits);
        }
    }
    Ok(Plan {
        pipeline,
        selected,
        executors,
        hooks,
        services,
        named,
    })
}

impl Plan {
    /// What changed in the project, when a selected step's `if` asks (`changed`): compared
    /// with `since` (`--since`), else `HM_SINCE`, else the default base.
    pub fn changes(&self, since: Option<&str>) -> Result<Option<Changes>, PlanError> {
        let asks = self.selected.iter().any(|&i| {
            self.pipeline.steps[i]
                .condition
                .as_ref()
                .is_some_and(|c| c.changed.is_some())
        });
        if !asks {
            return Ok(None);
        }
        let from_env = std::env::var("HM_SINCE").ok().filter(|s| !s.is_empty());
        let since = match (since, &from_env) {
            (Some(reference), _) => Some(("--since", reference)),
            (None, Some(reference)) => Some(("HM_SINCE", reference.as_str())),
            (None, None) => None,
        };
        Changes::find(&self.pipeline.root, since)
            .map(Some)
            .map_err(|e| {
                PlanError::Since(format!(
                    "{e}\n  hint: name a branch, tag or commit, e.g. --since origin/main"
                ))
            })
    }

    /// The values of the secrets the selected steps refer to: from `file` (`--secret-file`)
    /// first, then hm's environment. Every missing one is named, never a value.
    pub fn secrets(&self, file: Option<&Path>) -> Result<crate::secrets::Secrets, PlanError> {
        let from_file = match file {
            Some(path) => {
                crate::secrets::read_file(path).map_err(|e| PlanError::Secret(e.to_string()))?
            }
            None => Default::default(),
        };
        crate::secrets::resolve(&self.pipeline, &self.selected, &from_file, |name| {
            std::env::var(name).ok()
        })
        .map_err(|e| PlanError::Secret(e.to_string()))
    }

    /// How many steps may run at once: `-j`, else the pipeline's `parallelism`, else the
    /// number of CPUs.
    pub fn parallelism(&self, jobs: Option<u32>) -> usize {
        jobs.map(|j| j as usize)
            .or(self.pipeline.parallelism)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// The plugins this run uses, by name, sorted and once each.
    pub fn plugins_used(&self) -> Vec<&str> {
        let mut used: Vec<&str> = self
            .executors
            .values()
            .chain(self.services.values())
            .chain(&self.hooks)
            .map(|spec| spec.name.as_str())
            .collect();
        used.sort_unstable();
        used.dedup();
        used
    }

    /// `--attach NAME=...` must name a plugin this run uses, once.
    pub fn check_attach(&self, attach: &[(String, PathBuf)]) -> Result<(), PlanError> {
        let used = self.plugins_used();
        for (i, (name, _)) in attach.iter().enumerate() {
            if !used.contains(&name.as_str()) {
                return Err(PlanError::Attach(format!(
                    "--attach {name}: this run does not use plugin `{name}`\n  hint: it uses: {}",
                    used.join(", ")
                )));
            }
            if attach[..i].iter().any(|(other, _)| other == name) {
                return Err(PlanError::Attach(format!("--attach {name}: given twice")));
            }
        }
        Ok(())
    }
}

fn load(file: Option<&Path>) -> Result<Pipeline, PlanError> {
    let path = match file {
        Some(path) => path.to_path_buf(),
        None => {
            let cwd = std::env::current_dir().map_err(PlanError::Cwd)?;
            config::find_pipeline_file(&cwd).ok_or(PlanError::NoPipeline { searched_from: cwd })?
        }
    };
    config::load(&path).map_err(|error| PlanError::Pipeline { path, error })
}

/// The plugin serving each selected step: every step whose executor no plugin provides is
/// named (exit 7), and so is every plugin serving one that cannot talk to this hm (exit 5).
fn resolve_executors(
    pipeline: &Pipeline,
    selected: &[usize],
    registry: &Registry,
) -> Result<HashMap<usize, PluginSpec>, PlanError> {
    let mut found = HashMap::new();
    let mut missing = Vec::new();
    let mut incompatible: Vec<String> = Vec::new();
    for &i in selected {
        let step = &pipeline.steps[i];
        match registry.executor(&step.executor) {
            Some(plugin) => {
                if let Some(problem) = plugin.protocol_problem()
                    && !incompatible.contains(&problem)
                {
                    incompatible.push(problem);
                }
                found.insert(i, plugin.spec());
            }
            None => {
                let why = if step.image.is_some() && step.executor == "docker" {
                    " (the step sets `image`, which selects the docker executor)"
                } else {
                    ""
                };
                missing.push(format!(
                    "{}: error: step {:?} uses executor {:?}, which no plugin provides{why}",
                    step.location, step.name, step.executor
                ));
            }
        }
    }
    resolved(found, missing, incompatible, registry)
}

/// The plugin running each service the selected steps list: the one providing the service's
/// executor, which must declare `service:<executor>` (exit 7 otherwise, as for a step) and
/// speak protocol 8 (exit 5).
fn resolve_services(
    pipeline: &Pipeline,
    selected: &[usize],
    registry: &Registry,
) -> Result<HashMap<String, PluginSpec>, PlanError> {
    let mut found = HashMap::new();
    let mut missing = Vec::new();
    let mut incompatible = Vec::new();
    for name in selected.iter().flat_map(|&i| &pipeline.steps[i].services) {
        let Some(service) = pipeline.services.get(name) else {
            continue;
        };
        if found.contains_key(name) {
            continue;
        }
        match registry.executor(&service.executor) {
            Some(plugin) if plugin.manifest.runs_services_for(&service.executor) => {
                if let Some(problem) = plugin.protocol_problem() {
                    incompatible.push(problem);
                } else if plugin.manifest.protocol.1 < hm_ipc::SERVICES_SINCE {
                    incompatible.push(format!(
                        "plugin {} speaks protocol up to {}, and services need {}: update it",
                        plugin.manifest.name,
                        plugin.manifest.protocol.1,
                        hm_ipc::SERVICES_SINCE
                    ));
                }
                found.insert(name.clone(), plugin.spec());
            }
            Some(plugin) => missing.push(format!(
                "{}: error: service {name:?} runs on executor {:?}, whose plugin {} runs no \
                 services",
                service.location, service.executor, plugin.manifest.name
            )),
            None => missing.push(format!(
                "{}: error: service {name:?} runs on executor {:?}, which no plugin provides",
                service.location, service.executor
            )),
        }
    }
    incompatible.dedup();
    resolved(found, missing, incompatible, registry)
}

/// What was found, unless something was missing (exit 7, naming the executors there are) or a
/// plugin cannot talk to this hm (exit 5).
fn resolved<T>(
    found: T,
    missing: Vec<String>,
    incompatible: Vec<String>,
    registry: &Registry,
) -> Result<T, PlanError> {
    match (missing.is_empty(), incompatible.is_empty()) {
        (true, true) => Ok(found),
        (true, false) => Err(PlanError::Incompatible(incompatible)),
        (false, _) => Err(PlanError::NoExecutor {
            steps: missing,
            available: registry
                .executor_names()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            incompatible,
        }),
    }
}

/// The hook plugins of this run: those with `hook:` capabilities that the project configures
/// with a `[plugins.<name>]` table (an installed hook never observes a project that did not
/// ask for it). Exit 5 when one cannot speak the hooks' protocol.
fn resolve_hooks(
    pipeline: &Pipeline,
    registry: &Registry,
    warnings: &mut Vec<String>,
) -> Result<Vec<PluginSpec>, PlanError> {
    let mut hooks = Vec::new();
    let mut problems = Vec::new();
    for name in pipeline.plugins.keys() {
        let Some(plugin) = registry.get(name) else {
            warnings.push(format!(
                "{}: `[plugins.{name}]` configures a plugin that is not installed (`hm plugin \
                 list` shows what is)",
                display(&pipeline.file)
            ));
            continue;
        };
        if plugin.manifest.hooks.is_empty() {
            continue;
        }
        if let Some(problem) = plugin.protocol_problem() {
            problems.push(problem);
        } else if plugin.manifest.protocol.1 < hm_ipc::HOOKS_SINCE {
            problems.push(format!(
                "plugin `{name}` declares hooks but speaks protocol {}..={}, and hooks need \
                 protocol {}: rebuild it against hm-sdk {}",
                plugin.manifest.protocol.0,
                plugin.manifest.protocol.1,
                hm_ipc::HOOKS_SINCE,
                env!("CARGO_PKG_VERSION")
            ));
        } else {
            hooks.push(plugin.spec());
        }
    }
    match problems.is_empty() {
        true => Ok(hooks),
        false => Err(PlanError::Incompatible(problems)),
    }
}

/// A path as the user would type it: relative to the current directory when below it.
pub fn display(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(|p| p.display().to_string()))
        .unwrap_or_else(|| path.display().to_string())
}
