//! The selected steps and their state machines: each step goes `Waiting → Gating → Starting →
//! Running → Done` (a retry goes back to `Waiting`). Which step may start, and which can no
//! longer, is decided here from the DAG alone, without I/O.

use std::collections::HashSet;
use std::ops::{Index, IndexMut};

use tokio::time::Instant;

use super::verdict::{StopReason, Verdict};
use crate::cgroup::Leaf;
use crate::config::When;
use crate::events::{Cause, StepStatus};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StepState {
    /// Needs unfinished steps, or waits for a free slot.
    Waiting,
    /// Holds a slot; its `before` hooks on `step_start` have not all answered.
    Gating,
    /// Holds a slot; its plugin is starting.
    Starting,
    /// Its `ExecuteStep` call is in flight.
    Running,
    /// It passed; its outputs and artifacts are being taken in, off the run loop.
    Collecting,
    /// Its cache key is being computed and looked up, off the run loop.
    Looking,
    /// Holds a slot; a service it lists is starting.
    AwaitingServices,
    Done,
}

impl StepState {
    /// Holds one of the run's parallelism slots.
    pub(super) fn holds_slot(self) -> bool {
        matches!(
            self,
            StepState::Gating
                | StepState::Starting
                | StepState::Running
                | StepState::Collecting
                | StepState::Looking
                | StepState::AwaitingServices
        )
    }
}

/// One selected step: where it is in its life, and what the kernel keeps for its attempt.
pub(super) struct StepRun {
    /// The step's index in the pipeline.
    pub(super) index: usize,
    /// The positions (in [`Steps`]) of the selected steps it needs, each with whether it is
    /// optional (its skipping by condition does not skip this one).
    needs: Vec<(usize, bool)>,
    /// `Manual` only for a manual step that was not named on the command line.
    pub(super) when: When,
    /// Its `if` was found to hold (it is checked once, before the first attempt).
    pub(super) condition_checked: bool,
    pub(super) state: StepState,
    pub(super) attempt: u32,
    /// The plugin slot of its executor.
    pub(super) plugin: usize,
    pub(super) call: u64,
    pub(super) started: Option<Instant>,
    pub(super) deadline: Option<Instant>,
    pub(super) pgid: Option<i32>,
    pub(super) stop: Option<StopReason>,
    /// The kill ladder, once a stop was asked for.
    pub(super) ladder: Option<super::stopping::Ladder>,
    pub(super) verdict: Option<Verdict>,
    pub(super) allowed_failure: bool,
    /// The attempt's cgroup leaf, while it runs.
    pub(super) leaf: Option<Leaf>,
    /// Numbers the gates a step passes (one per attempt), so a late answer to an old gate is
    /// never taken for the current one.
    pub(super) gate: u32,
    /// `before` hooks that have not answered the current gate.
    pub(super) gates_pending: usize,
    /// The first abort of the current gate: which hook, and why.
    pub(super) gate_abort: Option<String>,
    /// The current attempt's `artifacts` globs, rendered.
    pub(super) artifact_globs: Vec<String>,
    /// The current attempt's `$HM_OUTPUT` file.
    pub(super) output_file: Option<std::path::PathBuf>,
    /// What the executor sent with `PutArtifacts` for the current attempt.
    pub(super) upload: Option<Result<hm_ipc::SharedBuffer, String>>,
    /// Its outputs, once it passed.
    pub(super) outputs: crate::outputs::Outputs,
    /// Its artifacts, once it passed.
    pub(super) artifacts: Vec<crate::artifacts::Artifact>,
    /// Its cache was looked up (once, before the first attempt that reaches an executor).
    pub(super) cache_checked: bool,
    /// Its cache key, once known.
    pub(super) cache_key: Option<String>,
    pub(super) cache_status: Option<crate::events::CacheStatus>,
    /// On a hit: how long the step took when it was stored.
    pub(super) saved_ms: Option<u64>,
    /// The log of the running attempt as the cache stores it, while it may be stored.
    pub(super) cache_log: Option<Vec<u8>>,
    /// The cluster node the running attempt is on, when its executor said (`Placed`).
    pub(super) node: Option<String>,
}

impl StepRun {
    fn new(index: usize, needs: Vec<(usize, bool)>, plugin: usize, when: When) -> Self {
        Self {
            index,
            needs,
            when,
            condition_checked: false,
            state: StepState::Waiting,
            attempt: 1,
            plugin,
            call: 0,
            started: None,
            deadline: None,
            pgid: None,
            stop: None,
            ladder: None,
            verdict: None,
            allowed_failure: false,
            leaf: None,
            gate: 0,
            gates_pending: 0,
            gate_abort: None,
            artifact_globs: Vec::new(),
            output_file: None,
            upload: None,
            outputs: Vec::new(),
            artifacts: Vec::new(),
            cache_checked: false,
            cache_key: None,
            cache_status: None,
            saved_ms: None,
            cache_log: None,
            node: None,
        }
    }

    /// Ended, and not with a pass (nor a failure that `allow_failure` lets through).
    fn blocks_dependents(&self) -> bool {
        self.state == StepState::Done
            && !self.allowed_failure
            && self
                .verdict
                .as_ref()
                .is_none_or(|v| v.status != StepStatus::Passed)
    }

    /// Skipped by its condition or as a manual step: the cause its dependents take on.
    fn skipped_by_choice(&self) -> Option<Cause> {
        self.verdict
            .as_ref()
            .filter(|v| v.status == StepStatus::Skipped)
            .and_then(|v| v.cause)
            .filter(|c| matches!(c, Cause::Condition | Cause::Manual))
    }

    /// Never(Cause::DependencyFailed), and its failure is not allowed.
    fn failed(&self) -> bool {
        !self.allowed_failure && self.verdict.as_ref().is_some_and(Verdict::is_failure)
    }
}

/// Whether a waiting step may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Needs {
    /// A step it needs has not ended yet.
    Pending,
    /// What it needs allows it to run (its own `if` aside).
    Met,
    /// It never will run, and ends `skipped` with this cause: `dependency_failed` (a step it
    /// needs did not pass), `condition` (one was skipped by its condition, or nothing failed
    /// for an `on_failure` step), `manual`.
    Never(Cause),
}

/// A selected step, as the run loop hands it over.
pub(super) struct Selected {
    /// The step's index in the pipeline.
    pub(super) index: usize,
    /// The pipeline indices it needs, each with whether it is optional.
    pub(super) needs: Vec<(usize, bool)>,
    /// The plugin slot of its executor.
    pub(super) plugin: usize,
    /// Its `when`; `Manual` only when it was not named on the command line.
    pub(super) when: When,
}

/// The selected steps, in file order.
pub(super) struct Steps {
    steps: Vec<StepRun>,
}

impl Steps {
    /// The selected steps in file order. Needs outside the selection are not waited for (they
    /// were not asked for).
    pub(super) fn new(selected: impl IntoIterator<Item = Selected>) -> Self {
        let selected: Vec<Selected> = selected.into_iter().collect();
        let position = |index: usize| selected.iter().position(|s| s.index == index);
        let steps = selected
            .iter()
            .map(|s| {
                let needs = s
                    .needs
                    .iter()
                    .filter_map(|&(n, optional)| Some((position(n)?, optional)))
                    .collect();
                StepRun::new(s.index, needs, s.plugin, s.when)
            })
            .collect();
        Self { steps }
    }

    pub(super) fn len(&self) -> usize {
        self.steps.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &StepRun> {
        self.steps.iter()
    }

    /// Whether step `i` may start now, must wait, or never will, by its `when`.
    pub(super) fn needs(&self, i: usize) -> Needs {
        let step = &self.steps[i];
        let all_ended = step
            .needs
            .iter()
            .all(|&(j, _)| self.steps[j].state == StepState::Done);
        match step.when {
            When::Manual => Needs::Never(Cause::Manual),
            When::Always if all_ended => Needs::Met,
            When::OnFailure if all_ended => {
                if self.downstream_of_failure(i) {
                    Needs::Met
                } else {
                    Needs::Never(Cause::Condition)
                }
            }
            When::Always | When::OnFailure => Needs::Pending,
            When::OnSuccess => {
                let mut chosen = None;
                for &(j, optional) in &step.needs {
                    let dep = &self.steps[j];
                    match dep.skipped_by_choice() {
                        Some(_) if optional => {}
                        Some(cause) => chosen = chosen.or(Some(cause)),
                        None if dep.blocks_dependents() => {
                            return Needs::Never(Cause::DependencyFailed);
                        }
                        None => {}
                    }
                }
                match chosen {
                    Some(cause) => Needs::Never(cause),
                    None if all_ended => Needs::Met,
                    None => Needs::Pending,
                }
            }
        }
    }

    /// The first step `i` needs (not optionally) that was skipped by its condition or as
    /// manual: its position.
    pub(super) fn skipped_need(&self, i: usize) -> Option<usize> {
        self.steps[i]
            .needs
            .iter()
            .find(|&&(j, optional)| !optional && self.steps[j].skipped_by_choice().is_some())
            .map(|&(j, _)| j)
    }

    /// Whether fail fast leaves step `i` waiting: an `always` or `on_failure` step runs once
    /// what it needs has ended, failure or not.
    pub(super) fn runs_after_failure(&self, i: usize) -> bool {
        matches!(self.steps[i].when, When::Always | When::OnFailure)
    }

    /// Whether step `i` needs, directly or through others, a step that failed (and whose
    /// failure is not allowed).
    pub(super) fn downstream_of_failure(&self, i: usize) -> bool {
        let mut seen = HashSet::new();
        let mut stack = vec![i];
        while let Some(at) = stack.pop() {
            for &(j, _) in &self.steps[at].needs {
                if !seen.insert(j) {
                    continue;
                }
                if self.steps[j].failed() {
                    return true;
                }
                stack.push(j);
            }
        }
        false
    }

    /// The positions of the steps `i` needs directly.
    pub(super) fn direct_needs(&self, i: usize) -> Vec<usize> {
        self.steps[i].needs.iter().map(|&(j, _)| j).collect()
    }

    /// The positions of the steps `i` needs, directly or through others, nearest first.
    pub(super) fn ancestors(&self, i: usize) -> Vec<usize> {
        let mut seen = Vec::new();
        let mut queue = std::collections::VecDeque::from([i]);
        while let Some(at) = queue.pop_front() {
            for &(j, _) in &self.steps[at].needs {
                if !seen.contains(&j) {
                    seen.push(j);
                    queue.push_back(j);
                }
            }
        }
        seen
    }

    /// Every step has ended.
    pub(super) fn all_done(&self) -> bool {
        self.steps.iter().all(|s| s.state == StepState::Done)
    }

    /// Steps holding a parallelism slot.
    pub(super) fn running(&self) -> usize {
        self.steps.iter().filter(|s| s.state.holds_slot()).count()
    }
}

impl Index<usize> for Steps {
    type Output = StepRun;

    fn index(&self, i: usize) -> &StepRun {
        &self.steps[i]
    }
}

impl IndexMut<usize> for Steps {
    fn index_mut(&mut self, i: usize) -> &mut StepRun {
        &mut self.steps[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Cause;

    fn sel(index: usize, needs: &[usize], when: When) -> Selected {
        Selected {
            index,
            needs: needs.iter().map(|&n| (n, false)).collect(),
            plugin: 0,
            when,
        }
    }

    /// `a`; `b` needs `a`; `c` needs `b`; `d` needs nothing; `e` needs `a` and `d`.
    fn graph() -> Steps {
        Steps::new([
            sel(0, &[], When::OnSuccess),
            sel(1, &[0], When::OnSuccess),
            sel(2, &[1], When::OnSuccess),
            sel(3, &[], When::OnSuccess),
            sel(4, &[0, 3], When::OnSuccess),
        ])
    }

    fn end(steps: &mut Steps, i: usize, verdict: Verdict, allowed: bool) {
        steps[i].state = StepState::Done;
        steps[i].verdict = Some(verdict);
        steps[i].allowed_failure = allowed;
    }

    fn passed() -> Verdict {
        Verdict {
            status: StepStatus::Passed,
            cause: None,
            exit_code: Some(0),
            signal: None,
            message: None,
        }
    }

    #[test]
    fn a_step_waits_for_its_needs_and_no_longer_runs_after_one_failed() {
        let mut steps = graph();
        let needs = |steps: &Steps| (0..5).map(|i| steps.needs(i)).collect::<Vec<_>>();
        use Needs::*;
        assert_eq!(needs(&steps), [Met, Pending, Pending, Met, Pending]);
        end(&mut steps, 0, passed(), false);
        assert_eq!(needs(&steps), [Met, Met, Pending, Met, Pending]);
        end(&mut steps, 3, passed(), false);
        assert_eq!(needs(&steps)[4], Met);
        end(&mut steps, 1, Verdict::failed(Cause::Exit, "1"), false);
        assert_eq!(needs(&steps)[2], Never(Cause::DependencyFailed));
        // An allowed failure lets its dependents run.
        let mut steps = graph();
        end(&mut steps, 0, Verdict::failed(Cause::Exit, "1"), true);
        assert_eq!(steps.needs(1), Met);
        // A need that was skipped or cancelled does not pass either.
        let mut steps = graph();
        let skipped = Verdict::stopped(StopReason::FailFast, None);
        end(&mut steps, 0, skipped, false);
        assert_eq!(steps.needs(1), Needs::Never(Cause::DependencyFailed));
    }

    #[test]
    fn downstream_of_a_failure_means_needing_it_directly_or_not() {
        let mut steps = graph();
        end(&mut steps, 0, Verdict::failed(Cause::Exit, "1"), false);
        let downstream: Vec<bool> = (0..5).map(|i| steps.downstream_of_failure(i)).collect();
        assert_eq!(downstream, [false, true, true, false, true]);
        let mut steps = graph();
        end(&mut steps, 3, Verdict::failed(Cause::Exit, "1"), true);
        assert!(
            !steps.downstream_of_failure(4),
            "an allowed failure is no failure"
        );
    }

    #[test]
    fn needs_outside_the_selection_are_not_waited_for() {
        // Only `c` (needs `b`, index 1, not selected) and `d`.
        let steps = Steps::new([sel(2, &[1], When::OnSuccess), sel(3, &[], When::OnSuccess)]);
        assert_eq!(steps.needs(0), Needs::Met);
    }

    fn skipped(cause: Cause) -> Verdict {
        Verdict {
            status: StepStatus::Skipped,
            cause: Some(cause),
            exit_code: None,
            signal: None,
            message: None,
        }
    }

    /// `when` and optional needs: (what `a` did, `b`'s `when`, whether `b` lists `a` as
    /// optional, what `b` may do once `a` ended).
    #[test]
    fn when_and_optional_needs_decide_what_a_step_does_after_its_needs() {
        use Needs::*;
        let failed = Verdict::failed(Cause::Exit, "1");
        let cases = [
            (passed(), When::OnSuccess, false, Met),
            (
                failed.clone(),
                When::OnSuccess,
                false,
                Never(Cause::DependencyFailed),
            ),
            (
                skipped(Cause::Condition),
                When::OnSuccess,
                false,
                Never(Cause::Condition),
            ),
            (skipped(Cause::Condition), When::OnSuccess, true, Met),
            (
                skipped(Cause::Manual),
                When::OnSuccess,
                false,
                Never(Cause::Manual),
            ),
            (skipped(Cause::Manual), When::OnSuccess, true, Met),
            // Optional is about being skipped by choice, not about failing.
            (
                failed.clone(),
                When::OnSuccess,
                true,
                Never(Cause::DependencyFailed),
            ),
            (
                skipped(Cause::DependencyFailed),
                When::OnSuccess,
                true,
                Never(Cause::DependencyFailed),
            ),
            (passed(), When::Always, false, Met),
            (failed.clone(), When::Always, false, Met),
            (skipped(Cause::Cancelled), When::Always, false, Met),
            (failed.clone(), When::OnFailure, false, Met),
            (passed(), When::OnFailure, false, Never(Cause::Condition)),
            (
                skipped(Cause::Condition),
                When::OnFailure,
                false,
                Never(Cause::Condition),
            ),
            (passed(), When::Manual, false, Never(Cause::Manual)),
        ];
        for (a, when, optional, want) in cases {
            let mut steps = Steps::new([
                sel(0, &[], When::OnSuccess),
                Selected {
                    index: 1,
                    needs: vec![(0, optional)],
                    plugin: 0,
                    when,
                },
            ]);
            let before = steps.needs(1);
            end(&mut steps, 0, a.clone(), false);
            assert_eq!(steps.needs(1), want, "{a:?} {when:?} optional={optional}");
            let waits = matches!(when, When::Always | When::OnFailure);
            if waits {
                assert_eq!(before, Pending, "{when:?} waits for its needs to end");
            }
        }
    }

    #[test]
    fn on_failure_sees_a_failure_further_up() {
        // `c` (on_failure) needs `b`, which was skipped because `a` failed.
        let mut steps = Steps::new([
            sel(0, &[], When::OnSuccess),
            sel(1, &[0], When::OnSuccess),
            sel(2, &[1], When::OnFailure),
        ]);
        end(&mut steps, 0, Verdict::failed(Cause::Exit, "1"), false);
        end(&mut steps, 1, skipped(Cause::DependencyFailed), false);
        assert_eq!(steps.needs(2), Needs::Met);
    }
}
