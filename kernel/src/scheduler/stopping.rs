//! Stopping steps and the run: the kill ladder of a step ([`Ladder`], decided without I/O),
//! the run's timers (step and pipeline timeouts, the end-of-run deadlines, hook calls), Ctrl-C
//! and the last resort of killing everything at once.
//!
//! The ladder: a `Cancel` frame, the executor's own grace (SIGTERM, then SIGKILL after
//! `--grace`), and, if the plugin has not answered `grace + 2 s` later, SIGKILL to the step's
//! process group (and its cgroup) from here; if it still has not answered 2 s after that, the
//! plugin is considered hung and its process group is killed, which ends its steps.

use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::time::Instant;

use super::plugins::PluginState;
use super::run_loop::Scheduler;
use super::steps::StepState;
use super::verdict::{StopReason, Verdict, unstarted};

/// After the grace period, how long the kernel waits before killing a step itself, and then
/// before declaring its plugin hung.
pub(super) const ESCALATE: Duration = Duration::from_secs(2);

/// The kernel's side of a stop that the executor has not answered yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ladder {
    next_at: Instant,
    rung: Rung,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rung {
    KillStep,
    KillPlugin,
    Over,
}

/// What the ladder asks for when its time has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Escalation {
    /// SIGKILL the step's process group and its cgroup.
    KillStep,
    /// The plugin is hung: SIGKILL its process group.
    KillPlugin,
}

impl Ladder {
    /// A stop asked for at `now`: the executor has `grace` (and [`ESCALATE`] more) to answer.
    pub(super) fn start(now: Instant, grace: Duration) -> Self {
        Self {
            next_at: now + grace + ESCALATE,
            rung: Rung::KillStep,
        }
    }

    /// When the ladder next needs attention, if ever.
    pub(super) fn next_at(&self) -> Option<Instant> {
        (self.rung != Rung::Over).then_some(self.next_at)
    }

    /// What to do at `now`: nothing yet, or the next rung.
    pub(super) fn due(&mut self, now: Instant) -> Option<Escalation> {
        if now < self.next_at {
            return None;
        }
        match self.rung {
            Rung::KillStep => {
                self.rung = Rung::KillPlugin;
                self.next_at = now + ESCALATE;
                Some(Escalation::KillStep)
            }
            Rung::KillPlugin => {
                self.rung = Rung::Over;
                Some(Escalation::KillPlugin)
            }
            Rung::Over => None,
        }
    }
}

impl Scheduler<'_> {
    /// Stops every step: unstarted ones end at once, running ones get the kill ladder.
    pub(super) fn stop_all(&mut self, reason: StopReason) {
        // A plugin hm waits for on an attach socket may never come: stop waiting.
        for slot in &mut self.plugins {
            if matches!(slot.state, PluginState::Starting)
                && self.opts.attach.contains_key(&slot.spec.name)
            {
                slot.abandoned = true;
                slot.abandon.cancel();
            }
        }
        for i in 0..self.steps.len() {
            match self.steps[i].state {
                // Cleanup and failure reports still run once what they need has ended.
                StepState::Waiting
                    if reason == StopReason::FailFast && self.steps.runs_after_failure(i) => {}
                StepState::Waiting => {
                    let downstream = self.steps.downstream_of_failure(i);
                    let (status, cause) = unstarted(reason, downstream);
                    self.finish_unstarted(i, status, cause, None);
                }
                StepState::Gating
                | StepState::Starting
                | StepState::Running
                | StepState::Collecting
                | StepState::Looking
                | StepState::AwaitingServices => {
                    self.stop_step(i, reason);
                }
                StepState::Done => {}
            }
        }
    }

    pub(super) fn stop_step(&mut self, i: usize, reason: StopReason) {
        let step = &mut self.steps[i];
        if step.stop.is_some() {
            return;
        }
        step.stop = Some(reason);
        match step.state {
            // No executor has it yet; the hooks' late answers and the services' are ignored.
            StepState::Gating | StepState::AwaitingServices => {
                self.end_attempt(i, Verdict::stopped(reason, None))
            }
            // Ended when its plugin is ready (or fails to start).
            StepState::Starting => {}
            // Its executor is done with it, or has not got it yet; what runs off the loop for
            // it ends soon, and its end sees the stop.
            StepState::Collecting | StepState::Looking => {}
            _ => {
                step.ladder = Some(Ladder::start(Instant::now(), self.opts.grace));
                let call = step.call;
                if let PluginState::Ready { link, .. } = &self.plugins[step.plugin].state {
                    link.cancel(call);
                }
            }
        }
    }

    pub(super) fn on_interrupt(&mut self, count: u32) {
        self.user_cancelled = true;
        if count == 1 {
            tracing::warn!(
                "cancelling: waiting for steps to stop (press Ctrl-C again to kill now)"
            );
            self.stop_all(StopReason::UserCancel);
        } else {
            self.stop_all(StopReason::UserCancel);
            self.kill_everything();
        }
    }

    /// Second Ctrl-C: SIGKILL every step's process group and every plugin, now.
    pub(super) fn kill_everything(&mut self) {
        self.killed_all = true;
        if let Some(run) = self.opts.run_cgroup.clone() {
            tokio::task::spawn_blocking(move || {
                if let Err(e) = run.kill_all() {
                    tracing::warn!("{e}");
                }
            });
        }
        for step in self.steps.iter() {
            if let Some(pgid) = step.pgid {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
        }
        for p in 0..self.plugins.len() {
            self.kill_plugin(p);
        }
    }

    /// Acts on every deadline that has passed.
    pub(super) fn on_timers(&mut self) {
        let now = Instant::now();
        if self.pipeline_deadline.is_some_and(|d| now >= d) && !self.pipeline_timed_out {
            self.pipeline_timed_out = true;
            self.pipeline_deadline = None;
            let timeout = self.opts.timeout.map(humantime::format_duration);
            tracing::warn!(
                "the pipeline timeout ({}) has passed: stopping",
                timeout.map(|t| t.to_string()).unwrap_or_default()
            );
            self.stop_all(StopReason::PipelineTimeout);
        }
        for i in 0..self.steps.len() {
            let step = &mut self.steps[i];
            if step.state == StepState::AwaitingServices && step.deadline.is_some_and(|d| now >= d)
            {
                step.deadline = None;
                self.stop_step(i, StopReason::StepTimeout);
                continue;
            }
            if step.state != StepState::Running {
                continue;
            }
            if step.deadline.is_some_and(|d| now >= d) {
                step.deadline = None;
                self.stop_step(i, StopReason::StepTimeout);
                continue;
            }
            match step.ladder.as_mut().and_then(|ladder| ladder.due(now)) {
                Some(Escalation::KillStep) => {
                    if let Some(pgid) = step.pgid {
                        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
                    }
                    if let Some(leaf) = step.leaf.clone() {
                        tokio::task::spawn_blocking(move || leaf.kill());
                    }
                }
                Some(Escalation::KillPlugin) => {
                    let p = step.plugin;
                    tracing::warn!(
                        plugin = %self.plugins[p].spec.name,
                        "the plugin did not stop a step when asked; killing it"
                    );
                    self.kill_plugin(p);
                }
                None => {}
            }
        }
        if self.shutdown_deadline.is_some_and(|d| now >= d) {
            self.shutdown_deadline = None;
            self.kill_everything();
        }
        for p in 0..self.plugins.len() {
            let expired: Vec<u64> = self.plugins[p]
                .hook_calls
                .iter()
                .filter(|(_, call)| now >= call.deadline)
                .map(|(&id, _)| id)
                .collect();
            for id in expired {
                self.on_hook_timeout(p, id);
            }
        }
        if self.drain_deadline.is_some_and(|d| now >= d) {
            self.drain_deadline = None;
            for p in 0..self.plugins.len() {
                if !self.plugins[p].hook_idle() {
                    tracing::warn!(
                        "hook {} did not take its last events in time; stopping it",
                        self.plugins[p].spec.name
                    );
                    self.plugins[p].queue.drop_all();
                    self.kill_plugin(p);
                }
            }
        }
    }

    /// The earliest deadline the run loop must wake for.
    pub(super) fn next_wake(&self) -> Option<Instant> {
        let steps = self
            .steps
            .iter()
            .filter(|s| matches!(s.state, StepState::Running | StepState::AwaitingServices))
            .flat_map(|s| [s.deadline, s.ladder.and_then(|l| l.next_at())]);
        let hooks = self
            .plugins
            .iter()
            .flat_map(|p| p.hook_calls.values().map(|c| Some(c.deadline)));
        steps
            .chain(hooks)
            .chain([
                self.pipeline_deadline,
                self.shutdown_deadline,
                self.drain_deadline,
            ])
            .flatten()
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ladder_kills_the_step_after_the_grace_then_the_plugin() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        let mut ladder = Ladder::start(t0, grace);
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        assert_eq!(ladder.next_at(), Some(at(12)));
        // (time, what the ladder asks for)
        let steps = [
            (at(0), None),
            (at(11), None),
            (at(12), Some(Escalation::KillStep)),
            (at(13), None),
            (at(14), Some(Escalation::KillPlugin)),
            (at(100), None),
        ];
        for (now, want) in steps {
            assert_eq!(ladder.due(now), want, "{:?}", now - t0);
        }
        assert_eq!(ladder.next_at(), None, "the ladder is over");
    }

    #[test]
    fn a_late_look_climbs_one_rung_at_a_time() {
        let t0 = Instant::now();
        let mut ladder = Ladder::start(t0, Duration::ZERO);
        let late = t0 + Duration::from_secs(60);
        assert_eq!(ladder.due(late), Some(Escalation::KillStep));
        // The plugin gets its 2 s from when the step was killed, not from the stop.
        assert_eq!(ladder.due(late), None);
        assert_eq!(ladder.due(late + ESCALATE), Some(Escalation::KillPlugin));
    }
}
