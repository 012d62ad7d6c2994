//! Bench `swarm-first-line`: how long a swarm step takes from its start to its first log line,
//! against `docker run` of the same image printing the same line (target ≤ 2×, benches/README.md;
//! the swarm executor is described in docs/cluster.md).
//!
//! The swarm is the test suite's fixture (`hm_tests::swarm::Swarm`): two nodes, each a private
//! dockerd in a network namespace of its own, node 0 the manager. The image is the suite's
//! busybox image (`hm_tests::docker::import_busybox`), imported into the host's daemon under a
//! tag unique to this process and copied into every node (`Swarm::load_image`; nodes cannot
//! pull). Both sides run `SCRIPT` and are timed to the moment the bench reads `first`:
//!
//! - **Ours**: `hm run --format json` of a one-step pipeline, `executor = "swarm"`, with
//!   `DOCKER_HOST` at the manager's socket; the task goes wherever the manager places it. The
//!   clock runs from the bench reading the step's `step_start` event to it reading the step's
//!   first `step_log` on stdout (the executor's own `hm: running on node` note on stderr comes
//!   earlier and is not the step's output), both read from hm's stdout as they arrive. It
//!   covers the service's creation, the task's scheduling and start, and the line's way back
//!   through the log stream, the plugin and the kernel; not hm's own start.
//! - **Baseline**: `docker run --rm <image> sh -c SCRIPT` against the manager's daemon, timed
//!   from just before the spawn to the bench reading `first` on its stdout.
//!
//! The step goes on after its first line (`sleep 1`), so the line has to come through the
//! live log stream, as a long step's would, not from the final read at the task's end.
//!
//! When this machine cannot have a swarm (not root, no Docker, no busybox, no namespaces) the
//! bench is skipped with the reason. The swarm, the image on the host and the temporary
//! project are removed however the bench ends.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use hm_tests::swarm::Swarm;

use crate::Settings;
use crate::child::{Leader, exit_failure, keep_tail};
use crate::measure::{BenchError, Outcome, Plan, Target, interleave};

pub const NAME: &str = "swarm-first-line";
/// The swarm's size: a manager and a worker, so the manager really places the task.
const NODES: usize = 2;
/// What both sides run in the image.
const SCRIPT: &str = "echo first; sleep 1";
/// The line both sides are timed to.
const FIRST: &str = "first";
const STEP: &str = "first";
/// One `hm run` or `docker run` taking longer than this is stuck (a service's task normally
/// runs within seconds).
const RUN_LIMIT: Duration = Duration::from_secs(120);
/// The prefix of the note the swarm executor writes on the step's stderr once its task runs.
const RUNNING_ON: &str = "hm: running on node ";

pub fn run(settings: &Settings) -> Result<Outcome, BenchError> {
    let (rounds, budget) = if settings.quick {
        (3, Duration::from_secs(20))
    } else {
        (9, Duration::from_secs(90))
    };
    if let Some(reason) = hm_tests::docker::unavailable_reason() {
        return Err(BenchError::skipped(reason));
    }
    if let Some(reason) = hm_tests::swarm::unavailable_reason() {
        return Err(BenchError::skipped(reason));
    }
    let image = HostImage::import()?;
    // Declared after the image, so dropped before it: the nodes go first, then the host's copy.
    let swarm = match unwind("starting the swarm", || Swarm::start(NAME, NODES))? {
        Some(swarm) => swarm,
        None => return Err(BenchError::skipped("the swarm fixture cannot run here")),
    };
    unwind("loading the image into the swarm", || {
        swarm.load_image(&image.reference);
    })?;
    let dir = tempfile::Builder::new()
        .prefix("hm-bench-swarm-")
        .tempdir()
        .map_err(BenchError::io("failed to create a temporary directory"))?;
    let path = dir.path().join("hm.toml");
    let pipeline = pipeline(&image.reference, &swarm.host_address().to_string());
    std::fs::write(&path, pipeline).map_err(BenchError::io(format!(
        "failed to write {}",
        path.display()
    )))?;

    let plan = Plan {
        rounds,
        budget,
        warm_up: true,
    };
    let mut nodes = BTreeMap::<String, usize>::new();
    let samples = interleave(
        plan,
        || {
            let (elapsed, node) = hm_round(settings, dir.path(), &swarm.docker_host())?;
            *nodes.entry(node).or_default() += 1;
            Ok(elapsed)
        },
        || docker_run_round(&swarm, &image.reference),
    )?;
    let placed: Vec<String> = nodes
        .iter()
        .map(|(node, count)| format!("{node} ×{count}"))
        .collect();
    Ok(Outcome::new(
        NAME,
        &samples,
        Target::TimeAtMost(2.0),
        format!(
            "from step_start to the step's first stdout line (hm), from spawn to the first \
             stdout line (docker run on the manager); {NODES}-node swarm, tasks ran on {} \
             (warm-up included)",
            placed.join(", ")
        ),
    ))
}

/// One `hm run`: the time from `step_start` to the step's first line, and the node the task
/// ran on.
fn hm_round(
    settings: &Settings,
    dir: &Path,
    docker_host: &str,
) -> Result<(Duration, String), BenchError> {
    let mut cmd = Command::new(&settings.hm);
    cmd.args(["run", "--format", "json", "-f", "hm.toml"])
        .current_dir(dir)
        .env("DOCKER_HOST", docker_host)
        .env_remove("DOCKER_CONTEXT")
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut leader = Leader::spawn(&mut cmd, "hm run")?;
    let stderr = keep_tail(leader.take_stderr());
    let stdout = leader.take_stdout();
    let events = thread::spawn(move || read_events(stdout));
    let status = leader.wait_within(RUN_LIMIT)?;
    let stderr = stderr.join().unwrap_or_default();
    if !status.success() {
        return Err(exit_failure("hm run (the swarm step)", status, &stderr));
    }
    let seen = events.join().unwrap_or_default();
    let (Some(start), Some(first)) = (seen.start, seen.first) else {
        return Err(BenchError::failed(
            "hm run",
            format!(
                "no step_start followed by a step_log {FIRST:?} on stdout for step {STEP} \
                 (step_start seen: {}, first stdout line: {:?})",
                seen.start.is_some(),
                seen.first_line
            ),
        ));
    };
    Ok((
        first.saturating_duration_since(start),
        seen.node.unwrap_or_else(|| "an unnamed node".into()),
    ))
}

/// What the bench read of one run's events, with the moment it read them.
#[derive(Debug, Default)]
struct Seen {
    start: Option<Instant>,
    first: Option<Instant>,
    /// The step's first stdout line, to explain a run that did not print [`FIRST`] first.
    first_line: Option<String>,
    node: Option<String>,
}

/// Reads hm's JSON events until its stdout closes, stamping each as it is read.
fn read_events(stdout: Option<impl Read>) -> Seen {
    let mut seen = Seen::default();
    let Some(stdout) = stdout else {
        return seen;
    };
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let now = Instant::now();
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if event["step"] != STEP {
            continue;
        }
        match event["kind"].as_str() {
            Some("step_start") if seen.start.is_none() => seen.start = Some(now),
            Some("step_log") if event["stream"] == "stdout" && seen.first_line.is_none() => {
                let text = event["line"].as_str().unwrap_or_default();
                if text == FIRST && seen.start.is_some() {
                    seen.first = Some(now);
                }
                seen.first_line = Some(text.to_owned());
            }
            // The node the step ran on: its `step_end` says so; older builds only wrote the
            // executor's note on the step's stderr.
            Some("step_end") => {
                if let Some(node) = event["node"].as_str() {
                    seen.node = Some(node.to_owned());
                }
            }
            Some("step_log") if event["stream"] == "stderr" && seen.node.is_none() => {
                if let Some(node) = event["line"]
                    .as_str()
                    .and_then(|l| l.strip_prefix(RUNNING_ON))
                {
                    seen.node = Some(node.to_owned());
                }
            }
            _ => {}
        }
    }
    seen
}

/// One `docker run --rm` on the manager's daemon: the time from just before the spawn to the
/// first line read from its stdout.
fn docker_run_round(swarm: &Swarm, image: &str) -> Result<Duration, BenchError> {
    let mut cmd = swarm
        .manager()
        .docker_command(&["run", "--rm", image, "sh", "-c", SCRIPT]);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut leader = Leader::spawn(&mut cmd, "docker run")?;
    let stderr = keep_tail(leader.take_stderr());
    let stdout = leader.take_stdout();
    let first = thread::spawn(move || {
        let mut out = BufReader::new(stdout?);
        let mut line = String::new();
        let read = out.read_line(&mut line).ok()?;
        let now = Instant::now();
        // Read on to the end, so that nothing ever blocks on a full pipe.
        let _ = std::io::copy(&mut out, &mut std::io::sink());
        (read > 0).then_some((now, line))
    });
    let status = leader.wait_within(RUN_LIMIT)?;
    let stderr = stderr.join().unwrap_or_default();
    if !status.success() {
        return Err(exit_failure("docker run on the manager", status, &stderr));
    }
    match first.join().ok().flatten() {
        Some((at, line)) if line.trim_end() == FIRST => Ok(at.saturating_duration_since(start)),
        other => Err(BenchError::failed(
            "docker run on the manager",
            format!(
                "its first stdout line was {:?}, not {FIRST:?}",
                other.map(|(_, line)| line)
            ),
        )),
    }
}

/// The one-step pipeline; the plugin serves the task its workspace on `serve`, the host's
/// address on the swarm's bridge.
fn pipeline(image: &str, serve: &str) -> String {
    format!(
        "[pipeline]\nname = \"bench-swarm-first-line\"\n\n[plugins.swarm]\nconfig = {{ \
         serve = \"{serve}\" }}\n\n[steps.{STEP}]\nexecutor = \"swarm\"\nimage = \
         \"{image}\"\nrun = \"{SCRIPT}\"\n"
    )
}

/// The busybox image in the host's daemon, removed when dropped.
struct HostImage {
    reference: String,
}

impl HostImage {
    fn import() -> Result<Self, BenchError> {
        let image = Self {
            reference: format!("hm-bench-busybox:p{}", std::process::id()),
        };
        unwind("importing the busybox image into the host's daemon", || {
            hm_tests::docker::import_busybox(&image.reference, NAME);
        })?;
        Ok(image)
    }
}

impl Drop for HostImage {
    fn drop(&mut self) {
        let _ = hm_tests::docker::docker_quiet(&["rmi", "-f", &self.reference]);
    }
}

/// Runs `f`, turning a panic of the test fixtures (which fail a test by panicking) into an
/// error of this bench: the other benches still run, and whatever the fixture made so far is
/// removed by its drop during the unwind.
fn unwind<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, BenchError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        let detail = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "the fixture panicked".into());
        BenchError::failed(what, detail)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_runs_from_step_start_to_the_first_stdout_line() {
        let events = [
            r#"{"kind":"build_start"}"#,
            r#"{"kind":"step_start","step":"first"}"#,
            r#"{"kind":"step_log","step":"first","stream":"stderr","line":"hm: running on node node-1"}"#,
            r#"{"kind":"step_log","step":"first","stream":"stdout","line":"first"}"#,
            r#"{"kind":"step_log","step":"first","stream":"stdout","line":"second"}"#,
            r#"{"kind":"step_end","step":"first","status":"passed","node":"node-1"}"#,
        ]
        .join("\n");
        let seen = read_events(Some(events.as_bytes()));
        assert!(seen.start.is_some() && seen.first.is_some());
        assert!(seen.first >= seen.start);
        assert_eq!(seen.first_line.as_deref(), Some("first"));
        assert_eq!(seen.node.as_deref(), Some("node-1"));
    }

    #[test]
    fn another_first_line_stops_no_clock() {
        let events = [
            r#"{"kind":"step_start","step":"first"}"#,
            r#"{"kind":"step_log","step":"first","stream":"stdout","line":"oops"}"#,
            r#"{"kind":"step_log","step":"first","stream":"stdout","line":"first"}"#,
        ]
        .join("\n");
        let seen = read_events(Some(events.as_bytes()));
        assert!(seen.first.is_none());
        assert_eq!(seen.first_line.as_deref(), Some("oops"));
    }
}
