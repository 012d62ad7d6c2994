//! Benches of the step cache (docs/caching.md), each against the same work uncached:
//!
//! - `cached-step`: one step with `inputs` matching 1,000 files and a log of 10,000 lines,
//!   replayed from the cache, against one step running `true`. The hit reads every input
//!   file to compute its key and replays every line: ≤ 2×.
//! - `cached-20-steps`: 20 steps, each with `inputs`, all replayed, against the same 20 steps
//!   running `true` uncached: a hit starts no plugin and no process, so ≤ 1×.
//!
//! Both sides are `hm run --format json`, stdout to /dev/null, in one temporary project whose
//! cache is its own (`XDG_CACHE_HOME`); the warm-up run of ours stores the entries.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::Settings;
use crate::child::time_to_exit;
use crate::measure::{BenchError, Outcome, Plan, Target, interleave};

pub const ONE: &str = "cached-step";
pub const TWENTY: &str = "cached-20-steps";
const INPUT_FILES: usize = 1_000;
const LOG_LINES: usize = 10_000;
const STEPS: usize = 20;
const RUN_LIMIT: Duration = Duration::from_secs(60);

pub fn run_one(settings: &Settings) -> Result<Outcome, BenchError> {
    let dir = project()?;
    for i in 0..INPUT_FILES {
        write(
            &dir.path().join(format!("src/{:02}/f{i:04}.txt", i % 20)),
            &format!("input file {i}\n"),
        )?;
    }
    let cached = format!("[steps.cached]\nrun = \"seq {LOG_LINES}\"\ninputs = [\"src/**\"]\n");
    write(&dir.path().join("cached.toml"), &cached)?;
    write(
        &dir.path().join("true.toml"),
        "[steps.plain]\nrun = \"true\"\n",
    )?;
    compare(
        settings,
        dir.path(),
        ONE,
        Target::TimeAtMost(2.0),
        "per run of one step",
    )
}

pub fn run_twenty(settings: &Settings) -> Result<Outcome, BenchError> {
    let dir = project()?;
    let mut cached = String::new();
    let mut plain = String::new();
    for i in 0..STEPS {
        write(&dir.path().join(format!("in/{i}.txt")), &format!("{i}\n"))?;
        let _ = write!(
            cached,
            "\n[steps.s{i:02}]\nrun = \"true\"\ninputs = [\"in/{i}.txt\"]\n"
        );
        let _ = write!(plain, "\n[steps.s{i:02}]\nrun = \"true\"\n");
    }
    write(&dir.path().join("cached.toml"), &cached)?;
    write(&dir.path().join("true.toml"), &plain)?;
    compare(
        settings,
        dir.path(),
        TWENTY,
        Target::TimeAtMost(1.0),
        "per run of 20 steps",
    )
}

fn project() -> Result<tempfile::TempDir, BenchError> {
    tempfile::Builder::new()
        .prefix("hm-bench-cache-")
        .tempdir()
        .map_err(BenchError::io("failed to create a temporary directory"))
}

fn compare(
    settings: &Settings,
    dir: &Path,
    name: &'static str,
    target: Target,
    unit: &str,
) -> Result<Outcome, BenchError> {
    let (rounds, budget) = if settings.quick {
        (3, Duration::from_secs(10))
    } else {
        (9, Duration::from_secs(60))
    };
    let plan = Plan {
        rounds,
        budget,
        warm_up: true,
    };
    let hm = |file: &str| {
        let mut cmd = Command::new(&settings.hm);
        cmd.args(["run", "-j2", "--format", "json", "-f", file])
            .current_dir(dir)
            .env("XDG_CACHE_HOME", dir.join("cache"))
            .stdout(Stdio::null());
        cmd
    };
    let samples = interleave(
        plan,
        || time_to_exit(&mut hm("cached.toml"), RUN_LIMIT, "hm run (cached)"),
        || time_to_exit(&mut hm("true.toml"), RUN_LIMIT, "hm run (uncached)"),
    )?;
    Ok(Outcome::new(name, &samples, target, unit))
}

fn write(path: &Path, text: &str) -> Result<(), BenchError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(BenchError::io(format!(
            "failed to create {}",
            parent.display()
        )))?;
    }
    std::fs::write(path, text).map_err(BenchError::io(format!(
        "failed to write {}",
        path.display()
    )))
}
