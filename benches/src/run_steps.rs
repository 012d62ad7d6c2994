//! Bench `run-200-steps`: `hm run -j2` of 200 independent steps that each run `true`, against
//! `make -j2` of 200 phony targets that each run `true`, in the same temporary directory.
//!
//! Ours: `hm run -j2 --format json -f hm.toml`, stdout to /dev/null; the run's whole life
//! (parse, plugin start, 200 `ExecuteStep` calls each running `sh -e -c true`, shutdown).
//! Baseline: `make -j2 -f Makefile`, stdout to /dev/null. GNU make execs a command without
//! shell metacharacters directly; hm's shell executor runs `sh -e -c true`, but `true` is a
//! builtin of `sh` (dash), so both start one process per step. (Forcing make through `sh`
//! with `true;` changes its time by a few percent: see README.md.)

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::Settings;
use crate::child::time_to_exit;
use crate::measure::{BenchError, Outcome, Plan, Target, interleave};

pub const NAME: &str = "run-200-steps";
pub(crate) const STEPS: usize = 200;
const JOBS: &str = "-j2";
/// One run of either side taking longer than this is stuck.
const RUN_LIMIT: Duration = Duration::from_secs(60);

pub fn run(settings: &Settings) -> Result<Outcome, BenchError> {
    let (rounds, budget) = if settings.quick {
        (3, Duration::from_secs(10))
    } else {
        (9, Duration::from_secs(60))
    };
    let dir = tempfile::Builder::new()
        .prefix("hm-bench-steps-")
        .tempdir()
        .map_err(BenchError::io("failed to create a temporary directory"))?;
    write(&dir.path().join("hm.toml"), &pipeline())?;
    write(&dir.path().join("Makefile"), &makefile())?;
    let plan = Plan {
        rounds,
        budget,
        warm_up: true,
    };
    let samples = interleave(
        plan,
        || {
            let mut hm = Command::new(&settings.hm);
            hm.args(["run", JOBS, "--format", "json", "-f", "hm.toml"]);
            hm.current_dir(dir.path()).stdout(Stdio::null());
            time_to_exit(&mut hm, RUN_LIMIT, "hm run")
        },
        || time_make(dir.path()),
    )?;
    Ok(Outcome::new(
        NAME,
        &samples,
        Target::TimeAtMost(1.2),
        "per run of 200 steps",
    ))
}

/// The baseline of this bench and of `steps-floor`: `make -j2 -f Makefile` in `dir` (written
/// from [`makefile`]), stdout to /dev/null.
pub(crate) fn time_make(dir: &Path) -> Result<Duration, BenchError> {
    let mut make = Command::new("make");
    make.args([JOBS, "-f", "Makefile"])
        .current_dir(dir)
        .stdout(Stdio::null());
    time_to_exit(&mut make, RUN_LIMIT, "make (is GNU make installed?)")
}

fn write(path: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(BenchError::io(format!(
        "failed to write {}",
        path.display()
    )))
}

fn step_name(i: usize) -> String {
    format!("s{i:03}")
}

fn pipeline() -> String {
    let mut text = String::from("[pipeline]\nname = \"bench-steps\"\n");
    for i in 0..STEPS {
        let _ = write!(text, "\n[steps.{}]\nrun = \"true\"\n", step_name(i));
    }
    text
}

pub(crate) fn makefile() -> String {
    let targets: Vec<String> = (0..STEPS).map(step_name).collect();
    let targets = targets.join(" ");
    let mut text = format!(".PHONY: all {targets}\nall: {targets}\n");
    for i in 0..STEPS {
        let _ = write!(text, "{}:\n\t@true\n", step_name(i));
    }
    text
}
