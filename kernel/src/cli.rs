//! The command line (`docs/exit-codes.md`): argument parsing, each command mapped to its exit
//! code, and everything `hm` prints of its own. The library returns values and errors; this is
//! the only place that turns them into text on stdout and stderr.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use hm_kernel::exit;
use hm_kernel::registry::Builtin;

/// `println!` that takes a closed stdout (`hm plugin list | head`) as the end of the output
/// rather than a panic.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::print_out(&format!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` that takes a closed stderr as nobody listening rather than a panic.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::cli::print_err(&format!("{}\n", format_args!($($arg)*)))
    };
}

mod cache;
mod doctor;
mod plugin;
mod run;
mod verb;

use plugin::PluginCommand;

#[derive(Debug, Parser)]
#[command(
    name = "hm",
    version,
    about = "A crash-isolated pipeline runner",
    disable_help_subcommand = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the pipeline (or the named steps and everything they need).
    Run(RunArgs),
    /// Check the pipeline file and report every problem.
    Validate {
        /// The pipeline file (default: hm.toml here or in a parent directory).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
    },
    /// Show the version, the protocol range and the isolation level.
    Version,
    /// Check what this machine offers hm: isolation, Docker, plugin directories.
    Doctor,
    /// List, inspect, install and remove plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// List, show and remove the cached results of steps with `inputs`.
    #[command(subcommand)]
    Cache(cache::CacheCommand),
}

/// `hm run` arguments.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Run only these steps and what they need.
    #[arg(value_name = "STEP")]
    pub steps: Vec<String>,
    /// The pipeline file (default: hm.toml here or in a parent directory).
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// How many steps may run at once (default: the pipeline's `parallelism`, else CPUs).
    #[arg(short = 'j', long = "jobs", value_parser = clap::value_parser!(u32).range(1..))]
    pub jobs: Option<u32>,
    /// Keep going after a failure: independent branches finish.
    #[arg(short = 'k', long = "keep-going")]
    pub keep_going: bool,
    /// Output format (github is the default when GITHUB_ACTIONS=true).
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// Stream every log line, even on a terminal.
    #[arg(long)]
    pub logs: bool,
    /// Print the plan and run nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Set an environment variable for every step (wins over the file).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// Deadline for the whole run (e.g. 90s, 5m, 1h30m); overrides the pipeline's.
    #[arg(long, value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// How long a cancelled step gets to stop before it is killed.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub grace: Duration,
    /// Compare with this branch, tag or commit for `if = { changed = [...] }` (default:
    /// HM_SINCE, else the merge base with origin/HEAD, main or master).
    #[arg(long, value_name = "REF")]
    pub since: Option<String>,
    /// Values of secrets (`env = { X = { secret = "NAME" } }`), one NAME=value a line; over
    /// hm's environment.
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// Run every step with `inputs` instead of replaying its cached result (what passes is
    /// still stored).
    #[arg(long)]
    pub no_cache: bool,
    /// Fail (exit 4) instead of running without cgroup isolation.
    #[arg(long)]
    pub require_isolation: bool,
    /// No colours (also: NO_COLOR).
    #[arg(long)]
    pub no_color: bool,
    /// Do not start plugin NAME: wait on the socket SOCKET for it to be started by hand (under
    /// a debugger, say) with HM_IPC_SOCKET=SOCKET.
    #[arg(long, value_name = "NAME=SOCKET", value_parser = parse_attach)]
    pub attach: Vec<(String, PathBuf)>,
}

/// `--format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    /// Live view on a terminal, plain `[step] line` streaming otherwise; on stderr.
    Human,
    /// One JSON object per event and line, on stdout.
    Json,
    /// GitHub Actions workflow commands (`::group::`, `::error::`), on stdout.
    Github,
}

fn parse_attach(text: &str) -> Result<(String, PathBuf), String> {
    hm_kernel::supervisor::attach::parse_attach(text).map_err(|e| e.to_string())
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    let valid = !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(format!("{key:?} is not a valid environment variable name"));
    }
    Ok((key.to_owned(), value.to_owned()))
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (examples: 90s, 5m, 1h30m)"))
}

/// Runs the command line and returns the process exit code.
pub fn main(builtins: &[Builtin]) -> i32 {
    let diagnostics = install_tracing();
    // Plugin verbs come from the manifests, so `hm --help` lists them without starting anything.
    let verbs = std::env::current_dir()
        .map(|cwd| hm_kernel::verbs::discover(&cwd, builtins))
        .unwrap_or_default();
    let mut command = verb::augment(Cli::command(), &verbs);
    let parsed = command
        .try_get_matches_from_mut(std::env::args_os())
        .and_then(|matches| {
            if let Some((name, sub)) = matches.subcommand()
                && let Some(found) = verbs.iter().find(|v| v.spec.verb == name)
            {
                return Ok(Err((found, verb::args_json(&found.spec, sub))));
            }
            Cli::from_arg_matches(&matches).map(Ok)
        });
    let cli = match parsed {
        Ok(Ok(cli)) => cli,
        Ok(Err((found, args))) => return verb::run(found, args),
        Err(e) => {
            if e.kind() == clap::error::ErrorKind::InvalidSubcommand
                && let Some(clap::error::ContextValue::String(name)) =
                    e.get(clap::error::ContextKind::InvalidSubcommand)
                && std::env::args().nth(1).as_deref() == Some(name.as_str())
            {
                errln!("{}", verb::unknown_verb(name, &verbs));
                return exit::USAGE;
            }
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    exit::OK
                }
                _ => exit::USAGE,
            };
        }
    };
    match cli.command {
        Command::Run(args) => {
            let color =
                hm_kernel::render::color_enabled(args.no_color, std::io::stderr().is_terminal());
            diagnostics.set_color(color);
            run::run(args, builtins, color)
        }
        Command::Validate { file } => run::validate(file, builtins),
        Command::Version => {
            let detected = hm_kernel::launch::detect_isolation();
            let reason = detected
                .reason
                .map(|reason| format!(" ({reason})"))
                .unwrap_or_default();
            let out = format!(
                "hm {}\nprotocol {}..={}\nisolation {}{reason}\n",
                env!("CARGO_PKG_VERSION"),
                hm_ipc::PROTOCOL_MIN,
                hm_ipc::PROTOCOL_MAX,
                hm_kernel::launch::isolation_name(detected.level),
            );
            print_out(&out);
            exit::OK
        }
        Command::Doctor => doctor::doctor(builtins),
        Command::Plugin(command) => plugin::run(command, builtins),
        Command::Cache(command) => cache::run(command),
    }
}

/// Writes `text` to stdout. A reader that went away (`hm doctor | head`) is not an error: hm
/// stops writing and exits as it would have.
pub fn print_out(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

/// Writes `text` to stderr; a closed stderr is nobody listening, not an error.
pub fn print_err(text: &str) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
}

/// A message for stderr: its first line and every other unindented line prefixed with
/// `error: `; indented lines (hints, lists) and positioned diagnostics (`file:1:2: error: ...`,
/// which say it already) as they are.
pub fn error_text(message: &str) -> String {
    message
        .lines()
        .map(|line| {
            if line.starts_with(' ') || hm_kernel::toml_check::is_diagnostic_line(line) {
                line.to_owned()
            } else {
                format!("error: {line}")
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Diagnostics of hm itself go to stderr, filtered by `HM_LOG` (default: warnings), coloured
/// only when stderr is a terminal and `NO_COLOR` is not set; `--no-color` turns colour off
/// once the command line is parsed (messages before that are about the command line itself).
fn install_tracing() -> Diagnostics {
    use tracing_subscriber::prelude::*;
    let filter = tracing_subscriber::EnvFilter::try_from_env("HM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let color = hm_kernel::render::color_enabled(false, std::io::stderr().is_terminal());
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .without_time()
        .with_target(false)
        .with_ansi(color);
    let (layer, handle) = tracing_subscriber::reload::Layer::new(layer);
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .try_init()
        .is_ok();
    Diagnostics {
        set_ansi: installed.then(|| {
            Box::new(move |ansi: bool| {
                let _ = handle.modify(|layer| layer.set_ansi(ansi));
            }) as Box<dyn Fn(bool)>
        }),
    }
}

/// hm's own diagnostics, as installed by [`install_tracing`].
struct Diagnostics {
    set_ansi: Option<Box<dyn Fn(bool)>>,
}

impl Diagnostics {
    fn set_color(&self, color: bool) {
        if let Some(set_ansi) = &self.set_ansi {
            set_ansi(color);
        }
    }
}
