//! `hm doctor`: what this machine offers hm, and what to do about what it lacks.

use std::path::PathBuf;

use crate::events::Isolation;
use crate::registry::{Builtin, Registry};
use crate::{exit, run};

/// Prints every check; exits 0 when hm can run with full isolation, 4 otherwise.
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
    let registry = Registry::discover(&root, builtins);
    println!("executors: {}", registry.executor_names().join(", "));
    for warning in &registry.warnings {
        println!("  warning: {warning}");
    }
    if ok { exit::OK } else { exit::ENVIRONMENT }
}

fn docker_socket() -> Option<(PathBuf, bool)> {
    let host =
        std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into());
    let path = PathBuf::from(host.strip_prefix("unix://")?);
    let present = path.exists();
    Some((path, present))
}
