//! The end of a run: the plugins that are no hooks are shut down first (so their exits are
//! in the stream before `build_end`), the hooks take the events so far, `build_end` goes out,
//! the hooks take it, and everything left is shut down and cleaned up. And the run's exit
//! code, decided without I/O ([`exit_code`]).

use std::time::Duration;

use tokio::time::Instant;

use super::plugins::{PluginSlot, PluginState};
use super::run_loop::Scheduler;
use super::verdict::Verdict;
use crate::events::{BuildEvent, Cause, StepStatus};
use crate::exit;

/// How long plugins get to exit after `Shutdown` at the end of the run.
pub(super) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How long the end of a run waits for its services to stop.
const SERVICES_GRACE: Duration = Duration::from_secs(30);
/// At the end of the run, how long hooks get to take their last events (beyond the longest
/// hook timeout) before what is left is dropped.
pub(super) const HOOK_DRAIN: Duration = Duration::from_secs(10);

/// What the exit code of a run is made of.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Outcome {
    pub(super) user_cancelled: bool,
    pub(super) pipeline_timed_out: bool,
    pub(super) environment_unavailable: bool,
    pub(super) plugin_problem: bool,
    /// A step failed (and `allow_failure` does not cover it).
    pub(super) step_failed: bool,
    /// One of those failures was a timeout.
    pub(super) step_timed_out: bool,
}

/// The run's exit code. When several apply: 130 > 124 > 4 > 5 > 1.
pub(super) fn exit_code(outcome: Outcome) -> i32 {
    if outcome.user_cancelled {
        exit::CANCELLED
    } else if outcome.pipeline_timed_out || outcome.step_timed_out {
        exit::TIMEOUT
    } else if outcome.environment_unavailable {
        exit::ENVIRONMENT
    } else if outcome.plugin_problem {
        exit::PLUGIN
    } else if outcome.step_failed {
        exit::STEP_FAILED
    } else {
        exit::OK
    }
}

impl Scheduler<'_> {
    pub(super) fn exit_code(&self) -> i32 {
        let failures = || {
            self.steps
                .iter()
                .filter_map(|s| s.verdict.as_ref().filter(|_| !s.allowed_failure))
                .filter(|v| v.is_failure())
        };
        exit_code(Outcome {
            user_cancelled: self.user_cancelled,
            pipeline_timed_out: self.pipeline_timed_out,
            environment_unavailable: self.environment_unavailable,
            plugin_problem: self.plugin_problem,
            step_failed: failures().next().is_some(),
            step_timed_out: failures().any(|v: &Verdict| v.cause == Some(Cause::Timeout)),
        })
    }

    /// Whether every plugin `which` selects has exited (or never started).
    fn plugins_gone(&self, which: fn(&PluginSlot) -> bool) -> bool {
        self.plugins
            .iter()
            .filter(|p| which(p))
            .all(|p| !matches!(p.state, PluginState::Ready { .. } | PluginState::Starting))
    }

    /// Sends `Shutdown` to the plugins `which` selects, and gives them [`SHUTDOWN_GRACE`].
    fn shut_down_plugins(&mut self, which: fn(&PluginSlot) -> bool) {
        for slot in self.plugins.iter_mut().filter(|p| which(p)) {
            if let PluginState::Ready { link, .. } = &slot.state {
                if !slot.shutdown_sent {
                    slot.shutdown_sent = true;
                    link.shutdown();
                }
            }
        }
        if self.shutdown_deadline.is_none() {
            self.shutdown_deadline = Some(Instant::now() + SHUTDOWN_GRACE);
        }
    }

    /// Ends the run once every step is done; `true` when nothing is left to wait for.
    ///
    /// First the plugins that are no hooks are shut down, so their exits are in the stream
    /// before `build_end`; then `build_end` goes out (also to the hooks), the hooks take their
    /// last events (bounded by their timeouts and [`HOOK_DRAIN`]), and are shut down.
    pub(super) fn finish(&mut self) -> bool {
        // No step can ask for the archive any more: its memory goes now, not when the plugins
        // have exited.
        self.archive.close();
        if self.build_end_code.is_none() {
            // The hooks take the events so far first, so that `build_end` includes what a
            // required hook's failure on them means for the run.
            if self.drain_deadline.is_none() {
                self.drain_deadline =
                    Some(Instant::now() + self.longest_hook_timeout() + HOOK_DRAIN);
            }
            // Services go before their plugins: a stop in flight is waited for (as long as
            // the plugins' shutdown would be), and what is left hm removes at its exit.
            self.release_services(true);
            if !self.services.settled() {
                if self.shutdown_deadline.is_none() {
                    self.shutdown_deadline = Some(Instant::now() + SERVICES_GRACE);
                }
                return false;
            }
            let hooks_idle = self.plugins.iter().all(PluginSlot::hook_idle);
            if !self.plugins_gone(|p| !p.is_hook()) || !hooks_idle {
                self.shut_down_plugins(|p| !p.is_hook());
                return false;
            }
            self.shutdown_deadline = None;
            self.end_build();
        }
        if self.plugins.iter().all(PluginSlot::hook_idle) {
            self.drain_deadline = None;
            if self.plugins_gone(|_| true) {
                return true;
            }
            self.shut_down_plugins(|_| true);
        }
        false
    }

    /// Emits `build_end` with the result as it stands, and starts the hooks' last drain.
    fn end_build(&mut self) {
        let code = self.exit_code();
        let (mut passed, mut failed, mut skipped, mut cancelled) = (0, 0, 0, 0);
        for step in self.steps.iter() {
            match step.verdict.as_ref().map(|v| v.status) {
                Some(StepStatus::Passed) => passed += 1,
                Some(StepStatus::Failed | StepStatus::TimedOut) => failed += 1,
                Some(StepStatus::Skipped) => skipped += 1,
                Some(StepStatus::Cancelled) | None => cancelled += 1,
            }
        }
        let status = match code {
            exit::OK => StepStatus::Passed,
            exit::CANCELLED => StepStatus::Cancelled,
            exit::TIMEOUT => StepStatus::TimedOut,
            _ => StepStatus::Failed,
        };
        self.emit(BuildEvent::BuildEnd {
            status,
            exit_code: code,
            duration_ms: self.started_at.elapsed().as_millis() as u64,
            passed,
            failed,
            skipped,
            cancelled,
        });
        self.build_end_code = Some(code);
        self.drain_deadline = Some(Instant::now() + self.longest_hook_timeout() + HOOK_DRAIN);
    }

    fn longest_hook_timeout(&self) -> Duration {
        self.plugins
            .iter()
            .flat_map(|p| p.hooks.iter().map(|h| h.timeout))
            .max()
            .unwrap_or_default()
    }

    /// After the loop: the run's cgroup tree goes (with whatever a plugin left in it), hooks
    /// that missed events are named, the guardian is dismissed. Returns the exit code.
    pub(super) async fn wind_up(mut self) -> i32 {
        if let Some(run) = self.opts.run_cgroup.clone() {
            let janitor = self.janitor.take();
            // Whatever is left (a plugin's stray children) dies with the run's tree, once the
            // janitor has removed the leaves it was given.
            let removed = tokio::task::spawn_blocking(move || {
                if let Some(janitor) = janitor {
                    janitor.finish();
                }
                run.remove()
            })
            .await;
            if let Ok(Err(e)) = removed {
                tracing::warn!("{e}");
            }
        }
        self.archive.close();
        // The cache keeps to its size (the least recently used entries go) once it grew.
        let stored = self
            .steps
            .iter()
            .any(|s| s.cache_status == Some(crate::events::CacheStatus::Miss));
        if let Some(store) = self.cache.clone().filter(|_| stored) {
            let max = self.pipeline.cache.max_bytes;
            let _ = tokio::task::spawn_blocking(move || store.prune(None, Some(max))).await;
        }
        if self.build_end_code.is_none() {
            self.end_build();
        }
        let _ = self.renderer.flush();
        for slot in self.plugins.iter().filter(|s| s.is_hook()) {
            if slot.queue.dropped() > 0 {
                tracing::warn!(
                    "hook {} missed {} event(s): its queue of {} was full, or it could not \
                     take them (see above)",
                    slot.spec.name,
                    slot.queue.dropped(),
                    super::hook_queue::QUEUE_CAPACITY
                );
            }
        }
        let code = self.exit_code();
        if Some(code) != self.build_end_code {
            tracing::error!(
                "exiting with {code}, not the {} build_end reported: a required hook failed \
                 after it",
                self.build_end_code.unwrap_or_default()
            );
        }
        self.reap_orphans();
        if let Some(guardian) = self.guardian.take() {
            guardian.dismiss();
        }
        code
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exit_code_follows_the_documented_precedence() {
        let o = Outcome::default;
        let cases = [
            (o(), exit::OK),
            (
                Outcome {
                    step_failed: true,
                    ..o()
                },
                exit::STEP_FAILED,
            ),
            (
                Outcome {
                    step_failed: true,
                    plugin_problem: true,
                    ..o()
                },
                exit::PLUGIN,
            ),
            (
                Outcome {
                    plugin_problem: true,
                    environment_unavailable: true,
                    ..o()
                },
                exit::ENVIRONMENT,
            ),
            (
                Outcome {
                    environment_unavailable: true,
                    step_failed: true,
                    step_timed_out: true,
                    ..o()
                },
                exit::TIMEOUT,
            ),
            (
                Outcome {
                    pipeline_timed_out: true,
                    ..o()
                },
                exit::TIMEOUT,
            ),
            (
                Outcome {
                    user_cancelled: true,
                    pipeline_timed_out: true,
                    plugin_problem: true,
                    step_failed: true,
                    ..o()
                },
                exit::CANCELLED,
            ),
        ];
        for (outcome, code) in cases {
            assert_eq!(exit_code(outcome), code, "{outcome:?}");
        }
    }
}
