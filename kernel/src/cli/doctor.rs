//! `hm doctor` on the command line: the report, and what to do about each gap.

use hm_kernel::doctor::{Docker, Report};
use hm_kernel::events::Isolation;
use hm_kernel::launch::isolation_name;
use hm_kernel::registry::Builtin;
use hm_kernel::toml_check::is_diagnostic_line;

use super::print_out;

pub fn doctor(builtins: &[Builtin]) -> i32 {
    let report = hm_kernel::doctor::examine(builtins);
    print_out(&text(&report));
    report.exit_code()
}

fn text(report: &Report) -> String {
    let mut out = String::new();
    let mut line = |text: String| {
        out.push_str(&text);
        out.push('\n');
    };
    let level = isolation_name(report.isolation);
    match (report.isolation, &report.isolation_reason) {
        (Isolation::Rlimit, reason) => {
            line(format!(
                "isolation: {level} (no cgroups: {})",
                reason.as_deref().unwrap_or("unknown")
            ));
        }
        (_, Some(reason)) => line(format!("isolation: {level} ({reason})")),
        (_, None) => line(format!("isolation: {level}")),
    }
    if let Some(fix) = &report.fix {
        line(format!("  fix: {fix}"));
    }
    if let Some(scope) = &report.scope {
        line(format!("  scope: {scope}"));
    }
    for dir in &report.cgroups {
        line(format!("  cgroup: {}", dir.display()));
    }
    line(match &report.docker {
        Docker::Answered { version, socket } => {
            format!("docker: {version} at {}", socket.display())
        }
        Docker::NoAnswer { socket, error } => format!(
            "docker: the daemon at {} does not answer ({error}); docker steps will fail (start \
             dockerd, or point DOCKER_HOST at a daemon that runs)",
            socket.display()
        ),
        Docker::NoSocket { socket } => format!(
            "docker: no socket at {} (docker steps will fail)",
            socket.display()
        ),
        Docker::NotUnix => "docker: DOCKER_HOST is not a unix socket; not checked".to_owned(),
    });
    for dir in &report.plugin_dirs {
        line(match (&dir.dir, dir.exists) {
            (Some(path), true) => format!("plugins ({}): {}", dir.layer, path.display()),
            (Some(path), false) => format!(
                "plugins ({}): {} (none installed)",
                dir.layer,
                path.display()
            ),
            (None, _) => format!("plugins ({}): no directory (HOME is unset)", dir.layer),
        });
    }
    line(format!("executors: {}", report.executors.join(", ")));
    if !report.hooks.is_empty() {
        line(format!(
            "hooks: {} (each runs in projects with a [plugins.NAME] table for it)",
            report.hooks.join("; ")
        ));
    }
    if !report.verbs.is_empty() {
        line(format!("subcommands: {}", report.verbs.join(", ")));
    }
    for warning in &report.warnings {
        line(format!("  warning: {warning}"));
    }
    for error in &report.errors {
        for text in error.lines() {
            line(if is_diagnostic_line(text) {
                format!("  {text}")
            } else if let Some(hint) = text.strip_prefix("  ") {
                format!("    {hint}")
            } else {
                format!("  error: {text}")
            });
        }
    }
    out
}
