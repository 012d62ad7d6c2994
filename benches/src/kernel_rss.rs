//! Bench `kernel-rss-1000`: the peak resident set of the kernel process alone (not its plugins,
//! not the steps) during `hm run -j2` of 1,000 independent steps that each run `true`, against
//! the 30 MiB target. No baseline: the target is absolute.
//!
//! The bench polls `VmHWM` in `/proc/<pid>/status` of the `hm` process every few milliseconds
//! until it exits and keeps the largest value. Not `ru_maxrss` from `wait4` (or `time -f %M`):
//! a process's `ru_maxrss` as its parent sees it is the largest of its own peak and those of
//! every descendant it reaped, so a plugin (the same binary, running the steps) larger than the
//! kernel would be reported as the kernel.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::Settings;
use crate::child::{Leader, exit_failure, keep_tail};
use crate::measure::{BenchError, Outcome, Plan, Target, Unit, repeat};
use crate::procfs::peak_rss;

pub const NAME: &str = "kernel-rss-1000";
const STEPS: usize = 1000;
const LIMIT_BYTES: f64 = 30.0 * 1024.0 * 1024.0;
/// How often `VmHWM` is read. It is a high-water mark kept by the Linux kernel, so a read sees
/// every peak since the start; polling only has to catch the last value before the process
/// exits (and its address space, with the figure, goes). What grows in the last interval before
/// the exit, while hm shuts down, is missed.
const POLL: Duration = Duration::from_millis(2);
/// One run taking longer than this is stuck.
const RUN_LIMIT: Duration = Duration::from_secs(120);

pub fn run(settings: &Settings) -> Result<Outcome, BenchError> {
    let (rounds, budget) = if settings.quick {
        (2, Duration::from_secs(20))
    } else {
        (5, Duration::from_secs(60))
    };
    let dir = tempfile::Builder::new()
        .prefix("hm-bench-rss-")
        .tempdir()
        .map_err(BenchError::io("failed to create a temporary directory"))?;
    let path = dir.path().join("hm.toml");
    std::fs::write(&path, pipeline()).map_err(BenchError::io(format!(
        "failed to write {}",
        path.display()
    )))?;
    // No warm-up: a cold page cache changes how long a run takes, not how much it maps.
    let plan = Plan {
        rounds,
        budget,
        warm_up: false,
    };
    let peaks = repeat(plan, || peak_of_one_run(&settings.hm, dir.path()))?;
    Ok(Outcome::absolute(
        NAME,
        &peaks,
        Target::AtMost {
            limit: LIMIT_BYTES,
            unit: Unit::Bytes,
        },
        format!(
            "peak RSS (VmHWM, read every {} ms) of the hm process alone, per run of 1,000 steps",
            POLL.as_millis()
        ),
    ))
}

/// One `hm run` of the pipeline in `dir`; returns the kernel's peak RSS in bytes.
fn peak_of_one_run(hm: &Path, dir: &Path) -> Result<f64, BenchError> {
    let mut cmd = Command::new(hm);
    cmd.args(["run", "-j2", "--format", "json", "-f", "hm.toml"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut leader = Leader::spawn(&mut cmd, "hm run")?;
    let stderr = keep_tail(leader.take_stderr());
    let deadline = Instant::now() + RUN_LIMIT;
    let mut peak = 0u64;
    loop {
        if let Some(hwm) = peak_rss(leader.pid()) {
            peak = peak.max(hwm);
        }
        if leader.exited_within(POLL)? {
            break;
        }
        if Instant::now() >= deadline {
            leader.kill();
            return Err(BenchError::TimedOut {
                what: "hm run".into(),
                limit: RUN_LIMIT,
            });
        }
    }
    let status = leader.reap()?;
    let stderr = stderr.join().unwrap_or_default();
    if !status.success() {
        return Err(exit_failure("hm run", status, &stderr));
    }
    if peak == 0 {
        return Err(BenchError::failed(
            "hm run",
            "exited before its VmHWM could be read once",
        ));
    }
    Ok(peak as f64)
}

fn pipeline() -> String {
    let mut text = String::from("[pipeline]\nname = \"bench-rss\"\n");
    for i in 0..STEPS {
        let _ = write!(text, "\n[steps.s{i:04}]\nrun = \"true\"\n");
    }
    text
}
