//! The verdict on a step, decided in one place and without I/O: what an attempt's process
//! result means ([`classify`]), what a kernel stop, the executor's word and the step's cgroup
//! make of it ([`finalize`]), whether another attempt follows ([`next`]), and how a step that
//! never started ends ([`unstarted`]). `docs/events.md` is the contract these decide.

use hm_ipc::messages::StepResult;

use crate::cgroup::LeafStats;
use crate::config::{AllowFailure, Limits, Retry, RetryClass};
use crate::events::{Cause, StepStatus};

/// Why the kernel itself stopped a step, if it did. It decides the verdict over whatever exit
/// status the stopped process reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The step's own timeout.
    StepTimeout,
    /// The pipeline's timeout.
    PipelineTimeout,
    /// Ctrl-C or SIGTERM to hm.
    UserCancel,
    /// Another step failed and the run is failing fast.
    FailFast,
}

/// The verdict on one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub status: StepStatus,
    pub cause: Option<Cause>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub message: Option<String>,
}

impl Verdict {
    pub fn failed(cause: Cause, message: impl Into<String>) -> Self {
        Self {
            status: StepStatus::Failed,
            cause: Some(cause),
            exit_code: None,
            signal: None,
            message: Some(message.into()),
        }
    }

    /// The verdict of a step the kernel stopped, when no process result says more.
    pub fn stopped(reason: StopReason, message: Option<String>) -> Self {
        let (status, cause) = stopped(reason);
        Self {
            status,
            cause: Some(cause),
            exit_code: None,
            signal: None,
            message,
        }
    }

    pub fn is_failure(&self) -> bool {
        matches!(self.status, StepStatus::Failed | StepStatus::TimedOut)
    }
}

/// The status and cause of a step stopped by the kernel, whatever the process reported.
pub fn stopped(reason: StopReason) -> (StepStatus, Cause) {
    match reason {
        StopReason::StepTimeout | StopReason::PipelineTimeout => {
            (StepStatus::TimedOut, Cause::Timeout)
        }
        StopReason::UserCancel | StopReason::FailFast => (StepStatus::Cancelled, Cause::Cancelled),
    }
}

/// What the process result of a finished attempt says, given the kernel's stop (if any).
pub fn classify(result: &StepResult, stop: Option<StopReason>) -> Verdict {
    let mut verdict = Verdict {
        status: StepStatus::Passed,
        cause: None,
        exit_code: result.exit_code,
        signal: result.signal,
        message: None,
    };
    if let Some(reason) = stop {
        // A step that finished cleanly before the stop took effect still passed.
        if result.exit_code != Some(0) || result.cancelled {
            let (status, cause) = stopped(reason);
            verdict.status = status;
            verdict.cause = Some(cause);
        }
        return verdict;
    }
    match (result.exit_code, result.signal) {
        (Some(0), _) => {}
        (Some(code), _) => {
            verdict.status = StepStatus::Failed;
            verdict.cause = Some(Cause::Exit);
            verdict.message = Some(format!("exited with code {code}"));
        }
        (None, Some(signal)) => {
            verdict.status = StepStatus::Failed;
            verdict.cause = Some(Cause::Signal);
            let core = if result.core_dumped {
                " (core dumped)"
            } else {
                ""
            };
            verdict.message = Some(format!("killed by signal {}{core}", signal_name(signal)));
        }
        (None, None) => {
            verdict.status = StepStatus::Failed;
            verdict.cause = Some(Cause::Exit);
            verdict.message = Some("ended without an exit status".into());
        }
    }
    verdict
}

/// What else is known when an attempt ends, besides its first verdict.
#[derive(Debug, Clone, Copy)]
pub struct Evidence<'a> {
    /// The kernel's stop, if it stopped the step.
    pub stop: Option<StopReason>,
    /// The executor says the OOM killer ended the step where hm's cgroup cannot see it (a
    /// container has a cgroup of its own).
    pub executor_oom: bool,
    /// The peak memory the executor reported.
    pub executor_peak: Option<u64>,
    /// What the step's cgroup leaf counted.
    pub stats: &'a LeafStats,
    /// The step's configured limits.
    pub limits: &'a Limits,
}

/// The final word on an attempt: a failure the kernel did not cause becomes `oom` when the
/// step's cgroup (or, failing that, its executor) saw the OOM killer, or `pids_limit` when the
/// cgroup refused forks. A stop decides alone; a pass stays a pass (a step whose main process
/// survived a child's OOM kill passed).
pub fn finalize(mut verdict: Verdict, evidence: Evidence<'_>) -> Verdict {
    if !verdict.is_failure() || evidence.stop.is_some() {
        return verdict;
    }
    let stats = evidence.stats;
    if stats.oom_kills.is_some_and(|n| n > 0) {
        verdict.cause = Some(Cause::Oom);
        verdict.message = Some(out_of_memory(stats, evidence.limits.memory_bytes));
    } else if evidence.executor_oom {
        let seen = LeafStats {
            peak_memory_bytes: evidence.executor_peak,
            ..LeafStats::default()
        };
        verdict.cause = Some(Cause::Oom);
        verdict.message = Some(out_of_memory(&seen, evidence.limits.memory_bytes));
    } else if stats.pids_limit_hits.is_some_and(|n| n > 0) {
        verdict.cause = Some(Cause::PidsLimit);
        let limit = evidence
            .limits
            .pids
            .map_or_else(|| "its".to_owned(), |n| n.to_string());
        verdict.message = Some(format!("hit the process limit ({limit} processes)"));
    }
    verdict
}

/// `out of memory (limit 64 MiB, peak 64 MiB)`.
pub fn out_of_memory(stats: &LeafStats, configured: Option<u64>) -> String {
    let bytes = crate::render::format_bytes;
    let limit = stats
        .memory_limit
        .or(configured)
        .map_or_else(|| "none".to_owned(), bytes);
    match stats.peak_memory_bytes {
        Some(peak) => format!("out of memory (limit {limit}, peak {})", bytes(peak)),
        None => format!("out of memory (limit {limit})"),
    }
}

/// What follows an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Another attempt of the step.
    Retry,
    /// The step is over. `allowed_failure`: it failed, and `allow_failure` keeps the run green.
    Done { allowed_failure: bool },
}

/// The run around an attempt that ended, as far as a retry is concerned.
#[derive(Debug, Clone, Copy)]
pub struct RetryContext<'a> {
    /// The attempt that ended (the first is 1).
    pub attempt: u32,
    pub retry: &'a Retry,
    pub allow_failure: &'a AllowFailure,
    /// The kernel's stop of this attempt, if any.
    pub stop: Option<StopReason>,
    /// The run is being cancelled, failing fast or past its deadline: nothing is retried.
    pub run_stopping: bool,
}

/// The code a failed attempt exited with on its own (cause `exit`), for `allow_failure`'s
/// `exit_codes`; `None` for every other failure, even one that reports a code.
fn exited_with(verdict: &Verdict) -> Option<i32> {
    verdict
        .exit_code
        .filter(|_| verdict.cause == Some(Cause::Exit))
}

/// Whether the step gets another attempt. A hook's abort would only be asked again, and of
/// the kernel's stops only the step's own timeout may be retried; `allow_failure` speaks for
/// the last attempt only.
pub fn next(verdict: &Verdict, ctx: RetryContext<'_>) -> Next {
    let retry = verdict.is_failure()
        && verdict.cause != Some(Cause::HookAbort)
        && matches!(ctx.stop, None | Some(StopReason::StepTimeout))
        && !ctx.run_stopping
        && ctx.attempt < ctx.retry.attempts
        && ctx
            .retry
            .on
            .iter()
            .any(|class| retry_matches(*class, verdict));
    if retry {
        return Next::Retry;
    }
    Next::Done {
        allowed_failure: verdict.is_failure() && ctx.allow_failure.covers(exited_with(verdict)),
    }
}

/// Whether `class` asks for a retry of an attempt that ended with `verdict`.
pub fn retry_matches(class: RetryClass, verdict: &Verdict) -> bool {
    if !verdict.is_failure() {
        return false;
    }
    match class {
        RetryClass::Failed => true,
        RetryClass::Exit(code) => {
            verdict.cause == Some(Cause::Exit) && verdict.exit_code == Some(code)
        }
        RetryClass::Signal => verdict.cause == Some(Cause::Signal),
        RetryClass::Oom => verdict.cause == Some(Cause::Oom),
        RetryClass::Pids => verdict.cause == Some(Cause::PidsLimit),
        RetryClass::Timeout => verdict.cause == Some(Cause::Timeout),
        RetryClass::Crash => verdict.cause == Some(Cause::ExecutorCrash),
        RetryClass::Image => verdict.cause == Some(Cause::Image),
        RetryClass::Service => verdict.cause == Some(Cause::Service),
        RetryClass::NodeLost => verdict.cause == Some(Cause::NodeLost),
    }
}

/// How a step that never started ends when the run stops for `reason`. With fail fast, only a
/// step that needs the failed one (directly or not) is `dependency_failed`: the others were
/// merely stopped.
pub fn unstarted(reason: StopReason, downstream_of_failure: bool) -> (StepStatus, Cause) {
    match reason {
        StopReason::FailFast if downstream_of_failure => {
            (StepStatus::Skipped, Cause::DependencyFailed)
        }
        StopReason::FailFast => (StepStatus::Skipped, Cause::Cancelled),
        StopReason::UserCancel => (StepStatus::Cancelled, Cause::Cancelled),
        StopReason::PipelineTimeout | StopReason::StepTimeout => {
            (StepStatus::Skipped, Cause::Timeout)
        }
    }
}

/// `SIGKILL (9)`.
pub fn signal_name(signal: i32) -> String {
    match nix::sys::signal::Signal::try_from(signal) {
        Ok(s) => format!("{} ({signal})", s.as_str()),
        Err(_) => signal.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(exit_code: Option<i32>, signal: Option<i32>) -> StepResult {
        StepResult {
            exit_code,
            signal,
            ..StepResult::default()
        }
    }

    fn cancelled(signal: i32) -> StepResult {
        StepResult {
            signal: Some(signal),
            cancelled: true,
            ..StepResult::default()
        }
    }

    #[test]
    fn a_result_and_a_stop_make_a_verdict() {
        use StepStatus::*;
        use StopReason::*;
        // (result, the kernel's stop, status, cause)
        let cases = [
            (result(Some(0), None), None, Passed, None),
            (result(Some(3), None), None, Failed, Some(Cause::Exit)),
            (result(None, Some(9)), None, Failed, Some(Cause::Signal)),
            (result(None, None), None, Failed, Some(Cause::Exit)),
            (
                cancelled(15),
                Some(StepTimeout),
                TimedOut,
                Some(Cause::Timeout),
            ),
            (
                cancelled(9),
                Some(PipelineTimeout),
                TimedOut,
                Some(Cause::Timeout),
            ),
            (
                cancelled(15),
                Some(UserCancel),
                Cancelled,
                Some(Cause::Cancelled),
            ),
            (
                cancelled(15),
                Some(FailFast),
                Cancelled,
                Some(Cause::Cancelled),
            ),
            (
                result(Some(1), None),
                Some(FailFast),
                Cancelled,
                Some(Cause::Cancelled),
            ),
            // Finished cleanly just before the stop landed: still a pass.
            (result(Some(0), None), Some(FailFast), Passed, None),
            (result(Some(0), None), Some(StepTimeout), Passed, None),
        ];
        for (result, stop, status, cause) in cases {
            let v = classify(&result, stop);
            assert_eq!((v.status, v.cause), (status, cause), "{result:?} {stop:?}");
        }
        let v = classify(&result(None, Some(9)), None);
        assert!(v.message.unwrap_or_default().contains("SIGKILL"));
    }

    #[test]
    fn the_cgroup_and_the_executor_name_oom_and_pids_failures() {
        let limits = Limits {
            memory_bytes: Some(64 << 20),
            pids: Some(16),
            cpu: None,
        };
        let oom = LeafStats {
            oom_kills: Some(1),
            peak_memory_bytes: Some(64 << 20),
            ..LeafStats::default()
        };
        let pids = LeafStats {
            pids_limit_hits: Some(3),
            ..LeafStats::default()
        };
        let none = LeafStats::default();
        let failed = || classify(&result(None, Some(9)), None);
        let passed = || classify(&result(Some(0), None), None);
        let evidence = |stats, stop, executor_oom| Evidence {
            stop,
            executor_oom,
            executor_peak: Some(60 << 20),
            stats,
            limits: &limits,
        };
        // (verdict, evidence, cause, message)
        let cases = [
            (
                failed(),
                evidence(&oom, None, false),
                Some(Cause::Oom),
                "out of memory (limit 64 MiB, peak 64 MiB)",
            ),
            (
                failed(),
                evidence(&none, None, true),
                Some(Cause::Oom),
                "out of memory (limit 64 MiB, peak 60 MiB)",
            ),
            (
                failed(),
                evidence(&pids, None, false),
                Some(Cause::PidsLimit),
                "hit the process limit (16 processes)",
            ),
            (
                failed(),
                evidence(&none, None, false),
                Some(Cause::Signal),
                "killed by signal SIGKILL (9)",
            ),
            // A pass stays a pass: the main process survived a child's OOM kill.
            (passed(), evidence(&oom, None, true), None, ""),
            // The kernel's stop decides alone.
            (
                classify(&cancelled(9), Some(StopReason::StepTimeout)),
                evidence(&oom, Some(StopReason::StepTimeout), false),
                Some(Cause::Timeout),
                "",
            ),
        ];
        for (verdict, evidence, cause, message) in cases {
            let v = finalize(verdict, evidence);
            assert_eq!(v.cause, cause, "{v:?}");
            assert_eq!(v.message.as_deref().unwrap_or(""), message, "{v:?}");
        }
    }

    #[test]
    fn retries_happen_only_for_listed_classes_and_only_while_the_run_goes_on() {
        let retry = Retry {
            attempts: 3,
            on: vec![RetryClass::Exit(3), RetryClass::Timeout, RetryClass::Crash],
        };
        let exit3 = classify(&result(Some(3), None), None);
        let exit4 = classify(&result(Some(4), None), None);
        let timed_out = classify(&cancelled(15), Some(StopReason::StepTimeout));
        let crash = Verdict::failed(Cause::ExecutorCrash, "gone");
        let abort = Verdict::failed(Cause::HookAbort, "no");
        let pass = classify(&result(Some(0), None), None);
        let mut oom_137 = Verdict::failed(Cause::Oom, "out of memory");
        oom_137.exit_code = Some(137);
        let codes = AllowFailure::ExitCodes(vec![3, 137]);
        let ctx = |attempt, stop, run_stopping, allow_failure: bool| RetryContext {
            attempt,
            retry: &retry,
            allow_failure: if allow_failure {
                &AllowFailure::Any
            } else {
                &AllowFailure::No
            },
            stop,
            run_stopping,
        };
        let with_codes = |attempt| RetryContext {
            attempt,
            retry: &retry,
            allow_failure: &codes,
            stop: None,
            run_stopping: false,
        };
        let done = Next::Done {
            allowed_failure: false,
        };
        let allowed = Next::Done {
            allowed_failure: true,
        };
        // (verdict, context, what follows)
        let cases = [
            (&exit3, ctx(1, None, false, false), Next::Retry),
            (&exit3, ctx(2, None, false, false), Next::Retry),
            // The last attempt: allow_failure speaks now.
            (&exit3, ctx(3, None, false, false), done),
            (&exit3, ctx(3, None, false, true), allowed),
            (&exit4, ctx(1, None, false, false), done),
            (&exit4, ctx(1, None, false, true), allowed),
            (&crash, ctx(1, None, false, false), Next::Retry),
            // The step's own timeout may be retried...
            (
                &timed_out,
                ctx(1, Some(StopReason::StepTimeout), false, false),
                Next::Retry,
            ),
            // ...no other stop, and nothing while the run stops.
            (
                &timed_out,
                ctx(1, Some(StopReason::PipelineTimeout), false, false),
                done,
            ),
            (
                &exit3,
                ctx(1, Some(StopReason::FailFast), false, false),
                done,
            ),
            (&exit3, ctx(1, None, true, false), done),
            (&exit3, ctx(1, None, true, true), allowed),
            // A hook's abort is never asked again.
            (&abort, ctx(1, None, false, false), done),
            (&pass, ctx(1, None, false, true), done),
            // `exit_codes`: only those codes, and only as the step's own exit.
            (&exit3, with_codes(3), allowed),
            (&exit4, with_codes(1), done),
            (&crash, with_codes(3), done),
            (&oom_137, with_codes(1), done),
        ];
        for (verdict, ctx, want) in cases {
            assert_eq!(
                next(verdict, ctx),
                want,
                "{verdict:?} at attempt {}",
                ctx.attempt
            );
        }
        let any = Retry {
            attempts: 2,
            on: vec![RetryClass::Failed],
        };
        let ctx = RetryContext {
            retry: &any,
            ..ctx(1, None, false, false)
        };
        assert_eq!(next(&abort, ctx), done);
        assert_eq!(next(&exit4, ctx), Next::Retry);
    }

    #[test]
    fn retry_classes_match_only_their_failures() {
        let exit3 = classify(&result(Some(3), None), None);
        let sig = classify(&result(None, Some(9)), None);
        let timeout = Verdict::stopped(StopReason::StepTimeout, None);
        let crash = Verdict::failed(Cause::ExecutorCrash, "x");
        let oom = Verdict::failed(Cause::Oom, "x");
        let pids = Verdict::failed(Cause::PidsLimit, "x");
        let pass = classify(&result(Some(0), None), None);
        let cases = [
            (RetryClass::Failed, &exit3, true),
            (RetryClass::Failed, &pass, false),
            (RetryClass::Exit(3), &exit3, true),
            (RetryClass::Exit(4), &exit3, false),
            (RetryClass::Signal, &sig, true),
            (RetryClass::Signal, &exit3, false),
            (RetryClass::Timeout, &timeout, true),
            (RetryClass::Timeout, &exit3, false),
            (RetryClass::Crash, &crash, true),
            (RetryClass::Oom, &crash, false),
            (RetryClass::Oom, &oom, true),
            (RetryClass::Pids, &pids, true),
            (RetryClass::Pids, &oom, false),
        ];
        for (class, verdict, expected) in cases {
            assert_eq!(
                retry_matches(class, verdict),
                expected,
                "{class:?} vs {verdict:?}"
            );
        }
    }

    #[test]
    fn steps_that_never_started_end_by_why_the_run_stopped() {
        use StepStatus::*;
        use StopReason::*;
        let cases = [
            (FailFast, true, Skipped, Cause::DependencyFailed),
            (FailFast, false, Skipped, Cause::Cancelled),
            (UserCancel, true, Cancelled, Cause::Cancelled),
            (UserCancel, false, Cancelled, Cause::Cancelled),
            (PipelineTimeout, false, Skipped, Cause::Timeout),
        ];
        for (reason, downstream, status, cause) in cases {
            assert_eq!(
                unstarted(reason, downstream),
                (status, cause),
                "{reason:?} {downstream}"
            );
        }
    }
}
