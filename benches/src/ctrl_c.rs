//! Bench `ctrl-c`: from a Ctrl-C (SIGINT to `hm`) until hm has exited and no process of the
//! run is left, less the grace period, against the target of "grace + 100 ms". No baseline: the
//! target is absolute.
//!
//! The pipeline has three steps that run at once (`-j3`): two that ignore SIGTERM, and so
//! survive the first rung of the kill ladder and are only ended by its SIGKILL at the end of
//! the grace, and one that does not. A signal ignored by `trap '' TERM` stays ignored in every
//! process the shell starts (an ignored disposition survives `exec`), so the step's `sleep`
//! survives it too. Each step prints `ready` once its trap is set; the bench waits for all three
//! `step_log` events on hm's stdout before it sends SIGINT. (`step_start` alone comes too early:
//! it is emitted once the plugin has started the shell, maybe before the shell has run `trap`,
//! and a SIGTERM then would end the step at once.)
//!
//! The processes of the run are found by a marker unique to the round in every step's
//! environment (`HM_BENCH_MARKER`): the clock stops at the first scan of `/proc`, after hm's
//! exit, that finds none of them alive. The bench checks that hm exited 130 and that the two
//! stubborn steps were ended by SIGKILL, that is, that the whole ladder ran.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::Settings;
use crate::child::{Leader, exit_failure, keep_tail};
use crate::measure::{BenchError, Outcome, Plan, Target, Unit, repeat};
use crate::procfs::{KillMarkedOnDrop, processes_with};

pub const NAME: &str = "ctrl-c";
const GRACE: Duration = Duration::from_millis(500);
/// The `--grace` argument; must say the same as [`GRACE`].
const GRACE_ARG: &str = "500ms";
/// What may pass beyond the grace.
const LIMIT: Duration = Duration::from_millis(100);
const STUBBORN: [&str; 2] = ["stubborn1", "stubborn2"];
const WILLING: &str = "willing";
/// The steps' start (hm and its plugin starting, three shells) taking longer than this is stuck.
const START_LIMIT: Duration = Duration::from_secs(30);
/// hm still running this long after the SIGINT is stuck.
const EXIT_LIMIT: Duration = Duration::from_secs(30);
/// A process of the run still alive this long after hm exited is a leak.
const LEFT_LIMIT: Duration = Duration::from_secs(5);
/// The pause between two scans of `/proc` once hm has exited.
const SCAN_PAUSE: Duration = Duration::from_millis(1);
/// hm's exit code for a cancelled run.
const CANCELLED: i32 = 130;

pub fn run(settings: &Settings) -> Result<Outcome, BenchError> {
    let (rounds, budget) = if settings.quick {
        (3, Duration::from_secs(10))
    } else {
        (9, Duration::from_secs(30))
    };
    let dir = tempfile::Builder::new()
        .prefix("hm-bench-ctrl-c-")
        .tempdir()
        .map_err(BenchError::io("failed to create a temporary directory"))?;
    let plan = Plan {
        rounds,
        budget,
        warm_up: true,
    };
    let mut round = 0;
    let over_grace = repeat(plan, || {
        round += 1;
        let elapsed = one_round(&settings.hm, dir.path(), round)?;
        Ok((elapsed.as_secs_f64() - GRACE.as_secs_f64()).max(0.0))
    })?;
    Ok(Outcome::absolute(
        NAME,
        &over_grace,
        Target::AtMost {
            limit: LIMIT.as_secs_f64(),
            unit: Unit::Seconds,
        },
        format!(
            "time from SIGINT until hm has exited and no process of the run is left, less the \
             {} ms grace; two of three steps ignore SIGTERM",
            GRACE.as_millis()
        ),
    ))
}

/// One run: start hm, wait until every step is ready, interrupt it; returns the time from the
/// SIGINT until nothing of the run was left.
fn one_round(hm: &Path, dir: &Path, round: u32) -> Result<Duration, BenchError> {
    let marker = format!(
        "hm-bench-ctrl-c-{}-{round}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    );
    let path = dir.join("hm.toml");
    std::fs::write(&path, pipeline(&marker)).map_err(BenchError::io(format!(
        "failed to write {}",
        path.display()
    )))?;
    let mut cmd = Command::new(hm);
    cmd.args(["run", "-j3", "--grace", GRACE_ARG, "--format", "json"])
        .args(["-f", "hm.toml"])
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Dropped last: whatever of the run an early return leaves behind is killed.
    let _sweep = KillMarkedOnDrop { marker: &marker };
    let mut leader = Leader::spawn(&mut cmd, "hm run")?;
    let stderr = keep_tail(leader.take_stderr());
    let (ready_tx, ready_rx) = mpsc::channel();
    let stdout = leader.take_stdout();
    let events = thread::spawn(move || read_events(stdout, ready_tx));

    match ready_rx.recv_timeout(START_LIMIT) {
        Ok(()) => {}
        Err(mpsc::RecvTimeoutError::Timeout) => {
            return Err(BenchError::TimedOut {
                what: "hm run (starting its three steps)".into(),
                limit: START_LIMIT,
            });
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // hm's stdout closed before every step was ready: it has exited, or is about to.
            let status = leader.wait_within(EXIT_LIMIT)?;
            let stderr = stderr.join().unwrap_or_default();
            return Err(exit_failure(
                "hm run (before every step was ready)",
                status,
                &stderr,
            ));
        }
    }

    let interrupted = Instant::now();
    leader.signal(libc::SIGINT)?;
    let status = leader.wait_within(EXIT_LIMIT)?;
    let exited = Instant::now();
    let elapsed = loop {
        if processes_with(&marker).is_empty() {
            break interrupted.elapsed();
        }
        if exited.elapsed() >= LEFT_LIMIT {
            return Err(BenchError::failed(
                "hm run",
                format!(
                    "processes of the run were still alive {LEFT_LIMIT:?} after hm exited \
                     (killed now)"
                ),
            ));
        }
        thread::sleep(SCAN_PAUSE);
    };

    let stderr = stderr.join().unwrap_or_default();
    if status.code() != Some(CANCELLED) {
        return Err(exit_failure(
            &format!("hm run (interrupted, expected exit code {CANCELLED})"),
            status,
            &stderr,
        ));
    }
    let signals = events.join().unwrap_or_default();
    for step in STUBBORN {
        let signal = signals.get(step).copied().flatten();
        if signal != Some(i64::from(libc::SIGKILL)) {
            return Err(BenchError::failed(
                "hm run",
                format!(
                    "step {step} ended with signal {signal:?}, not SIGKILL: it did not survive \
                     SIGTERM until the end of the grace, so the kill ladder was not exercised"
                ),
            ));
        }
    }
    if elapsed < GRACE {
        return Err(BenchError::failed(
            "hm run",
            format!("everything ended {elapsed:?} after SIGINT, within the grace"),
        ));
    }
    Ok(elapsed)
}

/// Reads hm's JSON events until its stdout closes. Sends one message on `ready` once every
/// step has logged `ready`; returns the signal each step ended with (`step_end`).
fn read_events(
    stdout: Option<ChildStdout>,
    ready: mpsc::Sender<()>,
) -> HashMap<String, Option<i64>> {
    let mut ended = HashMap::new();
    let Some(stdout) = stdout else {
        return ended;
    };
    let mut waiting: Vec<&str> = STUBBORN.iter().copied().chain([WILLING]).collect();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let step = event["step"].as_str().unwrap_or_default();
        match event["kind"].as_str() {
            Some("step_log") if event["line"] == "ready" && !waiting.is_empty() => {
                waiting.retain(|s| *s != step);
                if waiting.is_empty() {
                    let _ = ready.send(());
                }
            }
            Some("step_end") => {
                ended.insert(step.to_owned(), event["signal"].as_i64());
            }
            _ => {}
        }
    }
    ended
}

fn pipeline(marker: &str) -> String {
    let env = format!("env = {{ HM_BENCH_MARKER = \"{marker}\" }}");
    let mut text = String::from("[pipeline]\nname = \"bench-ctrl-c\"\n");
    for step in STUBBORN {
        text += &format!("\n[steps.{step}]\nrun = \"trap '' TERM; echo ready; sleep 60\"\n{env}\n");
    }
    text += &format!("\n[steps.{WILLING}]\nrun = \"echo ready; sleep 60\"\n{env}\n");
    text
}
