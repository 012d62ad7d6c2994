//! `cargo xtask plugin install NAME [--project]`: builds the workspace's plugin package
//! `hm-plugin-NAME` in release and installs its executable with the workspace's own `hm`
//! (`hm plugin install PATH`, which reads the manifest by running it with `--hm-manifest`,
//! probes it and puts the bundle in place). `--project` goes through to `hm`, which then
//! installs into the `.hm/plugins/` of the project around the current directory.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use crate::{EXIT_USAGE, Failure};

pub const USAGE: &str = "\
usage: cargo xtask plugin install NAME [--project]

Builds the package hm-plugin-NAME of this workspace in release and installs it with this
workspace's hm (built first): into $XDG_DATA_HOME/hm/plugins/, or with --project into the
.hm/plugins/ of the project (hm.toml) around the current directory.
";

struct Options {
    name: String,
    project: bool,
}

pub fn run(args: &[OsString], root: &Path, target_dir: &Path) -> Result<(), Failure> {
    let Some(options) = parse(args)? else {
        print!("{USAGE}");
        return Ok(());
    };
    let package = format!("hm-plugin-{}", options.name);
    check_package(root, &package, &options.name)?;

    eprintln!("xtask plugin install: building {package} in release");
    let mut build = crate::cargo_command();
    build.args(["build", "--release", "-p", &package]);
    crate::run(build)
        .map_err(|e| Failure::new(format!("building {package} failed: {}", e.message)))?;
    let executable = target_dir.join("release").join(&package);
    if !executable.is_file() {
        return Err(Failure::new(format!(
            "{} is missing after a successful build: the package needs a [[bin]] called \
             {package} (or CARGO_TARGET_DIR / build.target-dir points elsewhere)",
            executable.display()
        )));
    }

    eprintln!("xtask plugin install: building hm");
    let mut build = crate::cargo_command();
    build.args(["build", "-p", "hm-kernel", "--bin", "hm"]);
    crate::run(build).map_err(|e| Failure::new(format!("building hm failed: {}", e.message)))?;
    let hm = target_dir.join("debug").join("hm");
    if !hm.is_file() {
        return Err(Failure::new(format!(
            "{} is missing after a successful build (is build.target-dir pointing elsewhere?)",
            hm.display()
        )));
    }

    // In the caller's directory, not the workspace root: that is where `--project` looks for
    // the project.
    let mut install = Command::new(&hm);
    install.args(["plugin", "install"]);
    if options.project {
        install.arg("--project");
    }
    install.arg(&executable);
    eprintln!(
        "xtask plugin install: {} plugin install{} {}",
        hm.display(),
        if options.project { " --project" } else { "" },
        executable.display()
    );
    // hm's exit code (2 usage, 5 plugin problem) is passed on; hm has said what went wrong.
    crate::run(install).map_err(|e| Failure {
        message: format!("hm plugin install failed ({})", e.message),
        code: e.code,
    })
}

/// The options, or `None` for `--help`.
fn parse(args: &[OsString]) -> Result<Option<Options>, Failure> {
    let usage = |message: String| Failure {
        message: format!("{message}\n\n{USAGE}"),
        code: EXIT_USAGE,
    };
    let mut name = None;
    let mut project = false;
    for arg in args {
        let Some(arg) = arg.to_str() else {
            return Err(usage(format!("{arg:?} is not UTF-8")));
        };
        match arg {
            "-h" | "--help" => return Ok(None),
            "--project" => project = true,
            _ if arg.starts_with('-') => return Err(usage(format!("unknown option {arg:?}"))),
            _ if name.is_some() => {
                return Err(usage(format!("one NAME only, got a second: {arg:?}")));
            }
            _ => name = Some(arg.to_owned()),
        }
    }
    match name {
        Some(name) => Ok(Some(Options { name, project })),
        None => Err(usage("the plugin's NAME is missing".into())),
    }
}

/// Fails unless the workspace has the package, naming the plugin packages it does have.
fn check_package(root: &Path, package: &str, name: &str) -> Result<(), Failure> {
    let cargo_toml = root.join("Cargo.toml");
    let text = std::fs::read_to_string(&cargo_toml)
        .map_err(|e| Failure::new(format!("cannot read {}: {e}", cargo_toml.display())))?;
    let packages = crate::workspace::packages(root, &text);
    if packages.iter().any(|p| p.name == package) {
        return Ok(());
    }
    let plugins: Vec<&str> = packages
        .iter()
        .filter_map(|p| p.name.strip_prefix("hm-plugin-"))
        .collect();
    let have = if plugins.is_empty() {
        "it has no plugin packages".to_owned()
    } else {
        format!("its plugins are: {}", plugins.join(", "))
    };
    let create = match crate::plugin_new::check_name(name) {
        Ok(()) => format!("; create one with `cargo xtask plugin new {name}`"),
        Err(_) => String::new(),
    };
    Err(Failure {
        message: format!(
            "the workspace at {} has no package {package} ({have}){create}",
            root.display()
        ),
        code: EXIT_USAGE,
    })
}
