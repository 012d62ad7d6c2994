//! Bench `log-throughput`: one step writing 1 GiB (256 MiB with `--quick`) of 100-byte lines
//! to stdout, through `hm run`, against the same writer piped to `cat >/dev/null`.
//!
//! The writer is `yes <99 x> | head -c SIZE`: `yes` fills large buffers with the line, so it
//! produces lines far faster than either side consumes them. Ours: `hm run --format json`
//! of a one-step pipeline whose `run` is the writer, stdout to /dev/null: every line travels
//! step pipe → shell plugin (split into lines, batched) → hm-ipc `LogBatch` frames → kernel
//! (validated, one `step_log` JSON event per line) → /dev/null. Baseline:
//! `sh -c '<writer> | cat >/dev/null'`. The ratio is a throughput: baseline time / our time.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::Settings;
use crate::child::time_to_exit;
use crate::measure::{BenchError, Outcome, Plan, Target, interleave};

pub const NAME: &str = "log-throughput";
const MIB: u64 = 1024 * 1024;
/// Bytes of each line, newline included.
pub(crate) const LINE: usize = 100;

/// How much a run writes and how long it may take.
pub(crate) struct Shape {
    pub bytes: u64,
    pub rounds: usize,
    pub budget: Duration,
    /// The most one run may take: generous, a run slower than 5 MiB/s is broken, not slow.
    pub limit: Duration,
}

impl Shape {
    pub(crate) fn of(settings: &Settings) -> Self {
        let (bytes, rounds, budget) = if settings.quick {
            (256 * MIB, 3, Duration::from_secs(30))
        } else {
            (1024 * MIB, 3, Duration::from_secs(120))
        };
        Self {
            bytes,
            rounds,
            budget,
            limit: Duration::from_secs(60 + bytes / (5 * MIB)),
        }
    }

    /// The step's command: `bytes` of [`LINE`]-byte lines on stdout.
    pub(crate) fn writer(&self) -> String {
        format!("yes {} | head -c {}", "x".repeat(LINE - 1), self.bytes)
    }

    /// What the results are per.
    pub(crate) fn unit(&self) -> String {
        format!("per {} MiB of {LINE}-byte lines", self.bytes / MIB)
    }

    /// The baseline: the writer piped to `cat >/dev/null`, run in `dir`.
    pub(crate) fn time_pipe(&self, dir: &Path) -> Result<Duration, BenchError> {
        let mut sh = Command::new("/bin/sh");
        sh.arg("-c")
            .arg(format!("{} | cat >/dev/null", self.writer()));
        sh.current_dir(dir).stdout(Stdio::null());
        time_to_exit(&mut sh, self.limit, "the writer piped to cat")
    }
}

pub fn run(settings: &Settings) -> Result<Outcome, BenchError> {
    let shape = Shape::of(settings);
    let dir = tempfile::Builder::new()
        .prefix("hm-bench-log-")
        .tempdir()
        .map_err(BenchError::io("failed to create a temporary directory"))?;
    write(
        &dir.path().join("hm.toml"),
        &format!(
            "[pipeline]\nname = \"bench-log\"\n\n[steps.write]\nrun = \"{}\"\n",
            shape.writer()
        ),
    )?;
    // No warm-up: it would cost a whole extra run of each side, and what a warm-up saves
    // (loading the programs) is noise next to seconds of streaming.
    let plan = Plan {
        rounds: shape.rounds,
        budget: shape.budget,
        warm_up: false,
    };
    let samples = interleave(
        plan,
        || {
            let mut hm = Command::new(&settings.hm);
            hm.args(["run", "--format", "json", "-f", "hm.toml"]);
            hm.current_dir(dir.path()).stdout(Stdio::null());
            time_to_exit(&mut hm, shape.limit, "hm run")
        },
        || shape.time_pipe(dir.path()),
    )?;
    Ok(Outcome::new(
        NAME,
        &samples,
        Target::ThroughputAtLeast(0.8),
        shape.unit(),
    ))
}

fn write(path: &Path, text: &str) -> Result<(), BenchError> {
    std::fs::write(path, text).map_err(BenchError::io(format!(
        "failed to write {}",
        path.display()
    )))
}
