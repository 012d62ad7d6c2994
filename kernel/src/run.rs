//! `hm run` and `hm validate`: find and load the pipeline, select the steps, resolve their
//! executors, then either print the plan or hand everything to the scheduler.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use crate::cli::RunArgs;
use crate::config::{self, LoadError, Pipeline};
use crate::events::Isolation;
use crate::guardian::Guardian;
use crate::registry::{Builtin, PluginSpec, Registry};
use crate::render::{self, Format, RenderOptions};
use crate::scheduler::{RunOptions, Scheduler};
use crate::supervisor::attach::AttachPoint;
use crate::{cgroup, dag, exit};
use std::sync::Arc;
use tracing::Instrument;

/// The words for an isolation level, as in `build_start`.
pub fn isolation_name(level: Isolation) -> &'static str {
    match level {
        Isolation::CgroupV2 => "cgroup_v2",
        Isolation::CgroupV1 => "cgroup_v1",
        Isolation::Rlimit => "rlimit",
    }
}

/// The isolation available to this run: `cgroup::detect()`, unless `HM_CGROUPS=off` asks hm to
/// run without cgroups (as if none were available: process groups and best-effort rlimits).
pub fn detect_isolation() -> cgroup::Detected {
    if std::env::var("HM_CGROUPS").is_ok_and(|v| v == "off") {
        return cgroup::Detected {
            level: Isolation::Rlimit,
            reason: Some("cgroups turned off with HM_CGROUPS=off".to_owned()),
            backend: cgroup::Backend::None,
        };
    }
    cgroup::detect()
}

/// Whether the kernel of run `run_id` (`<time>-<pid>`, both hex) is still running: its pid
/// exists and is an `hm`. A pid reused by another `hm` counts as alive, which only delays the
/// sweep of that run to a later start.
pub fn run_owner_alive(run_id: &str) -> bool {
    let Some(pid) = run_id
        .rsplit('-')
        .next()
        .and_then(|p| u32::from_str_radix(p, 16).ok())
    else {
        // Not a run id hm makes: leave it alone.
        return true;
    };
    crate::procfs::comm(pid).is_some_and(|comm| comm == "hm")
}

pub fn run(args: RunArgs, builtins: &[Builtin], color: bool) -> i32 {
    let mut pipeline = match load(args.file.as_deref()) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let selected = match dag::select(&pipeline, &args.steps) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return exit::USAGE;
        }
    };
    let registry = Registry::discover(&pipeline.root, builtins);
    if let Err(code) = check_registry(&registry) {
        return code;
    }
    let executors = match resolve_executors(&pipeline, &selected, &registry) {
        Ok(e) => e,
        Err(code) => return code,
    };
    let hooks = match resolve_hooks(&pipeline, &registry) {
        Ok(hooks) => hooks,
        Err(code) => return code,
    };
    warn_unused_incompatible(&registry, executors.values().chain(&hooks));
    apply_manifest_limits(&mut pipeline, &selected, &registry);
    let parallelism = args
        .jobs
        .map(|j| j as usize)
        .or(pipeline.parallelism)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    if args.dry_run {
        print_plan(&pipeline, &selected, parallelism);
        print_hooks(&hooks);
        return exit::OK;
    }
    if let Err(code) = check_attach(&args.attach, &executors, &hooks) {
        return code;
    }
    let format = args.format.unwrap_or_else(|| {
        if std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true") {
            Format::Github
        } else {
            Format::Human
        }
    });
    let opts = RenderOptions {
        format,
        color,
        tty: std::io::stderr().is_terminal(),
        logs: args.logs,
    };
    let renderer = render::renderer(
        &opts,
        Box::new(std::io::stdout()),
        Box::new(std::io::stderr()),
    );
    let detected = detect_isolation();
    if args.require_isolation && detected.level == Isolation::Rlimit {
        eprintln!(
            "error: --require-isolation: cgroups are not available ({})\n  hint: run `hm doctor` \
             for details, or run hm where it may create cgroups (root, or a delegated cgroup)",
            detected.reason.as_deref().unwrap_or("no reason given")
        );
        return exit::ENVIRONMENT;
    }
    // Runs whose kernel died (and whose guardian could not clean up) are swept first.
    for stale in cgroup::sweep_stale(&detected.backend, run_owner_alive) {
        tracing::info!("removed the cgroups of dead run {stale}");
    }
    let run_id = new_run_id();
    let (run_cgroup, isolation, isolation_reason) = match detected.backend.create_run(&run_id) {
        Ok(run) => (Some(Arc::new(run)), detected.level, detected.reason),
        Err(cgroup::CgroupError::Unavailable { .. }) => (None, detected.level, detected.reason),
        Err(e) => {
            if args.require_isolation {
                eprintln!("error: --require-isolation: {e}");
                return exit::ENVIRONMENT;
            }
            tracing::warn!("running without cgroups: {e}");
            (
                None,
                Isolation::Rlimit,
                Some(format!("cannot create the run's cgroups: {e}")),
            )
        }
    };
    let run_opts = RunOptions {
        run_id,
        selected,
        parallelism,
        keep_going: args.keep_going || pipeline.keep_going,
        timeout: args.timeout.or(pipeline.timeout),
        grace: args.grace,
        env_overrides: args.env,
        executors,
        hooks,
        attach: HashMap::new(),
        isolation,
        isolation_reason,
        run_cgroup: run_cgroup.clone(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: failed to start the async runtime: {e}");
            return exit::ENVIRONMENT;
        }
    };
    let attach = {
        // The listeners register with the runtime's reactor.
        let _runtime = runtime.enter();
        let mut points = HashMap::new();
        for (name, path) in &args.attach {
            match AttachPoint::bind(name, path) {
                Ok(point) => {
                    points.insert(name.clone(), Arc::new(point));
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return exit::USAGE;
                }
            }
        }
        points
    };
    let run_opts = RunOptions { attach, ..run_opts };
    if let Err(e) = crate::reaper::become_subreaper() {
        tracing::warn!(
            "cannot become a child subreaper ({e}); daemonised step processes may escape"
        );
    }
    let guardian = match Guardian::start() {
        Ok(mut guardian) => {
            for path in run_cgroup.iter().flat_map(|run| run.paths()) {
                guardian.watch_cgroup(&path);
            }
            Some(guardian)
        }
        Err(e) => {
            tracing::warn!(
                "cannot start the guardian ({e}); if hm is killed, steps may survive it"
            );
            None
        }
    };
    // Spans are at debug level: the default filter (warnings) leaves messages uncluttered,
    // and `HM_LOG=debug` shows which run, plugin and step each one is about.
    let span = tracing::debug_span!("run", run_id = %run_opts.run_id, pipeline = %pipeline.name);
    runtime.block_on(
        Scheduler::new(&pipeline, run_opts, renderer)
            .with_guardian(guardian)
            .run()
            .instrument(span),
    )
}

pub fn validate(file: Option<PathBuf>, builtins: &[Builtin]) -> i32 {
    let pipeline = match load(file.as_deref()) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let all: Vec<usize> = (0..pipeline.steps.len()).collect();
    let registry = Registry::discover(&pipeline.root, builtins);
    if let Err(code) = check_registry(&registry) {
        return code;
    }
    let executors = match resolve_executors(&pipeline, &all, &registry) {
        Ok(executors) => executors,
        Err(code) => return code,
    };
    let hooks = match resolve_hooks(&pipeline, &registry) {
        Ok(hooks) => hooks,
        Err(code) => return code,
    };
    warn_unused_incompatible(&registry, executors.values().chain(&hooks));
    println!(
        "{}: ok ({} steps)",
        display(&pipeline.file),
        pipeline.steps.len()
    );
    exit::OK
}

fn load(file: Option<&Path>) -> Result<Pipeline, i32> {
    let path = match file {
        Some(path) => path.to_path_buf(),
        None => {
            let cwd = std::env::current_dir().map_err(|e| {
                eprintln!("error: cannot read the current directory: {e}");
                exit::USAGE
            })?;
            config::find_pipeline_file(&cwd).ok_or_else(|| {
                eprintln!(
                    "error: no {} in {} or any parent directory\n  hint: create one, or pass -f PATH",
                    config::FILE_NAME,
                    cwd.display()
                );
                exit::USAGE
            })?
        }
    };
    config::load(&path).map_err(|e| {
        match e {
            LoadError::Invalid(diagnostics) => {
                eprintln!("{diagnostics}");
                let n = diagnostics.len();
                eprintln!(
                    "error: {} has {n} problem{}",
                    path.display(),
                    if n == 1 { "" } else { "s" }
                );
            }
            other => {
                let source = std::error::Error::source(&other)
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default();
                eprintln!("error: {other}{source}");
            }
        }
        exit::USAGE
    })
}

/// Prints the registry's warnings, and its errors (bad manifests, conflicts) with exit 5: a
/// run must not guess which of two plugins was meant, nor skip one the user installed.
pub fn check_registry(registry: &Registry) -> Result<(), i32> {
    for warning in &registry.warnings {
        eprintln!("warning: {warning}");
    }
    if registry.errors.is_empty() {
        return Ok(());
    }
    for error in &registry.errors {
        eprintln!("{}", crate::cli::error_text(&error.to_string()));
    }
    eprintln!(
        "error: {} problem{} with the installed plugins; `hm plugin list` shows them all",
        registry.errors.len(),
        if registry.errors.len() == 1 { "" } else { "s" }
    );
    Err(exit::PLUGIN)
}

/// The plugin serving each selected step; exit 7 naming every step whose executor no plugin
/// provides, or exit 5 when a plugin's manifest says it cannot talk to this hm.
fn resolve_executors(
    pipeline: &Pipeline,
    selected: &[usize],
    registry: &Registry,
) -> Result<HashMap<usize, PluginSpec>, i32> {
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
            None => missing.push(step),
        }
    }
    if missing.is_empty() && incompatible.is_empty() {
        return Ok(found);
    }
    for problem in &incompatible {
        eprintln!("error: {problem}");
    }
    if missing.is_empty() {
        return Err(exit::PLUGIN);
    }
    for step in missing {
        let why = if step.image.is_some() && step.executor == "docker" {
            " (the step sets `image`, which selects the docker executor)"
        } else {
            ""
        };
        eprintln!(
            "{}: error: step {:?} uses executor {:?}, which no plugin provides{why}",
            step.location, step.name, step.executor
        );
    }
    let known = registry.executor_names();
    eprintln!(
        "  hint: available executors: {}; install a plugin that provides it with `hm plugin \
         install SOURCE` (`hm plugin list` shows what is installed)",
        known.join(", ")
    );
    Err(exit::NO_EXECUTOR)
}

/// The hook plugins of this run: those with `hook:` capabilities that the project configures
/// with a `[plugins.<name>]` table (an installed hook never observes a project that did not
/// ask for it). Exit 5 when one cannot speak the hooks' protocol.
fn resolve_hooks(pipeline: &Pipeline, registry: &Registry) -> Result<Vec<PluginSpec>, i32> {
    let mut hooks = Vec::new();
    let mut problems = Vec::new();
    for name in pipeline.plugins.keys() {
        let Some(plugin) = registry.get(name) else {
            eprintln!(
                "warning: {}: `[plugins.{name}]` configures a plugin that is not installed \
                 (`hm plugin list` shows what is)",
                display(&pipeline.file)
            );
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
    if problems.is_empty() {
        return Ok(hooks);
    }
    for problem in problems {
        eprintln!("error: {problem}");
    }
    Err(exit::PLUGIN)
}

/// A plugin this hm cannot talk to fails a run that uses it (see [`resolve_executors`] and
/// [`resolve_hooks`]); one the run does not use is only named, with the fix, so that the run
/// does not depend on an unrelated install but the problem is not hidden either.
fn warn_unused_incompatible<'a>(registry: &Registry, used: impl Iterator<Item = &'a PluginSpec>) {
    let used: Vec<&str> = used.map(|spec| spec.name.as_str()).collect();
    for (plugin, problem) in registry.incompatible() {
        if !used.contains(&plugin.manifest.name.as_str()) {
            eprintln!("warning: {problem} (this run does not use it)");
        }
    }
}

/// `--attach NAME=...` must name a plugin this run uses, once.
fn check_attach(
    attach: &[(String, PathBuf)],
    executors: &HashMap<usize, PluginSpec>,
    hooks: &[PluginSpec],
) -> Result<(), i32> {
    let mut used: Vec<&str> = executors
        .values()
        .chain(hooks)
        .map(|spec| spec.name.as_str())
        .collect();
    used.sort_unstable();
    used.dedup();
    for (i, (name, _)) in attach.iter().enumerate() {
        if !used.contains(&name.as_str()) {
            eprintln!(
                "error: --attach {name}: this run does not use plugin `{name}`\n  hint: it uses: {}",
                used.join(", ")
            );
            return Err(exit::USAGE);
        }
        if attach[..i].iter().any(|(other, _)| other == name) {
            eprintln!("error: --attach {name}: given twice");
            return Err(exit::USAGE);
        }
    }
    Ok(())
}

fn print_hooks(hooks: &[PluginSpec]) {
    for hook in hooks {
        let events: Vec<String> = hook
            .hooks
            .iter()
            .map(|h| match h.phase {
                crate::registry::manifest::HookPhase::Before => format!("before {}", h.event),
                crate::registry::manifest::HookPhase::After => h.event.to_owned(),
            })
            .collect();
        println!("hook {}: {}", hook.name, events.join(", "));
    }
}

/// Puts each plugin's manifest `limits` under the fields its `[plugins.<name>].limits` leaves
/// unset, for the plugins the selected steps use.
fn apply_manifest_limits(pipeline: &mut Pipeline, selected: &[usize], registry: &Registry) {
    for &i in selected {
        if let Some(plugin) = registry.executor(&pipeline.steps[i].executor) {
            let (name, limits) = (plugin.manifest.name.clone(), plugin.manifest.limits);
            pipeline.add_plugin_default_limits(&name, limits);
        }
    }
}

fn print_plan(pipeline: &Pipeline, selected: &[usize], parallelism: usize) {
    println!(
        "pipeline {:?}: {} step{}, parallelism {parallelism} (dry run: nothing is started)",
        pipeline.name,
        selected.len(),
        if selected.len() == 1 { "" } else { "s" }
    );
    for (level, steps) in dag::levels(pipeline, selected).iter().enumerate() {
        println!("level {level}:");
        for &i in steps {
            let step = &pipeline.steps[i];
            let mut details = vec![format!("executor {}", step.executor)];
            if let Some(image) = &step.image {
                details.push(format!("image {image}"));
            }
            if let Some(m) = step.limits.memory_bytes {
                details.push(format!("memory {}", crate::render::format_bytes(m)));
            }
            if let Some(p) = step.limits.pids {
                details.push(format!("pids {p}"));
            }
            if let Some(c) = step.limits.cpu {
                details.push(format!("cpu {c}"));
            }
            if let Some(t) = step.timeout {
                details.push(format!("timeout {}", humantime::format_duration(t)));
            }
            if !step.needs.is_empty() {
                let needs: Vec<&str> = step
                    .needs
                    .iter()
                    .map(|&n| pipeline.steps[n].name.as_str())
                    .collect();
                details.push(format!("needs {}", needs.join(", ")));
            }
            println!("  {}  ({})", step.name, details.join(", "));
        }
    }
}

fn new_run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{:x}-{:x}",
        nanos as u64 & 0xffff_ffff_ffff,
        std::process::id()
    )
}

fn display(path: &Path) -> String {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| path.strip_prefix(cwd).ok().map(|p| p.display().to_string()))
        .unwrap_or_else(|| path.display().to_string())
}
