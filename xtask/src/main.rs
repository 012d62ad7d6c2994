//! `cargo xtask`: the repository's automation, one binary with subcommands (the cargo-xtask
//! convention; the alias lives in `.cargo/config.toml`).
//!
//! - `cargo xtask ci`: format check, clippy and rustdoc with warnings denied, then the tests;
//!   stops at the first step that fails and names it.
//! - `cargo xtask bench [--quick] [NAME...]`: builds `hm` in release and runs the side-by-side
//!   comparisons of `benches/`, one line per bench.
//! - `cargo xtask plugin new NAME [--kind executor|hook|subcommand] [--dry-run]`: scaffolds
//!   `plugins/NAME/` and adds it to the workspace.
//! - `cargo xtask plugin install NAME [--project]`: builds `hm-plugin-NAME` and installs it with
//!   the workspace's own `hm`.
//!
//! Only the standard library: this must build even when the rest of the workspace does not.
//! The repository it works on is the one `cargo xtask` runs in, or `HM_XTASK_ROOT` when set
//! (the tests point it at a copy of the workspace).

mod cargo_toml;
mod plugin_install;
mod plugin_new;
mod workspace;

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{Command, ExitCode};

const USAGE: &str = "\
usage: cargo xtask <COMMAND> [ARGS]

commands:
  ci                      cargo fmt --check, cargo clippy -D warnings, cargo doc with
                          warnings denied, cargo test (stops at the first failure)
  bench [--quick] [NAME]  build hm in release and run the comparisons of benches/ (all of
                          them, or the NAMEs given: call-round-trip, shm-handoff,
                          shm-handoff-map, shm-vs-socket, shm-floor, shm-socket-floor,
                          cold-start, run-200-steps, steps-floor, cached-step,
                          cached-20-steps, log-throughput, log-floor, swarm-first-line,
                          kernel-rss-1000, ctrl-c); --quick runs fewer iterations and a
                          smaller log;
                          other flags go to the harness (see benches/README.md)
  plugin new NAME [--kind executor|hook|subcommand] [--dry-run]
                          create plugins/NAME/ (package hm-plugin-NAME: a working plugin of
                          that kind, its plugin.toml, a test) and add it to the workspace;
                          --dry-run lists what it would write
  plugin install NAME [--project]
                          build hm-plugin-NAME in release and install it with this
                          workspace's hm (for your user, or into the current project)
  help                    this text
";

/// Exit code for a command line that makes no sense (matches `hm`'s usage code).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(command) = args.next() else {
        eprint!("{USAGE}");
        return ExitCode::from(EXIT_USAGE);
    };
    let rest: Vec<OsString> = args.collect();
    let result = match command.to_str() {
        Some("ci") if rest.is_empty() => ci(),
        Some("ci") => {
            eprintln!("xtask ci takes no arguments\n");
            eprint!("{USAGE}");
            return ExitCode::from(EXIT_USAGE);
        }
        Some("bench") => bench(&rest),
        Some("plugin") => plugin(&rest),
        Some("help" | "-h" | "--help") => {
            print!("{USAGE}");
            Ok(())
        }
        _ => {
            eprintln!("xtask: unknown command {command:?}\n");
            eprint!("{USAGE}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("xtask: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

/// Why a subcommand stopped: what to tell the user, and the exit code.
struct Failure {
    message: String,
    code: u8,
}

impl Failure {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            code: 1,
        }
    }
}

/// One check of `cargo xtask ci`: `cargo ARGS`, with one environment variable set if given.
struct CiStep {
    name: &'static str,
    args: &'static [&'static str],
    env: Option<(&'static str, &'static str)>,
}

/// `cargo xtask ci`: the checks every commit must pass, in the order that fails fastest.
fn ci() -> Result<(), Failure> {
    let steps = [
        CiStep {
            name: "fmt",
            args: &["fmt", "--all", "--", "--check"],
            env: None,
        },
        CiStep {
            name: "clippy",
            args: &[
                "clippy",
                "--workspace",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ],
            env: None,
        },
        // `cargo doc` takes no `-D warnings` of its own: rustdoc gets it through RUSTDOCFLAGS.
        CiStep {
            name: "doc",
            args: &["doc", "--workspace", "--no-deps"],
            env: Some(("RUSTDOCFLAGS", "-D warnings")),
        },
        CiStep {
            name: "test",
            args: &["test", "--workspace"],
            env: None,
        },
    ];
    for step in steps {
        let shown_env = step
            .env
            .map_or_else(String::new, |(key, value)| format!("{key}='{value}' "));
        eprintln!(
            "xtask ci: {}: {shown_env}cargo {}",
            step.name,
            step.args.join(" ")
        );
        let mut cmd = cargo_command();
        cmd.args(step.args);
        if let Some((key, value)) = step.env {
            cmd.env(key, value);
        }
        run(cmd)
            .map_err(|e| Failure::new(format!("ci step `{}` failed: {}", step.name, e.message)))?;
    }
    eprintln!("xtask ci: all steps passed");
    Ok(())
}

/// `cargo xtask bench`: builds what the benches run, then runs them with the arguments given.
fn bench(args: &[OsString]) -> Result<(), Failure> {
    for arg in args {
        if arg == "-h" || arg == "--help" {
            print!("{USAGE}");
            return Ok(());
        }
    }
    let hm = target_dir().join("release").join("hm");
    eprintln!("xtask bench: building hm in release");
    cargo(&["build", "--release", "-p", "hm-kernel", "--bin", "hm"])
        .map_err(|e| Failure::new(format!("building hm failed: {}", e.message)))?;
    if !hm.is_file() {
        return Err(Failure::new(format!(
            "{} is missing after a successful build (is CARGO_TARGET_DIR or build.target-dir \
             pointing elsewhere?)",
            hm.display()
        )));
    }
    let mut cmd = cargo_command();
    cmd.args([
        "bench",
        "-p",
        "hm-benches",
        "--bench",
        "compare",
        "--",
        "--hm",
    ])
    .arg(&hm)
    .args(args);
    // The harness exits 2 on a bad argument and 1 when a bench could not run; pass both on.
    run(cmd).map_err(|e| Failure {
        message: format!("bench failed: {}", e.message),
        code: e.code,
    })
}

/// `cargo xtask plugin new|install ...`.
fn plugin(args: &[OsString]) -> Result<(), Failure> {
    let usage = format!("{}\n{}", plugin_new::USAGE, plugin_install::USAGE);
    match args.first().and_then(|a| a.to_str()) {
        Some("new") => plugin_new::run(&args[1..], &root()),
        Some("install") => plugin_install::run(&args[1..], &root(), &target_dir()),
        Some("help" | "-h" | "--help") => {
            print!("{usage}");
            Ok(())
        }
        Some(other) => Err(Failure {
            message: format!("unknown plugin command {other:?}\n\n{usage}"),
            code: EXIT_USAGE,
        }),
        None => Err(Failure {
            message: format!("plugin needs a command: new or install\n\n{usage}"),
            code: EXIT_USAGE,
        }),
    }
}

/// The repository root: `HM_XTASK_ROOT` if set, else the parent of this package's directory.
///
/// The package's directory comes from `CARGO_MANIFEST_DIR` as `cargo run` (the alias) sets it
/// when it starts us, before the value compiled in: cargo does not rebuild a binary when only
/// the workspace's location changed, so after a move or a copy of the workspace the compiled-in
/// path still names the old place.
fn root() -> PathBuf {
    if let Some(root) = std::env::var_os("HM_XTASK_ROOT").filter(|r| !r.is_empty()) {
        return PathBuf::from(root);
    }
    let manifest = match std::env::var_os("CARGO_MANIFEST_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")),
    };
    manifest.parent().unwrap_or(&manifest).to_path_buf()
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root().join(dir),
        _ => root().join("target"),
    }
}

/// `cargo` as the one that started us (cargo sets `CARGO` for `cargo run`), in the root.
fn cargo_command() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root());
    cmd
}

fn cargo(args: &[&str]) -> Result<(), Failure> {
    let mut cmd = cargo_command();
    cmd.args(args);
    run(cmd)
}

/// Runs a command to the end with inherited stdio; a non-zero exit is a failure with the
/// command's own exit code (so a caller's exit status keeps its meaning).
fn run(mut cmd: Command) -> Result<(), Failure> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| Failure::new(format!("could not start {shown}: {e}")))?;
    if status.success() {
        return Ok(());
    }
    let code = status
        .code()
        .and_then(|c| u8::try_from(c).ok())
        .filter(|&c| c != 0)
        .unwrap_or(1);
    Err(Failure {
        message: format!("exited with {status}"),
        code,
    })
}
