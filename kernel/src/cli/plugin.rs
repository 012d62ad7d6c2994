//! `hm plugin list|info|install|remove` (README, "Plugins: install, list, remove"): the registry's
//! answers printed for people (tables, on stdout) or programs (`--json`), and its failures mapped
//! to exit codes. Progress, warnings and errors go to stderr.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde_json::{Value, json};

use super::error_text;
use hm_kernel::exit;
use hm_kernel::registry::install::{self, normalize_sha256};
use hm_kernel::registry::{
    Builtin, InstallError, InstallRequest, Installed, Layer, Outcome, PluginDirs, Registry,
};

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Every plugin of every layer (project, user, built-in), shadowed ones included.
    List {
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// One plugin in detail: manifest, location, executable digest, what it shadows.
    Info {
        name: String,
        /// One JSON document on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Install a plugin from a bundle directory, a plugin executable or a name.
    ///
    /// A SOURCE with a `/` is a path: a directory holding plugin.toml and its executable, or an
    /// executable built on hm-sdk (its manifest is what `--hm-manifest` prints). Anything else
    /// is a name, looked up in the current cargo workspace's target/release and target/debug
    /// (`hm-plugin-NAME` or `NAME`), then in the plugin index (HM_PLUGIN_INDEX, or `index` in
    /// ~/.config/hm/config.toml).
    Install {
        #[arg(value_name = "SOURCE")]
        source: String,
        /// Refuse unless the plugin's executable has this sha256 (64 hex digits).
        #[arg(long, value_name = "SHA256", value_parser = parse_pin)]
        pin: Option<String>,
        /// Install into the project's .hm/plugins/ instead of $XDG_DATA_HOME/hm/plugins/.
        #[arg(long)]
        project: bool,
    },
    /// Remove an installed plugin (from the user layer, or the project's with --project).
    Remove {
        name: String,
        /// Remove it from the project's .hm/plugins/ instead of $XDG_DATA_HOME/hm/plugins/.
        #[arg(long)]
        project: bool,
    },
}

fn parse_pin(text: &str) -> Result<String, String> {
    normalize_sha256(text).ok_or_else(|| {
        format!("{text:?} is not a sha256 digest (64 hex digits, as `sha256sum` prints)")
    })
}

pub fn run(command: PluginCommand, builtins: &[Builtin]) -> i32 {
    let cwd = match std::env::current_dir() {
        Ok(cwd) => cwd,
        Err(e) => {
            errln!("error: cannot read the current directory: {e}");
            return exit::USAGE;
        }
    };
    let project = project_root(&cwd);
    let dirs = PluginDirs {
        project: Some(hm_kernel::registry::project_plugins_dir(
            project.as_deref().unwrap_or(&cwd),
        )),
        user: hm_kernel::registry::user_plugins_dir(),
    };
    match command {
        PluginCommand::List { json } => list(&dirs, builtins, json),
        PluginCommand::Info { name, json } => info(&dirs, builtins, &name, json),
        PluginCommand::Install {
            source,
            pin,
            project: in_project,
        } => {
            let layer = match layer(in_project, project.as_deref(), &cwd) {
                Ok(layer) => layer,
                Err(code) => return code,
            };
            let req = InstallRequest {
                source,
                pin,
                layer,
                dirs,
                cwd,
            };
            install(&req, builtins)
        }
        PluginCommand::Remove {
            name,
            project: in_project,
        } => {
            let layer = match layer(in_project, project.as_deref(), &cwd) {
                Ok(layer) => layer,
                Err(code) => return code,
            };
            remove(&name, layer, &dirs, builtins)
        }
    }
}

/// The directory of the `hm.toml` in `cwd` or a parent.
fn project_root(cwd: &Path) -> Option<PathBuf> {
    hm_kernel::config::find_pipeline_file(cwd).and_then(|f| f.parent().map(Path::to_path_buf))
}

fn layer(in_project: bool, project: Option<&Path>, cwd: &Path) -> Result<Layer, i32> {
    if !in_project {
        return Ok(Layer::User);
    }
    if project.is_none() {
        errln!(
            "error: --project: no {} in {} or any parent directory\n  hint: run it inside the \
             project, or leave out --project for your user plugins",
            hm_kernel::config::FILE_NAME,
            cwd.display()
        );
        return Err(exit::USAGE);
    }
    Ok(Layer::Project)
}

fn fail(e: &InstallError) -> i32 {
    errln!("{}", error_text(&e.to_string()));
    match e {
        InstallError::Usage(_) => exit::USAGE,
        _ => exit::PLUGIN,
    }
}

fn print_warnings(registry: &Registry) {
    for warning in &registry.warnings {
        errln!("warning: {warning}");
    }
}

/// Prints the registry's errors and the plugins this hm cannot talk to; exit 5 when there
/// are any.
fn errors_code(registry: &Registry) -> i32 {
    let mut problems = 0;
    for error in &registry.errors {
        errln!("{}", error_text(&error.to_string()));
        problems += 1;
    }
    for (_, problem) in registry.incompatible() {
        errln!("{}", error_text(&problem));
        problems += 1;
    }
    if problems == 0 {
        exit::OK
    } else {
        exit::PLUGIN
    }
}

fn plugin_json(b: &Installed) -> Value {
    let m = &b.manifest;
    json!({
        "name": m.name,
        "version": m.version,
        "description": m.description,
        "layer": b.layer.as_str(),
        "active": b.shadowed_by.is_none(),
        "shadowed_by": b.shadowed_by.map(Layer::as_str),
        "dir": b.dir.as_ref().map(|d| d.display().to_string()),
        "executable": b.program().display().to_string(),
        "protocol": { "min": m.protocol.0, "max": m.protocol.1 },
        "compatible": b.protocol_problem().is_none(),
        "capabilities": m.capabilities,
        "limits": {
            "memory_bytes": m.limits.memory_bytes,
            "pids": m.limits.pids,
            "cpu": m.limits.cpu,
        },
        "hooks": m.hooks.iter().map(|h| json!({
            "event": h.event,
            "phase": phase_name(h.phase),
            "timeout_ms": h.timeout.as_millis() as u64,
        })).collect::<Vec<_>>(),
        "subcommands": m.subcommands.iter().map(|s| json!({
            "verb": s.verb,
            "about": s.about,
            "args": s.args.iter().map(|a| json!({
                "name": a.name,
                "long": a.long,
                "takes_value": a.takes_value,
                "help": a.help,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

fn phase_name(phase: hm_kernel::registry::manifest::HookPhase) -> &'static str {
    match phase {
        hm_kernel::registry::manifest::HookPhase::Before => "before",
        hm_kernel::registry::manifest::HookPhase::After => "after",
    }
}

fn list(dirs: &PluginDirs, builtins: &[Builtin], json: bool) -> i32 {
    let registry = Registry::discover_in(dirs, builtins);
    print_warnings(&registry);
    if json {
        let doc = json!({
            "plugins": registry.bundles().iter().map(plugin_json).collect::<Vec<_>>(),
            "warnings": registry.warnings,
            "errors": registry.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        });
        outln!("{doc:#}");
    } else {
        let mut rows = vec![[
            "NAME".to_owned(),
            "VERSION".to_owned(),
            "LAYER".to_owned(),
            "STATUS".to_owned(),
            "PROVIDES".to_owned(),
            "LOCATION".to_owned(),
        ]];
        for b in registry.bundles() {
            let status = match (b.shadowed_by, b.protocol_problem()) {
                (Some(layer), _) => format!("shadowed by {layer}"),
                (None, Some(_)) => "incompatible".to_owned(),
                (None, None) => "active".to_owned(),
            };
            rows.push([
                b.manifest.name.clone(),
                b.manifest.version.clone(),
                b.layer.to_string(),
                status,
                b.manifest.capabilities.join(", "),
                b.location(),
            ]);
        }
        print_table(&rows);
    }
    errors_code(&registry)
}

fn print_table<const N: usize>(rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            if i + 1 == N {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  "));
            }
        }
        outln!("{}", line.trim_end());
    }
}

fn info(dirs: &PluginDirs, builtins: &[Builtin], name: &str, json: bool) -> i32 {
    let registry = Registry::discover_in(dirs, builtins);
    print_warnings(&registry);
    let named: Vec<&Installed> = registry.all_named(name).collect();
    // A bundle of that name that could not be read is the answer, not "no such plugin".
    let broken: Vec<String> = registry
        .errors_of(name)
        .map(|e| error_text(&e.to_string()))
        .collect();
    for error in &broken {
        errln!("{error}");
    }
    if named.is_empty() && !broken.is_empty() {
        errln!(
            "error: plugin `{}` is installed but cannot be used until its problem is fixed \
             (or it is removed with `hm plugin remove {0}`)",
            name.escape_default()
        );
        return exit::PLUGIN;
    }
    let Some(first) = named.first() else {
        let names: Vec<&str> = registry
            .active()
            .map(|b| b.manifest.name.as_str())
            .collect();
        let mut message = format!("no plugin called `{}` is installed", name.escape_default());
        if let Some(close) = hm_kernel::suggest::did_you_mean(name, names.iter().copied()) {
            message.push_str(&format!("\n  hint: did you mean `{close}`?"));
        }
        message.push_str(&format!(
            "\n  hint: installed: {}; `hm plugin install SOURCE` adds one",
            names.join(", ")
        ));
        errln!("{}", error_text(&message));
        return exit::PLUGIN;
    };
    let sha256 = |b: &Installed| {
        b.dir
            .as_ref()
            .and_then(|_| install::file_sha256(&b.program()).ok())
    };
    if json {
        let mut doc = plugin_json(first);
        doc["sha256"] = json!(sha256(first));
        doc["others"] = Value::Array(named[1..].iter().map(|b| plugin_json(b)).collect());
        outln!("{doc:#}");
    } else {
        let m = &first.manifest;
        let program = first.program();
        let executable = match (first.dir.is_some(), sha256(first)) {
            (false, _) => format!("{} (built in)", program.display()),
            (true, Some(sha)) => format!("{} (sha256 {sha})", program.display()),
            (true, None) => format!("{} (missing or unreadable)", program.display()),
        };
        let protocol = match first.protocol_problem() {
            None => format!(
                "{}..={} (hm speaks {}..={})",
                m.protocol.0,
                m.protocol.1,
                hm_ipc::PROTOCOL_MIN,
                hm_ipc::PROTOCOL_MAX
            ),
            Some(problem) => format!("{}..={}: {problem}", m.protocol.0, m.protocol.1),
        };
        let mut limits = Vec::new();
        if let Some(bytes) = m.limits.memory_bytes {
            limits.push(format!("memory {}", hm_kernel::render::format_bytes(bytes)));
        }
        if let Some(pids) = m.limits.pids {
            limits.push(format!("pids {pids}"));
        }
        if let Some(cpu) = m.limits.cpu {
            limits.push(format!("cpu {cpu}"));
        }
        let layer = match first.shadowed_by {
            None => first.layer.to_string(),
            Some(by) => format!("{} (shadowed by {by})", first.layer),
        };
        let mut rows = vec![
            ["name".to_owned(), m.name.clone()],
            ["version".to_owned(), m.version.clone()],
            ["description".to_owned(), m.description.clone()],
            ["layer".to_owned(), layer],
            ["location".to_owned(), first.location()],
            ["executable".to_owned(), executable],
            ["protocol".to_owned(), protocol],
            ["provides".to_owned(), m.capabilities.join(", ")],
            [
                "limits".to_owned(),
                if limits.is_empty() {
                    "none".to_owned()
                } else {
                    limits.join(", ")
                },
            ],
        ];
        for hook in &m.hooks {
            rows.push([
                "hook".to_owned(),
                format!(
                    "{} {} (timeout {})",
                    phase_name(hook.phase),
                    hook.event,
                    humantime::format_duration(hook.timeout)
                ),
            ]);
        }
        for sub in &m.subcommands {
            let args: Vec<String> = sub
                .args
                .iter()
                .map(|a| match a.takes_value {
                    true => format!("--{} <VALUE>", a.long),
                    false => format!("--{}", a.long),
                })
                .collect();
            rows.push([
                "subcommand".to_owned(),
                format!("hm {} {}", sub.verb, args.join(" "))
                    .trim_end()
                    .to_owned(),
            ]);
        }
        for other in &named[1..] {
            rows.push(["shadows".to_owned(), other.describe()]);
        }
        print_table(&rows);
    }
    // The plugin asked about has a problem: say it on stderr too, and exit with it.
    let incompatible = first.protocol_problem();
    if let Some(problem) = &incompatible {
        errln!("{}", error_text(problem));
    }
    if incompatible.is_some() || !broken.is_empty() {
        exit::PLUGIN
    } else {
        exit::OK
    }
}

fn install(req: &InstallRequest, builtins: &[Builtin]) -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errln!("error: failed to start the async runtime: {e}");
            return exit::ENVIRONMENT;
        }
    };
    let mut notify = |message: String| errln!("warning: {message}");
    let outcome = runtime.block_on(install::install(req, builtins, &mut notify));
    match outcome {
        Err(e) => fail(&e),
        Ok(Outcome::Installed { plugin, sha256 }) => {
            errln!(
                "installed {} {} into {} (executable sha256 {sha256})",
                plugin.manifest.name,
                plugin.manifest.version,
                plugin.location()
            );
            errln!("  provides: {}", plugin.manifest.capabilities.join(", "));
            exit::OK
        }
        Ok(Outcome::AlreadyInstalled { plugin, sha256 }) => {
            errln!(
                "{} {} is already installed in {} (executable sha256 {sha256}); nothing to do",
                plugin.manifest.name,
                plugin.manifest.version,
                plugin.location()
            );
            exit::OK
        }
        Ok(Outcome::Replaced {
            plugin,
            sha256,
            old_version,
            old_sha256,
        }) => {
            let verb = if old_version == plugin.manifest.version {
                "replaced"
            } else {
                "upgraded"
            };
            errln!(
                "{verb} {} {old_version} with {} in {} (executable sha256 {} -> {sha256})",
                plugin.manifest.name,
                plugin.manifest.version,
                plugin.location(),
                old_sha256.as_deref().unwrap_or("unknown"),
            );
            exit::OK
        }
    }
}

fn remove(name: &str, layer: Layer, dirs: &PluginDirs, builtins: &[Builtin]) -> i32 {
    let mut notify = |message: String| errln!("warning: {message}");
    match install::remove(name, layer, dirs, builtins, &mut notify) {
        Err(e) => fail(&e),
        Ok(removed) => {
            errln!(
                "removed {}{} from the {layer} layer ({})",
                removed.name,
                removed.version.map(|v| format!(" {v}")).unwrap_or_default(),
                removed.dir.display()
            );
            if let Some(now) = removed.now_in_effect {
                errln!("  now in effect: {}", now.describe());
            }
            exit::OK
        }
    }
}
