//! Bench `steps-floor`: the least any runner can spend on the cgroup v1 work that hm's per-step
//! isolation needs, for the 200 steps of `run-200-steps`, against the same `make -j2`.
//!
//! Not a target of its own: it tells how much of `run-200-steps`'s target is left for hm once
//! the kernel's cgroup work is paid. Ours is a loop in this process with no IPC, no events and
//! no scheduling, two threads taking steps from one counter (`-j2`). Per step, what a step's
//! limits, accounting and kill need on v1 and nothing else:
//!
//! 1. a leaf in the memory (limit, peak), cpuacct (CPU time) and freezer (kill of the whole
//!    tree) hierarchies: three `mkdir`s below a run cgroup made the way `hm run` makes it;
//! 2. the thread moves itself into the three leaves (v1 moves one thread per `tasks` write),
//!    so the step's process starts there without a join of its own, and `posix_spawn`s
//!    `sh -e -c true` (vfork, no page-table copy) in a process group of its own, stdin from
//!    /dev/null, stdout and stderr to pipes read until the end, then waits for it;
//! 3. the thread moves back, reads the peak memory (`memory.max_usage_in_bytes`), the CPU
//!    time (`cpuacct.usage`) and the freezer leaf's `cgroup.procs` (nothing may be left), and
//!    removes the three leaves.
//!
//! No leaf can be reused to save steps 1 and 3: a v1 memory cgroup keeps the pages of the step
//! before charged after its processes have exited, so a reused leaf would give the next step a
//! wrong peak and less room under its limit (benches/README.md). Machines without cgroup v1
//! skip the bench and say so.

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hm_kernel::cgroup::{Backend, RunCgroup};

use crate::Settings;
use crate::measure::{BenchError, Outcome, Plan, Target, interleave};
use crate::run_steps;

pub const NAME: &str = "steps-floor";
/// Threads taking steps, as `make -j2` (`run_steps::time_make`) runs two at a time.
const JOBS: usize = 2;

pub fn run(settings: &Settings) -> Result<Outcome, BenchError> {
    let (rounds, budget) = if settings.quick {
        (3, Duration::from_secs(10))
    } else {
        (9, Duration::from_secs(60))
    };
    let hierarchies = Hierarchies::create("floor")?;
    let dir = tempfile::Builder::new()
        .prefix("hm-bench-floor-")
        .tempdir()
        .map_err(BenchError::io("failed to create a temporary directory"))?;
    let makefile = dir.path().join("Makefile");
    fs::write(&makefile, run_steps::makefile()).map_err(BenchError::io(format!(
        "failed to write {}",
        makefile.display()
    )))?;
    let plan = Plan {
        rounds,
        budget,
        warm_up: true,
    };
    let mut round = 0;
    let samples = interleave(
        plan,
        || {
            round += 1;
            hierarchies.run_steps(round)
        },
        || run_steps::time_make(dir.path()),
    )?;
    Ok(Outcome::new(
        NAME,
        &samples,
        Target::TimeFloor(1.2),
        "per run of 200 steps",
    ))
}

/// A run cgroup made the way `hm run` makes one (removed when this is dropped): its directory
/// in the three hierarchies a step's leaf needs, and hm's own cgroup (the run's grandparent)
/// there, where a thread goes back to after a step.
pub(crate) struct Hierarchies {
    /// memory, cpuacct, freezer, in that order.
    pub runs: [PathBuf; 3],
    owns: [PathBuf; 3],
    _run: RunCgroup,
}

impl Hierarchies {
    /// Creates the run cgroup `bench-<label>-p<pid>`; a machine without cgroup v1 skips the
    /// bench.
    pub(crate) fn create(label: &str) -> Result<Self, BenchError> {
        let detected = hm_kernel::cgroup::detect();
        if !matches!(detected.backend, Backend::V1(_)) {
            return Err(BenchError::skipped(
                "the floor is measured for cgroup v1, which this machine does not offer",
            ));
        }
        // The last `-` part is not hex, so no `hm run` sweeps this tree as a dead run's.
        let run = detected
            .backend
            .create_run(&format!("bench-{label}-p{}", std::process::id()))
            .map_err(|e| BenchError::failed("failed to create the run cgroup", e.to_string()))?;
        Self::of(run)
    }

    fn of(run: RunCgroup) -> Result<Self, BenchError> {
        let paths = run.paths();
        // A non-root v1 cgroup has its controller's files: that tells the hierarchies apart
        // whatever their mount points are called.
        let find = |file: &str| {
            paths
                .iter()
                .find(|p| p.join(file).exists())
                .cloned()
                .ok_or_else(|| {
                    BenchError::failed(
                        "the run cgroup",
                        format!("no hierarchy of {paths:?} has {file}"),
                    )
                })
        };
        let runs = [
            find("memory.max_usage_in_bytes")?,
            find("cpuacct.usage")?,
            find("freezer.state")?,
        ];
        let own = |run: &PathBuf| {
            run.parent()
                .and_then(Path::parent)
                .map(Path::to_path_buf)
                .ok_or_else(|| BenchError::failed("the run cgroup", "has no grandparent"))
        };
        Ok(Self {
            owns: [own(&runs[0])?, own(&runs[1])?, own(&runs[2])?],
            runs,
            _run: run,
        })
    }

    /// Runs the 200 steps on [`JOBS`] threads; returns the time from the first `mkdir` to
    /// the last `rmdir`.
    fn run_steps(&self, round: usize) -> Result<Duration, BenchError> {
        let next = AtomicUsize::new(0);
        let start = Instant::now();
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..JOBS)
                .map(|_| {
                    scope.spawn(|| {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= run_steps::STEPS {
                                return Ok(());
                            }
                            self.step(&format!("r{round}-s{i}"))?;
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|_| Err(panicked())))
                .collect::<Result<Vec<()>, BenchError>>()
        })?;
        Ok(start.elapsed())
    }

    fn step(&self, name: &str) -> Result<(), BenchError> {
        let leaves = self.runs.clone().map(|run| run.join(name));
        for leaf in &leaves {
            fs::create_dir(leaf).map_err(cgroup_error("mkdir", leaf))?;
        }
        let outcome = self.spawn_in(&leaves);
        let [memory, cpuacct, freezer] = &leaves;
        let read = |path: PathBuf| fs::read_to_string(&path).map_err(cgroup_error("read", &path));
        let accounted = outcome.and_then(|()| {
            read(memory.join("memory.max_usage_in_bytes"))?;
            read(cpuacct.join("cpuacct.usage"))?;
            let left = read(freezer.join("cgroup.procs"))?;
            if left.trim().is_empty() {
                Ok(())
            } else {
                Err(BenchError::failed(
                    "a step",
                    format!("left processes {left:?} behind"),
                ))
            }
        });
        // Removed whatever happened, so a failed round leaves nothing behind.
        for leaf in &leaves {
            let _ = fs::remove_dir(leaf);
        }
        accounted
    }

    /// Moves this thread into `leaves`, runs the step, moves it back.
    fn spawn_in(&self, leaves: &[PathBuf; 3]) -> Result<(), BenchError> {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() }.to_string();
        let joined = leaves
            .iter()
            .try_for_each(|leaf| write_tasks(leaf, &tid))
            .and_then(|()| {
                let output = Command::new("sh")
                    .args(["-e", "-c", "true"])
                    .stdin(Stdio::null())
                    .process_group(0)
                    .output()
                    .map_err(BenchError::io("failed to run sh"))?;
                if output.status.success() {
                    Ok(())
                } else {
                    Err(BenchError::failed(
                        "sh -e -c true",
                        output.status.to_string(),
                    ))
                }
            });
        let back = self.owns.iter().try_for_each(|own| write_tasks(own, &tid));
        joined.and(back)
    }
}

fn write_tasks(dir: &Path, tid: &str) -> Result<(), BenchError> {
    let tasks = dir.join("tasks");
    fs::write(&tasks, tid).map_err(cgroup_error("write", &tasks))
}

pub(crate) fn cgroup_error(
    what: &'static str,
    path: &Path,
) -> impl FnOnce(io::Error) -> BenchError {
    BenchError::io(format!("failed to {what} {}", path.display()))
}

fn panicked() -> BenchError {
    BenchError::failed("a step thread", "panicked")
}
