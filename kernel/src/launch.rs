//! Starting a planned run: the isolation it gets (cgroups of its own, or the fallback), the
//! sweep of runs that died, its id, the async runtime, the attach sockets, the subreaper and
//! the guardian, then the scheduler to the end. Returns the run's exit code, or why it could
//! not start. Nothing here prints: what the user must see goes through the renderer, the
//! `notice` sink, or an error value.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use thiserror::Error;
use tracing::Instrument;

use crate::cgroup;
use crate::events::Isolation;
use crate::exit;
use crate::guardian::Guardian;
use crate::plan::Plan;
use crate::render::Renderer;
use crate::scheduler::{RunOptions, Scheduler};
use crate::supervisor::attach::{AttachError, AttachPoint};

/// The plugins (and executors) whose containers and services hm and its guardian know how to
/// remove, by the run's label.
const DOCKER: &str = "docker";
const SWARM: &str = "swarm";

/// Something hm itself has to tell the user during a run, outside the event stream (that it
/// waits for an attached plugin, say). The binary prints it on stderr.
pub type Notice = Arc<dyn Fn(&str) + Send + Sync>;

/// What the command line asks of a run, beyond its plan.
pub struct RunSettings {
    /// `-j`.
    pub jobs: Option<u32>,
    /// `-k`.
    pub keep_going: bool,
    /// `--timeout`, over the pipeline's.
    pub timeout: Option<Duration>,
    /// `--grace`.
    pub grace: Duration,
    /// `-e KEY=VALUE`.
    pub env: Vec<(String, String)>,
    /// `--attach NAME=SOCKET`.
    pub attach: Vec<(String, PathBuf)>,
    /// `--require-isolation`: no cgroups is an error (exit 4) rather than a fallback.
    pub require_isolation: bool,
    /// What changed in the project (`Plan::changes`), for `if.changed`.
    pub changes: Option<crate::condition::Changes>,
    /// The values of the secrets the run's steps refer to (`Plan::secrets`).
    pub secrets: crate::secrets::Secrets,
    /// `--no-cache`.
    pub no_cache: bool,
    pub notice: Notice,
}

/// Why a planned run could not start.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LaunchError {
    #[error(
        "--require-isolation: {0}\n  hint: run `hm doctor` for details, or run hm where it may \
         create cgroups (root, or a delegated cgroup)"
    )]
    IsolationRequired(String),
    #[error("failed to start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Attach(#[from] AttachError),
}

impl LaunchError {
    /// The exit code this problem means (`docs/exit-codes.md`).
    pub fn exit_code(&self) -> i32 {
        match self {
            LaunchError::IsolationRequired(_) | LaunchError::Runtime(_) => exit::ENVIRONMENT,
            LaunchError::Attach(_) => exit::USAGE,
        }
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

/// The isolation a run gets: [`detect_isolation`], and when that finds nothing usable on a
/// systemd machine with a unified (v2) hierarchy (hm's cgroup is shared or not writable, as in
/// every terminal), a transient scope of hm's own from systemd ([`crate::delegate`]), then
/// detection again in it. The scope, when one was made, is returned for `hm doctor` to name.
pub fn prepare_isolation(
    name: &str,
    runtime: &tokio::runtime::Runtime,
) -> (cgroup::Detected, Option<crate::delegate::Scope>) {
    let detected = detect_isolation();
    let turned_off = std::env::var("HM_CGROUPS").is_ok_and(|v| v == "off");
    // v1 and hybrid machines keep what detection found: a scope would only move hm around.
    let unified = std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if detected.level != Isolation::Rlimit || !unified || turned_off {
        return (detected, None);
    }
    if let Err(why) = crate::delegate::available() {
        tracing::debug!("no systemd delegation: {why}");
        return (detected, None);
    }
    let manager = crate::delegate::Manager::for_this_user();
    match runtime.block_on(crate::delegate::move_into_scope(name, manager)) {
        Ok(scope) => {
            let mut again = detect_isolation();
            if again.level == Isolation::Rlimit {
                again.reason = Some(format!(
                    "in the scope {} that {} delegated: {}",
                    scope.unit,
                    manager.describe(),
                    again.reason.unwrap_or_default()
                ));
            }
            (again, Some(scope))
        }
        Err(why) => {
            let reason = format!(
                "{}; systemd could not give hm a cgroup of its own: {why}",
                detected.reason.as_deref().unwrap_or("no usable cgroup")
            );
            (
                cgroup::Detected {
                    reason: Some(reason),
                    ..detected
                },
                None,
            )
        }
    }
}

/// The words for an isolation level, as in `build_start`.
pub fn isolation_name(level: Isolation) -> &'static str {
    match level {
        Isolation::CgroupV2 => "cgroup_v2",
        Isolation::CgroupV1 => "cgroup_v1",
        Isolation::Rlimit => "rlimit",
    }
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
    hm_ipc::procfs::comm(pid).is_some_and(|comm| comm == "hm")
}

/// Runs `plan` to its end; the run's events go to `renderer`. Returns hm's exit code.
pub fn run(
    plan: Plan,
    settings: RunSettings,
    renderer: Box<dyn Renderer + Send>,
) -> Result<i32, LaunchError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(LaunchError::Runtime)?;
    let run_id = new_run_id();
    let (detected, _scope) = prepare_isolation(&run_id, &runtime);
    if settings.require_isolation && detected.level == Isolation::Rlimit {
        let reason = detected.reason.as_deref().unwrap_or("no reason given");
        return Err(LaunchError::IsolationRequired(format!(
            "cgroups are not available ({reason})"
        )));
    }
    // Runs whose kernel died (and whose guardian could not clean up) are swept first.
    for stale in cgroup::sweep_stale(&detected.backend, run_owner_alive) {
        tracing::info!("removed the cgroups of dead run {stale}");
    }
    let (run_cgroup, isolation, isolation_reason) = match detected.backend.create_run(&run_id) {
        Ok(run) => (Some(Arc::new(run)), detected.level, detected.reason),
        Err(cgroup::CgroupError::Unavailable { .. }) => (None, detected.level, detected.reason),
        Err(e) if settings.require_isolation => {
            return Err(LaunchError::IsolationRequired(e.to_string()));
        }
        Err(e) => {
            tracing::warn!("running without cgroups: {e}");
            (
                None,
                Isolation::Rlimit,
                Some(format!("cannot create the run's cgroups: {e}")),
            )
        }
    };
    let attach = {
        // The listeners register with the runtime's reactor.
        let _runtime = runtime.enter();
        let mut points = HashMap::new();
        for (name, path) in &settings.attach {
            points.insert(name.clone(), Arc::new(AttachPoint::bind(name, path)?));
        }
        points
    };
    if let Err(e) = crate::reaper::become_subreaper() {
        tracing::warn!(
            "cannot become a child subreaper ({e}); daemonised step processes may escape"
        );
    }
    // The daemons of the run's containers (docker steps, services) and swarm services: if hm
    // dies, the guardian removes them; when the run ends, hm removes what a plugin could not.
    let uses = |plugin: &str| plan.executors.values().any(|p| p.name == plugin);
    let mut daemons: Vec<crate::engine::Daemon> = Vec::new();
    for (plugin, used) in [
        (DOCKER, uses(DOCKER) || !plan.services.is_empty()),
        (SWARM, uses(SWARM)),
    ] {
        let config = plan
            .pipeline
            .plugins
            .get(plugin)
            .map(|s| s.config_json.as_str());
        if let Some(daemon) = used.then(|| crate::engine::daemon_of(config)).flatten()
            && !daemons.contains(&daemon)
        {
            daemons.push(daemon);
        }
    }
    let guardian = match Guardian::start() {
        Ok(mut guardian) => {
            for daemon in &daemons {
                guardian.watch_docker(daemon, &run_id);
            }
            for path in run_cgroup.iter().flat_map(|run| run.paths()) {
                guardian.watch_cgroup(&path);
            }
            if let Some((own, changes)) = run_cgroup.as_ref().and_then(|r| r.own_changes()) {
                guardian.watch_own(own, changes);
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
    let parallelism = plan.parallelism(settings.jobs);
    let own_cgroup = run_cgroup.clone();
    let Plan {
        pipeline,
        selected,
        executors,
        hooks,
        services,
        named,
    } = plan;
    let run_id_copy = run_id.clone();
    let opts = RunOptions {
        run_id,
        selected,
        parallelism,
        keep_going: settings.keep_going || pipeline.keep_going,
        timeout: settings.timeout.or(pipeline.timeout),
        grace: settings.grace,
        env_overrides: settings.env,
        inherited_ci: std::env::var(crate::config::CI_ENV).ok(),
        named,
        changes: settings.changes,
        secrets: settings.secrets,
        no_cache: settings.no_cache,
        executors,
        hooks,
        services,
        attach,
        isolation,
        isolation_reason,
        run_cgroup,
        notice: settings.notice,
    };
    // Spans are at debug level: the default filter (warnings) leaves messages uncluttered,
    // and `HM_LOG=debug` shows which run, plugin and step each one is about.
    let span = tracing::debug_span!("run", run_id = %opts.run_id, pipeline = %pipeline.name);
    let code = runtime.block_on(
        Scheduler::new(&pipeline, opts, renderer)
            .with_guardian(guardian)
            .run()
            .instrument(span),
    );
    for daemon in daemons {
        match crate::engine::remove_run(&daemon, &run_id_copy) {
            Ok((0, 0)) => {}
            Ok((containers, networks)) => tracing::warn!(
                "removed {containers} container(s) and {networks} network(s) of this run that \
                 its plugins left"
            ),
            Err(e) => tracing::debug!("cannot check for containers left by this run: {e}"),
        }
    }
    // The run's tree is gone and the guardian dismissed: hm's own cgroup is given back as it
    // was found (the controllers hm enabled, hm itself out of `hm/kernel`).
    if let Some(run) = own_cgroup {
        if let Err(e) = run.remove().and_then(|()| run.restore_own()) {
            tracing::warn!("cannot give hm's own cgroup back as it was: {e}");
        }
    }
    Ok(code)
}

/// The start time in nanoseconds (hex, 48 bits) and the kernel's pid.
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
