//! `hm doctor`: what this machine offers hm, and what to do about what it lacks: isolation,
//! Docker, the plugin directories and any problem with the installed plugins.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::events::Isolation;
use crate::registry::{Builtin, PluginDirs, Registry};
use crate::{exit, run};

/// Prints every check; exits 4 when hm cannot run with full isolation, else 5 when the
/// installed plugins have problems (bad manifests, conflicts, a protocol range this hm does
/// not speak), else 0.
pub fn doctor(builtins: &[Builtin]) -> i32 {
    let mut ok = true;
    let detected = run::detect_isolation();
    let level = run::isolation_name(detected.level);
    match (detected.level, &detected.reason) {
        (Isolation::Rlimit, reason) => {
            ok = false;
            println!(
                "isolation: {level} (no cgroups: {})",
                reason.as_deref().unwrap_or("unknown")
            );
            println!(
                "  fix: run hm as root or in a delegated cgroup (systemd-run --user --scope -p Delegate=yes ...)"
            );
        }
        (_, Some(reason)) => println!("isolation: {level} ({reason})"),
        (_, None) => println!("isolation: {level}"),
    }
    if let Some(own) = detected.backend.own() {
        for dir in own.dirs() {
            println!("  cgroup: {}", dir.display());
        }
    }
    match docker_socket() {
        Some((path, true)) => match docker_version(&path) {
            Ok(version) => println!("docker: {version} at {}", path.display()),
            Err(e) => println!(
                "docker: the daemon at {} does not answer ({e}); docker steps will fail \
                 (start dockerd, or point DOCKER_HOST at a daemon that runs)",
                path.display()
            ),
        },
        Some((path, false)) => println!(
            "docker: no socket at {} (docker steps will fail)",
            path.display()
        ),
        None => println!("docker: DOCKER_HOST is not a unix socket; not checked"),
    }
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let root = crate::config::find_pipeline_file(&cwd)
        .and_then(|f| f.parent().map(PathBuf::from))
        .unwrap_or(cwd);
    let dirs = PluginDirs::for_project(&root);
    for (layer, dir) in [("project", &dirs.project), ("user", &dirs.user)] {
        match dir {
            Some(dir) if dir.is_dir() => println!("plugins ({layer}): {}", dir.display()),
            Some(dir) => println!("plugins ({layer}): {} (none installed)", dir.display()),
            None => println!("plugins ({layer}): no directory (HOME is unset)"),
        }
    }
    let registry = Registry::discover_in(&dirs, builtins);
    let incompatible: Vec<(&str, String)> = registry
        .incompatible()
        .map(|(b, problem)| (b.manifest.name.as_str(), problem))
        .collect();
    let executors: Vec<String> = registry
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
    println!("executors: {}", executors.join(", "));
    let hooks: Vec<String> = registry
        .active()
        .filter(|b| !b.manifest.hooks.is_empty())
        .map(|b| {
            let events: Vec<&str> = b.manifest.hooks.iter().map(|h| h.event).collect();
            format!("{} ({})", b.manifest.name, events.join(", "))
        })
        .collect();
    if !hooks.is_empty() {
        println!(
            "hooks: {} (each runs in projects with a [plugins.NAME] table for it)",
            hooks.join("; ")
        );
    }
    let verbs: Vec<String> = registry
        .active()
        .flat_map(|b| {
            b.manifest
                .subcommands
                .iter()
                .map(|s| format!("hm {}", s.verb))
        })
        .collect();
    if !verbs.is_empty() {
        println!("subcommands: {}", verbs.join(", "));
    }
    for warning in &registry.warnings {
        println!("  warning: {warning}");
    }
    for error in &registry.errors {
        for line in error.to_string().lines() {
            if crate::toml_check::is_diagnostic_line(line) {
                println!("  {line}");
                continue;
            }
            match line.strip_prefix("  ") {
                Some(hint) => println!("    {hint}"),
                None => println!("  error: {line}"),
            }
        }
    }
    for (_, problem) in &incompatible {
        println!("  error: {problem}");
    }
    if !ok {
        exit::ENVIRONMENT
    } else if !registry.errors.is_empty() || !incompatible.is_empty() {
        exit::PLUGIN
    } else {
        exit::OK
    }
}

/// Asks the Docker daemon on the unix socket `path` for its version (`GET /version`, the
/// Engine API's unversioned endpoint), in plain HTTP/1.0: the kernel links no Docker client,
/// and two seconds and one request are all a health check needs.
fn docker_version(path: &Path) -> Result<String, String> {
    let timeout = Some(Duration::from_secs(2));
    let mut stream = UnixStream::connect(path).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(timeout)
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(timeout)
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /version HTTP/1.0\r\nHost: docker\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    stream
        .take(64 * 1024)
        .read_to_end(&mut response)
        .map_err(|e| e.to_string())?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| "not an HTTP answer".to_owned())?;
    let status = head.lines().next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("it answered `{status}`"));
    }
    let json: serde_json::Value =
        serde_json::from_str(body).map_err(|e| format!("its version is not JSON: {e}"))?;
    let field = |name: &str| json[name].as_str().unwrap_or("?").to_owned();
    Ok(format!(
        "Docker Engine {} (API {})",
        field("Version"),
        field("ApiVersion")
    ))
}

fn docker_socket() -> Option<(PathBuf, bool)> {
    let host =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    let path = PathBuf::from(host.strip_prefix("unix://")?);
    let present = path.exists();
    Some((path, present))
}
