//! `hm doctor`: what this machine offers hm, and what it lacks: isolation, Docker, the plugin
//! directories and any problem with the installed plugins, as a [`Report`] (the binary prints
//! it, with what to do about each gap).

use std::path::{Path, PathBuf};

use crate::events::Isolation;
use crate::registry::{Builtin, PluginDirs, Registry};
use crate::{exit, launch};

/// What `hm doctor` found.
#[derive(Debug)]
pub struct Report {
    pub isolation: Isolation,
    /// Why isolation is not better, if it is not the best.
    pub isolation_reason: Option<String>,
    /// hm's own cgroup, in each hierarchy it uses.
    pub cgroups: Vec<PathBuf>,
    /// The scope systemd delegated to hm (as it would to a run), and which manager made it.
    pub scope: Option<String>,
    /// The one thing to do for better isolation, when there is one.
    pub fix: Option<String>,
    pub docker: Docker,
    /// The project's and the user's plugin directories.
    pub plugin_dirs: Vec<PluginDir>,
    /// Every executor of the plugins in effect; an incompatible plugin's are marked.
    pub executors: Vec<String>,
    /// Each hook plugin with the events it observes.
    pub hooks: Vec<String>,
    /// `hm VERB` of each subcommand.
    pub verbs: Vec<String>,
    pub warnings: Vec<String>,
    /// Problems with the installed plugins, each a message (possibly positioned diagnostics).
    pub errors: Vec<String>,
}

/// What hm knows of the Docker daemon.
#[derive(Debug)]
pub enum Docker {
    Answered {
        version: String,
        socket: PathBuf,
    },
    NoAnswer {
        socket: PathBuf,
        error: String,
    },
    NoSocket {
        socket: PathBuf,
    },
    /// `DOCKER_HOST` is not a unix socket: not checked.
    NotUnix,
}

/// One layer's plugins directory.
#[derive(Debug)]
pub struct PluginDir {
    pub layer: &'static str,
    /// `None` when it cannot be named (`HOME` unset).
    pub dir: Option<PathBuf>,
    pub exists: bool,
}

impl Report {
    /// 4 when hm cannot run with full isolation, else 5 when the installed plugins have
    /// problems (bad manifests, conflicts, a protocol range this hm does not speak), else 0.
    pub fn exit_code(&self) -> i32 {
        if self.isolation == Isolation::Rlimit {
            exit::ENVIRONMENT
        } else if !self.errors.is_empty() {
            exit::PLUGIN
        } else {
            exit::OK
        }
    }
}

/// Looks at everything `hm doctor` reports.
pub fn examine(builtins: &[Builtin]) -> Report {
    // As a run would: detection, then a delegated scope if that is what it takes. The scope
    // goes away when `hm doctor` exits.
    let (detected, scope) = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => {
            launch::prepare_isolation(&format!("doctor-{:x}", std::process::id()), &runtime)
        }
        Err(_) => (launch::detect_isolation(), None),
    };
    let fix = fix(detected.level);
    let cgroups = detected
        .backend
        .own()
        .map(|own| own.dirs().to_vec())
        .unwrap_or_default();
    let scope = scope.map(|s| {
        // What systemd delegated is what the scope's cgroup offers.
        let delegated = cgroups
            .first()
            .and_then(|dir| std::fs::read_to_string(dir.join("cgroup.controllers")).ok())
            .map(|c| c.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| "none".to_owned());
        format!(
            "{} made by {}, delegating the controllers {delegated}",
            s.unit,
            s.manager.describe()
        )
    });
    let docker = match docker_socket() {
        Some((socket, true)) => match docker_version(&socket) {
            Ok(version) => Docker::Answered { version, socket },
            Err(error) => Docker::NoAnswer { socket, error },
        },
        Some((socket, false)) => Docker::NoSocket { socket },
        None => Docker::NotUnix,
    };
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let root = crate::config::find_pipeline_file(&cwd)
        .and_then(|f| f.parent().map(PathBuf::from))
        .unwrap_or(cwd);
    let dirs = PluginDirs::for_project(&root);
    let plugin_dirs = [("project", &dirs.project), ("user", &dirs.user)]
        .into_iter()
        .map(|(layer, dir)| PluginDir {
            layer,
            exists: dir.as_ref().is_some_and(|d| d.is_dir()),
            dir: dir.clone(),
        })
        .collect();
    let registry = Registry::discover_in(&dirs, builtins);
    let incompatible: Vec<(&str, String)> = registry
        .incompatible()
        .map(|(b, problem)| (b.manifest.name.as_str(), problem))
        .collect();
    let executors = registry
        .active()
        .flat_map(|b| {
            let unusable = incompatible
                .iter()
                .any(|(name, _)| *name == b.manifest.name);
            b.manifest.executors().map(move |e| match unusable {
                true => format!("{e} (plugin {}: incompatible)", b.manifest.name),
                false => e.to_owned(),
            })
        })
        .collect();
    let hooks = registry
        .active()
        .filter(|b| !b.manifest.hooks.is_empty())
        .map(|b| {
            let events: Vec<&str> = b.manifest.hooks.iter().map(|h| h.event).collect();
            format!("{} ({})", b.manifest.name, events.join(", "))
        })
        .collect();
    let verbs = registry
        .active()
        .flat_map(|b| {
            b.manifest
                .subcommands
                .iter()
                .map(|s| format!("hm {}", s.verb))
        })
        .collect();
    let errors = registry
        .errors
        .iter()
        .map(ToString::to_string)
        .chain(incompatible.iter().map(|(_, problem)| problem.clone()))
        .collect();
    Report {
        isolation: detected.level,
        isolation_reason: detected.reason,
        cgroups,
        scope,
        fix,
        docker,
        plugin_dirs,
        executors,
        hooks,
        verbs,
        warnings: registry.warnings.clone(),
        errors,
    }
}

/// What would give hm cgroups where it has none.
fn fix(level: Isolation) -> Option<String> {
    if level != Isolation::Rlimit {
        return None;
    }
    if std::env::var("HM_CGROUPS").is_ok_and(|v| v == "off") {
        return Some("unset HM_CGROUPS (it turns cgroups off)".to_owned());
    }
    let unified = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    if !unified {
        return Some(
            "run hm as root: the cgroup v1 hierarchies can be written only by root".to_owned(),
        );
    }
    Some(match crate::delegate::available() {
        Ok(()) if nix::unistd::geteuid().is_root() => {
            "systemd refused a scope (above): check `systemctl status` and the system bus"
                .to_owned()
        }
        Ok(()) => "start hm from a login session with a running user manager (`systemctl --user \
                   status`; `loginctl enable-linger $USER` keeps one running), or run it as root"
            .to_owned(),
        Err(why) if why.starts_with("HM_CGROUP_SCOPE") => {
            "unset HM_CGROUP_SCOPE (it turns systemd delegation off)".to_owned()
        }
        // No systemd: a cgroup of hm's own, made by hand.
        Err(_) => "as root, give hm a cgroup of its own: `mkdir /sys/fs/cgroup/hm-own && sh -c \
                   'echo $$ > /sys/fs/cgroup/hm-own/cgroup.procs && exec hm run'`"
            .to_owned(),
    })
}

/// Asks the Docker daemon on the unix socket `path` for its version (`GET /version`, the
/// Engine API's unversioned endpoint).
fn docker_version(path: &Path) -> Result<String, String> {
    let daemon = crate::engine::Daemon::Unix(path.to_owned());
    let body = crate::engine::request(&daemon, "GET", "/version", &["200"])?;
    let json: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| format!("its version is not JSON: {e}"))?;
    let field = |name: &str| json[name].as_str().unwrap_or("?").to_owned();
    Ok(format!(
        "Docker Engine {} (API {})",
        field("Version"),
        field("ApiVersion")
    ))
}

fn docker_socket() -> Option<(PathBuf, bool)> {
    let path = crate::engine::socket()?;
    let present = path.exists();
    Some((path, present))
}
