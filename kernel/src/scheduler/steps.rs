//! The selected steps and their state machines: each step goes `Waiting → Gating → Starting →
//! Running → Done` (a retry goes back to `Waiting`). Which step may start, and which can no
//! longer, is decided here from the DAG alone, without I/O.

use std::collections::HashSet;
use std::ops::{Index, IndexMut};

use tokio::time::Instant;

use super::verdict::{StopReason, Verdict};
use crate::cgroup::Leaf;
use crate::events::StepStatus;

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
    Done,
}

impl StepState {
    /// Holds one of the run's parallelism slots.
    pub(super) fn holds_slot(self) -> bool {
        matches!(
            self,
            StepState::Gating | StepState::Starting | StepState::Running
        )
    }
}

/// One selected step: where it is in its life, and what the kernel keeps for its attempt.
pub(super) struct StepRun {
    /// The step's index in the pipeline.
    pub(super) index: usize,
    /// The positions (in [`Steps`]) of the selected steps it needs.
    needs: Vec<usize>,
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
}

impl StepRun {
    fn new(index: usize, needs: Vec<usize>, plugin: usize) -> Self {
        Self {
            index,
            needs,
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

    /// Failed, and its failure is not allowed.
    fn failed(&self) -> bool {
        !self.allowed_failure && self.verdict.as_ref().is_some_and(Verdict::is_failure)
    }
}

/// Whether a waiting step may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Needs {
    /// A step it needs has not ended yet.
    Pending,
    /// Every step it needs passed (or failed with `allow_failure`).
    Met,
    /// A step it needs ended without passing: it never will run.
    Failed,
}

/// The selected steps, in file order.
pub(super) struct Steps {
    steps: Vec<StepRun>,
}

impl Steps {
    /// `selected`: each step's pipeline index, the pipeline indices it needs, and its plugin
    /// slot. Needs outside the selection are not waited for (they were not asked for).
    pub(super) fn new(selected: impl IntoIterator<Item = (usize, Vec<usize>, usize)>) -> Self {
        let selected: Vec<(usize, Vec<usize>, usize)> = selected.into_iter().collect();
        let position = |index: usize| selected.iter().position(|(i, _, _)| *i == index);
        let steps = selected
            .iter()
            .map(|(index, needs, plugin)| {
                let needs = needs.iter().filter_map(|&n| position(n)).collect();
                StepRun::new(*index, needs, *plugin)
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

    /// Whether step `i` may start now, must wait, or never will.
    pub(super) fn needs(&self, i: usize) -> Needs {
        let mut pending = false;
        for &j in &self.steps[i].needs {
            let dep = &self.steps[j];
            if dep.blocks_dependents() {
                return Needs::Failed;
            }
            if dep.state != StepState::Done {
                pending = true;
            }
        }
        if pending { Needs::Pending } else { Needs::Met }
    }

    /// Whether step `i` needs, directly or through others, a step that failed (and whose
    /// failure is not allowed).
    pub(super) fn downstream_of_failure(&self, i: usize) -> bool {
        let mut seen = HashSet::new();
        let mut stack = vec![i];
        while let Some(at) = stack.pop() {
            for &j in &self.steps[at].needs {
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

    /// `a`; `b` needs `a`; `c` needs `b`; `d` needs nothing; `e` needs `a` and `d`.
    fn graph() -> Steps {
        Steps::new([
            (0, vec![], 0),
            (1, vec![0], 0),
            (2, vec![1], 0),
            (3, vec![], 0),
            (4, vec![0, 3], 0),
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
        assert_eq!(needs(&steps)[2], Failed);
        // An allowed failure lets its dependents run.
        let mut steps = graph();
        end(&mut steps, 0, Verdict::failed(Cause::Exit, "1"), true);
        assert_eq!(steps.needs(1), Met);
        // A need that was skipped or cancelled does not pass either.
        let mut steps = graph();
        let skipped = Verdict::stopped(StopReason::FailFast, None);
        end(&mut steps, 0, skipped, false);
        assert_eq!(steps.needs(1), Failed);
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
        let steps = Steps::new([(2, vec![1], 0), (3, vec![], 0)]);
        assert_eq!(steps.needs(0), Needs::Met);
    }
}
