//! `hm doctor`: what this machine offers hm, and what to do about what it lacks: isolation,
//! Docker, the plugin directories and any problem with the installed plugins.

use std::path::PathBuf;

use crate::events::Isolation;
use crate::registry::{Builtin, PluginDirs, Registry};
use crate::{exit, run};

/// Prints every check; exits 4 when hm cannot run with full isolation, else 5 when the
/// installed plugins have problems (bad manifests, conflicts), else 0.
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
        Some((path, true)) => println!("docker: socket {} present", path.display()),
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
    println!("executors: {}", registry.executor_names().join(", "));
    for warning in &registry.warnings {
        println!("  warning: {warning}");
    }
    for error in &registry.errors {
        for line in error.to_string().lines() {
            match line.strip_prefix("  ") {
                Some(hint) => println!("    {hint}"),
                None => println!("  error: {line}"),
            }
        }
    }
    if !ok {
        exit::ENVIRONMENT
    } else if !registry.errors.is_empty() {
        exit::PLUGIN
    } else {
        exit::OK
    }
}

fn docker_socket() -> Option<(PathBuf, bool)> {
    let host =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    let path = PathBuf::from(host.strip_prefix("unix://")?);
    let present = path.exists();
    Some((path, present))
}
